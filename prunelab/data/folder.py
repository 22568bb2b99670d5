"""ImageNet-style class folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Images are decoded with Pillow (``pip install 'prunelab[images]'``), resized (shorter side) and
centre-cropped to ``PRUNELAB_IMAGE_SIZE`` (default 224), and held in memory as uint8; this suits
the subsets one prunes and fine-tunes with on a CPU, not the full 1.3 M-image ImageNet.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import PrunelabError
from .core import DATASETS, Splits, carve_val

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _read_split(root: Path, classes: list[str], size: int):
    try:
        from PIL import Image
    except ImportError:
        raise PrunelabError("imagefolder needs Pillow; pip install 'prunelab[images]'") from None
    xs, ys = [], []
    for label, c in enumerate(classes):
        for p in sorted((root / c).iterdir()) if (root / c).is_dir() else []:
            if p.suffix.lower() not in EXTS:
                continue
            try:
                im = Image.open(p).convert("RGB")
            except OSError as e:
                raise PrunelabError(f"cannot decode image {p} ({e}); remove or replace it") from None
            s = size / min(im.size)
            im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))))
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
            xs.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise PrunelabError(f"no images found under {root}; expected {root}/<class>/*.jpg")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


@DATASETS.register("imagefolder", description="ImageNet-style class folders train/ and val/ "
                   "(--data-dir)")
def imagefolder(data_dir=None, val_size: int | None = None, seed: int = 0) -> Splits:
    hint = "pass --data-dir with train/<class>/ and val/<class>/ image folders"
    if not data_dir or not (Path(data_dir) / "train").is_dir():
        raise PrunelabError(f"imagefolder needs a folder with train/ and val/; {hint}")
    root = Path(data_dir)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    size = int(os.environ.get("PRUNELAB_IMAGE_SIZE", "224"))
    tx, ty = _read_split(root / "train", classes, size)
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    sx, sy = _read_split(test_dir, classes, size)
    a, b, c, d = carve_val(tx, ty, val_size, seed)
    return Splits("imagefolder", a, b, c, d, sx, sy, (0.485, 0.456, 0.406),
                  (0.229, 0.224, 0.225), len(classes))
