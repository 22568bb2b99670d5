"""Data-free criteria: L1 / L2 filter norms (Li et al. 2017) and the random control."""

from __future__ import annotations

import zlib

import torch
import torch.nn as nn

from . import criterion
from .base import Criterion, GroupInfo


class Magnitude(Criterion):
    p = 1
    normalize = True

    def layer_scores(self, name: str, module: nn.Module, group: GroupInfo) -> torch.Tensor:
        w = module.weight.detach()
        return w.flatten(1).norm(p=self.p, dim=1)


@criterion(description="L1 norm of each filter (Li et al. 2017)")
class L1(Magnitude):
    name, p = "l1", 1


@criterion(description="L2 norm of each filter")
class L2(Magnitude):
    name, p = "l2", 2


@criterion(description="uniform random scores (the control every criterion "
           "must beat); seeded per group")
class Random(Criterion):
    name = "random"

    def score(self, group: GroupInfo) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(group.name.encode()))
        return torch.rand(group.width, generator=g)
