"""The measured final selection of a search, on its own: the method has proposed (its front or
its finalists); here the points are built, timed on the target interleaved with the unpruned
model, the budget point with the best score is chosen and confirmed on a longer run (a latency
budget is then finished on measured latency), and the chosen model, the front and its plot are
written.  Every method, whatever its algorithm, ends here."""

from __future__ import annotations

import json
import math

from ..errors import PrunelabError
from ..io import atomic_write_text
from ..latency.measure import Protocol
from ..ui import log
from .budget import Budget
from .anchor import timer_of
from .driver import Search, nondominated


def _point_json(p: dict, keep: bool = True) -> dict:
    d = {k: p[k] for k in ("top1", "latency_ms", "macs", "params") if k in p}
    for k in ("predicted_ms", "latency_iqr_ms", "val_top1_subset"):
        if k in p:
            d[k] = p[k]
    if keep:
        d["keep"] = p["keep"]
    return d


def _to_measure(ctx: Search, pool: list[dict], n: int) -> list[dict]:
    """The front points worth measuring: those near and under the budget first (best top-1),
    then others spread along the front; the best budget-feasible point is always in."""
    front = nondominated(pool)
    # the budget-feasible points first, best top-1 first with ties inside its noise broken by
    # MACs kept: before fine-tuning, points near a tight budget score alike, and a front by noisy
    # top-1 alone would keep only the fastest of them
    feasible = ctx.preferred([p for p in pool if ctx.feasible(p)])
    chosen: list[dict] = feasible[:max(1, n // 3)]
    slack = 0.15 if ctx.budget.kind == "latency" else 0.0
    near = ctx.preferred([p for p in front if ctx.feasible(p, slack)])
    for p in near:
        if len(chosen) >= max(1, n // 2):
            break
        if p not in chosen:
            chosen.append(p)
    rest = [p for p in front if p not in chosen]
    k = n - len(chosen)
    if k > 0 and rest:
        idx = sorted({round(i * (len(rest) - 1) / max(1, k - 1)) for i in range(min(k, len(rest)))})
        chosen += [rest[i] for i in idx]
    return chosen


REACH_BLOCKS = (1, 8, 16)  # the widths every group is cut to when the reach is checked


def path_floors(ctx, budget) -> list[dict[str, int]]:
    """The landing path's least widths: each group's step (one channel where it has none);
    for a latency budget then, in turn, one SIMD block of each width the reach check tries
    (:data:`REACH_BLOCKS`), where the path to the least widths cannot meet the budget."""
    from ..pruning import align

    blocks = REACH_BLOCKS if budget.kind == "latency" else REACH_BLOCKS[:1]
    sets = [{g.name: align(min(b, g.width), g.width, g.step) for g in ctx.groups}
            for b in blocks]
    return [f for i, f in enumerate(sets) if f not in sets[:i]]


PROJECTED = 6  # measured points a missed front projects onto the budget for the rich score


def _projected(ctx: Search, measured: list[dict], budget: Budget, reference: dict,
               stairs: dict | None) -> list[dict]:
    """The :data:`PROJECTED` measured points nearest a latency budget, each narrowed along the
    landing's own path (:func:`.landing.anchored_path`, its floors) until the predictor,
    corrected by the median measured / predicted ratio of the measured points, says it meets the
    budget; each evaluated (cheap score) with its ``latency_ms`` that corrected prediction
    (``projected_from``: the point it came from).  The landing then lands the chosen one.  Points
    whose path cannot reach the budget are left out."""
    import statistics

    from .landing import anchored_path, path_end

    ratios = [p["latency_ms"] / p["predicted_ms"] for p in measured if p["predicted_ms"] > 0]
    if not ratios:
        return []
    ratio = statistics.median(ratios)
    limit = budget.limit(reference)
    floors = path_floors(ctx, budget)[0]
    todo: dict[str, list] = {}  # by the points' context: one batch each (on the workers)
    for p in sorted(measured, key=lambda p: budget.excess(p, reference))[:PROJECTED]:
        anchor = ctx.normalize(p["keep"])
        path = anchored_path(ctx.widths, anchor, stairs, floors)
        lo, hi = 1.0, path_end(ctx.widths, anchor, floors)
        meets = lambda t: ratio * ctx.predict(path(t)) <= limit  # noqa: E731
        if hi <= lo or not meets(hi):
            continue
        for _ in range(24):  # the least narrowing that meets it
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if meets(mid) else (mid, hi)
        todo.setdefault(p["context"], []).append((path(hi), p))
    out = []
    for ctx_name, items in todo.items():
        context, _, train = ctx_name.partition("|train")
        rows = ctx.evaluate_many([k for k, _ in items], phase="fidelity", context=context,
                                 train_batches=int(train or 0))
        out += [{**e, "predicted_ms": e["latency_ms"], "latency_ms": ratio * e["latency_ms"],
                 "projected_from": p["keep"]} for e, (_, p) in zip(rows, items)]
    keys = [json.dumps(q["keep"], sort_keys=True) for q in out]
    return [q for i, q in enumerate(out) if keys[i] not in keys[:i]]


RUNG_KEEP = 3  # successive halving: the best third of a rung (at least 2) goes on to the next


def _rescore(ctx: Search, points: list[dict]) -> list[dict]:
    """With ``fidelity = "kd:N"``: the points that meet the budget, each given N distillation
    steps from the unpruned model (the fine-tune's loss), its BN re-estimated again and scored
    on the same validation images (or ``eval_fn``); returned best first by that score (ties
    inside its noise to the point keeping most MACs, as :meth:`Search.preferred`).  Every
    candidate of the search got the cheap score; only these few, the ones that may be chosen,
    pay for the richer one.  With ``kd:N1,N2,...`` (successive halving) the best third of a
    rung (at least 2) is trained again from the start for the next rung's steps; the points a
    rung dropped follow, by their last score.  Empty with ``bn`` or fewer than two points."""
    from .scoring import fidelity_rungs

    rungs = fidelity_rungs(ctx.cfg.fidelity)
    if not rungs or len(points) < 2:
        return []
    alive, dropped = [{**p, "fidelity_seconds": 0.0} for p in points], []
    for i, steps in enumerate(rungs):
        if i:
            n = max(2, math.ceil(len(alive) / RUNG_KEEP))
            alive, gone = alive[:n], alive[n:]
            dropped = gone + dropped
        log(f"scoring {len(alive)} measured points that meet the budget after {steps} "
            f"distillation steps each (fidelity {ctx.cfg.fidelity}"
            + (f", rung {i + 1} of {len(rungs)})" if len(rungs) > 1 else ")"))
        jobs = []
        for p in alive:
            name, _, train = p["context"].partition("|train")
            jobs.append((p["keep"], name, int(train or 0)))
        out = [{**p, "fidelity_top1": r["top1"], "fidelity_steps": steps,
                "fidelity_rungs": p.get("fidelity_rungs", []) + [[steps, r["top1"]]],
                "fidelity_seconds": p["fidelity_seconds"] + r["seconds"]}
               for p, r in zip(alive, ctx.evaluator.rich_many(jobs, steps))]
        alive = _by_fidelity(ctx, out)
    return alive + dropped


def _by_fidelity(ctx: Search, points: list[dict]) -> list[dict]:
    """``points`` best first by their rich score (:meth:`Search.preferred`), cheap top-1 kept."""
    ranked = ctx.preferred([{**p, "top1": p["fidelity_top1"], "_cheap": p["top1"]}
                            for p in points])
    return [{**{k: v for k, v in p.items() if k != "_cheap"}, "top1": p["_cheap"]}
            for p in ranked]


def _build(ctx: Search, p: dict):
    name, _, train = p["context"].partition("|train")
    return ctx.build(p["keep"], name, int(train or 0))[0]


def finish(ctx: Search, ref: str, budget: Budget, crit_spec: str) -> tuple[dict, object]:
    """Measure the front on the target, take the method's choice (the best-scored point meeting
    the budget there, else the closest), land it on the budget (:mod:`.landing`: every method
    ends through the same stage), save model, front and plot; returns the result and the chosen
    model.  The result keeps both the method's own choice and the landed point."""
    from ..io import pruned_spec, save_model
    from ..latency.measure import measure
    from ..latency.paired import interval_verdict
    from .landing import Lander, Landing, Step, stairs_of, unpruned_meets
    from .parallel import measuring_on
    from .scoring import fidelity_rungs

    pool = ctx.finalists if ctx.finalists is not None else \
        [r for r in ctx.cache.values() if r["phase"] != "base"]
    if not pool:
        raise PrunelabError("the search evaluated no pruned candidate; loosen the budget or "
                            "check the method's options")
    pts = _to_measure(ctx, pool, ctx.cfg.measure_front)
    log(f"measuring {len(pts)} front points on {ctx.target.name}, interleaved with the "
        "unpruned model")
    models = [_build(ctx, p) for p in pts]
    shape = ctx.spec.input_shape
    # with int8 the fp32 graph is the budget's reference, timed interleaved with the rest
    refs = [] if ctx.reference_model is ctx.model else [ctx.reference_model]
    times = measure(ctx.target, refs + [ctx.model] + models, shape, FRONT_PROTOCOL)
    ref_ms = times[0].median_ms
    times = times[len(refs):]
    base = {**ctx.base, "predicted_ms": ctx.base["latency_ms"], "latency_ms": times[0].median_ms}
    reference = {**base, "latency_ms": ref_ms}
    measured = [{**p, "predicted_ms": p["latency_ms"], "latency_ms": t.median_ms,
                 "latency_iqr_ms": t.iqr_ms} for p, t in zip(pts, times[1:])]
    ok = ctx.preferred([p for p in measured if budget.met(p, reference)])
    stairs = stairs_of(ctx.predictor, ctx.widths) if budget.kind == "latency" else None
    pool = ok
    if len(ok) < 2 and fidelity_rungs(ctx.cfg.fidelity) and budget.kind == "latency":
        # the front missed the budget on the target: the rich score is given to the nearest
        # points as the landing would narrow them (projected), so it compares like with like
        pool = ctx.preferred(_projected(ctx, measured, budget, reference, stairs)) or ok
    rescored = _rescore(ctx, pool)
    ctx.evaluator.close()  # any workers the rich score used stop before the landing times
    if rescored:
        ok = rescored
    choice = ok[0] if ok else min(measured, key=lambda p: budget.excess(p, reference))
    context, _, train = choice["context"].partition("|train")
    timer = timer_of(ctx)
    if unpruned_meets(budget, base["latency_ms"], ctx.gain):
        what = ("the unpruned model" if not refs else
                f"int8 alone (the unpruned int8 model, {ctx.gain:.3g}x the fp32 one)")
        landing = Landing("unpruned", dict(ctx.widths), budget.value, base["latency_ms"],
                          message=f"{what} already meets {budget} "
                          f"({base['latency_ms']:.4g} ms measured): it is the answer")
        log(landing.message)
    else:
        landing = Lander(budget, ctx.widths, ctx.normalize(choice["keep"]), timer=timer,
                         counter=lambda k: ctx.cost(k)[budget.kind] / ctx.base[budget.kind],
                         stairs=stairs, decision_processes=ctx.cfg.decision_processes,
                         base_ms=ref_ms,
                         saving=lambda k, g, w: ctx.predict(k) - ctx.predict({**k, g: w}),
                         floors=path_floors(ctx, budget)).land()
    ctx.phase = "landing"
    best = ctx.evaluate(landing.keep, phase="landing", context=context,
                        train_batches=int(train or 0))
    net = ctx.model if landing.status == "unpruned" else _build(ctx, best)
    est = landing.estimate
    if est is None:  # a MACs/params budget (or the unpruned answer): the speed-up, reported
        # (paired sessions in this process: no decision rests on it)
        e = timer(landing.keep, 0, 12) if landing.status != "unpruned" or refs else None
        est = e.to_json() if e is not None else None
        if e is not None:
            landing.steps.append(Step(1.0, landing.keep, e.estimate, e.low, e.high, "report"))
    base_full = ctx.top1(ctx.model, None)  # as shipped (no BN re-estimation)
    best_full = ctx.top1(net, None)
    speedup = est["estimate"] if est else 1.0
    low, high = (est["low"], est["high"]) if est else (1.0, 1.0)
    lat = est["candidate_ms"] if est else base["latency_ms"]
    base_ms = est["base_ms"] if est else base["latency_ms"]
    chosen = {**_point_json(best), "val_top1_subset": best["top1"], "top1": best_full,
              "latency_ms": lat, "measured_speedup": speedup,
              "speedup_interval": [low, high], "speedup_level": est["level"] if est else None,
              "speedup_verdict": interval_verdict(low, high), "speedup_estimate": est,
              "budget_met": landing.met, "landing": landing.to_json(),
              "method_choice": {**_point_json(choice), "measured_speedup":
                                ref_ms / choice["latency_ms"],
                                "context": choice["context"],
                                **({"fidelity_top1": choice["fidelity_top1"]}
                                   if "fidelity_top1" in choice else {})},
              "path": str((ctx.out / "model").resolve())}
    base_out = {**_point_json(base, keep=False), "val_top1_subset": base["top1"],
                "top1": base_full, "latency_ms": base_ms}
    pspec = pruned_spec(ctx.spec, f"{ctx.spec.name}-{ctx.cfg.method}", ref, {
        "criterion": crit_spec, "method": ctx.cfg.method, "budget": str(budget),
        "keep": {**ctx.widths, **best["keep"]}, "widths_before": ctx.widths,
        "bn_recalibration_batches": ctx.cfg.recal_batches, "search": str(ctx.out.resolve())})
    save_model(net, pspec, ctx.out / "model", overwrite=True)  # inside our search folder
    if refs:  # int8: the deploy artefact, calibrated on training images, judged by the runtime
        chosen["int8"] = _int8_artefact(ctx, net, pspec)
    front = nondominated(measured)
    res = {"method": ctx.cfg.method, "criterion": crit_spec, "target": ctx.cfg.target.target,
           "target_config": ctx.cfg.target.to_json(), "budget": str(budget),
           "budget_limit": budget.limit({**base, "latency_ms": base_ms}),
           "model": ctx.spec.name, "seed": ctx.seed, "evaluations": len(ctx.log.rows),
           "replayed": ctx.replayed, "score_seconds": ctx.score_seconds,
           "pareto": [_point_json(p) for p in front],
           "measured": [_point_json(p) for p in measured],
           "base": base_out, "chosen": chosen, "method_info": ctx.info,
           "measured_on": measuring_on(ctx.target), "out": str(ctx.out.resolve()),
           "fidelity": {"setting": ctx.cfg.fidelity, "points": [
               {"keep": p["keep"], "top1": p["top1"], "fidelity_top1": p["fidelity_top1"],
                "steps": p["fidelity_steps"], "rungs": p["fidelity_rungs"],
                "seconds": p["fidelity_seconds"],
                **({"projected_from": p["projected_from"]} if "projected_from" in p else {})}
               for p in rescored]}}
    atomic_write_text(ctx.out / "pareto.json", json.dumps(
        {"base": base_out, "chosen": chosen, "pareto": res["pareto"],
         "measured": res["measured"]}, indent=1))
    from .plot import pareto_plot

    res["plot"] = pareto_plot(ctx.out / "pareto.png", [r for r in ctx.cache.values()],
                              measured, front, base_out, chosen,
                              f"{ctx.spec.name}: {ctx.cfg.method} + {crit_spec}, "
                              f"{ctx.cfg.target.target}, budget {budget}")
    return res, net


def _int8_artefact(ctx: Search, net, spec) -> dict:
    """``model.int8.onnx`` in the search folder: the chosen model's int8 graph calibrated on
    ``calib_images`` training images (the graph the target times), and its validation top-1
    computed by the runtime itself."""
    import copy

    from ..io import atomic_write_bytes
    from ..quant import calibration_images, deploy_graph, runtime_top1
    from ..targets import make_target

    cfg = ctx.cfg.target
    images = calibration_images(ctx.data, cfg.calib_images, ctx.seed)
    data, quant = deploy_graph(copy.deepcopy(net).cpu().eval(),
                               {"model": spec.name, "dataset": spec.dataset,
                                "num_classes": spec.num_classes}, ctx.spec.input_shape, images,
                               cfg)
    path = ctx.out / "model.int8.onnx"
    atomic_write_bytes(path, data)  # inside our search folder
    top1 = runtime_top1(make_target(cfg), data, ctx.data.batches("val", 500))
    log(f"int8 artefact {path}: validation top-1 {100 * top1:.2f}% in {cfg.target}")
    return {"onnx": str(path.resolve()), "val_top1_runtime": top1, "quantization": quant}


# the front run picks the method's choice among the points near the budget (every point timed
# interleaved with the unpruned model, fastest session's median); the landing stage decides
FRONT_PROTOCOL = Protocol(warmup=10, repeats=30, min_seconds=1.0, sessions=3)
