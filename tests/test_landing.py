"""The landing stage (issue 23): every method's choice lands on the budget, measured.

Unit tests drive :class:`prunelab.searches.landing.Lander` with timers whose truth is known (a
width cost, the scripted target with seeded noise and an injected order bias), so the bisection,
the decision, the staircase and the impossible budget are exercised without timing noise; the
end-to-end tests run every registered method on the deterministic ``scripted`` target.  No test
asserts a wall-clock time."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from prunelab.searches.budget import Budget
from prunelab.searches.landing import (BAND, CEIL_BAND, FLOOR, MAX_DECISIONS, MISSED_ROUNDS,
                                       Lander, anchored_path, landed_speedup, path_end)

WIDTHS = {"a": 64, "b": 64, "c": 32}


def _cost(keep):  # a width cost: quadratic in each group's width
    return 1.0 + sum((k / 16) ** 2 for k in keep.values())


def _est(r, low=None, high=None, base_ms=2.0):
    return SimpleNamespace(estimate=r, low=r if low is None else low,
                           high=r if high is None else high, base_ms=base_ms,
                           candidate_ms=base_ms / r, level=0.969,
                           to_json=lambda: {"estimate": r, "low": low or r, "high": high or r})


def _timer(cost=_cost, calls=None):
    base = cost(WIDTHS)

    def timer(keep, processes, sessions):
        if calls is not None:
            calls.append((processes, sessions))
        return _est(base / cost(keep))
    return timer


def test_anchored_path_is_monotone_and_anchored():
    choice = {"a": 32, "b": 48, "c": 32}
    path = anchored_path(WIDTHS, choice)
    assert path(0.0) == WIDTHS and path(1.0) == choice
    ts = [i / 10 for i in range(0, 60)]
    for g in WIDTHS:
        ws = [path(t)[g] for t in ts]
        assert all(x >= y for x, y in zip(ws, ws[1:])), g        # non-increasing
        assert min(ws) >= 1                                       # never 0 channels
    assert path(path_end(WIDTHS, choice))["a"] == 1
    assert path(2.0)["c"] == 32          # a group the choice left whole stays whole
    # snapped up to the stair tops
    snapped = anchored_path(WIDTHS, choice, {g: [8, 16, 24, 32, 40, 48, 56, 64] for g in WIDTHS})
    assert all(w % 8 == 0 for t in ts for w in snapped(t).values())
    assert all(snapped(t)[g] >= path(t)[g] for t in ts for g in WIDTHS)


@pytest.mark.parametrize("choice, budget", [
    ({"a": 56, "b": 56, "c": 28}, "speedup=2"),     # the choice is too slow: prune further
    ({"a": 8, "b": 8, "c": 8}, "speedup=2"),        # far too fast: give channels back
    ({"a": 16, "b": 64, "c": 32}, "speedup=1.5"),   # a lopsided choice keeps its shape
    ({"a": 16, "b": 64, "c": 32}, "speedup=3"),     # ... until its groups are spent
])
def test_bisection_lands_in_the_band(choice, budget):
    calls = []
    land = Lander(Budget.parse(budget), WIDTHS, choice, timer=_timer(calls=calls),
                  decision_processes=6).land()
    b = Budget.parse(budget).value
    assert land.status == "landed" and land.met, land.message
    assert b <= land.value <= (1 + BAND) * b
    assert land.steps[-1].how == "decision" and calls[-1][0] == 6   # decided in 6 processes
    # the landed widths are on the path anchored on the choice
    if choice["b"] == 64 and b < 1.7:
        assert land.keep["b"] == 64 and land.keep["c"] == 32 and land.keep["a"] < 64
    elif choice["b"] == 64:       # past the choice's own groups: the rest narrowed too
        assert land.keep["a"] == 1 and land.keep["b"] < 64


SMOOTH = [({"a": 56, "b": 56, "c": 28}, 2), ({"a": 8, "b": 8, "c": 8}, 2),
          ({"a": 16, "b": 64, "c": 32}, 1.5), ({"a": 16, "b": 64, "c": 32}, 3),
          ({"a": 40, "b": 20, "c": 30}, 4), ({"a": 60, "b": 50, "c": 10}, 2.5)]


def test_a_smooth_path_lands_in_fewer_steps_than_bisection():
    """The next step interpolates the speed-up's logarithm between the bracket's ends (regula
    falsi, guarded): on these six smooth paths halving the bracket took 35 timed steps in all
    (5, 7, 3, 6, 8, 6), the interpolation takes 24; each still lands, decided."""
    steps = []
    for choice, b in SMOOTH:
        land = Lander(Budget.parse(f"speedup={b}"), WIDTHS, choice, timer=_timer(),
                      decision_processes=6).land()
        assert land.status == "landed" and b <= land.value <= (1 + BAND) * b
        steps.append(sum(s.how == "step" for s in land.steps))
    assert sum(steps) <= 26 and max(steps) <= 5, steps


def test_a_decision_that_disagrees_moves_the_bisection():
    """An in-process step reads in the band, but the separate-process decision reads the same
    widths 8% slower (as an order or process bias would): the stage does not take the step's word
    and lands where the decision agrees."""
    base = _cost(WIDTHS)
    decided = []

    def timer(keep, processes, sessions):
        r = base / _cost(keep)
        if processes:
            decided.append(r / 1.08)
            return _est(r / 1.08)
        return _est(r)
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 40, "b": 40, "c": 20}, timer=timer,
                  decision_processes=6).land()
    assert land.status == "landed" and len(decided) >= 2
    assert 2 <= land.value <= 2.1 and land.steps[-1].how == "decision"


def test_an_interval_wider_than_the_band_is_measured_again():
    base = _cost(WIDTHS)
    seen = []

    def timer(keep, processes, sessions):
        r = base / _cost(keep)
        seen.append(sessions)
        if processes == 0 and sessions is None:  # a short step: interval across the floor
            return _est(r, r * 0.9, r * 1.1)
        return _est(r, r * 0.99, r * 1.01)
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 44, "b": 44, "c": 22}, timer=timer,
                  decision_processes=0).land()
    assert land.status == "landed"
    assert any(s.how == "more" for s in land.steps) and 12 in seen
    assert landed_speedup(_est(land.value, land.value * 0.99), 2.0)


def test_staircase_takes_the_nearest_step_that_meets_the_floor():
    """Latency in stairs of 16 channels (cost 0.2 + one unit a stair): no width set reaches
    [2, 2.1]x (10.2 / 5.2 = 1.96x, 10.2 / 4.2 = 2.43x); the stage takes the nearest point that
    is at least 2x and reports both neighbours."""
    def stairs(keep):
        return 0.2 + sum(math.ceil(k / 16) for k in keep.values())
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 48, "b": 48, "c": 24},
                  timer=_timer(stairs), decision_processes=0).land()
    assert land.status == "staircase" and land.met and land.value > 2 * (1 + BAND)
    slow, fast = land.neighbours
    assert slow["value"] < 2 <= fast["value"] == land.value
    assert "no step inside the band" in land.message


def test_a_one_group_cliff_lands_by_giving_the_other_groups_channels_back():
    """A layout cliff: group a costs 12 units more while it is wider than 32 channels, so its
    one step 33 -> 32 takes the path from 1.41x to 2.17x, over the band [2, 2.1].  The stage
    keeps that step and gives b and c channels back, one at a time, until it lands."""
    def cliff(keep):
        return _cost(keep) + (12.0 if keep["a"] > 32 else 0.0)
    choice = {"a": 32, "b": 60, "c": 30}
    land = Lander(Budget.parse("speedup=2"), WIDTHS, choice, timer=_timer(cliff),
                  decision_processes=6).land()
    assert land.status == "landed", land.message
    assert 2 <= land.value <= 2 * (1 + BAND)
    assert land.keep["a"] <= 32 and (land.keep["b"] > 60 or land.keep["c"] > 30)


def test_a_decision_whose_interval_reaches_under_the_floor_measures_more():
    """A decision in the band whose interval reaches under 0.97 x the budget (one process read
    slow) is measured again, the samples pooled, before the stage decides: it lands there."""
    from prunelab.latency.paired import _estimate

    base = _cost(WIDTHS)
    rounds = []

    def timer(keep, processes, sessions):
        r = base / _cost(keep)
        if not processes:
            return _est(r)
        rounds.append(r)
        spread = [1.0, 1.01, 0.99, 1.005, 0.995, 0.85] if len(rounds) % 2 else [1.0] * 6
        return _estimate([math.log(r * f) for f in spread], 0.95, 0.0, processes, 2, 1.0,
                         1.0 / r, "cpu", {})
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 40, "b": 40, "c": 20}, timer=timer,
                  decision_processes=6).land()
    assert land.status == "landed", land.message
    assert land.steps[-1].how == "decision"
    assert len(rounds) >= 2 and len(land.estimate["samples"]) >= 12  # pooled


def test_a_staircase_step_read_under_the_budget_but_not_surely_is_measured_again():
    """The staircase's step, decided in fresh processes, reads just under the budget with an
    interval that reaches over it (one slow process): it is measured again, the samples pooled,
    and the pooled reading (over the budget) stands, not `missed`."""
    from prunelab.latency.paired import _estimate

    def stairs(keep):
        return 0.2 + sum(math.ceil(k / 16) for k in keep.values())
    base = stairs(WIDTHS)
    rounds = []

    def timer(keep, processes, sessions):
        r = base / stairs(keep)
        if not processes:
            return _est(r)
        rounds.append(r)
        spread = [0.75, 0.75, 0.75, 0.8, 1.0, 1.02] if len(rounds) == 1 else [1.01] * 6
        return _estimate([math.log(r * f) for f in spread], 0.95, 0.0, processes, 2, 1.0,
                         1.0 / r, "cpu", {})
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 48, "b": 48, "c": 24}, timer=timer,
                  decision_processes=6).land()
    assert land.status == "staircase" and land.met, land.message
    assert len(rounds) >= 2 and land.value >= 2


def _stair_timer(fresh, decided: list):
    """A 16-channel staircase; fresh processes read ``fresh(r)`` where a step reads ``r``."""
    def stairs(keep):
        return 0.2 + sum(math.ceil(k / 16) for k in keep.values())
    base = stairs(WIDTHS)

    def timer(keep, processes, sessions):
        r = base / stairs(keep)
        if processes:
            decided.append(r)
            return _est(fresh(r))
        return _est(r)
    return timer


def test_the_staircase_step_taken_is_read_in_fresh_processes():
    """The step the staircase takes is decided in fresh processes like a landed point; when they
    read it below the budget (an in-process reading inflated by a neighbour's load), that
    decision recalibrates the steps and the bisection goes on to a step they read over it (dla46_c
    on onnxruntime-cpu stopped at a step read 1.448x for 1.5x)."""
    decided = []
    timer = _stair_timer(lambda r: r / 1.3, decided)
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 48, "b": 48, "c": 24}, timer=timer,
                  decision_processes=6).land()
    assert land.status == "staircase" and land.met and len(decided) >= 2
    assert land.steps[-1].how == "decision" and land.value == pytest.approx(decided[-1] / 1.3)
    assert land.value >= 2
    missed = [s for s in land.steps if s.how == "decision" and s.value < 2]
    assert missed, "the first step taken read under the budget in fresh processes"
    # ... and the step taken is the next one along the path, not a jump to the path's end
    assert land.steps[-1].t > missed[0].t and land.value < 3


def test_a_staircase_step_fresh_processes_read_inside_the_band_is_landed():
    """The step a staircase takes is decided in fresh processes; where they read it inside the
    band (the in-process steps jumped over it), it is a landing, not a staircase (resnet56 global
    at 3x: 3.105x [2.959, 3.244] was reported as a staircase step)."""
    decided = []
    timer = _stair_timer(lambda r: min(r, 2.05) if r >= 2 else r, decided)
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 48, "b": 48, "c": 24}, timer=timer,
                  decision_processes=6).land()
    assert land.status == "landed" and not land.neighbours, land.message
    assert land.value == pytest.approx(2.05) and land.steps[-1].how == "decision"


def test_an_impossible_budget_says_what_was_reached():
    land = Lander(Budget.parse("speedup=50"), WIDTHS, {"a": 32, "b": 32, "c": 16},
                  timer=_timer(), decision_processes=0).land()
    assert land.status == "unreachable" and not land.met
    assert all(w == 1 for w in land.keep.values())            # the most pruned point
    assert "cannot be met" in land.message and f"{land.value:.4g}" in land.message


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_a_ceiling_on_what_is_kept_lands_within_3_percent(kind):
    def kept(keep):
        return sum(k * k for k in keep.values()) / sum(w * w for w in WIDTHS.values())
    for v, choice in ((0.5, {"a": 60, "b": 60, "c": 30}), (0.3, {"a": 16, "b": 16, "c": 8})):
        land = Lander(Budget.parse(f"{kind}={v}"), WIDTHS, choice, counter=kept).land()
        assert land.status == "landed", land.message
        assert (1 - CEIL_BAND) * v <= land.value <= v and land.value == kept(land.keep)


def test_pairing_cancels_an_order_bias_on_the_scripted_target():
    """The scripted target with seeded noise and an injected order bias (the model made first in
    a session reads 15% slower): paired timing lands on the true ratio's band."""
    from prunelab.latency.paired import STEP_PROTOCOL, paired_speedup
    from prunelab.targets import TargetConfig
    from prunelab.targets.scripted import Scripted

    torch.manual_seed(0)

    def net(w):
        return nn.Sequential(nn.Conv2d(8, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 8, 3))
    target = Scripted(TargetConfig("scripted"), noise=0.03, order_bias=0.15, seed=1)
    exact = Scripted(TargetConfig("scripted"))
    widths = {"w": 64}

    def timer(keep, processes, sessions, tgt=target):
        return paired_speedup(net(64), net(keep["w"]), tgt, (8, 16, 16), STEP_PROTOCOL,
                              processes=0, seed=len(keep))
    land = Lander(Budget.parse("speedup=2"), widths, {"w": 40}, timer=timer,
                  decision_processes=0).land()
    truth = timer(land.keep, 0, None, exact).estimate
    assert land.status in ("landed", "staircase")
    assert truth >= FLOOR * 2 and abs(land.value / truth - 1) < 0.05


# ---------------------------------------------------------------- end to end, every method

OPTS = {"nsga2": {"pop": 8, "gens": 2, "sens_ratios": [0.5], "max_options": 4},
        "abc": {"food": 3, "cycles": 1, "train_batches": 1},
        "cie": {"ratios": [0.3, 0.6]}, "omp-search": {"max_steps": 4}}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 3)).eval()


def _loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 1, 16, 16, generator=g), torch.randint(0, 3, (48,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]


@pytest.mark.parametrize("method", ["uniform", "global", "cie", "omp-search", "abc", "nsga2",
                                    "torch-pruning"])
def test_every_method_lands_on_the_scripted_target(method, tmp_path):
    import prunelab as pl
    from prunelab.searches import SEARCHES

    assert method in SEARCHES.names()
    crit = {"omp-search": "fp-omp", "torch-pruning": None}.get(method, "l1")
    opts = {k: v for k, v in OPTS.get(method, {}).items()
            if k in SEARCHES.get(method).meta["options"]}
    res = pl.search(_net(), (1, 16, 16), train=_loader(), val=_loader(1), target="scripted",
                    budget="speedup=1.8", method=method, criterion=crit, options=opts,
                    recal_batches=1, val_images=0, measure_front=3, decision_processes=0,
                    out=tmp_path / "s", cache_dir=str(tmp_path / "cache"))
    land = res.chosen["landing"]
    assert res.chosen["budget_met"], land
    if land["status"] == "landed":
        assert 1.8 <= res.speedup <= 1.8 * (1 + BAND)
    else:  # the staircase has no step in the band: both neighbours shown, the floor met
        assert land["status"] == "staircase" and res.speedup >= 1.8
        assert land["neighbours"][0]["value"] is None or land["neighbours"][0]["value"] < 1.8
    assert "method_choice" in res.chosen and res.chosen["speedup_interval"][0] <= res.speedup


def test_an_absolute_latency_budget_the_unpruned_model_meets(tmp_path):
    import prunelab as pl
    from prunelab.targets import TargetConfig
    from prunelab.targets.scripted import scripted_ms

    base = scripted_ms(_net(), [(1, 16, 16)], 1)
    res = pl.search(_net(), (1, 16, 16), train=_loader(), val=_loader(1), target="scripted",
                    budget=f"latency={2 * base:.4f}ms", method="uniform", criterion="l1",
                    recal_batches=1, val_images=0, measure_front=2, decision_processes=0,
                    out=tmp_path / "s", cache_dir=str(tmp_path / "cache"))
    land = res.chosen["landing"]
    assert land["status"] == "unpruned" and "already meets" in land["message"]
    assert res.keep == res.widths_before and res.chosen["budget_met"]
    assert TargetConfig  # imported for the scripted target's registration


def test_a_step_fresh_processes_always_read_under_the_budget_ends_missed():
    """The rounds after a missed step are bounded: where fresh processes read every point under
    the budget (here they never read over 1.95x, whatever the step process says), the stage
    never calls the budget met, reports their figure and says what happened."""
    decided = []
    timer = _stair_timer(lambda r: min(r, 1.95), decided)
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 48, "b": 48, "c": 24}, timer=timer,
                  decision_processes=6).land()
    assert land.status in ("missed", "unreachable") and not land.met
    assert land.value == pytest.approx(1.95)
    assert "below the budget" in land.message or "cannot be met" in land.message
    assert 2 <= len(decided) <= MAX_DECISIONS + MISSED_ROUNDS + 2


def test_a_landing_rests_on_fresh_processes_after_the_decisions_are_spent():
    """Fresh processes drift away from the step process decision after decision (each reads 6%
    slower than the one before), so the steps' calibration always lags: once the stage's
    decisions are spent, a step read inside the band in-process is still decided before it is
    called landed (resnet56 global at 3x landed on such a step, 3.061x [3.020, 3.098], and
    re-measured 2.913x), and a decision outside the band is never reported as landed."""
    base = _cost(WIDTHS)
    decided = []

    def timer(keep, processes, sessions):
        r = base / _cost(keep)
        if processes:
            decided.append(r)
            return _est(r / 1.06 ** len(decided), base_ms=2.0)
        return _est(r)
    land = Lander(Budget.parse("speedup=2"), WIDTHS, {"a": 40, "b": 40, "c": 20}, timer=timer,
                  decision_processes=6).land()
    assert len(decided) > MAX_DECISIONS                  # decided past the spent decisions
    assert land.steps[-1].how == "decision", land.steps[-1]
    fresh = decided[-1] / 1.06 ** len(decided)
    assert land.value == pytest.approx(fresh)            # the figure is the last decision's
    assert (land.status == "landed") == (2 <= fresh <= 2 * (1 + BAND)), land.status
    assert len(decided) <= MAX_DECISIONS + MISSED_ROUNDS + 3


def test_the_path_stops_at_each_groups_floor():
    floors = {"a": 8, "b": 16, "c": 4}
    choice = {"a": 32, "b": 48, "c": 32}
    path = anchored_path(WIDTHS, choice, floors=floors)
    end = path_end(WIDTHS, choice, floors)
    ts = [i / 10 for i in range(0, 80)]
    for g in WIDTHS:
        ws = [path(t)[g] for t in ts]
        assert all(x >= y for x, y in zip(ws, ws[1:])) and min(ws) >= floors[g], g
    assert path(end) == floors and path(end + 1) == floors
    assert path(1.0) == choice   # still anchored on the choice


def test_the_paths_end_is_decided_in_fresh_processes_before_unreachable():
    """An in-process step that reads the path's end under the budget is not the verdict: fresh
    processes decide it (mobilenet_v3_small read 1.495x for 1.5x, re-measured 1.568x)."""
    base = _cost(WIDTHS)
    end = _cost({g: 1 for g in WIDTHS})
    b = base / end
    calls = []

    def timer(keep, processes, sessions):
        calls.append(processes)
        r = base / _cost(keep)
        return _est(r if processes else r * 0.96)   # the step process reads 4% slow
    land = Lander(Budget.parse(f"speedup={b:.6g}"), WIDTHS, {"a": 32, "b": 32, "c": 16},
                  timer=timer, decision_processes=6).land()
    assert land.status == "landed" and land.met and 6 in calls, land.message


def test_a_path_whose_end_is_slow_tries_a_floor_of_one_simd_block():
    """On a blocked-layout runtime a group at fewer channels than one block runs slower than at
    a whole block; a path to one channel a group then cannot land what a path that stops at the
    block can: the next set of floors is tried."""
    def blocked(keep):   # a width under 8 pays a layout change; otherwise 8-channel blocks
        return 1.0 + sum(3.0 if k < 8 else math.ceil(k / 8) * 0.5 for k in keep.values())
    base = blocked(WIDTHS)
    best = base / blocked({g: 8 for g in WIDTHS})
    assert base / blocked({g: 1 for g in WIDTHS}) < best / 1.2
    timer = _timer(blocked)
    want = round(best * 0.98, 3)
    one = Lander(Budget.parse(f"speedup={want}"), WIDTHS, {"a": 32, "b": 32, "c": 16},
                 timer=timer, decision_processes=0, floors={}).land()
    assert one.status != "landed"
    land = Lander(Budget.parse(f"speedup={want}"), WIDTHS, {"a": 32, "b": 32, "c": 16},
                  timer=timer, decision_processes=0,
                  floors=[{}, {g: 8 for g in WIDTHS}]).land()
    assert land.status in ("landed", "staircase") and land.met, land.message
    assert min(land.keep.values()) >= 8
    # nothing reaches it: the best of the floors tried is reported, said so
    land = Lander(Budget.parse(f"speedup={best * 1.5:.4g}"), WIDTHS, {"a": 32, "b": 32, "c": 16},
                  timer=timer, decision_processes=0,
                  floors=[{}, {g: 8 for g in WIDTHS}]).land()
    assert land.status == "unreachable" and land.value == pytest.approx(best, rel=0.01)
    assert "cannot be met" in land.message


def test_a_group_left_whole_by_the_choice_is_narrowed_past_its_coarse_stairs():
    """The choice leaves group ``a`` whole and prunes the others; past the point where they
    reach their floors the path narrows ``a``, snapped up to its stairs (64 or 4 channels here).
    Every ``t`` between gives the same widths; the extrapolation from the last too-slow point
    must move on past them, not repeat it until the steps run out and call the budget
    unreachable (the int8 3x cell did: 2.72x at one channel a group, ``conv1`` still whole)."""
    stairs = {"a": [4, 64], "b": list(range(1, 65)), "c": list(range(1, 33))}
    choice = {"a": 64, "b": 16, "c": 8}
    base = _cost(WIDTHS)
    end = base / _cost({"a": 4, "b": 1, "c": 1})
    # a budget just over what the others' floors reach: the extrapolation steps are short
    assert base / _cost({"a": 64, "b": 1, "c": 1}) < 2.4 < end
    land = Lander(Budget.parse("speedup=2.4"), WIDTHS, choice, timer=_timer(), stairs=stairs,
                  decision_processes=0).land()
    assert land.met and land.keep["a"] == 4, land.message
