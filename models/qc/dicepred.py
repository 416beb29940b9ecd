"""Predicted Dice per region with a split-conformal interval.

Model (per region, kept simple on purpose): the Dice lost, ``1 - Dice``, is a non-negative combination of
the region's evidence (each score as its robust z against the good calibration segmentations, clipped to
[0, ``Z_CAP``]) plus an intercept; fitted by non-negative least squares on faults made from expert ground
truth (their exact Dice is known), so more evidence never predicts a *higher* Dice. The interval is split
conformal (Lei et al. 2018): the ``coverage`` quantile of absolute residuals on a calibration split that
took no part in the fit, ``[d - q, d + q]`` clipped to [0, 1]; marginal coverage >= ``coverage`` under
exchangeability with those faults. Stars have a slot (``stars``: 6 - mean stars), but the shipped model was
fitted on fault rows that were not scored by the network (feature 0), so its coefficient is 0: the predicted
Dice comes from the evidence alone (the stars rank these faults inversely anyway, issue 13).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.conformal import robust_scale
from dqe.models.qc.types import REGIONS, PredictedDice

if TYPE_CHECKING:
    from dqe.models.qc.decision import Calibration

Z_CAP = 10.0
STARS = "stars"


def feature_keys(calibration_keys: Sequence[str], region: str) -> list[str]:
    """The evidence keys a region's model uses: its own checks and the case-wide label semantics."""
    own = [k for k in calibration_keys if k.startswith(f"{region}.") and not k.endswith(".consensus")]
    return [*sorted(own), STARS]


def centres(cal: Calibration, keys: Sequence[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for k in keys:
        if k == STARS:
            continue
        out[k] = robust_scale(cal.column(k), cal.floors.get(k, 0.0))
    return out


def features(
    values: dict[str, float], stars: float, keys: Sequence[str], centre: dict[str, tuple[float, float]]
) -> np.ndarray:
    """Feature vector: clipped z of each key (0 when the check did not run), then the stars feature."""
    out = []
    for k in keys:
        if k == STARS:
            out.append(0.0 if not math.isfinite(stars) else min(max(6.0 - stars, 0.0), 5.0))
            continue
        v = values.get(k, math.nan)
        med, scale = centre[k]
        out.append(0.0 if not math.isfinite(v) else min(max((v - med) / scale, 0.0), Z_CAP))
    return np.asarray(out, dtype=np.float64)


def fit_region(x: np.ndarray, y_loss: np.ndarray) -> tuple[float, np.ndarray]:
    """(intercept, coefficients) >= 0 minimising squared error of ``1 - Dice``."""
    from scipy.optimize import nnls  # lazy: only fitting (make gate-calibration) needs it, never serving

    a = np.hstack([np.ones((x.shape[0], 1)), x])
    coef, _ = nnls(a, y_loss)
    return float(coef[0]), coef[1:]


def conformal_quantile(residuals: np.ndarray, coverage: float) -> float:
    """The ``ceil((m+1) coverage)``-th smallest absolute residual (inf when m is too small)."""
    r = np.sort(np.abs(residuals[np.isfinite(residuals)]))
    k = int(math.ceil((r.size + 1) * coverage))
    return float(r[k - 1]) if 0 < k <= r.size else math.inf


def predict_dice(ev: list[Evidence], stars: float, cal: Calibration) -> dict[str, PredictedDice]:
    """Predicted Dice with interval per region, from the model stored in ``cal.predictor``."""
    model: dict[str, Any] = cal.predictor
    if not model:
        return {}
    values = {e.key: float(e.value) for e in ev}
    out = {}
    for region in REGIONS:
        m = model.get(region)
        if not m:
            continue
        keys = list(m["keys"])
        centre = {k: (float(a), float(b)) for k, (a, b) in m["centre"].items()}
        x = features(values, stars, keys, centre)
        loss = float(m["intercept"] + np.dot(np.asarray(m["coef"]), x))
        d = min(max(1.0 - loss, 0.0), 1.0)
        q = float(m["q"])
        out[region] = PredictedDice(region, d, max(d - q, 0.0), min(d + q, 1.0), float(m["coverage"]))
    return out


def build_predictor(
    rows: list[tuple[dict[str, float], float, dict[str, float]]],
    cal: Calibration,
    coverage: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the per-region models on ``rows`` = (evidence values, mean stars, true Dice per region).

    Half the rows (random, seeded) fit the coefficients, the other half set the conformal quantile.
    """
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(rows))
    fit_i, cal_i = idx[: len(idx) // 2], idx[len(idx) // 2 :]
    out: dict[str, Any] = {}
    keys_all = sorted(cal.scores)
    for region in REGIONS:
        keys = feature_keys(keys_all, region)
        centre = centres(cal, keys)
        xs, ys = [], []
        for vals, st, dice in rows:
            true = dice.get(region, math.nan)
            xs.append(features(vals, st, keys, centre))
            ys.append(1.0 - true if math.isfinite(true) else math.nan)
        x, loss = np.asarray(xs), np.asarray(ys)
        ok = np.isfinite(loss)
        f = np.intersect1d(fit_i, np.flatnonzero(ok))
        c = np.intersect1d(cal_i, np.flatnonzero(ok))
        if f.size < 10 or c.size < 10:
            continue
        b0, coef = fit_region(x[f], loss[f])
        pred = np.clip(1.0 - (b0 + x[c] @ coef), 0.0, 1.0)
        q = conformal_quantile((1.0 - loss[c]) - pred, coverage)
        out[region] = {
            "keys": keys,
            "centre": {k: list(v) for k, v in centre.items()},
            "intercept": b0,
            "coef": coef.tolist(),
            "q": q,
            "coverage": coverage,
            "n_fit": int(f.size),
            "n_cal": int(c.size),
        }
    return out
