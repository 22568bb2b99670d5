"""The measuring protocol: warm-up, interleaving, median/IQR, the noise verdict; the cache keying."""

import json

import pytest
import torch.nn as nn

from prunelab.errors import PrunelabError
from prunelab.latency.cache import Cache
from prunelab.latency.lut import PointMeter
from prunelab.latency.measure import Protocol, compare, measure, time_runners
from prunelab.latency.units import Unit
from prunelab.metrics import Timing
from prunelab.targets import TargetConfig, make_target


def test_runs_are_interleaved_after_warmup():
    calls = []
    runners = [lambda: calls.append("a"), lambda: calls.append("b")]
    t = make_target(TargetConfig("torch-cpu"))
    ts = time_runners(t, runners, Protocol(warmup=3, repeats=7))
    assert calls == ["a", "b"] * 10
    for x in ts:
        assert x.repeats == 7 and x.warmup == 3 and len(x.samples_ms) == 7
        assert min(x.samples_ms) <= x.median_ms <= max(x.samples_ms) and x.iqr_ms >= 0
        assert (x.runtime, x.threads, x.batch_size) == ("torch-cpu", 1, 1)


def test_protocol_validates():
    with pytest.raises(PrunelabError, match="repeats"):
        Protocol(repeats=1)
    assert json.loads(json.dumps(Protocol().to_json()))["repeats"] == 50


@pytest.mark.parametrize("name", ["torch-cpu", "onnxruntime-cpu"])
def test_measure_two_models_on_a_real_runtime(name):
    pytest.importorskip("onnxruntime")
    a, b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 16, 3)
    ts = measure(make_target(TargetConfig(name, batch_size=2)), [a, b], (1, 12, 12),
                 Protocol(warmup=2, repeats=5))
    assert [t.runtime for t in ts] == [name, name]
    assert all(t.batch_size == 2 and t.repeats == 5 and t.median_ms > 0 for t in ts)


def _timing(samples):
    s = sorted(samples)
    return Timing("x", 1, 1, len(s), 0, s[len(s) // 2], 0.0, s)


def test_compare_trusts_only_separated_iqrs():
    slow = _timing([10, 10.5, 11, 11.5, 12])
    fast = _timing([5, 5.2, 5.4, 5.6, 5.8])
    close = _timing([10.8, 11.2, 11.4, 11.6, 12.2])
    c = compare(slow, fast)
    assert c["apart"] and c["verdict"] == "b faster" and c["speedup"] == pytest.approx(11 / 5.4)
    assert compare(slow, close)["verdict"] == "within noise"


UNIT = Unit("c", "conv", 4, 8, 3, 1, 1, 8, 8, bn=True, act="relu", cin_group="g0",
            cout_group="g1")


def test_cache_reuses_only_under_the_same_fingerprint(tmp_path):
    t1 = make_target(TargetConfig("torch-cpu", threads=1))
    m = PointMeter(t1, Cache(t1.fingerprint(), tmp_path), Protocol(warmup=1, repeats=3))
    first = m(UNIT, 4, 8)
    assert m.measured == 1
    m.cache.flush()
    again = PointMeter(t1, Cache(t1.fingerprint(), tmp_path), Protocol(warmup=1, repeats=3))
    assert again(UNIT, 4, 8) == first and again.measured == 0
    t2 = make_target(TargetConfig("torch-cpu", threads=2))
    other = PointMeter(t2, Cache(t2.fingerprint(), tmp_path), Protocol(warmup=1, repeats=3))
    other(UNIT, 4, 8)
    assert other.measured == 1  # never reused across fingerprints
    bs = make_target(TargetConfig("torch-cpu", batch_size=2))
    assert Cache(bs.fingerprint(), tmp_path).get("units", next(iter(
        m.cache._table("units")))) is None


def test_cache_ignores_a_folder_holding_another_fingerprint(tmp_path):
    fp = {"cpu": "A", "threads": 1}
    c = Cache(fp, tmp_path)
    c.put("units", "k", {"median_ms": 1.0})
    c.flush()
    (c.dir / "fingerprint.json").write_text(json.dumps({"cpu": "B", "threads": 1}))
    assert Cache(fp, tmp_path).get("units", "k") is None
    (c.dir / "units.json").write_text("{not json")
    assert Cache({"cpu": "B", "threads": 1}, tmp_path).get("units", "k") is None



def test_processes_sharing_a_cache_keep_each_other_records(tmp_path):
    """Two caches opened on one folder before either writes (a search and a `latency validate`
    side by side): each flush merges into what is on disk, so neither drops the other's
    records, and a record both wrote keeps the last writer's figure."""
    fp = {"cpu": "A", "threads": 1}
    a, b = Cache(fp, tmp_path), Cache(fp, tmp_path)
    assert a.get("models", "x") is None and b.get("models", "y") is None  # both read the table
    a.put("models", "x", {"median_ms": 1.0})
    a.put("models", "both", {"median_ms": 3.0})
    a.flush()
    b.put("models", "y", {"median_ms": 2.0})
    b.put("models", "both", {"median_ms": 4.0})
    b.flush()
    again = Cache(fp, tmp_path)
    assert again.get("models", "x") == {"median_ms": 1.0}
    assert again.get("models", "y") == {"median_ms": 2.0}
    assert again.get("models", "both") == {"median_ms": 4.0}
    assert b.get("models", "x") == {"median_ms": 1.0}  # the writer sees the merge too
    a.put("units", "u", {"median_ms": 5.0})
    a.flush()  # a table b never changed is left as a wrote it
    assert Cache(fp, tmp_path).get("units", "u") == {"median_ms": 5.0}


class _ModalTarget:
    """A scripted target whose sessions come up fast or slow, as ONNX Runtime's do on a shared
    VM: each ``runner`` call is a fresh session, its figure fixed for its whole life."""

    scripted, name = True, "modal"
    cfg = TargetConfig("scripted")

    def __init__(self, modes):
        self.modes = {k: iter(v) for k, v in modes.items()}
        self.built = []

    def scope(self):
        import contextlib

        return contextlib.nullcontext()

    def inputs(self, shapes, seed=0):
        return shapes

    def runner(self, module, inputs):
        from prunelab.targets.scripted import ScriptedRunner

        self.built.append(module.tag)
        return ScriptedRunner(next(self.modes[module.tag]))


def _tagged(tag):
    m = nn.Identity()
    m.tag = tag
    return m


def test_sessions_see_through_slow_stretches():
    """The fastest session's median: two, or three, of five sessions slowed by interference do
    not move the figure; one session reports whatever it drew."""
    modes = {"base": [4.0] * 5, "pruned": [2.0, 1.0, 1.0, 2.0, 1.0]}
    a, b = _tagged("base"), _tagged("pruned")
    t = _ModalTarget(modes)
    base, pruned = measure(t, [a, b], (1, 8, 8), Protocol(warmup=1, repeats=4, sessions=5))
    assert t.built == ["base", "pruned"] * 5  # fresh runners every session, interleaved
    assert pruned.sessions_ms == [2.0, 1.0, 1.0, 2.0, 1.0] and pruned.median_ms == 1.0
    assert base.median_ms / pruned.median_ms == 4.0
    assert len(pruned.samples_ms) == 20 and pruned.repeats == 20
    assert pruned.iqr_ms == 1.0  # the spread between the sessions shows in the pooled IQR
    assert compare(base, pruned)["verdict"] == "b faster"
    one = measure(_ModalTarget(modes), [a, b], (1, 8, 8), Protocol(warmup=1, repeats=4))
    assert one[1].median_ms == 2.0 and one[1].sessions_ms == []  # the first session's mode
    assert "sessions_ms" in pruned.to_json()
    most_slow = {"base": [4.0] * 5, "pruned": [2.0, 2.0, 1.0, 2.0, 1.0]}
    _, pruned = measure(_ModalTarget(most_slow), [a, b], (1, 8, 8),
                        Protocol(warmup=1, repeats=4, sessions=5))
    assert pruned.median_ms == 1.0  # a median of the sessions would say 2.0


def test_protocol_sessions_validated():
    for bad in (0, -1, 1.5):
        with pytest.raises(PrunelabError, match="sessions >= 1"):
            Protocol(sessions=bad)
    assert Protocol(sessions=3).to_json()["sessions"] == 3
