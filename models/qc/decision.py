"""The conformal decision rule of the gate and the calibration artifact it reads.

Calibration artifact (``gate_calibration.json``, package data next to this module; regenerate with
``make gate-calibration`` from ``../shared/data``): for every good calibration segmentation its case name,
site (BraTS institution prefix, or the source of the older exams) and kind (``expert`` ground truth or an
``algorithm`` output that agrees with the other algorithms of its exam), and per evidence key
(``region.check``) the score it got (``null`` where the check did not run). Numbers only -- no image
data. It also holds the predicted-Dice model (:mod:`dqe.models.qc.dicepred`).

Rule (stated once, used everywhere): a case is flagged for review when the conformal p-value of its max-z
statistic over all evidence keys (:func:`dqe.models.qc.conformal.combined_p`) is <= ``alpha``. Each region
gets the same p-value over its own keys; when the case is flagged, the regions with p <= ``alpha`` (or the
one with the smallest p) are the ones marked for review. Every check carries its own marginal conformal
p-value (:func:`dqe.models.qc.conformal.conformal_p`) for explanation; the decision is the combined one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dqe.models.errors import NotFound
from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.conformal import combined_p, conformal_p, smallest_alpha
from dqe.models.qc.types import REGIONS

CALIBRATION_FILE = Path(__file__).with_name("gate_calibration.json")
COMBINATION = (
    "max-z conformal: the largest robust z-score over the checks (median and 90th-percentile spread of "
    "calibration plus test), "
    "its conformal p-value against the same statistic of the calibration set; flag when p <= alpha"
)


@dataclass(frozen=True)
class Calibration:
    """Scores of the good calibration segmentations (see the module doc)."""

    cases: tuple[dict[str, str], ...]
    scores: dict[str, tuple[float, ...]]
    floors: dict[str, float] = field(default_factory=dict)
    predictor: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def n(self) -> int:
        return len(self.cases)

    @property
    def sites(self) -> list[str]:
        return sorted({c["site"] for c in self.cases})

    @property
    def smallest_alpha(self) -> float:
        return smallest_alpha(self.n)

    def column(self, key: str) -> np.ndarray:
        return np.asarray(self.scores.get(key, ()), dtype=np.float64)

    def without(self, sites: Iterable[str] = (), cases: Iterable[str] = ()) -> Calibration:
        """The calibration without the cases of ``sites`` and the named ``cases`` (leave-one-site-out)."""
        drop_s, drop_c = set(sites), set(cases)
        keep = [i for i, c in enumerate(self.cases) if c["site"] not in drop_s and c["case"] not in drop_c]
        return Calibration(
            cases=tuple(self.cases[i] for i in keep),
            scores={k: tuple(v[i] for i in keep) for k, v in self.scores.items()},
            floors=dict(self.floors),
            predictor=dict(self.predictor),
            source=self.source,
        )

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for c in self.cases:
            kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
        return {
            "n": self.n,
            "sites": self.sites,
            "kinds": kinds,
            "smallest_alpha": self.smallest_alpha,
            "checks": len(self.scores),
            "source": self.source,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": list(self.cases),
            "scores": {
                k: [None if not math.isfinite(x) else round(x, 6) for x in v] for k, v in self.scores.items()
            },
            "floors": dict(self.floors),
            "predictor": dict(self.predictor),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(
            cases=tuple(dict(c) for c in data["cases"]),
            scores={
                k: tuple(math.nan if x is None else float(x) for x in v) for k, v in data["scores"].items()
            },
            floors={k: float(v) for k, v in data.get("floors", {}).items()},
            predictor=dict(data.get("predictor", {})),
            source=str(data.get("source", "")),
        )

    @classmethod
    def from_scores(
        cls, cases: list[dict[str, str]], evidence: list[list[Evidence]], source: str = ""
    ) -> Calibration:
        """A calibration from the evidence of each good case (aligned with ``cases``)."""
        keys = sorted({e.key for ev in evidence for e in ev})
        floors: dict[str, float] = {}
        scores: dict[str, list[float]] = {k: [math.nan] * len(cases) for k in keys}
        for i, ev in enumerate(evidence):
            for e in ev:
                scores[e.key][i] = float(e.value)
                floors[e.key] = e.floor
        return cls(tuple(cases), {k: tuple(v) for k, v in scores.items()}, floors, {}, source)


@lru_cache(maxsize=4)
def load_calibration(path: str | None = None) -> Calibration | None:
    """The shipped calibration (or the file at ``path``).

    Returns ``None`` when the shipped file is missing (a broken install: the gate then says so in every
    result's ``calibration.warning``). Raises :class:`~dqe.models.errors.NotFound` when a ``path`` that was
    named does not exist: a calibration asked for is never silently replaced by none.
    """
    p = Path(path) if path else CALIBRATION_FILE
    if not p.is_file():
        if path:
            raise NotFound(f"gate calibration file {path!r} does not exist", field="calibration_path")
        return None
    return Calibration.from_json(json.loads(p.read_text()))


@dataclass(frozen=True)
class Decision:
    """Conformal p-values of one case: per evidence key, per region and overall."""

    p_value: float
    region_p: dict[str, float]
    check_p: dict[str, float]
    z: dict[str, float]
    thresholds: dict[str, float]


def critical_score(column: np.ndarray, alpha: float) -> float:
    """The score a check must exceed for its own conformal p-value to be <= ``alpha`` (inf if it cannot)."""
    cal = np.sort(column[np.isfinite(column)])[::-1]
    m = int(math.floor(alpha * (cal.size + 1) + 1e-9)) - 1  # allowed count of calibration scores >= s
    if m < 0:
        return math.inf
    return float(cal[m]) if m < cal.size else -math.inf


def decide(evidence: list[Evidence], cal: Calibration, alpha: float) -> Decision:
    """p-values of a case's evidence against ``cal`` (module doc)."""
    test = {e.key: float(e.value) for e in evidence if math.isfinite(e.value)}
    columns = {k: cal.column(k) for k in cal.scores}
    check_p = {k: conformal_p(v, columns[k]) for k, v in test.items() if k in columns}
    thresholds = {k: critical_score(columns[k], alpha) for k in check_p}
    p_all, z = combined_p(test, columns, cal.floors)
    region_p = {}
    for region in REGIONS:
        keys = {k: v for k, v in columns.items() if k.startswith(f"{region}.")}
        sub = {k: v for k, v in test.items() if k in keys}
        region_p[region] = combined_p(sub, keys, cal.floors)[0] if sub else 1.0
    return Decision(p_all, region_p, check_p, z, thresholds)
