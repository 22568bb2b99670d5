"""Does the paired interval tell the truth?  resnet20.fmnist on onnxruntime-cpu, 1 thread, batch 1.

(a) two copies of one model read 1.00x: the unpruned model against a deep copy, and a pruned
    model against a copy of its architecture with other weights (as a fine-tuned and a searched
    copy), each interval from ``--processes`` fresh processes must contain 1;
(b) coverage: the unpruned vs a 50%-L1-pruned model's interval computed ``--intervals`` times,
    each from ``--processes`` fresh processes; ``--remeasures`` further independent processes
    (one paired sample each) give the reference ratio (their Hodges-Lehmann estimate), and each
    single re-measure is also checked against every interval.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/timing_check.py     # ~10 minutes

Writes bench/results/timing_check.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

from prunelab.api import load
from prunelab.hardware import cpu_info
from prunelab.latency.paired import (DECISION_PROTOCOL, paired_speedup, signed_rank_interval)
from prunelab.pruning import prune
from prunelab.targets import TargetConfig, make_target

OUT = Path(__file__).parent / "results"


def other_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same architecture with other weights (each scaled by a random factor near 1)."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--intervals", type=int, default=10)
    ap.add_argument("--remeasures", type=int, default=24)
    a = ap.parse_args()
    t0 = time.perf_counter()
    target = make_target(TargetConfig("onnxruntime-cpu", threads=1))
    base, spec = load("resnet20.fmnist")
    pruned = prune(base, "l1", 0.5, input_shape=spec.input_shape, num_classes=spec.num_classes,
                   count=False).model
    shape, proto = spec.input_shape, DECISION_PROTOCOL

    def est(x, y, k, seed):
        e = paired_speedup(x, y, target, shape, proto, processes=k, seed=seed)
        print(f"  {e.estimate:.4f} [{e.low:.4f}, {e.high:.4f}]  {time.perf_counter() - t0:.0f} s",
              flush=True)
        return e

    print("(a) two copies of one model")
    copies = {"unpruned vs deep copy": est(base, copy.deepcopy(base), a.processes, 1),
              "pruned vs other weights": est(pruned, other_weights(pruned, 0), a.processes, 2)}
    print("(b) coverage: unpruned vs pruned 50%")
    intervals = [est(base, pruned, a.processes, 100 + i) for i in range(a.intervals)]
    print("    independent re-measures, one process each")
    singles = []
    for i in range(a.remeasures // 2):  # pairs of processes: both orders, as the intervals
        e = paired_speedup(base, pruned, target, shape, proto, processes=2, seed=1000 + i)
        singles += e.samples
    ref = math.exp(signed_rank_interval([math.log(x) for x in singles])[0])
    covered = [e.contains(ref) for e in intervals]
    single_in = [sum(e.contains(x) for x in singles) / len(singles) for e in intervals]
    res = {"cpu": cpu_info(), "target": target.cfg.to_json(), "protocol": proto.to_json(),
           "processes": a.processes, "seconds": time.perf_counter() - t0,
           "copies": {k: e.to_json() for k, e in copies.items()},
           "copies_contain_one": all(e.contains(1.0) for e in copies.values()),
           "intervals": [e.to_json() for e in intervals], "remeasures": singles,
           "reference_ratio": ref, "coverage_of_reference": sum(covered) / len(covered),
           "single_remeasures_inside": statistics.fmean(single_in)}
    OUT.mkdir(exist_ok=True)
    (OUT / "timing_check.json").write_text(json.dumps(res, indent=1))
    isa = [f for f in res["cpu"]["isa"] if f in ("avx2", "avx512f")]
    lines = ["# timing_check: paired speed-up intervals, resnet20.fmnist, onnxruntime-cpu",
             "", f"CPU: {res['cpu']['cpu']} ({', '.join(isa)}), {res['cpu']['usable_cores']} "
             f"usable core(s); 1 ORT thread, batch 1; protocol {proto.to_json()}; "
             f"{a.processes} fresh processes per interval; {res['seconds']:.0f} s in all.", "",
             "## (a) two copies of one model", "", "| pair | estimate | 95% interval | "
             "level | contains 1 |", "|---|---|---|---|---|"]
    for k, e in copies.items():
        lines.append(f"| {k} | {e.estimate:.4f}x | [{e.low:.4f}, {e.high:.4f}] | "
                     f"{e.level:.3f} | {'yes' if e.contains(1.0) else 'NO'} |")
    lines += ["", "## (b) coverage: unpruned vs 50% L1-pruned", "",
              f"Reference ratio (Hodges-Lehmann over {len(singles)} independent single-process "
              f"re-measures): {ref:.4f}x.", "",
              "| interval | estimate | 95% interval | contains reference | single re-measures "
              "inside |", "|---|---|---|---|---|"]
    for i, (e, c, s) in enumerate(zip(intervals, covered, single_in)):
        lines.append(f"| {i} | {e.estimate:.4f}x | [{e.low:.4f}, {e.high:.4f}] | "
                     f"{'yes' if c else 'no'} | {100 * s:.0f}% |")
    lines += ["", f"Coverage of the reference: {sum(covered)}/{len(covered)} "
              f"({100 * res['coverage_of_reference']:.0f}%; nominal {100 * intervals[0].level:.1f}%)."
              f" Single re-measures inside an interval: {100 * res['single_remeasures_inside']:.0f}%"
              " on average (an interval is for the centre of the per-process ratio, not a "
              "prediction interval for one process, so this is expected below 95%)."]
    (OUT / "timing_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
