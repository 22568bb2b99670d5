"""``--method torch-pruning``: Torch-Pruning's own ``MetaPruner`` as an allocation method (the
real peer, not a re-implementation), on the same driver, log, resume and measurement as every
other method.

For a pruning ratio ``r`` Torch-Pruning's pruner runs on a copy of the model with its own
importance class (``importance`` option), ``global_pruning``, ``isomorphic``, ``round_to`` and
``max_pruning_ratio``; the per-group widths it leaves are the candidate.  The candidate is then
built by the driver with the ``tp`` criterion (the same importance object scoring the same
groups), so the channels removed are the ones Torch-Pruning removes (a test checks it).  The
ratio is bisected to the budget like ``uniform`` and finished on the latency staircase.
"""

from __future__ import annotations

import copy

import torch

from ..errors import PrunelabError
from ..gate import gated
from .registered import SEARCHES
from .driver import Search
from .methods import front_levels, bisect, staircase_finish
from .options import Opt


def tp_widths(model, input_shape, ratio: float, importance: str, global_pruning: bool,
              isomorphic: bool, round_to: int, max_ratio: float, ignored, group_names,
              grad_batches=None) -> dict[str, int]:
    """Per-group widths Torch-Pruning's MetaPruner leaves at ``ratio`` (on a copy)."""
    import torch.nn.functional as F
    import torch_pruning as tp

    from ..criteria.torch_pruning import tp_importance

    net = copy.deepcopy(model).eval()
    names = {n: m for n, m in net.named_modules()}
    if ratio <= 0:
        return {g: _width(names[g]) for g in group_names}
    imp = tp_importance(importance)
    if importance == "random":
        torch.manual_seed(0)
    pruner = tp.pruner.MetaPruner(
        net, example_inputs=torch.zeros(1, *input_shape), importance=imp,
        global_pruning=global_pruning, isomorphic=isomorphic, pruning_ratio=ratio,
        max_pruning_ratio=max_ratio, round_to=round_to if round_to > 1 else None,
        ignored_layers=[names[n] for n in ignored])
    if importance == "taylor":
        net.zero_grad(set_to_none=True)
        for x, y in gated(grad_batches or []):
            F.cross_entropy(net(x), y, reduction="sum").backward()
    pruner.step()
    return {g: _width(names[g]) for g in group_names}


def tp_trajectory(model, input_shape, importance: str, global_pruning: bool, isomorphic: bool,
                  round_to: int, max_ratio: float, ignored, groups, steps: int,
                  hi: float = 0.95, grad_batches=None) -> tuple[list[dict[str, int]], dict]:
    """Torch-Pruning's progressive pruning, as its own benchmarks run it: one ``MetaPruner`` of
    ``steps`` iterative steps to ratio ``hi`` (on a copy), each step ranking the channels of
    the network the steps before left.  Returns every group's width after each step (index 0:
    unpruned) and, per group, the step at which each original channel went (``steps + 1``:
    never), read from the pruner's own groups as it prunes them."""
    import torch.nn.functional as F
    import torch_pruning as tp

    from ..criteria.torch_pruning import tp_importance

    net = copy.deepcopy(model).eval()
    names = {m: n for n, m in net.named_modules()}
    mods = {n: m for m, n in names.items()}
    owner = {p: g.name for g in groups for p in g.producers}
    alive = {g.name: list(range(g.width)) for g in groups}
    removed_at = {g.name: [steps + 1] * g.width for g in groups}
    if importance == "random":
        torch.manual_seed(0)
    pruner = tp.pruner.MetaPruner(
        net, example_inputs=torch.zeros(1, *input_shape), importance=tp_importance(importance),
        global_pruning=global_pruning, isomorphic=isomorphic, pruning_ratio=hi,
        max_pruning_ratio=max_ratio, round_to=round_to if round_to > 1 else None,
        ignored_layers=[mods[n] for n in ignored], iterative_steps=steps)
    widths = [{g: len(a) for g, a in alive.items()}]
    for k in range(1, steps + 1):
        if importance == "taylor":
            net.zero_grad(set_to_none=True)
            for x, y in gated(grad_batches or []):
                F.cross_entropy(net(x), y, reduction="sum").backward()
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                g = owner.get(names.get(dep.target.module))
                if g is not None and "out_channels" in getattr(dep.handler, "__name__", ""):
                    gone = {int(i) for i in idxs}
                    for i in gone:
                        removed_at[g][alive[g][i]] = k
                    alive[g] = [o for j, o in enumerate(alive[g]) if j not in gone]
                    break
            group.prune()
        widths.append({g: len(a) for g, a in alive.items()})
    return widths, removed_at


HI = 0.95  # the most pruned ratio the bisection (and a progressive trajectory) reaches


def _width(m) -> int:
    return m.out_channels if hasattr(m, "out_channels") else m.out_features


def removal_order(importance: str, removed_at: dict[str, list[int]], steps: int, seed: int = 0):
    """The ``tp`` criterion ranking channels by the step Torch-Pruning's progressive run removed
    them at (earliest first; ties by its one-shot importance): pruning a group to its width after
    step ``k`` removes exactly the channels that run removed by then."""
    from ..criteria.torch_pruning import TorchPruningImportance

    class RemovalOrder(TorchPruningImportance):
        def score(self, group):
            base = super().score(group)
            tie = base.argsort().argsort().float() / max(1, len(base))
            return torch.tensor(removed_at[group.name], dtype=torch.float32) + tie

        def config(self) -> dict:
            return {**super().config(), "progressive_steps": steps}

    return RemovalOrder(importance, seed=seed)


@SEARCHES.register("torch-pruning", "Torch-Pruning's own MetaPruner (its importance classes, "
                   "global or uniform ranking, isomorphic, round_to, max_ratio, progressive "
                   "steps), the pruning "
                   "ratio bisected to the budget and finished on the latency staircase",
                   criterion="tp", options={
                       "global": Opt(bool), "isomorphic": Opt(bool), "round_to": Opt(int, ge=1),
                       "importance": Opt(str, choices=("magnitude-l1", "magnitude-l2", "taylor",
                                                       "lamp", "bn-scale", "fpgm", "random")),
                       "max_ratio": Opt(float, gt=0, le=1), "steps": Opt(int, ge=1, le=1000),
                       "front": Opt(int, ge=0)})
def torch_pruning(ctx: Search) -> None:
    """Options: global (false), importance (magnitude-l2: Torch-Pruning's default
    GroupMagnitudeImportance(p=2); magnitude-l1, taylor, lamp, bn-scale, fpgm, random), isomorphic
    (false), round_to (1), max_ratio (1.0: Torch-Pruning's max_pruning_ratio), steps (1: one
    shot; more: Torch-Pruning's progressive pruning, as its benchmarks run it: one trajectory of
    that many pruner steps to ratio 0.95, the ratio bisected along it, each candidate the
    network the trajectory left there), front (5 extra ratios from 0.1 to 0.9 for the Pareto
    plot)."""
    from ..criteria.torch_pruning import IMPORTANCES, TorchPruningImportance
    from ..pruning import output_layers

    glob, iso = ctx.option("global", False, bool), ctx.option("isomorphic", False, bool)
    importance = ctx.option("importance", "magnitude-l2", str)
    rt, max_ratio, n = ctx.option("round_to", 1), ctx.option("max_ratio", 1.0), \
        ctx.option("front", 5)
    steps = ctx.option("steps", 1)
    if importance not in IMPORTANCES or rt < 1 or not 0 < max_ratio <= 1 or n < 0:
        raise PrunelabError(f"torch-pruning needs importance in {', '.join(IMPORTANCES)}, "
                            "round_to >= 1, max_ratio in (0, 1], front >= 0")
    # the candidates are built with the same importance as Torch-Pruning ranks by
    if not (isinstance(ctx.crit, TorchPruningImportance) and ctx.crit.importance == importance):
        ctx.set_criterion(TorchPruningImportance(importance, seed=ctx.seed))
    ctx.info["torch_pruning"] = {"importance": importance, "global": glob, "isomorphic": iso,
                                 "round_to": rt, "max_ratio": max_ratio, "steps": steps}
    mods = {m: k for k, m in ctx.model.named_modules()}
    ignored = sorted({*ctx.ignored, *(mods[m] for m in output_layers(ctx.model,
                                                                     ctx.spec.input_shape))})
    grads = (list(ctx.batches("train", 64, limit=256)) if importance == "taylor" else None)
    cache: dict[float, dict[str, int]] = {}

    def keep_at(r: float) -> dict[str, int]:
        r = round(r, 6)
        if r not in cache:
            cache[r] = tp_widths(ctx.model, ctx.spec.input_shape, r, importance, glob, iso, rt,
                                 max_ratio, ignored, list(ctx.widths), grads)
        return cache[r]

    if steps > 1:  # one progressive trajectory; ratio r is the step it reaches r at
        traj, removed = tp_trajectory(ctx.model, ctx.spec.input_shape, importance, glob, iso,
                                      rt, max_ratio, ignored, ctx.groups, steps, HI, grads)
        ctx.set_criterion(removal_order(importance, removed, steps, ctx.seed))

        def keep_at(r: float) -> dict[str, int]:  # noqa: F811 - the progressive path
            return traj[min(steps, max(0, round(r / HI * steps)))]

    ctx.plan(8 + n)
    ctx.phase = "bisection"
    _, keep = bisect(ctx, keep_at, 0.0, HI)
    ctx.evaluate(keep, phase="search")
    staircase_finish(ctx, keep, keep_at=keep_at, lo=0.0, hi=HI)
    front_levels(ctx, keep_at, 1.0, n)
