"""What a search and a fine-tune of ResNet-50 on an ImageNet-size input would cost on a cluster,
worked out from costs measured here, on one core (issue 13's cluster page).

Measured (one torch thread, fp32, channels-last as the search runs candidates; synthetic
224x224 images: the cost does not depend on their content):
- one candidate evaluation as :class:`prunelab.searches.evaluator.Candidates` runs it: prune
  (L1 scores, every group kept at ``--keep``), BN re-estimation, validation, MACs count; timed
  with 1 BN batch of 128 and 256 validation images, then scaled to the search's defaults (6 BN
  batches of 128, 1000 validation images): each part is linear in its images;
- one distillation fine-tune step (student forward + backward + SGD, teacher forward) per image.

Worked out: NSGA-II's default evaluations for ResNet-50 (its sensitivity sweep: 2 ratios per
prunable group, one batch; then 13 generations of 20), the wall time with W Ray workers (one core
each; a batch of B candidates takes ceil(B / W) rounds), and a fine-tune epoch over 1.28 M images
in N processes.  Writes ``bench/results/cluster_cost.{json,md}``.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/cluster_cost.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHAPE = (3, 224, 224)
CLASSES = 1000
WORKERS = (1, 16, 64, 256)          # one worker per core: 1 core, 1, 4, 16 nodes of 16 cores
FT_PROCS = (16, 64, 256)
IMAGENET_TRAIN = 1_281_167


def _batches(n: int, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out, left = [], n
    while left > 0:
        b = min(batch, left)
        out.append((torch.randn(b, *SHAPE, generator=g), torch.randint(0, CLASSES, (b,),
                                                                        generator=g)))
        left -= b
    return out


def measure(keep_frac: float) -> dict:
    from prunelab.data.loaders import LoaderData
    from prunelab.metrics import macs_params
    from prunelab.models import build
    from prunelab.pruning import prunable_groups, score_groups
    from prunelab.searches.evaluator import Candidates
    from prunelab.sweep import build_criterion

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build("resnet50", num_classes=CLASSES).eval()
    _, groups = prunable_groups(model, SHAPE, CLASSES)
    crit = build_criterion("l1")
    scores, _ = score_groups(model, crit, groups)
    recal, val = _batches(128, 128, 1), _batches(256, 64, 2)
    data = LoaderData(train=recal, val=val, name="synthetic-224")
    keep = {g.name: max(1, round(g.width * keep_frac)) for g in groups}
    cands = Candidates(model, scores, crit, data, SHAPE, CLASSES, recal_batches=1,
                       val_images=256)
    cands.run(keep)                                        # warm-up (allocator, kernels)
    from prunelab.pruning import prune
    from prunelab.train import recalibrate_bn

    t = time.perf_counter()
    net = prune(model, crit, keep=keep, input_shape=SHAPE, num_classes=CLASSES, scores=scores,
                count=False).model
    prune_s = time.perf_counter() - t
    net.to(memory_format=cands.layout)
    t = time.perf_counter()
    recalibrate_bn(net, cands.batches("train", 128), 1)
    recal_s = time.perf_counter() - t
    t = time.perf_counter()
    cands.top1(net, 256)
    val_s = time.perf_counter() - t
    t = time.perf_counter()
    macs, params = macs_params(net, SHAPE)
    count_s = time.perf_counter() - t
    t = time.perf_counter()
    whole = cands.run(keep)["seconds"]                   # the same, as one candidate run
    whole_s = time.perf_counter() - t
    base_macs, _ = macs_params(model, SHAPE)
    # a distillation step: pruned student forward + backward + SGD, unpruned teacher forward
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = _batches(32, 32, 3)[0]
    x = x.contiguous(memory_format=cands.layout)
    model.to(memory_format=cands.layout)
    times = []
    for i in range(3):
        t = time.perf_counter()
        with torch.no_grad():
            tl = model(x)
        out = net(x)
        loss = nn.functional.cross_entropy(out, y) + nn.functional.kl_div(
            out.log_softmax(1), tl.softmax(1), reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    step_per_image = min(times) / len(y)
    return {"groups": len(groups), "keep_fraction": keep_frac, "macs_kept": macs / base_macs,
            "prune_s": prune_s, "recal_batch_s": recal_s, "val_256_s": val_s,
            "count_s": count_s, "candidate_measured_s": whole, "candidate_wall_s": whole_s,
            "train_step_per_image_s": step_per_image, "torch": torch.__version__,
            "cpu": os.cpu_count()}


def work_out(m: dict) -> dict:
    cand = m["prune_s"] + m["count_s"] + 6 * m["recal_batch_s"] + 1000 / 256 * m["val_256_s"]
    sweep, gens, pop = 2 * m["groups"], 13, 20
    evals = sweep + gens * pop
    rows = []
    for w in WORKERS:
        rounds = math.ceil(sweep / w) + gens * math.ceil(pop / w)
        rows.append({"workers": w, "rounds": rounds, "wall_h": rounds * cand / 3600})
    epoch_core_h = IMAGENET_TRAIN * m["train_step_per_image_s"] / 3600
    ft = [{"procs": n, "epoch_h": epoch_core_h / n} for n in FT_PROCS]
    return {"candidate_s": cand, "evaluations": evals, "sweep": sweep,
            "search_core_h": evals * cand / 3600, "search": rows,
            "finetune_epoch_core_h": epoch_core_h, "finetune": ft}


def table(m: dict, w: dict) -> str:
    lines = [
        f"**`OMP_NUM_THREADS=1 python bench/cluster_cost.py`** (measured on one core of this "
        f"machine, {m['cpu']} cores, torch {m['torch']}; ResNet-50, 1000 classes, 224x224, "
        f"every group kept at {m['keep_fraction']:.0%} = {m['macs_kept']:.0%} of the MACs)",
        "",
        "| measured, one core | seconds |", "|---|---|",
        f"| prune (L1, {m['groups']} groups) | {m['prune_s']:.2f} |",
        f"| BN re-estimation, one batch of 128 | {m['recal_batch_s']:.1f} |",
        f"| validation, 256 images | {m['val_256_s']:.1f} |",
        f"| MACs/params count | {m['count_s']:.2f} |",
        f"| the same candidate (1 batch of 128, 256 images) as one `Candidates.run` | "
        f"{m['candidate_measured_s']:.1f} (parts: "
        f"{m['prune_s'] + m['recal_batch_s'] + m['val_256_s'] + m['count_s']:.1f}) |",
        f"| one candidate at the defaults (6 x 128 BN images, 1000 validation images) | "
        f"**{w['candidate_s']:.0f}** |",
        f"| distillation step, per image (student fwd+bwd+SGD, teacher fwd) | "
        f"{m['train_step_per_image_s']:.3f} |",
        "",
        f"NSGA-II at its defaults: {w['sweep']} sensitivity candidates (one batch) + 13 "
        f"generations x 20 = {w['evaluations']} evaluations, "
        f"{w['search_core_h']:.1f} core-hours.",
        "",
        "| Ray workers (1 core each) | rounds of candidates | search wall time |",
        "|---|---|---|"]
    for r in w["search"]:
        lines.append(f"| {r['workers']} | {r['rounds']} | {r['wall_h']:.2f} h |")
    lines += ["", f"One distillation epoch over ImageNet's {IMAGENET_TRAIN:,} training images: "
              f"{w['finetune_epoch_core_h']:,.0f} core-hours on CPU.", "",
              "| torchrun processes (1 core each) | one epoch |", "|---|---|"]
    for r in w["finetune"]:
        lines.append(f"| {r['procs']} | {r['epoch_h']:.1f} h |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=float, default=0.6, help="fraction of every group kept")
    ap.add_argument("--tables", action="store_true", help="only rewrite the table")
    a = ap.parse_args()
    if not 0 < a.keep <= 1:
        raise SystemExit(f"--keep {a.keep}: give a fraction in (0, 1]")
    path = RESULTS / "cluster_cost.json"
    m = json.loads(path.read_text())["measured"] if a.tables else measure(a.keep)
    w = work_out(m)
    path.write_text(json.dumps({"measured": m, "worked_out": w}, indent=1))
    (RESULTS / "cluster_cost.md").write_text(table(m, w))
    print(table(m, w))


if __name__ == "__main__":
    main()
