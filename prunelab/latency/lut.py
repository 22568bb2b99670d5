"""Per-layer latency lookup tables measured on the target.

One :class:`Table` per unit signature (see :mod:`prunelab.latency.units`).  Building a table:

1. *sweeps*: every width of a window (the top ``SWEEP`` widths) of each prunable channel axis, the
   other axis whole; they show the staircase and give each axis its step (:mod:`.steps`);
2. a *grid* of (in, out) widths on multiples of the steps (at most ``NODES`` per axis, always
   including the full width), interpolated bilinearly after rounding a query up to its step.

Every point is one stand-alone module (conv + BN + activation/add, as the runtime fuses them)
timed with :data:`~prunelab.latency.measure.LUT_PROTOCOL` and cached under the device fingerprint,
so a second model with the same layer shapes costs nothing.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from ..errors import PrunelabError
from .cache import Cache
from .measure import LUT_PROTOCOL, Protocol, time_runners
from .steps import ceil_to, detect_step
from .units import Unit, unit_module

SWEEP = 40
NODES = 7


@dataclass(frozen=True)
class LutConfig:
    """How densely a table is sampled and how long each point is timed (part of cache keys)."""

    sweep: int = SWEEP        # widths swept one by one below each full width
    nodes: int = NODES        # grid nodes per axis
    warmup: int = LUT_PROTOCOL.warmup
    repeats: int = LUT_PROTOCOL.repeats

    def __post_init__(self):
        if self.sweep < 4 or self.nodes < 2:
            raise PrunelabError("a table needs --sweep >= 4 and --nodes >= 2 (defaults 40 and 7)")
        Protocol(self.warmup, self.repeats)

    @property
    def protocol(self) -> Protocol:
        return Protocol(self.warmup, self.repeats)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Table:
    sig: str
    unit: Unit                      # template: cin/cout are the maxima over units of this sig
    vary_in: bool
    vary_out: bool
    step_in: int = 1
    step_out: int = 1
    nodes_in: list[int] = field(default_factory=list)
    nodes_out: list[int] = field(default_factory=list)
    grid: list[list[float]] = field(default_factory=list)   # [in node][out node] ms
    sweep_in: dict[int, float] = field(default_factory=dict)
    sweep_out: dict[int, float] = field(default_factory=dict)

    def lookup(self, cin: int, cout: int) -> float:
        """Interpolated latency (ms) at (cin, cout), each rounded up to its step first."""
        if self.unit.kind == "dwconv":
            cin = self.unit.cin
        ci = ceil_to(cin, self.step_in, self.unit.cin) if self.vary_in else self.nodes_in[0]
        co = ceil_to(cout, self.step_out, self.unit.cout) if self.vary_out else self.nodes_out[0]
        i0, i1, ti = _bracket(self.nodes_in, ci)
        o0, o1, to = _bracket(self.nodes_out, co)
        g = self.grid
        top = g[i0][o0] * (1 - to) + g[i0][o1] * to
        bot = g[i1][o0] * (1 - to) + g[i1][o1] * to
        return top * (1 - ti) + bot * ti

    def to_json(self) -> dict:
        return {"sig": self.sig, "unit": self.unit.to_json(), "vary_in": self.vary_in,
                "vary_out": self.vary_out, "step_in": self.step_in, "step_out": self.step_out,
                "nodes_in": self.nodes_in, "nodes_out": self.nodes_out, "grid": self.grid,
                "sweep_in": self.sweep_in, "sweep_out": self.sweep_out}

    @classmethod
    def from_json(cls, d: dict) -> "Table":
        t = cls(d["sig"], Unit(**d["unit"]), d["vary_in"], d["vary_out"], d["step_in"],
                d["step_out"], d["nodes_in"], d["nodes_out"], d["grid"])
        t.sweep_in = {int(k): v for k, v in d["sweep_in"].items()}
        t.sweep_out = {int(k): v for k, v in d["sweep_out"].items()}
        return t


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
        self.measured = 0
        self._last_flush = time.monotonic()

    def __call__(self, u: Unit, cin: int, cout: int) -> float:
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


def signature_templates(units: Sequence[Unit]) -> dict[str, Unit]:
    """One template unit per signature, with the largest channel counts seen."""
    out: dict[str, Unit] = {}
    for u in units:
        t = out.get(u.sig)
        out[u.sig] = u if t is None else Unit(**{**t.to_json(), "cin": max(t.cin, u.cin),
                                                 "cout": max(t.cout, u.cout)})
    return out


def build_table(u: Unit, meter: Callable[[Unit, int, int], float], sweep: int = SWEEP,
                nodes: int = NODES) -> Table:
    dw = u.kind == "dwconv"
    vary_out = u.cout_group is not None or (dw and u.cin_group is not None)
    vary_in = u.cin_group is not None and not dw
    t = Table(u.sig, u, vary_in, vary_out)
    if vary_out:
        t.sweep_out = {c: meter(u, u.cin if not dw else c, c)
                       for c in range(max(1, u.cout - sweep + 1), u.cout + 1)}
        t.step_out = detect_step(t.sweep_out)
    if vary_in:
        t.sweep_in = {c: meter(u, c, u.cout) for c in range(max(1, u.cin - sweep + 1), u.cin + 1)}
        t.step_in = detect_step(t.sweep_in)
    t.nodes_in = grid_nodes(u.cin, t.step_in, nodes) if vary_in else [u.cin]
    t.nodes_out = grid_nodes(u.cout, t.step_out, nodes) if vary_out else [u.cout]
    t.grid = [[meter(u, ci if not dw else co, co) for co in t.nodes_out] for ci in t.nodes_in]
    return t


def build_lut(target, units: Sequence[Unit], cache: Cache, cfg: LutConfig = LutConfig(),
              progress: Callable[[int, int, str], None] | None = None) -> LUT:
    """Measure (or read from the cache) the tables for every signature among ``units``."""
    t0 = time.perf_counter()
    meter = PointMeter(target, cache, cfg.protocol)
    sweep, nodes = cfg.sweep, cfg.nodes
    temps = signature_templates(units)
    tables = {}
    try:
        for i, (sig, u) in enumerate(temps.items()):
            if progress:
                progress(i, len(temps), sig)
            tables[sig] = build_table(u, meter, sweep, nodes)
    finally:
        cache.flush()
    if progress:
        progress(len(temps), len(temps), "done")
    return LUT(tables, time.perf_counter() - t0, meter.measured)
