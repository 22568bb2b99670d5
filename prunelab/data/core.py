from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ..errors import PrunelabError
from ..registry import Registry

DATASETS = Registry("dataset", hint="(see `prunelab datasets`)")


@dataclass
class Splits:
    """Uint8 images (N, C, H, W) and labels for the train / val / test splits."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    augment: str = "crop-flip"

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape (C, H, W)."""
        return tuple(int(d) for d in self.train_x.shape[1:])

    def has(self, split: str) -> bool:
        return split in ("train", "val", "test")

    def batches(self, split: str, batch_size: int = 256, shuffle: bool = False,
                augment: bool = False, seed: int = 0, limit: int | None = None) -> "Batches":
        x, y = {"train": (self.train_x, self.train_y), "val": (self.val_x, self.val_y),
                "test": (self.test_x, self.test_y)}[split]
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return Batches(x, y, self.mean, self.std, batch_size, shuffle,
                       self.augment if augment else "none", seed)


class Batches:
    """Iterates normalised float batches from uint8 tensors; augmentation is done batch-wise.

    Batch-wise augmentation (random translation via padding + crop, horizontal flip) on tensors
    avoids per-sample Python work, which matters on a 2-core CPU.
    """

    def __init__(self, x, y, mean, std, batch_size, shuffle, augment, seed):
        self.x, self.y = x, y
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        n = len(self.x)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            xb = self.x[idx].float().div_(255)
            if self.augment == "crop-flip":
                xb = _crop_flip(xb, g)
            yield (xb - self.mean) / self.std, self.y[idx]


def _crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n, h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n, w
    out = xp[torch.arange(n).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]
    out = out.permute(0, 3, 1, 2)  # advanced indexing puts the channel dim last
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.contiguous()


def carve_val(x: torch.Tensor, y: torch.Tensor, val_size: int | None, seed: int = 0):
    """Deterministic validation hold-out from the training split (same seed, same split).

    ``val_size`` defaults to min(5000, 10% of the training split).
    """
    if val_size is None:
        val_size = min(5000, max(1, len(x) // 10))
    if not 0 < val_size < len(x):
        raise PrunelabError(f"validation size {val_size} must be between 1 and {len(x) - 1}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    v, t = perm[:val_size].sort().values, perm[val_size:].sort().values
    return x[t], y[t], x[v], y[v]


@functools.lru_cache(maxsize=4)
def load_dataset(name: str = "fmnist", data_dir: str | None = None, val_size: int | None = None,
                 seed: int = 0) -> Splits:
    """Load a registered data set, e.g. ``load_dataset("fmnist")``.

    Results are cached per arguments within a process; treat the returned tensors as read-only.
    """
    return DATASETS.get(name).fn(data_dir=None if data_dir is None else str(data_dir),
                                 val_size=val_size, seed=seed)
