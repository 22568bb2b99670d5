"""Every registered criterion meets the same contract on VGG-, ResNet- and MobileNetV2-like nets:
one finite score per channel, deterministic with a seed, and the pruned model runs with fewer
MACs and the requested widths."""

import copy

import pytest
import torch

from prunelab.criteria import CRITERIA, make_criterion
from prunelab.pruning import prunable_groups, prune

SHAPE = (1, 32, 32)


def _make(name, seed=1):
    small = {"num_images": 24, "batch_size": 12} if CRITERIA.get(name).meta.get("needs_data") else {}
    return make_criterion(name, seed=seed, **small)


@pytest.mark.parametrize("name", CRITERIA.names())
def test_criterion_contract(name, tiny_model, tiny_data):
    crit = _make(name)
    net = copy.deepcopy(tiny_model)
    _, groups = prunable_groups(net, SHAPE, num_classes=4)
    crit.prepare(net, groups, tiny_data)
    scores = {g.name: crit.score(g) for g in groups}
    for g in groups:
        s = scores[g.name]
        assert s.shape == (g.width,), (g.name, s.shape)
        assert torch.isfinite(s).all()
    # same seed, same scores (fresh criterion object, fresh model copy)
    crit2 = _make(name)
    net2 = copy.deepcopy(tiny_model)
    _, groups2 = prunable_groups(net2, SHAPE, num_classes=4)
    crit2.prepare(net2, groups2, tiny_data)
    for g in groups2:
        assert torch.allclose(crit2.score(g), scores[g.name])

    res = prune(tiny_model, _make(name), ratio=0.4, input_shape=SHAPE,
                data=tiny_data, num_classes=4)
    assert res.macs_after < res.macs_before and res.params_after < res.params_before
    with torch.no_grad():
        y = res.model(torch.randn(3, *SHAPE))
    assert y.shape == (3, 4) and torch.isfinite(y).all()
    _, after = prunable_groups(res.model, SHAPE, num_classes=4)
    assert {g.name: g.width for g in after} == res.keep
    # the original model is untouched
    assert sum(p.numel() for p in tiny_model.parameters()) == res.params_before


def test_l1_removes_the_smallest_filters(tiny_model):
    _, groups = prunable_groups(copy.deepcopy(tiny_model), SHAPE, num_classes=4)
    g = groups[0]
    res = prune(tiny_model, "l1", keep={g.name: g.width - 3}, input_shape=SHAPE, num_classes=4)
    crit = make_criterion("l1")
    crit.prepare(tiny_model, groups)
    expected = torch.sort(crit.score(g), stable=True).indices[:3].sort().values.tolist()
    assert res.removed[g.name] == expected


def test_random_beats_nothing_but_differs_by_seed(tiny_model):
    a = prune(tiny_model, make_criterion("random", seed=0), ratio=0.5, input_shape=SHAPE,
              num_classes=4)
    b = prune(tiny_model, make_criterion("random", seed=1), ratio=0.5, input_shape=SHAPE,
              num_classes=4)
    assert a.removed != b.removed
