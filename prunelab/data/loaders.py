"""The user's own data: any iterables of ``(inputs, labels)`` batches (``DataLoader``s) in the
shape everything in prunelab reads data through (``batches(split, ...)``, like
:class:`prunelab.data.core.Splits`).

The loaders own batching, shuffling and augmentation: the batch size, shuffle and augmentation
arguments prunelab passes are requests that a registered data set honours and a user's loader
ignores.  ``limit`` (images) is honoured by cutting the stream.

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,)))
    >>> data = LoaderData(train=DataLoader(ds, batch_size=4), val=DataLoader(ds, batch_size=4))
    >>> [len(y) for _, y in data.batches("val", limit=6)]
    [4, 2]
    >>> data.input_shape
    (1, 8, 8)
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from ..errors import PrunelabError


class LoaderBatches:
    """One split of a :class:`LoaderData`: iterates the loader, cut after ``limit`` images."""

    def __init__(self, loader: Iterable, split: str, limit: int | None):
        self.loader, self.split, self.limit = loader, split, limit
        self.epoch = 0

    def __len__(self) -> int:
        try:
            n = len(self.loader)
        except TypeError:
            raise PrunelabError(f"the {self.split} loader has no len(); training needs a sized "
                                "loader (a DataLoader over a map-style dataset)") from None
        if self.limit is not None:
            bs = getattr(self.loader, "batch_size", None) or 1
            n = min(n, -(-self.limit // bs))
        return n

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to a ``DistributedSampler`` (or any sampler with ``set_epoch``)."""
        self.epoch = epoch
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seen = 0
        for i, batch in enumerate(self.loader):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise PrunelabError(f"the {self.split} loader must yield (inputs, labels) "
                                    f"batches; batch {i} is a {type(batch).__name__}")
            x, y = batch[0], batch[1]
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise PrunelabError(f"the {self.split} loader must yield tensors; batch {i} has "
                                    f"{type(x).__name__} inputs and {type(y).__name__} labels")
            if self.limit is not None:
                if seen >= self.limit:
                    return
                x, y = x[: self.limit - seen], y[: self.limit - seen]
            seen += len(y)
            yield x.float() if not x.is_floating_point() else x, y.long()


class LoaderData:
    """Train / val (/ test) loaders as one data object.

    ``mean``/``std`` (per channel, as the loaders normalise) let the DeepLIFT / IG reference be
    a black image; without them the reference is an all-zero input.  ``num_classes`` is what
    the model's output must have (None: not checked).
    """

    def __init__(self, train: Iterable | None = None, val: Iterable | None = None,
                 test: Iterable | None = None, name: str = "user-data",
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 num_classes: int | None = None):
        if train is None and val is None:
            raise PrunelabError("give at least a train or a val loader")
        self.loaders = {"train": train, "val": val, "test": test}
        self.name, self.mean, self.std, self._num_classes = name, mean, std, num_classes
        self._shape: tuple[int, ...] | None = None

    def has(self, split: str) -> bool:
        return self.loaders.get(split) is not None

    def batches(self, split: str, batch_size: int = 256, shuffle: bool = False,
                augment: bool = False, seed: int = 0, limit: int | None = None) -> LoaderBatches:
        loader = self.loaders.get(split)
        if loader is None:
            raise PrunelabError(f"this step needs a {split} loader; pass {split}=your_loader")
        return LoaderBatches(loader, split, limit)

    def _first(self):
        split = "train" if self.has("train") else "val"
        for x, y in self.batches(split, limit=None):
            return x, y
        raise PrunelabError(f"the {split} loader yields no batches")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape (C, H, W), from the first batch."""
        if self._shape is None:
            self._shape = tuple(self._first()[0].shape[1:])
        return self._shape

    @property
    def num_classes(self) -> int | None:
        return self._num_classes
