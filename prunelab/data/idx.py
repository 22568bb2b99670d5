"""Fashion-MNIST (the embedded default) and any MNIST-format IDX folder.

Images are zero-padded from 28x28 to 32x32 so that CIFAR-style networks apply unchanged.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PrunelabError
from .core import DATASETS, Splits, carve_val

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_HINT = ("install the Debian package `dataset-fashion-mnist` (apt-get install "
               "dataset-fashion-mnist) or pass --data-dir with the four IDX files")


def read_idx(path: Path, ndim_expected: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, validating its header."""
    import zlib

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise PrunelabError(f"cannot read IDX file {path} ({type(e).__name__}: {e}); re-download "
                            "or replace it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise PrunelabError(f"{path} is not an unsigned-byte IDX file; pass the original files")
    ndim = data[3]
    if ndim_expected is not None and ndim != ndim_expected:
        raise PrunelabError(f"{path} has {ndim} dimensions, expected {ndim_expected} (images: "
                            "count x height x width; labels: count); pass the original files")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise PrunelabError(f"{path} has a short or empty header; replace it with an intact copy")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)) or 0 in dims:
        raise PrunelabError(f"{path} is truncated or empty ({body.size} of {int(np.prod(dims))} "
                            "bytes); replace it with an intact copy")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.exists():
            return cand
    alt = stem.replace("-idx", ".idx")  # some mirrors use train-images.idx3-ubyte
    for cand in (root / alt, root / f"{alt}.gz"):
        if cand.exists():
            return cand
    raise FileNotFoundError(stem)


def load_idx_folder(root: str, name: str, hint: str, val_size: int, seed: int,
                    mean=None, std=None, pad_to: int = 32) -> Splits:
    root_p = Path(root)
    try:
        files = {k: _find(root_p, f"{k}-ubyte") for k in
                 ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    except FileNotFoundError as e:
        raise PrunelabError(f"{name}: {e.args[0]} not found in {root}; {hint}") from None
    tx, ty = read_idx(files["train-images-idx3"], 3), read_idx(files["train-labels-idx1"], 1)
    sx, sy = read_idx(files["t10k-images-idx3"], 3), read_idx(files["t10k-labels-idx1"], 1)
    if len(tx) != len(ty) or len(sx) != len(sy):
        raise PrunelabError(f"{name}: image and label counts differ in {root}; replace the files")
    if tx.shape[1:] != sx.shape[1:]:
        raise PrunelabError(f"{name}: train images are {tx.shape[1]}x{tx.shape[2]} but test "
                            f"images {sx.shape[1]}x{sx.shape[2]} in {root}; replace the files")

    def prep(x):
        # MNIST-format 28x28 images are padded to 32x32 (the CIFAR-style models' input); any
        # other size is kept as it is and must match the model (checked where they meet)
        t = torch.from_numpy(x.copy()).unsqueeze(1)
        p = pad_to - t.shape[-1] if t.shape[-1] == t.shape[-2] == 28 else 0
        return F.pad(t, (p // 2, p - p // 2, p // 2, p - p // 2)) if p > 0 else t

    tx, sx = prep(tx), prep(sx)
    ty, sy = torch.from_numpy(ty.astype(np.int64)), torch.from_numpy(sy.astype(np.int64))
    if mean is None:
        f = tx.float() / 255
        mean, std = (float(f.mean()),), (float(f.std()),)
    a, b, c, d = carve_val(tx, ty, val_size, seed)
    return Splits(name, a, b, c, d, sx, sy, tuple(mean), tuple(std),
                  int(max(ty.max(), sy.max())) + 1)


@DATASETS.register("fmnist", description="Fashion-MNIST, padded to 32x32 (embedded default)",
                   default_dir=FMNIST_DIR)
def fmnist(data_dir: str | None = None, val_size: int | None = None, seed: int = 0) -> Splits:
    root = data_dir or os.environ.get("PRUNELAB_FMNIST_DIR", FMNIST_DIR)
    if not Path(root).is_dir():
        raise PrunelabError(f"Fashion-MNIST not found at {root}; {FMNIST_HINT}")
    # mean/std of the padded training images, fixed so that shipped models see the same inputs
    return load_idx_folder(root, "fmnist", FMNIST_HINT, val_size, seed,
                           mean=(0.2189,), std=(0.3317,))


@DATASETS.register("mnist-idx", description="any MNIST-format IDX folder (--data-dir), padded to 32")
def mnist_idx(data_dir: str | None = None, val_size: int | None = None, seed: int = 0) -> Splits:
    hint = "pass --data-dir with train-/t10k- images/labels IDX files"
    if not data_dir or not Path(data_dir).is_dir():
        raise PrunelabError(f"mnist-idx needs a folder of IDX files; {hint}")
    return load_idx_folder(data_dir, "mnist-idx", hint, val_size, seed)
