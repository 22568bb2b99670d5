"""``--method torch-pruning`` is Torch-Pruning itself, and the staircase finish lands bisected
methods on a latency budget (the scripted target: latency is a known staircase, nothing is
timed)."""

import copy
import json

import pytest
import torch

from prunelab.criteria import make_criterion
from prunelab.models import build
from prunelab.pruning import output_layers, prunable_groups, prune
from prunelab.commands import run_search
from prunelab.searches import SearchConfig
from prunelab.searches.torch_pruning import removal_order, tp_trajectory, tp_widths
from prunelab.targets import TargetConfig


@pytest.mark.parametrize("importance, glob", [("magnitude-l2", False), ("magnitude-l2", True),
                                               ("lamp", True), ("fpgm", False)])
def test_widths_and_channels_match_torch_pruning_itself(importance, glob):
    """For a given ratio, prunelab's candidate (TP's widths, pruned with the ``tp`` criterion)
    is the very network Torch-Pruning's MetaPruner makes: same widths, same weights."""
    import torch_pruning as tp

    from prunelab.criteria.torch_pruning import tp_importance

    torch.manual_seed(0)
    net = build("resnet20", in_channels=1, num_classes=4, width=0.5).eval()
    _, groups = prunable_groups(net, (1, 32, 32))
    names = [g.name for g in groups]
    heads = [n for n, m in net.named_modules() if m in output_layers(net, (1, 32, 32))]
    keep = tp_widths(net, (1, 32, 32), 0.4, importance, glob, False, 1, 1.0, heads, names)
    ours = prune(net, make_criterion("tp", importance=importance), keep=keep,
                 input_shape=(1, 32, 32)).model
    theirs = copy.deepcopy(net)
    tp.pruner.MetaPruner(theirs, torch.zeros(1, 1, 32, 32), tp_importance(importance),
                         global_pruning=glob, pruning_ratio=0.4,
                         ignored_layers=[dict(theirs.named_modules())[h] for h in heads]).step()
    assert sum(keep.values()) < sum(g.width for g in groups)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.parametrize("glob", [False, True])
def test_progressive_candidates_are_torch_pruning_s_own_trajectory(glob):
    """Torch-Pruning's progressive pruning (its benchmarks' way): after each step of its
    trajectory, prunelab's candidate at that step's widths, pruned with the removal-order
    criterion, is the very network the pruner left (same widths, same weights)."""
    import torch_pruning as tp

    from prunelab.criteria.torch_pruning import tp_importance

    torch.manual_seed(0)
    net = build("resnet20", in_channels=1, num_classes=4, width=0.5).eval()
    _, groups = prunable_groups(net, (1, 32, 32))
    heads = [n for n, m in net.named_modules() if m in output_layers(net, (1, 32, 32))]
    traj, removed = tp_trajectory(net, (1, 32, 32), "magnitude-l2", glob, False, 1, 1.0, heads,
                                  groups, steps=4, hi=0.6)
    assert len(traj) == 5 and traj[0] == {g.name: g.width for g in groups}
    assert sum(traj[4].values()) < sum(traj[2].values()) < sum(traj[0].values())
    crit = removal_order("magnitude-l2", removed, 4)
    theirs = copy.deepcopy(net)
    pruner = tp.pruner.MetaPruner(theirs, torch.zeros(1, 1, 32, 32),
                                  tp_importance("magnitude-l2"), global_pruning=glob,
                                  pruning_ratio=0.6, iterative_steps=4,
                                  ignored_layers=[dict(theirs.named_modules())[h]
                                                  for h in heads])
    for k in range(1, 5):
        pruner.step()
        if k not in (2, 4):
            continue
        ours = prune(net, crit, keep=traj[k], input_shape=(1, 32, 32)).model
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].shape == b[key].shape, (k, key)
            torch.testing.assert_close(a[key], b[key], msg=f"step {k}: {key}")


def _staircase_run(method, model_dir, idx_dir, cache_dir, out, **opts):
    cfg = SearchConfig(method=method, criterion="l1" if method != "torch-pruning" else None,
                       target=TargetConfig("scripted"), budget="speedup=1.6", recal_batches=1,
                       val_images=0, measure_front=4, decision_processes=0,
                       options={"front": 0, **opts})
    return run_search(str(model_dir), cfg, out, cache_dir, "mnist-idx", str(idx_dir))


@pytest.fixture(scope="module")
def r20_dir(tmp_path_factory, tiny_data):
    """A full-width zoo ResNet-20 (16/32/64 channels: several stairs of 8 per group)."""
    from prunelab.io import ModelSpec, save_model

    torch.manual_seed(0)
    m = build("resnet20", in_channels=1, num_classes=tiny_data.num_classes).eval()
    spec = ModelSpec.for_zoo("resnet20", 1, tiny_data.num_classes, 1.0, 32, tiny_data.mean,
                             tiny_data.std, "mnist-idx")
    return save_model(m, spec, tmp_path_factory.mktemp("r20") / "r20")


@pytest.mark.parametrize("method", ["uniform", "torch-pruning", "global"])
def test_staircase_finish_lands_on_a_latency_budget(method, r20_dir, idx_dir, tmp_path,
                                                    monkeypatch):
    """On the scripted staircase target (channels cost in blocks of 8, unaligned widths 30%
    slower), the plain bisection stops at a cliff below the budget; the finish climbs the stairs
    back to within 10% of the (predicted) budget, still meets the budget measured, and does it
    deterministically.  (Where measured and predicted latency disagree, the finish also offers
    points bisected to 80-95% of the limit as finalists.)"""
    from prunelab.searches import methods

    cache = str(tmp_path / "cache")
    with monkeypatch.context() as m:  # the bisection alone, as before the finish existed
        m.setattr(methods, "staircase_finish", lambda ctx, keep, **kw: ctx.normalize(keep))
        import prunelab.searches.torch_pruning as tpm

        m.setattr(tpm, "staircase_finish", lambda ctx, keep, **kw: ctx.normalize(keep))
        r0 = _staircase_run(method, r20_dir, idx_dir, cache, tmp_path / "plain")
    r1 = _staircase_run(method, r20_dir, idx_dir, cache, tmp_path / "finished")
    info = r1["method_info"]["staircase"]
    assert 0 <= info["gap_to_budget"] <= 0.10 or "note" in info, info
    assert info["steps_climbed"] > 0 and info["chosen_predicted_ms"] <= info["limit_ms"]
    assert info["chosen_predicted_ms"] >= info["bisected_predicted_ms"]    # climbed up
    assert r1["chosen"]["budget_met"] and r1["chosen"]["measured_speedup"] >= 1.6
    assert "staircase" not in r0["method_info"]                    # the plain bisection
    again = _staircase_run(method, r20_dir, idx_dir, cache, tmp_path / "again")
    assert again["chosen"]["keep"] == r1["chosen"]["keep"]


def test_progressive_torch_pruning_lands_and_says_so(r20_dir, idx_dir, tmp_path):
    """``--option steps=N``: the search walks Torch-Pruning's progressive trajectory, lands on
    the budget, and records the steps with its options."""
    r = _staircase_run("torch-pruning", r20_dir, idx_dir, str(tmp_path / "cache"),
                       tmp_path / "prog", steps=20)
    assert r["method_info"]["torch_pruning"]["steps"] == 20
    assert r["chosen"]["budget_met"] and r["chosen"]["measured_speedup"] >= 1.6


def _skew_anchor(monkeypatch, factor: float) -> None:
    """Every pruned point predicted ``factor`` x its true figure (the unpruned one exactly)."""
    from prunelab.latency import predictor as predictor_mod

    real = predictor_mod.anchor_predictor

    def skewed(pred, *a, **kw):
        real(pred, *a, **kw)
        pred.anchor["scale"] *= factor
        pred.anchor["offset_ms"] *= factor
        return pred.anchor

    monkeypatch.setattr(predictor_mod, "anchor_predictor", skewed)


def _nsga2_run(r20_dir, idx_dir, tmp_path):
    # anchor=0: the search trusts the skewed predictor (its own measured anchor would correct
    # it, tests/test_core_api.py), so what is tested here is the landing after a blind choice;
    # sens_floor 0.25: the sweep bounds groups as these tests were set up against
    cfg = SearchConfig(method="nsga2", criterion="l1", target=TargetConfig("scripted"),
                       budget="speedup=1.6",
                       recal_batches=1, val_images=0, measure_front=4, decision_processes=0,
                       options={"pop": 8, "gens": 2, "sens_ratios": [0.5], "max_options": 4,
                                "anchor": 0, "sens_floor": 0.25})
    return run_search(str(r20_dir), cfg, tmp_path / "s", str(tmp_path / "cache"), "mnist-idx",
                      str(idx_dir))


@pytest.mark.parametrize("method, factor", [("uniform", 1.5), ("uniform", 0.6),
                                            ("torch-pruning", 1.5), ("nsga2", 1.5)])
def test_landing_lands_when_the_predictor_is_wrong(method, factor, r20_dir, idx_dir, tmp_path,
                                                   monkeypatch):
    """When the predictor disagrees with the target (every pruned point's prediction scaled by
    ``factor``: 1.5 makes the search choose points that measure far past a speed-up budget, 0.6
    points that measure short of it), the landing stage bisects the path anchored on the method's
    choice on *measured* speed-up and lands in [1, 1.05] x the budget; the method's own choice
    stays visible beside it."""
    _skew_anchor(monkeypatch, factor)
    if method == "nsga2":
        r = _nsga2_run(r20_dir, idx_dir, tmp_path)
    else:
        r = _staircase_run(method, r20_dir, idx_dir, str(tmp_path / "cache"), tmp_path / "s")
    c = r["chosen"]
    land, own = c["landing"], c["method_choice"]["measured_speedup"]
    assert not 1.6 <= own <= 1.6 * 1.05, f"the method's choice ({own:.3f}x) already landed"
    assert len(land["steps"]) >= 2 and c["budget_met"], land
    if land["status"] == "landed":
        assert 1.6 <= c["measured_speedup"] <= 1.6 * 1.05, c["measured_speedup"]
        assert c["speedup_interval"][0] >= 0.97 * 1.6
    else:  # the stairs of 8 channels have no width set in the band: both neighbours shown
        slow, fast = land["neighbours"]
        assert land["status"] == "staircase" and slow["value"] < 1.6 <= fast["value"]
        assert c["measured_speedup"] == fast["value"]
    rows = [json.loads(x) for x in (tmp_path / "s" / "evaluations.jsonl").open()]
    assert [x for x in rows if x["phase"] == "landing"]   # evaluated, logged, resumable


def test_landing_goes_past_the_front_when_every_point_is_slow(r20_dir, idx_dir, tmp_path,
                                                              monkeypatch):
    """Every measured front point short of the budget (predictions 0.6x the truth, and only the
    points predicted between 0.6x the limit and the limit measured): the choice is the closest,
    and the landing prunes further along its own path, on measured speed-up, into the band."""
    from prunelab.searches import selection as sel

    _skew_anchor(monkeypatch, 0.6)
    to_measure = sel._to_measure
    monkeypatch.setattr(sel, "_to_measure", lambda ctx, pool, n: [  # true: 1-1.67x the limit
        p for p in to_measure(ctx, pool, n)
        if 0.6 * ctx.limit() <= p["latency_ms"] <= ctx.limit()])
    r = _nsga2_run(r20_dir, idx_dir, tmp_path)
    assert all(p["latency_ms"] > r["budget_limit"] for p in r["measured"])  # as set up
    c = r["chosen"]
    assert c["method_choice"]["measured_speedup"] < 1.6
    assert c["landing"]["status"] in ("landed", "staircase")
    assert any(s["t"] > 1 for s in c["landing"]["steps"])   # further than the choice
    assert c["budget_met"] and c["measured_speedup"] >= 1.6
