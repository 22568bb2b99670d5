"""The Pareto plot of a search: measured latency vs validation top-1, with every evaluated
candidate (at its predicted latency) behind, the unpruned model and the chosen point marked."""

from __future__ import annotations

import io
from pathlib import Path

from ..io import atomic_write_bytes


def pareto_plot(path: Path, evaluated: list[dict], measured: list[dict], front: list[dict],
                base: dict, chosen: dict, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the search extra brings matplotlib (through pymoo)
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    ev = [r for r in evaluated if r.get("phase") != "base"]
    if ev:
        ax.scatter([r["latency_ms"] for r in ev], [100 * r["top1"] for r in ev], s=9,
                   c="#bbbbbb", label="evaluated (predicted latency, val subset)")
    ax.scatter([p["latency_ms"] for p in measured], [100 * p["top1"] for p in measured], s=22,
               c="#4c72b0", label="front points, measured")
    ax.plot([p["latency_ms"] for p in front], [100 * p["top1"] for p in front], c="#4c72b0",
            lw=1.2, label="Pareto front (measured)")
    ax.scatter([base["latency_ms"]], [100 * base["val_top1_subset"]], marker="*", s=160,
               c="#dd8452", label="unpruned", zorder=5)
    ax.scatter([chosen["latency_ms"]], [100 * chosen["val_top1_subset"]], marker="D", s=70,
               facecolors="none", edgecolors="#c44e52", linewidths=2, label="chosen", zorder=6)
    ax.set_xlabel("latency on the target (ms per batch)")
    ax.set_ylabel("validation top-1 (%), BN recalibrated")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
