"""Library calls behind ``prunelab targets`` and ``prunelab latency ...`` (one call per command).

    >>> from prunelab.commands import latency                                # doctest: +SKIP
    >>> latency.validate("resnet56.fmnist", TargetConfig("onnxruntime-cpu"), samples=50)["mape"]  # doctest: +SKIP
    0.03...
"""

from __future__ import annotations

import time
from typing import Callable

from ..errors import PrunelabError
from ..targets import TargetConfig, make_target, target_table
from ..latency.cache import Cache
from ..latency.lut import LutConfig
from ..latency.measure import Protocol, compare, measure
from ..latency.predictor import (CALIBRATE, MODEL_PROTOCOL, ModelMeter, build_predictor, mape,
                        sample_keeps, spearman)
from ..latency.steps import step_of

Say = Callable[[str], None]


def targets() -> list[dict]:
    """Registered targets, their runtime and device, and whether each is usable here."""
    return target_table()


def _load(ref):
    """``ref``: a shipped name or model folder, or an opened ``(model, spec)`` pair (the CLI
    resolves its model options once, see :func:`prunelab.cli.common.open_model`)."""
    if isinstance(ref, tuple):
        return ref
    if str(ref).endswith(".onnx"):  # an ONNX file, timed as it is (e.g. an int8 export)
        from types import SimpleNamespace

        from ..quant import read_graph

        g = read_graph(ref)
        return g, SimpleNamespace(name=g.name, input_shape=g.meta["input_shape"][1:])
    from . import load

    return load(ref)


def _setup(ref: str, cfg: TargetConfig, cache_dir: str | None):
    model, spec = _load(ref)
    target = make_target(cfg)
    cache = Cache(target.fingerprint(), cache_dir)
    return model, spec, target, cache


def build(ref: str, cfg: TargetConfig, cache_dir: str | None = None, calibrate: int = CALIBRATE,
          say: Say | None = None, lut: LutConfig = LutConfig()) -> dict:
    """Measure the per-layer lookup table of a model on a target and calibrate its predictor.

    Cached under the device fingerprint: a second call (or another model with the same layer
    shapes) reuses every figure measured on this machine with this runtime and settings.
    """
    model, spec, target, cache = _setup(ref, cfg, cache_dir)
    t0 = time.perf_counter()
    pred, info = build_predictor(model, spec, target, cache, calibrate, progress=say, lut_cfg=lut)
    tables = [{"signature": t.sig, "step_in": t.step_in, "step_out": t.step_out,
               "nodes_in": t.nodes_in, "nodes_out": t.nodes_out,
               "sweep_out": t.sweep_out, "sweep_in": t.sweep_in}
              for t in pred.lut.tables.values()]
    return {"model": spec.name, "target": cfg.target, **cfg.to_json(), "fingerprint": cache.id,
            "cache": str(cache.dir), "seconds": time.perf_counter() - t0, **info,
            "scale": pred.scale, "overhead_ms": pred.overhead_ms, "coefs": pred.coefs,
            "fit": pred.fit_info, "predicted_ms": pred.predict({}), "tables": tables}


def validate(ref: str, cfg: TargetConfig, samples: int = 50, seed: int = 0,
             cache_dir: str | None = None, calibrate: int = CALIBRATE, say: Say | None = None,
             lut: LutConfig = LutConfig()) -> dict:
    """Predicted vs measured latency on random per-layer widths: MAPE and Spearman correlation.

    Widths come from ``seed`` (the calibration uses its own), each sample is pruned for real,
    run on the target (median of 30 runs after 10 warm-up) and compared with the prediction.
    """
    if samples < 2:
        raise PrunelabError("validation needs at least 2 samples; use --samples 50")
    say = say or (lambda s: None)
    model, spec, target, cache = _setup(ref, cfg, cache_dir)
    t0 = time.perf_counter()
    pred, info = build_predictor(model, spec, target, cache, calibrate, progress=say, lut_cfg=lut)
    from ..pruning import prunable_groups

    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    meter = ModelMeter(target, cache, model, spec, groups, pred.units)
    rows = []
    for i, keep in enumerate(sample_keeps(pred.widths, samples, seed)):
        say(f"sample {i + 1}/{samples}")
        m = meter(keep)
        rows.append({"keep": keep, "predicted_ms": pred.predict(keep),
                     "measured_ms": m["median_ms"], "iqr_ms": m["iqr_ms"],
                     "attempts": m.get("attempts", 1),
                     "reference_slowdown": m.get("reference_slowdown")})
    meas = [r["measured_ms"] for r in rows]
    prd = [r["predicted_ms"] for r in rows]
    noise = sorted(r["iqr_ms"] / r["measured_ms"] for r in rows)[len(rows) // 2]
    return {"model": spec.name, "target": cfg.target, "samples": samples, "mape": mape(meas, prd),
            "spearman": spearman(meas, prd), "batch_size": cfg.batch_size,
            "threads": cfg.threads, "precision": cfg.precision, "seed": seed,
            "median_rel_iqr": noise, "resized_equals_pruned": meter.exact, "measured_range_ms": [min(meas), max(meas)],
            "protocol": MODEL_PROTOCOL.to_json(), "fingerprint": cache.id,
            "lut_seconds": info["lut_seconds"], "lut_points_measured": info["lut_points_measured"],
            "lut": lut.to_json(),
            "calibration": {"points": calibrate + 1, "scale": pred.scale,
                            "overhead_ms": pred.overhead_ms, "fit": pred.fit_info.get("kind"),
                            "weight_ms_per_m": pred.weight_ms,
                            "reorder_ms_per_k": pred.reorder_ms, "layout": list(pred.layout),
                            "coefs": pred.coefs, "outliers": pred.fit_info.get("outliers", 0)},
            "seconds": time.perf_counter() - t0, "rows": rows}


def steps(ref: str, cfg: TargetConfig, cache_dir: str | None = None, say: Say | None = None,
          calibrate: int = CALIBRATE, lut: LutConfig = LutConfig()) -> dict:
    """Per pruning group: the widths worth trying (each faster than every wider one) and the
    channel step between them, read from the lookup table with the other groups whole."""
    model, spec, target, cache = _setup(ref, cfg, cache_dir)
    pred, _ = build_predictor(model, spec, target, cache, calibrate, progress=say, lut_cfg=lut)
    out = []
    for g, w in pred.widths.items():
        curve = pred.group_curve(g)
        useful = pred.useful_widths(g)
        out.append({"group": g, "width": w, "step": step_of(useful), "useful_widths": useful,
                    "ms_full": curve[w], "ms_min": curve[1]})
    return {"model": spec.name, "target": cfg.target, **cfg.to_json(), "groups": out}


def profile(ref: str, cfg: TargetConfig, cache_dir: str | None = None,
            protocol: Protocol = Protocol(), plot: str | None = None,
            say: Say | None = None) -> dict:
    """Where the time goes: each layer (with its fused BN/activation/add) timed alone on the
    target, its MACs, and the whole model measured, with the remainder shown as "other"."""
    from ..metrics import macs_params
    from ..latency.lut import PointMeter
    from ..latency.units import extract_units

    from ..pruning import prunable_groups

    model, spec, target, cache = _setup(ref, cfg, cache_dir)
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    units = extract_units(model, spec.input_shape, groups)
    meter = PointMeter(target, cache, Protocol(warmup=5, repeats=30))
    layers = []
    for i, u in enumerate(units):
        say and say(f"layer {i + 1}/{len(units)}")
        ms = meter(u, u.cin, u.cout)
        fused = "+".join(x for x in (("bn" if u.bn else ""), ("add" if u.add else ""), u.act) if x)
        layers.append({"layer": u.name, "kind": u.kind, "cin": u.cin, "cout": u.cout, "k": u.k,
                       "stride": u.stride, "hw": [u.h, u.w], "fused": fused, "macs": u.macs(),
                       "ms": ms})
    cache.flush()
    whole = measure(target, [model], spec.input_shape, protocol)[0]
    macs, params = macs_params(model, spec.input_shape)
    total = sum(r["ms"] for r in layers)
    for r in layers:
        r["share"] = r["ms"] / total if total else 0.0
    res = {"model": spec.name, "target": cfg.target, **cfg.to_json(), "macs": macs,
           "params": params, "latency_ms": whole.median_ms, "latency": whole.to_json(),
           "layers_sum_ms": total, "other_ms": whole.median_ms - total, "layers": layers}
    if plot:
        from ..latency.plot import bar_chart

        bar_chart(res, plot)
        res["plot"] = plot
    return res


def compare_models(refs: list, cfg: TargetConfig, protocol: Protocol = Protocol(),
                   processes: int = 6, seed: int = 0) -> dict:
    """Two or more models timed interleaved on one target, with a noise verdict for each vs the
    first, and each one's speed-up over the first with a 95% interval: paired ABBA sessions in
    ``processes`` fresh processes (0: ``sessions`` in this process), see
    :func:`prunelab.latency.paired.paired_speedup`."""
    from ..metrics import macs_params
    from ..latency.paired import interval_verdict, paired_speedup
    from ..targets._onnx import Graph

    loaded = [_load(r) for r in refs]
    target = make_target(cfg)
    shape = loaded[0][1].input_shape
    ts = measure(target, [m for m, _ in loaded], shape, protocol)
    rows = []
    for i, ((m, s), t) in enumerate(zip(loaded, ts)):
        vs = compare(ts[0], t)
        if i:
            e = paired_speedup(loaded[0][0], m, target, shape, protocol, processes, seed)
            vs.update(paired=e.to_json(), estimate=e.estimate, low=e.low, high=e.high,
                      level=e.level, verdict=interval_verdict(e.low, e.high))
        rows.append({"model": s.name, "macs": None if isinstance(m, Graph) else
                     macs_params(m, s.input_shape)[0],
                     "latency_ms": t.median_ms, "latency": t.to_json(), "vs_first": vs})
    return {"target": cfg.target, **cfg.to_json(), "processes": processes, "models": rows}
