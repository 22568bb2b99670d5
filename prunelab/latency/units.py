"""A model as a list of *units*: each conv / linear layer with the BN, activation and residual add
that the runtimes fuse into it, at the spatial size it sees.

Units sharing a :attr:`Unit.sig` (kind, kernel, stride, padding, spatial size, fused ops, which
channel axes pruning can change) share one lookup table.  :func:`unit_shapes` turns per-group keep
counts (the allocation vocabulary of :mod:`prunelab.pruning`) into each unit's channel counts
without pruning anything, so a prediction costs microseconds.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTS = {nn.ReLU: "relu", nn.ReLU6: "relu6", F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
ADDS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class Unit:
    name: str
    kind: str            # "conv" | "dwconv" | "gconv" (grouped, not depthwise) | "linear"
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    pad: int = 0
    h: int = 1
    w: int = 1
    bias: bool = False
    bn: bool = False
    add: bool = False
    act: str = ""        # "", "relu", "relu6" (after the add when there is one)
    cin_group: str | None = None   # the pruning group that sets the input channels
    cout_group: str | None = None  # ... and the output channels
    groups: int = 1      # a gconv's groups: its channel counts stay multiples of it
    # every group feeding the input channels, with the input channels per group channel (a
    # concatenation: 1 per part; a flatten into a linear layer: the spatial size)
    cin_parts: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "cin_parts", tuple(tuple(p) for p in self.cin_parts))

    @property
    def sig(self) -> str:
        """Table key: everything but the channel counts of the axes pruning can change."""
        ci = "*" if self.cin_group else self.cin
        co = "*" if self.cout_group else self.cout
        if self.kind == "dwconv":
            ci = co = "*" if (self.cin_group or self.cout_group) else self.cout
        kind = f"gconv{self.groups}" if self.kind == "gconv" else self.kind
        return (f"{kind}:k{self.k}s{self.stride}p{self.pad}:{self.h}x{self.w}:in{ci}:out{co}"
                f":{'b' if self.bias else ''}{'n' if self.bn else ''}{'a' if self.add else ''}"
                f"{self.act}")

    def macs(self, cin: int | None = None, cout: int | None = None) -> int:
        cin, cout = cin or self.cin, cout or self.cout
        if self.kind == "linear":
            return cin * cout
        ho, wo = self.out_hw
        per = self.k * self.k * (1 if self.kind == "dwconv" else cin // self.groups)
        return per * cout * ho * wo

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "linear":
            return 1, 1
        f = lambda n: (n + 2 * self.pad - self.k) // self.stride + 1  # noqa: E731
        return f(self.h), f(self.w)

    def to_json(self) -> dict:
        return asdict(self)


def _module_of(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _act(gm, node) -> str:
    if node.op == "call_module":
        return ACTS.get(type(_module_of(gm, node)), "")
    if node.op == "call_function":
        return ACTS.get(node.target, "")
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return ""


def _is_add(node) -> bool:
    return ((node.op == "call_function" and node.target in ADDS)
            or (node.op == "call_method" and node.target in ("add", "add_")))


def _fusions(model: nn.Module) -> dict[str, dict]:
    """Per conv/linear name: the BN / add / activation that follow it (torch.fx graph walk)."""
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable user code: units without fusions, the calibration absorbs it
        return {}
    out, claimed = {}, set()
    for node in gm.graph.nodes:
        m = _module_of(gm, node)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        f = {"bn": False, "add": False, "act": ""}
        cur = node

        def only_user(n):
            us = list(n.users)
            return us[0] if len(us) == 1 else None

        nxt = only_user(cur)
        if nxt is not None and isinstance(_module_of(gm, nxt), nn.modules.batchnorm._BatchNorm):
            f["bn"], cur = True, nxt
            nxt = only_user(cur)
        if nxt is not None and _is_add(nxt) and nxt not in claimed:
            f["add"], cur = True, nxt
            claimed.add(nxt)
            nxt = only_user(cur)
        if nxt is not None and _act(gm, nxt):
            f["act"] = _act(gm, nxt)
        out[node.target] = f
    return out


def extract_units(model: nn.Module, input_shape: Sequence[int], groups=()) -> list[Unit]:
    """The model's units in execution order; ``groups`` (from ``prunable_groups``) says which
    channel axes each unit's pruning group controls."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    names = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, _out, n=names[m]):
                x = inp[0]
                sizes.setdefault(n, tuple(x.shape[-2:]) if x.dim() == 4 else (1, 1))
            hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    fus = _fusions(model)
    out_group, in_group = _axis_groups(model, groups)
    parts = channel_parts(model, groups)
    units = []
    for n in sizes:  # hook order = execution order
        m = model.get_submodule(n)
        f = fus.get(n, {"bn": False, "add": False, "act": ""})
        if isinstance(m, nn.Linear):
            units.append(Unit(n, "linear", m.in_features, m.out_features, bias=m.bias is not None,
                              act=f["act"], add=f["add"], cin_group=in_group.get(n),
                              cout_group=out_group.get(n), cin_parts=parts.get((n, "in"), ())))
            continue
        dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        cg, og = in_group.get(n), out_group.get(n)
        if dw:
            cg = og = og or cg
        h, w = sizes[n]
        kind = "dwconv" if dw else "gconv" if m.groups > 1 else "conv"
        units.append(Unit(n, kind, m.in_channels, m.out_channels,
                          m.kernel_size[0], m.stride[0], m.padding[0] if isinstance(m.padding, tuple)
                          else 0, h, w, m.bias is not None, f["bn"], f["add"], f["act"], cg, og,
                          m.groups if kind == "gconv" else 1,
                          () if dw else parts.get((n, "in"), ())))
    return units


def channel_parts(model: nn.Module, groups) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """Per (layer name, ``"in"`` | ``"out"``), every group that prunes that axis and the layer's
    channels per group channel, read from torch-pruning's index mapping (a layer reading a
    concatenation is in one group per part; a linear layer after a flatten loses H x W inputs per
    channel).  Covers conv, linear and normalisation layers."""
    names = {m: n for n, m in model.named_modules()}
    out: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for g in groups:
        for item in getattr(g, "group", None) or ():
            dep, idxs = (item[0], item[1]) if isinstance(item, tuple) else (item.dep, item.idxs)
            n = names.get(dep.target.module)
            h = getattr(dep.handler, "__name__", "")
            if n is None or h not in ("prune_out_channels", "prune_in_channels"):
                continue
            axis = "out" if h == "prune_out_channels" else "in"
            parts = out.setdefault((n, axis), [])
            if g.name not in (p[0] for p in parts):
                parts.append((g.name, len(idxs) / g.width))
    return out


def _axis_groups(model: nn.Module, groups) -> tuple[dict[str, str], dict[str, str]]:
    """Which group sets each layer's output and input channels (read from torch-pruning's own
    dependencies, so a layer that is both, e.g. inside a residual chain, gets both)."""
    names = {m: n for n, m in model.named_modules()}
    out_group, in_group = {}, {}
    for g in groups:
        deps = getattr(g, "group", None) or ()
        for item in deps:
            dep = item[0] if isinstance(item, tuple) else item.dep
            n = names.get(dep.target.module)
            h = getattr(dep.handler, "__name__", "")
            if n is None or not isinstance(dep.target.module, (nn.Conv2d, nn.Linear)):
                continue
            if h == "prune_out_channels":
                out_group.setdefault(n, g.name)
            elif h == "prune_in_channels":
                in_group.setdefault(n, g.name)
        for p in g.producers:
            out_group.setdefault(p, g.name)
        for c in g.consumers:
            in_group.setdefault(c, g.name)
    return out_group, in_group


def group_steps(units: Sequence[Unit]) -> dict[str, int]:
    """Per pruning group, the step its widths go in: the lcm of the groups of the grouped convs
    it feeds or leaves (as :func:`prunelab.pruning.prunable_groups` sets ``GroupInfo.step``)."""
    import math

    steps: dict[str, int] = {}
    for u in units:
        if u.kind == "gconv":
            for g in (u.cin_group, u.cout_group):
                if g:
                    steps[g] = math.lcm(steps.get(g, 1), u.groups)
    return steps


def unit_shapes(units: Sequence[Unit], widths: dict[str, int], keep: dict[str, int]
                ) -> list[tuple[int, int]]:
    """(cin, cout) of every unit after pruning each group to ``keep`` (others stay whole,
    also groups ``widths`` does not list: a layer the user keeps out of the search); a group
    coupled to a grouped conv keeps whole parts of it, as pruning does."""
    from ..pruning import align

    steps = group_steps(units)
    keep = {g: align(k, widths[g], steps[g]) if g in steps and g in widths else k
            for g, k in keep.items()}
    out = []
    for u in units:
        ci, co = u.cin, u.cout
        if u.cout_group and u.cout_group in widths:
            co = keep.get(u.cout_group, widths[u.cout_group])
        if len(u.cin_parts) > 1 or (u.cin_parts and u.cin_parts[0][0] in widths):
            ci = max(1, round(u.cin - sum(f * (widths[g] - keep.get(g, widths[g]))
                                          for g, f in u.cin_parts if g in widths)))
        elif u.cin_group and u.cin_group in widths:
            k = keep.get(u.cin_group, widths[u.cin_group])
            ci = max(1, round(u.cin * k / widths[u.cin_group]))  # linear after flatten: ratio
        if u.kind == "dwconv":
            ci = co
        out.append((ci, co))
    return out


class _Block(nn.Module):
    def __init__(self, u: Unit, cin: int, cout: int):
        super().__init__()
        if u.kind == "linear":
            self.op = nn.Linear(cin, cout, bias=u.bias)
        else:
            g = cout if u.kind == "dwconv" else u.groups
            self.op = nn.Conv2d(cout if u.kind == "dwconv" else cin, cout, u.k, u.stride, u.pad,
                                groups=g, bias=u.bias)
        self.bn = nn.BatchNorm2d(cout) if u.bn else None
        self.act = {"relu": nn.ReLU(), "relu6": nn.ReLU6()}.get(u.act)
        self.add = u.add

    def forward(self, x, *res):
        y = self.op(x)
        if self.bn is not None:
            y = self.bn(y)
        if self.add:
            y = y + res[0]
        return self.act(y) if self.act is not None else y


def unit_module(u: Unit, cin: int, cout: int, seed: int = 0):
    """A stand-alone module for ``u`` at (cin, cout) and its input shapes (without batch)."""
    torch.manual_seed(seed)
    m = _Block(u, cin, cout).eval()
    if u.bn:
        m.bn.running_var.uniform_(0.5, 1.5)
    if u.kind == "linear":
        shapes = [(cin,)] + ([(cout,)] if u.add else [])
    else:
        ho, wo = u.out_hw
        shapes = [(cout if u.kind == "dwconv" else cin, u.h, u.w)] + (
            [(cout, ho, wo)] if u.add else [])
    return m, shapes


def unit_links(model: nn.Module, units: Sequence[Unit]) -> list[list[int | None]]:
    """Per unit, the units producing its input tensors: ``[main, residual]`` (residual only for a
    unit with a fused add), ``None`` where the tensor comes from the model's input or from
    something that is not a unit (an unfused op joining two branches).  Pooling, flattening,
    activations and BN pass a tensor through.  Runtimes that change tensor layouts (ONNX
    Runtime's blocked NCHWc) decide per edge whether a conversion is needed, and this is the edge
    list.  Empty when the model cannot be traced."""
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        return []
    index = {u.name: i for i, u in enumerate(units)}
    owner: dict = {}    # fx node -> the unit whose (fused) output it is
    claimed: dict = {}  # add node -> unit that fused it
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in index:
            i = index[node.target]
            owner[node] = i
            cur = node
            while True:  # BN, the claimed add and the activation belong to the unit
                us = list(cur.users)
                if len(us) != 1:
                    break
                nxt = us[0]
                m = _module_of(gm, nxt)
                if isinstance(m, nn.modules.batchnorm._BatchNorm) or _act(gm, nxt):
                    cur = nxt
                elif _is_add(nxt) and units[i].add and nxt not in claimed:
                    claimed[nxt] = i
                    cur = nxt
                else:
                    break
                owner[cur] = i

    def source(n) -> int | None:
        seen = 0
        while n is not None and seen < 1000:
            seen += 1
            if not isinstance(n, fx.Node) or n.op == "placeholder":
                return None
            if n in owner:
                return owner[n]
            if _is_add(n):
                return None
            ins = [a for a in n.all_input_nodes]
            n = ins[0] if ins else None
        return None

    links: list[list[int | None]] = [[None] for _ in units]
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in index:
            i = index[node.target]
            links[i][0] = source(node.all_input_nodes[0]) if node.all_input_nodes else None
    for add, i in claimed.items():
        mine = [a for a in add.all_input_nodes if owner.get(a) == i]
        other = [a for a in add.all_input_nodes if a not in mine]
        links[i].append(source(other[0]) if other else None)
    return links
