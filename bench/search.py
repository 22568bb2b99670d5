"""Run allocation searches and tabulate them: each job is one `prunelab search` (resumable, so an
interrupted benchmark continues where it stopped), the table reads each run's result.json.

    python bench/search.py resnet20      # every method on resnet20.fmnist, small budgets
    python bench/search.py resnet56      # nsga2 and abc on resnet56.fmnist, default settings
    python bench/search.py ort-speedup   # nsga2 + deeplift, onnxruntime-cpu, speedup=2

Writes bench/results/search-SUITE.{json,md}; runs live in runs/bench-search/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prunelab.io import atomic_write_text
from prunelab.commands import run_search
from prunelab.searches import SearchConfig
from prunelab.targets import TargetConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "bench-search"

SMALL = {"nsga2": {"pop": 12, "gens": 6}, "abc": {"food": 6, "cycles": 6},
         "cie": {}, "omp-search": {"k": 8}, "uniform": {}, "global": {},
         "global-iso": {"isomorphic": True}}
SUITES = {
    # every method on resnet20 with a small budget (MACs, so all compare on the same budget)
    "resnet20": [("resnet20.fmnist", m.split("-iso")[0], None, "torch-cpu", "macs=0.6", o)
                 for m, o in SMALL.items()],
    # the two evolutionary searches at their default settings on resnet56
    "resnet56": [("resnet56.fmnist", "nsga2", None, "onnxruntime-cpu", "speedup=1.5", {}),
                 ("resnet56.fmnist", "abc", None, "onnxruntime-cpu", "speedup=1.5", {})],
    # the hardware-aware search against a measured speed-up on ONNX Runtime
    "ort-speedup": [("resnet20.fmnist", "nsga2", None, "onnxruntime-cpu", "speedup=2", {})],
}


def _name(job) -> str:
    model, method, crit, target, budget, opts = job
    tag = "-iso" if opts.get("isomorphic") else ""
    return f"{model.split('.')[0]}-{method}{tag}-{target}-{budget.replace('=', '')}"


def row(job, r: dict) -> dict:
    c, b = r["chosen"], r["base"]
    return {"run": _name(job), "model": job[0], "method": r["method"] + (
        " (isomorphic)" if job[5].get("isomorphic") else ""), "criterion": r["criterion"],
        "target": r["target"], "budget": r["budget"], "evaluations": r["evaluations"],
        "search_s": r["search_seconds"], "total_s": r["seconds"],
        "base_top1": b["top1"], "top1": c["top1"], "macs_kept": c["macs"] / b["macs"],
        "params_kept": c["params"] / b["params"], "base_ms": b["latency_ms"],
        "latency_ms": c["latency_ms"], "speedup": c["measured_speedup"],
        "verdict": c["speedup_verdict"], "budget_met": c["budget_met"],
        "options": job[5], "seed": r["seed"]}


def table(rows: list[dict], title: str) -> str:
    lines = [f"**{title}**", "",
             "| model | method | criterion | target | budget | evals | search time | val top-1 "
             "(unpruned) | MACs kept | measured ms (unpruned) | speed-up | budget met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['criterion']} | {r['target']} | {r['budget']} "
            f"| {r['evaluations']} | {r['search_s'] / 60:.1f} min | {100 * r['top1']:.2f}% "
            f"({100 * r['base_top1']:.2f}%) | {100 * r['macs_kept']:.1f}% | "
            f"{r['latency_ms']:.3f} ({r['base_ms']:.3f}) | {r['speedup']:.2f}x "
            f"({r['verdict']}) | {'yes' if r['budget_met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", choices=sorted(SUITES))
    ap.add_argument("--only", help="run only the jobs whose run name contains this")
    a = ap.parse_args()
    for job in SUITES[a.suite]:
        if a.only and a.only not in _name(job):
            continue
        model, method, crit, target, budget, opts = job
        cfg = SearchConfig(method=method, criterion=crit, target=TargetConfig(target), budget=budget,
                           options=opts)
        t0 = time.perf_counter()
        r = run_search(model, cfg, RUNS / _name(job))
        print(json.dumps({**row(job, r), "wall_s": time.perf_counter() - t0}), flush=True)
    # the table holds every finished job of the suite (jobs may run in separate processes)
    rows = [row(job, json.loads((RUNS / _name(job) / "result.json").read_text()))
            for job in SUITES[a.suite] if (RUNS / _name(job) / "result.json").exists()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"search-{a.suite}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(rows, indent=1))
    title = (f"`python bench/search.py {a.suite}` (2 CPU cores; target batch 1, 1 thread; "
             "val top-1 on the 5000-image validation split after BN re-estimation, no "
             "fine-tuning; latency measured interleaved with the unpruned model)")
    atomic_write_text(stem.with_suffix(".md"), table(rows, title))


if __name__ == "__main__":
    main()
