"""Per-layer latency lookup tables measured on the target.

One :class:`Table` per unit signature (see :mod:`prunelab.latency.units`).  Building a table:

1. *sweeps*: every width 1..C of each prunable channel axis (the other axis whole; strided when
   C exceeds ``sweep``).  They hold the staircase and the alignment effects (on ONNX Runtime, a
   conv whose input channels are not a multiple of 4 is markedly slower than the aligned width
   above it), and give each axis its step (:mod:`.steps`);
2. a coarse *grid* of (in, out) widths on multiples of the steps (at most ``nodes`` per axis,
   always with the full widths).

A query is the product of the two sweeps above a fitted per-call floor ``c0`` (exact along each
axis, staircase and all), plus the grid's residual, interpolated bilinearly between grid nodes::

    ms(ci, co) = c0 + (S_out(co) - c0) * (S_in(ci) - c0) / (S(C_in, C_out) - c0) + res(ci, co)

Every point is one stand-alone module (conv + BN + activation/add, as the runtime fuses them)
timed with a short protocol and cached under the device fingerprint, so a second model with the
same layer shapes costs nothing.  A stand-alone run also pays the runtime's per-call cost (an ONNX
Runtime session call, an OpenVINO infer request, a Python module call: several microseconds,
paid once per model inside a network but once per unit here); each table therefore also times a
trivial graph (one ReLU) on the unit's input shape and :meth:`Table.lookup` answers net of it.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from ..errors import PrunelabError
from .cache import Cache
from .measure import LUT_PROTOCOL, Protocol, time_runners
from .steps import detect_step
from .units import Unit, unit_module

SWEEP = 256
NODES = 6


@dataclass(frozen=True)
class LutConfig:
    """How densely a table is sampled and how long each point is timed (part of cache keys)."""

    sweep: int = SWEEP        # at most this many widths per axis sweep (every width up to it)
    nodes: int = NODES        # grid nodes per axis
    warmup: int = LUT_PROTOCOL.warmup
    repeats: int = LUT_PROTOCOL.repeats

    def __post_init__(self):
        if self.sweep < 4 or self.nodes < 2:
            raise PrunelabError("a table needs --sweep >= 4 and --nodes >= 2 (defaults "
                                f"{SWEEP} and {NODES})")
        Protocol(self.warmup, self.repeats)

    @property
    def protocol(self) -> Protocol:
        return Protocol(self.warmup, self.repeats)

    def to_json(self) -> dict:
        return asdict(self)


def _interp1(d: dict[int, float], keys: list[int], c: float) -> float:
    """Piecewise-linear read of a sweep (exact at swept widths, clamped at the ends)."""
    if c in d:
        return d[c]
    if c <= keys[0]:
        return d[keys[0]]
    if c >= keys[-1]:
        return d[keys[-1]]
    j = bisect.bisect_left(keys, c)
    lo, hi = keys[j - 1], keys[j]
    t = (c - lo) / (hi - lo)
    return d[lo] * (1 - t) + d[hi] * t


@dataclass
class Table:
    sig: str
    unit: Unit                      # template: cin/cout are the maxima over units of this sig
    vary_in: bool
    vary_out: bool
    sweep_in: dict[int, float] = field(default_factory=dict)
    sweep_out: dict[int, float] = field(default_factory=dict)
    nodes_in: list[int] = field(default_factory=list)
    nodes_out: list[int] = field(default_factory=list)
    grid: list[list[float]] = field(default_factory=list)   # [in node][out node] ms
    step_in: int = 1
    step_out: int = 1
    call_ms: float = 0.0            # per-call cost of a trivial graph on the same input

    def __post_init__(self):
        self._prep()

    def _prep(self):
        self._kin, self._kout = sorted(self.sweep_in), sorted(self.sweep_out)
        self._full = self.grid[-1][-1] if self.grid else 1.0
        self._c0 = 0.0
        if len(self.nodes_in) > 1 and len(self.nodes_out) > 1:
            # the per-call floor c0 that makes the sweeps' product fit the grid best
            lo = 0.95 * min(min(self.sweep_in.values()), min(self.sweep_out.values()))

            def err(c0):
                self._c0 = c0
                return sum((self._sep(ci, co) / self.grid[i][j] - 1) ** 2
                           for i, ci in enumerate(self.nodes_in)
                           for j, co in enumerate(self.nodes_out))
            self._c0 = min((lo * k / 40 for k in range(41)), key=err)
        self._res = [[self.grid[i][j] - self._sep(ci, co) for j, co in enumerate(self.nodes_out)]
                     for i, ci in enumerate(self.nodes_in)] if self.grid else []

    def _sep(self, ci: float, co: float) -> float:
        c0 = self._c0
        return c0 + ((_interp1(self.sweep_out, self._kout, co) - c0)
                     * (_interp1(self.sweep_in, self._kin, ci) - c0) / (self._full - c0))

    def lookup(self, cin: int, cout: int) -> float:
        """Latency (ms) of this unit at (cin, cout) channels, net of the per-call cost (never
        below a tenth of the stand-alone figure)."""
        ms = max(self.standalone(cin, cout), 0.0)  # interpolation never makes time negative
        return max(ms - self.call_ms, 0.1 * ms)

    def standalone(self, cin: int, cout: int) -> float:
        """Latency (ms) of this unit at (cin, cout) channels as a stand-alone run."""
        if self.unit.kind == "dwconv" or not self.vary_in:
            cin = self.unit.cin
        if not self.vary_out:
            cout = self.unit.cout
        i0, i1, ti = _bracket(self.nodes_in, cin)
        o0, o1, to = _bracket(self.nodes_out, cout)
        g = self._res
        top = g[i0][o0] * (1 - to) + g[i0][o1] * to
        bot = g[i1][o0] * (1 - to) + g[i1][o1] * to
        return self._sep(cin, cout) + top * (1 - ti) + bot * ti

    def to_json(self) -> dict:
        return {"sig": self.sig, "unit": self.unit.to_json(), "vary_in": self.vary_in,
                "vary_out": self.vary_out, "step_in": self.step_in, "step_out": self.step_out,
                "nodes_in": self.nodes_in, "nodes_out": self.nodes_out, "grid": self.grid,
                "sweep_in": self.sweep_in, "sweep_out": self.sweep_out, "call_ms": self.call_ms}

    @classmethod
    def from_json(cls, d: dict) -> "Table":
        return cls(d["sig"], Unit(**d["unit"]), d["vary_in"], d["vary_out"],
                   {int(k): v for k, v in d["sweep_in"].items()},
                   {int(k): v for k, v in d["sweep_out"].items()}, d["nodes_in"], d["nodes_out"],
                   d["grid"], d["step_in"], d["step_out"], d.get("call_ms", 0.0))


def _bracket(nodes: Sequence[int], c: float) -> tuple[int, int, float]:
    if c <= nodes[0] or len(nodes) == 1:
        return 0, 0, 0.0
    if c >= nodes[-1]:
        n = len(nodes) - 1
        return n, n, 0.0
    j = bisect.bisect_left(nodes, c)
    lo, hi = nodes[j - 1], nodes[j]
    return j - 1, j, (c - lo) / (hi - lo)


def grid_nodes(cmax: int, step: int, n: int = NODES) -> list[int]:
    """Up to ``n`` widths on multiples of ``step``, evenly spread, always with ``cmax``."""
    cands = sorted({*range(step, cmax + 1, step), cmax})
    if len(cands) <= n:
        return cands
    idx = sorted({round(i * (len(cands) - 1) / (n - 1)) for i in range(n)})
    return [cands[i] for i in idx]


def sweep_widths(cmax: int, sweep: int, multiple: int = 1) -> list[int]:
    """Every width 1..cmax, or an even stride (plus cmax) when there are more than ``sweep``;
    with ``multiple`` (a grouped conv's groups) only its multiples."""
    stride = multiple * max(1, math.ceil(cmax / multiple / sweep))
    return sorted({*range(stride, cmax + 1, stride), multiple, cmax})


class LUT:
    """The tables of one model's signatures on one target, plus how long they took."""

    def __init__(self, tables: dict[str, Table], seconds: float = 0.0, measured: int = 0):
        self.tables, self.seconds, self.measured = tables, seconds, measured

    def unit_ms(self, u: Unit, cin: int, cout: int) -> float:
        return self.tables[u.sig].lookup(cin, cout)

    def to_json(self) -> dict:
        return {"tables": [t.to_json() for t in self.tables.values()], "seconds": self.seconds,
                "measured": self.measured}

    @classmethod
    def from_json(cls, d: dict) -> "LUT":
        return cls({t["sig"]: Table.from_json(t) for t in d["tables"]}, d.get("seconds", 0.0),
                   d.get("measured", 0))


class PointMeter:
    """Measures (unit signature, cin, cout) points on a target, through the cache."""

    def __init__(self, target, cache: Cache, protocol: Protocol = LUT_PROTOCOL):
        self.target, self.cache, self.protocol = target, cache, protocol
        unit_formula = getattr(target, "unit_formula", None)  # a duck-typed target may lack it
        self.formula = unit_formula() if unit_formula is not None else None
        self.measured = 0
        self._last_flush = time.monotonic()

    def __call__(self, u: Unit, cin: int, cout: int) -> float:
        if self.formula is not None:  # latency is a formula: nothing to time or cache
            return self.formula[0](u, cin, cout)
        key = f"{u.sig}|{cin}|{cout}|{self.protocol.warmup},{self.protocol.repeats}"
        hit = self.cache.get("units", key)
        if hit is not None:
            return hit["median_ms"]
        m, shapes = unit_module(u, cin, cout)
        with self.target.scope():
            run = self.target.runner(m, self.target.inputs(shapes))
        t = time_runners(self.target, [run], self.protocol)[0]
        self.cache.put("units", key, {"median_ms": t.median_ms, "iqr_ms": t.iqr_ms})
        self.measured += 1
        if time.monotonic() - self._last_flush > 5:
            self.cache.flush()
            self._last_flush = time.monotonic()
        return t.median_ms

    def call_ms(self, u: Unit) -> float:
        """The runtime's per-call cost on ``u``'s input: a one-ReLU graph on the same shape."""
        if self.formula is not None:
            return self.formula[1]()
        _, shapes = unit_module(u, u.cin, u.cout)
        key = f"call:relu|{list(shapes[0])}|{self.protocol.warmup},{self.protocol.repeats}"
        hit = self.cache.get("units", key)
        if hit is not None:
            return hit["median_ms"]
        import torch.nn as nn

        with self.target.scope():
            run = self.target.runner(nn.ReLU().eval(), self.target.inputs(shapes[:1]))
        t = time_runners(self.target, [run], self.protocol)[0]
        self.cache.put("units", key, {"median_ms": t.median_ms, "iqr_ms": t.iqr_ms})
        self.measured += 1
        return t.median_ms


def signature_templates(units: Sequence[Unit]) -> dict[str, Unit]:
    """One template unit per signature, with the largest channel counts seen."""
    out: dict[str, Unit] = {}
    for u in units:
        t = out.get(u.sig)
        out[u.sig] = u if t is None else Unit(**{**t.to_json(), "cin": max(t.cin, u.cin),
                                                 "cout": max(t.cout, u.cout)})
    return out


def build_table(u: Unit, meter: Callable[[Unit, int, int], float], cfg: LutConfig = LutConfig(),
                call_ms: float = 0.0) -> Table:
    dw = u.kind == "dwconv"
    vary_out = u.cout_group is not None or (dw and u.cin_group is not None)
    vary_in = u.cin_group is not None and not dw
    full = meter(u, u.cin, u.cout)
    g = u.groups  # a grouped conv is only ever pruned in whole groups
    s_out = ({c: meter(u, c if dw else u.cin, c) for c in sweep_widths(u.cout, cfg.sweep, g)}
             if vary_out else {u.cout: full})
    s_in = ({c: meter(u, c, u.cout) for c in sweep_widths(u.cin, cfg.sweep, g)}
            if vary_in else {u.cin: full})
    st_in, st_out = (math.lcm(detect_step(s), g) for s in (s_in, s_out))
    if vary_in and vary_out:
        n_in, n_out = grid_nodes(u.cin, st_in, cfg.nodes), grid_nodes(u.cout, st_out, cfg.nodes)
        grid = [[meter(u, ci, co) for co in n_out] for ci in n_in]
    else:
        n_in, n_out, grid = [u.cin], [u.cout], [[full]]
    # a call cost timed during a burst of load must not eat the units: at most half the fastest
    points = [*s_in.values(), *s_out.values(), *(v for row in grid for v in row)]
    return Table(u.sig, u, vary_in, vary_out, s_in, s_out, n_in, n_out, grid, st_in, st_out,
                 min(call_ms, 0.5 * min(points)))


def build_lut(target, units: Sequence[Unit], cache: Cache, cfg: LutConfig = LutConfig(),
              progress: Callable[[int, int, str], None] | None = None) -> LUT:
    """Measure (or read from the cache) the tables for every signature among ``units``.

    Each table (one signature, tens of short timings) is one quiet section of the timing gate
    (:mod:`prunelab.gate`): timed point by point, each of hundreds of short timings waited for
    a batch of any other prunelab process on the machine to end (a resnet18 table beside a
    fine-tune had not finished in 20 minutes); held for the whole build, it stopped another
    process's training for as long as the build took (VGG-11 on onnxruntime-cpu: over 20
    minutes, one core idle).  Between tables a waiting batch goes first.  A remote target times
    on its own node, under that machine's gate, so none is held here."""
    import contextlib

    from ..gate import timing

    t0 = time.perf_counter()
    meter = PointMeter(target, cache, cfg.protocol)
    temps = signature_templates(units)
    tables = {}
    # a remote (Ray) target times on its node, under that machine's gate: holding this one
    # while its actor waits to make a session would deadlock
    local = meter.formula is None and not hasattr(target, "time_jobs")
    try:
        for i, (sig, u) in enumerate(temps.items()):
            if progress:
                progress(i, len(temps), sig)
            with timing() if local else contextlib.nullcontext():
                tables[sig] = build_table(u, meter, cfg, meter.call_ms(u))
    finally:
        cache.flush()
    if progress:
        progress(len(temps), len(temps), "done")
    return LUT(tables, time.perf_counter() - t0, meter.measured)
