"""The predictor: calibration fit, metrics, sampling, and small real end-to-end runs of
`prunelab latency build|validate|profile|steps` on ONNX Runtime."""

import json
import subprocess
import sys

import pytest

from prunelab.cli import main
from prunelab.latency.predictor import Predictor, StagedPredictor, mape, sample_keeps, spearman
from prunelab.latency.lut import LUT

ort = pytest.importorskip("onnxruntime")


def test_fit_recovers_scale_and_overhead():
    p = Predictor([], {}, LUT({}))
    p.fit([{"raw_ms": x, "measured_ms": 1.5 * x + 0.2} for x in (1.0, 2.0, 3.0, 4.0)])
    assert p.scale == pytest.approx(1.5) and p.overhead_ms == pytest.approx(0.2)
    p.fit([{"raw_ms": 2.0, "measured_ms": 2.5}])
    assert p.scale == 1.0 and p.overhead_ms == pytest.approx(0.5)


def _rows(f, n=24, seed=0):
    """Calibration rows whose per-class sums vary independently, measured as ``f(parts)``."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        parts = {"conv": rng.uniform(0.5, 2.0), "conv+add": rng.uniform(0.2, 1.5),
                 "linear": 0.01}
        rows.append({"raw_ms": sum(parts.values()), "parts": parts, "measured_ms": f(parts)})
    return rows


def test_fit_per_class_coefficients_when_they_predict_clearly_better():
    p = Predictor([], {}, LUT({}))
    p.fit(_rows(lambda q: 1.5 * q["conv"] + 0.7 * q["conv+add"] + 1.5 * q["linear"] + 0.1))
    assert p.fit_info["kind"] == "classes"
    assert p.coefs["conv"] == pytest.approx(1.5, rel=1e-3)
    assert p.coefs["conv+add"] == pytest.approx(0.7, rel=1e-3)
    assert "linear" not in p.coefs and p.scale == pytest.approx(1.5, rel=1e-3)  # tiny class
    assert p.overhead_ms == pytest.approx(0.1, abs=1e-3)
    assert p._combine({"conv": 1.0, "conv+add": 1.0, "linear": 0.0}) == pytest.approx(2.2, 1e-3)
    # one scale explains it: the simpler fit is kept
    p.fit(_rows(lambda q: 1.2 * sum(q.values()) - 0.05))
    assert p.fit_info["kind"] == "scale" and p.coefs == {}
    assert p.scale == pytest.approx(1.2) and p.overhead_ms == pytest.approx(-0.05)


def test_fit_leaves_out_a_calibration_point_hit_by_load():
    rows = _rows(lambda q: 1.2 * sum(q.values()) + 0.1)
    rows[3]["measured_ms"] *= 2.5             # a burst of load on a shared machine
    p = Predictor([], {}, LUT({}))
    p.fit(rows)
    assert [r["outlier"] for r in p.calibration].count(True) == 1
    assert p.calibration[3]["outlier"] and p.fit_info["outliers"] == 1
    assert p.scale == pytest.approx(1.2) and p.overhead_ms == pytest.approx(0.1)
    back = Predictor.from_json(p.to_json())
    assert (back.scale, back.coefs, back.fit_info) == (p.scale, p.coefs, p.fit_info)


def test_metrics():
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1)
    assert mape([2.0, 4.0], [2.2, 3.6]) == pytest.approx(0.1)


def test_samples_are_seeded_and_in_range():
    w = {"a": 16, "b": 64}
    s = sample_keeps(w, 20, seed=3)
    assert s == sample_keeps(w, 20, seed=3) and s != sample_keeps(w, 20, seed=4)
    assert all(1 <= k[g] <= w[g] for k in s for g in w)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny ResNet (width 0.5) folder and a cache holding its ONNX Runtime table."""
    import torch

    from prunelab.io import ModelSpec, save_model
    from prunelab.models import build

    d = tmp_path_factory.mktemp("lat")
    torch.manual_seed(0)
    m = build("resnet20", in_channels=1, num_classes=4, width=0.5)
    folder = save_model(m, ModelSpec.for_zoo("resnet20", 1, 4, 0.5), d / "tiny")
    return str(folder), str(d / "cache")


QUICK = ["--sweep", "6", "--nodes", "3", "--lut-repeats", "5", "--calibrate", "2"]


def _run(capsys, *argv):
    argv = list(argv)
    if argv[1] in ("validate", "build", "steps"):
        argv += QUICK
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_validate_json_contract(built, capsys):
    folder, cache = built
    r = _run(capsys, "latency", "validate", folder, "--target", "onnxruntime-cpu", "--samples",
             "5", "--cache-dir", cache, "--json")
    assert r["target"] == "onnxruntime-cpu" and r["samples"] == 5
    assert 0 <= r["mape"] < 5 and -1 <= r["spearman"] <= 1
    assert (r["batch_size"], r["threads"]) == (1, 1) and "rows" not in r
    assert r["resized_equals_pruned"] is True  # the timed variants are what pruning makes
    # second run: the table and the measured models come from the cache
    again = _run(capsys, "latency", "validate", folder, "--target", "onnxruntime-cpu",
                 "--samples", "5", "--cache-dir", cache, "--json")
    assert again["mape"] == r["mape"] and again["lut_seconds"] == r["lut_seconds"]


def test_build_steps_and_profile(built, capsys, tmp_path):
    folder, cache = built
    b = _run(capsys, "latency", "build", folder, "--target", "onnxruntime-cpu", "--cache-dir",
             cache, "--json")
    assert b["signatures"] == len(b["tables"]) and b["predicted_ms"] > 0
    s = _run(capsys, "latency", "steps", folder, "--target", "onnxruntime-cpu", "--cache-dir",
             cache, "--json")
    for g in s["groups"]:
        assert g["step"] >= 1 and g["useful_widths"] == sorted(g["useful_widths"])
        assert g["useful_widths"][-1] == g["width"]
    png = tmp_path / "p.png"
    p = _run(capsys, "latency", "profile", folder, "--target", "onnxruntime-cpu", "--cache-dir",
             cache, "--repeats", "5", "--plot", str(png), "--json")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(p["layers"]) == 22 and p["macs"] > sum(x["macs"] for x in p["layers"]) * 0.9
    assert p["other_ms"] == pytest.approx(p["latency_ms"] - p["layers_sum_ms"])


def test_cli_errors_are_one_line(built, capsys):
    folder, cache = built
    assert main(["latency", "validate", folder, "--threads", "0", "--cache-dir", cache]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threads" in err


def test_targets_command_and_lean_parser():
    code = ("import sys; from prunelab.cli import build_parser; build_parser(); "
            "bad=[m for m in ('onnxruntime','openvino','onnx') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "prunelab.cli", "targets", "--json"],
                       capture_output=True, text=True)
    names = {t["name"]: t for t in json.loads(r.stdout)}
    assert names["onnxruntime-cpu"]["available"] and "torch-cuda" in names


def test_compare_interleaves_and_gives_a_verdict(built, capsys):
    folder, _ = built
    r = _run(capsys, "latency", "compare", folder, folder, "--target", "torch-cpu", "--repeats",
             "5", "--sessions", "2", "--processes", "0", "--json")
    a, b = r["models"]
    v = b["vs_first"]  # the paired interval of the speed-up (two copies: around 1)
    assert v["low"] <= v["estimate"] <= v["high"] and v["paired"]["samples"] and \
        v["paired"]["processes"] == 0 and "low" not in a["vs_first"]
    assert a["latency"]["repeats"] == b["latency"]["repeats"] == 10  # 5 in each of 2 sessions
    assert len(a["latency"]["sessions_ms"]) == 2
    assert a["vs_first"]["speedup"] == 1.0 and a["vs_first"]["verdict"] == "within noise"
    assert b["vs_first"]["verdict"] in ("within noise", "a faster", "b faster")
    assert main(["latency", "compare", folder, folder, "--sessions", "0"]) == 2
    assert "sessions >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_predictor_tracks_onnxruntime_on_a_full_resnet20(tmp_path):
    """The real thing at small scale: default table, 12 random pruned ResNet-20s on ONNX Runtime.
    Loose bounds: CI shares its cores, and 12 samples under load gave Spearman 0.75 there. A
    predictor that ignored widths would score about 0; docs/latency.md reports the 50-sample figures."""
    import torch

    from prunelab.io import ModelSpec, save_model
    from prunelab.commands import latency as api
    from prunelab.models import build
    from prunelab.targets import TargetConfig

    torch.manual_seed(0)
    folder = save_model(build("resnet20", in_channels=1, num_classes=10),
                        ModelSpec.for_zoo("resnet20", 1, 10), tmp_path / "r20")
    r = api.validate(str(folder), TargetConfig("onnxruntime-cpu"), samples=12,
                     cache_dir=str(tmp_path / "cache"))
    assert r["resized_equals_pruned"] is True
    assert r["mape"] < 0.25 and r["spearman"] > 0.5, (r["mape"], r["spearman"])


def _meter(tmp_path):
    import torch

    from prunelab.io import ModelSpec
    from prunelab.latency import predictor as P
    from prunelab.latency.cache import Cache
    from prunelab.models import build
    from prunelab.pruning import prunable_groups
    from prunelab.targets import TargetConfig, make_target

    torch.manual_seed(0)
    model = build("resnet20", in_channels=1, num_classes=4, width=0.5).eval()
    spec = ModelSpec.for_zoo("resnet20", 1, 4, 0.5)
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    target = make_target(TargetConfig("torch-cpu"))
    return P.ModelMeter(target, Cache(target.fingerprint(), tmp_path), model, spec, groups,
                        P.extract_units(model, spec.input_shape, groups)), groups


def test_a_model_timing_taken_during_a_load_burst_is_taken_again(tmp_path, monkeypatch):
    """Real model and target; the timings are scripted: a try where the unpruned model's runs
    spread by 40% of their median is taken again, the steadiest kept, in the cache, and the
    pruned model's figure is the unpruned one's base figure times their interleaved ratio."""
    from prunelab.latency import predictor as P
    from prunelab.metrics import Timing

    script = iter([[(2.0, 0.02)],                     # the unpruned model alone: its base figure
                   [(3.0, 1.2), (1.0, 0.05)],         # unpruned | pruned, interleaved: noisy
                   [(2.2, 0.04), (1.1, 0.02)],        # steady: ratio 0.5
                   [(9.0, 0.0), (9.0, 0.0)]])
    calls = []

    def fake(target, runners, protocol):
        calls.append(len(runners))
        return [Timing(target.name, 1, 1, 3, 0, med, iqr, [med] * 3) for med, iqr in next(script)]

    monkeypatch.setattr(P, "time_runners", fake)
    monkeypatch.setattr(P, "RETRY_PAUSE_S", 0.0)
    meter, groups = _meter(tmp_path)
    keep = {groups[0].name: 2}
    hit = meter(keep)
    assert calls == [1, 2, 2] and hit["attempts"] == 2
    assert hit["median_ms"] == pytest.approx(2.0 * 1.1 / 2.2)
    assert hit["raw_median_ms"] == 1.1 and hit["reference_slowdown"] == pytest.approx(1.1)
    assert meter(keep) == hit and meter({})["median_ms"] == 2.0 and len(calls) == 3  # cached


def test_a_pruned_model_is_timed_for_real_beside_the_unpruned_one(tmp_path, monkeypatch):
    """Real timings on torch: the record holds both raw figures of the interleaved run and
    reports the pruned model at the unpruned model's base figure times their ratio."""
    from prunelab.latency import predictor as P

    monkeypatch.setattr(P, "NOISY", 1e9)  # a loaded test machine may spread any real timing
    meter, groups = _meter(tmp_path)
    base = meter({})
    assert base["median_ms"] > 0 and base["reference_slowdown"] == 1.0
    hit = meter({groups[0].name: 2})
    assert hit["raw_median_ms"] > 0 and hit["reference_ms"] > 0 and hit["repeats"] == 30
    assert hit["median_ms"] == pytest.approx(base["median_ms"] * hit["raw_median_ms"]
                                             / hit["reference_ms"])
    assert hit["reference_slowdown"] == pytest.approx(hit["reference_ms"] / base["median_ms"])


def _staged(tmp_path, switch):
    """A StagedPredictor of tiny_resnet on the exact scripted target's table: int8 costs 0.3x
    the table, fp32 the table plus ``switch`` per stage (negative: fp32 pays at narrow widths,
    as int8 stops paying there)."""
    import torch

    from prunelab.latency.cache import Cache
    from prunelab.latency.lut import build_lut
    from prunelab.latency.predictor import unit_stages
    from prunelab.latency.units import extract_units
    from prunelab.pruning import prunable_groups
    from prunelab.targets import make_target
    from tests.conftest import tiny_resnet

    torch.manual_seed(0)
    net = tiny_resnet()
    _, groups = prunable_groups(net, (1, 16, 16), num_classes=4)
    units = extract_units(net, (1, 16, 16), groups)
    target = make_target("scripted")
    lut = build_lut(target, units, Cache(target.fingerprint(), tmp_path))
    widths = {g.name: g.width for g in groups}
    stages, hw = unit_stages(units)
    return StagedPredictor(units, widths, lut, int8=Predictor(units, widths, lut, scale=0.3),
                           fp32=Predictor(units, widths, lut), stages=stages, stage_hw=hw,
                           switch=list(switch))


def test_a_staged_prediction_takes_each_stage_in_its_cheaper_precision(tmp_path):
    p = _staged(tmp_path, [0.0] * 4)
    assert len(p.stage_hw) == 4 and p.stage_hw[-1] == ()           # 3 resolutions + classifier
    assert p.precisions({}) == ["int8"] * 4
    assert p.unanchored({}) == pytest.approx(p.int8.unanchored({}))
    narrow = {g: 1 for g in p.widths}
    # an fp32 offset on the last resolution stage that makes fp32 the cheaper there at one
    # channel per group, not at full width (int8 is 0.3x the table: the offset lies between
    # -0.7x the stage's two table sums; the scripted table rounds channels up to 8s, so only
    # the 32-channel stage gets cheaper as it narrows)
    full, thin = p._stage_costs(p._shapes({}))[2][1], p._stage_costs(p._shapes(narrow))[2][1]
    assert thin < full
    q = _staged(tmp_path, [0.0, 0.0, -0.7 * (full + thin) / 2, 0.0])
    assert q.precisions(narrow) == ["int8", "int8", "fp32", "int8"]
    assert q.precisions({}) == ["int8"] * 4
    costs = q._stage_costs(q._shapes(narrow))
    assert q.raw_ms(narrow) == pytest.approx(sum(min(a, b) for a, b in costs))
    assert q.raw_ms(narrow) < p.raw_ms(narrow)
    # one group narrowed alone is a width the whole-graph curve may not show: the useful widths
    # hold the int8 and the fp32 tables' own too
    g = next(iter(q.widths))
    assert set(Predictor.useful_widths(q.fp32, g)) <= set(q.useful_widths(g))
    assert q.group_curve(g)[q.widths[g]] == pytest.approx(q.unanchored({}))
    back = Predictor.from_json(json.loads(json.dumps(q.to_json())))
    assert isinstance(back, StagedPredictor)
    assert back.switch == q.switch and back.stages == q.stages
    assert back.unanchored(narrow) == pytest.approx(q.unanchored(narrow))


def test_the_stage_switches_are_fitted_on_the_runtime_own_trials(tmp_path):
    """Calibration rows measured on a 'truth' (known switches, scale and overhead), each with
    the per-stage trials the runtime's fast decision reports (the whole graph's relative change
    with the stage in fp32): the fit recovers the switches and predicts the truth."""
    from prunelab.latency.predictor import _fit_staged

    truth = _staged(tmp_path, [-0.02, 0.01, 0.0, 0.005])
    truth.scale, truth.overhead_ms = 1.2, 0.1
    rows = []
    for keep in [{}] + sample_keeps(truth.widths, 14, seed=3, lo=0.1):
        ms = truth.unanchored(keep)
        costs = truth._stage_costs(truth._shapes(keep))
        rows.append({"keep": keep, "measured_ms": ms,
                     "switch_measured": {s: truth.scale * (b - a) / ms
                                         for s, (a, b) in enumerate(costs)}})
    fit = _staged(tmp_path, [0.0] * 4)
    _fit_staged(fit, rows)
    assert fit.switch == pytest.approx(truth.switch, abs=1e-9)
    assert fit.scale == pytest.approx(1.2) and fit.overhead_ms == pytest.approx(0.1)
    assert fit.fit_info["switch_points"] == [15] * 4
    for keep in sample_keeps(truth.widths, 5, seed=9, lo=0.1):
        assert fit.unanchored(keep) == pytest.approx(truth.unanchored(keep))
        assert fit.precisions(keep) == truth.precisions(keep)
