"""``scripted``: a target whose latency is a formula of the model's layer widths, never timed.

For tests, examples and documentation of everything around a real target (searches, budgets,
the confirmation run, the staircase finish): its figures are the same on every machine and under
any load.  The formula is a staircase, as on SIMD runtimes: a conv or linear layer costs as if its
channel counts were rounded up to multiples of 8, an output width that is not a multiple of 8
costs 30% more on top (a runtime falling back from its blocked layout), and every call costs
0.02 ms.  Nothing here describes a real device.

    >>> import torch.nn as nn
    >>> a = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    >>> b = nn.Sequential(nn.Conv2d(8, 15, 3, padding=1))     # unaligned: slower than 16
    >>> scripted_ms(a, [(8, 8, 8)], 1) < scripted_ms(b, [(8, 8, 8)], 1)
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import TARGETS
from .base import Target

STEP, UNALIGNED, CALL_MS, MS_PER_MMAC = 8, 1.3, 0.02, 0.05


def scripted_ms(module: nn.Module, shapes, batch_size: int) -> float:
    """The scripted latency (ms) of ``module`` on inputs of ``shapes`` (without the batch)."""
    cost = [0.0]

    def up(c: int) -> int:
        return STEP * math.ceil(c / STEP)

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            hw = out.shape[-1] * out.shape[-2]
            k = m.kernel_size[0] * m.kernel_size[1]
            macs = up(m.in_channels) // m.groups * up(m.out_channels) * k * hw
            pen = UNALIGNED if m.out_channels % STEP else 1.0
        else:
            macs = up(m.in_features) * up(m.out_features)
            pen = UNALIGNED if m.out_features % STEP else 1.0
        cost[0] += batch_size * macs / 1e6 * MS_PER_MMAC * pen

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()(*[torch.zeros(1, *s) for s in shapes])
    finally:
        for h in handles:
            h.remove()
    return CALL_MS + cost[0]


class ScriptedRunner:
    """Runs nothing; carries the scripted figure the protocol reports for it."""

    def __init__(self, ms: float):
        self.ms = ms

    def __call__(self):
        return None


@TARGETS.register("scripted", description="latency from a formula of the layer widths (a "
                  "staircase in steps of 8), never timed: for tests and examples",
                  runtime="formula", device="none", extra="-", precisions=("fp32",))
class Scripted(Target):
    name, runtime, device = "scripted", "formula", "none"
    scripted = True  # :func:`prunelab.latency.measure.time_runners` reads ``runner.ms``

    def device_info(self) -> dict:
        return {"scripted": f"step {STEP}, unaligned x{UNALIGNED}, call {CALL_MS} ms, "
                            f"{MS_PER_MMAC} ms per MMAC"}

    def runner(self, module: nn.Module, inputs):
        return ScriptedRunner(scripted_ms(module, [tuple(x.shape[1:]) for x in inputs],
                                          self.cfg.batch_size))
