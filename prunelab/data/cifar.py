"""CIFAR-10/100 in their original python batch layout, read without trusting pickle.

The python batches are pickled dicts of numpy arrays.  We never unpickle what a user hands us: a
restricted unpickler accepts only the handful of numpy reconstruction globals those files use and
refuses everything else, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import PrunelabError
from .core import DATASETS, Splits, carve_val

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def safe_unpickle(path: Path):
    try:
        return _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise PrunelabError(f"{path} is not a CIFAR python batch ({e}); use the original "
                            "'python version' archive") from None


def _batch(path: Path, label_key: str):
    d = safe_unpickle(path)
    if not isinstance(d, dict) or "data" not in d or label_key not in d:
        raise PrunelabError(f"{path} lacks 'data'/'{label_key}'; use the original python batches")
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(x.copy()), torch.tensor(d[label_key], dtype=torch.int64)


def _load(root: str | None, classes: int, val_size: int, seed: int) -> Splits:
    folder = f"cifar-{classes}-batches-py" if classes == 10 else "cifar-100-python"
    hint = (f"pass --data-dir with the extracted '{folder}' folder (python version of "
            f"CIFAR-{classes})")
    if not root:
        raise PrunelabError(f"cifar{classes} needs its data folder; {hint}")
    r = Path(root)
    if (r / folder).is_dir():
        r = r / folder
    if classes == 10:
        train = [r / f"data_batch_{i}" for i in range(1, 6)]
        test, key = [r / "test_batch"], "labels"
    else:
        train, test, key = [r / "train"], [r / "test"], "fine_labels"
    missing = [p.name for p in train + test if not p.exists()]
    if missing:
        raise PrunelabError(f"cifar{classes}: {', '.join(missing)} not found in {r}; {hint}")
    tx, ty = zip(*(_batch(p, key) for p in train))
    sx, sy = zip(*(_batch(p, key) for p in test))
    a, b, c, d = carve_val(torch.cat(tx), torch.cat(ty), val_size, seed)
    mean = (0.4914, 0.4822, 0.4465) if classes == 10 else (0.5071, 0.4865, 0.4409)
    std = (0.2470, 0.2435, 0.2616) if classes == 10 else (0.2673, 0.2564, 0.2762)
    return Splits(f"cifar{classes}", a, b, c, d, torch.cat(sx), torch.cat(sy), mean, std, classes)


@DATASETS.register("cifar10", description="CIFAR-10, original python batches (--data-dir)")
def cifar10(data_dir=None, val_size: int | None = None, seed: int = 0) -> Splits:
    return _load(data_dir, 10, val_size, seed)


@DATASETS.register("cifar100", description="CIFAR-100, original python batches (--data-dir)")
def cifar100(data_dir=None, val_size: int | None = None, seed: int = 0) -> Splits:
    return _load(data_dir, 100, val_size, seed)
