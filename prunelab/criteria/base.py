from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import PrunelabError


@dataclass
class GroupInfo:
    """One prunable unit: a torch-pruning group of coupled channels, named by its root layer."""

    name: str
    width: int
    producers: list[str]  # layers whose output channels are removed
    consumers: list[str]  # layers whose input channels are removed
    norms: list[str]  # BN layers in the group
    group: object = field(repr=False, default=None)  # the torch-pruning Group
    step: int = 1  # channels go in multiples of it: the groups of a grouped conv in the group


class Criterion:
    """Base class: score each channel of a group; override :meth:`layer_scores`.

    ``needs_data`` criteria get calibration batches in :meth:`prepare` before any scoring.
    """

    name = "base"
    needs_data = False
    reductions = ("sum", "mean", "max")
    #: scale-free scores (weight norms) are divided by their layer's mean before the group
    #: reduction, so no coupled layer dominates through its fan-in or its BN; attribution and
    #: loss-based scores share units across layers and are reduced as they are
    normalize = False

    def __init__(self, reduction: str = "sum", seed: int = 0):
        if reduction not in self.reductions:
            raise PrunelabError(f"reduction must be one of {', '.join(self.reductions)}")
        self.reduction = reduction
        self.seed = seed

    def prepare(self, model: nn.Module, groups: list[GroupInfo], data=None) -> None:
        """Collect whatever the criterion needs (activations, gradients) before scoring."""
        self.modules = dict(model.named_modules())

    def layer_scores(self, name: str, module: nn.Module, group: GroupInfo) -> torch.Tensor:
        raise NotImplementedError

    def score(self, group: GroupInfo) -> torch.Tensor:
        """One finite score per channel of the group (higher = keep)."""
        per_layer = [self.layer_scores(n, self.modules[n], group).detach().float().reshape(-1)
                     for n in group.producers]
        per_layer = [s for s in per_layer if s.numel() == group.width]
        if self.normalize:
            per_layer = [s / s.mean().clamp_min(1e-12) for s in per_layer]
        if not per_layer:
            raise PrunelabError(f"criterion {self.name} cannot score group {group.name}")
        stacked = torch.stack(per_layer)
        if self.reduction == "sum":
            return stacked.sum(0)
        if self.reduction == "mean":
            return stacked.mean(0)
        return stacked.max(0).values

    def config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "modules"}
