"""``scripted``: a target whose latency is a formula of the model's layer widths, never timed.

For tests, examples and documentation of everything around a real target (searches, budgets,
the confirmation run, the staircase finish): its figures are the same on every machine and under
any load.  The formula is a staircase, as on SIMD runtimes: a conv or linear layer costs as if its
channel counts were rounded up to multiples of 8, an output width that is not a multiple of 8
costs 30% more on top (a runtime falling back from its blocked layout), and every call costs
0.02 ms.  Nothing here describes a real device.

For tests of the timing protocol itself, ``Scripted(cfg, noise=..., order_bias=..., seed=...)``
adds what a real machine does to a figure: ``noise`` is the sigma of a log-normal factor drawn
per runner (a session that runs slow throughout) and again per call; ``order_bias`` makes the
runner made first in a session read that much slower (``0.1``: 10%).  Such a target times on a
virtual clock (:meth:`Scripted.clock`, advanced by each call), seeded per session
(:meth:`Scripted.for_session`), so every figure is reproducible and no test reads a wall clock.

    >>> import torch.nn as nn
    >>> a = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    >>> b = nn.Sequential(nn.Conv2d(8, 15, 3, padding=1))     # unaligned: slower than 16
    >>> scripted_ms(a, [(8, 8, 8)], 1) < scripted_ms(b, [(8, 8, 8)], 1)
    True
"""

from __future__ import annotations

import math
import random

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


def scripted_unit_ms(u, cin: int, cout: int, batch_size: int) -> float:
    """:func:`scripted_ms` of the stand-alone module of lookup-table unit ``u`` at (cin, cout)
    (:func:`prunelab.latency.units.unit_module`), from its shape alone: BN, activation and add
    cost nothing here, so only the conv or linear counts."""
    def up(c: int) -> int:
        return STEP * math.ceil(c / STEP)

    if u.kind == "linear":
        macs = up(cin) * up(cout)
    else:
        ho, wo = u.out_hw
        groups = cout if u.kind == "dwconv" else u.groups
        macs = up(cout if u.kind == "dwconv" else cin) // groups * up(cout) * u.k * u.k * ho * wo
    pen = UNALIGNED if cout % STEP else 1.0
    return CALL_MS + batch_size * macs / 1e6 * MS_PER_MMAC * pen


class VirtualClock:
    """Seconds that pass only when a scripted runner is called."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


class ScriptedRunner:
    """Carries the scripted figure the protocol reports for it; a call advances ``clock`` by it
    (times ``factor`` and a per-call log-normal draw of sigma ``noise``)."""

    def __init__(self, ms: float, clock: VirtualClock | None = None, factor: float = 1.0,
                 noise: float = 0.0, rng: random.Random | None = None):
        self.ms, self.clock, self.factor, self.noise, self.rng = ms, clock, factor, noise, rng

    def __call__(self):
        if self.clock is not None:
            jitter = math.exp(self.rng.gauss(0.0, self.noise)) if self.noise else 1.0
            self.clock.advance(self.ms * self.factor * jitter)
        return None


@TARGETS.register("scripted", description="latency from a formula of the layer widths (a "
                  "staircase in steps of 8), never timed: for tests and examples",
                  runtime="formula", device="none", extra="-", precisions=("fp32",))
class Scripted(Target):
    name, runtime, device = "scripted", "formula", "none"
    scripted = True  # :func:`prunelab.latency.measure.time_runners` reads ``runner.ms``

    def __init__(self, cfg, noise: float = 0.0, order_bias: float = 0.0, seed: int = 0,
                 session: int = 0):
        from ..errors import PrunelabError

        super().__init__(cfg)
        if not noise >= 0 or not order_bias > -1:
            raise PrunelabError(f"scripted needs noise >= 0 and order_bias > -1 (got {noise}, "
                                f"{order_bias}); e.g. noise=0.05, order_bias=0.1")
        self.noise, self.order_bias, self.seed, self.session = noise, order_bias, seed, session
        self.exact = noise == 0 and order_bias == 0  # figures are the formula, call for call
        self.clock = VirtualClock()
        self._rng = random.Random(f"{seed}/{session}")
        self._made = 0

    def for_session(self, session: int) -> "Scripted":
        """A fresh session: its own clock, noise stream (from ``seed`` and ``session``) and
        first-made runner."""
        return Scripted(self.cfg, self.noise, self.order_bias, self.seed, session)

    def unit_formula(self):
        """The formula itself, where figures are the formula call for call (no noise or order
        bias): tables computed from the units' shapes, nothing built or run."""
        if not self.exact:
            return None
        return (lambda u, cin, cout: scripted_unit_ms(u, cin, cout, self.cfg.batch_size),
                lambda: CALL_MS)

    def device_info(self) -> dict:
        out = {"scripted": f"step {STEP}, unaligned x{UNALIGNED}, call {CALL_MS} ms, "
                           f"{MS_PER_MMAC} ms per MMAC"}
        if not self.exact:
            out.update(noise=self.noise, order_bias=self.order_bias, seed=self.seed)
        return out

    def runner(self, module: nn.Module, inputs):
        ms = scripted_ms(module, [tuple(x.shape[1:]) for x in inputs], self.cfg.batch_size)
        factor = (1 + self.order_bias) if self._made == 0 else 1.0
        if self.noise:
            factor *= math.exp(self._rng.gauss(0.0, self.noise))
        self._made += 1
        return ScriptedRunner(ms, self.clock, factor, self.noise, self._rng)
