"""Hardware step sizes in action: a model pruned to the table's useful widths against one pruned
one channel narrower in every group (fewer MACs, unaligned), timed interleaved on the target.

Writes bench/results/step_example_<target>.json and .md.

    python bench/step_example.py resnet56.fmnist --target onnxruntime-cpu --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prunelab.io import atomic_write_text
from prunelab.commands import latency as api
from prunelab.latency.cache import Cache
from prunelab.latency.measure import Protocol, compare, measure
from prunelab.latency.predictor import ModelMeter, build_predictor
from prunelab.metrics import macs_params
from prunelab.pruning import prunable_groups
from prunelab.targets import TargetConfig, make_target

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--target", default="onnxruntime-cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--fraction", type=float, default=0.5, help="kept fraction of each group")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--cache-dir")
    args = ap.parse_args()
    cfg = TargetConfig(args.target, args.batch_size, args.threads)
    steps = api.steps(args.model, cfg, args.cache_dir)
    rounded, narrower = {}, {}
    for g in steps["groups"]:
        want = max(2, round(g["width"] * args.fraction))
        ok = [w for w in g["useful_widths"] if w >= 2]
        r = min(ok, key=lambda w: (abs(w - want), -w))  # nearest useful width
        rounded[g["group"]], narrower[g["group"]] = r, r - 1
    model, spec = api._load(args.model)
    target = make_target(cfg)
    cache = Cache(target.fingerprint(), args.cache_dir)
    pred, _ = build_predictor(model, spec, target, cache)
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    meter = ModelMeter(target, cache, model, spec, groups, pred.units)
    a, b = meter.pruned(rounded), meter.pruned(narrower)
    ta, tb = measure(target, [a, b], spec.input_shape, Protocol(warmup=20, repeats=args.repeats))
    c = compare(tb, ta)  # how the rounded model (a) relates to the narrower one (b)
    res = {"model": spec.name, **cfg.to_json(), "fraction": args.fraction,
           "rounded": {"keep": rounded, "macs": macs_params(a, spec.input_shape)[0],
                       "predicted_ms": pred.predict(rounded), "measured": ta.to_json()},
           "narrower": {"keep": narrower, "macs": macs_params(b, spec.input_shape)[0],
                        "predicted_ms": pred.predict(narrower), "measured": tb.to_json()},
           "rounded_vs_narrower": c, "command": " ".join(sys.argv)}
    stem = OUT / f"step_example_{args.target}"
    atomic_write_text(str(stem) + ".json", json.dumps(res, indent=1))
    rows = ["| variant | widths (first groups) | MACs | predicted ms | measured ms (median) | IQR ms |",
            "|---|---|---|---|---|---|"]
    for k in ("rounded", "narrower"):
        v = res[k]
        first = ", ".join(f"{n}={w}" for n, w in list(v["keep"].items())[:4]) + ", ..."
        rows.append(f"| {k} | {first} | {v['macs'] / 1e6:.2f} M | {v['predicted_ms']:.3f} | "
                    f"{v['measured']['median_ms']:.3f} | {v['measured']['iqr_ms']:.3f} |")
    rows.append("")
    rows.append(f"{spec.name} on {args.target}, batch {args.batch_size}, {args.threads} thread(s), "
                f"{args.repeats} interleaved runs each: the rounded model is "
                f"{c['speedup']:.3f}x the speed of the narrower one ({c['verdict'].replace('b ', 'rounded ').replace('a ', 'narrower ')}; "
                f"IQRs {'apart' if c['apart'] else 'overlap'}). `{res['command']}`")
    atomic_write_text(str(stem) + ".md", "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
