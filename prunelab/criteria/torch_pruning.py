"""Torch-Pruning's own importance classes as prunelab criteria (one adapter).

``tp`` scores every channel of a group with ``torch_pruning.importance.<Class>()(group)``: the
group objects prunelab allocates over *are* Torch-Pruning groups, so the scores are exactly the
ones Torch-Pruning's pruners rank by, and pruning a group to ``k`` channels removes the channels
Torch-Pruning would remove.

    --criterion tp                           # GroupMagnitudeImportance(p=2), TP's default
    --criterion tp:importance=lamp
    --criterion tp:importance=taylor         # gradients on calibration batches first

``importance``: ``magnitude-l1`` / ``magnitude-l2`` (GroupMagnitudeImportance p=1/2), ``taylor``
(GroupTaylorImportance), ``lamp``, ``bn-scale``, ``fpgm``, ``random``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PrunelabError
from ..gate import gated
from . import criterion
from .base import Criterion, GroupInfo
from .calib import calibration_batches

IMPORTANCES = {
    "magnitude-l1": ("GroupMagnitudeImportance", {"p": 1}),
    "magnitude-l2": ("GroupMagnitudeImportance", {"p": 2}),
    "taylor": ("GroupTaylorImportance", {}),
    "lamp": ("LAMPImportance", {"p": 2}),
    "bn-scale": ("BNScaleImportance", {}),
    "fpgm": ("FPGMImportance", {"p": 2}),
    "random": ("RandomImportance", {}),
}


def tp_importance(name: str):
    """A fresh Torch-Pruning importance object by prunelab's name for it."""
    import torch_pruning as tp

    if name not in IMPORTANCES:
        raise PrunelabError(f"unknown Torch-Pruning importance {name!r}; choose one of "
                            f"{', '.join(IMPORTANCES)}")
    cls, kw = IMPORTANCES[name]
    return getattr(tp.importance, cls)(**kw)


@criterion(description="Torch-Pruning's own importance classes (importance="
           "magnitude-l1/-l2, taylor, lamp, bn-scale, fpgm, random) through one adapter")
class TorchPruningImportance(Criterion):
    name = "tp"

    def __init__(self, importance: str = "magnitude-l2", num_images: int = 256,
                 batch_size: int = 64, reduction: str = "sum", seed: int = 0):
        super().__init__(reduction, seed)
        self.importance = importance
        self.imp = tp_importance(importance)   # validates the name up front
        self.num_images, self.batch_size = num_images, batch_size

    @property
    def needs_data(self) -> bool:  # only Taylor reads data
        return self.importance == "taylor"

    def prepare(self, model: nn.Module, groups: list[GroupInfo], data=None) -> None:
        super().prepare(model, groups, data)
        if self.importance == "random":
            torch.manual_seed(self.seed)
        if self.importance != "taylor":
            return
        if data is None:
            raise PrunelabError("tp:importance=taylor needs calibration data; pass a dataset")
        model.zero_grad(set_to_none=True)
        was = model.training
        model.eval()
        with torch.enable_grad():
            for x, y in gated(calibration_batches(data, self.num_images,
                                                  self.batch_size)):
                F.cross_entropy(model(x), y, reduction="sum").backward()
        model.train(was)

    def score(self, group: GroupInfo) -> torch.Tensor:
        s = self.imp(group.group)
        if s is None:
            raise PrunelabError(f"Torch-Pruning's {self.importance} importance cannot score group "
                                f"{group.name}")
        return s.detach().float().reshape(-1)

    def config(self) -> dict:
        return {"importance": self.importance, "num_images": self.num_images,
                "batch_size": self.batch_size, "seed": self.seed}
