"""What makes a search process time an ONNX model slower than a fresh process (issue 23, point 1).

Each *variant* is one child process that loads resnet20.fmnist, optionally does what a search
process does before it confirms a choice (torch training steps and BN re-estimation on the same
interpreter, torch on its default thread count, a heap of Python objects), then times the model
on onnxruntime-cpu (1 thread, batch 1) through prunelab's own target code and prints its median.
Variants run in alternating order, ``--rounds`` times, so load drifts hit all of them; the report
is each variant's median over rounds and its paired ratio to ``fresh``.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/timing_path.py --rounds 4
    python bench/timing_path.py --rounds 4          # both cores: torch's own pool gets 2 threads

``--child VARIANT`` is the internal entry point of one child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("fresh", "trained", "trained_t1", "heap", "front8", "trained_child")


def _prepare(variant: str) -> None:
    import torch

    from prunelab.api import load

    if variant in ("trained", "trained_t1", "trained_child"):
        if variant == "trained_t1":
            torch.set_num_threads(1)
        model, spec = load("resnet20.fmnist")
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(6):  # a few training steps, as a search's fine-tune of a candidate
            x = torch.randn(64, *spec.input_shape, generator=g)
            y = torch.randint(0, 10, (64,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():  # BN re-estimation: forward passes in train mode
            for _ in range(6):
                model(torch.randn(64, *spec.input_shape, generator=g))
    if variant == "heap":  # a search's logs, caches and candidates: many live Python objects
        global _HEAP
        _HEAP = [{"keep": {f"g{j}": j for j in range(8)}, "top1": i / 7} for i in range(300_000)]


def child(variant: str, calls: int) -> dict:
    t0 = time.perf_counter()
    _prepare(variant)
    prep = time.perf_counter() - t0
    import torch

    from prunelab.api import load
    from prunelab.latency.measure import Protocol, measure
    from prunelab.targets import TargetConfig, make_target

    import copy

    from prunelab.latency.paired import paired_speedup

    model, spec = load("resnet20.fmnist")
    twin = copy.deepcopy(model)
    target = make_target(TargetConfig("onnxruntime-cpu", threads=1))
    proto = Protocol(warmup=200, repeats=calls)
    if variant == "trained_child":  # the same state, but the timing in clean child processes
        e = paired_speedup(model, twin, target, spec.input_shape,
                           Protocol(warmup=200, repeats=calls // 2, sessions=1), processes=2)
        t = type("T", (), {"median_ms": e.base_ms, "iqr_ms": float("nan")})
    elif variant == "front8":  # as a search's front run: the model among 7 other widths
        from prunelab.pruning import prune

        others = [prune(model, "l1", r, input_shape=spec.input_shape,
                        num_classes=spec.num_classes, count=False).model
                  for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
        t = measure(target, [model, *others], spec.input_shape, proto)[0]
    else:  # as `latency compare` and a confirmation: the model interleaved with one other
        t = measure(target, [model, twin], spec.input_shape, proto)[0]
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
    return {"variant": variant, "median_ms": t.median_ms, "iqr_ms": t.iqr_ms,
            "torch_threads": torch.get_num_threads(), "process_threads": threads,
            "prep_s": prep}


def cpu() -> str:
    from prunelab.hardware import cpu_info

    return json.dumps(cpu_info())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", help="append the JSON result here")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.calls)))
        return
    variants = a.variants.split(",")
    rows = []
    for r in range(a.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            out = subprocess.run([sys.executable, __file__, "--child", v, "--calls",
                                  str(a.calls)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["round"] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    fresh = {x["round"]: x["median_ms"] for x in rows if x["variant"] == "fresh"}
    summary = {}
    for v in variants:
        ms = [x["median_ms"] for x in rows if x["variant"] == v]
        ratios = [x["median_ms"] / fresh[x["round"]] for x in rows if x["variant"] == v]
        diffs = [x["median_ms"] - fresh[x["round"]] for x in rows if x["variant"] == v]
        summary[v] = {"median_ms": statistics.median(ms), "ratio_to_fresh":
                      statistics.median(ratios), "diff_ms": statistics.median(diffs),
                      "ratios": ratios,
                      "process_threads": [x["process_threads"] for x in rows
                                          if x["variant"] == v][0],
                      "torch_threads": [x["torch_threads"] for x in rows
                                        if x["variant"] == v][0]}
    res = {"cpu": json.loads(cpu()), "affinity": sorted(os.sched_getaffinity(0)),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "calls": a.calls,
           "rounds": a.rounds, "summary": summary, "rows": rows}
    print(json.dumps({"summary": summary, "cpu": res["cpu"]}, indent=1))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
