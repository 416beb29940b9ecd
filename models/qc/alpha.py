"""Validation of the gate's significance level ``alpha`` (``--alpha``, ``DQE_ALPHA``, ``ScoreOptions.alpha``).

A conformal p-value against ``n`` calibration segmentations is never below ``1/(n+1)`` (Bates et al., Ann.
Statist. 2023), so with ``alpha`` below that the conformal rule can never flag anything: the gate would look
strict and be blind. That is refused with a typed :class:`~dqe.models.errors.InvalidInput` (an error, not a
warning: a silent no-op in a safety gate is worse than a refused request).

The floor comes from the calibration set the gate configuration selects (:func:`dqe.models.qc.gate.calibration_for`:
the shipped set or ``calibration_path``, minus excluded sites/cases); an object that records ``min_alpha`` or
``calibration_size`` itself is read directly; without a calibration only ``0 < alpha < 1`` is checked.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dqe.models.errors import InvalidInput
from dqe.models.qc.config import GateConfig


def min_supported_alpha(config: Any) -> float | None:
    """``1/(n+1)`` for a configuration calibrated on ``n`` segmentations (``None`` when it does not say)."""
    direct = getattr(config, "min_alpha", None)
    if isinstance(direct, int | float) and math.isfinite(direct) and direct > 0:
        return float(direct)
    n = getattr(config, "calibration_size", None)
    if isinstance(n, int) and n > 0:
        return 1.0 / (n + 1)
    if isinstance(config, GateConfig):
        from dqe.models.qc.gate import (  # lazy: the client SDK range-checks alpha without the gate's NIfTI stack
            calibration_for,
        )

        cal = calibration_for(config)
        return None if cal is None or not cal.n else float(cal.smallest_alpha)
    return None


def check_alpha(alpha: float, config: Any = None) -> float:
    """``alpha`` as a float when usable.

    Raises:
        InvalidInput: not a number strictly between 0 and 1, or below the smallest level the
            configuration's calibration set supports (:func:`min_supported_alpha`).
    """
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InvalidInput(f"alpha is {alpha!r}; expected a number between 0 and 1", field="alpha") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise InvalidInput(f"alpha is {value}; expected 0 < alpha < 1", field="alpha")
    floor = min_supported_alpha(config) if config is not None else None
    if floor is not None and value < floor:
        raise InvalidInput(
            f"alpha is {value}; the calibration set supports alpha >= {floor:.4g} (1/(n+1)): below that "
            "no conformal p-value can reach alpha and the gate could never flag",
            field="alpha",
        )
    return value


def with_alpha(alpha: float | None, config: GateConfig | None = None) -> GateConfig:
    """``config`` (default :class:`GateConfig`) with ``alpha`` when given (``None`` or 0: unchanged).

    Raises:
        InvalidInput: see :func:`check_alpha`.
    """
    cfg = config or GateConfig()
    if alpha is None or alpha == 0:
        return cfg
    return dataclasses.replace(cfg, alpha=check_alpha(alpha, cfg))
