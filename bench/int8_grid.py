"""int8 and pruning under one measured budget (issue 26): resnet20.fmnist on onnxruntime-cpu
(batch 1, 1 thread) at speedup=3, 4 and 5 (and 2, 2.5 for the joint searches, where int8's own
gain of about 2.2x puts the crossover), every speed-up against the unpruned *fp32* model.

Cells, each a `prunelab run` with the proof grid's search settings and fine-tuning
(bench/pareto.py: 4 epochs distilled from the unpruned model):

- ``joint``: the search itself runs in int8 (``[target] precision = "int8"``), lands on the
  budget relative to fp32, fine-tunes in fp32 and quantizes (nsga2+deeplift and
  omp-search+fp-omp, the best prunelab row of the fp32 grid at 3x);
- ``joint-fast``: the same with ``int8_layers = "fast"`` (each resolution stage kept fp32
  where that measures faster, per graph: bench/int8_layers.py);
- ``fp32-then-int8`` (the ablation): pruned in fp32 to ``budget / g`` (``g``: int8 alone's
  measured gain over fp32, read once and kept), fine-tuned, then quantized (tp-uniform and
  omp-search+fp-omp): what a user gets who prunes first and quantizes after;
- ``int8 alone``: the unpruned model quantized, the baseline every cell must beat.

Every final int8 file is judged by ONNX Runtime on the test split, and timed against the
unpruned fp32 graph in 6 fresh processes (paired, 95% interval); ``--remeasure`` times every
finished cell again, one after another, for the verdicts (run it with nothing else running).
Resumable cell by cell (run folders in runs/int8-grid/, records in bench/results/int8/);
tables in bench/results/int8.{md,json}.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/int8_grid.py
    python bench/int8_grid.py --remeasure
    python bench/int8_grid.py --tables
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from pareto import FINETUNE, SEARCH, VERIFY, _commit  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "int8"
RUNS = ROOT / "runs" / "int8-grid"
MODEL = "resnet20.fmnist"
TARGET = {"name": "onnxruntime-cpu", "batch_size": 1, "threads": 1}
BUDGETS = (3, 4, 5)
GOAL = 0.93  # test top-1 at 4x


@dataclass(frozen=True)
class Cell:
    label: str            # method label as in bench/pareto.py
    method: str
    criterion: str | None
    options: tuple = ()
    how: str = "joint"    # joint | joint-fast | fp32-then-int8
    speedup: float = 3

    @property
    def name(self) -> str:
        return f"resnet20-{self.label}-{self.how}-x{self.speedup:g}"


JOINT = (("nsga2+deeplift", "nsga2", "deeplift"), ("omp-search+fp-omp", "omp-search", "fp-omp"))
TP = ("tp-uniform", "torch-pruning", None, (("global", False), ("importance", "magnitude-l2")))


def cells() -> list[Cell]:
    # 2.5x first: past int8 alone's own gain (about 2.2x) and under the most an int8 resnet20
    # reaches at batch 1 (about 2.8-2.9x on the AVX-512 VNNI EPYC): the one budget where the
    # joint search has something to choose; then the 3/4/5x joint searches, refused up
    # front when even the most pruned int8 models are too slow (seconds, recorded as such);
    # then the 4x ablation (the goal), 2x (int8 alone should be the answer), and the
    # 3x and 5x ablations
    fp32_first = [Cell(*TP, how="fp32-then-int8", speedup=s) for s in (2.5, 4, 3, 5)]
    omp_first = [Cell(*JOINT[1], how="fp32-then-int8", speedup=s) for s in (2.5, 4, 3, 5)]
    # int8_layers="fast" (each stage kept fp32 where that measures faster) first: all-int8
    # resnet20 tops out near 2.9x, so only these can reach the 4x goal
    fast = [Cell(*JOINT[0], how="joint-fast", speedup=4), Cell(*JOINT[1], how="joint-fast",
                                                               speedup=4),
            Cell(*JOINT[0], how="joint-fast", speedup=3), Cell(*JOINT[0], how="joint-fast",
                                                               speedup=5)]
    out = fast + [Cell(lab, m, c, speedup=2.5) for lab, m, c in JOINT]
    out += [fp32_first[0], omp_first[0]]
    out += [Cell(lab, m, c, speedup=s) for s in BUDGETS for lab, m, c in JOINT]
    out += [fp32_first[1], omp_first[1]]
    out += [Cell(lab, m, c, speedup=2) for lab, m, c in JOINT]
    out += [c for pair in zip(fp32_first[2:], omp_first[2:]) for c in pair]
    return out


def int8_gain() -> dict:
    """int8 alone's measured gain over fp32 (``prunelab eval --precision int8``), kept in
    bench/results/int8/gain.json: the ablation prunes in fp32 to ``budget / gain``."""
    f = CELLS / "gain.json"
    if f.exists():
        return json.loads(f.read_text())
    r = subprocess.run([sys.executable, "-m", "prunelab", "eval", MODEL, "--target",
                        TARGET["name"], "--precision", "int8", "--json"],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"prunelab eval --precision int8 failed: {r.stderr.strip()[-300:]}")
    o = json.loads(r.stdout)
    rec = {"gain": o["speedup"], "interval": o["speedup_interval"], "fp32_top1": o["fp32_top1"],
           "int8_top1": o["top1"], "quantization": o["quantization"], "commit": _commit()}
    CELLS.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(rec, indent=1))
    return rec


def config(cell: Cell, gain: float) -> dict:
    joint = cell.how.startswith("joint")
    budget = cell.speedup if joint else cell.speedup / gain
    # the grid began before the fidelity study changed the search's default (kd:20): its cells
    # keep the cheap score for the choice, one protocol for the whole grid
    search = {"method": cell.method, "budget": f"speedup={budget:.4g}", **SEARCH,
              "fidelity": "bn", "options": dict(cell.options)}
    if cell.criterion:
        search["criterion"] = cell.criterion
    target = {**TARGET, "precision": "int8" if joint else "fp32"}
    if cell.how == "joint-fast":
        target["int8_layers"] = "fast"
    return {"run": {"seed": 0}, "model": {"ref": MODEL}, "search": search, "target": target,
            "finetune": dict(FINETUNE), "verify": dict(VERIFY)}


def quantized(out: Path) -> Path:
    """The ablation's final model quantized as onnxruntime-cpu runs it (the run's own int8
    stage does this for joint cells): ``RUN/final.int8.onnx``."""
    f = out / "final.int8.onnx"
    if not f.exists():
        r = subprocess.run([sys.executable, "-m", "prunelab", "export", str(out / "finetuned"),
                            "--onnx", str(f), "--precision", "int8", "--target", TARGET["name"],
                            "--json"], capture_output=True, text=True, check=False)
        if r.returncode:
            raise SystemExit(f"export --precision int8 failed: {r.stderr.strip()[-300:]}")
    return f


def judged(f: Path) -> dict:
    """Test top-1 of an int8 file by ONNX Runtime, and its speed-up over the unpruned fp32
    model in 6 fresh processes (paired, 95% interval)."""
    ev = subprocess.run([sys.executable, "-m", "prunelab", "eval", str(f), "--target",
                         TARGET["name"], "--json"], capture_output=True, text=True, check=False)
    cmp = subprocess.run([sys.executable, "-m", "prunelab", "latency", "compare", MODEL, str(f),
                          "--target", TARGET["name"], "--threads", "1", "--processes", "6",
                          "--json"], capture_output=True, text=True, check=False)
    for p in (ev, cmp):
        if p.returncode:
            raise SystemExit(f"judging {f} failed: {p.stderr.strip()[-300:]}")
    vs = json.loads(cmp.stdout)["models"][1]["vs_first"]
    return {"test_top1": json.loads(ev.stdout)["top1"], "speedup": vs["estimate"],
            "speedup_interval": [vs["low"], vs["high"]], "verdict": vs["verdict"],
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_cell(cell: Cell, gain: float) -> dict:
    from prunelab.hardware import cpu_info
    from prunelab.pipeline import to_toml

    out = RUNS / cell.name
    RUNS.mkdir(parents=True, exist_ok=True)
    cfg = RUNS / f"{cell.name}.toml"
    cfg.write_text(f"# bench/int8_grid.py cell {cell.name}\n" + to_toml(config(cell, gain)))
    print(f"[int8] {cell.name}: prunelab run {cfg} --out {out}", flush=True)
    r = subprocess.run([sys.executable, "-m", "prunelab", "run", str(cfg), "--out", str(out),
                        "--json"], capture_output=True, text=True, check=False)
    (RUNS / f"{cell.name}.log").write_text(r.stderr + "\n--- stdout ---\n" + r.stdout)
    refusal = next((ln.split("error: ", 1)[-1] for ln in r.stderr.splitlines()
                    if "cannot be met" in ln), None)
    if r.returncode and refusal:  # the search's up-front reach check: a result, not a failure
        rec = {"cell": cell.name, "label": cell.label, "how": cell.how, "budget": cell.speedup,
               "refused": refusal, "reach": float(refusal.split("at best ")[1].split("x")[0]),
               "commit": _commit(), "cpu": cpu_info()}
        CELLS.mkdir(parents=True, exist_ok=True)
        (CELLS / f"{cell.name}.json").write_text(json.dumps(rec, indent=1))
        print(f"[int8] {cell.name}: refused up front: {refusal}", flush=True)
        return rec
    if r.returncode:
        raise SystemExit(f"[int8] {cell.name} failed: {r.stderr.strip()[-400:]}")
    s = json.loads((out / "summary.json").read_text())
    f = Path(s["final_int8"]) if s.get("final_int8") else quantized(out)
    rows = s["rows"]
    rec = {"cell": cell.name, "label": cell.label, "how": cell.how, "budget": cell.speedup,
           "searched_budget": s["budget"], "landing": s.get("landing"),
           "fp32_final_top1": (rows.get("final_fp32") or rows["final"])["test_top1"],
           "base_top1": rows["unpruned"]["test_top1"],
           "int8_alone_top1": (rows.get("unpruned_int8") or {}).get("test_top1"),
           "final_int8": str(f), **judged(f), "macs_kept": s["macs_kept"],
           "search_seconds": s["search_seconds"], "finetune_seconds": s["finetune_seconds"],
           "wall_seconds": s["wall_seconds"], "commit": _commit(), "cpu": cpu_info()}
    CELLS.mkdir(parents=True, exist_ok=True)
    (CELLS / f"{cell.name}.json").write_text(json.dumps(rec, indent=1))
    print(f"[int8] {cell.name}: int8 top-1 {100 * rec['test_top1']:.2f}% at "
          f"{rec['speedup']:.2f}x over fp32", flush=True)
    return rec


def write_tables(gain: dict) -> None:
    recs = [json.loads(p.read_text()) for p in sorted(CELLS.glob("resnet20-*.json"))]
    recs.sort(key=lambda r: (r["budget"], r["how"], r["label"]))
    lines = [f"**`python bench/int8_grid.py`**: {MODEL} on {TARGET['name']} (batch 1, 1 thread); "
             "speed-up of the final int8 file over the unpruned fp32 model, 6 fresh processes, "
             "paired, 95% interval; test top-1 computed by ONNX Runtime on the int8 file; "
             f"fine-tuning as the proof grid ({FINETUNE['epochs']} epochs distilled, in fp32, "
             "before quantization).", "",
             f"int8 alone (the unpruned model quantized): {100 * gain['int8_top1']:.2f}% test "
             f"top-1 (fp32 {100 * gain['fp32_top1']:.2f}%) at {gain['gain']:.2f}x "
             f"[{gain['interval'][0]:.2f}, {gain['interval'][1]:.2f}].", "",
             "| budget | method | how | searched for | landing | fp32 top-1 (fine-tuned) | "
             "int8 top-1 | speed-up [95%] | MACs kept | CPU | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if "refused" in r:
            lines.append(f"| {r['budget']}x | {r['label']} | {r['how']} | speedup={r['budget']} "
                         f"| refused up front | - | - | the most pruned int8 models allowed "
                         f"reach at best {r['reach']:.2f}x | - | {r['cpu']['cpu']} | "
                         f"{r['commit']} |")
            continue
        land = (r.get("landing") or {}).get("status", "-")
        lo, hi = r["speedup_interval"]
        lines.append(f"| {r['budget']}x | {r['label']} | {r['how']} | {r['searched_budget']} | "
                     f"{land} | {100 * r['fp32_final_top1']:.2f}% | "
                     f"**{100 * r['test_top1']:.2f}%** | {r['speedup']:.2f}x [{lo:.2f}, "
                     f"{hi:.2f}] | {100 * r['macs_kept']:.1f}% | {r['cpu']['cpu']} | "
                     f"{r['commit']} |")
    at4 = [r for r in recs if r["budget"] == 4 and r.get("speedup", 0) >= 4 * 0.97]
    best = max(at4, key=lambda r: r["test_top1"], default=None)
    lines += ["", "Goal: >= 93.0% test top-1 at 4x: " + (
        f"{'met' if best['test_top1'] >= GOAL else 'not met'}, best {best['label']} "
        f"({best['how']}) {100 * best['test_top1']:.2f}% at {best['speedup']:.2f}x"
        if best else "no cell reached 4x (0.97 x 4 or more) measured")]
    (RESULTS / "int8.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "int8.json").write_text(json.dumps({"gain": gain, "cells": recs}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run only cells whose name contains this")
    ap.add_argument("--remeasure", action="store_true",
                    help="judge every finished cell's int8 file again (nothing else running)")
    ap.add_argument("--tables", action="store_true", help="only rewrite the tables")
    a = ap.parse_args()
    if a.tables and not (CELLS / "gain.json").exists():
        raise SystemExit("no cell has run yet: nothing to tabulate")
    gain = int8_gain()
    if a.remeasure:
        for p in sorted(CELLS.glob("resnet20-*.json")):
            r = json.loads(p.read_text())
            if "refused" in r:
                continue
            r.update(judged(Path(r["final_int8"])), remeasure_commit=_commit())
            p.write_text(json.dumps(r, indent=1))
    elif not a.tables:
        for c in cells():
            if a.only in c.name and not (CELLS / f"{c.name}.json").exists():
                run_cell(c, gain["gain"])
                write_tables(gain)
    write_tables(gain)


if __name__ == "__main__":
    main()
