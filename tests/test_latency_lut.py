"""Units (fusion context, shapes after pruning), table interpolation and step sizes, with real
(small) measurements where a table is built."""

import random

import pytest
import torch

from prunelab.latency.cache import Cache
from prunelab.latency.lut import (LutConfig, PointMeter, Table, build_table, grid_nodes,
                                  sweep_widths)
from prunelab.latency.measure import Protocol
from prunelab.latency.steps import detect_step, step_of, useful_widths
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
    assert useful_widths(stairs16) == [32, 48, 60] and step_of([16, 32, 48, 60]) == 16
    assert grid_nodes(64, 8, 5)[-1] == 64 and all(n % 8 == 0 for n in grid_nodes(64, 8, 5))
    assert sweep_widths(10, 256) == list(range(1, 11))
    assert sweep_widths(512, 256) == [1, *range(2, 513, 2)]


def _table(fn, cin=32, cout=64, nodes_in=(8, 32), nodes_out=(16, 64)):
    u = Unit("x", "conv", cin, cout, cin_group="a", cout_group="b")
    s_in = {c: fn(c, cout) for c in range(1, cin + 1)}
    s_out = {c: fn(cin, c) for c in range(1, cout + 1)}
    grid = [[fn(ci, co) for co in nodes_out] for ci in nodes_in]
    return Table(u.sig, u, True, True, s_in, s_out, list(nodes_in), list(nodes_out), grid)


def test_table_is_exact_on_sweeps_and_nodes_and_keeps_staircases():
    # a conv-like cost: bilinear in the channels, output channels padded to blocks of 16,
    # unaligned input channels 30% slower
    def cost(ci, co):
        return 0.01 + 1e-4 * ci * (16 * -(-co // 16)) * (1.0 if ci % 4 == 0 else 1.3)

    t = _table(cost)
    for ci, co in [(32, 64), (8, 16), (32, 17), (13, 64), (8, 64), (32, 16)]:
        assert t.lookup(ci, co) == pytest.approx(cost(ci, co), rel=1e-9), (ci, co)
    # off the sweeps: the staircase and the alignment penalty are both kept
    assert t.lookup(20, 33) == pytest.approx(t.lookup(20, 48), rel=0.02)
    assert t.lookup(23, 40) > t.lookup(24, 40)
    errs = [abs(t.lookup(ci, co) / cost(ci, co) - 1) for ci in range(1, 33) for co in range(1, 65)]
    assert max(errs) < 0.1 and sum(errs) / len(errs) < 0.02
    assert Table.from_json(t.to_json()).lookup(20, 40) == t.lookup(20, 40)


def test_a_real_table_on_torch_cpu(tmp_path):
    target = make_target(TargetConfig("torch-cpu"))
    cache = Cache(target.fingerprint(), tmp_path)
    meter = PointMeter(target, cache, Protocol(warmup=1, repeats=3))
    u = Unit("x", "conv", 6, 12, 3, 1, 1, 6, 6, bn=True, act="relu", cin_group="a",
             cout_group="b")
    cfg = LutConfig(sweep=12, nodes=4, warmup=1, repeats=3)
    t = build_table(u, meter, cfg)
    assert sorted(t.sweep_out) == list(range(1, 13)) and sorted(t.sweep_in) == list(range(1, 7))
    assert t.nodes_out[-1] == 12 and t.nodes_in[-1] == 6 and len(t.nodes_out) <= 4
    assert all(n % t.step_out == 0 or n == 12 for n in t.nodes_out)
    for i, ci in enumerate(t.nodes_in):        # at the nodes the table returns what was measured
        for j, co in enumerate(t.nodes_out):
            assert t.lookup(ci, co) == pytest.approx(t.grid[i][j]) and \
                t.grid[i][j] == meter(u, ci, co)
    for co, ms in t.sweep_out.items():         # ... and along the sweeps
        assert t.lookup(6, co) == pytest.approx(ms)
    n = meter.measured
    build_table(u, meter, cfg)                  # everything again from the cache
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


@pytest.mark.parametrize("target_name", ["torch-cpu", "onnxruntime-cpu"])
def test_per_call_cost_is_timed_on_the_runtime_and_cached(tmp_path, target_name):
    """A trivial graph on the unit's input is timed on the real runtime, once (pass/fail never
    depends on how fast it was)."""
    if target_name == "onnxruntime-cpu":
        pytest.importorskip("onnxruntime")
    target = make_target(TargetConfig(target_name))
    meter = PointMeter(target, Cache(target.fingerprint(), tmp_path), Protocol(warmup=1,
                                                                                 repeats=3))
    u = Unit("x", "conv", 8, 8, 3, 1, 1, 8, 8, bn=True, add=True, act="relu", cin_group="a",
             cout_group="a")
    call = meter.call_ms(u)
    assert call > 0 and meter.measured == 1
    assert meter.call_ms(u) == call and meter.measured == 1       # cached


@pytest.mark.parametrize("call", [0.004, 1.0])
def test_tables_answer_net_of_the_per_call_cost(call):
    """Lookups subtract the per-call cost, capped at half the fastest point, so a noisy call
    figure cannot eat the units.  The timer is scripted (latency = 0.01 + 0.001 * cin * cout ms),
    so the arithmetic is checked exactly, whatever the machine's load."""
    u = Unit("x", "conv", 8, 8, 3, 1, 1, 8, 8, bn=True, add=True, act="relu", cin_group="a",
             cout_group="a")
    seen = []

    def scripted(unit, cin, cout):
        seen.append((cin, cout))
        return 0.01 + 0.001 * cin * cout

    t = build_table(u, scripted, LutConfig(sweep=8, nodes=3, warmup=1, repeats=3), call)
    fastest = min(0.01 + 0.001 * ci * co for ci, co in seen)       # sweeps and grid nodes
    assert all(v == pytest.approx(0.01 + 0.001 * 8 * c) for c, v in t.sweep_out.items())
    assert all(v == pytest.approx(0.01 + 0.001 * c * 8) for c, v in t.sweep_in.items())
    assert (1, 8) in seen and (8, 1) in seen
    assert t.call_ms == pytest.approx(min(call, 0.5 * fastest))
    assert (t.call_ms < call) == (call == 1.0)                      # the cap bites only then
    for ci, co in ((8, 8), (3, 5), (1, 1)):
        assert t.lookup(ci, co) == pytest.approx(t.standalone(ci, co) - t.call_ms)
    assert t.standalone(8, 8) == pytest.approx(0.01 + 0.064)      # a measured grid point
    assert Table.from_json(t.to_json()).lookup(5, 7) == t.lookup(5, 7)
