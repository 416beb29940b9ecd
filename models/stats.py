"""Correlation of stars with reference metrics, with confidence intervals.

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

MIN_PAIRS = 4


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
