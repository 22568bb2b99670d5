"""Wall time of one search with 1 and with N Ray workers on this machine (issue 13), and the
per-candidate costs a cluster estimate is worked out from.

Each cell is one ``prunelab search ... --workers N`` from scratch: its own run folder and its
own, empty, latency cache (so the lookup table is built and timed in every cell, as on a new
machine), timed from the command's start to its exit.  The phases come from the search's
``result.json`` (``predictor_seconds``: lookup table and anchor; ``score_seconds``: the
criterion's scores; ``measure_seconds``: the front and the confirmation) and its evaluation log
(every candidate's prune + BN re-estimation + validation seconds, on the worker that ran it).

    python bench/scaleout.py            # resnet56 nsga2+deeplift speedup=2 and 3, 1 and 2 workers
    python bench/scaleout.py --budgets 3 --workers 2
    python bench/scaleout.py --tables             # only rewrite the table
    OMP_NUM_THREADS=1 taskset -c 0 python bench/scaleout.py --finetune   # each choice fine-tuned

Every cell searches with the search's defaults (population, generations, ``fidelity``, landing
included: the wall time is the whole command's), so the table says what a user waits today; the
record keeps the commit, the fidelity setting and the landing's status.

Run it with nothing else on the machine: the 2-worker cell uses both cores.  A finished cell's
record is ``bench/results/scaleout/<cell>.json`` (delete it to redo the cell); the table is
``bench/results/scaleout.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "scaleout"
SEARCH = ["--method", "nsga2", "--criterion", "deeplift",
          "--target", "onnxruntime-cpu", "--batch-size", "1", "--threads", "1"]
sys.path.insert(0, str(ROOT / "bench"))
from pareto import FINETUNE, _commit  # noqa: E402


def cell_name(model: str, budget: float, workers: int) -> str:
    return f"{model.split('.')[0]}-nsga2+deeplift-x{budget:g}-w{workers}"


def run_cell(model: str, budget: float, workers: int, runs: Path) -> dict:
    name = cell_name(model, budget, workers)
    out, cache = runs / name, runs / f"{name}-cache"
    for p in (out, cache):  # every cell from scratch: its search and its latency table
        if p.exists():
            shutil.rmtree(p)
    cmd = [sys.executable, "-m", "prunelab.cli", "search", model, *SEARCH, "--budget",
           f"speedup={budget:g}", "--workers",
           str(workers), "--out", str(out), "--cache-dir", str(cache), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNELAB_QUIET": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{name}: prunelab search failed:\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout)
    rows = [json.loads(x) for x in (out / "evaluations.jsonl").read_text().splitlines()]
    evals = [x["seconds"] for x in rows if x["phase"] != "base"]
    return {
        "cell": name, "model": model, "budget": budget, "workers": workers, "command": " ".join(
            ["prunelab", *cmd[3:]]), "cpus": os.cpu_count(), "wall_s": wall,
        "predictor_s": r["predictor_seconds"], "score_s": r["score_seconds"],
        "search_s": r["search_seconds"], "measure_s": r["measure_seconds"],
        "evaluations": len(evals), "eval_cpu_s": sum(evals),
        "eval_median_s": statistics.median(evals),
        "speedup": r["chosen"]["measured_speedup"], "val_top1": r["chosen"]["top1"],
        "landing": r["chosen"].get("landing", {}).get("status"),
        "fidelity": (r.get("fidelity") or {}).get("setting", "bn"),
        "keep": r["chosen"]["keep"], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": _commit()}


def finetune_cell(rec: dict, runs: Path) -> dict:
    """The cell's chosen model fine-tuned as the proof grid does (bench/pareto.py ``FINETUNE``:
    4 epochs distilled from the unpruned model, one thread) and its test top-1: what a faster
    search must not lose (accuracy only: it may share the machine)."""
    model = runs / rec["cell"] / "model"
    if not model.exists():
        raise SystemExit(f"{rec['cell']}: {model} is gone; run the cell again to fine-tune it")
    out = runs / f"{rec['cell']}-finetuned"
    ft = ["--epochs", str(FINETUNE["epochs"]), "--lr", str(FINETUNE["lr"]), "--batch-size",
          str(FINETUNE["batch_size"]), "--kd-weight", str(FINETUNE["kd_weight"]),
          "--kd-temperature", str(FINETUNE["kd_temperature"]), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNELAB_QUIET": "1"}
    cmd = [sys.executable, "-m", "prunelab.cli", "finetune", str(model), *ft, "--out", str(out),
           "--overwrite", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{rec['cell']}: prunelab finetune failed:\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout)
    return {"test_top1": r["test_top1"], "val_top1": r["after_val_top1"],
            "seconds": r["seconds"], "commit": _commit()}


def write_tables() -> Path:
    recs = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*.json"))]
    for r in recs:  # records from before budgets were a column: speedup=2, the default score
        r.setdefault("budget", 2)
        r.setdefault("fidelity", "bn")
    recs.sort(key=lambda r: (r["model"], r["budget"], r["workers"]))
    one = {(r["model"], r["budget"]): r["wall_s"] for r in recs if r["workers"] == 1}
    lines = ["| model | budget | workers | wall | table + anchor | scores | candidates (n, median "
             "s, CPU-s) | search | front + fidelity + landing | wall vs 1 worker | chosen: "
             "speed-up, val top-1 | fine-tuned test top-1 | landing | fidelity | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        k = (r["model"], r["budget"])
        rel = f"{one[k] / r['wall_s']:.2f}x" if k in one else "-"
        lines.append(
            f"| {r['model']} | speedup={r['budget']:g} | {r['workers']} | "
            f"{r['wall_s'] / 60:.1f} min | {r['predictor_s']:.0f} s | {r['score_s']:.0f} s | "
            f"{r['evaluations']}, {r['eval_median_s']:.2f}, {r['eval_cpu_s']:.0f} | "
            f"{r['search_s']:.0f} s | {r['measure_s']:.0f} s | {rel} | {r['speedup']:.2f}x, "
            f"{100 * r['val_top1']:.2f}% | "
            + (f"{100 * r['finetuned']['test_top1']:.2f}%" if r.get("finetuned") else "-")
            + f" | {r.get('landing') or '-'} | {r['fidelity']} | "
            f"{(r.get('commit') or '-')[:7]} |")
    cmd = (f"prunelab search MODEL {' '.join(SEARCH)} --budget speedup=B --workers N "
           "--out DIR --cache-dir EMPTY-DIR --json")
    md = (f"**`python bench/scaleout.py`** ({recs[0]['cpus'] if recs else '?'} CPU cores; each "
          f"cell `{cmd}` from scratch, with an empty latency cache; the wall time is the whole "
          "command's, landing included)\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "scaleout.md").write_text(md)
    (RESULTS / "scaleout.json").write_text(json.dumps(recs, indent=1))
    return RESULTS / "scaleout.md"


def _numbers(text: str, flag: str, kind=int) -> list:
    try:
        out = [kind(w) for w in text.split(",")]
    except ValueError:
        raise SystemExit(f"{flag} {text}: give comma-separated numbers, e.g. 1,2") from None
    if not out or min(out) < 1:
        raise SystemExit(f"{flag} {text}: give numbers >= 1, e.g. 1,2")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet56.fmnist")
    ap.add_argument("--budgets", default="2,3", help="comma-separated speed-up budgets (2,3)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (1,2)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "scaleout"))
    ap.add_argument("--tables", action="store_true", help="only rewrite the table")
    ap.add_argument("--finetune", action="store_true",
                    help="fine-tune every finished cell's chosen model as the proof grid does "
                    "and record its test top-1 (accuracy only: it may share the machine)")
    a = ap.parse_args()
    if a.finetune:
        recs = {f: json.loads(f.read_text()) for f in CELLS.glob("*.json")}
        # the largest budget and the most workers first: the cell the goal is read on
        for rec_file in sorted(recs, key=lambda f: (-recs[f]["budget"], -recs[f]["workers"])):
            rec = recs[rec_file]
            if rec.get("finetuned"):
                continue
            print(f"[scaleout] {rec_file.stem}: fine-tuning its choice", flush=True)
            rec["finetuned"] = finetune_cell(rec, Path(a.runs))
            rec_file.write_text(json.dumps(rec, indent=1))
            print(f"[scaleout] {rec_file.stem}: {100 * rec['finetuned']['test_top1']:.2f}% "
                  "test top-1 fine-tuned", flush=True)
    elif not a.tables:
        budgets = _numbers(a.budgets, "--budgets", float)
        counts = _numbers(a.workers, "--workers")
        CELLS.mkdir(parents=True, exist_ok=True)
        for b in budgets:
            for n in counts:
                rec = CELLS / f"{cell_name(a.model, b, n)}.json"
                if rec.exists():
                    print(f"[scaleout] {rec.stem}: done earlier (delete it to redo)")
                    continue
                print(f"[scaleout] {rec.stem}: running", flush=True)
                r = run_cell(a.model, b, n, Path(a.runs))
                rec.write_text(json.dumps(r, indent=1))
                print(f"[scaleout] {rec.stem}: {r['wall_s'] / 60:.1f} min", flush=True)
    print(write_tables().read_text())


if __name__ == "__main__":
    main()
