"""``ScoreResult``: the stars for one segmentation, as every runtime returns them.

Defined in the domain core so the engine, the gRPC servicer, the client SDK and the batch scorer share one
type without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScoreResult:
    """Stars for one segmentation.

    ``views`` maps ``axial``/``coronal``/``sagittal`` to stars (1-6 scale, unclamped, as the reference);
    ``center_of_mass`` is in voxel indices (x, y, z) of the stored array; ``timings_ms`` has the
    server-side stage times.
    """

    mean_stars: float
    views: dict[str, float]
    center_of_mass: tuple[int, int, int] | None
    warnings: list[str]
    model_id: str
    model_sha256: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    case_id: str = ""
    gate: Any | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "case_id": self.case_id,
            "mean_stars": self.mean_stars,
            "views": dict(self.views),
            "center_of_mass": list(self.center_of_mass) if self.center_of_mass is not None else None,
            "warnings": list(self.warnings),
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
        if self.gate is not None:
            out["gate"] = self.gate.to_dict() if hasattr(self.gate, "to_dict") else self.gate
        return out
