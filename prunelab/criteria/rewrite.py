"""One module per nonlinearity: the copy of a user's model that rule-based attributions need.

DeepLIFT and LRP (captum) replace gradients at nonlinear *modules*.  Most model code does not
give them one: it calls ``F.relu`` / ``torch.sigmoid`` / ``x.relu()`` in ``forward()``, builds
``nn.ReLU(inplace=True)``, or reuses one ``nn.ReLU`` module at several places (torchvision's
ResNet).  :func:`one_module_per_use` traces a copy with ``torch.fx`` and rewrites it so that every
use of a nonlinearity is its own out-of-place module, every tensor ``+`` is an
:class:`~prunelab.models._common.Add` module (LRP's rule for sums) and functional pools are pool
modules.  Module names of the layers that were modules already stay the same, so attributions
taken on the copy map back to the user's layers by name.  The user's model is never modified.

    >>> import torch, torch.nn as nn, torch.nn.functional as F
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.act = nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True)
    ...     def forward(self, x):
    ...         y = self.act(self.conv(x))
    ...         return torch.sigmoid(self.act(y) + F.relu(y)).mean((2, 3))
    >>> net = Net()
    >>> gm = one_module_per_use(net, (1, 8, 8))
    >>> sorted(type(m).__name__ for n, m in gm.named_children() if n.startswith("_pl_"))
    ['Add', 'ReLU', 'ReLU', 'ReLU', 'Sigmoid']
    >>> x = torch.randn(2, 1, 8, 8)
    >>> bool(torch.allclose(gm(x), net(x)))
    True
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PrunelabError

# functional nonlinearities -> (module class, names of the functional's arguments after the
# input, in order, as the module's constructor takes them by keyword)
_FUNCTIONS = {
    F.relu: (nn.ReLU, ()), torch.relu: (nn.ReLU, ()), torch.relu_: (nn.ReLU, ()),
    F.relu_: (nn.ReLU, ()), F.relu6: (nn.ReLU6, ()),
    torch.sigmoid: (nn.Sigmoid, ()), F.sigmoid: (nn.Sigmoid, ()),
    torch.tanh: (nn.Tanh, ()), F.tanh: (nn.Tanh, ()),
    F.elu: (nn.ELU, ("alpha",)), F.leaky_relu: (nn.LeakyReLU, ("negative_slope",)),
    F.hardtanh: (nn.Hardtanh, ("min_val", "max_val")), F.silu: (nn.SiLU, ()),
    F.gelu: (nn.GELU, ()), F.hardswish: (nn.Hardswish, ()), F.hardsigmoid: (nn.Hardsigmoid, ()),
    F.softplus: (nn.Softplus, ("beta", "threshold")),
    F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                  "return_indices")),
    F.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode",
                                  "count_include_pad", "divisor_override")),
    F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",)),
    F.adaptive_max_pool2d: (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
}
_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid,
            "tanh": nn.Tanh, "tanh_": nn.Tanh}
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.ELU, nn.LeakyReLU,
                nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.MaxPool2d,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class SiLUSplit(nn.Module):
    """``x * sigmoid(x)`` with the sigmoid as its own module: DeepLIFT's rescale rule applies to
    the sigmoid (captum has no rule for SiLU itself) and the product is differentiated."""

    def __init__(self):
        super().__init__()
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(x)


def _tracer():
    import torch.fx

    from ..models._common import Add, Sandwich

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (Add, Sandwich, SiLUSplit)) or super().is_leaf_module(m, qualname)

    return Tracer()


def _module_for(node, cls, argnames) -> nn.Module:
    """The module equivalent of a functional call ``node`` (constant arguments only)."""
    import torch.fx

    extra = list(node.args[1:])
    kw = {k: v for k, v in node.kwargs.items() if k not in ("inplace", "input")}
    if any(isinstance(a, torch.fx.Node) for a in extra + list(kw.values())):
        raise PrunelabError(f"{node.target.__name__} in forward() takes a computed argument; "
                            "give it constant arguments or make it a module")
    kw.update(zip(argnames, extra))
    return cls(**kw)


def one_module_per_use(model: nn.Module, input_shape, split_silu: bool = False) -> nn.Module:
    """A rewritten copy of ``model`` (a ``torch.fx.GraphModule``, eval mode) in which every
    nonlinearity and pool is its own out-of-place module and every tensor sum an ``Add`` module.
    Raises :class:`PrunelabError` (one line, with the reason) when the model cannot be traced.
    ``split_silu``: SiLU becomes :class:`SiLUSplit` (for DeepLIFT)."""
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    from ..models._common import Add

    net = copy.deepcopy(model).eval()
    try:
        graph = _tracer().trace(net)
    except Exception as e:  # fx raises many types for untraceable forward()s
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PrunelabError(f"torch.fx cannot trace the model's forward() ({why})") from None
    gm = torch.fx.GraphModule(net, graph)
    try:
        ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PrunelabError(f"the traced model does not run on a {tuple(input_shape)} input "
                            f"({why})") from None

    def is_tensor(a) -> bool:
        return isinstance(a, torch.fx.Node) and isinstance(a.meta.get("tensor_meta"),
                                                           torch.fx.passes.shape_prop.TensorMetadata)

    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    count = 0

    def replace(node, module: nn.Module) -> None:
        """``node`` becomes a call of ``module`` on its tensor input(s)."""
        nonlocal count
        name = f"_pl_{count}"
        count += 1
        gm.add_submodule(name, module)
        if isinstance(module, Add):
            args = tuple(node.args[:2])
        else:
            args = (node.args[0] if node.args else node.kwargs["input"],)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, args)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)

    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _FUNCTIONS:
            cls, argnames = _FUNCTIONS[node.target]
            replace(node, _module_for(node, cls, argnames))
        elif node.op == "call_method" and node.target in _METHODS:
            if len(node.args) != 1 or node.kwargs:
                continue
            replace(node, _METHODS[node.target]())
        elif (node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd)
              and len(node.args) == 2 and not node.kwargs and all(is_tensor(a) for a in node.args)
              and node.args[0].meta["tensor_meta"].shape == node.args[1].meta["tensor_meta"].shape):
            replace(node, Add())
        elif node.op == "call_module" and isinstance(mods.get(node.target), _ACTIVATIONS):
            m = mods[node.target]
            if uses[node.target] > 1 or getattr(m, "inplace", False):
                clone = copy.deepcopy(m)
                if hasattr(clone, "inplace"):
                    clone.inplace = False
                replace(node, clone)
    if split_silu:
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.SiLU):
                replace(node, SiLUSplit())
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
