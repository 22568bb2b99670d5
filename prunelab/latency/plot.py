"""A horizontal bar chart of per-layer latency, drawn with Pillow (the ``images`` extra), so no
plotting library is needed."""

from __future__ import annotations

import io

from ..errors import PrunelabError
from ..io import atomic_write_bytes


def bar_chart(profile: dict, path: str) -> None:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise PrunelabError("--plot needs Pillow; pip install 'prunelab[images]'") from None
    # "other" is the whole model minus its layers timed alone; it is negative when the layers'
    # own per-call costs (paid once per stand-alone run) outweigh pooling and the classifier
    rows = profile["layers"] + [{"layer": "(other: whole - layers)", "ms": profile["other_ms"]}]
    bar_h, left, width = 16, 260, 900
    img = Image.new("RGB", (width, 60 + bar_h * len(rows)), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    top = max(max(r["ms"] for r in rows), 1e-9)
    d.text((10, 10), f"{profile['model']} on {profile['target']} (batch {profile['batch_size']}, "
           f"{profile['threads']} threads): {profile['latency_ms']:.3f} ms, "
           f"{profile['macs'] / 1e6:.1f} M MACs", fill="black", font=font)
    for i, r in enumerate(rows):
        y = 40 + i * bar_h
        d.text((10, y), r["layer"][:40], fill="black", font=font)
        w = int((width - left - 90) * max(0.0, r["ms"]) / top)
        d.rectangle([left, y + 2, left + w, y + bar_h - 3], fill="#3b6ea8")
        d.text((left + w + 6, y), f"{r['ms']:.3f} ms", fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
