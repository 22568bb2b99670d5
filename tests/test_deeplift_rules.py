"""DeepLIFT's rule for each activation and block the real architectures use sums to the
difference it explains (summation-to-delta): captum's DeepLift on the rewritten copy
(:func:`prunelab.criteria.rewrite.one_module_per_use` with ``deeplift=True``), attributions to
the input summed, against f(x) - f(reference), on a small block of each kind."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.criteria.rewrite import LayerNormRule, Product, one_module_per_use

pytest.importorskip("captum")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # captum's notes on its hooks


class Act(nn.Module):
    """conv -> BN -> activation -> conv, the activation a module."""

    def __init__(self, act):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x)))).mean((2, 3))


class Gate(nn.Module):
    """Squeeze-excitation: features times a sigmoid (or hard-sigmoid) of their pooled summary."""

    def __init__(self, gate):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2, self.gate = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1), gate
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.conv(x))
        s = self.gate(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.head((y * s).mean((2, 3)))


class ChannelsLast(nn.Module):
    """ConvNeXt's block: LayerNorm over channels after a permute, GELU, a layer scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm, self.fc, self.act = nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU()
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.act(self.fc(self.norm(y))) * self.scale
        return self.head(y.mean((1, 2)))


class LayerNorm2d(nn.LayerNorm):
    """timm's / torchvision's LayerNorm2d: F.layer_norm over channels (traced, not a leaf)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


BLOCKS = {
    "relu6": lambda: Act(nn.ReLU6()), "hardsigmoid": lambda: Act(nn.Hardsigmoid()),
    "hardswish": lambda: Act(nn.Hardswish()), "silu": lambda: Act(nn.SiLU()),
    "gelu": lambda: Act(nn.GELU()), "sigmoid-gate": lambda: Gate(nn.Sigmoid()),
    "hardsigmoid-gate": lambda: Gate(nn.Hardsigmoid()), "layernorm": ChannelsLast,
    "layernorm2d": lambda: Act(LayerNorm2d(8)),
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_deeplift_rule_sums_to_delta(block):
    from captum.attr import DeepLift

    from prunelab.criteria.xai import _deeplift_nonlinear

    _deeplift_nonlinear()
    torch.manual_seed(0)
    net = BLOCKS[block]().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    gm = one_module_per_use(net, (3, 8, 8), deeplift=True)
    kinds = {type(m) for m in gm.modules()}
    if "gate" in block or block == "layernorm":
        assert Product in kinds                          # the gate / layer scale's product rule
    if "layernorm" in block:
        assert LayerNormRule in kinds
    x = torch.randn(3, 3, 8, 8)
    ref = torch.zeros_like(x)
    torch.testing.assert_close(gm(x), net(x))            # the rewrite computes the same
    attr, delta = DeepLift(gm).attribute(x, baselines=ref, target=1,
                                         return_convergence_delta=True)
    want = (net(x) - net(ref))[:, 1]
    torch.testing.assert_close(attr.sum((1, 2, 3)), want, rtol=1e-4, atol=1e-5)
    assert delta.abs().max() < 1e-4
