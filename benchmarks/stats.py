"""The one statistic every benchmark figure uses, and the rules for when a tail percentile may be printed.

Both sides of a comparison are summarised by :func:`summarise` over the same kind of samples: the median
(never a best-of compared with a single run); p95 only from ``P95_MIN_SAMPLES`` samples and p99 only from
``P99_MIN_SAMPLES`` (with fewer, the value is ``None`` and the report prints why). A normal run takes at least
``MIN_REPEATS`` samples per figure; ``--quick`` runs take fewer and are marked as not publishable.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

MIN_REPEATS = 7
P95_MIN_SAMPLES = 20
P99_MIN_SAMPLES = 100


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(samples: Sequence[float]) -> dict[str, Any]:
    """``{n, median, p95, p99, min, max, samples}`` of ``samples`` (any unit; the caller names it).

    ``p95``/``p99`` are ``None`` below ``P95_MIN_SAMPLES``/``P99_MIN_SAMPLES`` samples; ``median`` is
    ``None`` for no samples. The raw samples are kept so a reader can recompute anything.
    """
    values = [float(v) for v in samples]
    n = len(values)
    return {
        "n": n,
        "median": statistics.median(values) if n else None,
        "p95": percentile(values, 95) if n >= P95_MIN_SAMPLES else None,
        "p99": percentile(values, 99) if n >= P99_MIN_SAMPLES else None,
        "min": min(values) if n else None,
        "max": max(values) if n else None,
        "samples": values,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
