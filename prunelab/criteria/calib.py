"""Shared plumbing for data-driven criteria: calibration batches, activation capture, checks."""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
import torch.nn as nn

from ..errors import PrunelabError
from .base import Criterion


class Calibrated(Criterion):
    """A criterion that reads ``num_images`` training images (in batches of ``batch_size``)."""

    needs_data = True

    def __init__(self, num_images: int = 256, batch_size: int = 64, reduction: str = "sum",
                 seed: int = 0):
        super().__init__(reduction, seed)
        if num_images < 1 or batch_size < 1:
            raise PrunelabError("num_images and batch_size must be at least 1")
        self.num_images, self.batch_size = num_images, batch_size


def calibration_batches(data, n: int, batch_size: int = 64):
    """The first ``n`` images of the training split (never val/test), unaugmented, in order."""
    if n < 1:
        raise PrunelabError("the calibration set needs at least one image (num_images >= 1)")
    return list(data.batches("train", batch_size, limit=n))


@contextlib.contextmanager
def capture(model: nn.Module, names: list[str], grads: bool = False):
    """Record the outputs (and, with ``grads``, output gradients) of the named modules.

    Yields ``(acts, gs)``: dicts name -> list of tensors, one per forward pass.
    """
    mods = dict(model.named_modules())
    acts: dict[str, list] = {n: [] for n in names}
    gs: dict[str, list] = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(mod, inp, out, n=n):
            acts[n].append(out.detach())
            if grads and out.requires_grad:
                out.register_hook(lambda g, n=n: gs[n].append(g.detach()))
        handles.append(mods[n].register_forward_hook(hook))
    try:
        yield acts, gs
    finally:
        for h in handles:
            h.remove()


def input_sources(model: nn.Module, input_shape) -> dict[str, str]:
    """For every leaf module, the leaf module whose output it reads directly (if any).

    A consumer whose source is a BN, whose source is a conv, is on a linear path from that conv;
    one that reads a ReLU's (or an add's) output is not.
    """
    made: dict[int, str] = {}
    src: dict[str, str] = {}
    handles = []
    for name, m in model.named_modules():
        if list(m.children()):
            continue

        def hook(mod, inp, out, name=name):
            if inp and isinstance(inp[0], torch.Tensor) and id(inp[0]) in made:
                src[name] = made[id(inp[0])]
            made[id(out)] = name
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return src


def following_norms(model: nn.Module, input_shape, producers: list[str]) -> dict[str, str]:
    """Map each producer layer to the BN that directly normalises its output (if any)."""
    mods = dict(model.named_modules())
    return {s: n for n, s in input_sources(model, input_shape).items()
            if s in producers and isinstance(mods[n], nn.modules.batchnorm._BatchNorm)}


# grad_fn names of elementwise nonlinearities / pools, and the module types that produce them
_NONLINEAR_OPS = {
    "ReluBackward0": (nn.ReLU,), "HardtanhBackward0": (nn.ReLU6, nn.Hardtanh),
    "SigmoidBackward0": (nn.Sigmoid,), "TanhBackward0": (nn.Tanh,), "EluBackward0": (nn.ELU,),
    "LeakyReluBackward0": (nn.LeakyReLU,), "SiluBackward0": (nn.SiLU,),
    "GeluBackward0": (nn.GELU,), "HardswishBackward0": (nn.Hardswish,),
    "HardsigmoidBackward0": (nn.Hardsigmoid,), "SoftplusBackward0": (nn.Softplus,),
    "MaxPool2DWithIndicesBackward0": (nn.MaxPool2d, nn.AdaptiveMaxPool2d),
}


def check_rule_support(model: nn.Module, input_shape, method: str, supported: tuple) -> None:
    """Refuse models an attribution rule cannot handle, naming the layer and the fix.

    Rule-based attributions (DeepLIFT, LRP) replace gradients at nonlinear *modules*.  A
    nonlinearity applied as a function (``F.relu(x)``), a module type without a rule, or an
    in-place activation would silently fall back to plain gradients, so they are errors.
    """
    calls: Counter = Counter()
    handles = []
    for name, m in model.named_modules():
        kinds = [op for op, types in _NONLINEAR_OPS.items() if isinstance(m, types)]
        if not kinds:
            continue
        if not isinstance(m, supported):
            raise PrunelabError(f"{method} has no rule for layer {name!r} ({type(m).__name__}); "
                                "use a criterion without propagation rules (grad-x-act, "
                                "integrated-gradients, taylor) for this model")
        if getattr(m, "inplace", False):
            raise PrunelabError(f"{method} needs out-of-place activations but layer {name!r} is "
                                f"{type(m).__name__}(inplace=True); build it with inplace=False")
        handles.append(m.register_forward_hook(
            lambda mod, i, o, k=kinds[0]: calls.__setitem__(k, calls[k] + 1)))
    try:
        out = model(torch.zeros(1, *input_shape, requires_grad=True))
    finally:
        for h in handles:
            h.remove()
    seen: Counter = Counter()
    stack, visited = [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        if type(fn).__name__ in _NONLINEAR_OPS:
            seen[type(fn).__name__] += 1
        stack.extend(f for f, _ in fn.next_functions)
    for op, n in seen.items():
        if n > calls[op]:
            kind = _NONLINEAR_OPS[op][0].__name__
            raise PrunelabError(
                f"{method} needs every nonlinearity as its own module, but the model applies "
                f"{kind} as a function {n - calls[op]} time(s); use one nn.{kind}() module per "
                "use in forward()")
