"""Which layers to quantize (issue 26): at narrow widths int8 stops paying, stage by stage.

resnet20.fmnist pruned uniformly with l1 to several ratios; each pruned model as fp32, as int8
in every layer (``int8_layers="all"``) and as int8 with each resolution stage kept fp32 where
that measures faster in the whole graph (``int8_layers="fast"``, decided by the target itself,
:func:`prunelab.quant.fast_fp32_nodes`); each graph's speed-up over the unpruned *fp32* model
on onnxruntime-cpu (batch 1, 1 thread), paired, in 6 fresh processes (95% interval).  Timing
only: the graphs are calibrated on seeded noise (the kernels do not depend on the scales).

    OMP_NUM_THREADS=1 taskset -c 1 python bench/int8_layers.py     # a quiet core
    python bench/int8_layers.py --tables

Resumable ratio by ratio (bench/results/int8_layers/<ratio>.json); table in
bench/results/int8_layers.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "int8_layers"
MODEL = "resnet20.fmnist"
RATIOS = (0.0, 0.25, 0.5, 0.625, 0.75)
PROCESSES = 6


def measure(ratio: float) -> dict:
    import torch

    from prunelab import commands
    from prunelab.core import prune
    from prunelab.hardware import cpu_info
    from prunelab.latency.paired import DECISION_PROTOCOL, paired_speedup
    from prunelab.targets import TargetConfig, make_target
    from prunelab.targets._onnx import Graph, to_onnx

    model, spec = commands.load(MODEL)
    x = torch.zeros(1, *spec.input_shape)
    pruned = prune(model, x, ratio=ratio, criterion="l1").model if ratio else model
    fp32 = make_target(TargetConfig("onnxruntime-cpu"))
    base = Graph(to_onnx(model.eval(), [x]), name="unpruned fp32")
    row = {"model": MODEL, "ratio": ratio, "cpu": cpu_info()}
    for how in ("fp32", "all", "fast"):
        if how == "fp32":
            g = to_onnx(pruned.eval(), [x])
        else:
            t = make_target(TargetConfig("onnxruntime-cpu", precision="int8", int8_layers=how))
            g = t.onnx_graph(pruned.eval(), [x])
            if how == "fast":
                row["fp32_nodes"] = len(t.quant_choice.fp32_nodes)
                row["trail"] = list(t.quant_choice.measured)
        e = paired_speedup(base, Graph(g, name=how), fp32, spec.input_shape, DECISION_PROTOCOL,
                           processes=PROCESSES)
        row[how] = {"speedup": e.estimate, "interval": [e.low, e.high]}
        print(f"[int8-layers] ratio {ratio}: {how} {e.estimate:.3f}x [{e.low:.3f}, {e.high:.3f}]",
              flush=True)
    row["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return row


def write_tables() -> Path:
    rows = sorted((json.loads(p.read_text()) for p in CELLS.glob("*.json")),
                  key=lambda r: r["ratio"])
    (RESULTS / "int8_layers.json").write_text(json.dumps(rows, indent=1))

    def cell(r, k):
        s = r[k]
        return f"{s['speedup']:.2f}x [{s['interval'][0]:.2f}, {s['interval'][1]:.2f}]"

    lines = [f"**`python bench/int8_layers.py`**: {MODEL} pruned uniformly (l1) to each ratio; "
             "speed-up over the unpruned fp32 model on onnxruntime-cpu (batch 1, 1 thread), "
             f"paired, {PROCESSES} fresh processes, 95% interval; `fast` keeps in fp32 the "
             "resolution stages that measured faster so (nodes kept fp32 / stages tried).", "",
             "| ratio pruned | fp32 | int8, every layer | int8, fast layers | stages kept fp32 "
             "| CPU |", "|---|---|---|---|---|---|"]
    for r in rows:
        kept = sum(t["fp32"] for t in r["trail"])
        lines.append(f"| {r['ratio']:g} | {cell(r, 'fp32')} | {cell(r, 'all')} | "
                     f"{cell(r, 'fast')} | {kept} of {len(r['trail'])} ({r['fp32_nodes']} nodes) "
                     f"| {r['cpu']['cpu']} |")
    md = RESULTS / "int8_layers.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", action="store_true", help="only rewrite the table")
    a = ap.parse_args()
    if not a.tables:
        CELLS.mkdir(parents=True, exist_ok=True)
        for ratio in RATIOS:
            f = CELLS / f"{ratio:g}.json"
            if f.exists():
                continue
            f.write_text(json.dumps(measure(ratio), indent=1))
    print(write_tables().read_text())


if __name__ == "__main__":
    sys.exit(main())
