"""Does every method land on the asked speed-up?  Each cell is one `prunelab search` (search only,
no fine-tune; batch 1, 1 thread) followed, in the same sitting, by an independent
`prunelab latency compare` of the unpruned and the searched model in a new process (6 fresh
processes, one paired sample each, 95% interval).  A cell is on goal when that re-measure is
within [0.97, 1.08] x the asked speed-up; the in-search figure and the re-measure should agree
within 2%.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/landing.py resnet20     # 7 methods x 2/3/4x
    OMP_NUM_THREADS=1 taskset -c 1 python bench/landing.py resnet56     # 7 methods at 3x
    OMP_NUM_THREADS=1 taskset -c 1 python bench/landing.py openvino     # 3 methods at 3x
    python bench/landing.py table                                        # the table only
    python bench/landing.py drift     # re-measures inside the interval, per drift term

Resumable cell by cell: a cell whose run folder holds result.json and remeasure.json is done (a
search that was cut off resumes from its own folder).  Runs live in runs/bench-landing/; the
tables in bench/results/landing.{md,json} hold every finished cell of every suite, with the CPU,
ISA and commit each cell ran on (a cell run in an earlier sitting keeps its row until it is run
again here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

from prunelab.commands import run_search
from prunelab.hardware import cpu_info
from prunelab.io import atomic_write_text
from prunelab.searches import SearchConfig
from prunelab.targets import TargetConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "bench-landing"
GOAL = (0.97, 1.08)     # the re-measure, as a multiple of the asked speed-up
AGREE = 0.02            # in-search vs independent re-measure
PRE_DRIFT = ("a7587fe", "5a36983")  # intervals without latency.paired.DRIFT
OLD_DRIFT = 0.015  # latency.paired.DRIFT before 14cdf12, in the intervals decided with it

# small settings for the searching methods: this benchmark is about landing, not search quality
OPTIONS = {"nsga2": {"pop": 12, "gens": 6}, "abc": {"food": 6, "cycles": 6},
           "omp-search": {"k": 8}, "cie": {}, "uniform": {}, "global": {}, "torch-pruning": {}}
# resnet56's greedy omp-search with k=8 (27 groups, one stair of 8 filters a step) takes well
# over an hour; 16 filters a step halves its steps and lands the same way
MODEL_OPTIONS = {("resnet56.fmnist", "omp-search"): {"k": 16}}
METHODS = list(OPTIONS)


def options(model: str, method: str) -> dict:
    return MODEL_OPTIONS.get((model, method), OPTIONS[method])
ORT, OV = "onnxruntime-cpu", "openvino-cpu"
SUITES = {
    "resnet20": [("resnet20.fmnist", m, ORT, s) for s in (2, 3, 4) for m in METHODS],
    "resnet56": [("resnet56.fmnist", m, ORT, 3) for m in METHODS],
    "openvino": [("resnet20.fmnist", m, OV, 3) for m in ("uniform", "nsga2", "torch-pruning")],
}


def name(cell) -> str:
    model, method, target, s = cell
    return f"{model.split('.')[0]}-{method}-{target}-speedup{s}"


def remeasure(cell, run: Path) -> dict:
    """`prunelab latency compare` of the unpruned and the searched model, in a new process."""
    model, _, target, _ = cell
    cmd = [sys.executable, "-m", "prunelab", "latency", "compare", model, str(run / "model"),
           "--target", target, "--threads", "1", "--processes", "6", "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"latency compare failed for {run}: {p.stderr.strip()[-400:]}")
    vs = json.loads(p.stdout)["models"][1]["vs_first"]
    return {"estimate": vs["estimate"], "low": vs["low"], "high": vs["high"],
            "verdict": vs["verdict"], "seconds": time.perf_counter() - t0,
            "command": " ".join(["prunelab"] + cmd[3:])}


def run_cell(cell) -> None:
    model, method, target, s = cell
    run = RUNS / name(cell)
    if (run / "remeasure.json").exists():
        return
    cpu = cpu_info()
    t0 = time.perf_counter()
    if not (run / "result.json").exists():
        cfg = SearchConfig(method=method, target=TargetConfig(target, threads=1),
                           budget=f"speedup={s}", options=options(model, method))
        run_search(model, cfg, run)
    search_s = time.perf_counter() - t0
    r = remeasure(cell, run)
    r.update(cpu=cpu, search_wall_s=search_s, commit=commit(),
             finished=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
    atomic_write_text(run / "remeasure.json", json.dumps(r, indent=1))
    print(json.dumps(row(cell)), flush=True)


def commit() -> str:
    """The code the cell ran (this checkout's HEAD, ``+dirty`` with uncommitted changes)."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                              check=False).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    # the tables this script writes do not count as a change to the code
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                   ":!bench/results") else "")


def row(cell) -> dict:
    run = RUNS / name(cell)
    res = json.loads((run / "result.json").read_text())
    re = json.loads((run / "remeasure.json").read_text())
    c, land = res["chosen"], res["chosen"]["landing"]
    s = cell[3]
    lo, hi = c["speedup_interval"]
    est = land.get("estimate") or {}
    return {"cell": name(cell), "model": cell[0], "method": cell[1], "target": cell[2],
            "budget": s, "options": options(cell[0], cell[1]),
            "method_choice": c["method_choice"]["measured_speedup"],
            "status": land["status"], "search": c["measured_speedup"], "search_low": lo,
            "search_high": hi, "neighbours": land["neighbours"], "message": land["message"],
            "remeasure": re["estimate"], "remeasure_low": re["low"], "remeasure_high": re["high"],
            "ratio": re["estimate"] / s,
            "on_goal": GOAL[0] <= re["estimate"] / s <= GOAL[1],
            "agree": abs(c["measured_speedup"] / re["estimate"] - 1),
            "inside": lo <= re["estimate"] <= hi,
            # how the interval was made: processes (0: an in-process step), its drift term
            # and the signed-rank interval alone (for `drift`)
            "search_processes": est.get("processes"),
            "search_drift": est.get("drift"),
            "search_sampled": est.get("sampled"),
            "search_level": est.get("level"),
            "top1": c["top1"], "base_top1": res["base"]["top1"],
            "search_s": res["search_seconds"], "total_s": re["search_wall_s"],
            "remeasure_s": re["seconds"], "remeasure_command": re["command"],
            "cpu": re["cpu"]["cpu"], "isa": re["cpu"]["isa"], "finished": re["finished"],
            "commit": re.get("commit", "")}


def table(rows: list[dict]) -> str:
    on = sum(r["on_goal"] for r in rows)
    agree = sum(r["agree"] <= AGREE for r in rows)
    landed = sum(r["status"] in ("landed", "staircase") for r in rows)
    covered = sum(r["search_low"] <= r["remeasure"] <= r["search_high"] for r in rows)
    steps = [r["cell"] for r in rows if r.get("search_processes") == 0]
    lines = [
        ("**`python bench/landing.py`**: search only (no fine-tune), batch 1, 1 thread; "
        "re-measure = `prunelab latency compare` in a new process (6 fresh processes, paired, "
        "95% interval).  Goal: re-measure within [0.97, 1.08] x the budget."), "",
        (f"{len(rows)} cells: {landed} landed by the search (a step of the staircase where "
        f"none is inside the band), {on} on goal in the re-measure, {agree} with the in-search "
        f"figure within {100 * AGREE:.0f}% of the re-measure, {covered} re-measures inside "
        f"the interval the search reported (the cells of {', '.join(PRE_DRIFT)} predate its "
        f"drift term)" + (f"; {len(steps)} reported an in-process step calibrated on an "
                          f"earlier decision, not a decision ({', '.join(steps)}; from "
                          f"14cdf12 on, every landing rests on fresh processes)" if steps else "")
        + ".  Drift-term calibration: `python bench/landing.py drift` "
        "(bench/results/landing-drift.md)."), "",
        ("| model | method | target | budget | method's choice | landing | in search [95%] | "
        "re-measure [95%] | re-measure / budget | search vs re-measure | val top-1 (unpruned) "
        "| search time | CPU (ISA) | commit |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        isa = "avx512" if any(f.startswith("avx512") for f in r["isa"]) else "avx2"
        if "avx512_vnni" in r["isa"]:
            isa += "+vnni"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['target']} | {r['budget']}x | "
            f"{r['method_choice']:.2f}x | {r['status']} | {r['search']:.3f}x "
            f"[{r['search_low']:.3f}, {r['search_high']:.3f}] | {r['remeasure']:.3f}x "
            f"[{r['remeasure_low']:.3f}, {r['remeasure_high']:.3f}] | {r['ratio']:.3f} "
            f"{'ok' if r['on_goal'] else 'MISS'} | {100 * r['agree']:.1f}% | "
            f"{100 * r['top1']:.2f}% ({100 * r['base_top1']:.2f}%) | "
            f"{r['total_s'] / 60:.1f} min | {r['cpu']} ({isa}) | {r.get('commit') or '-'} |")
    stair = [r for r in rows if r["neighbours"]]
    if stair:
        lines += ["", "Cells where the staircase has no step inside the band (both neighbours):"]
        for r in stair:
            lines.append(f"- {r['cell']}: " + "; ".join(
                f"{n['side']} " + (f"{n['value']:.3f}x" if n["value"] is not None
                                   else "(the unpruned model)") for n in r["neighbours"]))
    return "\n".join(lines) + "\n"


def write_tables() -> None:
    """Every cell run here, and (where its run folder is not here) its row from an earlier
    sitting's table, each with the CPU and the commit it ran on."""
    cells = [c for suite in SUITES.values() for c in suite]
    old = {}
    if (RESULTS / "landing.json").exists():
        old = {r["cell"]: r for r in json.loads((RESULTS / "landing.json").read_text())}
    rows = [row(c) if (RUNS / name(c) / "remeasure.json").exists() else old[name(c)]
            for c in cells if (RUNS / name(c) / "remeasure.json").exists() or name(c) in old]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "landing.json", json.dumps(rows, indent=1))
    atomic_write_text(RESULTS / "landing.md", table(rows))


def drift_rows() -> list[dict]:
    """Every decided cell with an independent re-measure: bench/landing.py's cells whose landed
    interval came from fresh processes, and bench/architectures.py --ort's models.  Each gives
    the in-search estimate, its signed-rank interval alone (stored, or recovered from the
    reported interval and the drift term it carried) and the re-measure."""
    def recover(e, lo, hi, drift, level):
        z = NormalDist().inv_cdf(0.5 + (level or 0.95) / 2) * (drift or 0.0)
        a = math.sqrt(max(math.log(e / lo) ** 2 - z * z, 0.0))
        b = math.sqrt(max(math.log(hi / e) ** 2 - z * z, 0.0))
        return e * math.exp(-a), e * math.exp(b)

    out = []
    for r in json.loads((RESULTS / "landing.json").read_text()):
        if r.get("search_processes") == 0:
            continue  # an in-process step (before every landing was decided): not a decision
        drift = r.get("search_drift", 0.0 if r.get("commit") in PRE_DRIFT else OLD_DRIFT)
        sampled = r.get("search_sampled") or recover(r["search"], r["search_low"],
                                                     r["search_high"], drift, r.get("search_level"))
        out.append({"cell": r["cell"], "bench": "landing", "estimate": r["search"],
                    "sampled": list(sampled), "level": r.get("search_level") or 0.95,
                    "remeasure": r["remeasure"]})
    arch = RESULTS / "architectures-ort.json"
    for r in json.loads(arch.read_text()) if arch.exists() else []:
        o = r["steps"].get("ort") or {}
        if o.get("remeasure") and o.get("interval"):
            # decided with the drift term of their commit's latency.paired
            lo, hi = recover(o["speedup"], *o["interval"], OLD_DRIFT, 0.95)
            out.append({"cell": r["model"], "bench": "architectures-ort",
                        "estimate": o["speedup"], "sampled": [lo, hi], "level": 0.95,
                        "remeasure": o["remeasure"]})
    return out


def drift_table() -> None:
    """How many re-measures each drift term would put inside the decision's interval (the
    signed-rank interval widened in quadrature, by :func:`prunelab.latency.paired.widened` as
    a decision is): the calibration of ``latency.paired.DRIFT``."""
    from prunelab.latency.paired import DRIFT, widened

    rows = drift_rows()
    moves = [math.log(r["remeasure"] / r["estimate"]) for r in rows]
    grid = sorted({0.0, 0.01, 0.015, 0.018, 0.02, 0.022, 0.025, 0.03, DRIFT})
    cover = []
    for d in grid:
        inside = 0
        for r in rows:
            low, high = widened(math.log(r["estimate"]), *map(math.log, r["sampled"]),
                                r["level"], d)
            inside += low <= math.log(r["remeasure"]) <= high
        cover.append({"drift": d, "inside": inside, "cells": len(rows)})
    rms = math.sqrt(sum(m * m for m in moves) / len(moves))
    lines = ["**`python bench/landing.py drift`**: the decided cells of bench/landing.py and "
             "bench/architectures.py --ort, each in-search decision against its independent "
             "re-measure (`prunelab latency compare`, 6 new processes).", "",
             f"{len(rows)} cells; the move ln(re-measure / in search): root mean square "
             f"{100 * rms:.2f}%, largest {100 * max(map(abs, moves)):.1f}%; "
             f"{sum(abs(m) > 0.03 for m in moves)} moved more than 3%.  "
             f"`latency.paired.DRIFT` = {100 * DRIFT:.1f}%.", "",
             "| drift term | re-measures inside the interval | share |", "|---|---|---|"]
    lines += [f"| {100 * c['drift']:.1f}%{' (DRIFT)' if c['drift'] == DRIFT else ''} | "
              f"{c['inside']} / {c['cells']} | {100 * c['inside'] / c['cells']:.0f}% |"
              for c in cover]
    lines += ["", "| cell | bench | in search | signed-rank interval | re-measure | move |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['bench']} | {r['estimate']:.3f}x | [{r['sampled'][0]:.3f}, "
              f"{r['sampled'][1]:.3f}] | {r['remeasure']:.3f}x | {100 * m:+.1f}% |"
              for r, m in zip(rows, moves)]
    atomic_write_text(RESULTS / "landing-drift.json",
                      json.dumps({"rms": rms, "coverage": cover, "cells": rows}, indent=1))
    atomic_write_text(RESULTS / "landing-drift.md", "\n".join(lines) + "\n")
    print("\n".join(lines[:len(grid) + 5]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", choices=sorted(SUITES) + ["table", "drift"])
    ap.add_argument("--only", help="run only the cells whose name contains this")
    a = ap.parse_args()
    if a.suite == "drift":
        return drift_table()
    if a.suite != "table":
        if os.environ.get("OMP_NUM_THREADS") != "1":
            print("note: run one core per job (OMP_NUM_THREADS=1 taskset -c N)", file=sys.stderr)
        for cell in SUITES[a.suite]:
            if a.only and a.only not in name(cell):
                continue
            run_cell(cell)
            write_tables()
    write_tables()


if __name__ == "__main__":
    main()
