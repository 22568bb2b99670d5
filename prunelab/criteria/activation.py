"""Data-driven criteria beside XAI: first-order Taylor, HRank, BN scale.

Taylor and HRank read the activation a producer's channel actually emits: the output of the BN
that directly follows the producer when there is one (else the producer's own output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PrunelabError
from . import CRITERIA
from .base import Criterion, GroupInfo
from .calib import calibration_batches, capture, following_norms


class _Activations(Criterion):
    needs_data = True

    def __init__(self, num_images: int = 256, batch_size: int = 64, reduction: str = "sum",
                 seed: int = 0):
        super().__init__(reduction, seed)
        if num_images < 1 or batch_size < 1:
            raise PrunelabError("num_images and batch_size must be at least 1")
        self.num_images, self.batch_size = num_images, batch_size

    def prepare(self, model, groups, data=None):
        super().prepare(model, groups, data)
        producers = sorted({n for g in groups for n in g.producers})
        bn = following_norms(model, tuple(data.train_x.shape[1:]), producers)
        self._where = {p: bn.get(p, p) for p in producers}
        self._scores = self.collect(model, data, producers)

    def layer_scores(self, name, module, group: GroupInfo):
        return self._scores[name]


@CRITERIA.register("taylor", description="first-order Taylor |mean(activation x gradient)| of "
                   "the loss (Molchanov et al. 2017)", needs_data=True)
class Taylor(_Activations):
    name = "taylor"

    def collect(self, model, data, producers):
        was = model.training
        model.eval()
        taps = sorted(set(self._where.values()))
        totals = {t: 0.0 for t in taps}
        count = 0
        with capture(model, taps, grads=True) as (acts, gs):
            for x, y in calibration_batches(data, self.num_images, self.batch_size):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y, reduction="sum").backward()
                for t in taps:
                    a, g = acts[t][-1], gs[t][-1]
                    prod = a * g
                    per = prod.mean(dim=(2, 3)) if prod.dim() == 4 else prod
                    totals[t] = totals[t] + per.abs().sum(0)
                    acts[t].clear(), gs[t].clear()
                count += len(y)
        model.zero_grad(set_to_none=True)
        model.train(was)
        return {p: totals[self._where[p]] / count for p in producers}


@CRITERIA.register("hrank", description="average rank of each channel's feature maps after ReLU "
                   "(Lin et al. 2020)", needs_data=True)
class HRank(_Activations):
    name = "hrank"

    def __init__(self, num_images: int = 128, **kw):
        super().__init__(num_images=num_images, **kw)

    @torch.no_grad()
    def collect(self, model, data, producers):
        was = model.training
        model.eval()
        taps = sorted(set(self._where.values()))
        totals = {t: 0.0 for t in taps}
        count = 0
        with capture(model, taps) as (acts, _):
            for x, _y in calibration_batches(data, self.num_images, self.batch_size):
                model(x)
                for t in taps:
                    a = acts[t][-1].relu()
                    if a.dim() == 4:
                        r = torch.linalg.matrix_rank(a.float()).float()  # (batch, channels)
                    else:
                        r = (a != 0).float()
                    totals[t] = totals[t] + r.sum(0)
                    acts[t].clear()
                count += len(x)
        model.train(was)
        return {p: totals[self._where[p]] / count for p in producers}


@CRITERIA.register("bn-scale", description="|gamma| of the BN layers in the group (Network "
                   "Slimming, Liu et al. 2017)", needs_data=False)
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
