"""What every check family shares: severities, the graded check builder, sampling constants."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dqe.models.qc.types import Check

REVIEW, FAIL = "review", "fail"
ALIGNMENT_POINTS = 1000  # lattice points sampled inside and outside the border for the alignment search
NEIGHBOURS = np.array(
    [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]
)


def graded(
    name: str,
    value: float,
    review: float,
    fail: float | None,
    unit: str,
    describe: Callable[[float], str],
    problem: str = "",
    higher_is_worse: bool = True,
) -> Check:
    """A check with a review and (optionally) a fail threshold on one value.

    The reported threshold is the one that was crossed (fail before review), or the review threshold
    when the check passed; ``severity`` says what failing implies. The message is ``describe(value)``,
    followed by ``problem`` (what it means) when the check failed.
    """
    worse = (lambda v, t: v > t) if higher_is_worse else (lambda v, t: v < t)
    text = describe(value)
    bad_text = f"{text}; {problem}" if problem else text
    if fail is not None and worse(value, fail):
        return Check(name, float(value), float(fail), False, FAIL, bad_text, unit)
    if worse(value, review):
        return Check(name, float(value), float(review), False, REVIEW, bad_text, unit)
    return Check(name, float(value), float(review), True, FAIL if fail is not None else REVIEW, text, unit)
