"""Blocked layouts on ONNX Runtime: the unit graph, the blocking rule checked against the
runtime's own optimised graphs, and the elided-reorder count the calibration weighs."""

import collections

import pytest
import torch
import torch.nn as nn

from prunelab.latency.layout import blocked, elided
from prunelab.latency.predictor import Predictor, sample_keeps
from prunelab.latency.lut import LUT
from prunelab.latency.units import Unit, extract_units, unit_links, unit_shapes
from prunelab.models import build
from prunelab.pruning import prunable_groups

ort = pytest.importorskip("onnxruntime")


def _units(arch, **kw):
    torch.manual_seed(0)
    m = build(arch, in_channels=1, num_classes=10, **kw).eval()
    _, groups = prunable_groups(m, (1, 32, 32), 10)
    units = extract_units(m, (1, 32, 32), groups)
    return m, groups, units, unit_links(m, units)


def test_unit_links_follow_the_data_flow_of_a_resnet_and_a_vgg():
    _, _, units, links = _units("resnet20")
    name = {u.name: i for i, u in enumerate(units)}
    src = {u.name: [units[j].name if j is not None else None for j in l]
           for u, l in zip(units, links)}
    assert src["conv1"] == [None]
    assert src["layer1.0.conv2"] == ["layer1.0.conv1", "conv1"]          # main, residual
    assert src["layer1.1.conv1"] == ["layer1.0.conv2"]                   # through add + relu
    assert src["layer2.0.shortcut.0"] == ["layer1.2.conv2"]
    assert src["layer2.0.conv2"] == ["layer2.0.conv1", "layer2.0.shortcut.0"]
    assert src["fc"] == ["layer3.2.conv2"]                               # through pooling
    assert len(links) == len(units) and name["fc"] == len(units) - 1
    _, _, units, links = _units("vgg16")
    assert all(l == [i - 1 if i else None] for i, l in enumerate(links))  # a chain, pools passed


def _optimised_ops(module, shape):
    from prunelab.targets.onnxruntime import optimised_ops

    return optimised_ops(module, [torch.randn(1, *shape)])


def test_the_blocking_rule_agrees_with_onnx_runtimes_optimised_graph():
    """For every input width up to 40: the rule says blocked / reads blocked input exactly when
    ONNX Runtime puts an NCHWc conv / an input reorder in the graph it optimises."""
    from prunelab.targets import TargetConfig, make_target

    layout = make_target(TargetConfig("onnxruntime-cpu")).blocked_layout()
    if not layout[0]:
        pytest.skip("no blocked layout on this CPU")
    u = Unit("c", "conv", 40, 16, k=3, pad=1, h=8, w=8)
    for c in range(1, 41):
        ops = _optimised_ops(nn.Conv2d(c, 16, 3, padding=1).eval(), (c, 8, 8))
        got = (("nchwc", "Conv") in ops, ("nchwc", "ReorderInput") in ops)
        assert blocked(u, c, 16, layout) == got, (c, ops)


def test_elided_reorders_count_what_the_runtime_leaves_out():
    """The unpruned ResNet-20 (16/32/64 channels, all blocked) skips every internal reorder;
    widths of 17 (unaligned, plain NCHW) skip none in their stage.  ONNX Runtime agrees: the
    optimised unpruned graph has one reorder pair, the unaligned one many more."""
    m, groups, units, links = _units("resnet20")
    widths = {g.name: g.width for g in groups}
    layout = (16, 4)
    full = elided(units, unit_shapes(units, widths, {}), links, layout)
    odd = {g: 17 if w == 32 else w for g, w in widths.items()}
    part = elided(units, unit_shapes(units, widths, odd), links, layout)
    assert full > part > 0
    assert elided(units, unit_shapes(units, widths, {}), links, (0, 0)) == 0.0
    assert elided(units, unit_shapes(units, widths, {}), [], layout) == 0.0

    from prunelab.latency.predictor import pruned_layers, resized_copy

    count = lambda ops: sum(1 for d, o in ops if o.startswith("Reorder"))  # noqa: E731
    whole = collections.Counter(_optimised_ops(m, (1, 32, 32)))
    uneven = _optimised_ops(resized_copy(m, pruned_layers(units, groups, odd)), (1, 32, 32))
    if ("nchwc", "Conv") not in whole:
        pytest.skip("no blocked layout on this CPU")
    assert count(whole.elements()) <= 2 < count(uneven)


def test_the_calibration_recovers_reorder_and_weight_costs_and_drops_what_is_not_there():
    rows = []
    for i, keep in enumerate(sample_keeps({"a": 64, "b": 32}, 24, seed=0)):
        raw = 0.01 * (keep["a"] + keep["b"])
        el = (keep["a"] % 16 == 0) * keep["a"] * 0.5 + (i % 3 == 0) * 3.0
        wt = keep["a"] * keep["b"] * 9 / 1e6
        rows.append({"raw_ms": raw, "elided": el, "weights": wt,
                     "measured_ms": 0.8 * raw - 0.02 * el + 30.0 * wt + 0.1})
    p = Predictor([], {}, LUT({}), layout=(16, 4))
    p.fit(rows)
    assert p.fit_info["kind"] == "terms"
    assert p.reorder_ms == pytest.approx(0.02, rel=1e-3) and p.scale == pytest.approx(0.8)
    assert p.weight_ms == pytest.approx(30.0, rel=1e-3) and p.overhead_ms == pytest.approx(0.1)
    for r in rows:
        r["measured_ms"] = 1.2 * r["raw_ms"] + 0.1          # no layout or weight effect
    p.fit(rows)
    assert p.scale == pytest.approx(1.2) and p.overhead_ms == pytest.approx(0.1)
    assert p.reorder_ms == pytest.approx(0.0, abs=1e-9) and p.weight_ms == pytest.approx(0.0,
                                                                                         abs=1e-9)


def test_aligned_samples_sit_on_the_multiple():
    w = {"a": 64, "b": 32, "c": 10}
    for keep in sample_keeps(w, 30, seed=1, multiple=16):
        assert keep["a"] % 16 == 0 and keep["b"] % 16 == 0 and 1 <= keep["c"] <= 10
        assert 16 <= keep["a"] <= 64
