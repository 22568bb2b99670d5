"""How a candidate is scored: a user's ``eval_fn`` checked to give a finite number, and the short
training some methods give a candidate before scoring it (ABCPruner's fitness training)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import PrunelabError
from ..gate import gated


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


def short_train(net: nn.Module, data, batches: int, seed: int, lr: float = 0.01) -> None:
    """A few SGD steps on training batches (ABCPruner's short fitness training)."""
    import torch.nn.functional as F

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    from ..kernels import onednn_safe

    net.train()
    with onednn_safe():
        for i, (x, y) in enumerate(gated(data.batches("train", 128, shuffle=True,
                                                      augment=True, seed=seed + 1))):
            if i >= batches:
                break
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()
