import torch
import torch.nn as nn

import pytest

from prunelab.errors import PrunelabError
from prunelab.models import build
from prunelab.pruning import align, output_layers, prunable_groups, prune

SHAPE = (1, 32, 32)


def test_resnet_stage_channels_are_one_group():
    net = build("resnet20", in_channels=1)
    _, groups = prunable_groups(net, SHAPE, num_classes=10)
    stem = next(g for g in groups if g.name == "conv1")
    # the stem shares its channels with every block's conv2 in stage 1 (residual adds)
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stem.producers)
    assert "fc" not in [g.name for g in groups]  # the classifier is never a root


def test_exact_keep_counts_and_never_zero():
    net = build("vgg11", in_channels=1, width=0.25)
    _, groups = prunable_groups(net, SHAPE, num_classes=10)
    keep = {g.name: 1 for g in groups}
    keep[groups[0].name] = 5
    res = prune(net, "l2", keep=keep, input_shape=SHAPE, num_classes=10)
    _, after = prunable_groups(res.model, SHAPE, num_classes=10)
    assert {g.name: g.width for g in after} == keep
    assert res.model(torch.randn(1, *SHAPE)).shape == (1, 10)


def test_ratio_never_empties_a_layer():
    net = build("resnet20", in_channels=1, width=0.25)  # 4/8/16 channels
    res = prune(net, "l1", ratio=0.99, input_shape=SHAPE, num_classes=10)
    assert min(res.keep.values()) >= 1


def test_round_to_aligns_widths():
    assert align(13, 64, 8) == 16 and align(3, 64, 8) == 8 and align(3, 4, 8) == 4
    net = build("resnet20", in_channels=1)
    res = prune(net, "l1", ratio=0.3, input_shape=SHAPE, num_classes=10, round_to=8)
    assert all(k % 8 == 0 for k in res.keep.values())


@pytest.mark.parametrize("keep,msg", [({"nope": 3}, "unknown layer 'nope'"),
                                      ({"conv1": 17}, "between 1 and its width 16"),
                                      ({"conv1": 0}, "between 1 and its width 16")])
def test_bad_keep_counts(keep, msg):
    with pytest.raises(PrunelabError, match=msg):
        prune(build("resnet20", in_channels=1), "l1", keep=keep, input_shape=SHAPE,
              num_classes=10)


def test_bad_ratio():
    with pytest.raises(PrunelabError, match="outside"):
        prune(build("resnet20", in_channels=1), "l1", ratio=1.0, input_shape=SHAPE,
              num_classes=10)


class _GroupedNet(nn.Module):
    """RegNetX-like: 1x1 -> grouped 3x3 (groups=4, not depthwise) -> 1x1, plus a plain conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b = nn.Conv2d(16, 24, 1)
        self.c = nn.Conv2d(24, 24, 3, padding=1)
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.b(torch.relu(self.g(torch.relu(self.a(x))))))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def test_grouped_conv_groups_lose_the_same_channels_in_every_part():
    """As Torch-Pruning prunes a grouped conv: its groups stay, each of its parts loses the same
    offsets (scores averaged over the parts), so the widths stay multiples of the groups."""
    net = _GroupedNet().eval()
    _, groups = prunable_groups(net, (1, 16, 16), 4)
    step = {g.name: g.step for g in groups}
    assert step["a"] == step["g"] == 4 and step["stem"] == step["b"] == step["c"] == 1
    res = prune(net, "l1", keep={"a": 7, "g": 12, "b": 12}, input_shape=(1, 16, 16),
                num_classes=4)
    assert res.keep["a"] == 8 and res.keep["g"] == 12          # whole groups: multiples of 4
    g = res.model.g
    assert (g.in_channels, g.out_channels, g.groups) == (8, 12, 4)
    removed = res.removed["a"]
    assert len(removed) == 8 and sorted({r % 4 for r in removed}) == sorted({removed[0] % 4,
                                                                           removed[1] % 4})
    assert [r - removed[0] for r in removed[::2]] == [0, 4, 8, 12]   # the same offsets per part
    # the pruned grouped conv computes what the unpruned one does on the kept channels
    x = torch.randn(2, 1, 16, 16)
    assert res.model(x).shape == (2, 4)


class _ConcatIntoGrouped(nn.Module):
    """Two 4-channel branches concatenated into a grouped conv of 2 groups: each branch is only
    a slice of the conv's channels, so its parts are not the conv's."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.g(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)))
        return self.fc(y.mean((2, 3)))


def test_a_slice_of_a_grouped_conv_is_left_whole_with_a_note(capsys):
    _, groups = prunable_groups(_ConcatIntoGrouped().eval(), (1, 8, 8), 4)
    assert {g.name: g.step for g in groups} == {"g": 2}
    assert "left whole" in capsys.readouterr().err


def test_classifier_is_found_from_the_graph_not_the_class_count():
    """A hidden conv with as many channels as there are classes is pruned; the conv that feeds
    the output (a conv classifier, no Linear) is not, with or without ``num_classes``."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 16, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(16, 4, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten()).eval()
    assert output_layers(net, (1, 8, 8)) == [net[4]]
    for nc in (None, 4, 7):
        _, groups = prunable_groups(net, (1, 8, 8), nc)
        assert [g.name for g in groups] == ["0", "2"]
    res = prune(net, "l1", ratio=0.5, input_shape=(1, 8, 8))
    assert res.model[0].out_channels == 2 and res.model[4].out_channels == 4


class _Mixed(nn.ModuleDict):
    """A mixed-kernel conv as timm's MixedConv2d: forward() splits its input at the sizes it
    keeps in ``splits`` and concatenates what each kernel size makes of its part."""

    def __init__(self, cin, cout, kernels):
        super().__init__()
        n = len(kernels)
        for i, k in enumerate(kernels):
            self.add_module(str(i), nn.Conv2d(cin // n, cout // n, k, padding=k // 2))
        self.splits = [cin // n] * n

    def forward(self, x):
        return torch.cat([c(p) for c, p in zip(self.values(), torch.split(x, self.splits, 1))], 1)


class _MixNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.m1, self.m2 = _Mixed(8, 8, [1, 3]), _Mixed(8, 8, [3, 5])
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn(self.m1(torch.relu(self.stem(x))))
        return self.fc(torch.relu(self.m2(torch.relu(x))).mean((2, 3)))


def test_a_split_whose_sizes_a_module_keeps_is_pruned_and_its_sizes_follow(tmp_path):
    """The split feeding m2 takes channels from two groups (m1's two kernels), pruned one after
    the other: each part loses what its group lost, the module's ``splits`` follows, and a saved
    folder opens on the unpruned module with those sizes."""
    import prunelab as pl

    torch.manual_seed(0)
    net = _MixNet().eval()
    _, groups = prunable_groups(net, (1, 8, 8), 4)
    assert {g.name for g in groups} == {"stem", "m1.0", "m1.1", "m2.0", "m2.1"}
    res = prune(net, "l1", keep={"stem": 3, "m1.0": 3, "m1.1": 1}, input_shape=(1, 8, 8),
                num_classes=4)
    m = res.model
    assert m.m1.splits == [2, 1] or m.m1.splits == [1, 2]           # the stem's 3 over 2 parts
    assert m.m1.splits == [c.in_channels for c in m.m1.values()]
    assert m.m2.splits == [3, 1] == [c.in_channels for c in m.m2.values()]
    assert net.m1.splits == [4, 4] and net.m2.splits == [4, 4]      # the user's module unchanged
    x = torch.randn(2, 1, 8, 8)
    y = m(x)
    pl.save(m, tmp_path / "p", example_inputs=x[:1])
    back = pl.load(tmp_path / "p", like=net)
    assert back.m2.splits == [3, 1] and torch.allclose(back(x), y, atol=1e-6)


def _cna(cin, cout, k=1, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


class _DarkBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = _cna(c, c), _cna(c, c, 3)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + x


class _CrossStage(nn.Module):
    """A CSP stage as timm's CrossStage3 writes it: ``x.split(self.expand_chs // 2)`` (an int
    size, fixed by forward()), the first half through a residual block (read twice: the block
    and its shortcut), then concatenated with the second."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv_down, self.conv_exp = _cna(3, 16, 3), _cna(16, 32, 3, 2), _cna(32, 32)
        self.expand_chs = 32
        self.blocks = nn.Sequential(_DarkBlock(16))
        self.conv_transition = _cna(32, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.conv_exp(self.conv_down(self.stem(x)))
        x1, x2 = x.split(self.expand_chs // 2, dim=1)
        y = self.conv_transition(torch.cat([self.blocks(x1), x2], dim=1))
        return self.head(y.mean((2, 3)))


def test_an_int_size_split_keeps_its_halves_and_the_rest_is_pruned():
    """torch-pruning 1.6 loses the parts' channel counts of ``x.split(int)`` (autograd keeps the
    split size, not the sizes; its guess reads 32, 0, 16 here) and fails at the concatenation:
    the parts are sized from the input's width, each consumer reads its own part, the split's
    input stays whole (forward() fixes its sizes) and every other group prunes."""
    from prunelab.pruning import build_graph

    torch.manual_seed(0)
    net = _CrossStage().eval()
    x = torch.randn(2, 3, 16, 16)
    # the second half's channels 17, 18 reach the concatenation's 17, 18, never the block
    DG = build_graph(net, (3, 16, 16))
    conv = net.conv_exp[0]
    g = DG.get_pruning_group(conv, DG.get_pruner_of_module(conv).prune_out_channels, idxs=[17, 18])
    reached = {dep.target.module: sorted(idxs) for dep, idxs in g
               if isinstance(dep.target.module, nn.Conv2d)}
    assert reached == {conv: [17, 18], net.conv_transition[0]: [17, 18]}, reached
    names = {g.name for g in prunable_groups(net, (3, 16, 16), num_classes=10)[1]}
    assert names == {"stem.0", "conv_down.0", "blocks.0.conv1.0", "conv_transition.0"}, names
    m = prune(net, "l1", ratio=0.5, input_shape=(3, 16, 16), num_classes=10).model
    assert m.conv_exp[0].out_channels == 32 and m.blocks[0].conv1[0].out_channels == 8
    assert m.conv_down[0].out_channels == 16 and m.conv_transition[0].out_channels == 12
    with torch.no_grad():
        assert m(x).shape == (2, 10)


def _shuffle(x, groups=2):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class _ShuffleNet(nn.Module):
    """Two ShuffleNetV2 units (torchvision's channel_shuffle, chunk, concat): the channels
    that pass the shuffles stay whole, each branch's inner width prunes."""

    def __init__(self):
        super().__init__()
        self.conv1 = _cna(3, 16, 3)
        self.branches = nn.ModuleList(
            nn.Sequential(_cna(8, 12), nn.Conv2d(12, 12, 3, padding=1, groups=12),
                          nn.BatchNorm2d(12), _cna(12, 8)) for _ in range(2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv1(x)
        for branch in self.branches:
            x1, x2 = x.chunk(2, dim=1)
            x = _shuffle(torch.cat([x1, branch(x2)], dim=1))
        return self.head(x.mean((2, 3)))


def test_a_channel_shuffle_keeps_its_channels_whole_and_the_branches_prune():
    """Torch-Pruning 1.6 maps a channel shuffle's views as a flatten (or divides by zero): the
    shuffled channels are left whole with the note, and each branch's inner width is pruned;
    the pruned model runs and keeps the shuffle's width."""
    torch.manual_seed(0)
    net = _ShuffleNet().eval()
    names = {g.name for g in prunable_groups(net, (3, 16, 16), num_classes=10)[1]}
    assert names == {"branches.0.1", "branches.1.1"}, names  # named by the depthwise conv
    m = prune(net, "l1", ratio=0.5, input_shape=(3, 16, 16), num_classes=10).model
    assert m.conv1[0].out_channels == 16 and m.branches[0][0][0].out_channels == 6
    assert m.branches[1][1].groups == 6 and m.branches[1][3][0].out_channels == 8
    with torch.no_grad():
        assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)


class _PaddedResidual(nn.Module):
    """ReXNet's block: an inverted bottleneck from ``c`` to ``c + extra`` channels whose first
    ``c`` channels take the shortcut (``cat([x[:, :c] + shortcut, x[:, c:]])``)."""

    def __init__(self, c: int, extra: int):
        super().__init__()
        self.c = c
        self.body = nn.Sequential(_cna(c, 2 * c), nn.Conv2d(2 * c, 2 * c, 3, padding=1,
                                                            groups=2 * c),
                                  nn.BatchNorm2d(2 * c), nn.Conv2d(2 * c, c + extra, 1),
                                  nn.BatchNorm2d(c + extra))

    def forward(self, x):
        y = self.body(x)
        return torch.cat([y[:, :self.c] + x, y[:, self.c:]], dim=1)


def test_a_sliced_channel_residual_stays_whole_and_its_inner_widths_prune():
    """The slice indices of a channel-padded residual are fixed by forward(): the channels
    through it stay whole with the note and each block's inner width prunes; twelve chained
    blocks (torch-pruning walks every distinct index set, exponentially many here) are grouped
    at once; the pruned model runs."""
    torch.manual_seed(0)
    blocks = [_PaddedResidual(4 + 2 * i, 2) for i in range(12)]
    net = nn.Sequential(_cna(3, 4, 3), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(28, 10)).eval()
    names = {g.name for g in prunable_groups(net, (3, 8, 8), num_classes=10)[1]}
    assert names == {f"{i}.body.1" for i in range(1, 13)}, names  # inner widths only
    m = prune(net, "l1", ratio=0.5, input_shape=(3, 8, 8), num_classes=10).model
    assert m[1].body[1].out_channels == 4 and m[1].body[3].out_channels == 6
    assert m[0][0].out_channels == 4
    with torch.no_grad():
        assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)
