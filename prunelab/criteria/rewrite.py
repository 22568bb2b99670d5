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


def _halves(t: torch.Tensor, n: int) -> torch.Tensor:
    """DeepLIFT runs inputs and references as one batch ``[inputs; references]`` (captum): the
    mean of the two halves, for both; a tensor without that batch (a parameter) as it is."""
    if t.dim() and t.shape[0] == n and n % 2 == 0:
        a, r = t.chunk(2)
        m = 0.5 * (a + r)
        return torch.cat([m, m])
    return t


def _reduce_to(g: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    while g.dim() > len(shape):
        g = g.sum(0)
    for i, s in enumerate(shape):
        if s == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdim=True)
    return g


class _ProductRule(torch.autograd.Function):
    """``a * b`` whose backward is DeepLIFT's product rule: ``d(ab) = mean(b) da + mean(a) db``
    over input and reference, exact (``ab - a0 b0``) where gradients are not."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        n = g.shape[0] if g.dim() else 0
        return (_reduce_to(g * _halves(b, n), a.shape), _reduce_to(g * _halves(a, n), b.shape))


class Product(nn.Module):
    """An elementwise product of two tensors (a sigmoid / hard-sigmoid gate times its features,
    a layer scale times a branch) as a module, with DeepLIFT's product rule (see
    :class:`_ProductRule`); used only in DeepLIFT's copy."""

    def forward(self, a, b):
        return _ProductRule.apply(a, b)


class _LayerNormRule(torch.autograd.Function):
    """``layer_norm`` whose backward gives DeepLIFT multipliers that sum to the difference:
    ``z = c * r`` with ``c = x - mean(x)`` (linear), ``v = mean(c^2)`` (``dv = mean((c + c0)
    dc)``, exact), ``r = (v + eps)^-1/2`` (rescale ``dr = (r - r0) / (v - v0) dv``) and the
    product rule on ``c * r``; then the affine ``z * w + b``."""

    @staticmethod
    def forward(ctx, x, weight, bias, shape, eps):
        dims = tuple(range(-len(shape), 0))
        c = x - x.mean(dims, keepdim=True)
        v = (c * c).mean(dims, keepdim=True)
        r = (v + eps).rsqrt()
        z = c * r
        ctx.save_for_backward(c, v, r, z, weight)
        ctx.dims, ctx.eps, ctx.has_w, ctx.has_b = dims, eps, weight is not None, bias is not None
        y = z
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    @staticmethod
    def backward(ctx, g):
        c, v, r, z, weight = ctx.saved_tensors
        dims, n = ctx.dims, g.shape[0]
        gw = (g * z).sum(tuple(range(g.dim() - len(dims)))) if ctx.has_w else None
        gb = g.sum(tuple(range(g.dim() - len(dims)))) if ctx.has_b else None
        gz = g * weight if weight is not None else g
        if n % 2 == 0 and n:
            (c1, c0), (v1, v0), (r1, r0) = c.chunk(2), v.chunk(2), r.chunk(2)
            dv = v1 - v0
            slope = -0.5 * (v1 + ctx.eps) ** -1.5
            m_r = torch.where(dv.abs() > 1e-12, (r1 - r0) / torch.where(dv.abs() > 1e-12, dv,
                                                                           torch.ones_like(dv)),
                              slope)
            r_bar, c_bar, c_sum = (0.5 * (r1 + r0), 0.5 * (c1 + c0), c1 + c0)
            r_bar, c_bar, c_sum, m_r = (torch.cat([t, t]) for t in (r_bar, c_bar, c_sum, m_r))
        else:  # not a DeepLIFT batch: the plain gradient
            r_bar, c_bar, c_sum = r, c, 2 * c
            m_r = -0.5 * (v + ctx.eps) ** -1.5
        size = 1
        for d in dims:
            size *= g.shape[d]
        gc = gz * r_bar + (gz * c_bar).sum(dims, keepdim=True) * m_r * c_sum / size
        gx = gc - gc.mean(dims, keepdim=True)
        return gx, gw, gb, None, None


class LayerNormRule(nn.Module):
    """``F.layer_norm`` over the last ``shape`` dims with DeepLIFT's rule for it
    (:class:`_LayerNormRule`); weight and bias come in as arguments (the layer's own)."""

    def __init__(self, shape, eps: float = 1e-5):
        super().__init__()
        self.shape, self.eps = tuple(shape), eps

    def forward(self, x, weight=None, bias=None):
        return _LayerNormRule.apply(x, weight, bias, self.shape, self.eps)


def _is_product(node) -> bool:
    """An elementwise product of two tensors in the traced graph (``a * b``, ``torch.mul``,
    ``a.mul(b)``); a product with a Python number stays (it is linear)."""
    import torch.fx

    fn = node.op == "call_function" and node.target in (operator.mul, torch.mul, operator.imul)
    meth = node.op == "call_method" and node.target in ("mul", "mul_")
    return (fn or meth) and len(node.args) == 2 and not node.kwargs and \
        all(isinstance(a, torch.fx.Node) for a in node.args)


def _tracer():
    import torch.fx

    from ..models._common import Add, Sandwich

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (Add, Sandwich, Product, LayerNormRule)) or \
                super().is_leaf_module(m, qualname)

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


def one_module_per_use(model: nn.Module, input_shape, deeplift: bool = False) -> nn.Module:
    """A rewritten copy of ``model`` (a ``torch.fx.GraphModule``, eval mode) in which every
    nonlinearity and pool is its own out-of-place module and every tensor sum an ``Add`` module.
    Raises :class:`PrunelabError` (one line, with the reason) when the model cannot be traced.
    ``deeplift``: products of two tensors become :class:`Product` and layer norms (module or
    ``F.layer_norm``) :class:`LayerNormRule`, whose backward is DeepLIFT's rule for them (the
    elementwise activations get captum's rescale rule: :mod:`prunelab.criteria.xai`)."""
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

    def replace(node, module: nn.Module, extra=()) -> None:
        """``node`` becomes a call of ``module`` on its tensor input(s) (and ``extra``)."""
        nonlocal count
        name = f"_pl_{count}"
        count += 1
        gm.add_submodule(name, module)
        if isinstance(module, (Add, Product)):
            args = tuple(node.args[:2])
        elif isinstance(module, LayerNormRule):
            args = tuple(node.args[:1]) + tuple(extra)
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
    if deeplift:
        for node in list(gm.graph.nodes):
            if _is_product(node):
                replace(node, Product())
            elif node.op == "call_module" and isinstance(gm.get_submodule(node.target),
                                                         nn.LayerNorm):
                ln = gm.get_submodule(node.target)
                extra = []
                for attr in ("weight", "bias"):
                    if getattr(ln, attr, None) is not None:
                        with gm.graph.inserting_before(node):
                            extra.append(gm.graph.get_attr(f"{node.target}.{attr}"))
                    else:
                        extra.append(None)
                replace(node, LayerNormRule(ln.normalized_shape, ln.eps), extra)
            elif node.op == "call_function" and node.target is F.layer_norm:
                args = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"),
                                node.args))
                args.update(node.kwargs)
                shape = args["normalized_shape"]
                if isinstance(shape, torch.fx.Node):
                    continue  # a computed shape: left as it is (gradient)
                node.args = (args["input"],)
                node.kwargs = {}
                replace(node, LayerNormRule(shape if isinstance(shape, (list, tuple)) else
                                            (shape,), args.get("eps", 1e-5)),
                        (args.get("weight"), args.get("bias")))
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
