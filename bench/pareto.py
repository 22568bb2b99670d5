"""Accuracy against *measured* speed-up, after equal fine-tuning: every prunelab method and
Torch-Pruning itself on one chart (issue 10).

Every cell (model, method + criterion, budget, seed) is one ``prunelab run`` folder under
``--runs`` (default ``runs/pareto``), so an interrupted benchmark resumes cell by cell, and inside
a cell stage by stage.  A finished cell's summary is copied to
``bench/results/pareto/<cell>.json``; those files are what the tables and charts are made from
and what marks a cell as done, so a later sitting on another machine (without the run folders)
goes on with the cells still missing.  After every cell the script rewrites
``bench/results/pareto-<model>.{json,md,png}`` (and ``-searched.png``: the same chart before
fine-tuning).

Run it on one core, as docs/proof.md says (a second job may use the other core):

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/pareto.py resnet20
    .venv/bin/python bench/pareto.py resnet20 --list        # the cells and which are done
    .venv/bin/python bench/pareto.py resnet20 --tables      # only rewrite tables and charts
    .venv/bin/python bench/pareto.py resnet20 --remeasure   # time all final models again, quiet

Grids (``GRIDS``): ``resnet20`` (nine methods at speedup=2, 3, 4), ``resnet56`` (four methods at
speedup=3), ``noise`` (one resnet20 cell with seeds 1 and 2 beside the grid's seed 0).  Every cell
uses the same fine-tuning (``FINETUNE``), target (``TARGET``) and verification (``VERIFY``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "pareto"

TARGET = {"name": "onnxruntime-cpu", "batch_size": 1, "threads": 1}
FINETUNE = {"epochs": 4, "teacher": "parent", "kd_weight": 0.5, "kd_temperature": 4.0,
            "lr": 0.01, "batch_size": 128, "threads": 1}
SEARCH = {"recal_batches": 6, "val_images": 1000, "measure_front": 12}
VERIFY = {"warmup": 20, "repeats": 100, "min_seconds": 1.0, "sessions": 5}


@dataclass(frozen=True)
class Method:
    label: str                 # the chart's line, the table's row
    method: str
    criterion: str | None
    options: dict = field(default_factory=dict)
    family: str = "prunelab"   # prunelab | baseline | torch-pruning


METHODS = {m.label: m for m in [
    Method("nsga2+deeplift", "nsga2", "deeplift"),
    Method("nsga2+l1", "nsga2", "l1"),
    Method("cie+l1", "cie", "l1"),
    Method("omp-search+fp-omp", "omp-search", "fp-omp"),
    Method("uniform+lrf", "uniform", "lrf", family="baseline"),
    Method("abc+l1", "abc", "l1", {"food": 10, "cycles": 20}, family="baseline"),
    Method("uniform+l1", "uniform", "l1", family="baseline"),
    Method("tp-global", "torch-pruning", None, {"global": True, "importance": "magnitude-l2"},
           family="torch-pruning"),
    Method("tp-uniform", "torch-pruning", None, {"global": False, "importance": "magnitude-l2"},
           family="torch-pruning"),
    # the peer at its best: channel counts aligned to the vector width, as its users deploy
    Method("tp-uniform-r8", "torch-pruning", None, {"global": False, "round_to": 8},
           family="torch-pruning"),
    Method("tp-uniform-r16", "torch-pruning", None, {"global": False, "round_to": 16},
           family="torch-pruning"),
    # Torch-Pruning's progressive pruning, its benchmarks' own recipe (global ranking, many
    # small steps along one trajectory)
    Method("tp-progressive", "torch-pruning", None, {"global": True, "steps": 40},
           family="torch-pruning"),
]}


@dataclass(frozen=True)
class Cell:
    model: str
    method: Method
    speedup: float          # the budget's value (a speed-up, or the fraction of MACs/params kept)
    seed: int = 0
    kind: str = "speedup"   # speedup | macs | params

    @property
    def name(self) -> str:
        tag = f"x{self.speedup:g}" if self.kind == "speedup" else f"{self.kind}{self.speedup:g}"
        s = f"{self.model.split('.')[0]}-{self.method.label}-{tag}"
        return s + (f"-seed{self.seed}" if self.seed else "")

    def config(self) -> dict:
        m = self.method
        search = {"method": m.method, "budget": f"{self.kind}={self.speedup:g}", **SEARCH,
                  "options": dict(m.options)}
        if m.criterion:
            search["criterion"] = m.criterion
        return {"run": {"seed": self.seed}, "model": {"ref": self.model}, "search": search,
                "target": dict(TARGET), "finetune": dict(FINETUNE), "verify": dict(VERIFY)}


def _grid_resnet20() -> list[Cell]:
    # the 3x column first: the goal is read there; then 2x and 4x
    return [Cell("resnet20.fmnist", m, s) for s in (3, 2, 4) for m in METHODS.values()]


# seeds 1 and 2 at every budget: the two prunelab rows the 3x column of the earlier grid put
# first, abc+l1 (seed A's reference) and Torch-Pruning's best row there
SEEDED = ("nsga2+deeplift", "omp-search+fp-omp", "abc+l1", "tp-uniform")

GRIDS = {
    "resnet20": _grid_resnet20,
    "resnet56": lambda: [Cell("resnet56.fmnist", m, 3) for m in METHODS.values()],
    "seeds": lambda: [Cell("resnet20.fmnist", METHODS[k], s, seed) for s in (3, 2, 4)
                      for k in SEEDED for seed in (1, 2)],
    # seeds B and C claim equal MACs / equal params: cells landed on those budgets
    "equal-cost": lambda: [Cell("resnet20.fmnist", METHODS[k], v, kind=kind)
                           for kind, pair in (("macs", ("cie+l1", "uniform+l1")),
                                              ("params", ("omp-search+fp-omp", "uniform+lrf")))
                           for v in (0.5, 0.35, 0.25) for k in pair],
    "noise": lambda: [Cell("resnet20.fmnist", METHODS["nsga2+deeplift"], 3, seed)
                      for seed in (1, 2)],
}
MODEL_OF_GRID = {"resnet20": "resnet20.fmnist", "resnet56": "resnet56.fmnist",
                 "noise": "resnet20.fmnist", "seeds": "resnet20.fmnist",
                 "equal-cost": "resnet20.fmnist"}


def run_cell(cell: Cell, runs: Path) -> dict | None:
    """Run (or resume) one cell with ``prunelab run`` in a child process; returns its record."""
    out = runs / cell.name
    runs.mkdir(parents=True, exist_ok=True)
    cfg_path = runs / f"{cell.name}.toml"
    from prunelab.pipeline import to_toml

    cfg_path.write_text(f"# bench/pareto.py cell {cell.name}\n" + to_toml(cell.config()))
    t0 = time.time()
    print(f"[pareto] {cell.name}: prunelab run {cfg_path} --out {out}", flush=True)
    r = subprocess.run([sys.executable, "-m", "prunelab.cli", "run", str(cfg_path), "--out",
                        str(out), "--json"], capture_output=True, text=True)
    log = runs / f"{cell.name}.log"
    log.write_text(r.stderr + "\n--- stdout ---\n" + r.stdout)
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        print(f"[pareto] {cell.name} failed (exit {r.returncode}, log {log}):\n{tail}",
              flush=True)
        return None
    s = json.loads((out / "summary.json").read_text())
    rec = record(cell, s, out)
    rec["bench_wall_seconds"] = time.time() - t0
    CELLS.mkdir(parents=True, exist_ok=True)
    (CELLS / f"{cell.name}.json").write_text(json.dumps(rec, indent=1))
    print(f"[pareto] {cell.name}: top-1 {100 * rec['final_top1']:.2f}% at "
          f"{rec['speedup']:.2f}x ({rec['speedup_verdict']})", flush=True)
    return rec


def record(cell: Cell, s: dict, out: Path) -> dict:
    """What the tables need from a finished run's summary.json (and its search result)."""
    rows = s["rows"]
    res = json.loads((out / "search" / "result.json").read_text())
    return {
        "cell": cell.name, "model": cell.model, "label": cell.method.label,
        "family": cell.method.family, "method": s["method"], "criterion": s["criterion"],
        "options": cell.method.options, "budget": s["budget"], "budget_kind": cell.kind,
        "budget_value": cell.speedup,
        "budget_speedup": cell.speedup if cell.kind == "speedup" else None,
        "seed": cell.seed, "budget_met": s["budget_met"],
        "base_top1": rows["unpruned"]["test_top1"], "searched_top1": rows["searched"]["test_top1"],
        "final_top1": rows["final"]["test_top1"], "final_val_top1": rows["final"]["val_top1"],
        "speedup": s["speedup"], "speedup_verdict": s["speedup_verdict"],
        "latency_ms": rows["final"]["latency_ms"], "base_latency_ms": rows["unpruned"]["latency_ms"],
        "searched_speedup": rows["unpruned"]["latency_ms"] / rows["searched"]["latency_ms"],
        "macs": rows["final"]["macs"], "params": rows["final"]["params"],
        "macs_kept": s["macs_kept"], "params_kept": s["params_kept"],
        "speedup_per_macs_reduction": s["speedup"] * s["macs_kept"],
        "evaluations": s["evaluations"], "search_seconds": s["search_seconds"],
        "finetune_seconds": s["finetune_seconds"], "wall_seconds": s["wall_seconds"],
        "method_info_staircase": res.get("method_info", {}).get("staircase"),
        **search_fields(res),
        "finetune": FINETUNE, "target": s["target_config"], "protocol": s["protocol"],
        "commit": _commit(), "cpu": run_cpu(out),
    }


def isa_class(isa: list[str]) -> str:
    """The vector ISA the runtimes pick their kernels for (ONNX Runtime's blocked convolutions
    and their channel alignment differ between AVX2 and AVX-512 machines)."""
    return "AVX-512" if "avx512f" in isa else "AVX2" if "avx2" in isa else "pre-AVX2"


def cpu_label(dev: dict) -> str:
    """A device fingerprint (:func:`prunelab.hardware.cpu_info`) as ``AMD EPYC AVX-512``."""
    return f"{dev['cpu']} {isa_class(dev['isa'])}"


def run_cpu(out: Path) -> str | None:
    """The CPU a run folder's measurements were taken on (its environment.json)."""
    try:
        dev = json.loads((out / "environment.json").read_text())["target_fingerprint"]["device"]
    except (OSError, ValueError, KeyError):
        return None
    return cpu_label(dev)


def search_fields(res: dict) -> dict:
    """From the search's result.json: the speed-up its confirmation measured (before
    fine-tuning, 2 models interleaved), the landing's status, the choice's score (fidelity) and
    whether the measured finish (before the landing stage) ran and chose."""
    c = res.get("chosen", {})
    fin = c.get("measured_finish")
    fid = res.get("fidelity") or {}
    pts = fid.get("points") or []
    return {"search_speedup": c.get("measured_speedup"),
            "landing": (c.get("landing") or {}).get("status"),
            # the choice's score: cheap for all (bn), or rich (kd:N) for the points that may be
            # chosen, how many of them, and how many were projected onto the budget
            "fidelity": {"setting": fid.get("setting", "bn"), "points": len(pts),
                         "projected": sum("projected_from" in p for p in pts)},
            "measured_finish": None if not fin else
            {"trigger": fin.get("trigger"), "timed": len(fin.get("steps", [])),
             "chose": fin.get("chosen_from_finish"), "note": fin.get("note")}}


def _quiet_text(r: dict) -> str:
    if r.get("quiet_speedup") is None:
        return "-"
    rs = r.get("quiet_runs") or [r["quiet_speedup"]]
    spread = f", {min(rs):.2f}-{max(rs):.2f}" if len(rs) > 1 else ""
    return f"{r['quiet_speedup']:.2f}x ({len(rs)} runs{spread})"


def _cpu_text(r: dict) -> str:
    cell, quiet = r.get("cpu") or "not recorded", r.get("quiet_cpu")
    return cell if quiet in (None, cell) else f"{cell} (re-measured on {quiet})"


def _finish_text(r: dict) -> str:
    fin = r.get("measured_finish")
    if "measured_finish" not in r:
        return "-"
    if not fin:
        return "not needed"
    return f"{fin['trigger']}, {fin['timed']} timed, " + ("chosen" if fin["chose"] else
                                                          "not chosen")


def _commit() -> str | None:
    """The prunelab commit the cell ran (cells of one table may come from several sittings)."""
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or None


QUIET = {"warmup": 50, "repeats": 200, "min_seconds": 1.0, "sessions": 5}


def remeasure(model: str, runs: Path) -> int:
    """Time every finished cell's final model of ``model`` again, each interleaved with the
    unpruned model (``QUIET`` protocol), one pair after the other, while nothing else runs: two
    cells side by side on the 2 cores shift each other's ratios (a cell's own verify and its
    search's confirmation of the same widths disagreed by up to 30% while the other core
    fine-tuned), so the verdicts read these figures.  Pairs, not all models in one round-robin:
    twenty models interleaved evict each other's weights from the caches, and every small
    model then measured a third slower than it runs alone.  Writes ``quiet_speedup`` (and the
    latest run's noise, protocol, time) into each record; returns how many were measured
    (cells whose run folder under ``runs`` holds the run the record was made from).  Each call
    adds one measurement to ``quiet_runs`` (runs under another protocol are dropped first);
    ``quiet_speedup`` is their median.  Each measurement is itself the fastest session's median
    over ``QUIET['sessions']`` fresh runtime sessions: on this machine a stretch of interference
    can slow a whole session (a pair's ratio 1.3-1.6x apart between sessions), so the first
    version, one session per run, needed several runs per cell."""
    from prunelab.hardware import cpu_info
    from prunelab.io import atomic_write_text, load_model
    from prunelab.latency.measure import Protocol, compare, measure
    from prunelab.targets import make_target

    recs = [(p, json.loads(p.read_text())) for p in sorted(CELLS.glob("*.json"))]
    recs = [(p, r) for p, r in recs if r["model"] == model and _same_run(r, runs / r["cell"])]
    if not recs:
        return 0
    base, spec = load_model(model)
    target = make_target(TARGET["name"], batch_size=TARGET["batch_size"],
                         threads=TARGET["threads"])
    proto = Protocol(**QUIET)
    here = cpu_label(cpu_info())
    print(f"[pareto] re-measuring {len(recs)} final models of {model}, each interleaved with "
          f"the unpruned one in {QUIET['sessions']} fresh sessions ({QUIET['repeats']} runs "
          f"after {QUIET['warmup']} warm-up, at least {QUIET['min_seconds']:g} s each)",
          flush=True)
    for p, r in recs:
        net = load_model(runs / r["cell"] / "finetuned")[0]
        times = measure(target, [base, net], spec.input_shape, proto)
        cmp = compare(times[0], times[1])
        if r.get("quiet_protocol") != QUIET:
            r["quiet_runs"] = []  # figures taken under another protocol are not pooled
        runs_ = r.setdefault("quiet_runs", []) + [cmp["speedup"]]
        r.update(quiet_runs=runs_, quiet_speedup=statistics.median(runs_),
                 quiet_noise=cmp["noise_b"],
                 quiet_base_noise=cmp["noise_a"], quiet_protocol=dict(QUIET),
                 quiet_when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 quiet_commit=_commit(),
                 quiet_cpu=here)
        r.setdefault("cpu", run_cpu(runs / r["cell"]))  # records from before the field
        atomic_write_text(p, json.dumps(r, indent=1))
        print(f"[pareto]   {r['cell']}: {cmp['speedup']:.2f}x (in cell {r['speedup']:.2f}x)",
              flush=True)
    return len(recs)


def _same_run(r: dict, out: Path) -> bool:
    """Whether run folder ``out`` is finished and is the run record ``r`` was made from (a cell
    rerun elsewhere leaves an older folder of the same name behind)."""
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    final = s["rows"]["final"]["test_top1"]
    return (out / "finetuned").is_dir() and (final, s["wall_seconds"]) == \
        (r["final_top1"], r["wall_seconds"])


def speedup_of(r: dict) -> float:
    """The speed-up the verdicts read: the quiet re-measurement where there is one."""
    return r.get("quiet_speedup") or r["speedup"]


# ----------------------------------------------------------------------------- tables

def load_records(model: str) -> list[dict]:
    recs = []
    for p in sorted(CELLS.glob("*.json")) if CELLS.is_dir() else []:
        r = json.loads(p.read_text())
        if r["model"] == model:
            recs.append(r)
    return recs


def _interp_speedup(points: list[tuple[float, float]], top1: float) -> float | None:
    """A method's measured speed-up at a given top-1, linear between its cells (speed-up
    sorted); None outside the range its cells span."""
    pts = sorted(points)
    for (s0, a0), (s1, a1) in zip(pts, pts[1:]):
        lo, hi = min(a0, a1), max(a0, a1)
        if lo <= top1 <= hi and a0 != a1:
            return s0 + (top1 - a0) / (a1 - a0) * (s1 - s0)
    for s, a in pts:
        if abs(a - top1) < 1e-9:
            return s
    return None


FLOOR = 0.97  # a speed-up budget is a floor: a cell under 0.97 x its budget did not reach it
BAND = 0.05   # ... and one within [1, 1.05] x sits on it (the landing stage's band)


def top1_at(points: list[tuple[float, float]], speed: float) -> tuple[float, str] | None:
    """A method's top-1 at measured speed-up ``speed``, read along its own curve (``points``:
    its cells' (measured speed-up, top-1)): linear between the two cells around ``speed``;
    where none is below it, a cell inside ``[1, 1 + BAND] x speed`` as it is (faster than
    asked, so it under-states the method); else None.  Returns the top-1 and how it was read."""
    pts = sorted(points)
    for (s0, a0), (s1, a1) in zip(pts, pts[1:]):
        if s0 <= speed <= s1 and s1 > s0:
            a = a0 + (speed - s0) / (s1 - s0) * (a1 - a0)
            return a, f"between {s0:.2f}x and {s1:.2f}x"
    near = [(s0, a0) for s0, a0 in pts if speed <= s0 <= (1 + BAND) * speed]
    if near:
        s0, a0 = min(near)
        return a0, f"its {s0:.2f}x cell"
    return None


def seed_spread(recs: list[dict], label: str, budget: float) -> tuple[float, int]:
    """The range of final top-1 over a method's seeds at one budget (points, and how many seeds
    there are; 0.0 with one seed)."""
    tops = [r["final_top1"] for r in recs if r["label"] == label and r["budget_speedup"] == budget]
    return (100 * (max(tops) - min(tops)) if len(tops) > 1 else 0.0), len(tops)


def _spread_text(spread: tuple[float, int]) -> str:
    return (f"seeds' spread {spread[0]:.2f} points over {spread[1]}" if spread[1] > 1 else
            "one seed")


def verdicts(recs: list[dict]) -> list[str]:
    """The issue's claims, read off the finished cells at equal measured speed.

    A speed-up budget is a floor: a method is read at exactly the budget's speed along its own
    curve of seed-0 cells (:func:`top1_at`), never from a cell slower than it.  Every prunelab
    method is compared with the best Torch-Pruning row at that speed (not only best against
    best), each difference with the seeds' spread beside it."""
    out = []
    main = [r for r in recs if r["seed"] == 0 and r.get("budget_kind", "speedup") == "speedup"]
    curves: dict[str, list[tuple[float, float]]] = {}
    family = {}
    for r in main:
        curves.setdefault(r["label"], []).append((speedup_of(r), r["final_top1"]))
        family[r["label"]] = r["family"]
    for b in sorted({r["budget_speedup"] for r in main}):
        slow = sorted(f"{r['label']} {speedup_of(r):.2f}x" for r in main
                      if r["budget_speedup"] == b and speedup_of(r) < FLOOR * b)
        if slow:
            out.append(f"speedup={b:g}: under the floor (measured below {FLOOR} x the budget): "
                       f"{', '.join(slow)}")
        at = {lab: got for lab, pts in curves.items() if (got := top1_at(pts, b))}
        missing = sorted(set(curves) - set(at))
        if missing:
            out.append(f"speedup={b:g}: no reading at {b:g}x (no cell reaches it along the "
                       f"method's curve): {', '.join(missing)}")
        tp = {lab: v for lab, v in at.items() if family[lab] == "torch-pruning"}
        if not tp:
            continue
        best_tp = max(tp, key=lambda lab: tp[lab][0])
        a_tp, how_tp = tp[best_tp]
        sp_tp = seed_spread(recs, best_tp, b)
        ours = {lab: v for lab, v in at.items() if family[lab] == "prunelab"}
        for lab in sorted(ours, key=lambda k: -ours[k][0]):
            a, how = ours[lab]
            out.append(f"speedup={b:g}: {lab} {100 * a:.2f}% ({how}; "
                       f"{_spread_text(seed_spread(recs, lab, b))}) vs best Torch-Pruning "
                       f"{best_tp} {100 * a_tp:.2f}% ({how_tp}; {_spread_text(sp_tp)}): "
                       f"{100 * (a - a_tp):+.2f} points")
        if ours:
            best = max(ours, key=lambda lab: ours[lab][0])
            d = 100 * (ours[best][0] - a_tp)
            out.append(f"speedup={b:g} goal (prunelab's best >= 1.0 point above Torch-Pruning's "
                       f"best at equal speed): {'met' if d >= 1.0 else 'not met'}, {best} "
                       f"{d:+.2f} points")
    a_lab, b_lab = "nsga2+deeplift", "abc+l1"
    if a_lab in curves and b_lab in curves:
        for s0, top in sorted(curves[b_lab]):
            sa = _interp_speedup(curves[a_lab], top)
            if sa is None:
                out.append(f"seed A: at abc+l1's {100 * top:.2f}% ({s0:.2f}x) nsga2+deeplift's "
                           "curve does not reach that top-1: no reading")
                continue
            out.append(f"seed A (measured speed-up at equal top-1; claim 1.3-1.4x, goal >= 1.4x):"
                       f" at {100 * top:.2f}% nsga2+deeplift runs {sa:.2f}x vs abc+l1 "
                       f"{s0:.2f}x: {sa / s0:.2f}x faster "
                       f"({'met' if sa / s0 >= 1.4 else 'not met'})")
    for tag, x, y, kind in (("seed B", "cie+l1", "uniform+l1", "macs"),
                            ("seed C", "omp-search+fp-omp", "uniform+lrf", "params")):
        cells = [r for r in recs if r["seed"] == 0 and r.get("budget_kind") == kind]
        for v in sorted({r["budget_value"] for r in cells}):
            rx = [r for r in cells if r["label"] == x and r["budget_value"] == v]
            ry = [r for r in cells if r["label"] == y and r["budget_value"] == v]
            if rx and ry:
                a, c = rx[0], ry[0]
                d = 100 * (a["final_top1"] - c["final_top1"])
                out.append(f"{tag} (top-1 at equal {kind}={v:g}): {x} {100 * a['final_top1']:.2f}% "
                           f"({kind} kept {100 * a[f'{kind}_kept']:.1f}%) vs {y} "
                           f"{100 * c['final_top1']:.2f}% ({100 * c[f'{kind}_kept']:.1f}%): "
                           f"{d:+.2f} points ({'met' if d > 0 else 'not met'})")
    return out


def write_tables(model: str) -> Path | None:
    recs = load_records(model)
    stem = RESULTS / f"pareto-{model.split('.')[0]}"
    if not recs:
        return None
    recs.sort(key=lambda r: (r.get("budget_kind", "speedup") != "speedup",
                             r.get("budget_kind", "speedup"),
                             r.get("budget_value", r["budget_speedup"]), r["family"], r["label"],
                             r["seed"]))
    lines = [f"# {model} on onnxruntime-cpu (batch 1, 1 thread): accuracy vs measured speed-up",
             "",
             f"Every cell: `prunelab run` with the same fine-tuning ({FINETUNE['epochs']} epochs, "
             f"distilled from the unpruned model, kd_weight {FINETUNE['kd_weight']}, "
             f"T {FINETUNE['kd_temperature']}, lr {FINETUNE['lr']}, batch "
             f"{FINETUNE['batch_size']}, 1 thread), same splits; top-1 on the test split; "
             f"speed-up = unpruned / final latency measured interleaved on the target "
             f"(since 850147f: in {VERIFY['sessions']} fresh runtime sessions, "
             f"{VERIFY['repeats']} runs after {VERIFY['warmup']} warm-up and at least "
             f"{VERIFY['min_seconds']:g} s each, the fastest session's median; before it one "
             "session of 300 runs, at least 3 s since 8f77440). One core per cell "
             "(`OMP_NUM_THREADS=1 taskset -c N`).", "",
             "| budget | method | family | seed | top-1 final | top-1 searched | speed-up "
             "(in cell) | quiet re-measure | in search | measured finish | MACs kept | params "
             "kept | speed-up x MACs kept | evals | search s | fine-tune s | commit | CPU |",
             "|" + "---|" * 18]
    for r in recs:
        noise = "" if r["speedup_verdict"].endswith("faster") else f" ({r['speedup_verdict']})"
        lines.append(
            f"| {r['budget']} | {r['label']} | {r['family']} | {r['seed']} | "
            f"**{100 * r['final_top1']:.2f}%** | {100 * r['searched_top1']:.2f}% | "
            f"{r['speedup']:.2f}x{noise} | {_quiet_text(r)} | "
            f"{'-' if r.get('search_speedup') is None else format(r['search_speedup'], '.2f') + 'x'}"
            f" | {_finish_text(r)} | {100 * r['macs_kept']:.1f}% | "
            f"{100 * r['params_kept']:.1f}% | {speedup_of(r) * r['macs_kept']:.2f} | "
            f"{r['evaluations']} | {r['search_seconds']:.0f} | {r['finetune_seconds']:.0f} | "
            f"{r.get('commit') or 'before b84d970'} | {_cpu_text(r)} |")
    base = recs[0]
    lines += ["", f"Unpruned: {100 * base['base_top1']:.2f}% test top-1. "
              "`speed-up (in cell)`: the cell's own verify, run while the other core ran "
              "another cell. `quiet re-measure`: every final model timed again, interleaved "
              "with the unpruned model, one pair after another with nothing else running "
              f"(each run: {QUIET['sessions']} fresh sessions of {QUIET['repeats']} runs after "
              f"{QUIET['warmup']} warm-up, at least {QUIET['min_seconds']:g} s, the fastest "
              "session's median; the median of the runs, and their range); "
              "the verdicts and the chart read it where it exists. `speed-up x MACs kept` is "
              "that speed-up over the MACs reduction (1.0: time fell exactly as MACs did). "
              "`in search`: the speed-up the search's confirmation measured (2 models "
              "interleaved, before fine-tuning). `measured finish`: whether the search "
              "bisected on measured latency (since 48ade9e; "
              "`overshoot` or `over budget`: what triggered it; `-`: cells from before it). "
              "`commit`: the prunelab the cell ran (cells from before b84d970 chose without the "
              "run's latency anchor and the top-1 tie rule; before 48ade9e the anchor was cached "
              "per device). `CPU`: the machine the cell ran on (its ISA picks ONNX Runtime's "
              "kernels, so the speed-ups of cells on different machines are not one scale), "
              "and the quiet re-measure's where it differs.", "", "## Verdicts (computed from the "
              "cells above)", ""]
    lines += [f"- {v}" for v in verdicts(recs)] or ["- not enough finished cells yet"]
    seeds = [r for r in recs if r["label"] == "nsga2+deeplift" and r["budget_speedup"] == 3]
    if len(seeds) >= 2:
        tops = [100 * r["final_top1"] for r in seeds]
        sps = [speedup_of(r) for r in seeds]
        lines.append(f"- noise: nsga2+deeplift at speedup=3 with seeds "
                     f"{[r['seed'] for r in seeds]}: top-1 {', '.join(f'{t:.2f}' for t in tops)}"
                     f" (range {max(tops) - min(tops):.2f} points), speed-up "
                     f"{', '.join(f'{s:.2f}' for s in sps)}")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"model": model, "cells": recs,
                                                     "verdicts": verdicts(recs)}, indent=1))
    for key, suffix, title in (("final", "", "after fine-tuning"),
                               ("searched", "-searched", "searched, before fine-tuning")):
        _chart(recs, Path(f"{stem}{suffix}.png"), key, f"{model}: {title}")
    return stem.with_suffix(".md")


def _chart(recs: list[dict], path: Path, key: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in recs if r.get("budget_kind", "speedup") == "speedup"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    styles = {"prunelab": "-", "baseline": "--", "torch-pruning": ":"}
    for label in METHODS:
        pts = sorted((r["searched_speedup"] if key == "searched" else speedup_of(r),
                      100 * r[f"{key}_top1"]) for r in recs if r["label"] == label
                     and r["seed"] == 0)
        if pts:
            fam = METHODS[label].family
            ax.plot(*zip(*pts), styles[fam], marker="o", label=f"{label} ({fam})")
    extra = [r for r in recs if r["seed"] != 0]
    if extra:
        ax.scatter([speedup_of(r) if key == "final" else r["searched_speedup"] for r in extra],
                   [100 * r[f"{key}_top1"] for r in extra], marker="x", c="k",
                   label="other seeds (noise)")
    ax.scatter([1.0], [100 * recs[0]["base_top1"]], marker="*", s=200, c="#dd8452", zorder=5,
               label="unpruned")
    ax.set_xlabel("speed-up over the unpruned model, measured interleaved on onnxruntime-cpu")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    global RESULTS, CELLS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", choices=sorted(GRIDS))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "pareto"))
    ap.add_argument("--only", default="", help="run only cells whose name contains this")
    ap.add_argument("--methods", default="", help="comma-separated method labels to run "
                    f"(default all: {', '.join(METHODS)})")
    ap.add_argument("--results", default=str(RESULTS),
                    help="where cell records, tables and charts go (default bench/results)")
    ap.add_argument("--list", action="store_true", help="list the cells and which are done")
    ap.add_argument("--tables", action="store_true", help="only rewrite tables and charts")
    ap.add_argument("--remeasure", action="store_true",
                    help="time every finished cell's final model again (run folders under "
                    "--runs), each interleaved with the unpruned model, adding one run to the "
                    "record; run it with nothing else running")
    args = ap.parse_args()
    RESULTS = Path(args.results)
    CELLS = RESULTS / "pareto"
    labels = [m for m in args.methods.split(",") if m]
    bad = [m for m in labels if m not in METHODS]
    if bad:
        ap.error(f"unknown method label {bad[0]!r}; labels: {', '.join(METHODS)}")
    cells = [c for c in GRIDS[args.grid]() if args.only in c.name
             and (not labels or c.method.label in labels)]
    model = MODEL_OF_GRID[args.grid]
    if args.remeasure:
        n = remeasure(model, Path(args.runs))
        print(f"[pareto] re-measured {n} cells" if n else
              f"[pareto] no finished cell of {model} has its run folder under {args.runs}")
    elif args.list:
        for c in cells:
            print(f"{'done' if (CELLS / f'{c.name}.json').exists() else 'todo'}  {c.name}")
        return
    elif not args.tables:
        if os.environ.get("OMP_NUM_THREADS") != "1":
            print("[pareto] warning: run with OMP_NUM_THREADS=1 taskset -c N (one core per cell)",
                  flush=True)
        for c in cells:
            if (CELLS / f"{c.name}.json").exists():
                continue
            if run_cell(c, Path(args.runs)) is not None:
                write_tables(model)
    md = write_tables(model)
    print(f"[pareto] tables: {md}" if md else "[pareto] no finished cell yet")


if __name__ == "__main__":
    main()
