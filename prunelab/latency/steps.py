"""Hardware step sizes: the channel granularity at which latency actually changes.

Runtimes pad channels to their vector blocks (8 or 16 floats on AVX2/AVX-512), so latency versus
width is a staircase: pruning 30 of 32 channels to 29 buys nothing, and an unaligned width can even
be slower than the aligned one above it.  :func:`detect_step` reads the step from a measured sweep;
:func:`useful_widths` keeps only the widths at the top of each stair (no wider width is as fast),
the only widths a latency search needs to try.

    >>> from prunelab.latency.steps import detect_step, useful_widths
    >>> curve = {c: 1.0 + ((c + 7) // 8) for c in range(1, 33)}   # a staircase of step 8
    >>> detect_step(curve)
    8
    >>> useful_widths(curve)
    [8, 16, 24, 32]
"""

from __future__ import annotations

import math
import statistics

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)


def detect_step(curve: dict[int, float], tol: float = 0.03) -> int:
    """Largest step ``s`` such that latency is flat (within ``tol`` relative) inside each block
    of widths ``(k*s, (k+1)*s]`` of the sweep; 1 when the curve is smooth or too short."""
    cs = sorted(curve)
    if len(cs) < 4:
        return 1
    scale = statistics.median(curve.values()) or 1.0
    best = 1
    for s in CANDIDATES[1:]:
        blocks: dict[int, list[float]] = {}
        for c in cs:
            blocks.setdefault(math.ceil(c / s), []).append(curve[c])
        full = [b for b in blocks.values() if len(b) >= max(2, s // 2)]
        if len(full) < 2:
            break
        dev = statistics.median(abs(v - statistics.median(b)) / scale for b in full for v in b)
        spread = statistics.median((max(b) - min(b)) / scale for b in full)
        if dev <= tol / 2 and spread <= 2 * tol:
            best = s
    return best


def useful_widths(curve: dict[int, float], rel: float = 0.0) -> list[int]:
    """Widths faster than every wider width by more than ``rel`` of the curve's span (the stair
    tops); the full width is always one."""
    span = (max(curve.values()) - min(curve.values())) or 1.0
    out, best = [], math.inf
    for c in sorted(curve, reverse=True):
        if curve[c] < best - rel * span:
            out.append(c)
        best = min(best, curve[c])
    return sorted(set(out) | {max(curve)})


def step_of(widths: list[int]) -> int:
    """The most common gap between consecutive useful widths (the larger one on ties)."""
    gaps = [b - a for a, b in zip(widths, widths[1:])]
    if not gaps:
        return 1
    return max(set(gaps), key=lambda g: (gaps.count(g), g))


def ceil_to(c: int, step: int, cmax: int) -> int:
    """The width the runtime effectively computes: ``c`` rounded up to the step (capped)."""
    return min(cmax, step * math.ceil(c / step)) if step > 1 else c
