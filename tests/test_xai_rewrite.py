"""Rule-based attributions on the way people write models: functional activations, one reused
(in-place) activation module, functional pools and ``+``.  Each variant must give the same
scores as its one-module-per-use twin (same weights), for deeplift, lrp and
integrated-gradients; the user's model is left untouched."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.criteria import make_criterion
from prunelab.models._common import Add
from prunelab.pruning import prunable_groups, score_groups

pytest.importorskip("captum")


class Block(nn.Module):
    """conv-bn-act-conv-bn, + identity, act: written three ways (``style``)."""

    def __init__(self, c, style):
        super().__init__()
        self.style = style
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        if style == "twin":
            self.act1, self.act2, self.add = nn.ReLU(), nn.ReLU(), Add()
        elif style == "reused":
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        if self.style == "twin":
            return self.act2(self.add(self.bn2(self.conv2(self.act1(y))), x))
        if self.style == "reused":
            out = self.bn2(self.conv2(self.relu(y)))
            out += x
            return self.relu(out)
        return F.relu(self.bn2(self.conv2(F.relu(y))) + x)


class Net(nn.Module):
    def __init__(self, style):
        super().__init__()
        self.style = style
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block = Block(8, style)
        self.head = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.fc = nn.Linear(12, 4)
        if style == "twin":
            self.act, self.act_head, self.pool = nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2)
            self.gap = nn.AdaptiveAvgPool2d(1)
        elif style == "reused":
            self.act = nn.ReLU(inplace=True)
            self.pool, self.gap = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        if self.style == "twin":
            x = self.pool(self.act(self.bn(self.stem(x))))
            return self.fc(self.gap(self.act_head(self.head(self.block(x)))).flatten(1))
        if self.style == "reused":
            x = self.pool(self.act(self.bn(self.stem(x))))
            return self.fc(self.gap(self.act(self.head(self.block(x)))).flatten(1))
        x = F.max_pool2d(torch.relu(self.bn(self.stem(x))), 2)
        return self.fc(F.adaptive_avg_pool2d(self.head(self.block(x)).relu(), 1).flatten(1))


def _nets():
    torch.manual_seed(0)
    twin = Net("twin").eval()
    for m in twin.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
    out = {"twin": twin}
    for style in ("functional", "reused"):
        n = Net(style).eval()
        n.load_state_dict(twin.state_dict())
        out[style] = n
    return out


@pytest.mark.parametrize("criterion", ["deeplift", "lrp", "integrated-gradients", "grad-x-act"])
def test_functional_and_reused_activations_score_like_their_twin(criterion, tiny_data):
    nets = _nets()
    x = torch.randn(3, 1, 28, 28)
    scores = {}
    for style, net in nets.items():
        before = {k: v.clone() for k, v in net.state_dict().items()}
        assert torch.allclose(net(x), nets["twin"](x), atol=1e-6)
        _, groups = prunable_groups(net, [1, 28, 28], 4)
        crit = make_criterion(criterion, num_images=32)
        scores[style], _ = score_groups(net, crit, groups, tiny_data)
        after = net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)       # untouched
        assert not any(m._forward_hooks for m in net.modules())
    assert set(scores["twin"]) == set(scores["functional"]) == set(scores["reused"])
    for g, s in scores["twin"].items():
        assert s.abs().sum() > 0
        for style in ("functional", "reused"):
            torch.testing.assert_close(scores[style][g], s, rtol=1e-4, atol=1e-7)


def test_untraceable_model_is_refused_in_one_line(tiny_data):
    from prunelab.errors import PrunelabError

    class DataDependent(Net):
        def forward(self, x):
            if x.sum() > 0:          # control flow on values: torch.fx cannot trace it
                x = F.relu(self.bn(self.stem(x)))
            else:
                x = torch.sigmoid(self.bn(self.stem(x)))
            return self.fc(self.gap(self.act(self.head(self.block(x)))).flatten(1))

    torch.manual_seed(0)
    net = DataDependent("reused").eval()
    _, groups = prunable_groups(net, [1, 28, 28], 4)
    with pytest.raises(PrunelabError) as e:
        score_groups(net, make_criterion("deeplift", num_images=8), groups, tiny_data)
    msg = str(e.value)
    assert "\n" not in msg and "torch.fx" in msg and "deeplift" in msg
