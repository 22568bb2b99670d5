"""Paired, order-fair speed-up with an interval (prunelab.latency.paired), on the scripted target
with seeded noise and an injected order bias; no test reads a wall clock."""

import copy
import math
from statistics import NormalDist

import pytest
import torch.nn as nn

from prunelab.errors import PrunelabError
from prunelab.latency.measure import Protocol, measure
from prunelab.latency.paired import paired_speedup, signed_rank_interval
from prunelab.targets import TargetConfig
from prunelab.targets.scripted import Scripted, scripted_ms

SHAPE = (8, 16, 16)
A, B = nn.Conv2d(8, 32, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
TRUE = scripted_ms(A, [SHAPE], 1) / scripted_ms(B, [SHAPE], 1)
P = Protocol(warmup=1, repeats=8, sessions=6)


def scripted(**kw):
    return Scripted(TargetConfig("scripted"), **kw)


def test_pairing_cancels_an_injected_order_bias():
    t = scripted(order_bias=0.15)
    old = measure(t, [A, B], SHAPE, Protocol(warmup=1, repeats=8, sessions=3))
    unpaired = old[0].median_ms / old[1].median_ms  # each model's fastest session, base first
    assert unpaired == pytest.approx(TRUE * 1.15)  # the bias reaches the unpaired figure
    e = paired_speedup(A, B, t, SHAPE, P)
    assert e.estimate == pytest.approx(TRUE, rel=1e-9) and e.contains(TRUE)
    assert len(e.samples) == 6 and e.processes == 0 and e.level >= 0.95


def test_interval_covers_the_true_ratio_with_noise():
    hits = [paired_speedup(A, B, scripted(noise=0.05, order_bias=0.05, seed=s), SHAPE, P,
                           seed=s).contains(TRUE) for s in range(40)]
    assert sum(hits) >= 34  # 6 samples: 96.9% nominal


def test_interval_is_not_trivially_wide():
    e = paired_speedup(A, B, scripted(noise=0.02, seed=3), SHAPE, P)
    assert 1.0 < e.low < e.estimate < e.high < 2.0 and e.verdict == "candidate faster"


def test_two_copies_of_one_model_contain_one():
    twin = copy.deepcopy(A)
    for s in range(5):
        e = paired_speedup(A, twin, scripted(noise=0.05, order_bias=0.1, seed=s), SHAPE, P,
                           seed=s)
        assert e.contains(1.0) and e.verdict == "within noise"


def test_separate_processes_use_the_same_session_code():
    e = paired_speedup(A, B, scripted(order_bias=0.15), SHAPE,
                       Protocol(warmup=1, repeats=4, sessions=2), processes=2)
    assert e.processes == 2 and len(e.samples) == 2
    assert e.estimate == pytest.approx(TRUE, rel=1e-9)  # each process pairs its own orders


def test_a_process_interval_carries_the_drift_between_sittings():
    """A decision's interval is the signed-rank one widened in quadrature by DRIFT (a re-measure
    in a later sitting moves by more than one decision's spread); a formula target has none."""
    from prunelab.latency.paired import DRIFT

    proto = Protocol(warmup=1, repeats=4, sessions=2)
    e = paired_speedup(A, B, scripted(noise=0.02, seed=1), SHAPE, proto, processes=2)
    lo, hi = e.sampled
    assert e.drift == DRIFT and e.low < lo <= e.estimate <= hi < e.high
    z = NormalDist().inv_cdf(0.5 + e.level / 2)  # at the interval's own level
    assert math.log(e.estimate / e.low) == pytest.approx(
        math.hypot(math.log(e.estimate / lo), z * DRIFT))
    assert math.log(e.high / e.estimate) == pytest.approx(
        math.hypot(math.log(hi / e.estimate), z * DRIFT))
    exact = paired_speedup(A, B, scripted(), SHAPE, proto, processes=2)
    assert exact.drift == 0.0 and (exact.low, exact.high) == exact.sampled
    inproc = paired_speedup(A, B, scripted(noise=0.02, seed=1), SHAPE, P)
    assert inproc.drift == 0.0 and (inproc.low, inproc.high) == inproc.sampled


def test_signed_rank_interval_matches_its_definition():
    est, lo, hi, level = signed_rank_interval([1, 2, 3, 4, 5, 6])
    assert (est, lo, hi) == (3.5, 1, 6) and level == pytest.approx(1 - 2 / 64)
    x = [0.1 * math.sin(i) for i in range(12)]
    est, lo, hi, level = signed_rank_interval(x)
    assert lo < est < hi and 0.95 <= level < 0.96
    with pytest.raises(PrunelabError, match="at least 2"):
        signed_rank_interval([1.0])


def test_options_are_checked():
    with pytest.raises(PrunelabError, match="processes"):
        paired_speedup(A, B, scripted(), SHAPE, P, processes=1)
    with pytest.raises(PrunelabError, match="sessions >= 2"):
        paired_speedup(A, B, scripted(), SHAPE, Protocol(sessions=1))
    with pytest.raises(PrunelabError, match="noise"):
        scripted(noise=-1)


def test_an_onnx_target_times_in_processes_models_whose_class_does_not_import_there():
    """On an ONNX-based target the child processes get the ONNX graphs, never the modules: a
    model class defined inside a function (as in a notebook, or behind a library that does not
    import in a new interpreter) is timed all the same; on torch-cpu, where the modules must
    travel pickled, the same model is one line that says what to do."""
    from prunelab.targets import make_target

    class Local(nn.Module):  # cannot be pickled, nor imported by a new interpreter
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(8, c, 3, padding=1)

        def forward(self, x):
            return self.conv(x).relu()

    proto = Protocol(warmup=2, repeats=10, min_seconds=0.01, sessions=1)
    e = paired_speedup(Local(32).eval(), Local(8).eval(), make_target("onnxruntime-cpu"),
                       (8, 16, 16), proto, processes=2)
    assert e.processes == 2 and len(e.samples) == 2 and e.estimate > 0
    with pytest.raises(PrunelabError, match="must import in a new interpreter"):
        paired_speedup(Local(32).eval(), Local(8).eval(), make_target("torch-cpu"),
                       (8, 16, 16), proto, processes=2)
