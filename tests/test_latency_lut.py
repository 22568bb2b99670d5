"""Units (fusion context, shapes after pruning), table interpolation and step sizes, with real
(small) measurements where a table is built."""

import random

import pytest
import torch

from prunelab.latency.cache import Cache
from prunelab.latency.lut import PointMeter, Table, build_table, grid_nodes
from prunelab.latency.measure import Protocol
from prunelab.latency.steps import ceil_to, detect_step, useful_widths
from prunelab.latency.units import Unit, extract_units, unit_module, unit_shapes
from prunelab.pruning import prunable_groups, prune
from prunelab.targets import TargetConfig, make_target

from .conftest import TINY_MODELS


def _units(model):
    _, groups = prunable_groups(model, (1, 32, 32), 4)
    return groups, extract_units(model, (1, 32, 32), groups)


def test_units_carry_the_ops_the_runtime_fuses():
    _, us = _units(TINY_MODELS["resnet"]())
    by = {u.name: u for u in us}
    assert (by["conv1"].bn, by["conv1"].add, by["conv1"].act) == (True, False, "relu")
    assert (by["layer1.0.conv2"].add, by["layer1.0.conv2"].act) == (True, "relu")
    sc = by["layer2.0.shortcut.0"]
    assert sc.k == 1 and sc.stride == 2 and not sc.add and sc.act == ""  # the add went to conv2
    assert by["layer2.0.conv1"].h == 32 and by["layer3.0.conv2"].h == 8
    _, mb = _units(TINY_MODELS["mobilenet"]())
    kinds = {u.kind for u in mb}
    assert {"dwconv", "conv", "linear"} <= kinds and any(u.act == "relu6" for u in mb)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_unit_shapes_match_real_pruning(name):
    torch.manual_seed(0)
    model = TINY_MODELS[name]().eval()
    groups, us = _units(model)
    rng = random.Random(1)
    keep = {g.name: rng.randint(1, g.width) for g in groups}
    pruned = prune(model, "l1", keep=keep, input_shape=(1, 32, 32), num_classes=4).model
    widths = {g.name: g.width for g in groups}
    for u, (ci, co) in zip(us, unit_shapes(us, widths, keep)):
        m = pruned.get_submodule(u.name)
        real = (m.in_channels, m.out_channels) if hasattr(m, "in_channels") else (
            m.in_features, m.out_features)
        assert real == (ci, co), u.name


def test_unit_module_reproduces_the_unit():
    u = Unit("x", "conv", 8, 16, 3, 2, 1, 10, 10, bn=True, add=True, act="relu",
             cin_group="a", cout_group="b")
    m, shapes = unit_module(u, 5, 7)
    assert shapes == [(5, 10, 10), (7, 5, 5)]
    assert m(*[torch.randn(1, *s) for s in shapes]).shape == (1, 7, 5, 5)
    assert u.macs(5, 7) == 9 * 5 * 7 * 25 and u.sig.endswith(":narelu")


def test_steps_on_staircases_and_smooth_curves():
    stairs16 = {c: 1.0 + 0.5 * ((c + 15) // 16) for c in range(20, 61)}
    assert detect_step(stairs16) == 16
    assert detect_step({c: 0.1 * c for c in range(1, 41)}) <= 2
    # an unaligned width slower than the aligned one above it is not useful
    curve = {28: 1.0, 29: 1.3, 30: 1.3, 31: 1.3, 32: 1.2, 33: 2.0}
    assert useful_widths(curve) == [28, 32, 33]
    assert ceil_to(17, 8, 64) == 24 and ceil_to(63, 8, 60) == 60 and ceil_to(5, 1, 9) == 5
    assert grid_nodes(64, 8, 5) == [8, 24, 40, 48, 64] or grid_nodes(64, 8, 5)[-1] == 64
    assert all(n % 8 == 0 for n in grid_nodes(64, 8, 5))


def test_table_interpolates_between_nodes_after_rounding_up():
    u = Unit("x", "conv", 32, 64, cin_group="a", cout_group="b")
    t = Table(u.sig, u, True, True, step_in=8, step_out=16, nodes_in=[8, 32],
              nodes_out=[16, 64], grid=[[1.0, 3.0], [2.0, 6.0]])
    assert t.lookup(8, 16) == 1.0 and t.lookup(32, 64) == 6.0
    assert t.lookup(3, 10) == 1.0                       # below the first node: clamp
    assert t.lookup(9, 16) == t.lookup(16, 16)           # rounded up to the step of 8
    assert t.lookup(16, 20) == t.lookup(16, 32)          # ... and of 16
    # (20, 40) -> (24, 48): two thirds of the way between the nodes on both axes
    top, bot = 1.0 / 3 + 3.0 * 2 / 3, 2.0 / 3 + 6.0 * 2 / 3
    assert t.lookup(20, 40) == pytest.approx(top / 3 + bot * 2 / 3)
    assert Table.from_json(t.to_json()).lookup(20, 40) == t.lookup(20, 40)


def test_a_real_table_on_torch_cpu(tmp_path):
    target = make_target(TargetConfig("torch-cpu"))
    cache = Cache(target.fingerprint(), tmp_path)
    meter = PointMeter(target, cache, Protocol(warmup=1, repeats=3))
    u = Unit("x", "conv", 6, 12, 3, 1, 1, 6, 6, bn=True, act="relu", cin_group="a",
             cout_group="b")
    t = build_table(u, meter, sweep=12, nodes=4)
    assert sorted(t.sweep_out) == list(range(1, 13)) and sorted(t.sweep_in) == list(range(1, 7))
    assert t.nodes_out[-1] == 12 and t.nodes_in[-1] == 6 and len(t.nodes_out) <= 4
    assert all(n % t.step_out == 0 or n == 12 for n in t.nodes_out)
    for i, ci in enumerate(t.nodes_in):        # at the nodes the table returns what was measured
        for j, co in enumerate(t.nodes_out):
            assert t.lookup(ci, co) == t.grid[i][j] == meter(u, ci, co)
    n = meter.measured
    build_table(u, meter, sweep=12, nodes=4)      # everything again from the cache
    assert meter.measured == n


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_resized_copy_has_the_structure_of_real_pruning(name):
    from prunelab.io import layer_widths
    from prunelab.latency.predictor import pruned_layers, resized_copy

    torch.manual_seed(0)
    model = TINY_MODELS[name]().eval()
    groups, us = _units(model)
    keep = {g.name: max(1, g.width // 3) for g in groups}
    real = prune(model, "l1", keep=keep, input_shape=(1, 32, 32), num_classes=4).model
    fast = resized_copy(model, pruned_layers(us, groups, keep))
    assert layer_widths(fast) == layer_widths(real)
    out = fast(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
