"""Statistics the benchmarks share."""

from __future__ import annotations

import numpy as np


def spearman(a, b, boot: int = 2000, seed: int = 0) -> dict:
    """Spearman's rank correlation of ``a`` and ``b`` with a 95% bootstrap interval over the
    pairs (resamples where either side is constant are skipped)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    rho = float(spearmanr(a, b).statistic)
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(boot):
        i = rng.integers(0, len(a), len(a))
        if len(set(a[i])) > 1 and len(set(b[i])) > 1:
            rs.append(spearmanr(a[i], b[i]).statistic)
    lo, hi = np.percentile(rs, [2.5, 97.5]) if rs else (float("nan"), float("nan"))
    return {"rho": rho, "low": float(lo), "high": float(hi), "n": int(len(a))}
