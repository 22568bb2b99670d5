"""Explainable-AI relevance criteria (seed A): DeepLIFT, LRP, Integrated Gradients, grad x act.

A filter's relevance is the attribution of its output channel to the correct-class logit, |.|
summed over spatial positions, averaged over a calibration set of ``num_images`` training images.
Attributions come from captum.  Producer layers are attributed at their own output (before BN:
for DeepLIFT, IG and LRP-epsilon the per-channel total is unchanged by the affine BN after it).

DeepLIFT uses the rescale rule with a black image as the reference.  All layers' attributions
come from one pass: captum's DeepLift runs inputs and references as one batch with its rescale
hooks on the nonlinearities; the gradient reaching a layer's output in that backward is the
layer's DeepLIFT multiplier, and multiplier x (activation - reference activation) is exactly
what captum's ``LayerDeepLift`` returns layer by layer (a test checks the equality).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from ..errors import PrunelabError
from ..gate import gated
from . import criterion
from .base import GroupInfo
from .calib import Calibrated, calibration_batches, capture, check_rule_support
from .rewrite import one_module_per_use


def _captum():
    try:
        import captum  # noqa: F401
    except ImportError:
        raise PrunelabError("XAI criteria need captum; pip install 'prunelab[xai]'") from None


def per_channel(a: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``a`` (a layer's output-shaped attribution) summed over the batch and positions, one value
    per output channel: axis 1 of a conv's output, the last axis of a linear layer's (a linear
    layer applied to channels-last features, as in ConvNeXt's blocks, keeps them last)."""
    if isinstance(module, nn.Linear) or a.dim() < 3:
        return a.reshape(-1, a.shape[-1]).sum(0)
    return a.transpose(0, 1).reshape(a.shape[1], -1).sum(1)


class Attribution(Calibrated):
    """Base: accumulate per-channel |attribution| over the calibration set."""

    def prepare(self, model, groups, data=None):
        _captum()
        super().prepare(model, groups, data)
        names = sorted({n for g in groups for n in g.producers})
        self.input_shape = tuple(data.input_shape)
        # the reference: a black image in the data's normalisation (all-zero input without one)
        self.baseline_value = ([(0.0 - m) / s for m, s in zip(data.mean, data.std)]
                               if data.mean is not None and data.std is not None
                               else [0.0] * self.input_shape[0])
        net = self.attribution_copy(model, names)
        totals = {n: None for n in names}
        count = 0
        for x, y in gated(calibration_batches(data, self.num_images, self.batch_size)):
            with warnings.catch_warnings():  # captum's notes on hooks and input grads are ours
                warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
                attributions = self.attribute(net, names, x, y)
            for n, a in attributions.items():
                s = per_channel(a.detach().abs(), self.modules[n])
                totals[n] = s if totals[n] is None else totals[n] + s
            count += len(y)
        self._scores = {n: t / count for n, t in totals.items()}

    def attribution_copy(self, model, names: list[str]) -> nn.Module:
        """The copy attributions run on (captum attaches hooks/attributes; the user's model stays
        clean), rewritten so that functional / in-place / reused nonlinearities are one module
        per use (:mod:`prunelab.criteria.rewrite`): rule-based attributions need that, and an
        in-place activation would overwrite the layer output that gradient-based ones record.
        Scores map back by layer name.  Only a model that can be neither rewritten nor used as
        it is gets refused."""
        try:
            net = one_module_per_use(model, self.input_shape, deeplift=self.name == "deeplift")
        except PrunelabError as e:
            net, why = copy.deepcopy(model).eval(), str(e)
        else:
            why = None
            missing = [n for n in names if n not in dict(net.named_modules())]
            if missing:
                net, why = copy.deepcopy(model).eval(), f"layer {missing[0]!r} is not called " \
                                                         "as a module in forward()"
        try:
            self.check(net)
        except PrunelabError as e:
            if why is None:
                raise
            raise PrunelabError(f"{e} (rewriting it automatically failed: {why})") from None
        return net

    def baseline(self, x):
        return torch.tensor(self.baseline_value).view(1, -1, 1, 1).expand_as(x).contiguous()

    def check(self, net):
        pass

    def attribute(self, net, names, x, y) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def layer_scores(self, name, module, group: GroupInfo):
        return self._scores[name]


@criterion(description="gradient x activation of each channel to the "
           "correct-class logit (captum LayerGradientXActivation)")
class GradXAct(Attribution):
    name = "grad-x-act"

    def attribute(self, net, names, x, y):
        from captum.attr import LayerGradientXActivation

        mods = dict(net.named_modules())
        out = LayerGradientXActivation(net, [mods[n] for n in names]).attribute(x, target=y)
        return dict(zip(names, out))


@criterion(description="Integrated Gradients from a black image, "
           "split over each layer's channels (layer conductance)")
class IntegratedGrads(Attribution):
    """Integrated Gradients along the straight input path from the black reference, attributed
    to each channel as its *conductance* (Dhamdhere et al. 2018): the sum over path steps of
    gradient x change of the channel's activation (trapezoid rule).  This is how input IG
    decomposes over a layer; captum's ``LayerIntegratedGradients`` with several layers would
    instead interpolate every listed layer at once, which is wrong for layers that feed each
    other.  One batched pass covers all layers."""

    name = "integrated-gradients"

    def __init__(self, steps: int = 16, **kw):
        super().__init__(**kw)
        if steps < 2:
            raise PrunelabError("integrated-gradients needs steps >= 2")
        self.steps = steps

    def attribute(self, net, names, x, y):
        out: dict[str, torch.Tensor] = {}
        chunk = max(1, 256 // (self.steps + 1))
        for i in range(0, len(x), chunk):
            for n, c in conductance(net, names, x[i:i + chunk], y[i:i + chunk],
                                    self.baseline(x[i:i + chunk]), self.steps).items():
                out[n] = c if n not in out else torch.cat([out[n], c])
        return out


def conductance(net, names, x, y, x0, steps):
    """Per-layer conductance of the target logit along the straight path x0 -> x."""
    k, b = steps + 1, len(x)
    alphas = torch.linspace(0, 1, k).view(k, 1, 1, 1, 1)
    path = (x0.unsqueeze(0) + alphas * (x - x0).unsqueeze(0)).reshape(k * b, *x.shape[1:])
    with capture(net, names, grads=True) as (acts, gs):
        logits = net(path.requires_grad_(True))
        logits.gather(1, y.repeat(k).view(-1, 1)).sum().backward()
    res = {}
    for n in names:
        a = acts[n][-1].view(k, b, *acts[n][-1].shape[1:])
        g = gs[n][-1].view(k, b, *gs[n][-1].shape[1:])
        res[n] = (0.5 * (g[1:] + g[:-1]) * (a[1:] - a[:-1])).sum(0)
    return res


# elementwise activations captum does not list, given its rescale rule: the multiplier
# (f(x) - f(x0)) / (x - x0) sums to the difference for any elementwise function, monotone or not
RESCALED = (nn.ReLU6, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.SiLU, nn.GELU, nn.Mish)


def _deeplift_nonlinear():
    """captum's rescale-rule table (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus), plus
    :data:`RESCALED`; products and layer norms get their own rules in the rewritten copy
    (:mod:`prunelab.criteria.rewrite`)."""
    from captum.attr._core import deep_lift

    table = deep_lift.SUPPORTED_NON_LINEAR
    for cls in RESCALED:
        table.setdefault(cls, deep_lift.nonlinear)
    return table


@criterion(description="DeepLIFT rescale rule against a black reference (captum DeepLift; "
           "seed A's criterion)")
class DeepLiftCriterion(Attribution):
    name = "deeplift"

    def check(self, net):
        check_rule_support(net, self.input_shape, "deeplift",
                           tuple(_deeplift_nonlinear()) + (nn.AdaptiveMaxPool2d,))
        bad = [n for n, m in net.named_modules() if isinstance(m, nn.AdaptiveMaxPool2d)]
        if bad:
            raise PrunelabError(f"deeplift has no rule for layer {bad[0]!r} (AdaptiveMaxPool2d); "
                                "use grad-x-act or integrated-gradients")

    def attribute(self, net, names, x, y):
        from captum.attr import DeepLift

        b = len(x)
        with capture(net, names, grads=True) as (acts, gs):
            DeepLift(net).attribute(x, baselines=self.baseline(x), target=y)
        out = {}
        for n in names:
            a, g = acts[n][-1], gs[n][-1]  # batch = inputs followed by references
            out[n] = (a[:b] - a[b:]) * g[:b]
        return out


class LRPBase(Attribution):
    rule = "epsilon"

    def __init__(self, epsilon: float = 1e-6, **kw):
        super().__init__(**kw)
        self.epsilon = epsilon

    def check(self, net):
        from captum.attr._core import lrp

        if nn.ReLU6 not in lrp.SUPPORTED_NON_LINEAR_LAYERS:
            lrp.SUPPORTED_NON_LINEAR_LAYERS.append(nn.ReLU6)  # relevance passes through, as ReLU
        check_rule_support(net, self.input_shape, self.name,
                           tuple(lrp.SUPPORTED_NON_LINEAR_LAYERS) + (nn.MaxPool2d,))
        self.set_rules(net)

    def set_rules(self, net):
        """Attach rules explicitly (captum removes them after each call)."""
        from captum.attr._core import lrp
        from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

        from ..models._common import Add

        ok = tuple(lrp.SUPPORTED_LAYERS_WITH_RULES) + tuple(lrp.SUPPORTED_NON_LINEAR_LAYERS)
        for name, m in net.named_modules():
            if list(m.children()):
                continue
            if isinstance(m, Add):
                m.rule = EpsilonRule(self.epsilon)
            elif not isinstance(m, ok):
                raise PrunelabError(f"{self.name} has no propagation rule for layer {name!r} "
                                    f"({type(m).__name__}); use grad-x-act or "
                                    "integrated-gradients for this model")
            elif self.rule == "zplus" and isinstance(m, (nn.Conv2d, nn.Linear)):
                m.rule = Alpha1_Beta0_Rule()
            elif isinstance(m, tuple(lrp.SUPPORTED_LAYERS_WITH_RULES)):
                m.rule = EpsilonRule(self.epsilon)

    def attribute(self, net, names, x, y):
        from captum.attr import LayerLRP

        self.set_rules(net)
        mods = dict(net.named_modules())
        out = LayerLRP(net, [mods[n] for n in names]).attribute(x, target=y)
        return dict(zip(names, out))


@criterion(description="LRP epsilon rule (captum LayerLRP)")
class LRPEpsilon(LRPBase):
    name, rule = "lrp", "epsilon"


@criterion(description="LRP z+ rule (alpha1-beta0) on conv/linear, epsilon "
           "elsewhere (captum LayerLRP)")
class LRPZPlus(LRPBase):
    name, rule = "lrp-zplus", "zplus"
