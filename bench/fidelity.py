"""Which cheap candidate score ranks like fine-tuning does (issue 24)?  Candidates of one model,
every one landed on the same measured speed-up, are scored by each cheap score and then
fine-tuned exactly as the proof grid does (bench/pareto.py: 4 epochs distilled from the unpruned
model); per score, its cost per candidate and its Spearman rank correlation with the fine-tuned
*validation* top-1 (the test split is never read here), with a 95% bootstrap interval.  A few
candidates are fine-tuned again with another seed: the noise ceiling.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/fidelity.py land resnet20     # timing: quiet core
    OMP_NUM_THREADS=1 taskset -c 0 python bench/fidelity.py score resnet20    # accuracy only
    OMP_NUM_THREADS=1 taskset -c 0 python bench/fidelity.py score resnet56 --scores bn-1k,kd-20
    python bench/fidelity.py table

``land`` draws seeded allocation shapes (a base ratio and each group's ratio scattered around
it, so the candidates differ in where they prune, not only how much; every group of the
residual stream keeps at least an eighth of its channels, at least 2: :func:`floor`) and lands
each on
``speedup=3`` on onnxruntime-cpu (batch 1, 1 thread) with the search's own landing stage
(paired in-process steps, 12-session decisions); only candidates that land inside
``[1.00, 1.05] x`` and above the floor are kept (the set landed before the floor keeps its
degenerate members, marked, out of the scores and tables).  ``score`` (no timing: it may share the machine) computes every
cheap score of every landed candidate, then its fine-tune; ``--shard K/N`` splits the
candidates between processes.  Everything resumes candidate by candidate from
bench/results/fidelity/<model>.json (committed as cells finish, so later sittings go on);
tables in bench/results/fidelity.{md,json}.

Scores (each after the candidate is pruned with l1 and its BN statistics re-estimated on 6
training batches, as the search does):

- ``bn-1k``: top-1 on the first 1,000 validation images (today's search score);
- ``bn-val``: top-1 on the whole validation split;
- ``kd-loss-1k``: minus the distillation loss against the unpruned model on those 1,000 images;
- ``kd-20`` / ``kd-50`` / ``kd-200`` / ``kd-500``: that many distillation steps (batch 128, lr
  0.01, the fine-tune's loss), BN re-estimated again, top-1 on the 1,000 images;
- ``kd-50-loss`` / ``kd-200-loss``: the same 50 / 200 steps, then the distillation loss instead
  of top-1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from pareto import FINETUNE  # noqa: E402
from stats import spearman  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "fidelity"
MODELS = {"resnet20": "resnet20.fmnist", "resnet56": "resnet56.fmnist"}
SPEEDUP = 3.0
SUBSET = 1000
STEPS = (20, 50, 200, 500)
NOISE_CANDIDATES = 4  # fine-tuned again with seed 1


def _store(model: str) -> Path:
    return CELLS / f"{model}.json"


def _read(model: str) -> dict:
    p = _store(model)
    return json.loads(p.read_text()) if p.exists() else {"model": MODELS[model],
                                                          "candidates": []}


def _write(model: str, d: dict) -> None:
    from prunelab.io import atomic_write_text

    CELLS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(_store(model), json.dumps(d, indent=1))


def _setup(model: str):
    from prunelab.commands import data_for, load
    from prunelab.criteria import make_criterion
    from prunelab.pruning import prunable_groups, score_groups

    net, spec = load(MODELS[model])
    data = data_for(spec)
    crit = make_criterion("l1")
    _, groups = prunable_groups(net, spec.input_shape, spec.num_classes)
    scores, _ = score_groups(net, crit, groups, data)
    return net, spec, data, crit, groups, scores


def _prune(net, spec, crit, scores, keep):
    from prunelab.pruning import prune

    return prune(net, crit, keep=keep, input_shape=spec.input_shape,
                 num_classes=spec.num_classes, scores=scores, count=False).model


def floor(w: int) -> int:
    """The fewest channels a residual-stream group of width ``w`` keeps in the study: an eighth
    of it (at least 2).  Below it a candidate is degenerate (one channel through a whole stage:
    the first landed set had 17 of 24 so, one fine-tuned to 34%), and ranking it says little
    about a search.  A block's inner group may go down to 1 (the block all but skipped)."""
    return max(2, w // 8)


def degenerate(keep: dict[str, int], widths: dict[str, int], stream: set[str]) -> bool:
    return any(k < floor(widths[g]) for g, k in keep.items() if g in stream)


def shapes(widths: dict[str, int], n: int, seed: int, stream: set[str] = frozenset()):
    # removal fractions around where resnet20 runs 3x (it keeps 12-43% of its channels there),
    # so the landing stage scales each shape little and seldom past a group's floor
    rng = np.random.default_rng(seed)
    while True:
        base = rng.uniform(0.55, 0.8)
        yield {g: max(floor(w) if g in stream else 1,
                      int(round(w * (1 - float(np.clip(base + rng.normal(0, 0.15), 0.0,
                                                       0.875))))))
               for g, w in widths.items()}


def land(model: str, n: int, seed: int, tries: int) -> None:
    """Land ``n`` candidates on ``speedup=3`` (timing: run it on a quiet core)."""
    import dataclasses

    from prunelab.hardware import cpu_info
    from prunelab.latency.paired import STEP_PROTOCOL, paired_speedup
    from prunelab.searches.budget import Budget
    from prunelab.searches.evaluator import widths_key
    from prunelab.searches.landing import Lander
    from prunelab.targets import TargetConfig, make_target

    net, spec, data, crit, groups, scores = _setup(model)
    widths = {g.name: g.width for g in groups}
    stream = {g.name for g in groups if len(g.producers) > 1}  # coupled by residual adds
    target = make_target(TargetConfig("onnxruntime-cpu", threads=1))
    d = _read(model)
    have = {c["key"] for c in d["candidates"]}
    d.setdefault("tried", 0)
    for c in d["candidates"]:  # a set landed before the floor: its degenerate ones marked
        c["degenerate"] = degenerate(c["keep"], widths, stream)

    def timer(keep, processes, sessions):
        proto = dataclasses.replace(STEP_PROTOCOL, sessions=sessions or 6)
        return paired_speedup(net, _prune(net, spec, crit, scores, keep), target,
                              spec.input_shape, proto, processes=processes, seed=seed)

    # the landing path stops at each group's floor (before it did not, and narrowed most shapes
    # to one channel a stage)
    floors = {g: floor(w) if g in stream else 1 for g, w in widths.items()}
    gen = shapes(widths, n, seed, stream)
    for _ in range(d["tried"]):  # the shapes already tried, skipped in order
        next(gen)
    while sum(not c["degenerate"] for c in d["candidates"]) < n and d["tried"] < tries:
        anchor = next(gen)
        d["tried"] += 1
        t0 = time.perf_counter()
        got = Lander(Budget.parse(f"speedup={SPEEDUP:g}"), widths, anchor, timer=timer,
                     decision_processes=0, floors=floors).land()
        key = widths_key(widths, got.keep)
        print(f"[fidelity] {model} shape {d['tried']}: {got.status} at {got.value:.3f}x "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if degenerate(got.keep, widths, stream):  # the landing pruned a group past its floor
            print(f"[fidelity] {model} shape {d['tried']}: degenerate, left out", flush=True)
        elif got.status == "landed" and key not in have:
            have.add(key)
            d["candidates"].append({"key": key, "keep": got.keep, "speedup": got.value,
                                    "degenerate": False,
                                    "interval": [got.estimate["low"], got.estimate["high"]],
                                    "kept": sum(got.keep.values()) / sum(widths.values()),
                                    "cpu": cpu_info()["cpu"], "scores": {}, "final": {}})
        _landed(model, d)


def score(model: str, shard: tuple[int, int], seed: int, names: list[str] | None = None
          ) -> None:
    """The cheap scores (``names``, default every one) and the fine-tune of every landed
    candidate (accuracy only)."""
    from prunelab.core import finetune
    from prunelab.searches.evaluator import Candidates
    from prunelab.searches.scoring import kd_score, short_train
    from prunelab.train import recalibrate_bn

    net, spec, data, crit, groups, scores = _setup(model)
    cands = Candidates(net, scores, crit, data, spec.input_shape, spec.num_classes,
                       recal_batches=6, val_images=SUBSET, seed=seed)
    k, of = shard
    widths = {g.name: g.width for g in groups}
    stream = {g.name for g in groups if len(g.producers) > 1}
    busy = True
    while busy:  # again while a pass found work: the landing may have added candidates
        busy = False
        d = _read(model)
        for c in d["candidates"]:  # by the current floor (a set landed before it has some)
            c["degenerate"] = degenerate(c["keep"], widths, stream)
        # the noise ceiling: the first NOISE_CANDIDATES kept candidates fine-tuned with seed 1 too
        noisy = [i for i, c in enumerate(d["candidates"]) if not c.get("degenerate")]
        noisy = set(noisy[:NOISE_CANDIDATES])
        for i, c in enumerate(d["candidates"]):
            if i % of != k or c.get("degenerate"):
                continue
            todo = [s for s in names or _score_names() if s not in c["scores"]]
            seeds = [0] + ([1] if i in noisy else [])
            if not todo and all(str(s) in c["final"] for s in seeds):
                continue
            busy = True
            keep = c["keep"]
            t0 = time.perf_counter()
            built, _ = cands.build(keep)
            build_s = time.perf_counter() - t0
            for name in todo:
                t0 = time.perf_counter()
                if name == "bn-1k":
                    v = cands.top1(built, SUBSET)
                elif name == "bn-val":
                    v = cands.top1(built, None)
                elif name == "kd-loss-1k":
                    v = kd_score(built, net, data.batches("val", 500, limit=SUBSET))
                else:
                    steps = int(name.split("-")[1])
                    m = copy.deepcopy(built)
                    short_train(m, data, steps, seed, teacher=net, kd_weight=FINETUNE["kd_weight"],
                                kd_temperature=FINETUNE["kd_temperature"])
                    recalibrate_bn(m, data.batches("train", 128, shuffle=True, seed=seed), 6)
                    v = (kd_score(m, net, data.batches("val", 500, limit=SUBSET))
                         if name.endswith("-loss") else cands.top1(m, SUBSET))
                c["scores"][name] = {"value": v, "seconds": build_s + time.perf_counter() - t0}
                _merge(model, i, c)
                print(f"[fidelity] {model} #{i} {name}: {v:.4f}", flush=True)
            for s in seeds:
                if str(s) in c["final"]:
                    continue
                r = finetune(_prune(net, spec, crit, scores, keep), data=data, teacher=net,
                             epochs=FINETUNE["epochs"], lr=FINETUNE["lr"],
                             batch_size=FINETUNE["batch_size"], kd_weight=FINETUNE["kd_weight"],
                             kd_temperature=FINETUNE["kd_temperature"], seed=s, threads=1,
                             desc=f"fidelity #{i}")
                c["final"][str(s)] = {"val_top1": r.score, "seconds": r.seconds}
                _merge(model, i, c)
                print(f"[fidelity] {model} #{i} fine-tuned (seed {s}): {100 * r.score:.2f}%",
                      flush=True)


def _locked(model: str, change) -> None:
    """``change(d)`` applied to the store as it is on disk now, under a lock: the landing and
    the scoring shards run at once and each writes only what it changed."""
    import fcntl

    (ROOT / "runs").mkdir(exist_ok=True)
    with open(ROOT / "runs" / f"fidelity-{model}.lock", "a") as lock:  # shards wait their turn
        fcntl.flock(lock, fcntl.LOCK_EX)
        d = _read(model)
        change(d)
        _write(model, d)


def _merge(model: str, i: int, c: dict) -> None:
    """Write candidate ``i`` back into the store (other shards write theirs)."""
    _locked(model, lambda d: d["candidates"].__setitem__(i, c))


def _landed(model: str, mine: dict) -> None:
    """The landing's news into the store: the shapes tried, its new candidates appended (the
    scorers index candidates by position, so nothing moves) and the degenerate marks."""
    def change(d):
        d["tried"] = mine["tried"]
        have = {c["key"] for c in d["candidates"]}
        d["candidates"] += [c for c in mine["candidates"] if c["key"] not in have]
        marks = {c["key"]: c["degenerate"] for c in mine["candidates"]}
        for c in d["candidates"]:
            c["degenerate"] = marks.get(c["key"], c.get("degenerate", False))
    _locked(model, change)


def noise_ceiling(mean_abs_diff: float, final_sd: float) -> float:
    """The rank correlation a perfect score could reach against one seed's fine-tuned top-1:
    the seed noise's standard deviation from the mean |seed 0 - seed 1| of a few candidates
    (for two draws of a normal noise, E|d| = 2 sigma / sqrt(pi)), the candidates' spread from
    all of them; for normals, a Pearson r = sqrt(1 - noise / total variance), as Spearman
    6/pi asin(r/2).

    >>> round(noise_ceiling(0.0, 0.01), 3), round(noise_ceiling(0.005, 0.01), 2)
    (1.0, 0.89)
    """
    import math

    if final_sd <= 0:
        return 0.0
    sigma = mean_abs_diff * math.sqrt(math.pi) / 2
    r = math.sqrt(max(0.0, 1 - (sigma / final_sd) ** 2))
    return 6 / math.pi * math.asin(r / 2)


CHOICE_SIZES = (6, 12)  # how many measured points meet the budget in a search: its choice's pool


def chosen_top1(score: np.ndarray, final: np.ndarray, n: int, draws: int = 20000,
                then: np.ndarray | None = None, seed: int = 0) -> float:
    """The mean fine-tuned top-1 of the point a score chooses from ``n`` candidates drawn at
    random (without replacement) from the study's: what a search's choice gets from the score.
    With ``then``: successive halving, the best third by ``score`` (at least 2) chosen from by
    ``then``.  ``score=final`` is the oracle (which one fine-tune seed's noise flatters).

    >>> f = np.array([0.1, 0.2, 0.3, 0.4])
    >>> round(chosen_top1(f, f, 4), 2), round(chosen_top1(-f, f, 4), 2)
    (0.4, 0.1)
    """
    rng = np.random.default_rng(seed)
    got = []
    for _ in range(draws):
        idx = rng.choice(len(final), n, replace=False)
        if then is not None:
            idx = idx[np.argsort(-score[idx], kind="stable")[:max(2, -(-n // 3))]]
            score_ = then
        else:
            score_ = score
        got.append(final[idx[int(np.argmax(score_[idx]))]])
    return float(np.mean(got))


def _score_names() -> list[str]:
    return ["bn-1k", "bn-val", "kd-loss-1k", *[f"kd-{s}" for s in STEPS], "kd-50-loss",
            "kd-200-loss"]


def tables() -> None:
    from prunelab.io import atomic_write_text

    out, lines = {}, [
        "**`python bench/fidelity.py`**: candidates landed on speedup=3 (onnxruntime-cpu, batch "
        "1, 1 thread, within [1.00, 1.05] x), each fine-tuned as the proof grid does "
        f"({FINETUNE['epochs']} epochs distilled); Spearman rank correlation of each cheap "
        "score with the fine-tuned validation top-1 (95% bootstrap interval over candidates) "
        "and its median cost per candidate on one core.", ""]
    for model in MODELS:
        d = _read(model)
        done = [c for c in d["candidates"] if "0" in c["final"] and not c.get("degenerate")]
        if len(done) < 4:
            continue
        final = [c["final"]["0"]["val_top1"] for c in done]
        rows = {}
        for name in _score_names():
            have = [c for c in done if name in c["scores"]]
            if len(have) < 4:
                continue
            rows[name] = {**spearman([c["scores"][name]["value"] for c in have],
                                     [c["final"]["0"]["val_top1"] for c in have]),
                          "seconds": float(np.median([c["scores"][name]["seconds"]
                                                      for c in have]))}
        # what each score's choice gets, from the pool a search chooses from
        full = [c for c in done if all(n in c["scores"] for n in rows)]
        fin = np.array([c["final"]["0"]["val_top1"] for c in full])
        sizes = [n for n in CHOICE_SIZES if n <= len(full)]
        choice = {}
        if sizes:
            val = {n: np.array([c["scores"][n]["value"] for c in full]) for n in rows}
            choice = {f"{n}": {name: chosen_top1(v, fin, n) for name, v in val.items()}
                      for n in sizes}
            for n in sizes:
                choice[f"{n}"].update({
                    "random": float(np.mean(fin)), "oracle": chosen_top1(fin, fin, n),
                    **({"kd-20 then kd-200": chosen_top1(val["kd-20"], fin, n,
                                                         then=val["kd-200"])}
                       if {"kd-20", "kd-200"} <= set(val) else {})})
        for name, r in rows.items():
            r["chosen_top1"] = {n: choice[n][name] for n in choice}
        pairs = [c["final"] for c in done if "1" in c["final"]]
        noise = [abs(p["0"]["val_top1"] - p["1"]["val_top1"]) for p in pairs]
        ceiling = noise_ceiling(float(np.mean(noise)), float(np.std(final, ddof=1))) \
            if noise else None
        out[model] = {"candidates": len(done), "scores": rows,
                      "final_range": [min(final), max(final)],
                      "final_sd": float(np.std(final, ddof=1)),
                      "seed_pairs": len(pairs),
                      "seed_abs_diff": float(np.mean(noise)) if noise else None,
                      "noise_ceiling": ceiling, "choice": choice,
                      "finetune_seconds": float(np.median([c["final"]["0"]["seconds"]
                                                           for c in done]))}
        o = out[model]
        lines += [f"{MODELS[model]}: {o['candidates']} candidates, fine-tuned validation top-1 "
                  f"{100 * o['final_range'][0]:.2f}-{100 * o['final_range'][1]:.2f}% (sd "
                  f"{100 * o['final_sd']:.2f} points); seed noise: mean |seed 0 - seed 1| "
                  + (f"{100 * o['seed_abs_diff']:.2f} points over {o['seed_pairs']} candidates"
                     if o["seed_pairs"] else "not measured yet")
                  + (f"; noise ceiling (the Spearman a perfect score could reach against one "
                     f"fine-tune seed) about {o['noise_ceiling']:.2f}"
                     if o["noise_ceiling"] is not None else "")
                  + f"; fine-tune {o['finetune_seconds'] / 60:.1f} min each.", ""]
        if choice:
            sizes_ = list(choice)
            lines += ["What a search's choice gets: the mean fine-tuned top-1 of the point each "
                      "score picks from N candidates drawn from these "
                      f"{len(full)} (N = {', '.join(sizes_)}: how many "
                      "measured points meet the budget in a search), against a random pick "
                      + ", ".join(f"{100 * choice[n]['random']:.2f}%" for n in sizes_)
                      + " and the best of N by the fine-tuned result itself "
                      + ", ".join(f"{100 * choice[n]['oracle']:.2f}%" for n in sizes_)
                      + " (flattered by one seed's noise)"
                      + ("; successive halving, kd-20 then kd-200 for the best third: "
                         + ", ".join(f"{100 * choice[n]['kd-20 then kd-200']:.2f}%"
                                     for n in sizes_)
                         if "kd-20 then kd-200" in choice[sizes_[0]] else "") + ".", ""]
        head = "".join(f" chosen of {n} |" for n in choice)
        lines += [f"| score | Spearman [95%] | cost per candidate |{head}",
                  "|---|---|---|" + "---|" * len(choice)]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['rho']:.3f} [{r['low']:.2f}, {r['high']:.2f}] | "
                         f"{r['seconds']:.1f} s |"
                         + "".join(f" {100 * v:.2f}% |" for v in r["chosen_top1"].values()))
        lines.append("")
    if not out:
        lines.append("no model has 4 fine-tuned candidates yet")
    atomic_write_text(RESULTS / "fidelity.json", json.dumps(out, indent=1))
    atomic_write_text(RESULTS / "fidelity.md", "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["land", "score", "table"])
    ap.add_argument("model", nargs="?", choices=sorted(MODELS))
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--tries", type=int, default=60, help="allocation shapes to try at most")
    ap.add_argument("--shard", default="0/1", help="K/N: score every N-th candidate from K")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scores", help="comma-separated scores to compute (default: all; a later "
                    "run with more adds the rest), e.g. bn-1k,kd-20 to confirm a choice")
    a = ap.parse_args()
    names = a.scores.split(",") if a.scores else None
    if names and set(names) - set(_score_names()):
        ap.error(f"unknown score(s) {sorted(set(names) - set(_score_names()))}; choose from "
                 f"{', '.join(_score_names())}")
    if a.stage != "table":
        if not a.model:
            ap.error("name the model: resnet20 or resnet56")
        if os.environ.get("OMP_NUM_THREADS") != "1":
            print("[fidelity] note: run one core per job (OMP_NUM_THREADS=1 taskset -c N)",
                  file=sys.stderr)
    if a.stage == "land":
        land(a.model, a.candidates, a.seed, a.tries)
    elif a.stage == "score":
        k, _, n = a.shard.partition("/")
        score(a.model, (int(k), int(n or 1)), a.seed, names)
    tables()


if __name__ == "__main__":
    main()
