"""Criterion sweeps: does a criterion carry signal, and what does each layer cost?

* :func:`uniform_sweep` prunes every layer by the same ratio with each criterion;
* :func:`layer_sweep` prunes one layer at a time (the sensitivity / contribution matrix that CIE
  and the hardware-aware search's per-layer ranges are built from).

Each point: prune a copy, recalibrate BN statistics on a few training batches, measure validation
top-1 (never test).  A criterion scores the unpruned model once; all ratios reuse the scores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch.nn as nn

from .criteria import Criterion, build_criterion, make_criterion, parse_criterion  # noqa: F401
from .errors import PrunelabError
from .pruning import prunable_groups, prune, score_groups
from .train import evaluate, recalibrate_bn
from .ui import progress


@dataclass(frozen=True)
class SweepConfig:
    recal_batches: int = 20
    recal_batch_size: int = 128
    val_images: int | None = None  # None = the whole validation split
    seed: int = 0

    def __post_init__(self):
        if self.recal_batches < 0 or (self.val_images is not None and self.val_images < 1):
            raise PrunelabError("recal_batches must be >= 0 and val_images >= 1")


def layer_keep(width: int, ratio: float) -> int:
    """Channels kept when one group is pruned alone by ``ratio`` (the per-layer sweep's grid,
    shared with the CIE and NSGA-II sensitivity searches)."""
    return max(1, round(width * (1 - ratio)))


def _val_top1(model: nn.Module, data, cfg: SweepConfig) -> float:
    if cfg.recal_batches:
        recalibrate_bn(model, data.batches("train", cfg.recal_batch_size, shuffle=True,
                                           seed=cfg.seed), cfg.recal_batches)
    return evaluate(model, data.batches("val", 500, limit=cfg.val_images))


def _point(model, spec, data, crit, scores, keep, ratio, cfg):
    res = prune(model, crit, ratio=ratio if keep is None else None, keep=keep,
                input_shape=spec.input_shape, data=data, num_classes=spec.num_classes,
                scores=scores)
    return res, _val_top1(res.model, data, cfg)


def uniform_sweep(model: nn.Module, spec, data, criteria: Sequence[str], ratios: Sequence[float],
                  cfg: SweepConfig = SweepConfig()) -> list[dict]:
    """Every criterion x ratio, all layers pruned by the ratio."""
    base = _val_top1(copy.deepcopy(model), data, SweepConfig(0, val_images=cfg.val_images))
    rows = []
    with progress() as bar:
        task = bar.add_task("criteria", total=len(criteria) * (len(ratios) + 1), info="")
        for c in criteria:
            crit = build_criterion(c, seed=cfg.seed)
            bar.update(task, info=f"{c}: scoring")
            _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
            scores, seconds = score_groups(model, crit, groups, data)
            bar.advance(task)
            for r in ratios:
                bar.update(task, info=f"{c} @ {r}")
                res, top1 = _point(model, spec, data, crit, scores, None, r, cfg)
                rows.append({"criterion": c, "ratio": r, "top1": top1, "base_top1": base,
                             "macs": res.macs_after, "params": res.params_after,
                             "macs_kept": res.macs_after / res.macs_before,
                             "seconds": seconds, "split": "val"})
                bar.advance(task)
    return rows


def layer_sweep(model: nn.Module, spec, data, criterion: str, ratios: Sequence[float],
                cfg: SweepConfig = SweepConfig(), layers: Sequence[str] | None = None
                ) -> list[dict]:
    """One layer (group) at a time at each ratio; the rest of the network stays whole."""
    base = _val_top1(copy.deepcopy(model), data, SweepConfig(0, val_images=cfg.val_images))
    crit = build_criterion(criterion, seed=cfg.seed)
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    if layers:
        unknown = set(layers) - {g.name for g in groups}
        if unknown:
            raise PrunelabError(f"unknown layer {sorted(unknown)[0]!r}; prunable layers: "
                                f"{', '.join(g.name for g in groups)}")
        groups_run = [g for g in groups if g.name in layers]
    else:
        groups_run = groups
    scores, seconds = score_groups(model, crit, groups, data)
    rows = []
    with progress() as bar:
        task = bar.add_task(f"per-layer {criterion}", total=len(groups_run) * len(ratios), info="")
        for g in groups_run:
            for r in ratios:
                keep = layer_keep(g.width, r)
                bar.update(task, info=f"{g.name} @ {r}")
                res, top1 = _point(model, spec, data, crit, scores, {g.name: keep}, None, cfg)
                rows.append({"criterion": criterion, "layer": g.name, "width": g.width,
                             "keep": keep, "ratio": r, "top1": top1, "base_top1": base,
                             "drop": base - top1, "macs": res.macs_after,
                             "params": res.params_after, "seconds": seconds, "split": "val"})
                bar.advance(task)
    return rows
