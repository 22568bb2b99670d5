"""Predicted vs measured latency (MAPE, Spearman) and lookup-table build time, per model and target.

Each (model, target) starts from an empty cache so the table build time is a cold figure.
Writes bench/results/latency_validate.json and .md (docs/latency.md quotes the .md, through
bench/to_docs.py).

    python bench/latency_validate.py --models resnet56.fmnist vgg16.fmnist \
        --targets torch-cpu onnxruntime-cpu openvino-cpu --samples 50 --threads 1 --batch-size 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from prunelab.io import atomic_write_text
from prunelab.commands import latency as api
from prunelab.hardware import cpu_info
from prunelab.targets import TargetConfig

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet56.fmnist", "vgg16.fmnist"])
    ap.add_argument("--targets", nargs="+",
                    default=["torch-cpu", "onnxruntime-cpu", "openvino-cpu"])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "latency_validate"))
    args = ap.parse_args()
    prev = Path(args.out + ".json")
    results = json.loads(prev.read_text())["results"] if prev.exists() else []
    for model in args.models:
        for target in args.targets:
            cache = tempfile.mkdtemp(prefix="prunelab-bench-")
            try:
                t0 = time.perf_counter()
                load0 = os.getloadavg()[0]
                r = api.validate(model, TargetConfig(target, args.batch_size, args.threads),
                                 samples=args.samples, cache_dir=cache)
                r["wall_seconds"] = time.perf_counter() - t0
                r["loadavg_1min"] = [load0, os.getloadavg()[0]]  # other users of the cores
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            r["model_ref"] = model
            r["command"] = "bench/latency_validate.py " + " ".join(sys.argv[1:])
            results = [x for x in results
                       if (x["model_ref"], x["target"]) != (model, target)] + [r]
            print(f"{model:>18} {target:>16}: MAPE {100 * r['mape']:.1f}%  Spearman "
                  f"{r['spearman']:.3f}  table {r['lut_seconds']:.0f} s", file=sys.stderr,
                  flush=True)
            _write(args, results)


def _write(args, results) -> None:
    env = {**cpu_info(), "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
    atomic_write_text(args.out + ".json", json.dumps({"environment": env,
                                                      "results": results}, indent=1))
    lines = ["| model | target | batch | threads | samples | MAPE | Spearman | measured range (ms) "
             "| median noise (IQR/median) | table build (s) | points | calibration (table scale or "
             "per-class coefficients, ms per M weights, ms per k elided reorder elements, overhead "
             "ms; points) | load (1-min avg, start/end) |",
             "|" + "---|" * 13]
    for r in results:
        lo, hi = r["measured_range_ms"]
        c = r["calibration"]
        lines.append(f"| {r['model']} | {r['target']} | {r['batch_size']} | {r['threads']} | "
                     f"{r['samples']} | {100 * r['mape']:.1f}% | {r['spearman']:.3f} | "
                     f"{lo:.3f} - {hi:.3f} | {100 * r['median_rel_iqr']:.1f}% | "
                     f"{r['lut_seconds']:.0f} | {r['lut_points_measured']} | "
                     f"{_calib(c)} | {_load(r)} |")
    lines.append("")
    lines.append(f"CPU: {env['cpu']} ({env['usable_cores']} usable cores, ISA "
                 f"{' '.join(env['isa'])}); protocol per sample: 10 warm-up + 30 timed runs, "
                 f"median; table points: 5 warm-up + 20 timed runs. Commands: "
                 + "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", env["command"])
                                                           for r in results)))
    atomic_write_text(args.out + ".md", "\n".join(lines) + "\n")


def _load(r: dict) -> str:
    lo = r.get("loadavg_1min")
    return f"{lo[0]:.1f} / {lo[1]:.1f}" if lo else "?"


def _calib(c: dict) -> str:
    if c.get("coefs"):
        w = " ".join(f"{k} {v:.3f}" for k, v in c["coefs"].items())
    else:
        w = f"scale {c['scale']:.3f}"
    if c.get("weight_ms_per_m"):
        w += f", weights {c['weight_ms_per_m']:.3f}"
    if c.get("reorder_ms_per_k"):
        w += f", reorders -{c['reorder_ms_per_k']:.5f}"
    out = f" ({c['outliers']} left out)" if c.get("outliers") else ""
    return f"{w}, {c['overhead_ms']:+.3f}; {c.get('points', '?')}{out}"


if __name__ == "__main__":
    main()
