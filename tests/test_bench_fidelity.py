"""The fidelity study's arithmetic (bench/fidelity.py): what a score's choice gets from a pool of
candidates, and the noise ceiling one fine-tune seed allows."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # fidelity imports its siblings (pareto, stats)
_spec = importlib.util.spec_from_file_location("fidelity", BENCH / "fidelity.py")
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)


def test_a_perfect_score_chooses_the_best_of_the_pool_and_a_blind_one_the_mean():
    rng = np.random.default_rng(0)
    final = rng.normal(0.9, 0.01, 24)
    best6 = fidelity.chosen_top1(final, final, 6, draws=4000)
    blind = fidelity.chosen_top1(rng.random(24), final, 6, draws=4000)
    worst6 = fidelity.chosen_top1(-final, final, 6, draws=4000)
    assert worst6 < final.mean() < best6 <= final.max()
    assert abs(blind - final.mean()) < (best6 - final.mean()) / 2  # a fixed random ranking
    # the whole pool: the best itself
    assert fidelity.chosen_top1(final, final, 24, draws=10) == pytest.approx(final.max())


def test_successive_halving_chooses_by_the_second_score_among_the_first_ones_best_third():
    final = np.arange(12, dtype=float)
    first = final.copy()
    first[11] = -1  # the first score ranks the best candidate last: halving cannot recover it
    got = fidelity.chosen_top1(first, final, 12, draws=5, then=final)
    assert got == 10.0  # the best of the first score's top 4, read by the perfect second score
    # a perfect first score and a reversed second: the worst of the best third (4 of 12)
    assert fidelity.chosen_top1(final, final, 12, draws=5, then=-final) == 8.0


def test_noise_ceiling_falls_as_the_seed_noise_grows():
    c = [fidelity.noise_ceiling(d, 0.01) for d in (0.0, 0.002, 0.006, 0.012)]
    assert c[0] == 1.0 and all(a > b for a, b in zip(c, c[1:])) and c[-1] >= 0.0
    assert fidelity.noise_ceiling(0.003, 0.0) == 0.0
