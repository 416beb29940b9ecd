"""Per-region evidence of one case: every family's scores, plus the lattice checks that speak for a region.

:func:`region_evidence` runs the full-resolution checks of :mod:`dqe.models.qc.checks` (boundary fit,
label semantics, resampling, flat cuts, presence) on a :class:`~dqe.models.qc.regional.Regional`, and
:func:`lattice_scores` turns the site-robust lattice checks (robust z against normal brain) into scores
of the same form. Both feed the conformal rule of :mod:`dqe.models.qc.decision`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dqe.models.qc.checks.boundary import boundary_fit
from dqe.models.qc.checks.evidence import AXES, Evidence
from dqe.models.qc.checks.flatcut import flat_cut
from dqe.models.qc.checks.presence import presence
from dqe.models.qc.checks.resampling import staircase
from dqe.models.qc.checks.semantics import label_semantics
from dqe.models.qc.context import Context
from dqe.models.qc.regional import Regional
from dqe.models.qc.types import REGIONS, Check, EvidenceSlice

# Lattice checks used as conformal scores: name -> (region, family, sign); score = sign * value, so that
# larger is always worse.
LATTICE_SCORES: dict[str, tuple[str, str, float]] = {
    "flair_hyperintensity": ("wt", "intensity", -1.0),
    "boundary_alignment": ("wt", "boundary_fit", -1.0),
    "undersegmentation": ("wt", "presence", 1.0),
    "et_enhancement": ("et", "label_semantics", -1.0),
    "et_vs_necrosis": ("et", "label_semantics", -1.0),
    "enclosed_holes": ("tc", "presence", 1.0),
}
# Families of the whole-case lattice checks (not conformal: their own thresholds decide).
CASE_FAMILIES: dict[str, str] = {
    "tumour_outside_brain": "extent",
    "tumour_brain_fraction": "extent",
    "tumour_volume": "extent",
    "distant_fragments": "extent",
    "distant_fragment_share": "extent",
    "distant_fragments_flair": "extent",
    "orientation": "geometry",
    "grid": "geometry",
    "affines": "geometry",
    "label_convention": "label_semantics",
    "missing_compartments": "presence",
    "core_outside_lesion": "label_semantics",
    "view_spread": "scorer",
    "stars": "scorer",
}
# Lattice checks whose review threshold a full-resolution score replaces (name -> that score's key): their
# review decision is dropped, their fail thresholds (if any) stay. ``unlabelled_enhancement`` is a volume
# (2 ml): large expert-labelled tumours exceed it (CBICA_APY 4.3 ml, TCIA03_265 2.6 ml); the share of the
# lesion's enhancing tissue left out of ET (``et.unlabelled_enhancing``) is what means the same at every size.
SUPERSEDED: dict[str, str] = {"unlabelled_enhancement": "et.unlabelled_enhancing"}


MAX_BOX_VOXELS = 3_000_000  # a tumour box this large is a gross failure: the lattice checks speak for it


def region_evidence(ctx: Context) -> list[Evidence]:
    """Every per-region evidence score of the case (empty without normal-brain statistics, or when the
    labels fill a box of more than ``MAX_BOX_VOXELS`` -- labels everywhere, a spill -- where the extent
    checks decide and a full-resolution search would only cost time)."""
    if ctx.stats is None or ctx.wt_count == 0:
        return []
    reg = Regional(ctx)
    if int(np.prod([s.stop - s.start for s in reg.box])) > MAX_BOX_VOXELS:
        return []
    out: list[Evidence] = []
    for region in REGIONS:
        out += _with_sections(reg, region, boundary_fit(reg, region) + staircase(reg, region))
    for region in ("wt", "tc"):
        out += flat_cut(reg, region)
    out += label_semantics(reg)
    out += presence(reg)
    return out


def _with_sections(reg: Regional, region: str, ev: list[Evidence]) -> list[Evidence]:
    """Scores that are not localised (a boundary fit or a staircase concerns the whole border) point to the
    region's largest cross-section on each axis: where its border is longest, the first slices to look at."""
    if not ev:
        return ev
    m = reg.mask(region)
    slices = []
    for axis, name in enumerate(AXES):
        area = m.sum(axis=tuple(a for a in range(3) if a != axis))
        if area.size and area.max() > 0:
            slices.append(
                EvidenceSlice(name, int(np.argmax(area)) + int(reg.offset[axis]), float(area.max()))
            )
    return [replace(e, slices=tuple(slices)) if not e.slices else e for e in ev]


def lattice_scores(checks: list[Check]) -> list[Evidence]:
    """The lattice checks of :data:`LATTICE_SCORES` as evidence (message and threshold kept in the text)."""
    out = []
    for c in checks:
        spec = LATTICE_SCORES.get(c.name)
        if spec is None:
            continue
        region, family, sign = spec
        out.append(Evidence(c.name, region, family, sign * c.value, c.unit, c.message, "", floor=0.02))
    return out
