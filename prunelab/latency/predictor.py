"""Whole-model latency from the lookup table: the units' table latencies (net of the runtime's
per-call cost, see :mod:`.lut`), weighted and offset by a per-model calibration fitted on measured
pruned variants drawn like the validation samples:

* ``ms = scale * sum + overhead`` (one scale), or
* ``ms = sum_k coef_k * sum_k + overhead`` with one non-negative coefficient per unit class
  (conv, conv with a fused residual add, depthwise conv, linear; non-negative least squares),

the second only when it predicts the calibration points clearly better under leave-one-out (on a
noisy machine the simpler fit wins).  A third candidate adds what a unit timed alone, again and
again, does not pay:

* ``weight_ms`` per million weights: alone, a unit's weights stay in cache from one run to the
  next; in a network every layer's weights compete for it (VGG-16's 15 M weights do not fit
  a 32 MB L3), so the weights are read again each inference;
* minus ``reorder_ms`` per thousand tensor elements whose layout reorder the network skips and the
  stand-alone units paid, on a runtime that picks a blocked layout per conv (ONNX Runtime, see
  :mod:`.layout`); a third of the calibration variants are then drawn on the layout's channel
  multiples, as a search on the target's useful widths picks them.

It is kept unless its leave-one-out error is higher than one scale's.  The overhead holds what the
units leave out (pooling, the classifier's reshape, the whole model's own call); the scale or the
class coefficients the rest of the difference between a unit timed alone and inside a network
(fused boundaries), which need not be the same for every kind of unit.  Calibration points whose residual stands far out of the others (a measurement hit by
load on a shared machine) are left out of the fit and flagged.

    >>> from prunelab.latency.predictor import spearman, mape
    >>> round(spearman([1, 2, 3, 4], [10, 20, 40, 30]), 6)
    0.8
    >>> round(mape([1.0, 2.0], [1.1, 1.8]), 3)
    0.1
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch.nn as nn

from ..errors import PrunelabError
from ..io import layer_widths
from .cache import Cache
from .layout import elided, elided_units
from .lut import LUT, LutConfig, build_lut
from .measure import Protocol, time_runners
from .units import Unit, extract_units, unit_links, unit_shapes

MODEL_PROTOCOL = Protocol(warmup=10, repeats=30)
CALIBRATE = 40          # pruned variants measured per model to fit the calibration
FORMULA_CALIBRATE = 6   # ... on a formula target (its units are exact: only the fit's overhead)
STAGED_CALIBRATE = 12   # whole models measured to fit a StagedPredictor's scale and overhead
CLASS_GAIN = 0.15       # per-class coefficients must cut the leave-one-out error by this much
PREDICTOR_VERSION = 8   # part of the predictor cache key: bump when a stored figure changes meaning


def unit_class(u: Unit) -> str:
    """The calibration class of a unit: its kind, and whether a residual add is fused in."""
    return u.kind + ("+add" if u.add else "")


def nnls(a, b):
    """Non-negative least squares ``min |a x - b|, x >= 0`` (scipy's Lawson-Hanson).

    >>> [round(float(v), 6) for v in nnls([[1, 0], [0, 1], [1, 1]], [2, -1, 1])]
    [1.5, 0.0]
    """
    import numpy as np
    from scipy.optimize import nnls as _nnls

    return _nnls(np.asarray(a, float), np.asarray(b, float))[0]


@dataclass
class Predictor:
    units: list[Unit]
    widths: dict[str, int]          # group name -> full width
    lut: LUT
    scale: float = 1.0
    overhead_ms: float = 0.0
    calibration: list[dict] = field(default_factory=list)
    coefs: dict[str, float] = field(default_factory=dict)  # per unit class; empty: one scale
    fit_info: dict = field(default_factory=dict)
    links: list = field(default_factory=list)       # see units.unit_links
    layout: tuple = (0, 0)                          # the target's (block, alignment)
    reorder_ms: float = 0.0                         # per thousand elided reorder elements
    weight_ms: float = 0.0                          # per million weights
    anchor: dict = field(default_factory=dict)      # see anchor_predictor: a run's own figures

    def _shapes(self, keep: dict[str, int] | None) -> list[tuple[int, int]]:
        return unit_shapes(self.units, self.widths, keep or {})

    def weights(self, keep: dict[str, int] | None = None, shapes=None) -> float:
        """Millions of conv / linear weights with groups pruned to ``keep``."""
        shapes = shapes or self._shapes(keep)
        return sum((1 if u.kind == "dwconv" else ci) * co * u.k * u.k
                   for u, (ci, co) in zip(self.units, shapes)) / 1e6

    def elided(self, keep: dict[str, int] | None = None, shapes=None) -> float:
        """Thousands of tensor elements whose layout reorder the network skips (see
        :mod:`.layout`)."""
        if not self.layout[0]:
            return 0.0
        return elided(self.units, shapes or self._shapes(keep), self.links, self.layout)

    def unit_ms(self, keep: dict[str, int] | None = None, shapes=None) -> list[float]:
        shapes = shapes or self._shapes(keep)
        return [self.lut.unit_ms(u, ci, co) for u, (ci, co) in zip(self.units, shapes)]

    def raw_ms(self, keep: dict[str, int] | None = None) -> float:
        return sum(self.unit_ms(keep))

    def parts(self, keep: dict[str, int] | None = None, shapes=None) -> dict[str, float]:
        """Summed table latency per unit class (see :func:`unit_class`)."""
        out: dict[str, float] = {}
        for u, ms in zip(self.units, self.unit_ms(keep, shapes)):
            out[unit_class(u)] = out.get(unit_class(u), 0.0) + ms
        return out

    def _combine(self, parts: dict[str, float]) -> float:
        if self.coefs:
            return sum(self.coefs.get(k, self.scale) * v for k, v in parts.items())
        return self.scale * sum(parts.values())

    def predict(self, keep: dict[str, int] | None = None) -> float:
        """Predicted whole-model latency (ms per batch) with groups pruned to ``keep`` (with an
        :attr:`anchor`: the measured unpruned figure for the unpruned model, the anchored line
        for every pruned one)."""
        if self.anchor:
            if all((keep or {}).get(g, w) >= w for g, w in self.widths.items()):
                return self.anchor["base_ms"]
            return self.anchor["offset_ms"] + self.anchor["scale"] * self.unanchored(keep)
        return self.unanchored(keep)

    def unanchored(self, keep: dict[str, int] | None = None) -> float:
        """The table's calibrated prediction, without the run's anchor."""
        shapes = self._shapes(keep)  # once: a search asks for thousands of predictions
        ms = self._combine(self.parts(shapes=shapes)) + self.overhead_ms
        if self.weight_ms:
            ms += self.weight_ms * self.weights(shapes=shapes)
        if self.reorder_ms:
            ms -= self.reorder_ms * self.elided(shapes=shapes)
        return ms

    def group_curve(self, group: str, base: dict[str, int] | None = None) -> dict[int, float]:
        """Predicted latency for every width of one group, the others as in ``base`` (the table's
        shape, without the run's anchor: where a group's stairs are does not depend on it, and
        the anchor's measured unpruned figure would make every width just below full look
        slower than full)."""
        base = dict(base or {})
        top = self.widths[group]
        if self.reorder_ms:  # the layout term couples units through their links: every unit
            return {w: self.unanchored({**base, group: w}) for w in range(1, top + 1)}
        # every other term is a sum over units: only the units whose shape the group changes
        # are looked up again (a real architecture has thousands of widths times its units)
        lo, hi = self._shapes({**base, group: 1}), self._shapes({**base, group: top})
        moved = [i for i, (a, b) in enumerate(zip(lo, hi)) if a != b]
        full = self.unanchored({**base, group: top})

        def part(shapes) -> float:
            return sum(self._unit_cost(i, *shapes[i]) for i in moved)

        ref = part(hi)
        return {w: full - ref + part(self._shapes({**base, group: w})) if w < top else full
                for w in range(1, top + 1)}

    def useful_widths(self, group: str, base: dict[str, int] | None = None,
                      rel: float = 0.01) -> list[int]:
        """The widths of ``group`` worth trying, the others as in ``base``: each faster than
        every wider one on :meth:`group_curve` (:func:`prunelab.latency.steps.useful_widths`)."""
        from .steps import useful_widths

        return sorted(useful_widths(self.group_curve(group, base), rel=rel))

    def _unit_cost(self, i: int, ci: int, co: int) -> float:
        """Unit ``i``'s share of :meth:`unanchored` at (ci, co) (without the layout term)."""
        u = self.units[i]
        k = unit_class(u)
        ms = (self.coefs.get(k, self.scale) if self.coefs else self.scale) * \
            self.lut.unit_ms(u, ci, co)
        if self.weight_ms:
            ms += self.weight_ms * (1 if u.kind == "dwconv" else ci) * co * u.k * u.k / 1e6
        return ms

    def fit(self, rows: Sequence[dict]) -> None:
        """Fit the calibration on ``rows`` ({"raw_ms", "measured_ms"[, "parts"]}).

        Candidates: one scale (least squares, clamped to [0.5, 2]; only an overhead when the
        points do not spread); when rows carry per-class ``parts`` and there are enough of them,
        one non-negative coefficient per class, kept only when its leave-one-out error is clearly
        lower (by ``CLASS_GAIN``) and every coefficient is in [0.5, 2]; and when rows carry
        ``weights`` / ``elided``, the scale plus those terms (:func:`_fit_terms`), kept unless
        its leave-one-out error is higher.  Points whose relative residual under the one-scale
        fit is far out of the others (3 robust sigmas, at least 10%) are left out first (at most
        a quarter of them)."""
        rows = [dict(r) for r in rows]
        for r in rows:
            r.pop("outlier", None)
        use = _drop_outliers(rows)
        for i, r in enumerate(rows):
            r["outlier"] = i not in use
        fitted = [rows[i] for i in use]
        cands = {"scale": _fit_scale}
        if len(fitted) >= 8 and any(r.get("elided") or r.get("weights") for r in fitted):
            cands["terms"] = _fit_terms
        classes = _classes(fitted)
        if len(classes) > 1 and all("parts" in r for r in fitted) \
                and len(fitted) >= 3 * (len(classes) + 1):
            cands["classes"] = lambda rs: _fit_classes(rs, classes)
        loo = {name: _loo(f, fitted) for name, f in cands.items()}
        best = "scale"
        if "classes" in cands and loo["classes"] < (1 - CLASS_GAIN) * loo["scale"]:
            coefs = cands["classes"](fitted)[2]
            if all(0.5 <= v <= 2.0 for v in coefs.values()):  # as plausible as one scale
                best = "classes"
        if "terms" in cands and loo["terms"] <= loo[best]:
            best = "terms"
        self.scale, self.overhead_ms, self.coefs, self.reorder_ms, self.weight_ms = \
            cands[best](fitted)
        self.calibration = rows
        self.fit_info = {"kind": best, "loo_mape": loo, "points": len(rows),
                         "outliers": len(rows) - len(fitted)}

    def to_json(self) -> dict:
        return {"units": [u.to_json() for u in self.units], "widths": self.widths,
                "lut": self.lut.to_json(), "scale": self.scale, "overhead_ms": self.overhead_ms,
                "calibration": self.calibration, "coefs": self.coefs, "fit": self.fit_info,
                "links": self.links, "layout": list(self.layout), "reorder_ms": self.reorder_ms,
                "weight_ms": self.weight_ms, "anchor": self.anchor}

    @classmethod
    def from_json(cls, d: dict) -> "Predictor":
        if "staged" in d:
            return StagedPredictor.from_json(d)
        return cls([Unit(**u) for u in d["units"]], d["widths"], LUT.from_json(d["lut"]),
                   d["scale"], d["overhead_ms"], d["calibration"], d["coefs"], d["fit"],
                   d.get("links", []), tuple(d.get("layout", (0, 0))), d.get("reorder_ms", 0.0),
                   d.get("weight_ms", 0.0), d.get("anchor") or {})


def unit_stages(units: Sequence[Unit]) -> tuple[list[int], list[tuple]]:
    """Each unit's resolution stage, as ``int8_layers="fast"`` groups a graph's nodes
    (:func:`prunelab.quant.resolution_stages`): stages numbered by the first unit whose output
    has that spatial size, the classifier (linear units) one stage after them all; and each
    stage's (H, W) (the classifier's: ``()``).

    >>> unit_stages([Unit("a", "conv", 3, 8, 3, 1, 1, 8, 8), Unit("b", "conv", 8, 8, 3, 2, 1, 8, 8),
    ...              Unit("c", "conv", 8, 8, 3, 1, 1, 4, 4), Unit("d", "linear", 8, 10)])
    ([0, 1, 1, 2], [(8, 8), (4, 4), ()])
    """
    order: dict = {}
    for u in units:
        if u.kind != "linear":
            order.setdefault(u.out_hw, len(order))
    stages = [len(order) if u.kind == "linear" else order[u.out_hw] for u in units]
    return stages, [*order, *([()] if len(order) in stages else [])]


@dataclass
class StagedPredictor(Predictor):
    """The latency of an int8 graph in which each resolution stage runs int8 or fp32, whichever
    is faster (``int8_layers="fast"``, :func:`prunelab.quant.fast_fp32_nodes`).

    A lookup table of pieces each timed alone, each in the cheaper precision, cannot say this:
    the runtime's choice is per stage of the whole graph, and at narrow widths an int8 stage
    stops paying (quantize/dequantize nodes, int8 kernels at few channels) while the same stage
    in fp32 keeps getting faster as it narrows.  On resnet20.fmnist (onnxruntime-cpu, AVX-512
    VNNI) such a table predicted every narrower first stage *slower* than the whole one, so a
    search at 4x kept the first stage whole and could not reach the budget
    (bench/results/int8.md).  So two predictors are built, one on the target with every
    layer int8 (``int8``) and one in fp32 (``fp32``), each calibrated on its own measured
    variants; a stage costs the cheaper of its two calibrated unit sums (each unit's share,
    :meth:`Predictor._unit_cost`, minus its skipped layout reorders), the model their sum plus
    the int8 calibration's overhead; ``scale`` and ``overhead_ms`` then fit that sum to whole
    models measured on the target itself (``STAGED_CALIBRATE`` pruned variants, each with its
    own per-stage decision).  Units timed alone pay their own quantize/dequantize nodes and the
    network does not, so the two sums do not compare as they are: each stage's ``switch`` (table
    milliseconds added to its fp32 sum) is fitted on what the runtime's own decision measured
    for that stage on the calibration models (the whole graph with the stage in fp32 against it
    in int8): the median of their differences from the table's.  (A slope per stage as well fits
    the calibration's own differences closely, correlations 0.79-0.96 and slopes 0.5-0.9 on
    resnet20.fmnist, but predicted 20 other models worse: Spearman 0.79 against 0.88.)"""

    int8: Predictor | None = None
    fp32: Predictor | None = None
    stages: list = field(default_factory=list)      # each unit's stage
    stage_hw: list = field(default_factory=list)    # each stage's (H, W); the classifier's ()
    switch: list = field(default_factory=list)      # each stage's fp32 offset (table ms)

    def _stage_costs(self, shapes) -> list[tuple[float, float]]:
        n = max(self.stages) + 1
        out = [[0.0, 0.0] for _ in range(n)]
        for j, p in enumerate((self.int8, self.fp32)):
            el = (elided_units(self.units, shapes, p.links, p.layout) if p.reorder_ms
                  else [0.0] * len(self.units))
            for i, (s, (ci, co)) in enumerate(zip(self.stages, shapes)):
                out[s][j] += p._unit_cost(i, ci, co) - p.reorder_ms * el[i]
        sw = self.switch or [0.0] * n
        return [(a, b + d) for (a, b), d in zip(out, sw)]

    def precisions(self, keep: dict[str, int] | None = None, shapes=None) -> list[str]:
        """The precision each stage is predicted to run in at ``keep``."""
        return ["int8" if a <= b else "fp32"
                for a, b in self._stage_costs(shapes or self._shapes(keep))]

    def raw_ms(self, keep: dict[str, int] | None = None) -> float:
        return (sum(min(a, b) for a, b in self._stage_costs(self._shapes(keep)))
                + self.int8.overhead_ms)

    def unit_ms(self, keep: dict[str, int] | None = None, shapes=None) -> list[float]:
        shapes = shapes or self._shapes(keep)
        cheap = self.precisions(shapes=shapes)
        return [(self.int8 if cheap[s] == "int8" else self.fp32).lut.unit_ms(u, ci, co)
                for u, s, (ci, co) in zip(self.units, self.stages, shapes)]

    def parts(self, keep: dict[str, int] | None = None, shapes=None) -> dict[str, float]:
        return {"staged": self.raw_ms(keep)}

    def elided(self, keep: dict[str, int] | None = None, shapes=None) -> float:
        return 0.0  # inside each stage's cost

    def unanchored(self, keep: dict[str, int] | None = None) -> float:
        return self.scale * self.raw_ms(keep) + self.overhead_ms

    def group_curve(self, group: str, base: dict[str, int] | None = None) -> dict[int, float]:
        base = dict(base or {})  # the per-stage minimum couples every unit of a stage
        return {w: self.unanchored({**base, group: w}) for w in range(1, self.widths[group] + 1)}

    def useful_widths(self, group: str, base: dict[str, int] | None = None,
                      rel: float = 0.01) -> list[int]:
        """The useful widths of the whole graph, with those of the all-int8 and the fp32
        predictors: narrowing one group alone rarely turns its stage to fp32 (the others keep
        the int8 stage cheaper), so the whole graph's curve alone would hide the widths that pay
        once the stage as a whole is narrowed."""
        return sorted(set().union(*(Predictor.useful_widths(p, group, base, rel)
                                    for p in (self, self.int8, self.fp32))))

    def to_json(self) -> dict:
        return {**super().to_json(), "staged": {"int8": self.int8.to_json(),
                                                "fp32": self.fp32.to_json(),
                                                "stages": list(self.stages),
                                                "stage_hw": [list(h) for h in self.stage_hw],
                                                "switch": list(self.switch)}}

    @classmethod
    def from_json(cls, d: dict) -> "StagedPredictor":
        st = d["staged"]
        p8, p32 = Predictor.from_json(st["int8"]), Predictor.from_json(st["fp32"])
        return cls(p8.units, d["widths"], p8.lut, d["scale"], d["overhead_ms"],
                   d["calibration"], {}, d["fit"], anchor=d.get("anchor") or {},
                   int8=p8, fp32=p32, stages=list(st["stages"]),
                   stage_hw=[tuple(h) for h in st["stage_hw"]], switch=list(st["switch"]))


Fit = tuple[float, float, dict, float, float]  # scale, overhead, class coefs, reorder, weight


def _fit_scale(rows: Sequence[dict]) -> Fit:
    """``measured ~ scale * raw + overhead`` by least squares on relative errors (each row
    weighted by 1/measured, as MAPE weighs them), scale clamped to [0.5, 2]."""
    xs = [r["raw_ms"] for r in rows]
    ys = [r["measured_ms"] for r in rows]
    ws = [1.0 / y ** 2 for y in ys]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs)) / sw
    my = sum(w * y for w, y in zip(ws, ys)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
    if len(rows) >= 3 and statistics.pstdev(xs) > 1e-3 * statistics.mean(xs):
        a = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx
        scale = min(2.0, max(0.5, a))
    else:
        scale = 1.0
    return scale, my - scale * mx, {}, 0.0, 0.0


def _fit_terms(rows: Sequence[dict]) -> Fit:
    """``measured ~ scale * raw + weight * weights - reorder * elided + overhead`` with scale,
    weight, reorder >= 0 (NNLS on relative errors, as :func:`_fit_classes`); one scale when the
    table's share comes out implausible (below 0.25 or above 2)."""
    import numpy as np

    a = np.array([[r["raw_ms"], r.get("weights", 0.0), -r.get("elided", 0.0), 1.0, -1.0]
                  for r in rows])
    y = np.array([r["measured_ms"] for r in rows])
    x = nnls(a / y[:, None], np.ones(len(rows)))
    if not 0.25 <= x[0] <= 2.0:
        return _fit_scale(rows)
    return float(x[0]), float(x[3] - x[4]), {}, float(x[2]), float(x[1])


def _classes(rows: Sequence[dict]) -> list[str]:
    """The unit classes worth a coefficient of their own: those holding at least 5% of the
    summed latency (a class of one tiny unit would only proxy for something else)."""
    tot: dict[str, float] = {}
    for r in rows:
        for k, v in r.get("parts", {}).items():
            tot[k] = tot.get(k, 0.0) + v
    return sorted(k for k, v in tot.items() if v >= 0.05 * sum(tot.values()))


def _fit_classes(rows: Sequence[dict], classes: list[str]) -> Fit:
    """Non-negative per-class coefficients and a free-sign overhead, on relative errors (each
    row weighted by 1/measured, so small variants count as much as big ones)."""
    import numpy as np

    main = max(classes, key=lambda k: sum(r["parts"].get(k, 0.0) for r in rows))
    # small classes (see _classes) go with the main one
    a = np.array([[r["parts"].get(k, 0.0) + (sum(v for c, v in r["parts"].items()
                                                   if c not in classes) if k == main else 0.0)
                   for k in classes] + [1.0, -1.0] for r in rows])
    y = np.array([r["measured_ms"] for r in rows])
    x = nnls(a / y[:, None], np.ones(len(rows)))
    coefs = {k: float(v) for k, v in zip(classes, x)}
    # the main coefficient stands for every class without its own (see Predictor._combine)
    return float(coefs[main]), float(x[-2] - x[-1]), coefs, 0.0, 0.0


def _predict_row(fit: Fit, r: dict) -> float:
    scale, over, coefs, reorder, weight = fit
    if coefs:
        return sum(coefs.get(k, scale) * v for k, v in r["parts"].items()) + over
    return (scale * r["raw_ms"] + over - reorder * r.get("elided", 0.0)
            + weight * r.get("weights", 0.0))


def _loo(fitter, rows: Sequence[dict]) -> float:
    """Leave-one-out mean relative error of a calibration fitter."""
    if len(rows) < 3:
        return 0.0
    errs = []
    for i, r in enumerate(rows):
        f = fitter([x for j, x in enumerate(rows) if j != i])
        errs.append(abs(_predict_row(f, r) - r["measured_ms"]) / r["measured_ms"])
    return statistics.mean(errs)


def _drop_outliers(rows: Sequence[dict]) -> list[int]:
    """Indices of the rows to fit on: all but those far out under a one-scale fit."""
    if len(rows) < 8:
        return list(range(len(rows)))
    f = _fit_scale(rows)
    res = [_predict_row(f, r) / r["measured_ms"] - 1 for r in rows]
    med = statistics.median(res)
    mad = statistics.median(abs(x - med) for x in res)
    lim = max(0.10, 3 * 1.4826 * mad)
    far = sorted((i for i, x in enumerate(res) if abs(x - med) > lim),
                 key=lambda i: -abs(res[i] - med))[: len(rows) // 4]
    return [i for i in range(len(rows)) if i not in far]


def sample_keeps(widths: dict[str, int], n: int, seed: int, lo: float = 0.3,
                 multiple: int = 1) -> list[dict]:
    """Random per-group widths: a model-wide level f ~ U(lo, 1), each group f x U(0.75, 1.25)
    clipped to [1, width], so samples span light to heavy pruning with uneven layers; with
    ``multiple``, each rounded to a multiple of it (a group narrower than it stays whole)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        f = rng.uniform(lo, 1.0)
        keep = {}
        for g, w in widths.items():
            k = max(1, min(w, round(w * f * rng.uniform(0.75, 1.25))))
            if multiple > 1 and w >= multiple:
                k = min(w - w % multiple, max(multiple, multiple * round(k / multiple)))
            keep[g] = k
        out.append(keep)
    return out


def model_key(model: nn.Module, arch: dict, input_shape: Sequence[int]) -> str:
    blob = json.dumps({"arch": arch, "input": list(input_shape), "layers": layer_widths(model)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def pruned_layers(units: Sequence[Unit], groups, keep: dict[str, int],
                  model: nn.Module | None = None) -> dict[str, dict]:
    """The conv / BN / linear shapes that pruning ``keep`` produces (see :func:`unit_shapes`);
    with ``model``, a BN over a concatenation loses the channels of every part's group."""
    from ..pruning import align
    from .units import channel_parts

    widths = {g.name: g.width for g in groups}
    layers: dict[str, dict] = {}
    for u, (ci, co) in zip(units, unit_shapes(units, widths, keep)):
        layers[u.name] = ({"in": ci, "out": co} if u.kind == "linear" else
                          {"in": ci, "out": co, "groups": co if u.kind == "dwconv" else u.groups})
    keep = {g.name: align(keep.get(g.name, g.width), g.width, g.step) for g in groups}
    parts = channel_parts(model, groups) if model is not None else {}
    mods = dict(model.named_modules()) if model is not None else {}
    for g in groups:
        for n in g.norms:
            if (n, "out") in parts and n in mods:
                lost = sum(f * (widths[p] - keep[p]) for p, f in parts[(n, "out")])
                layers[n] = {"features": max(1, round(mods[n].num_features - lost))}
            else:
                layers[n] = {"features": keep[g.name]}
    return layers


def resized_copy(model: nn.Module, layers: dict[str, dict], seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every layer resized to ``layers`` and random weights: the same
    network structure pruning gives, in milliseconds instead of seconds (latency does not depend
    on which channels were kept)."""
    import torch

    from ..io import apply_widths

    m = copy.deepcopy(model)
    apply_widths(m, layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():  # new_empty leaves garbage (NaN, denormals): fill it
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


NOISY, RETRIES = 0.15, 2  # a model timing with IQR/median above NOISY is taken again (load burst)
RETRY_PAUSE_S = 1.0


class ModelMeter:
    """Measures whole (pruned) models on the target through the cache, relative to the unpruned
    model.

    The unpruned model is timed alone once (its *base* figure).  Every pruned variant is then
    timed interleaved with the unpruned model (A, B, A, B, ...) and reported as
    ``base * variant / unpruned``: a shared virtual machine's cores run at different speeds from
    one minute to the next (the unpruned model, timed again and again through a validation on a
    machine with a load average below 1, varied by up to 1.6x), and the ratio taken side by side
    cancels that drift, so the figures of a calibration and of a validation are comparable.  The
    raw figures are kept in the record (``raw_median_ms``, ``reference_ms``).

    A timing whose spread (IQR/median, of either model) exceeds ``NOISY`` was taken during a burst
    of load from something else on the machine: it is taken again after a pause, up to
    ``RETRIES`` times, and the steadiest try is kept.

    A pruned variant is built by :func:`resized_copy`; on first use it is checked against a real
    :func:`prunelab.pruning.prune` of the same widths (``check``) and real pruning is used instead
    should they ever differ.
    """

    def __init__(self, target, cache: Cache, model: nn.Module, spec, groups, units,
                 protocol: Protocol = MODEL_PROTOCOL):
        self.target, self.cache, self.model, self.spec = target, cache, model, spec
        self.groups, self.units, self.protocol = groups, units, protocol
        self.base_key = model_key(model, spec.arch, spec.input_shape)
        self.exact: bool | None = None
        self._ref = None

    def _runner(self, m: nn.Module):
        with self.target.scope():
            return self.target.runner(m, self.target.inputs([self.spec.input_shape]))

    def pruned(self, keep: dict[str, int]) -> nn.Module:
        from ..pruning import prune

        if not keep:
            return self.model
        if self.exact is None:
            real = prune(self.model, "l1", keep=keep, input_shape=self.spec.input_shape,
                         num_classes=self.spec.num_classes).model
            fast = resized_copy(self.model, pruned_layers(self.units, self.groups, keep, self.model))
            self.exact = layer_widths(real) == layer_widths(fast)
            return real
        if self.exact:
            return resized_copy(self.model, pruned_layers(self.units, self.groups, keep, self.model))
        return prune(self.model, "l1", keep=keep, input_shape=self.spec.input_shape,
                     num_classes=self.spec.num_classes).model

    def _steadiest(self, runners: list) -> tuple[list, int]:
        """Time ``runners`` interleaved, again while any spread exceeds NOISY; the steadiest
        try, and how many tries it took."""
        best, best_bad, attempt = None, float("inf"), 0
        for attempt in range(1 + RETRIES):
            if attempt:
                time.sleep(RETRY_PAUSE_S)
            ts = time_runners(self.target, runners, self.protocol)
            bad = max(t.iqr_ms / t.median_ms for t in ts) / NOISY
            if bad < best_bad:
                best, best_bad = ts, bad
            if bad <= 1.0:
                break
        return best, attempt + 1

    def __call__(self, keep: dict[str, int]) -> dict:
        full = {g.name: g.width for g in self.groups}
        eff = {k: v for k, v in keep.items() if v != full.get(k)}
        key = (f"{self.base_key}|{json.dumps(eff, sort_keys=True)}|"
               f"{self.protocol.warmup},{self.protocol.repeats}|relative,retry{NOISY},{RETRIES}")
        hit = self.cache.get("models", key)
        if hit is not None:
            return hit
        if self._ref is None:
            self._ref = self._runner(self.model)
        if not eff:
            (t,), n = self._steadiest([self._ref])
            hit = {"median_ms": t.median_ms, "iqr_ms": t.iqr_ms, "repeats": t.repeats,
                   "attempts": n, "raw_median_ms": t.median_ms, "reference_ms": t.median_ms,
                   "reference_slowdown": 1.0}
        else:
            base = self({})["median_ms"]
            (ref, t), n = self._steadiest([self._ref, self._runner(self.pruned(eff))])
            f = base / ref.median_ms
            hit = {"median_ms": t.median_ms * f, "iqr_ms": t.iqr_ms * f, "repeats": t.repeats,
                   "attempts": n, "raw_median_ms": t.median_ms, "reference_ms": ref.median_ms,
                   "reference_slowdown": ref.median_ms / base}
        self.cache.put("models", key, hit)
        self.cache.flush()
        return hit


def build_predictor(model: nn.Module, spec, target, cache: Cache, calibrate: int = CALIBRATE,
                    seed: int = 1_000, progress: Callable[[str], None] | None = None,
                    lut_cfg: LutConfig = LutConfig()) -> tuple[Predictor, dict]:
    """Build (or load from the cache) the LUT-based predictor of ``model`` on ``target``.

    Calibration uses the unpruned model and ``calibrate`` random pruned variants drawn from
    ``seed`` (validation draws from other seeds, so it never scores on its own calibration); a
    target whose latency is a formula (:meth:`~prunelab.targets.base.Target.unit_formula`)
    gives exact unit figures, so at most ``FORMULA_CALIBRATE`` variants fit what the units
    leave out.
    """
    from ..pruning import prunable_groups

    say = progress or (lambda s: None)
    formula = getattr(target, "unit_formula", None)
    if formula is not None and formula() is not None:
        calibrate = min(calibrate, FORMULA_CALIBRATE)
    cfg = getattr(target, "cfg", None)
    if getattr(cfg, "precision", "") == "int8" and getattr(cfg, "int8_layers", "") == "fast":
        return _build_staged(model, spec, target, cache, calibrate, seed, say, lut_cfg)
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    widths = {g.name: g.width for g in groups}
    units = extract_units(model, spec.input_shape, groups)
    pkey = (f"v{PREDICTOR_VERSION}|{model_key(model, spec.arch, spec.input_shape)}|"
            f"cal{calibrate}|seed{seed}|"
            + json.dumps(lut_cfg.to_json(), sort_keys=True))
    hit = _cached(cache, pkey)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    layout = tuple(target.blocked_layout())  # probes the runtime: only when building
    lut = build_lut(target, units, cache, lut_cfg,
                    progress=lambda i, n, s: say(f"table {i}/{n}: {s}") if i < n else None)
    lut_s = time.perf_counter() - t0
    pred = Predictor(units, widths, lut, links=unit_links(model, units) if layout[0] else [],
                     layout=layout)
    meter = ModelMeter(target, cache, model, spec, groups, units)
    rows = []
    keeps = [{}] + sample_keeps(widths, calibrate, seed)
    if layout[0] and pred.links:  # a third on the layout's multiples (block, alignment)
        n = calibrate // 3
        keeps[1 + calibrate - n:] = (sample_keeps(widths, n - n // 2, seed + 1, multiple=layout[0])
                                     + sample_keeps(widths, n // 2, seed + 2, multiple=layout[1]))
    for i, keep in enumerate(keeps):
        say(f"calibration {i + 1}/{calibrate + 1}")
        parts = pred.parts(keep)
        rows.append({"raw_ms": sum(parts.values()), "parts": parts, "elided": pred.elided(keep),
                     "weights": pred.weights(keep), "measured_ms": meter(keep)["median_ms"]})
    pred.fit(rows)
    info = {"layout": list(layout), "lut_seconds": lut_s, "lut_points_measured": lut.measured,
            "lut": lut_cfg.to_json(),
            "calibration_seconds": time.perf_counter() - t0 - lut_s,
            "signatures": len(lut.tables), "units": len(units), "groups": len(widths)}
    cache.put("predictors", pkey, {"predictor": pred.to_json(), "info": info})
    cache.flush()
    return pred, info


def _cached(cache: Cache, pkey: str) -> tuple[Predictor, dict] | None:
    """A predictor and its build info from ``cache``; None when absent or a record this version
    cannot read (then it is built again)."""
    hit = cache.get("predictors", pkey)
    if hit is not None:
        try:
            return Predictor.from_json(hit["predictor"]), hit["info"]
        except (KeyError, TypeError, ValueError, IndexError):
            pass
    return None


def _build_staged(model: nn.Module, spec, target, cache: Cache, calibrate: int, seed: int,
                  say: Callable[[str], None], lut_cfg: LutConfig) -> tuple[Predictor, dict]:
    """:func:`build_predictor` for ``int8_layers="fast"``: a :class:`StagedPredictor` from the
    predictors of the same target with every layer int8 and in fp32 (each cached under its own
    fingerprint, so the fp32 one is the fp32 target's own), fitted on whole models measured on
    ``target``."""
    import dataclasses

    from ..pruning import prunable_groups
    from ..targets import make_target

    pkey = (f"v{PREDICTOR_VERSION}|staged3-{min(STAGED_CALIBRATE, calibrate)}|"
            f"{model_key(model, spec.arch, spec.input_shape)}|cal{calibrate}|seed{seed}|"
            + json.dumps(lut_cfg.to_json(), sort_keys=True))
    hit = _cached(cache, pkey)
    if hit is not None:  # the record holds both sub-predictors
        return hit
    t0 = time.perf_counter()
    subs, infos = {}, {}
    for name, cfg in (("int8", dataclasses.replace(target.cfg, int8_layers="all")),
                      ("fp32", dataclasses.replace(target.cfg, precision="fp32"))):
        sub = make_target(cfg)
        subs[name], infos[name] = build_predictor(
            model, spec, sub, Cache(sub.fingerprint(), cache.root), calibrate, seed,
            progress=lambda s, n=name: say(f"{n}: {s}"), lut_cfg=lut_cfg)
    p8, p32 = subs["int8"], subs["fp32"]
    info = {"staged": infos, "lut": lut_cfg.to_json(), "layout": list(p8.layout),
            "lut_seconds": sum(i["lut_seconds"] for i in infos.values()),
            "lut_points_measured": sum(i["lut_points_measured"] for i in infos.values()),
            "signatures": infos["int8"]["signatures"], "units": len(p8.units),
            "groups": len(p8.widths)}
    stages, stage_hw = unit_stages(p8.units)
    pred = StagedPredictor(p8.units, p8.widths, p8.lut, int8=p8, fp32=p32, stages=stages,
                           stage_hw=stage_hw, switch=[0.0] * len(stage_hw))
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    meter = ModelMeter(target, cache, model, spec, groups, pred.units)
    t1 = time.perf_counter()
    rows = []
    n = min(STAGED_CALIBRATE, calibrate)
    for i, keep in enumerate([{}] + sample_keeps(pred.widths, n, seed + 7)):
        say(f"staged calibration {i + 1}/{n + 1}")
        ms = meter(keep)["median_ms"]
        rows.append({"keep": keep, "measured_ms": ms,
                     "switch_measured": _stage_switches(target, meter.pruned(keep), spec, stage_hw)})
    _fit_staged(pred, rows)
    info["calibration_seconds"] = (time.perf_counter() - t1
                                   + sum(i.get("calibration_seconds", 0.0) for i in infos.values()))
    info["seconds"] = time.perf_counter() - t0
    cache.put("predictors", pkey, {"predictor": pred.to_json(), "info": info})
    cache.flush()
    return pred, info


def _stage_switches(target, model: nn.Module, spec, stage_hw: list) -> dict[int, float]:
    """Per stage the runtime's ``fast`` decision tried on ``model``'s graph: how much slower
    (relative, negative: faster) the whole graph ran with that stage in fp32."""
    import torch

    from ..quant import resolution_stages
    from ..targets._onnx import exported

    x = [torch.zeros(target.cfg.batch_size, *spec.input_shape)]
    fp = exported(model.eval(), x)
    _, trail, _ = target.fast_fp32_nodes(fp, x)
    where = {nodes[0]: tuple(hw) for hw, nodes in resolution_stages(fp)}
    index = {tuple(hw): s for s, hw in enumerate(stage_hw)}
    return {index[where[t["first"]]]: t["fp32_ms"] / t["int8_ms"] - 1 for t in trail
            if where.get(t["first"]) in index}


def _fit_staged(pred: "StagedPredictor", rows: list[dict]) -> None:
    """Fit ``pred``'s stage switches and then its scale and overhead on ``rows`` (measured whole
    models with the runtime's per-stage trials, see :class:`StagedPredictor`); the switches are
    in table milliseconds, so the fit alternates with the scale that converts measured ones,
    until they settle."""
    n = len(pred.stage_hw)
    pred.switch = [0.0] * n
    diffs: list[list[float]] = [[] for _ in range(n)]
    for _ in range(20):
        before = pred.switch
        for r in rows:
            r["raw_ms"] = pred.raw_ms(r["keep"])
        pred.fit(rows)
        scale = pred.scale if pred.scale > 0 else 1.0
        diffs = [[] for _ in range(n)]
        pred.switch = [0.0] * n  # the table's own differences
        for r in rows:
            costs = pred._stage_costs(pred._shapes(r["keep"]))
            for s, rel in r["switch_measured"].items():
                a, b = costs[int(s)]
                diffs[int(s)].append(rel * r["measured_ms"] / scale - (b - a))
        pred.switch = [statistics.median(d) if d else 0.0 for d in diffs]
        if max(abs(u - v) for u, v in zip(before, pred.switch)) < 1e-9:
            break
    for r in rows:
        r["raw_ms"] = pred.raw_ms(r["keep"])
        r["precisions"] = pred.precisions(r["keep"])
    pred.fit(rows)
    pred.fit_info["switch_points"] = [len(d) for d in diffs]


ANCHOR_FRACTIONS = (0.75, 0.5, 0.3)  # uniform levels of the anchor's pruned references
# the anchor is timed for at least 3 s: timed in 0.1 s, two resnet20 anchors caught a burst of
# load and measured the unpruned model 40% slow, so nsga2 saw no candidate under a 3x budget;
# over 3 fresh sessions, 1 s each (a session can run in a slow mode: prunelab.latency.measure)
ANCHOR_PROTOCOL = Protocol(warmup=20, repeats=30, min_seconds=1.0, sessions=3)


def anchor_predictor(pred: Predictor, model: nn.Module, spec, target,
                     protocol: Protocol = ANCHOR_PROTOCOL) -> dict:
    """Tie ``pred`` to what the run's final measurement will see; returns (and sets)
    ``pred.anchor``.

    The device's predictor is calibrated once per model on variants timed relative to the
    unpruned model timed alone; a search's choice is confirmed by timing it interleaved with the
    unpruned model, and a speed-up budget is read there.  The two disagree by more than a budget
    can bear: on resnet20.fmnist (onnxruntime-cpu, 1 thread, AMD EPYC) the unpruned model measured
    12% under its prediction and the pruned ones 8-18% over theirs, so every point a bisected
    method predicted at 3.0x measured at 2.5-2.7x and the run fell back to one at 7x.  So each run
    times the unpruned model and a few uniformly pruned references (at ``ANCHOR_FRACTIONS`` of
    every width, and the same rounded to the runtime's channel block) interleaved, exactly as the
    final measurement does: the unpruned model's prediction becomes its measured median, and a
    pruned one's is ``offset + scale x`` the table's (least squares on the references; the scale
    kept in [0.5, 2], else a scale alone).  Unlike the table, the anchor is measured afresh by every
    run and never cached per device: an anchor from an earlier sitting of the same (virtual)
    machine mispredicted narrow networks by 1.1-1.8x (bench/results/pareto, docs/proof.md).  It is kept
    in the run's ``predictor.json``, so a resumed run predicts exactly as before."""
    import numpy as np

    from ..pruning import prunable_groups
    from .measure import measure

    pred.anchor = {}
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    meter = ModelMeter(target, None, model, spec, groups, pred.units, protocol)
    keeps = []
    for f in ANCHOR_FRACTIONS:
        for m in sorted({1, pred.layout[0] or 1}):
            k = {g: max(1, min(w, round(w * f))) for g, w in pred.widths.items()}
            if m > 1:
                k = {g: (max(m, m * round(v / m)) if pred.widths[g] >= m else pred.widths[g])
                     for g, v in k.items()}
            if k not in keeps and k != pred.widths:
                keeps.append(k)
    times = measure(target, [model] + [meter.pruned(k) for k in keeps], spec.input_shape,
                    protocol)
    x = np.array([pred.unanchored(k) for k in keeps])
    y = np.array([t.median_ms for t in times[1:]])
    scale, offset = (np.polyfit(x, y, 1) if len(set(x.round(9))) > 1 else (y.mean() / x.mean(), 0))
    if not 0.5 <= scale <= 2.0:
        scale, offset = float(np.clip((x @ y) / (x @ x), 0.5, 2.0)), 0.0
    pred.anchor = {"base_ms": times[0].median_ms, "offset_ms": float(offset),
                   "scale": float(scale), "base_table_ms": pred.unanchored({}),
                   "references": [{"keep": k, "table_ms": float(a), "measured_ms": float(b)}
                                  for k, a, b in zip(keeps, x, y)]}
    return pred.anchor


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (scipy; average ranks for ties, 0 when one side is constant)."""
    import math
    import warnings

    from scipy.stats import spearmanr

    if len(a) < 2:
        raise PrunelabError("a rank correlation needs at least 2 samples; use --samples 10 or more")
    with warnings.catch_warnings():  # a constant input: scipy warns and answers nan
        warnings.simplefilter("ignore")
        r = float(spearmanr(list(a), list(b)).statistic)
    return 0.0 if math.isnan(r) else r


def mape(measured: Sequence[float], predicted: Sequence[float]) -> float:
    """Mean absolute percentage error, as a fraction."""
    return statistics.mean(abs(p - m) / m for m, p in zip(measured, predicted))
