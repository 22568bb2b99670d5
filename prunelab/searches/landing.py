"""The landing stage, shared by every method: after the method has chosen, land its choice on the
budget, measured.

The method's choice (``keep``) anchors a monotone path of widths: every group's removed fraction
is scaled by ``t`` (``t = 0`` is the unpruned model, ``t = 1`` the choice, larger ``t`` prunes
more, each group stopping at one channel), and for a latency budget each width is snapped up to
the target's stair top (the widest width that costs no more: :func:`~prunelab.latency.steps.
useful_widths`).  The stage searches ``t`` (a guarded regula falsi on the value's logarithm,
:meth:`Lander._next_t`) on what the budget is about:

* ``speedup=B`` is a floor: landed = the speed-up estimate in ``[1, 1 + BAND] x B`` and its 95%
  interval's lower end at least ``FLOOR x B``; each step is timed paired against the unpruned
  model (:func:`~prunelab.latency.paired.paired_speedup`, in-process sessions), a step whose
  interval is wider than the band is measured again with more sessions before it decides, and
  the landed point is confirmed in ``decision_processes`` fresh processes (0: in-process
  sessions).  ``latency=X`` is the same ceiling on latency (``B`` = the unpruned model's
  measured latency / ``X``).
* ``macs=v`` / ``params=v`` are ceilings on what is kept: landed = within ``CEIL_BAND`` (3%)
  below ``v``, exact counts, nothing timed.

Where the width staircase jumps over the band (two neighbouring points of the path, one too
slow, the next too fast), the stage walks a finer path between them, one stair of one group at a
time; where a single stair of one group still jumps over the band, it keeps that stair and gives
the other groups channels back, one stair at a time.  Where nothing lands, the nearest point
that meets the floor is taken and both neighbours are reported.  A decision whose interval
reaches from under the floor to over the budget is measured again, its samples pooled, before
it decides.  A budget that cannot be met (the most pruned point of the path is still too slow) ends
with that point and one line saying what was reached; when the unpruned model already meets the
budget, it is returned and said so.

    >>> path = anchored_path({"a": 16, "b": 8}, {"a": 8, "b": 8})
    >>> path(0.0), path(1.0), path(1.5)
    ({'a': 16, 'b': 8}, {'a': 8, 'b': 8}, {'a': 4, 'b': 8})
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..errors import PrunelabError
from ..ui import log
from .budget import Budget

BAND = 0.05        # speedup=B: landed = estimate in [1, 1.05] x B ...
FLOOR = 0.97       # ... with the interval's lower end >= 0.97 x B
CEIL_BAND = 0.03   # macs=/params=v: landed = kept in [0.97 v, v]
MAX_STEPS = 16     # timed (or counted) points of one bisection
MAX_DECISIONS = 3  # separate-process confirmations before the stage settles
MORE_DECISIONS = 2  # extra rounds pooled into a decision whose interval spans floor and budget
MISSED_ROUNDS = 2  # bisections again after a staircase step decided under the budget


def _fractions(widths: dict[str, int], choice: dict[str, int]) -> dict[str, float]:
    r = {g: 1 - choice.get(g, w) / w for g, w in widths.items()}
    return r if any(v > 0 for v in r.values()) else {g: 1.0 for g in widths}


def _floors(widths: dict[str, int], floors: dict[str, int] | None) -> dict[str, int]:
    """Each group's least width on the path: ``floors[g]`` (1 where not given), at most its
    width."""
    return {g: max(1, min(w, int((floors or {}).get(g, 1)))) for g, w in widths.items()}


def _anchored_end(widths: dict[str, int], r: dict[str, float], f: dict[str, int]) -> float:
    """Where every group the choice prunes has reached its floor."""
    ends = [(1 - f[g] / w) / r[g] for g, w in widths.items() if r[g] > 0 and w > f[g]]
    return max(ends) if ends else 0.0


def anchored_path(widths: dict[str, int], choice: dict[str, int],
                  stairs: dict[str, list[int]] | None = None,
                  floors: dict[str, int] | None = None) -> Callable[[float], dict]:
    """Widths along the path anchored on ``choice``: group ``g`` keeps
    ``width * (1 - min(t * r_g, 1 - floor_g/width))`` channels (``r_g`` its removed fraction in
    the choice; every group when the choice removes nothing; ``floor_g`` its least width,
    ``floors[g]``, 1 where not given), snapped up to ``stairs[g]`` when given.  Past the point
    where the choice's groups reach their floors, the path goes on for one more unit of ``t``,
    narrowing every group left uniformly to its floor (so a lopsided choice can still reach a
    budget its own groups cannot).  Non-increasing in ``t`` for every group; see
    :func:`path_end` for where it ends."""
    r = _fractions(widths, choice)
    f = _floors(widths, floors)
    t_a = _anchored_end(widths, r, f)

    def raw(t: float) -> dict[str, int]:
        out = {}
        for g, w in widths.items():
            frac = min(max(t, 0.0) * r[g], 1 - f[g] / w)
            out[g] = max(f[g], min(w, int(round(w * (1 - frac)))))
        return out

    def keep(t: float) -> dict[str, int]:
        out = raw(t)
        if t > t_a:  # the choice's groups are at their floors: narrow the rest uniformly
            u = min(1.0, t - t_a)
            out = {g: max(f[g], int(round(k * (1 - u * (1 - f[g] / k)))))
                   for g, k in out.items()}
        if stairs:
            out = {g: next((s for s in stairs.get(g) or [] if s >= k), k)
                   for g, k in out.items()}
        return out

    return keep


def path_end(widths: dict[str, int], choice: dict[str, int],
             floors: dict[str, int] | None = None) -> float:
    """The ``t`` at which every group of the path is at its floor."""
    r = _fractions(widths, choice)
    f = _floors(widths, floors)
    return _anchored_end(widths, r, f) + (1.0 if any(r[g] == 0 and w > f[g]
                                                     for g, w in widths.items()) else 0.0)


class _Scaled:
    """A step's estimate with the steps' calibration on the decisions applied."""

    def __init__(self, est, c: float):
        self._est, self.correction = est, c
        self.estimate, self.low, self.high = est.estimate * c, est.low * c, est.high * c
        self.base_ms, self.level = est.base_ms, getattr(est, "level", None)
        self.candidate_ms = est.base_ms / self.estimate

    def to_json(self) -> dict:
        return {**self._est.to_json(), "estimate": self.estimate, "low": self.low,
                "high": self.high, "candidate_ms": self.candidate_ms,
                "correction": self.correction}


@dataclass
class Step:
    t: float
    keep: dict[str, int] = field(repr=False)
    value: float                    # speed-up estimate, or the kept fraction (macs/params)
    low: float | None = None        # the interval (speed-up only)
    high: float | None = None
    how: str = "step"               # step | more | decision

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("keep")
        return d


@dataclass
class Landing:
    """What the stage did: ``status`` landed | staircase | unreachable | unpruned | missed (the
    staircase step taken read below the budget in fresh processes), the landed
    ``keep``, its ``estimate`` (a :class:`~prunelab.latency.paired.SpeedupEstimate` as JSON, for
    latency budgets) or ``kept`` fraction (MACs/params), the steps, and the neighbours where the
    staircase jumps over the band."""

    status: str
    keep: dict[str, int]
    target: float                   # the budget's speed-up (or kept fraction)
    value: float                    # what the landed point reached
    estimate: dict | None = None
    steps: list[Step] = field(default_factory=list)
    neighbours: list[dict] = field(default_factory=list)
    message: str = ""

    @property
    def met(self) -> bool:
        """The budget holds at the landed point (a floor on speed-up, a ceiling on kept)."""
        return self.status in ("landed", "staircase", "unpruned")

    correction: float = 1.0         # in-process steps calibrated on the decisions by this

    def to_json(self) -> dict:
        return {"status": self.status, "met": self.met, "target": self.target,
                "step_correction": self.correction,
                "value": self.value, "estimate": self.estimate,
                "steps": [s.to_json() for s in self.steps], "neighbours": self.neighbours,
                "message": self.message}


def landed_speedup(est, target: float) -> bool:
    """The landing rule of a floor: estimate in [1, 1 + BAND] x target, low >= FLOOR x target."""
    return target <= est.estimate <= (1 + BAND) * target and est.low >= FLOOR * target


def landed_kept(kept: float, limit: float) -> bool:
    """The landing rule of a ceiling on what is kept: within CEIL_BAND below it."""
    return (1 - CEIL_BAND) * limit <= kept <= limit


class Lander:
    """Lands one choice; ``timer(keep, processes, sessions)`` returns a speed-up estimate of the
    pruned widths against the unpruned model, ``counter(keep)`` the kept fraction."""

    def __init__(self, budget: Budget, widths: dict[str, int], choice: dict[str, int],
                 timer=None, counter=None, stairs: dict[str, list[int]] | None = None,
                 decision_processes: int = 6, base_ms: float | None = None,
                 saving: Callable[[dict, str, int], float] | None = None,
                 floors: dict[str, int] | list[dict[str, int]] | None = None):
        self.budget, self.widths = budget, dict(widths)
        self.choice = {g: choice.get(g, w) for g, w in widths.items()}
        self.timer, self.counter = timer, counter
        self.stairs = stairs if budget.kind == "latency" else None
        # the least widths of the path; a list: tried in turn while the path's end cannot meet
        # the budget (on a blocked-layout runtime one channel can run slower than a whole SIMD
        # block, so a path that stops at 8 or 16 channels can reach what one going to 1 cannot)
        self.floor_sets = [dict(f) for f in floors] if isinstance(floors, list) else \
            [dict(floors or {})]
        self._use(self.floor_sets[0])
        self.decision_processes = decision_processes
        self.steps: list[Step] = []
        self.base_ms = base_ms
        self.saving = saving  # saving(keep, group, width): what narrowing one group buys
        self.decisions = 0
        self.correction = 1.0  # decision / in-process step, for the same widths (the last one)
        self.raw = None
        self.retry = False  # the decision of an in-band step read it outside: another round

    def _use(self, floors: dict[str, int]) -> None:
        self.floors = _floors(self.widths, floors)
        self.path = anchored_path(self.widths, self.choice, self.stairs, self.floors)
        self.t_end = path_end(self.widths, self.choice, self.floors)

    # -- one point --------------------------------------------------------------------------
    def _target(self, est=None) -> float:
        if self.budget.kind != "latency":
            return self.budget.value
        if self.budget.relative:
            return self.budget.value
        base_ms = est.base_ms if est is not None else self.base_ms
        return base_ms / self.budget.value

    def _measure(self, t: float, keep: dict[str, int]) -> tuple[Step, object]:
        """One step: kept fraction, or a paired speed-up (more sessions while its interval is
        wider than the band and straddles the decision)."""
        if self.budget.kind != "latency":
            s = Step(t, keep, self.counter(keep), how="count")
            self.steps.append(s)
            return s, None
        sessions, how = None, "step"
        for _ in range(3):
            self.raw = self.timer(keep, 0, sessions)
            est = _Scaled(self.raw, self.correction)
            b = self._target(est)
            s = Step(t, keep, est.estimate, est.low, est.high, how)
            self.steps.append(s)
            undecided = (est.low < b <= est.high) or \
                (b <= est.estimate <= (1 + BAND) * b and est.low < FLOOR * b)
            if not undecided:
                break
            sessions, how = (sessions or 6) * 2, "more"
        return s, est

    def _side(self, s: Step, est) -> int:
        """-1: too little pruned (slow / keeps too much), 0: in the band, +1: too much."""
        if self.budget.kind != "latency":
            lim = self.budget.value
            return -1 if s.value > lim else (0 if landed_kept(s.value, lim) else 1)
        b = self._target(est)
        if est.estimate < b:
            return -1
        return 0 if landed_speedup(est, b) else (1 if est.estimate > (1 + BAND) * b else -1)

    def _decide(self, t: float, keep: dict[str, int]) -> tuple[Step, object]:
        # in-process (0 processes): twice a step's sessions
        def once():
            return self.timer(keep, self.decision_processes,
                              None if self.decision_processes else 12)
        est = once()
        b = self._target(est)
        for _ in range(MORE_DECISIONS):
            # the interval reaches from under the floor to over the budget (in the band but not
            # surely at the floor, or read under the budget but not surely): measure more, the
            # samples pooled, before deciding
            if not (est.low < FLOOR * b and est.high >= b) or not hasattr(est, "pooled"):
                break
            est = est.pooled(once())
        s = Step(t, keep, est.estimate, est.low, est.high, "decision")
        self.steps.append(s)
        return s, est

    # -- the bisection ----------------------------------------------------------------------
    def _point(self, t: float, keep: dict[str, int]) -> tuple[Step, object, bool]:
        """One point of a path, measured once (a width set seen before is remembered, its step
        re-read under the current calibration); an in-band step is decided in fresh processes.
        Returns (step, estimate, new)."""
        key = tuple(sorted(keep.items()))
        new = key not in self.seen
        if new:
            s, est = self._measure(t, keep)
            self.seen[key] = {"t": t, "step": s, "raw": self.raw, "decided": None}
            if self._side(s, est) == 0 and self.budget.kind == "latency" and \
                    self.decisions < MAX_DECISIONS:
                self._decide_point(key)
        return (*self._current(key), new)

    def _decide_point(self, key: tuple) -> tuple[Step, object]:
        """Decide a measured point in fresh processes; the decision replaces its step from now
        on, and the steps are calibrated on it: the step process reads the same widths this
        much faster than fresh processes do (its state, its order)."""
        p = self.seen[key]
        self.decisions += 1
        ds, dest = self._decide(p["t"], dict(key))
        p["decided"] = (ds, dest)
        if p["raw"] is not None:
            self.correction = dest.estimate / p["raw"].estimate
        return ds, dest

    def _current(self, key: tuple) -> tuple[Step, object]:
        p = self.seen[key]
        if p["decided"] is not None:
            return p["decided"]
        if p["raw"] is None:  # a count
            return p["step"], None
        est = _Scaled(p["raw"], self.correction)
        st = p["step"]
        return Step(st.t, st.keep, est.estimate, est.low, est.high, st.how), est

    def _bracket(self, ts: dict[tuple, float]) -> tuple:
        """The tightest (too slow, too fast) pair among the points ``ts`` (key -> t) as they read
        now: a decision recalibrates every step, so sides are re-read, not remembered."""
        lo = hi = None
        for key, t in ts.items():
            s, est = self._current(key)
            side = self._side(s, est)
            if side < 0 and (lo is None or t > lo[0]):
                lo = (t, (s, est))
            if side > 0 and (hi is None or t < hi[0]):
                hi = (t, (s, est))
        return lo, hi

    def land(self) -> Landing:
        """Bisect the anchored path; where two neighbouring points of it bracket the band, bisect
        the single-stair moves between them (one group's stair at a time, the best saving per
        channel first).  Where the staircase step taken reads under the budget in fresh
        processes ("missed"), that decision recalibrates the steps and the bisection goes on
        (``MISSED_ROUNDS`` times); where the path's end cannot meet the budget, the next set of
        floors is tried, and the best reached is reported."""
        self.seen: dict[tuple, dict] = {}
        best = None
        for i, f in enumerate(self.floor_sets):
            if i:
                self._use(f)
                log(f"the path to its least widths reached {best.value:.4g} against "
                    f"{best.target:.4g}: trying one that stops at "
                    f"{max(self.floors.values())} channels a group")
            for _ in range(1 + MISSED_ROUNDS):
                self.retry = False
                got = self._land_path()
                if (got.status != "missed" and not self.retry) or \
                        self.decisions >= MAX_DECISIONS + 1 + MISSED_ROUNDS:
                    break
            if got.status != "unreachable":
                return got
            if best is None or got.value > best.value:
                best = got
        log(best.message)
        return best

    def _aim(self, est) -> float:
        """The value a step aims at: the middle of the band."""
        b = self._target(est)
        return b * (1 + BAND / 2) if self.budget.kind == "latency" else b * (1 - CEIL_BAND / 2)

    def _next_t(self, lo, hi, widths: list[float]) -> float:
        """The next ``t`` between the too-slow ``lo`` and the too-fast ``hi`` (``(t, (step,
        estimate))``, either None): where the value (speed-up or kept fraction), interpolated
        linearly in its logarithm between them (the unpruned model, value 1, standing in for a
        missing ``lo``), reaches the middle of the band.  Guarded as regula falsi is: kept a
        tenth of the bracket from either end, and a plain halving wherever the last two steps
        together did not halve the bracket; with no ``hi`` yet, an extrapolation from ``lo``,
        at most doubling its ``t``.  On smooth paths it lands in fewer timed steps than
        bisection (160 simulated 18-group landings at 1.5-4x, 1% noise: 4.9 timed steps
        against 6.9 on average)."""
        lo_t, lo_v = (lo[0], lo[1][0].value) if lo else (0.0, 1.0)
        est = (hi or lo)[1][1]
        aim = math.log(self._aim(est))
        if hi is None:
            far = min(self.t_end, max(2 * lo_t, lo_t + 0.25))
            if lo_t <= 0 or lo_v <= 0 or abs(math.log(lo_v)) < 1e-9:
                return far
            t = lo_t * aim / math.log(lo_v)
            return min(far, max(lo_t + 0.05 * (far - lo_t), t))
        return self._falsi(lo_t, lo_v, hi[0], hi[1][0].value, est, widths)

    def _falsi(self, lo_x: float, lo_v: float | None, hi_x: float, hi_v: float | None, est,
               widths: list[float]) -> float:
        """The guarded regula falsi step between ``lo_x`` (value ``lo_v``, too slow) and
        ``hi_x`` (too fast): see :meth:`_next_t`; halving where a value is unknown."""
        w = hi_x - lo_x
        mid = (lo_x + hi_x) / 2
        if lo_v is None or hi_v is None or (len(widths) >= 3 and w > widths[-3] / 2):
            return mid
        a, b = math.log(max(lo_v, 1e-12)), math.log(max(hi_v, 1e-12))
        x = mid if a == b else lo_x + (math.log(self._aim(est)) - a) / (b - a) * w
        return min(hi_x - w / 10, max(lo_x + w / 10, x))

    def _land_path(self) -> Landing:
        on_path: dict[tuple, float] = {}
        measured = 0
        t = 1.0
        lo = hi = None
        widths: list[float] = []  # the bracket's width after each step that had one
        for _ in range(4 * MAX_STEPS):  # repeated widths cost nothing: they are remembered
            if measured >= MAX_STEPS:
                break
            keep = self.path(t)
            s, est, new = self._point(t, keep)
            measured += new
            side = self._side(s, est)
            key = tuple(sorted(keep.items()))
            # the path is constant between stairs: widths read too slow stand for the furthest
            # t that gave them, too fast ones for the nearest, so the next step moves on
            on_path[key] = t if key not in on_path else \
                (max if side < 0 else min)(on_path[key], t)
            if side == 0:
                return self._landed(s, est)
            lo, hi = self._bracket(on_path)
            lo_t = lo[0] if lo else 0.0
            if hi is None:  # nothing fast enough yet: further along the path
                if lo_t >= self.t_end:
                    key = tuple(sorted(lo[1][0].keep.items()))
                    if self.budget.kind != "latency" or self.seen[key]["decided"]:
                        return self._unreachable(*lo[1])
                    # the path's end, read in-process under the budget: decide it in fresh
                    # processes before calling the budget unreachable (it may read over it)
                    s, est = self._decide_point(key)
                    if self._side(s, est) == 0:
                        return self._landed(s, est)
                    continue
                t = self._next_t(lo, None, widths)
                continue
            if hi[0] - lo_t < 1e-4 * max(1.0, self.t_end):
                break  # no point of the path between a too-slow and a too-fast neighbour
            widths.append(hi[0] - lo_t)
            t = self._next_t(lo, hi, widths)
        if hi is None:
            return self._unreachable(*lo[1])
        lo_keep = lo[1][0].keep if lo else self.path(0.0)
        got = self._between(lo_keep, hi[1][0].keep, lo[0] if lo else 0.0, hi[0], MAX_STEPS)
        if isinstance(got, Landing):
            return got
        lo_s = got[0] or (lo[1] if lo else None)
        hi_s = got[1] or hi[1]
        got = self._widen(lo_s, hi_s)
        if isinstance(got, Landing):
            return got
        if got and got[1] and got[1][0].value < hi_s[0].value:
            lo_s, hi_s = got[0] or lo_s, got[1]  # the widened chain came closer to the band
        return self._staircase(lo_s, hi_s, "" if measured < MAX_STEPS else "out of steps")

    def _widen(self, lo_s, hi_s):
        """Where one stair of one group jumps over the band (the too-slow and the too-fast
        neighbour differ in that group only; on a runtime this is often a kernel-layout cliff,
        every conv of a stage reaching a multiple of the vector width at once), keep that stair
        and give the other groups channels back: from ``hi`` with every other group at its
        unpruned width (too slow, else the stair alone overshoots and the staircase stands)
        down to ``hi``, one stair at a time, bisected.  Returns the landing, the closest pair it
        measured, or None where it does not apply."""
        hi_k = hi_s[0].keep
        lo_k = lo_s[0].keep if lo_s else self.widths
        diff = [g for g in hi_k if hi_k[g] != lo_k[g]]
        if len(diff) != 1:
            return None
        top = {**self.widths, diff[0]: hi_k[diff[0]]}
        if top == hi_k:
            return None
        t = hi_s[0].t
        s, est, _ = self._point(t, top)
        side = self._side(s, est)
        if side == 0:
            return self._landed(s, est)
        if side > 0:
            return None
        got = self._between(top, hi_k, t, t, MAX_STEPS // 2)
        if isinstance(got, Landing):
            return got
        return [got[0] or (s, est), got[1]]

    def _moves(self, lo: dict[str, int], hi: dict[str, int]) -> list[tuple[str, int]]:
        """The single-stair moves from ``lo`` down to ``hi``: the groups that differ, largest
        saving per channel first, each narrowed through every stair top between its two widths
        (every width for a count budget), widest first, so the chain is monotone."""
        diff = [g for g in lo if lo[g] != hi[g]]
        if self.saving is not None:
            diff.sort(key=lambda g: -self.saving(lo, g, hi[g]) / max(1, lo[g] - hi[g]))
        moves = []
        for g in diff:
            if self.stairs and self.stairs.get(g):
                mid = sorted((w for w in self.stairs[g] if hi[g] < w < lo[g]), reverse=True)
            else:
                mid = list(range(lo[g] - 1, hi[g], -1))
            moves += [(g, w) for w in mid + [hi[g]]]
        return moves

    def _between(self, lo: dict[str, int], hi: dict[str, int], lo_t: float, hi_t: float,
                 budget: int):
        """A finer monotone path where all groups snapping at once jumps over the band: from a
        too-slow ``lo`` to a too-fast ``hi`` one stair of one group at a time
        (:meth:`_moves`), searched as the path is (:meth:`_falsi` on the chain's index).
        Returns the landing, else the closest too-slow and too-fast points it measured (None
        where it measured none)."""
        moves = self._moves(lo, hi)
        if len(moves) < 2:
            return [None, None]
        keeps = [dict(lo)]
        for g, w in moves:
            keeps.append({**keeps[-1], g: w})
        on: dict[tuple, float] = {}
        a, b, measured = 0, len(moves), 0  # a: too slow (lo), b: too fast (hi)
        widths: list[float] = []

        def value(i: int):  # the chain's point i as it reads now, where it was measured
            key = tuple(sorted(keeps[i].items()))
            return self._current(key) if key in self.seen else (None, None)
        while b - a > 1 and measured < budget:
            widths.append(b - a)  # the index regula falsi of :meth:`_next_t`, on the chain
            (sa, ea), (sb, eb) = value(a), value(b)
            k = int(round(self._falsi(a, sa.value if sa else None, b, sb.value if sb else None,
                                      eb or ea, widths)))
            k = min(b - 1, max(a + 1, k))
            t = lo_t + (hi_t - lo_t) * k / len(moves)
            s, est, new = self._point(t, keeps[k])
            measured += new
            on[tuple(sorted(keeps[k].items()))] = k
            if self._side(s, est) == 0:
                return self._landed(s, est)
            near = self._bracket(on)
            a = near[0][0] if near[0] else 0
            b = near[1][0] if near[1] else len(moves)
        near = self._bracket(on)
        return [near[0][1] if near[0] else None, near[1][1] if near[1] else None]

    # -- outcomes ---------------------------------------------------------------------------
    def _landed(self, s: Step, est) -> Landing:
        """A landing rests on fresh processes, always: a point read inside the band in-process
        after the stage's decisions are spent (``MAX_DECISIONS``) is decided now, and where
        they read it outside the band it is not called landed (two cells were, on a step
        calibrated by an earlier decision, and re-measured outside their interval: resnet56
        global at 3x by 5%); under the budget it is missed, over the band a staircase step, and
        either way the rounds go on, recalibrated by that decision."""
        if self.budget.kind != "latency" or s.how == "decision":
            return self._result("landed", s, est)
        key = tuple(sorted(s.keep.items()))
        s, est = self._decide_point(key)
        if self._side(s, est) == 0:
            return self._result("landed", s, est)
        self.retry = True
        lo, _ = self._bracket({k: p["t"] for k, p in self.seen.items()
                               if k != key and p["raw"] is not None and p["t"] <= s.t})
        return self._staircase(lo[1] if lo else None, (s, est),
                               f"a point read inside the band in-process reads {est.estimate:.4g}"
                               " in fresh processes")

    def _json(self, est):
        return est.to_json() if est is not None else None

    def _result(self, status: str, s: Step, est, **kw) -> Landing:
        return Landing(status, s.keep, self._target(est), s.value, self._json(est), self.steps,
                       correction=self.correction, **kw)

    def _staircase(self, lo, hi, note: str = "") -> Landing:
        s, est = hi
        if self.budget.kind == "latency" and s.how != "decision":
            # the step taken is read in fresh processes too, as a landed point is: an in-process
            # step can read far off under a neighbour's load (abc at 2x took a step read 2.45x,
            # [1.43, 2.52], that re-measured 1.44x); the result reports what they read, and
            # a reading under the budget recalibrates the steps for the next round
            s, est = self._decide_point(tuple(sorted(s.keep.items())))
            if self._side(s, est) == 0:  # fresh processes read it inside the band: landed
                return self._result("landed", s, est)
            if est.estimate < self._target(est):
                note = (f"{note}; " if note else "") + (
                    f"its reading in fresh processes, {est.estimate:.4g}, is below the budget")
        b = self._target(est)
        nb = [{"side": "too slow" if self.budget.kind == "latency" else "keeps too much",
               "t": lo[0].t if lo else 0.0, "value": lo[0].value if lo else None},
              {"side": "meets the budget", "t": s.t, "value": s.value}]
        what = "speed-up" if self.budget.kind == "latency" else f"{self.budget.kind} kept"
        below = self.budget.kind == "latency" and s.how == "decision" and est.estimate < b
        msg = (("no point decided inside the band: the last decided reads under"
                if below else "the width staircase has no step inside the band: took the nearest"
                " that meets") + f" {self.budget} ({what} {s.value:.4g} vs {b:.4g}); the next "
               "step down reached "
               f"{nb[0]['value'] if nb[0]['value'] is not None else 'the unpruned model'}"
               + (f" ({note})" if note else ""))
        log(msg)
        return Landing("missed" if below else "staircase", s.keep, b, s.value, self._json(est),
                       self.steps, nb, msg, self.correction)

    def _unreachable(self, s: Step, est) -> Landing:
        b = self._target(est)
        what = "speed-up" if self.budget.kind == "latency" else f"{self.budget.kind} kept"
        least = max(self.floors.values())
        tried = "" if len(self.floor_sets) == 1 else \
            f"; paths stopping at {len(self.floor_sets)} different least widths were tried"
        msg = (f"budget {self.budget} cannot be met: the most pruned model on the path "
               f"({'one channel' if least == 1 else f'at most {least} channels'} per group) "
               f"reached {what} {s.value:.4g} against {b:.4g}; it is returned{tried}")
        return Landing("unreachable", s.keep, b, s.value, self._json(est), self.steps,
                       message=msg, correction=self.correction)


def stairs_of(predictor, widths: dict[str, int]) -> dict[str, list[int]]:
    """Each group's stair tops on the target (the widest width at each latency step), read from
    the search's latency table at the unpruned widths."""
    return {g: predictor.useful_widths(g, widths) for g in widths}


def check_processes(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n == 1:
        raise PrunelabError(f"decision_processes must be 0 (in-process sessions) or >= 2, got "
                            f"{n!r}; 6 or more for a final decision")
    return n


def unpruned_meets(budget: Budget, base_ms: float, gain: float = 1.0) -> bool:
    """An absolute latency budget the unpruned model already meets, or (int8) a relative one
    its ``gain`` (measured speed-up of the unpruned int8 model over the fp32 one) meets."""
    if budget.kind != "latency":
        return False
    return gain >= budget.value if budget.relative else base_ms <= budget.value


