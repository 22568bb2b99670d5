"""How a candidate is scored: a user's ``eval_fn`` checked to give a finite number, and the short
training some methods give a candidate before scoring it (ABCPruner's fitness training)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import PrunelabError
from ..gate import gated


FIDELITY_MAX_STEPS = 10000


def fidelity_rungs(spec: str) -> tuple[int, ...]:
    """The distillation steps a ``fidelity`` setting gives the points that may be chosen, rung by
    rung: ``bn`` (none: the BN re-estimate and validation top-1 every candidate gets), ``kd:N``
    (one rung) or ``kd:N1,N2,...`` (successive halving: every point gets N1 steps, the best third
    of them, at least 2, N2 steps from the start again, and so on; steps increasing).

    >>> fidelity_rungs("kd:50")
    (50,)
    >>> fidelity_rungs("kd:20,200")
    (20, 200)
    """
    s = str(spec).strip().lower()
    if s == "bn":
        return ()
    head, _, tail = s.partition(":")
    parts = [x.strip() for x in tail.split(",")]
    if head == "kd" and all(x.isdigit() and 1 <= int(x) <= FIDELITY_MAX_STEPS for x in parts):
        steps = tuple(int(x) for x in parts)
        if all(a < b for a, b in zip(steps, steps[1:])):
            return steps
    raise PrunelabError(f"fidelity={spec!r} must be bn, kd:N or kd:N1,N2,... (increasing) with "
                        f"distillation steps from 1 to {FIDELITY_MAX_STEPS}, e.g. kd:20 or "
                        "kd:20,200")


def checked_score(eval_fn, net: nn.Module) -> float:
    """A user's ``eval_fn(model) -> float``, checked to be a finite number."""
    import math

    v = eval_fn(net)
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise PrunelabError(f"eval_fn must return a number (higher is better), got "
                            f"{type(v).__name__}") from None
    if not math.isfinite(v):
        raise PrunelabError(f"eval_fn returned {v}; it must return a finite number")
    net.eval()
    return v


class Distillation:
    """The training batches and the teacher's logits of a short distillation, kept so that every
    point it scores is trained on the same batches and the teacher runs once per batch, not once
    per point (on resnet56 at 3x the teacher's forward passes are 9 of a 25 s ``kd:20`` score).
    Batches are read as first needed; past ``max_bytes`` of kept inputs the rest are read and
    the teacher run again each time, as without it."""

    def __init__(self, data, teacher: nn.Module, seed: int, max_bytes: int = 256 * 2**20):
        self.data, self.teacher, self.seed, self.max_bytes = data, teacher, seed, max_bytes
        self.kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.full = False  # stopped keeping

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(x)

    def take(self, n: int):
        """The first ``n`` batches as ``(inputs, labels, teacher logits)``."""
        yield from self.kept[:n]
        if len(self.kept) >= n:
            return
        used = sum(x.numel() * x.element_size() for x, _, _ in self.kept)
        it = gated(self.data.batches("train", 128, shuffle=True, augment=True,
                                     seed=self.seed + 1))
        for i, (x, y) in enumerate(it):
            if i >= n:
                return
            if i < len(self.kept):
                continue
            t = self._logits(x)
            used += x.numel() * x.element_size()
            if not self.full and used <= self.max_bytes and i == len(self.kept):
                self.kept.append((x, y, t))
            else:
                self.full = True
            yield x, y, t


def short_train(net: nn.Module, data, batches: int, seed: int, lr: float = 0.01,
                teacher: nn.Module | None = None, kd_weight: float = 0.5,
                kd_temperature: float = 4.0, distillation: Distillation | None = None) -> None:
    """A few SGD steps on training batches: ABCPruner's short fitness training, or with a
    ``teacher`` a short distillation (the loss the fine-tune uses: cross-entropy and KD at
    ``kd_temperature`` weighted by ``kd_weight``).  With ``distillation`` (a
    :class:`Distillation` of the same data, teacher and seed) its kept batches and logits are
    used: the same steps, the teacher not run again."""
    import torch.nn.functional as F

    from ..kernels import onednn_safe
    from ..train import kd_loss

    if distillation is not None:
        teacher = distillation.teacher
        steps = distillation.take(batches)
    else:
        if teacher is not None:
            teacher.eval()
        src = gated(data.batches("train", 128, shuffle=True, augment=True, seed=seed + 1))
        steps = ((x, y, None) for i, (x, y) in zip(range(batches), src))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    net.train()
    with onednn_safe():
        for x, y, t in steps:
            opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None and kd_weight > 0:
                if t is None:
                    with torch.no_grad():
                        t = teacher(x)
                loss = (1 - kd_weight) * loss + kd_weight * kd_loss(logits, t, kd_temperature)
            loss.backward()
            opt.step()
    net.eval()


def kd_score(net: nn.Module, teacher: nn.Module, batches, temperature: float = 4.0) -> float:
    """Minus the mean distillation loss of ``net`` against ``teacher`` on ``batches`` (higher
    is better, like top-1): a candidate score that sees more than the arg-max."""
    from ..train import kd_loss

    net.eval()
    teacher.eval()
    total = n = 0.0
    with torch.no_grad():
        for x, _ in batches:
            total += float(kd_loss(net(x), teacher(x), temperature)) * len(x)
            n += len(x)
    if not n:
        raise PrunelabError("no images to score on; check the validation split")
    return -total / n
