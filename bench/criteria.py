"""Criteria benchmark: does each criterion carry signal? (issue 3)

For one model: every criterion prunes all layers by the same ratio, BN statistics are
recalibrated on 20 training batches, validation top-1 is measured (no fine-tuning), and the
seconds each criterion took to score every filter are recorded.  Random runs with three seeds;
the table reports their mean and the margin of every criterion over it.

    .venv/bin/python bench/criteria.py resnet56.fmnist --ratio 0.3

writes bench/results/criteria-<model>-r<ratio>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from prunelab import commands
from prunelab.io import atomic_write_text
from prunelab.sweep import SweepConfig, uniform_sweep

CRITERIA = ["random:seed=0", "random:seed=1", "random:seed=2", "l1", "l2", "bn-scale", "taylor",
            "hrank", "grad-x-act", "integrated-gradients", "deeplift", "lrp", "lrp-zplus",
            "fp-omp", "fp-omp:compensation=none", "fp-omp:compensation=sandwich", "lrf",
            "lrf:compensation=none", "lrf:compensation=sandwich"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    model, spec = commands.load(args.model)
    data = commands.data_for(spec)
    t0 = time.time()
    rows = uniform_sweep(model, spec, data, args.criteria.split(","), [args.ratio], SweepConfig())
    rand = [r["top1"] for r in rows if r["criterion"].startswith("random")]
    rand_mean = statistics.mean(rand)
    rand_sd = statistics.stdev(rand) if len(rand) > 1 else 0.0
    for r in rows:
        r["margin_vs_random"] = r["top1"] - rand_mean
    meta = {"model": args.model, "ratio": args.ratio, "base_top1": rows[0]["base_top1"],
            "random_mean": rand_mean, "random_sd": rand_sd, "seconds_total": time.time() - t0,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "split": "val (5000 images)",
            "recal_batches": 20}
    stem = f"criteria-{args.model}-r{args.ratio}"
    out = Path(args.out_dir)
    atomic_write_text(out / f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"`{args.model}`, every layer pruned by {args.ratio:.0%}, BN recalibrated, no "
             f"fine-tuning; validation top-1 (unpruned {100 * meta['base_top1']:.2f}%). Random: "
             f"mean of 3 seeds {100 * rand_mean:.2f}% (sd {100 * rand_sd:.2f}).", "",
             "| criterion | val top-1 | vs random (pts) | MACs kept | scoring time (s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['criterion']} | {100 * r['top1']:.2f}% | "
                     f"{100 * r['margin_vs_random']:+.2f} | {100 * r['macs_kept']:.1f}% | "
                     f"{r['seconds']:.2f} |")
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
