"""What a per-region evidence check returns before the conformal rule judges it."""

from __future__ import annotations

from dataclasses import dataclass, field

from dqe.models.qc.types import EvidenceSlice


@dataclass(frozen=True)
class Evidence:
    """One measured score of one region.

    Attributes:
        name: check name (``boundary_shift``, ...); with ``region`` it keys the calibration scores.
        region: ``wt``, ``tc``, ``et`` (or ``""`` for the whole case).
        family: fault family (``boundary_fit``, ``label_semantics``, ``resampling``, ``flat_cut``,
            ``presence``).
        value: the score, larger = less like a good segmentation (units in ``unit``).
        unit: unit of ``value``.
        text: one sentence for a radiologist describing what was measured.
        problem: what a failure means.
        floor: measurement resolution of ``value`` (smallest scale the conformal normalisation uses).
        slices: where the evidence is strongest (full-volume voxel indices).
    """

    name: str
    region: str
    family: str
    value: float
    unit: str
    text: str
    problem: str
    floor: float = 0.0
    slices: tuple[EvidenceSlice, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        return f"{self.region}.{self.name}" if self.region else self.name


AXES = ("sagittal", "coronal", "axial")  # array axis 0, 1, 2 of BraTS/SRI-24 storage
