"""Conformal p-values of check scores against good segmentations, and their combination.

A *score* is a number per check where larger means less like a good segmentation. Given the scores of
``n`` good segmentations (the calibration set) and the score ``s`` of a new one, the conformal p-value
(Bates et al., "Testing for outliers with conformal p-values", Ann. Statist. 2023, eq. 2) is

    p(s) = (1 + #{i : s_i >= s}) / (n + 1),

which is super-uniform, ``P(p <= a) <= a`` for every ``a``, when the new segmentation is exchangeable with
the calibration set (good). Its smallest value is ``1/(n+1)``: no level ``alpha < 1/(n+1)`` can ever flag.

Combination (``max-z conformal``). Several checks (K) each with ``n`` calibration scores cannot be
combined by Bonferroni: the smallest per-check p-value is ``1/(n+1)`` and ``K/(n+1) > alpha`` for any
useful K with n of about 30. Instead every check's score is put on a common scale -- its robust z-score
``(s - median) / scale`` (scale = 90th percentile minus median, :func:`robust_scale`) against the
*augmented* set (calibration plus the test case, so the
normalisation is a symmetric function of all ``n+1`` cases) -- and the combined statistic of a case is the
largest z over its checks. The p-value of that one statistic against the same statistic of every
calibration case (computed with the same augmented normalisation) is again a conformal p-value of a
statistic that is a symmetric function of the ``n+1`` exchangeable cases, so ``P(p <= alpha) <= alpha``
holds exactly, with no Bonferroni loss, and the floor stays ``1/(n+1)``. The price of many checks is paid
in power (a fault must stand out further than the most extreme good case on any check), not in validity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

UPPER_QUANTILE = 0.9
MIN_SCALE_FRACTION = 1e-6  # a constant calibration column still gives a finite z


def conformal_p(score: float, calibration: Sequence[float] | np.ndarray) -> float:
    """The conformal p-value ``(1 + #{s_i >= score}) / (n + 1)`` of ``score`` (larger = more unusual).

    NaN calibration scores are ignored; a NaN ``score`` gives 1.0 (no evidence).
    """
    cal = np.asarray(calibration, dtype=np.float64)
    cal = cal[np.isfinite(cal)]
    if not math.isfinite(score):
        return 1.0
    return float((1 + np.count_nonzero(cal >= score)) / (cal.size + 1))


def robust_scale(values: np.ndarray, floor: float) -> tuple[float, float]:
    """(median, upper-tail scale) of finite ``values``: scale = 90th percentile minus median, at least
    ``floor`` (and > 0).

    The scores are one-sided (larger = worse) and skewed, many with a point mass at 0 (a good segmentation
    usually gains nothing from moving): a symmetric spread such as the MAD collapses to the floor there
    and turns measurement noise into large z. The upper-tail spread measures what the outlier test
    compares: how far good segmentations themselves reach.
    """
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, max(floor, 1.0)
    med = float(np.median(v))
    tail = float(np.quantile(v, UPPER_QUANTILE)) - med
    return med, max(tail, floor, abs(med) * MIN_SCALE_FRACTION, 1e-12)


def max_z(
    test: Mapping[str, float],
    calibration: Mapping[str, Sequence[float] | np.ndarray],
    floors: Mapping[str, float] | None = None,
) -> tuple[float, np.ndarray, dict[str, float]]:
    """The max-z statistic of a test case and of every calibration case, normalised on the augmented set.

    Args:
        test: score per check of the test case (missing or NaN = the check did not run).
        calibration: per check, the scores of the ``n`` calibration cases, aligned by case index (NaN where
            a check did not run on that case). Every case's statistic is the largest z over the checks that
            ran on *it* (a symmetric rule: applicability is part of the exchangeable data).
        floors: per check, the smallest scale (score units) -- the resolution of the measurement, so that a
            calibration column that is nearly constant does not turn noise into huge z.

    Returns:
        ``(T_test, T_calibration (n,), z per check of the test case)``; ``-inf`` where no check ran.
    """
    names = sorted(calibration)
    n = len(next(iter(calibration.values()))) if calibration else 0
    if not names or not any(math.isfinite(test.get(k, math.nan)) for k in names):
        return -math.inf, np.full(n, -math.inf), {}
    cols = np.stack([np.asarray(calibration[k], dtype=np.float64) for k in names], axis=1)  # (n, K)
    t = np.asarray([test.get(k, math.nan) for k in names], dtype=np.float64)
    aug = np.vstack([cols, t[None, :]])
    z_all = np.empty_like(aug)
    for j, name in enumerate(names):
        med, scale = robust_scale(aug[:, j], (floors or {}).get(name, 0.0))
        z_all[:, j] = (aug[:, j] - med) / scale
    z_all[~np.isfinite(aug)] = -math.inf
    stat = z_all.max(axis=1)
    z_test = {k: float(z_all[-1, j]) for j, k in enumerate(names) if math.isfinite(t[j])}
    return float(stat[-1]), stat[:-1], z_test


def combined_p(
    test: Mapping[str, float],
    calibration: Mapping[str, Sequence[float] | np.ndarray],
    floors: Mapping[str, float] | None = None,
) -> tuple[float, dict[str, float]]:
    """Conformal p-value of the max-z statistic (module doc) and the test case's z per check.

    1.0 when no check of ``test`` has calibration scores. Calibration cases on which none of the checks
    ran (statistic ``-inf``) count as less extreme than any test case that has one.
    """
    t, cal, z = max_z(test, calibration, floors)
    if not math.isfinite(t):
        return 1.0, z
    return float((1 + np.count_nonzero(cal >= t)) / (cal.size + 1)), z


def smallest_alpha(n: int) -> float:
    """The smallest level a conformal test against ``n`` calibration scores can reach: ``1/(n+1)``."""
    return 1.0 / (n + 1)
