"""The proof grid's verdict code (bench/pareto.py): a speed-up budget is a floor, methods are
read at equal measured speed along their own curves, every prunelab row is compared with the
best Torch-Pruning row, the seeds' spread stands beside each difference."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "pareto", Path(__file__).parent.parent / "bench" / "pareto.py")
pareto = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("pareto", pareto)  # its dataclasses look their module up
_spec.loader.exec_module(pareto)


def rec(label, budget, speed, top1, seed=0, family=None, kind="speedup", **kw):
    fam = family or pareto.METHODS[label].family
    return {"label": label, "family": fam, "budget_speedup": budget if kind == "speedup" else None,
            "budget_kind": kind, "budget_value": budget, "speedup": speed, "final_top1": top1,
            "seed": seed, **kw}


def test_top1_at_interpolates_along_the_curve_and_never_reads_a_slower_cell():
    pts = [(2.0, 0.94), (3.1, 0.92), (4.2, 0.90)]
    a, how = pareto.top1_at(pts, 3.0)
    assert a == pytest.approx(0.94 - (1.0 / 1.1) * 0.02) and "between 2.00x and 3.10x" in how
    # only cells faster than asked: the nearest inside the landing band, as it is
    assert pareto.top1_at([(3.1, 0.92), (4.2, 0.9)], 3.0) == (0.92, "its 3.10x cell")
    assert pareto.top1_at([(3.3, 0.92)], 3.0) is None           # past the band: no reading
    assert pareto.top1_at([(2.0, 0.94), (2.9, 0.93)], 3.0) is None  # slower only: no reading


def test_verdicts_compare_every_prunelab_row_with_the_best_torch_pruning_row():
    recs = [rec("nsga2+deeplift", 2, 2.0, 0.935), rec("nsga2+deeplift", 3, 3.0, 0.925),
            rec("nsga2+deeplift", 3, 3.02, 0.921, seed=1),
            rec("cie+l1", 3, 2.85, 0.93),                    # under the floor at 3x
            rec("tp-uniform", 3, 3.03, 0.915), rec("tp-global", 3, 3.01, 0.91),
            rec("abc+l1", 3, 3.0, 0.93), rec("abc+l1", 2, 2.0, 0.94)]
    v = pareto.verdicts(recs)
    text = "\n".join(v)
    assert "under the floor" in text and "cie+l1 2.85x" in text
    line = next(x for x in v if x.startswith("speedup=3: nsga2+deeplift"))
    assert "best Torch-Pruning tp-uniform 91.50%" in line and "+1.00 points" in line
    assert "seeds' spread 0.40 points over 2" in line and "one seed" in line
    goal = next(x for x in v if x.startswith("speedup=3 goal"))
    assert "met" in goal and "not met" not in goal
    # seed A: nsga2's speed at abc's top-1, along nsga2's own curve
    a = next(x for x in v if x.startswith("seed A") and "93.00%" in x)
    assert "nsga2+deeplift runs 2.50x vs abc+l1 3.00x" in a and "not met" in a


def test_equal_cost_cells_decide_seeds_b_and_c():
    recs = [rec("cie+l1", 0.5, 2.1, 0.93, kind="macs", macs_kept=0.49),
            rec("uniform+l1", 0.5, 2.0, 0.925, kind="macs", macs_kept=0.495),
            rec("omp-search+fp-omp", 0.35, 2.5, 0.91, kind="params", params_kept=0.34),
            rec("uniform+lrf", 0.35, 2.4, 0.915, kind="params", params_kept=0.345)]
    v = pareto.verdicts(recs)
    b = next(x for x in v if x.startswith("seed B"))
    c = next(x for x in v if x.startswith("seed C"))
    assert "+0.50 points (met)" in b and "-0.50 points (not met)" in c
    # equal-cost cells never enter the speed comparisons
    assert not any(x.startswith("speedup=") for x in v)
