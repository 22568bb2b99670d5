"""Data sets: registered loaders that return in-memory tensors plus a deterministic split.

Every data set is loaded as a :class:`Splits` of uint8 images (N, C, H, W) and int64 labels:
``train`` (the training split minus the validation hold-out), ``val`` (carved deterministically
from the training split; searches and criteria only ever look at it) and ``test``.

    >>> from prunelab.data import DATASETS
    >>> DATASETS.names()
    ['cifar10', 'cifar100', 'fmnist', 'imagefolder', 'mnist-idx']
"""

from __future__ import annotations

from .core import DATASETS, Batches, Splits, load_dataset  # noqa: F401
from . import idx, cifar, folder  # noqa: F401  (register the loaders)

from ..registry import load_entry_points  # noqa: E402

load_entry_points("prunelab.datasets")  # installed out-of-tree data sets register too
