"""A search's closed loop on measured latency: the predictor's error *near the budget*, measured
on the target while the search runs.

The predictor is anchored on the unpruned model and a few pruned ones before a search
(:func:`prunelab.latency.predictor.anchor_predictor`), yet it reads 15-40% fast on the narrow,
lopsided shapes a search drives toward at 3-4x (the resnet20 proof cell at 3x: a front predicted
0.286-0.317 ms measured 0.34-0.38 ms against a 0.262 ms limit, so the method chose at 2.2x and
the landing had to prune the rest blind).  :func:`anchor` times a few of the method's own
candidates paired against the budget's reference (in-process sessions, seconds each), takes the
median of measured / predicted speed-up, and makes it the search's
:attr:`~prunelab.searches.driver.Search.latency_ratio`: from then on the budget's limit on
predicted latency is divided by it, so the method chooses where the target, not the table, meets
the budget.  Each anchor is kept in the run folder (``anchors.json``), so a resumed search
replays the same decisions without timing again.
"""

from __future__ import annotations

import json
import statistics

from ..io import atomic_write_text, read_json
from ..ui import log

ANCHORS = "anchors.json"
SESSIONS = 6  # in-process paired sessions per anchor point (a landing step's protocol)


def anchor(ctx, name: str, keeps: list[dict[str, int]]) -> dict:
    """Measure ``keeps`` (widths) on the search's target against the budget's reference, set
    ``ctx.latency_ratio`` to the median measured / predicted latency over them and return the
    record ``{"ratio", "points": [{keep, predicted_ms, predicted_speedup, measured_speedup,
    low, high, ratio}]}``; read back from ``anchors.json`` under ``name`` where a run already
    measured it."""
    path = ctx.out / ANCHORS
    saved = read_json(path) or {}
    if name not in saved:
        from .selection import _timer

        timer, points = _timer(ctx), []
        ref = ctx.reference["latency_ms"]
        for keep in keeps:
            keep = ctx.normalize(keep)
            pred = ctx.predict(keep)
            e = timer(keep, 0, SESSIONS)
            points.append({"keep": keep, "predicted_ms": pred, "predicted_speedup": ref / pred,
                           "measured_speedup": e.estimate, "low": e.low, "high": e.high,
                           "ratio": (ref / pred) / e.estimate})
        rec = {"ratio": statistics.median(p["ratio"] for p in points), "points": points}
        saved = {**(read_json(path) or {}), name: rec}
        atomic_write_text(path, json.dumps(saved, indent=1))
        log(f"anchor {name}: {len(points)} point(s) measured "
            + ", ".join(f"{p['measured_speedup']:.2f}x (predicted {p['predicted_speedup']:.2f}x)"
                        for p in points)
            + f"; the budget is judged at {rec['ratio']:.3f} x the predicted latency")
    rec = saved[name]
    ctx.set_latency_ratio(rec["ratio"])
    ctx.info.setdefault("anchors", {})[name] = {
        "ratio": rec["ratio"], "measured_speedup": [p["measured_speedup"] for p in rec["points"]],
        "predicted_speedup": [p["predicted_speedup"] for p in rec["points"]]}
    return rec
