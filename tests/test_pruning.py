import torch

import pytest

from prunelab.errors import PrunelabError
from prunelab.models import build
from prunelab.pruning import align, prunable_groups, prune

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
