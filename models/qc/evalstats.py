"""Statistics of a gate evaluation: exact binomial intervals, severity bands, detection tables.

* Rates come with Clopper-Pearson (exact) 95 % intervals from ``scipy.stats.beta``: with k of n flagged,
  ``[Beta(a/2; k, n-k+1), Beta(1-a/2; k+1, n-k)]`` (0 and 1 at the ends). With 0 of 18 the two-sided
  upper bound is 0.185 (the one-sided 95 % bound, 0.153, is also reported).
* Severity is the whole-tumour (WT) Dice of a failure to the good segmentation it was made from:
  ``>=0.9`` mild, ``0.7-0.9`` moderate, ``<0.7`` gross.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

BANDS: tuple[tuple[str, float, float], ...] = (
    ("dice>=0.9", 0.9, math.inf),
    ("0.7<=dice<0.9", 0.7, 0.9),
    ("dice<0.7", -math.inf, 0.7),
)


def severity_band(dice: float) -> str:
    """The band name of a WT Dice (NaN -> ``"unknown"``)."""
    if not math.isfinite(dice):
        return "unknown"
    for name, lo, hi in BANDS:
        if lo <= dice < hi:
            return name
    return BANDS[0][0]  # dice > 1 cannot happen; keep it in the mild band


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """Rate k/n with its exact two-sided interval and one-sided upper bound: ``{k, n, rate, low, high,
    upper_one_sided}`` (NaN rate and interval when n == 0).

    Raises:
        ValueError: k outside 0..n.
    """
    from scipy.stats import beta

    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        nan = float("nan")
        return {"k": 0, "n": 0, "rate": nan, "low": nan, "high": nan, "upper_one_sided": nan}
    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    upper1 = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return {"k": k, "n": n, "rate": k / n, "low": low, "high": high, "upper_one_sided": upper1}


@dataclass(frozen=True)
class Outcome:
    """One evaluated failure: its mechanism, WT Dice to the source and the gate's verdict."""

    mechanism: str
    dice_wt: float
    verdict: str


def detection(outcomes: Iterable[Outcome], key: str) -> dict[str, dict[str, Any]]:
    """Per group (``key`` = ``"mechanism"`` or ``"band"``): n, how many were flagged (review or fail) and
    failed, with Clopper-Pearson intervals for both rates."""
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        name = o.mechanism if key == "mechanism" else severity_band(o.dice_wt)
        groups.setdefault(name, []).append(o)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(groups):
        items = groups[name]
        flagged = sum(o.verdict in ("review", "fail") for o in items)
        failed = sum(o.verdict == "fail" for o in items)
        dice = [o.dice_wt for o in items if math.isfinite(o.dice_wt)]
        out[name] = {
            "n": len(items),
            "flagged": clopper_pearson(flagged, len(items)),
            "failed": clopper_pearson(failed, len(items)),
            "dice_wt_min": round(min(dice), 4) if dice else None,
            "dice_wt_max": round(max(dice), 4) if dice else None,
        }
    return out


def detection_by_mechanism_and_band(outcomes: Sequence[Outcome]) -> dict[str, dict[str, str]]:
    """``{mechanism: {band: "flagged/n"}}`` (empty bands omitted), the compact table for reports."""
    table: dict[str, dict[str, list[int]]] = {}
    for o in outcomes:
        cell = table.setdefault(o.mechanism, {}).setdefault(severity_band(o.dice_wt), [0, 0])
        cell[0] += o.verdict in ("review", "fail")
        cell[1] += 1
    return {m: {b: f"{k}/{n}" for b, (k, n) in sorted(bands.items())} for m, bands in sorted(table.items())}
