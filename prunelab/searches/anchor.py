"""A search's closed loop on measured latency: the predictor's error *near the budget*, measured
on the target while the search runs.

The predictor is anchored on the unpruned model and a few pruned ones before a search
(:func:`prunelab.latency.predictor.anchor_predictor`), yet its error on the narrow, lopsided
shapes a search drives toward at 3-4x is large and differs by machine: on an AMD EPYC it read
them 15-40% fast (the resnet20 proof cell at 3x: a front predicted 0.286-0.317 ms measured
0.34-0.38 ms against a 0.262 ms limit, so the method chose at 2.2x and the landing had to prune
the rest blind); on an Intel Xeon it read them 10-25% slow (resnet20, every group at a fifth of
its width: predicted 2.27x, measured 2.84x).  :func:`anchor` times a few of the method's own
candidates paired against the budget's reference (in-process sessions, seconds each), takes the
median of measured / predicted speed-up, and makes it the search's
:attr:`~prunelab.searches.driver.Search.latency_ratio`: from then on the budget's limit on
predicted latency is divided by it, so the method chooses where the target, not the table, meets
the budget.  Each anchor is kept in the run folder (``anchors.json``), so a resumed search
replays the same decisions without timing again.
"""

from __future__ import annotations

import json
import math
import statistics

from ..io import atomic_write_text, read_json
from ..ui import log

ANCHORS = "anchors.json"
SESSIONS = 6  # in-process paired sessions per anchor point (a landing step's protocol)
ROUNDS = 4    # points anchor_on_path times at most
NEAR = 0.10   # ... stopping at one measured within 10% of the budget


def timer_of(ctx):
    """``timer(keep, processes, sessions)``: the paired speed-up of the pruned widths over the
    unpruned model on the search's target (widths only: the weights do not change the time)."""
    import dataclasses

    from ..latency.paired import DECISION_PROTOCOL, STEP_PROTOCOL, paired_speedup
    from ..latency.predictor import ModelMeter

    meter = ModelMeter(ctx.target, None, ctx.model, ctx.spec, ctx.groups, ctx.predictor.units)

    def timer(keep: dict[str, int], processes: int, sessions: int | None):
        if getattr(ctx.target, "exact", False):  # a formula: no process state to guard against
            processes, sessions = 0, sessions or 6
        proto = DECISION_PROTOCOL if processes else STEP_PROTOCOL
        if sessions:
            proto = dataclasses.replace(proto, sessions=sessions)
        net = meter.pruned(keep)
        if hasattr(ctx.target, "time_jobs"):  # a remote target: timed on its node, unpaired
            return _remote_estimate(ctx, net, proto)
        return paired_speedup(ctx.reference_model, net, ctx.target, ctx.spec.input_shape,
                              proto, processes=processes, seed=ctx.seed)

    return timer


def _remote_estimate(ctx, net, proto):
    """A remote (Ray) target times on its own node with :func:`measure`; the estimate has no
    interval there (low = high = the estimate)."""
    from ..latency.measure import measure
    from ..latency.paired import SpeedupEstimate

    t = measure(ctx.target, [ctx.model, net], ctx.spec.input_shape, proto)
    r = t[0].median_ms / t[1].median_ms
    return SpeedupEstimate(r, r, r, 0.0, [r], 0, proto.sessions, t[0].median_ms, t[1].median_ms,
                           "remote", proto.to_json())


def _point(ctx, timer, keep: dict[str, int]) -> dict:
    """One candidate's widths timed paired against the budget's reference."""
    keep = ctx.normalize(keep)
    ref, pred = ctx.reference["latency_ms"], ctx.predict(keep)
    e = timer(keep, 0, SESSIONS)
    return {"keep": keep, "predicted_ms": pred, "predicted_speedup": ref / pred,
            "measured_speedup": e.estimate, "low": e.low, "high": e.high,
            "ratio": (ref / pred) / e.estimate}


def _replayed(ctx, name: str) -> dict | None:
    rec = (read_json(ctx.out / ANCHORS) or {}).get(name)
    if rec is not None:
        _apply(ctx, name, rec)
    return rec


def _keep_record(ctx, name: str, points: list[dict], ratio: float) -> dict:
    rec = {"ratio": ratio, "points": points}
    path = ctx.out / ANCHORS
    atomic_write_text(path, json.dumps({**(read_json(path) or {}), name: rec}, indent=1))
    log(f"anchor {name}: "
        + ", ".join(f"{p['measured_speedup']:.2f}x (predicted {p['predicted_speedup']:.2f}x)"
                    for p in points)
        + f"; the budget is judged at {ratio:.3f} x the predicted latency")
    _apply(ctx, name, rec)
    return rec


def _apply(ctx, name: str, rec: dict) -> None:
    ctx.set_latency_ratio(rec["ratio"])
    ctx.info.setdefault("anchors", {})[name] = {
        "ratio": rec["ratio"], "measured_speedup": [p["measured_speedup"] for p in rec["points"]],
        "predicted_speedup": [p["predicted_speedup"] for p in rec["points"]]}


def anchor(ctx, name: str, keeps: list[dict[str, int]]) -> dict:
    """Measure ``keeps`` (widths) on the search's target against the budget's reference, set
    ``ctx.latency_ratio`` to the median measured / predicted latency over them and return the
    record ``{"ratio", "points": [{keep, predicted_ms, predicted_speedup, measured_speedup,
    low, high, ratio}]}``; read back from ``anchors.json`` under ``name`` where a run already
    measured it."""
    rec = _replayed(ctx, name)
    if rec is not None:
        return rec
    timer = timer_of(ctx)
    points = [_point(ctx, timer, k) for k in keeps]
    return _keep_record(ctx, name, points, statistics.median(p["ratio"] for p in points))


def anchor_on_path(ctx, name: str, make_keep, at_limit, lo: float = 0.0, rounds: int = ROUNDS,
                   near: float = NEAR) -> dict:
    """Anchor where a one-parameter path of allocations (``make_keep(x)``, ``x`` the ratio
    pruned, from ``lo``, within ``[0, 1)``) meets the budget *measured*: its first point is
    ``at_limit()``, the path's ``x`` bisected to the search's limit on predicted latency (a
    method's :func:`~prunelab.searches.methods.bisect`); then, while no point has measured
    within ``near`` (10%) of the budget and fewer than ``rounds`` are timed, the next ``x``
    interpolates between the nearest points measured on either side of the budget (the
    measured speed-up taken as a power of the fraction kept, ``1 - x``), or,
    with all on one side, is the path bisected to the limit corrected by the last point's
    measured / predicted ratio (halfway back toward ``lo`` when that moves nothing and the
    point measured too fast).  The ratio kept is
    the one of the point measured nearest the budget: the error differs along the path (on
    resnet20 the predictor reads every group at a tenth of its width 1.6x slow and a third of
    it 5% fast), so a ratio taken far from the budget misleads.  Replayed from ``anchors.json``
    like :func:`anchor`."""
    rec = _replayed(ctx, name)
    if rec is not None:
        return rec
    timer, points, xs = timer_of(ctx), [], []
    ref = ctx.reference["latency_ms"]
    want = ref / ctx.budget.limit(ctx.reference)  # the budget as a speed-up over the reference

    def off(p: dict) -> float:  # how far from the budget, measured
        return abs(math.log(p["measured_speedup"] / want))

    x = at_limit()
    for _ in range(rounds):
        points.append(_point(ctx, timer, make_keep(x)))
        xs.append(x)
        if off(points[-1]) <= math.log1p(near):
            break
        slow = [(xi, p) for xi, p in zip(xs, points) if p["measured_speedup"] < want]
        fast = [(xi, p) for xi, p in zip(xs, points) if p["measured_speedup"] >= want]
        if slow and fast:  # a bracket: the speed-up as a power of the fraction kept
            (xa, a), (xb, b) = max(slow, key=lambda t: t[0]), min(fast, key=lambda t: t[0])
            la, lb = math.log(a["measured_speedup"]), math.log(b["measured_speedup"])
            ka, kb = math.log(1 - xa), math.log(1 - xb)
            x = 1 - math.exp(ka + (kb - ka) * (math.log(want) - la) / (lb - la))
        else:
            ctx.set_latency_ratio(points[-1]["ratio"])
            nxt = at_limit()
            if make_keep(nxt) == make_keep(x):  # the corrected limit moves nothing
                if not fast:
                    break  # too slow at the path's end: nothing more to learn on it
                nxt = (lo + x) / 2
            x = nxt
        if any(make_keep(x) == make_keep(xi) for xi in xs):
            break
    best = min(points, key=off)
    return _keep_record(ctx, name, points, best["ratio"])
