"""Physical filter pruning on torch-pruning's dependency graph.

:func:`prunable_groups` lists the units of allocation: each torch-pruning group of coupled channels
(a conv with its BN and the next layer's inputs; a residual stage's shared channels), named by its
root layer.  :func:`prune` removes channels from every group, either the same ``ratio`` everywhere
or exact per-group ``keep`` counts, choosing *which* channels with a criterion.  No group is ever
pruned to zero, and the layers feeding the model's output (found from the graph) are never
pruned.  A group coupled to a grouped (not depthwise) convolution of ``G`` groups loses the same
channels in each of its ``G`` parts (scores averaged over the parts, as Torch-Pruning does), so
its width stays a multiple of ``G`` (:attr:`GroupInfo.step`).

    >>> from prunelab.models import build
    >>> from prunelab.pruning import prune
    >>> net = build("resnet20", in_channels=1)
    >>> res = prune(net, "l1", ratio=0.5, input_shape=(1, 32, 32), num_classes=10)
    >>> res.keep["conv1"], res.macs_after < res.macs_before
    (8, True)
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from .criteria import Criterion, GroupInfo, make_criterion
from .errors import PrunelabError
from .gate import held
from .metrics import macs_params


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:200]


def build_graph(model: nn.Module, input_shape: Sequence[int]):
    """torch-pruning's DependencyGraph, with tracing failures turned into one-line errors: a
    failure inside torch-pruning's own channel mapping names the op and the layer it feeds (the
    model runs; torch-pruning cannot follow its channels there), anything else is the forward."""
    import torch_pruning as tp

    model.eval()
    try:
        with torch.enable_grad(), _even_split_sizes() as even, _channel_regroups() as regroups:
            DG = tp.DependencyGraph().build_dependency(  # tracing follows autograd
                model, example_inputs=torch.zeros(1, *input_shape), verbose=False)
        _mark_regroups(DG, regroups)
        _cut_channel_slices(DG)
        _order_split_outputs(DG)
        _map_even_splits(even)
        return DG
    except Exception as e:  # tracing runs arbitrary user forward() code
        where = _graph_node(e, model)
        if where:
            raise PrunelabError(f"torch-pruning {_tp_version()} cannot follow the channels "
                                f"through {where} ({_short(e)}), so this model cannot be "
                                "pruned; Torch-Pruning itself fails on it the same way") from None
        raise PrunelabError(
            f"torch-pruning could not trace the model ({_short(e)}); make forward() traceable with "
            "a single tensor input (no data-dependent Python control flow) or wrap custom blocks") \
            from None


def _even_split_parts(node) -> list[tuple[int, int]] | None:
    """A ``torch.split(x, n, dim=1)`` (an int size: autograd keeps ``split_size`` and the input's
    sizes, not the parts' sizes, and torch-pruning 1.6 then loses their channel counts):
    the ``(start, end)`` channels each of the node's consumers reads, from the consumer's
    autograd edge (which part); None for any other split or where an edge is not found."""
    fn = getattr(node, "grad_fn", None)
    if fn is None or not hasattr(fn, "_saved_split_size") or hasattr(fn, "_saved_split_sizes") \
            or not hasattr(fn, "_saved_self_sym_sizes") or fn._saved_dim != 1:
        return None
    total, size = int(fn._saved_self_sym_sizes[1]), int(fn._saved_split_size)
    parts = []
    for out in node.outputs:
        k = next((k for f, k in getattr(out.grad_fn, "next_functions", ()) or () if f is fn), None)
        if k is None or size <= 0 or k * size >= total:
            return None
        parts.append((k * size, min(total, (k + 1) * size)))
    return parts


@contextmanager
def _even_split_sizes():
    """While torch-pruning builds its graph: an int-size split's parts (timm's CSP stages split
    ``expand_chs // 2``) get their channel counts before the concatenations that use them are
    mapped (:func:`_even_split_parts`); torch-pruning's own guess leaves them unknown and fails.
    Yields the ``(node, parts)`` found, for :func:`_map_even_splits`."""
    from itertools import accumulate

    import torch_pruning as tp
    from torch_pruning.dependency import shape_infer

    orig, found = shape_infer.init_shape_information, []

    def init(graph):
        orig(graph)
        for node in graph.module2node.values():
            parts = _even_split_parts(node) if node.type == tp.ops.OPTYPE.SPLIT else None
            if parts:
                node.module.split_sizes = [b - a for a, b in parts]
                node.module.offsets = list(accumulate(node.module.split_sizes, initial=0))
                found.append((node, parts))

    shape_infer.init_shape_information = init
    try:
        yield found
    finally:
        shape_infer.init_shape_information = orig


@contextmanager
def _channel_regroups():
    """While torch-pruning builds its graph: a reshape that regroups channels into a new axis
    (ShuffleNetV2's channel shuffle: ``view(b, g, c // g, h, w)``, transpose, ``view(b, c, h,
    w)``) gets a flatten mapping from torch-pruning that is wrong, or divides by zero.  Such a
    reshape (:func:`_regroups_channels`, or any whose mapping divides by zero) is recorded (the
    list yielded) and skipped; :func:`_mark_regroups` then keeps the groups through it whole."""
    from torch_pruning.dependency import index_mapping

    orig, found = index_mapping.update_reshape_index_mapping, []

    def update(graph, node):
        if _regroups_channels(node):
            found.append(node)
            return
        try:
            orig(graph, node)
        except ZeroDivisionError:
            found.append(node)

    index_mapping.update_reshape_index_mapping = update
    try:
        yield found
    finally:
        index_mapping.update_reshape_index_mapping = orig


def _view_rank(node) -> int:
    fn = getattr(node, "grad_fn", None)
    return len(getattr(fn, "_saved_self_sym_sizes", getattr(fn, "_saved_self_sizes", ())) or ())


def _regroups_channels(node) -> bool:
    """A reshape out of a 5-d tensor, or one whose tensor reaches such a reshape through
    element-wise ops only (a transpose, ``contiguous()``): the two views of a channel shuffle."""
    import torch_pruning as tp

    if _view_rank(node) >= 5:
        return True
    todo, seen = list(node.outputs), set()
    while todo:
        n = todo.pop()
        if id(n) in seen or len(seen) > 8:
            continue
        seen.add(id(n))
        if n.type == tp.ops.OPTYPE.RESHAPE and _view_rank(n) >= 5:
            return True
        if n.type == tp.ops.OPTYPE.ELEMENTWISE and isinstance(n.module, tp.ops._ElementWiseOp):
            todo.extend(n.outputs)
    return False


def _mark_regroups(DG, nodes) -> None:
    """The reshapes :func:`_channel_regroups` found are given torch-pruning's plain element-wise
    type, so the mappings it makes again before each group skip them (its flatten mapping
    would fail again); their ops are kept in ``DG.prunelab_regroups``, and
    :func:`prunable_groups` leaves every group through them whole (a shuffle permutes the
    channels by the tensor's width, so no pruning keeps it the same permutation)."""
    import torch_pruning as tp

    for node in nodes:
        node.type = tp.ops.OPTYPE.ELEMENTWISE
    DG.prunelab_regroups = {node.module for node in nodes}


def _cut_channel_slices(DG) -> None:
    """A slice of the channels (ReXNet's channel-padded residual:
    ``cat([x[:, :c] + shortcut, x[:, c:]])``) is at indices forward() fixes, so pruning
    cannot move them: the groups through it are left whole (:func:`prunable_groups`, from
    ``DG.prunelab_slices``: the slice ops and the nodes next to them).  Its dependencies are cut
    here, before any group is built: torch-pruning walks a node again for every distinct index
    set that reaches it, and chained padded residuals give exponentially many (ReXNet-100's
    first group did not finish in minutes)."""
    import torch_pruning as tp

    near = set()
    for node in list(DG.module2node.values()):
        if node.type != tp.ops.OPTYPE.SLICE:
            continue
        rank = _view_rank(node)
        if node.module.dim != (2 if rank == 3 else 1):  # a spatial slice keeps the channels
            continue
        around = set(node.inputs) | set(node.outputs)
        near |= {n.module for n in around} | {node.module}
        node.dependencies = []
        for n in around:
            n.dependencies = [d for d in n.dependencies if d.target is not node]
    DG.prunelab_slices = near


def _map_even_splits(found) -> None:
    """Each int-size split :func:`_even_split_sizes` found (``(node, parts)``): its index
    mappings set per consumer to the channels its part holds (torch-pruning maps its ``i``-th
    consumer onto the ``i``-th part, wrong where two consumers read one part), and kept so.  Such a split's sizes are fixed by forward(), so the groups
    through it are never pruned (:func:`_split_owners`); the mappings keep every other group's
    channels right."""
    from torch_pruning.dependency.index_mapping import _SplitIndexMapping

    for node, parts in found:
        if not node.enable_index_mapping:
            continue
        for out, (a, b) in zip(node.outputs, parts):
            for dep in node.dependencies:
                if dep.target is out:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=[a, b], reverse=False)
            for dep in out.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=[a, b], reverse=True)
        # torch-pruning makes every split's mappings again before each group it builds; with
        # this off it keeps these
        node.enable_index_mapping = False


def _order_split_outputs(DG) -> None:
    """torch-pruning gives a split's ``i``-th part to the ``i``-th consumer in the order its
    trace met them, which need not be the parts' order (timm's MixedConv2d: a part's channels
    then map onto another part's layer).  Each consumer's autograd edge says which output of the
    split it reads: the consumers are put in that order and the split's index mappings made
    again."""
    import torch_pruning as tp
    from torch_pruning.dependency.index_mapping import update_split_index_mapping

    for node in DG.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT or len(node.outputs) < 2 or node.grad_fn is None:
            continue
        nr = {}
        for out in node.outputs:
            for fn, k in getattr(out.grad_fn, "next_functions", ()) or ():
                if fn is node.grad_fn:
                    nr[id(out)] = k
        if len(nr) == len(node.outputs) and len(set(nr.values())) == len(nr):
            order = sorted(node.outputs, key=lambda o: nr[id(o)])
            if order != list(node.outputs):
                node.outputs[:] = order
                update_split_index_mapping(DG, node)


def _tp_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return "?"


_OPS = {"Reshape": "a reshape that regroups channels (a channel shuffle)",
        "Concat": "a concatenation whose parts' channel counts it cannot follow",
        "Split": "a split whose parts it cannot follow"}


def _graph_node(e: BaseException, model: nn.Module) -> str | None:
    """Where in torch-pruning's graph ``e`` was raised (the innermost frame holding a graph
    node): the op and the first named layer it feeds, or None when it was not in the graph."""
    tb, node = e.__traceback__, None
    while tb is not None:
        cand = tb.tb_frame.f_locals.get("node")
        if cand is not None and hasattr(cand, "outputs") and "torch_pruning" in \
                tb.tb_frame.f_code.co_filename:
            node = cand
        tb = tb.tb_next
    if node is None:
        return None
    names = {m: n for n, m in model.named_modules()}
    kind = next((v for k, v in _OPS.items() if k in str(node.name)), str(node.name))
    seen, todo = set(), [node]
    while todo:
        n = todo.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n is not node and getattr(n, "module", None) in names:
            return f"{kind} before layer {names[n.module]!r}"
        todo.extend(getattr(n, "outputs", ()))
    return kind


def output_layers(model: nn.Module, input_shape: Sequence[int]) -> list[nn.Module]:
    """The conv / linear layers that feed the model's output directly (no other conv or linear
    between them and it): the classifier, found from the autograd graph of one forward pass, so
    it is never guessed from a class count."""
    made: dict[object, nn.Module] = {}
    handles = [m.register_forward_hook(lambda mod, i, o: made.__setitem__(o.grad_fn, mod)
                                       if isinstance(o, torch.Tensor) and o.grad_fn is not None
                                       else None)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.enable_grad():
            out = model(torch.zeros(1, *input_shape, requires_grad=True))
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    found: list[nn.Module] = []
    stack = [o.grad_fn for o in outs if isinstance(o, torch.Tensor)]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            if made[fn] not in found:
                found.append(made[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found


def resolve_layers(model: nn.Module, layers: Sequence[nn.Module | str]) -> list[nn.Module]:
    """Layers given by name (``"layer3.2.conv2"``) or as modules of ``model``, as modules."""
    out = []
    mods = dict(model.named_modules())
    for layer in layers:
        if isinstance(layer, str):
            if layer not in mods:
                raise PrunelabError(f"ignored layer {layer!r} is not a module of the model; name "
                                    "it as in model.named_modules()")
            out.append(mods[layer])
        else:
            out.append(layer)
    return out


def _grouped(m: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (its channels go only in whole groups)."""
    return isinstance(m, nn.Conv2d) and 1 < m.groups and not (
        m.groups == m.in_channels and m.out_channels % m.in_channels == 0)


def _step(DG, g, names: dict, width: int) -> tuple[int, str | None]:
    """The channel step of torch-pruning group ``g`` (the lcm of the groups of the grouped convs
    in it, 1 without any) and, where the group cannot lose whole parts of them (its width is no
    multiple of the step, or it is only a slice of the conv's channels, as through a
    concatenation), the conv to blame."""
    import math

    step, bad = 1, None
    for dep, _ in g:
        m = dep.target.module
        if _grouped(m) and m in names:
            step = math.lcm(step, m.groups)
            channels = m.out_channels if DG.is_out_channel_pruning_fn(dep.handler) else \
                m.in_channels
            if width % step or channels != width:
                bad = f"{names[m]} (groups={m.groups}, {channels} channels)"
    return step, bad


def prunable_groups(model: nn.Module, input_shape: Sequence[int], num_classes: int | None = None,
                    ignored: Sequence[nn.Module] = (), graph=None) -> tuple[object, list[GroupInfo]]:
    """The prunable groups of ``model`` (and the dependency graph they live on).

    The layers feeding the model's output (:func:`output_layers`) and ``ignored`` are never
    pruned (``num_classes`` plays no part in finding them).  A group coupled to a grouped (not
    depthwise) convolution gets that conv's groups as its :attr:`~GroupInfo.step`; one whose
    width is no multiple of its grouped convs' groups, or whose channels reach a split or a
    channel slice (sizes or indices that forward() fixes, which pruning cannot change) or a
    channel shuffle, is left whole, with a one-line note."""
    DG = graph or build_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    ignored = resolve_layers(model, ignored) + output_layers(model, input_shape)
    groups: list[GroupInfo] = []
    grouped: list[str] = []
    owners = _split_owners(DG, model)
    DG.prunelab_split_owners = owners
    for g in DG.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        prod, cons, norms = [], [], []
        for dep, _ in g:
            m = dep.target.module
            n = names.get(m)
            if n is None:
                continue
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                (prod if DG.is_out_channel_pruning_fn(dep.handler) else cons).append(n)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                norms.append(n)
        root = g[0].dep.target.module
        width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        step, bad = _step(DG, g, names, width)
        if bad:
            grouped.append(f"{names[root]} (coupled to {bad})")
            continue
        splits = [dep.target.module for dep, _ in g
                  if getattr(getattr(dep.target, "type", None), "name", "") == "SPLIT"]
        if any(dep.target.module in getattr(DG, "prunelab_regroups", ()) for dep, _ in g):
            grouped.append(f"{names[root]} (its channels pass a channel shuffle)")
            continue
        if any(dep.target.module in getattr(DG, "prunelab_slices", ()) for dep, _ in g):
            grouped.append(f"{names[root]} (its channels are sliced at indices forward() "
                           "fixes)")
            continue
        if any(owners.get(s) is None for s in splits):
            # forward() splits at sizes of its own (torch.split, chunk) that no module attribute
            # holds: pruning could not make them follow
            grouped.append(f"{names[root]} (its channels are split at sizes forward() fixes)")
            continue
        groups.append(GroupInfo(names[root], width, list(dict.fromkeys(prod)),
                                list(dict.fromkeys(c for c in cons if c not in prod)),
                                list(dict.fromkeys(norms)), g, step))
    if grouped:
        from .ui import log

        log(f"note: {len(grouped)} group(s) left whole (a grouped convolution whose groups they "
            f"cannot lose whole, a split, slice or shuffle of their channels): "
            f"{'; '.join(grouped[:3])}{' ...' if len(grouped) > 3 else ''}")
    order = {n: i for i, n in enumerate(names.values())}
    groups.sort(key=lambda g: order[g.name])
    if not groups:
        raise PrunelabError("the model has no prunable conv/linear groups; nothing to prune")
    return DG, groups


def _split_owners(DG, model: nn.Module) -> dict:
    """Each torch.split (or chunk) of the traced forward whose sizes a module attribute holds:
    ``{split op: (module, attribute name)}``, the module being the innermost one that holds
    every layer the split feeds and has a list or tuple attribute equal to the split's sizes (as
    timm's MixedConv2d keeps ``splits`` for its mixed kernels).  Pruning such a split's channels
    then rewrites that attribute (:func:`_sync_splits`); a split without one stays whole."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    out: dict = {}
    for node in DG.module2node.values():
        op = node.module
        if node.type != tp.ops.OPTYPE.SPLIT or not getattr(op, "split_sizes", None):
            continue
        sizes = [int(v) for v in op.split_sizes]
        fed, seen, todo = [], set(), list(node.outputs)
        while todo:  # the first named layers downstream of each part
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.module in names and names[n.module]:
                fed.append(names[n.module])
            else:
                todo.extend(n.outputs)
        if not fed:
            continue
        parts = fed[0].split(".")
        for i in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:i])
            if not all(f.startswith(prefix + ".") for f in fed):
                continue
            m = model.get_submodule(prefix)
            attr = next((k for k, v in vars(m).items() if not k.startswith("_") and
                         isinstance(v, (list, tuple)) and len(v) == len(sizes) and
                         all(isinstance(x, int) for x in v) and list(v) == sizes), None)
            if attr is not None:
                direct = all(_in_width(o.module) is not None for o in node.outputs)
                out[op] = (m, attr) if direct and len(node.outputs) == len(sizes) else None
                break
        else:
            out[op] = None
    return out


def _sync_splits(DG) -> None:
    """Between and after the groups' pruning: each owned split's attribute (and torch-pruning's
    split op) set to the input widths of the layers its parts feed (in the parts' order, :func:`_order_split_outputs`), keeping the attribute's
    type; the module remembers which attributes these are, so a saved folder records them
    (:func:`prunelab.io.layer_widths`).  A part that feeds no conv / linear / norm directly
    leaves its split as it was (such a split's groups are then never pruned: see
    :func:`_split_owners`)."""
    for node in DG.module2node.values():
        hit = getattr(DG, "prunelab_split_owners", {}).get(node.module)
        if hit is None:
            continue
        m, attr = hit
        new = [_in_width(o.module) for o in node.outputs]
        if None in new or len(new) != len(getattr(m, attr)):
            continue
        # torch-pruning's own split pruner leaves the op's offsets as traced, so the next
        # group's index mapping through the split would use the unpruned offsets
        node.module.split_sizes = list(new)
        node.module.offsets = [sum(new[:k]) for k in range(len(new) + 1)]
        if list(getattr(m, attr)) != new:
            setattr(m, attr, type(getattr(m, attr))(new))
            m.prunelab_splits = sorted(set(getattr(m, "prunelab_splits", ())) | {attr})


def _in_width(m) -> int | None:
    return (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
            if isinstance(m, nn.Linear) else m.num_features
            if isinstance(m, nn.modules.batchnorm._BatchNorm) else None)


@held
def score_groups(model: nn.Module, crit: Criterion, groups: list[GroupInfo], data=None
                 ) -> tuple[dict[str, torch.Tensor], float]:
    """Score every channel of every group; returns the scores and the seconds it took."""
    from .kernels import onednn_safe

    t0 = time.perf_counter()
    scores = {}
    with onednn_safe():  # gradient-based criteria (taylor, XAI) take weight gradients too
        crit.prepare(model, groups, data)
        for g in groups:
            s = crit.score(g).detach().float()
            if s.shape != (g.width,) or not torch.isfinite(s).all():
                raise RuntimeError(f"criterion {crit.name} gave bad scores for {g.name}: "
                                   f"{tuple(s.shape)}")
            scores[g.name] = s
    return scores, time.perf_counter() - t0


def align(keep: int, width: int, round_to: int = 1) -> int:
    """Round a keep count to a multiple of ``round_to`` within [min(round_to, width), width]."""
    if round_to > 1:
        keep = int(round(keep / round_to)) * round_to
        keep = max(min(round_to, width), keep)
    return int(min(max(1, keep), width))


def _emptied(DG, pg):
    """A layer that pruning group ``pg`` leaves with no channel on the pruned axis (channels
    tied through a concatenation and a slice, as in GhostNet, map several of the group's
    channels onto one layer's): ``(module, axis)``, or None."""
    for item in pg:
        dep, m = item.dep, item.dep.target.module
        out = DG.is_out_channel_pruning_fn(dep.handler)
        n = (getattr(m, "out_channels" if out else "in_channels", None)
             if isinstance(m, nn.Conv2d) else
             getattr(m, "out_features" if out else "in_features", None)
             if isinstance(m, nn.Linear) else getattr(m, "num_features", None))
        if n is not None and len(set(item.idxs)) >= n:
            return m, out
    return None


def _keep_one_per_layer(DG, root, idxs: list[int], scores: torch.Tensor) -> list[int]:
    """``idxs`` less the best-scored channels that leave each layer of the group at least one
    (every layer keeps a channel, whatever the group's count says)."""
    idxs = list(idxs)
    for _ in range(len(idxs)):
        hit = _emptied(DG, DG.get_pruning_group(root.target.module, root.handler, idxs))
        if hit is None:
            return idxs
        m, out = hit
        for i in sorted(idxs, key=lambda i: -float(scores[i])):
            if _emptied_by(DG, root, i, m, out):
                idxs.remove(i)
                break
        else:
            raise PrunelabError("pruning would leave a layer with no channel and no channel of "
                                "its group maps onto it; report this model")
    return idxs


def _emptied_by(DG, root, i: int, m, out: bool) -> bool:
    """Whether removing channel ``i`` of the group removes a channel of ``m`` on that axis."""
    return any(item.dep.target.module is m and DG.is_out_channel_pruning_fn(item.dep.handler)
               == out and len(item.idxs) > 0
               for item in DG.get_pruning_group(root.target.module, root.handler, [i]))


def keep_from_ratio(groups: list[GroupInfo], ratio: float, round_to: int = 1) -> dict[str, int]:
    if not 0 < ratio < 1:
        raise PrunelabError(f"ratio {ratio} is outside (0, 1); give the fraction of filters to remove")
    return {g.name: align(round(g.width * (1 - ratio)), g.width, _lcm(round_to, g.step))
            for g in groups}


def _lcm(a: int, b: int) -> int:
    import math

    return math.lcm(a, b)


def group_removal(scores: torch.Tensor, keep: int, step: int = 1) -> list[int]:
    """The channels to remove so that ``keep`` stay, lowest scores first (ties by index).  With
    ``step`` > 1 (a grouped conv's ``G`` parts) the same channels go from every part: scores are
    averaged over the parts and the chosen offsets repeated in each.

    >>> group_removal(torch.tensor([3., 1, 2, 0, 5, 1]), 4)
    [1, 3]
    >>> group_removal(torch.tensor([3., 1, 2, 0, 5, 1]), 4, step=2)   # parts [3,1,2] [0,5,1]
    [0, 3]
    """
    width = scores.numel()
    part = width // step
    mean = scores.reshape(step, part).mean(0)
    order = torch.sort(mean, stable=True).indices[: part - keep // step].tolist()
    return sorted(j + i * part for i in range(step) for j in order)


@dataclass
class PruneResult:
    """The pruned model and what was done to it."""

    model: nn.Module
    keep: dict[str, int]
    widths_before: dict[str, int]
    criterion: str
    score_seconds: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    removed: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"criterion": self.criterion, "keep": self.keep, "widths_before": self.widths_before,
                "score_seconds": self.score_seconds, "macs_before": self.macs_before,
                "macs_after": self.macs_after, "params_before": self.params_before,
                "params_after": self.params_after}


@held
def prune(model: nn.Module, criterion: str | Criterion = "l1", ratio: float | None = None,
          keep: dict[str, int] | None = None, input_shape: Sequence[int] = (3, 32, 32),
          data=None, num_classes: int | None = None, round_to: int = 1, inplace: bool = False,
          ignored: Sequence[nn.Module] = (), scores: dict[str, torch.Tensor] | None = None,
          count: bool = True) -> PruneResult:
    """Prune ``model`` with one ``ratio`` for every group or exact per-group ``keep`` counts.

    ``keep`` maps group names (see :func:`prunable_groups`) to the number of channels to keep;
    groups it does not name stay whole.  ``data`` (a :class:`prunelab.data.Splits`) is required by
    data-driven criteria.  ``scores`` (from :func:`score_groups` on the same model) skips scoring,
    so one scoring serves many pruning ratios.  The input model is left untouched unless
    ``inplace``.  ``count=False`` skips counting MACs/params (reported as 0), for callers that
    prune many candidates and count only some.  ``ignored``: layers never pruned, by name or as
    modules of ``model`` (the layers feeding the output never are).
    """
    if (ratio is None) == (keep is None):
        raise PrunelabError("give either a pruning ratio or per-layer keep counts, not both")
    crit = make_criterion(criterion) if isinstance(criterion, str) else criterion
    if crit.needs_data and data is None and scores is None:
        raise PrunelabError(f"criterion {crit.name} needs calibration data; pass a dataset")
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    if not inplace and ignored:  # modules of ``model`` -> their twins in the copy, by name
        names = {m: n for n, m in model.named_modules()}
        ignored = [names.get(m, m) if isinstance(m, nn.Module) else m for m in ignored]
    DG, groups = prunable_groups(net, input_shape, num_classes, ignored)
    macs0, params0 = macs_params(net, input_shape) if count else (0, 0)
    by_name = {g.name: g for g in groups}
    if keep is None:
        plan = keep_from_ratio(groups, ratio, round_to)
    else:
        unknown = [k for k in keep if k not in by_name]
        if unknown:
            raise PrunelabError(f"unknown layer {unknown[0]!r} in keep counts; prunable layers: "
                                f"{', '.join(by_name)}")
        plan = {}
        for name, k in keep.items():
            w = by_name[name].width
            if not isinstance(k, int) or k < 1 or k > w:
                raise PrunelabError(f"keep count {k} for layer {name!r} must be between 1 and "
                                    f"its width {w}")
            plan[name] = align(k, w, _lcm(round_to, by_name[name].step))
    if scores is None:
        scores, seconds = score_groups(net, crit, groups, data)
    else:  # the criterion that produced them (its compensation hooks read the unpruned weights)
        seconds = 0.0
    removed: dict[str, list[int]] = {}
    for g in groups:
        k = plan.get(g.name, g.width)
        if k < g.width:  # stable sort: equal scores prune deterministically, by index
            removed[g.name] = group_removal(scores[g.name], k, g.step)
    if hasattr(crit, "before_prune"):
        crit.before_prune(net, groups, removed, tuple(input_shape))
    # a criterion may own the structural change (FP-OMP's sandwich); otherwise torch-pruning
    # removes each group's channels
    if not (hasattr(crit, "apply") and crit.apply(net, groups, removed)):
        for g in groups:
            if g.name in removed:
                _sync_splits(DG)
                root = g.group[0].dep
                pg = DG.get_pruning_group(root.target.module, root.handler, removed[g.name])
                if _emptied(DG, pg) is not None:
                    removed[g.name] = _keep_one_per_layer(DG, root, removed[g.name],
                                                          scores[g.name])
                    pg = DG.get_pruning_group(root.target.module, root.handler, removed[g.name])
                pg.prune()
    _sync_splits(DG)
    try:
        macs1, params1 = macs_params(net, input_shape) if count else (0, 0)
    except PrunelabError as e:  # the unpruned model ran (counted above): the cut broke it
        import re

        why = re.search(r"input \((.*)\); forward\(\)", str(e))
        raise PrunelabError(f"pruning left the model unable to run ({why[1] if why else e}); "
                            "prunelab's cut is at fault, not your forward(): report this model, "
                            "or keep the layer it names unpruned (ignored_layers)") from None
    return PruneResult(net, {g.name: plan.get(g.name, g.width) for g in groups},
                       {g.name: g.width for g in groups}, crit.name, seconds, macs0, macs1,
                       params0, params1, removed)
