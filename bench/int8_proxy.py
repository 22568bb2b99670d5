"""Does the search's candidate score (fp32, BN re-estimated, a validation subset) rank pruned
candidates the way their int8 graphs score when the runtime runs them?  An int8 search scores
its candidates in fp32 (an int8 graph per candidate costs a quantization); this measures the
rank agreement that choice rests on.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/int8_proxy.py            # resnet20, 24 candidates
    python bench/int8_proxy.py --model resnet56.fmnist --candidates 24

For each candidate (seeded random allocations: a base ratio per candidate in [0.3, 0.8], each
group's ratio scattered around it, so allocations differ, not only their size) it records:
the search's score (l1 pruning, BN re-estimated on 6 training batches, top-1 on the first
1,000 validation images, fp32 in PyTorch), the same net quantized as onnxruntime-cpu runs it
(static QDQ, calibrated on 64 fixed training images) and judged by ONNX Runtime on the same
1,000 images and on the whole validation split, and the seconds each score costs.  Spearman's
rank correlation between the scores, with a 95% bootstrap interval over candidates.  Resumable
candidate by candidate (runs/bench-int8-proxy/<model>.jsonl); tables in
bench/results/int8_proxy.{md,json}.  Accuracy only: nothing here is timed for speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from stats import spearman  # noqa: E402
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "bench-int8-proxy"
VAL_SUBSET = 1000
CALIB = 64


def allocations(widths: dict[str, int], n: int, seed: int) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.uniform(0.3, 0.8)
        out.append({g: max(1, int(round(w * (1 - float(np.clip(base + rng.normal(0, 0.15),
                                                                   0.0, 0.95))))))
                    for g, w in widths.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet20.fmnist")
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    from prunelab.commands import data_for, load
    from prunelab.criteria import make_criterion
    from prunelab.hardware import cpu_info
    from prunelab.io import atomic_write_text
    from prunelab.pruning import prunable_groups, score_groups
    from prunelab.quant import calibration_images, image_batches, quantize_onnx, runtime_top1
    from prunelab.searches.evaluator import Candidates, widths_key
    from prunelab.targets import TargetConfig, make_target
    from prunelab.targets._onnx import to_onnx

    torch.manual_seed(a.seed)
    model, spec = load(a.model)
    data = data_for(spec)
    crit = make_criterion("l1")
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    widths = {g.name: g.width for g in groups}
    scores, _ = score_groups(model, crit, groups, data)
    cands = Candidates(model, scores, crit, data, spec.input_shape, spec.num_classes,
                       recal_batches=6, val_images=VAL_SUBSET, seed=a.seed)
    calib = calibration_images(data, CALIB, a.seed)
    target = make_target(TargetConfig("onnxruntime-cpu", precision="int8"))
    x = torch.zeros(1, *spec.input_shape)
    log = RUNS / f"{a.model}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(s)["key"]: json.loads(s) for s in log.read_text().splitlines()} \
        if log.exists() else {}
    rows = []
    for i, keep in enumerate(allocations(widths, a.candidates, a.seed)):
        key = widths_key(widths, keep)
        if key in done:
            rows.append(done[key])
            continue
        t0 = time.perf_counter()
        net, _ = cands.build(keep)
        fp32 = cands.top1(net, VAL_SUBSET)
        t_fp32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        q, choice = quantize_onnx(to_onnx(net.eval(), [x]), image_batches(calib, 1))
        int8_sub = runtime_top1(target, q, data.batches("val", 500, limit=VAL_SUBSET))
        t_int8 = time.perf_counter() - t0
        int8_all = runtime_top1(target, q, data.batches("val", 500))
        fp32_all = cands.top1(net, None)
        r = {"key": key, "kept": sum(keep.values()) / sum(widths.values()),
             "fp32_subset": fp32, "int8_subset": int8_sub, "int8_val": int8_all,
             "fp32_val": fp32_all, "fp32_seconds": t_fp32, "int8_seconds": t_int8,
             "types": [choice.activations, choice.weights]}
        with log.open("a") as f:
            f.write(json.dumps(r) + "\n")
        rows.append(r)
        print(f"{i + 1}/{a.candidates}: kept {r['kept']:.2f}, fp32 {fp32:.3f}, "
              f"int8 {int8_sub:.3f} / {int8_all:.3f}", flush=True)
    col = {k: [r[k] for r in rows] for k in rows[0] if k not in ("key", "types")}
    res = {"model": a.model, "candidates": len(rows), "cpu": cpu_info(),
           "command": f"python bench/int8_proxy.py --model {a.model} --candidates {a.candidates}",
           "val_subset": VAL_SUBSET, "calibration_images": CALIB,
           "fp32_subset_vs_int8_val": spearman(col["fp32_subset"], col["int8_val"]),
           "int8_subset_vs_int8_val": spearman(col["int8_subset"], col["int8_val"]),
           "fp32_val_vs_int8_val": spearman(col["fp32_val"], col["int8_val"]),
           "mean_drop_int8_vs_fp32": float(np.mean(np.subtract(col["fp32_val"],
                                                               col["int8_val"]))),
           "seconds": {"fp32_score": float(np.median(col["fp32_seconds"])),
                       "int8_score": float(np.median(col["int8_seconds"]))},
           "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    prev = json.loads((RESULTS / "int8_proxy.json").read_text()) \
        if (RESULTS / "int8_proxy.json").exists() else {}
    prev[a.model] = res
    atomic_write_text(RESULTS / "int8_proxy.json", json.dumps(prev, indent=1))
    atomic_write_text(RESULTS / "int8_proxy.md", table(prev))
    print(table(prev))


def table(res: dict) -> str:
    lines = ["**`python bench/int8_proxy.py`**: Spearman rank correlation (95% bootstrap "
             "interval over candidates) of candidate scores against each candidate's int8 "
             "top-1 on the whole validation split, computed by onnxruntime-cpu; pruned with "
             "l1, BN re-estimated, no fine-tuning.", "",
             "| model | candidates | search score (fp32, 1,000 val images) | int8 on the same "
             "1,000 images | fp32 on the whole val split | mean int8 - fp32 (points) | cost per "
             "candidate fp32 / int8 | CPU |", "|---|---|---|---|---|---|---|---|"]

    def s(d):
        return f"{d['rho']:.3f} [{d['low']:.2f}, {d['high']:.2f}]"
    for m, r in res.items():
        lines.append(
            f"| {m} | {r['candidates']} | {s(r['fp32_subset_vs_int8_val'])} | "
            f"{s(r['int8_subset_vs_int8_val'])} | {s(r['fp32_val_vs_int8_val'])} | "
            f"{-100 * r['mean_drop_int8_vs_fp32']:+.2f} | {r['seconds']['fp32_score']:.1f} s / "
            f"{r['seconds']['int8_score']:.1f} s | {r['cpu']['cpu']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
