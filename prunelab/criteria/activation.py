"""Data-driven criteria beside XAI: first-order Taylor, HRank, BN scale.

Taylor and HRank read the activation a producer's channel actually emits: the output of the BN
that directly follows the producer when there is one (else the producer's own output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PrunelabError
from ..gate import gated
from . import criterion
from .base import Criterion, GroupInfo
from .calib import Calibrated, calibration_batches, capture, following_norms


class _Activations(Calibrated):
    """Accumulate a per-channel statistic of each producer's emitted activation over the
    calibration set; subclasses say how one batch contributes (:meth:`batch_stat`)."""

    grads = False

    def prepare(self, model, groups, data=None):
        super().prepare(model, groups, data)
        producers = sorted({n for g in groups for n in g.producers})
        bn = following_norms(model, tuple(data.input_shape), producers)
        where = {p: bn.get(p, p) for p in producers}
        taps = sorted(set(where.values()))
        was = model.training
        model.eval()
        totals = {t: 0.0 for t in taps}
        count = 0
        with torch.set_grad_enabled(self.grads), capture(model, taps, self.grads) as (acts, gs):
            for x, y in gated(calibration_batches(data, self.num_images,
                                                  self.batch_size)):
                model.zero_grad(set_to_none=True)
                logits = model(x)
                if self.grads:
                    F.cross_entropy(logits, y, reduction="sum").backward()
                for t in taps:
                    totals[t] = totals[t] + self.batch_stat(acts[t][-1],
                                                            gs[t][-1] if self.grads else None)
                    acts[t].clear(), gs[t].clear()
                count += len(y)
        model.zero_grad(set_to_none=True)
        model.train(was)
        self._scores = {p: totals[where[p]] / count for p in producers}

    def batch_stat(self, act: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def layer_scores(self, name, module, group: GroupInfo):
        return self._scores[name]


@criterion(description="first-order Taylor |mean(activation x gradient)| of "
           "the loss (Molchanov et al. 2017)")
class Taylor(_Activations):
    name, grads = "taylor", True

    def batch_stat(self, act, grad):
        prod = act * grad
        per = prod.mean(dim=(2, 3)) if prod.dim() == 4 else prod
        return per.abs().sum(0)


@criterion(description="average rank of each channel's feature maps after ReLU "
           "(Lin et al. 2020)")
class HRank(_Activations):
    name = "hrank"

    def __init__(self, num_images: int = 128, **kw):
        super().__init__(num_images=num_images, **kw)

    def batch_stat(self, act, grad):
        a = act.relu()
        if a.dim() == 4:
            return torch.linalg.matrix_rank(a.float()).float().sum(0)  # (batch, ch) ranks
        return (a != 0).float().sum(0)


@criterion(description="|gamma| of the BN layers in the group (Network "
           "Slimming, Liu et al. 2017)")
class BNScale(Criterion):
    name = "bn-scale"

    def score(self, group: GroupInfo) -> torch.Tensor:
        gammas = [self.modules[n].weight.detach().abs() for n in group.norms
                  if getattr(self.modules[n], "weight", None) is not None
                  and self.modules[n].weight.numel() == group.width]
        if not gammas:
            raise PrunelabError(f"bn-scale needs a BN layer in group {group.name!r}; this layer "
                                "has none, so use l1 or a data-driven criterion")
        stacked = torch.stack(gammas)
        return {"sum": stacked.sum, "mean": stacked.mean}.get(
            self.reduction, lambda d: stacked.max(d).values)(0)
