"""The search methods.  Each is ``fn(ctx: Search)``: it evaluates candidates through the driver
(which caches, logs and resumes) and may set ``ctx.finalists`` (the points the final choice is
made from; by default every evaluated candidate).  Options come from ``--option name=value``;
where a paper is silent the default is ours and says so below.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import PrunelabError
from .registered import SEARCHES
from .driver import Search
from .options import Opt


# -- shared pieces ---------------------------------------------------------------------------
def _ratios(ctx: Search, name: str, default: list[float]) -> list[float]:
    """A list-of-ratios option (validated in (0, 1) by its declared schema), sorted."""
    return sorted(ctx.option(name, default))


def budget_value(ctx: Search, keep: dict[str, int]) -> float:
    """The budgeted quantity of a candidate (predicted latency, MACs or params)."""
    if ctx.budget.kind == "latency":
        return ctx.predict(keep)
    return ctx.cost(keep)[ctx.budget.kind]


def bisect(ctx: Search, make_keep, lo: float, hi: float, limit: float | None = None,
           iters: int = 40, tol: float = 0.01) -> tuple[float, dict[str, int]]:
    """Smallest x in [lo, hi] whose ``make_keep(x)`` meets the budget (cost falls with x); stops
    once the cost is within ``tol`` under the limit.  Returns hi's candidate if none meets it."""
    limit = ctx.limit() if limit is None else limit
    best = (hi, make_keep(hi))
    if budget_value(ctx, best[1]) > limit:
        return best
    for _ in range(iters):
        mid = (lo + hi) / 2
        keep = make_keep(mid)
        v = budget_value(ctx, keep)
        if v <= limit:
            hi, best = mid, (mid, keep)
            if v >= limit * (1 - tol):
                break
        else:
            lo = mid
    return best


def staircase_finish(ctx: Search, keep: dict[str, int], max_rounds: int = 64, keep_at=None,
                     lo: float = 0.0, hi: float | None = None) -> dict:
    """Land a bisected allocation on the budget when latency is a staircase (issue: uniform,
    global, cie and torch-pruning assume cost falls steadily as they prune; on SIMD runtimes an
    unaligned width can be slower than the aligned one above it, so the bisection stops at a
    cliff far below the limit and the run overshoots the speed-up).

    From the bisected ``keep``, climb the target's useful widths (the lookup table's stair tops):
    each round, every group's next useful width up is tried on the predictor, and the step that
    adds the least predicted latency per channel regained while staying within the budget is
    taken.  The bisected point and every climbed point are evaluated; the one meeting the budget
    with the best validation top-1 (ties: most MACs kept) is returned, and what happened is kept
    in ``ctx.info["staircase"]``.  Only latency budgets have a staircase; other budgets return
    ``keep`` as it is.

    The budget is met on *predicted* latency here and on *measured* latency at the end; where the
    two disagree (the predictor over-estimating the unpruned model shifts every speed-up) every
    stair can measure over the budget.  With the method's ``keep_at`` (and its bisection range),
    points bisected to 95%, 90%, 85% and 80% of the limit are evaluated too: finalists between
    the stairs and the next cliff, so the measured choice lands near the budget instead of far
    past it."""
    keep = ctx.normalize(keep)
    if ctx.budget.kind != "latency":
        return keep
    limit = ctx.limit()
    start = ctx.predict(keep)
    steps = {g: ctx.predictor.useful_widths(g, keep) for g in ctx.widths}
    ctx.phase = "staircase"
    path = [keep]
    cur, cur_ms = dict(keep), start
    for _ in range(max_rounds):
        best = None
        for g, ws in steps.items():
            up = next((w for w in ws if w > cur[g]), None)
            if up is None:
                continue
            cand = {**cur, g: up}
            ms = ctx.predict(cand)
            if ms > limit:
                continue
            rate = max(ms - cur_ms, 0.0) / (up - cur[g])
            if best is None or rate < best[0]:
                best = (rate, cand, ms)
        if best is None:
            break
        _, cur, cur_ms = best
        path.append(dict(cur))
    # evaluate the bisected point, the last climbed point and a few in between
    picks = sorted({0, len(path) - 1} | {round(i * (len(path) - 1) / 4) for i in range(1, 4)})
    evaluated = ctx.evaluate_many([path[i] for i in picks], phase="staircase")
    ok = [p for p in evaluated if budget_value(ctx, p["keep"]) <= limit] or evaluated[:1]
    chosen = ctx.preferred(ok)[0]  # top-1, ties within its noise: most MACs kept
    info = {"bisected_predicted_ms": start, "limit_ms": limit, "steps_climbed": len(path) - 1,
            "chosen_predicted_ms": budget_value(ctx, chosen["keep"]),
            "evaluated": len(evaluated), "chosen_top1": chosen["top1"]}
    info["gap_to_budget"] = 1 - info["chosen_predicted_ms"] / limit
    if len(path) == 1:
        info["note"] = ("no useful width between the bisected point and the budget: every step "
                        "up the staircase would exceed it")
    ctx.info["staircase"] = info
    if keep_at is not None:
        for f in (0.95, 0.9, 0.85, 0.8):
            _, k = bisect(ctx, keep_at, lo, hi, limit=limit * f)
            evaluated.append(ctx.evaluate(k, phase="staircase"))
        info["tighter_points"] = 4
    # every stair evaluated is a finalist: if the measured latency disagrees with the predicted
    # one at the top stair, a lower one may still meet the budget measured
    ctx.staircase_points = evaluated
    return chosen["keep"]


def layer_sweep(ctx: Search, ratios: list[float], phase: str,
                until: float | None = None) -> dict[str, dict[float, float]]:
    """Prune each group alone at each ratio (the rest whole): accuracy drop per (group, ratio).
    The keep count is :func:`prunelab.sweep.layer_keep`, as in ``prunelab criteria evaluate
    --per-layer``.  With ``until``: the ratios largest first, one batch each, a group's smaller
    ratios only while its drops exceed ``until`` (what the largest ratio costing at most
    ``until`` needs, and no more: on resnet56 27 of 30 groups pass at 0.8, so 33 evaluations of
    near-unpruned networks instead of 60); only the evaluated pairs are in the result."""
    from ..sweep import layer_keep

    ctx.phase = phase
    drops: dict[str, dict[float, float]] = {g: {} for g in ctx.widths}
    rounds = [ratios] if until is None else [[r] for r in sorted(ratios, reverse=True)]
    for rs in rounds:
        jobs = [(g, r) for g in ctx.widths for r in rs
                if until is None or all(d > until for d in drops[g].values())]
        rows = ctx.evaluate_many([{g: layer_keep(ctx.widths[g], r)} for g, r in jobs])
        for (g, r), p in zip(jobs, rows):
            drops[g][r] = ctx.base["top1"] - p["top1"]
    return drops


def _min_keep(w: int, max_ratio: float) -> int:
    return max(1, math.ceil(w * (1 - max_ratio)))


def reach_budget(ctx: Search, rmax: dict[str, float], drops: dict[str, dict[float, float]],
                 max_ratio: float, limit: float, least=None) -> list[str]:
    """Widen the bounds ``rmax`` (in place) until the space's most pruned corner meets ``limit``:
    the groups that lose least at their largest swept ratio first, each to ``max_ratio``;
    returns the groups widened (none when the bounds already reach it).  ``least(g, r)``: group
    ``g``'s narrowest width in the space at bound ``r`` (default: ``_min_keep``).  Without it a
    budget beyond the bounds is out of the search's reach and only the landing's path, anchored
    on a choice made for a looser budget, can get there."""
    least = least or (lambda g, r: _min_keep(ctx.widths[g], r))

    def corner() -> dict[str, int]:
        return {g: least(g, rmax[g]) for g in ctx.widths}

    def cost(g: str) -> float:
        return drops[g][max(drops[g])] if drops[g] else 0.0

    widened = []
    for g in sorted((g for g in ctx.widths if rmax[g] < max_ratio), key=lambda g: (cost(g), g)):
        if budget_value(ctx, corner()) <= limit:
            break
        rmax[g] = max_ratio
        widened.append(g)
    return widened


# -- seed A: NSGA-II over hardware steps -------------------------------------------------------
@SEARCHES.register("nsga2", "multi-objective NSGA-II (pymoo) on predicted target latency and "
                   "validation error, genes on the target's useful widths, ranges from a "
                   "sensitivity analysis, the budget anchored on measured latency (seed A)",
                   criterion="deeplift",
                   options={"pop": Opt(int, ge=4), "gens": Opt(int, ge=1),
                            "sens_ratios": Opt(list, gt=0, lt=1), "sens_drop": Opt(float, ge=0),
                            "sens_floor": Opt(float, ge=0, lt=1),
                            "max_ratio": Opt(float, gt=0, lt=1), "max_options": Opt(int, ge=2),
                            "step": Opt(int, ge=0), "anchor": Opt(int, ge=0, le=2)})
def nsga2(ctx: Search) -> None:
    """Options: pop (20), gens (12), sens_ratios ([0.5, 0.8]), sens_drop (0.1: the largest sweep
    ratio costing at most this much validation top-1 bounds a group's pruning), sens_floor (0.5:
    every group may be pruned at least this much whatever the sweep says; the sweep's score,
    before any fine-tuning, does not rank like the fine-tuned result), max_ratio (0.9),
    max_options (16 widths per group), step (0 = the target's useful widths, N = multiples of
    N), anchor (2: with a latency budget, the predictor's error near the budget is measured
    before the space is built, where the uniform path measures the budget
    (:func:`.anchor.anchor_on_path`), and again every quarter of the generations, on the
    population's points nearest the limit; 1: the first only; 0: the predictor as it is)."""
    try:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.evaluator import Evaluator
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.problems.static import StaticProblem
    except ImportError:
        raise PrunelabError("nsga2 needs pymoo; pip install 'prunelab[search]'") from None
    from .anchor import anchor, anchor_on_path

    pop, gens = ctx.option("pop", 20), ctx.option("gens", 12)
    max_ratio, drop_tol = ctx.option("max_ratio", 0.9), ctx.option("sens_drop", 0.1)
    floor = ctx.option("sens_floor", 0.5)
    max_opts, step = ctx.option("max_options", 16), ctx.option("step", 0)
    anchors = ctx.option("anchor", 2) if ctx.budget.kind == "latency" else 0
    if pop < 4 or gens < 1 or not 0 < max_ratio < 1 or max_opts < 2 or step < 0:
        raise PrunelabError("nsga2 needs pop >= 4, gens >= 1, max_ratio in (0, 1), "
                            "max_options >= 2, step >= 0")
    floor = min(floor, max_ratio)
    # a swept ratio at or under the floor cannot change a bound: not evaluated
    sens = [r for r in _ratios(ctx, "sens_ratios", [0.5, 0.8]) if r > floor]
    ctx.plan(len(ctx.widths) * len(sens) + pop * (gens + 1))
    drops = layer_sweep(ctx, sens, "sensitivity", until=drop_tol) if sens else \
        {g: {} for g in ctx.widths}
    ctx.plan(sum(map(len, drops.values())) + pop * (gens + 1))
    if anchors:  # the budget where the target, not the table, meets it
        def uniform(r: float) -> dict[str, int]:
            return {g: _min_keep(w, r) for g, w in ctx.widths.items()}

        anchor_on_path(ctx, "space", uniform, lambda: bisect(ctx, uniform, 0.0, max_ratio)[0])
    limit, slack = ctx.limit(), (0.1 if ctx.budget.kind == "latency" else 0.0)
    rmax = {}
    for g in ctx.widths:
        ok = [r for r, d in drops[g].items() if d <= drop_tol]
        rmax[g] = min(max_ratio, max([floor, *ok]))

    def widths_at(g: str, r: float) -> list[int]:
        return _widths_on_steps(ctx, g, ctx.widths[g], _min_keep(ctx.widths[g], r), step,
                                max_opts)

    widened = reach_budget(ctx, rmax, drops, max_ratio, limit,
                           least=lambda g, r: min(widths_at(g, r)))
    if widened:
        ctx.info["widened"] = widened
    options = {g: widths_at(g, rmax[g]) for g in ctx.widths}
    ctx.info["space"] = {g: len(o) for g, o in options.items()}  # widths tried per group
    names = list(ctx.widths)
    xu = np.array([len(options[g]) - 1 for g in names])

    def keep_of(x) -> dict[str, int]:
        return {g: options[g][int(i)] for g, i in zip(names, x)}

    def genes(pop) -> np.ndarray:  # a population's genomes, rounded into the space
        return np.clip(np.round(pop.get("X")).astype(int), 0, xu)

    def excess(keep: dict[str, int]) -> float:  # the constraint, <= 0 when met
        return budget_value(ctx, keep) / ctx.limit() - (1 + slack)

    # initial population: the unpruned model, uniform levels, then random genomes
    rs = np.random.default_rng(ctx.seed)
    X0 = [np.zeros(len(names), dtype=int)]
    for f in np.linspace(0.25, 1.0, max(1, pop // 4)):
        X0.append(np.round(f * xu).astype(int))
    while len(X0) < pop:
        X0.append(rs.integers(0, xu + 1))
    problem = Problem(n_var=len(names), n_obj=2, n_ieq_constr=1, xl=np.zeros(len(names)),
                      xu=np.maximum(xu, 1e-9), vtype=int)
    algo = NSGA2(pop_size=pop, sampling=np.array(X0[:pop]),
                 crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
                 eliminate_duplicates=True)
    algo.setup(problem, termination=("n_gen", gens + 1), seed=ctx.seed, verbose=False)
    ctx.phase = "search"
    every = max(1, (gens + 1) // ANCHOR_ROUNDS)
    for gen in range(gens + 1):
        if anchors >= 2 and gen and gen % every == 0 and algo.pop is not None:
            # the predictor's error measured again on the population's own shapes (a
            # multiplier fitted on uniform shapes can be 30% off on lopsided ones): its points
            # nearest the limit, met or not (where the choice will come from), and the
            # survivors judged again with it before the next generation
            keeps = [keep_of(x) for x in genes(algo.pop)]
            F = algo.pop.get("F")
            near = sorted(range(len(keeps)), key=lambda i: (abs(excess(keeps[i]) + slack),
                                                            F[i][1]))[:ANCHOR_POINTS]
            anchor(ctx, f"generation {gen}", [keeps[i] for i in near])
            G = np.array([[excess(k)] for k in keeps])
            Evaluator(skip_already_evaluated=False).eval(
                StaticProblem(problem, F=F, G=G), algo.pop, count_evals=False)
        ctx.phase = f"generation {gen}/{gens}"
        P = algo.ask()
        if P is None or len(P) == 0:  # no offspring unlike every earlier one: the space is spent
            break
        F, G = [], []
        for p in ctx.evaluate_many([keep_of(x) for x in genes(P)], phase="search"):  # a generation
            F.append([p["latency_ms"], 1.0 - p["top1"]])
            G.append([excess(p["keep"])])
        Evaluator().eval(StaticProblem(problem, F=np.array(F), G=np.array(G)), P)
        algo.tell(infills=P)


ANCHOR_POINTS = 3  # population points measured by each of nsga2's anchors in the search ...
ANCHOR_ROUNDS = 4  # ... taken every quarter of the generations


def _widths_on_steps(ctx: Search, g: str, w: int, lo: int, step: int, max_opts: int) -> list[int]:
    """The widths a search tries for one group, widest first: the target's useful widths (each
    faster than every wider one, from the lookup table) and ``lo`` itself, or multiples of
    ``step``; at least ``lo``, at most ``max_opts`` of them (evenly thinned, both ends kept).
    ``lo`` is always there with useful widths: at a few channels a layer timed alone is mostly
    call cost, so the table cannot tell narrow widths apart, and measured they are faster
    (resnet20 on an Intel Xeon: the table's narrowest useful width of ``conv1`` is 5 of 16,
    and every group at a tenth measured 4.2x where the space's corner without it reached
    2.8x, short of a 3x budget)."""
    if step:
        ws = sorted({w} | {c for c in range(w - step, 0, -step)}, reverse=True)
    else:
        ws = sorted({c for c in ctx.predictor.useful_widths(g) if c >= lo} | {lo},
                    reverse=True)
    ws = [c for c in ws if c >= lo] or [w]
    if len(ws) > max_opts:
        idx = sorted({round(i * (len(ws) - 1) / (max_opts - 1)) for i in range(max_opts)})
        ws = [ws[i] for i in idx]
    return ws


# -- seed B: CIE -----------------------------------------------------------------------------
@SEARCHES.register("cie", "cross-layer importance evaluation: per-layer grid sweep, contribution "
                   "matrix, bisection on the accuracy tolerance until the budget is met (seed B)",
                   criterion="l1", options={"ratios": Opt(list, gt=0, lt=1),
                                            "front": Opt(int, ge=0, le=4)})
def cie(ctx: Search) -> None:
    """Options: ratios ([0.2, 0.4, 0.6, 0.8], the sweep grid), front (4: extra structures at
    0.7/0.85/1.15/1.3 x the budget, evaluated for the Pareto plot)."""
    ratios = _ratios(ctx, "ratios", [0.2, 0.4, 0.6, 0.8])
    extra = ctx.option("front", 4)
    ctx.plan(len(ctx.widths) * len(ratios) + 1 + extra)
    drops = layer_sweep(ctx, ratios, "sweep")
    # contribution matrix D[layer, ratio] with its monotone envelope
    # (+ a tie-break of 1e-4 per unit ratio, so layers whose sampled drops tie, e.g. all at
    # zero, are pruned at the same pace instead of all at once: the budget curve stays smooth)
    env = {}
    for g in ctx.widths:
        e, m = [], 0.0
        for j, r in enumerate(ratios):
            m = max(m, drops[g][r]) + 1e-4 * (r - (ratios[j - 1] if j else 0.0))
            e.append(m)
        env[g] = e
    contribution = {"ratios": ratios, "drop": drops, "envelope": env}

    def ratio_at(g: str, t: float) -> float:
        e, prev_r, prev_e = env[g], 0.0, 0.0
        for r, d in zip(ratios, e):
            if d > t:
                return prev_r if d <= prev_e else prev_r + (t - prev_e) / (d - prev_e) * (r - prev_r)
            prev_r, prev_e = r, d
        return ratios[-1]

    def keep_at(t: float) -> dict[str, int]:
        return {g: max(1, round(w * (1 - ratio_at(g, t)))) for g, w in ctx.widths.items()}

    hi = max(max(e) for e in env.values()) + 1e-6
    ctx.phase = "bisection"
    t, keep = bisect(ctx, keep_at, 0.0, hi)
    keep = staircase_finish(ctx, keep, keep_at=keep_at, lo=0.0, hi=hi)
    chosen = ctx.evaluate(keep, phase="search")
    v = budget_value(ctx, keep)
    ctx.info.update(tolerance=t, keep=chosen["keep"], contribution=contribution,
                    budget_value=v, budget_limit=ctx.limit(),
                    fraction_of_unpruned=v / ctx.base[ctx.budget.key])
    finals = [chosen, *(p for p in ctx.staircase_points if p is not chosen)]
    for f in [0.7, 0.85, 1.15, 1.3][:extra]:
        _, k = bisect(ctx, keep_at, 0.0, hi, limit=ctx.limit() * f)
        finals.append(ctx.evaluate(k, phase="front"))
    ctx.finalists = finals


# -- seed C: FP-OMP Search -------------------------------------------------------------------
@SEARCHES.register("omp-search", "greedy FP-OMP Search: trial-remove k filters from every layer, "
                   "keep the cheapest in accuracy, optional short fine-tune, repeat (seed C)",
                   criterion="fp-omp", options={"k": Opt(int, ge=0),
                                                "finetune_batches": Opt(int, ge=0),
                                                "max_steps": Opt(int, ge=1)})
def omp_search(ctx: Search) -> None:
    """Options: k (0 = one eighth of each layer's width; the paper's 5 suits 64-512 wide layers),
    finetune_batches (0: SGD steps on the accepted model after each step, which then becomes
    the base of the next step), max_steps (200)."""
    from ..io import load_model, save_model

    k_opt, ft, max_steps = ctx.option("k", 0), ctx.option("finetune_batches", 0), \
        ctx.option("max_steps", 200)
    if k_opt < 0 or ft < 0 or max_steps < 1:
        raise PrunelabError("omp-search needs k >= 0, finetune_batches >= 0, max_steps >= 1")
    if ft and getattr(ctx.crit, "compensation", None) == "sandwich":
        raise PrunelabError("omp-search with finetune_batches cannot re-prune sandwiched layers; "
                            "use fp-omp:compensation=fold")
    ks = {g: k_opt or max(1, w // 8) for g, w in ctx.widths.items()}
    keep, context, finals = dict(ctx.widths), "", []
    ctx.plan(len(ctx.widths) * 10)
    for step in range(max_steps):
        cost = ctx.cost(keep, context)
        if ctx.budget.met(cost, ctx.reference):
            break
        ctx.phase = f"step {step + 1}"
        trials = []
        groups = [g for g in ctx.widths if keep[g] - ks[g] >= 1]
        cands = [{**keep, g: keep[g] - ks[g]} for g in groups]
        for g, cand, p in zip(groups, cands, ctx.evaluate_many(cands, context=context)):
            gain = cost["macs"] - ctx.cost(cand, context)["macs"]
            trials.append((p["top1"], gain, g, cand, p))
        if not trials:
            break
        _, _, g, keep, p = max(trials, key=lambda t: (t[0], t[1]))
        finals.append(p)
        if ft:
            name = f"ft{step + 1}"
            folder = ctx.out / "steps" / name
            if (folder / "model.json").exists():
                net, _ = load_model(folder)
            else:
                from .scoring import short_train

                net, _ = ctx.build(p["keep"], context)
                short_train(net, ctx.data, ft, ctx.seed + step)
                spec = type(ctx.spec)(**{**ctx.spec.__dict__, "provenance": {"step": step + 1}})
                save_model(net, spec, folder, overwrite=True)  # our own step folder
            ctx.add_context(name, net)
            context = name
    ctx.finalists = finals[-min(len(finals), 2 * ctx.cfg.measure_front):] or None


# -- ABCPruner baseline ----------------------------------------------------------------------
@SEARCHES.register("abc", "ABCPruner's artificial bee colony over per-layer keep fractions in "
                   "tenths; fitness = validation top-1 after optional short training "
                   "(the baseline seed A compares against)", criterion="l1",
                   options={"food": Opt(int, ge=2), "cycles": Opt(int, ge=1),
                            "limit": Opt(int, ge=1), "alpha": Opt(float, ge=0.1, le=1),
                            "train_batches": Opt(int, ge=0)})
def abc(ctx: Search) -> None:
    """Options: food (10), cycles (20; the paper's 50 takes hours on 2 cores), limit (5),
    alpha (1.0: genes 1..alpha*10), train_batches (0 = BN recalibration only; the paper trains
    2 epochs).  The budget enters as feasibility: a candidate over it ranks below every one
    under it (ABCPruner itself has no cost term)."""
    food, cycles = ctx.option("food", 10), ctx.option("cycles", 20)
    limit, alpha, tb = ctx.option("limit", 5), ctx.option("alpha", 1.0), \
        ctx.option("train_batches", 0)
    amax = int(round(alpha * 10))
    if food < 2 or cycles < 1 or limit < 1 or not 1 <= amax <= 10 or tb < 0:
        raise PrunelabError("abc needs food >= 2, cycles >= 1, limit >= 1, alpha in [0.1, 1], "
                            "train_batches >= 0")
    names, rng = list(ctx.widths), ctx.rng
    ctx.plan(food * (1 + 2 * cycles))

    def keep_of(x) -> dict[str, int]:
        return {g: max(1, round(ctx.widths[g] * c / 10)) for g, c in zip(names, x)}

    def fitness(x) -> float:
        p = ctx.evaluate(keep_of(x), phase="search", train_batches=tb)
        return p["top1"] if p["feasible"] else -ctx.budget.excess(p, ctx.reference)

    def neighbour(i: int) -> list[int]:
        k = rng.choice([j for j in range(food) if j != i])
        v = list(xs[i])
        for j in rng.sample(range(len(names)), min(2, len(names))):
            v[j] = int(min(amax, max(1, round(v[j] + rng.uniform(-1, 1) * (v[j] - xs[k][j])))))
        return v

    def try_move(i: int) -> None:
        v = neighbour(i)
        fv = fitness(v)
        if fv > fit[i]:
            xs[i], fit[i], trial[i] = v, fv, 0
        else:
            trial[i] += 1

    ctx.phase = "initial"
    xs = [[rng.randint(1, amax) for _ in names] for _ in range(food)]
    ctx.evaluate_many([keep_of(x) for x in xs], phase="search", train_batches=tb)  # one batch
    fit = [fitness(x) for x in xs]
    trial = [0] * food
    for c in range(cycles):
        ctx.phase = f"cycle {c + 1}/{cycles}"
        for i in range(food):                       # employed bees
            try_move(i)
        top = max(fit)
        pos = [max(f, 0.0) for f in fit]
        prob = [0.9 * f / top + 0.1 if top > 0 else 1.0 for f in pos]
        i = n = 0
        while n < food:                             # onlooker bees
            if rng.random() < prob[i]:
                try_move(i)
                n += 1
            i = (i + 1) % food
        worst = max(range(food), key=lambda j: trial[j])
        if trial[worst] > limit:                    # scout bee
            xs[worst] = [rng.randint(1, amax) for _ in names]
            fit[worst], trial[worst] = fitness(xs[worst]), 0


# -- simple baselines ------------------------------------------------------------------------
def front_levels(ctx: Search, make_keep, hi: float, n: int) -> None:
    ctx.phase = "front"
    ctx.evaluate_many([make_keep(float(f) * hi) for f in np.linspace(0.1, 0.9, n)], phase="front")


@SEARCHES.register("uniform", "the same ratio for every layer, bisected to meet the budget "
                   "(aligned to round_to)", criterion="l1",
                   options={"round_to": Opt(int, ge=1), "front": Opt(int, ge=0)})
def uniform(ctx: Search) -> None:
    """Options: round_to (1), front (5 extra ratios from 0.1 to 0.9 for the Pareto plot)."""
    from ..pruning import align

    rt, n = ctx.option("round_to", 1), ctx.option("front", 5)
    if rt < 1 or n < 0:
        raise PrunelabError("uniform needs round_to >= 1 and front >= 0")
    ctx.plan(1 + n)

    def keep_at(r: float) -> dict[str, int]:
        return {g: align(round(w * (1 - r)), w, rt) for g, w in ctx.widths.items()}

    ctx.phase = "bisection"
    r, keep = bisect(ctx, keep_at, 0.0, 0.95)
    ctx.evaluate(keep, phase="search")
    staircase_finish(ctx, keep, keep_at=keep_at, lo=0.0, hi=0.95)
    front_levels(ctx, keep_at, 1.0, n)


@SEARCHES.register("global", "Torch-Pruning's global ranking: normalised scores compared across "
                   "layers, one threshold bisected to meet the budget (isomorphic=true ranks "
                   "within structurally identical groups only)", criterion="l1",
                   options={"isomorphic": Opt(bool), "max_ratio": Opt(float, gt=0, lt=1),
                            "round_to": Opt(int, ge=1), "front": Opt(int, ge=0)})
def global_(ctx: Search) -> None:
    """Options: isomorphic (false), max_ratio (0.9 per group), round_to (1), front (5)."""
    from ..pruning import align

    iso, max_ratio = ctx.option("isomorphic", False, bool), ctx.option("max_ratio", 0.9)
    rt, n = ctx.option("round_to", 1), ctx.option("front", 5)
    if not 0 < max_ratio < 1 or rt < 1 or n < 0:
        raise PrunelabError("global needs max_ratio in (0, 1), round_to >= 1, front >= 0")
    ctx.plan(1 + n)
    norm = {g: s / (s.abs().mean() + 1e-12) for g, s in ctx.scores.items()}
    clusters: dict[str, list[str]] = {}
    for gi in ctx.groups:
        clusters.setdefault(_signature(ctx, gi) if iso else "all", []).append(gi.name)
    pooled = {c: torch.sort(torch.cat([norm[g] for g in gs])).values for c, gs in clusters.items()}

    def keep_at(q: float) -> dict[str, int]:
        keep = {}
        for c, gs in clusters.items():
            s = pooled[c]
            thr = s[min(len(s) - 1, int(q * len(s)))] if q > 0 else -math.inf
            for g in gs:
                w = ctx.widths[g]
                k = int((norm[g] >= thr).sum()) if q > 0 else w
                keep[g] = align(max(k, _min_keep(w, max_ratio)), w, rt)
        return keep

    ctx.phase = "bisection"
    q, keep = bisect(ctx, keep_at, 0.0, 0.999)
    ctx.evaluate(keep, phase="search")
    staircase_finish(ctx, keep, keep_at=keep_at, lo=0.0, hi=0.999)
    front_levels(ctx, keep_at, 1.0, n)


def _signature(ctx: Search, gi) -> str:
    mods = dict(ctx.model.named_modules())
    parts = []
    for n in gi.producers + gi.consumers:
        m = mods[n]
        parts.append(f"{type(m).__name__}{tuple(getattr(m, 'weight').shape)}")
    return "|".join(sorted(parts))
