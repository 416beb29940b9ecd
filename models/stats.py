"""The shared statistics, defined once: overlap (Dice per BraTS region, label maps from the contract), ranking
(ROC AUC), and correlation of stars with reference metrics, with confidence intervals.

* Pearson r: ``scipy.stats.pearsonr`` and its Fisher-z confidence interval
  (``PearsonRResult.confidence_interval``), z = artanh(r), SE = 1 / sqrt(n - 3).
* Spearman rho: ``scipy.stats.spearmanr`` with a Fisher-z interval using the Bonett & Wright (2000) standard
  error SE = sqrt((1 + rho^2 / 2) / (n - 3)), which keeps close to nominal coverage for rank correlations;
  deterministic, unlike a bootstrap.

Pairs with a NaN on either side are dropped. With fewer than 4 pairs, or a constant variable, r, the
p-value and the interval are NaN (undefined), never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.models.contract import CONTRACT_V1

MIN_PAIRS = 4
# BraTS regions as label sets, from the preprocessing contract: TC = {1, 3, 4}, WT = {1, 2, 3, 4}, ET = {3, 4}.
REGION_LABELS: dict[str, tuple[int, ...]] = dict(CONTRACT_V1.label_map)
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty, 0 when exactly one is."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(np.logical_and(a, b))) / total


def region_dice(a: np.ndarray, b: np.ndarray, region: str = "WT") -> float:
    """Dice of one BraTS region (``WT``, ``TC`` or ``ET``) between two label volumes; 1 when both are empty."""
    labels = REGION_LABELS[region]
    return dice(np.isin(a, labels), np.isin(b, labels))


def auc(good: Sequence[float], bad: Sequence[float]) -> float:
    """ROC AUC of separating ``good`` from ``bad`` by score: P(good > bad) + P(tie) / 2 (Mann-Whitney U over
    n_good * n_bad); NaN when a group is empty."""
    g = np.asarray(good, dtype=np.float64)
    b = np.asarray(bad, dtype=np.float64)
    if g.size == 0 or b.size == 0:
        return math.nan
    diff = g[:, None] - b[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def pearson_r(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson r alone (no interval); NaN with fewer than 2 points or a constant input."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.size < 2 or np.std(xa) == 0 or np.std(ya) == 0:
        return math.nan
    return float(np.corrcoef(xa, ya)[0, 1])


def _nan_result(n: int) -> dict[str, Any]:
    nan = float("nan")
    return {"r": nan, "ci_low": nan, "ci_high": nan, "p": nan, "n": n}


def pearson(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Pearson r, two-sided p-value and Fisher-z interval: ``{r, ci_low, ci_high, p, n}``."""
    from scipy import stats

    a, b = _pairs(x, y)
    if a.size < MIN_PAIRS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return _nan_result(int(a.size))
    res = stats.pearsonr(a, b)
    ci = res.confidence_interval(confidence_level=confidence)
    return {
        "r": float(res.statistic),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "p": float(res.pvalue),
        "n": int(a.size),
    }


def spearman(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Spearman rho, two-sided p-value and Bonett-Wright Fisher-z interval: ``{r, ci_low, ci_high, p, n}``."""
    from scipy import stats

    a, b = _pairs(x, y)
    n = int(a.size)
    if n < MIN_PAIRS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return _nan_result(n)
    res = stats.spearmanr(a, b)
    rho = float(res.statistic)
    zcrit = float(stats.norm.ppf(0.5 + confidence / 2))
    if abs(rho) >= 1.0:
        low = high = rho
    else:
        se = math.sqrt((1 + rho * rho / 2) / (n - 3))
        z = math.atanh(rho)
        low, high = math.tanh(z - zcrit * se), math.tanh(z + zcrit * se)
    return {"r": rho, "ci_low": low, "ci_high": high, "p": float(res.pvalue), "n": n}


def _pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def correlations(
    columns: dict[str, Sequence[float]], star_columns: Sequence[str], metric_columns: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"<stars>~<metric>": {"pearson": ..., "spearman": ...}}`` for every star x metric column present."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in star_columns:
        for m in metric_columns:
            if s in columns and m in columns:
                out[f"{s}~{m}"] = {
                    "pearson": pearson(columns[s], columns[m]),
                    "spearman": spearman(columns[s], columns[m]),
                }
    return out
