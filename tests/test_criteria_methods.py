"""Method-specific checks: each criterion computes what its paper says."""


import pytest
import torch
import torch.nn as nn

from prunelab.criteria import make_criterion
from prunelab.criteria.omp import lrf_removal_order, somp_order
from prunelab.errors import PrunelabError
from prunelab.pruning import prunable_groups, prune, score_groups

from .conftest import TinyVGG, tiny_resnet
from .linear_path import LinearPath, redundant_conv

SHAPE = (1, 32, 32)


def _with_stats(m):
    torch.manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
            mod.running_mean.uniform_(-0.1, 0.1)
    return m.eval()


@pytest.mark.parametrize("factory", [TinyVGG, tiny_resnet])
def test_deeplift_all_layers_equals_captum_layer_deeplift(factory, tiny_data):
    from captum.attr import LayerDeepLift

    torch.manual_seed(0)
    net = _with_stats(factory())
    crit = make_criterion("deeplift", num_images=8, batch_size=8)
    _, groups = prunable_groups(net, SHAPE, num_classes=4)
    crit.prepare(net, groups, tiny_data)
    x, y = next(iter(tiny_data.batches("train", 8)))
    mods = dict(net.named_modules())
    for name in [n for g in groups for n in g.producers][:4]:
        ref = LayerDeepLift(net, mods[name]).attribute(x, baselines=crit.baseline(x), target=y)
        expect = ref.abs().sum(dim=(2, 3)).mean(0)
        assert torch.allclose(crit._scores[name], expect, rtol=1e-4, atol=1e-6), name


def test_integrated_gradients_is_complete_on_a_chain(tiny_data):
    """Without skip connections every path crosses each conv, so a layer's conductance sums to
    F(x) - F(reference) (completeness), up to the quadrature error."""
    from prunelab.criteria.xai import conductance

    net = _with_stats(TinyVGG())
    crit = make_criterion("integrated-gradients", steps=64)
    crit.baseline_value = [(0 - tiny_data.mean[0]) / tiny_data.std[0]]
    x, y = next(iter(tiny_data.batches("train", 4)))
    x0 = crit.baseline(x)
    with torch.no_grad():
        gap = (net(x) - net(x0)).gather(1, y.view(-1, 1)).squeeze(1)
    cond = conductance(net, ["features.0", "features.3"], x, y, x0, 64)
    for name, c in cond.items():
        total = c.sum(dim=(1, 2, 3))
        assert torch.allclose(total, gap, rtol=0.05, atol=0.05 * gap.abs().max()), name


def test_somp_and_lrf_keep_a_spanning_set():
    F = redundant_conv().weight.data.reshape(8, -1)
    Fn = F / F.norm(dim=1, keepdim=True)
    first4 = somp_order(Fn, ridge=1e-6, limit=4)
    # the first four chosen span the space: every filter is reproduced from them
    A = F[first4]
    lam = torch.linalg.lstsq(A.T, F.T).solution.T
    assert torch.allclose(lam @ A, F, atol=1e-4)
    removed_first = lrf_removal_order(F, torch.ones(8))[:4]
    keep = sorted(set(range(8)) - set(removed_first))
    lam = torch.linalg.lstsq(F[keep].T, F.T).solution.T
    assert torch.allclose(lam @ F[keep], F, atol=1e-4)


@pytest.mark.parametrize("mode", ["fold", "sandwich"])
@pytest.mark.parametrize("name", ["fp-omp", "lrf"])
def test_compensation_is_exact_when_filters_are_redundant(mode, name, tiny_data, tmp_path):
    net = _with_stats(LinearPath())
    x = torch.randn(5, 3, 32, 32)
    keep = {"conv1": 4}
    kw = {"input_shape": (3, 32, 32), "num_classes": 4, "keep": keep, "data": None}
    crit = make_criterion(name, compensation=mode, ridge=1e-8)
    res = prune(net, crit, **kw)
    with torch.no_grad():
        assert torch.allclose(res.model(x), net(x), atol=1e-3), "compensated output differs"
    none = prune(net, make_criterion(name, compensation="none", ridge=1e-8), **kw)
    with torch.no_grad():
        assert not torch.allclose(none.model(x), net(x), atol=1e-2)  # the ablation loses it
    if mode == "sandwich":  # the structure survives save / reload
        from prunelab.io import ModelSpec, load_model, save_model

        import pathlib

        factory = str(pathlib.Path(__file__).with_name("linear_path.py")) + ":LinearPath"
        spec = ModelSpec({"kind": "factory", "factory": factory, "kwargs": {}},
                         [3, 32, 32], [0.5] * 3, [0.5] * 3, 4)
        save_model(res.model, spec, tmp_path / "m")
        again, _ = load_model(tmp_path / "m", factory=factory)  # the test names its code
        with torch.no_grad():
            assert torch.equal(again(x), res.model(x))


def test_fpomp_compensation_helps_on_a_real_network(tiny_data):
    """On a (briefly trained) ResNet, the sandwich keeps outputs closer to the original than no
    compensation; fold leaves a ReLU network alone (no linear path), so it equals none."""
    from prunelab.train import TrainConfig, train

    torch.manual_seed(0)
    net = tiny_resnet()
    train(net, tiny_data, TrainConfig(epochs=2, lr=0.05, batch_size=32, precision="fp32"))
    x = next(iter(tiny_data.batches("val", 32)))[0]
    with torch.no_grad():
        ref = net(x)
        err = {}
        for mode in ("sandwich", "fold", "none"):
            crit = make_criterion("fp-omp", compensation=mode)
            out = prune(net, crit, ratio=0.3, input_shape=SHAPE, num_classes=4,
                        data=tiny_data).model(x)
            err[mode] = (out - ref).pow(2).mean().item()
    assert err["sandwich"] < err["none"], err
    assert err["fold"] == pytest.approx(err["none"]), err


def test_rule_based_methods_run_on_functional_activations(tiny_data):
    """``torch.relu`` in forward() is rewritten into a module on a copy (see
    tests/test_xai_rewrite.py for score equality with the module twin)."""
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    for name in ("deeplift", "lrp", "grad-x-act"):
        res = prune(Functional(), make_criterion(name, num_images=4), ratio=0.5,
                    input_shape=SHAPE, num_classes=4, data=tiny_data)
        assert res.model.conv.out_channels == 4


def test_rule_based_methods_name_unsupported_layers(tiny_data):
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Hardswish(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(PrunelabError, match=r"no rule for layer '1' \(Hardswish\)"):
        prune(net, make_criterion("lrp", num_images=4), ratio=0.5, input_shape=SHAPE,
              num_classes=4, data=tiny_data)
    # deeplift has a rule for Hardswish (rescale: tests/test_deeplift_rules.py), not for this
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(PrunelabError, match=r"no rule for layer '2' \(AdaptiveMaxPool2d\)"):
        prune(net, make_criterion("deeplift", num_images=4), ratio=0.5, input_shape=SHAPE,
              num_classes=4, data=tiny_data)


def test_scores_are_reusable_across_ratios(tiny_data):
    net = _with_stats(tiny_resnet())
    crit = make_criterion("taylor", num_images=16)
    _, groups = prunable_groups(net, SHAPE, num_classes=4)
    scores, seconds = score_groups(net, crit, groups, tiny_data)
    assert seconds > 0
    a = prune(net, crit, ratio=0.5, input_shape=SHAPE, num_classes=4, scores=scores)
    b = prune(net, make_criterion("taylor", num_images=16), ratio=0.5, input_shape=SHAPE,
              num_classes=4, data=tiny_data)
    assert a.removed == b.removed
