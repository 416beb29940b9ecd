"""Label semantics from the BraTS annotation protocol, per region.

* ``et``: enhancing tumour is the tissue brightest on T1c; necrosis is darker on T1c than the enhancing
  rim (``et_vs_necrosis_t1c``: median T1c of necrosis minus that of ET, robust z; > 0 = inverted).
* ``tc``: necrosis lies inside the enhancing rim / the core, not against normal brain
  (``necrosis_outer_contact``: share of the necrosis surface that touches unlabelled tissue); enhancing
  tumour wraps necrosis, it is not enclosed by it (``et_enclosed``: share of the ET surface touching
  necrosis).
* ``wt``: edema is the outer FLAIR abnormality, outside the core (``edema_inner``: share of the edema
  surface that does *not* touch unlabelled tissue -- 1 when the edema is enclosed by the core).

Surfaces are counted as voxel faces between differently labelled 6-neighbours at full resolution.
Label swaps (enhancing <-> necrosis, necrosis <-> edema, the Decathlon order read as BraTS) invert these.
"""

from __future__ import annotations

import numpy as np

from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.context import EDEMA, ENHANCING, NECROSIS
from dqe.models.qc.regional import Regional

MIN_VOXELS = 200  # voxels of each compartment needed (0.2 ml at 1 mm)
MIN_FACES = 100


def face_counts(lab: np.ndarray, n_labels: int = 4) -> np.ndarray:
    """Symmetric matrix ``F[a, b]`` = number of voxel faces between labels ``a != b`` (6-neighbours)."""
    f = np.zeros((n_labels, n_labels), dtype=np.int64)
    for axis in range(3):
        a = np.moveaxis(lab, axis, 0)
        lo, hi = a[:-1], a[1:]
        diff = lo != hi
        pairs = lo[diff].astype(np.int64) * n_labels + hi[diff]
        f += np.bincount(pairs, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
    return f + f.T


def label_semantics(reg: Regional) -> list[Evidence]:
    lab = reg.labels
    counts = np.bincount(lab.ravel(), minlength=4)
    faces = face_counts(lab)
    out: list[Evidence] = []
    ncr, ed, et = (int(counts[k]) >= MIN_VOXELS for k in (NECROSIS, EDEMA, ENHANCING))
    if ncr and et:
        t1c = reg.z("t1c")
        diff = float(np.median(t1c[lab == NECROSIS]) - np.median(t1c[lab == ENHANCING]))
        out.append(
            Evidence(
                "et_vs_necrosis_t1c",
                "et",
                "label_semantics",
                diff,
                "z",
                f"on T1c the tissue labelled necrosis is {abs(diff):.1f} SD "
                f"{'brighter' if diff > 0 else 'darker'} than the tissue labelled enhancing (medians)",
                "enhancing tumour must be brighter than necrosis on T1c: labels swapped or misread",
                floor=0.1,
            )
        )
        et_faces = faces[ENHANCING].sum()
        if et_faces >= MIN_FACES:
            share = float(faces[ENHANCING, NECROSIS] / et_faces)
            out.append(
                Evidence(
                    "et_enclosed",
                    "tc",
                    "label_semantics",
                    share,
                    "fraction",
                    f"{100 * share:.0f}% of the enhancing tumour's surface touches necrosis",
                    "the enhancing tumour is enclosed by necrosis (rim and centre exchanged)",
                    floor=0.02,
                )
            )
    if ncr:
        n_faces = faces[NECROSIS].sum()
        if n_faces >= MIN_FACES:
            share = float(faces[NECROSIS, 0] / n_faces)
            out.append(
                Evidence(
                    "necrosis_outer_contact",
                    "tc",
                    "label_semantics",
                    share,
                    "fraction",
                    f"{100 * share:.0f}% of the necrosis surface touches unlabelled tissue",
                    "necrosis lies on the outside of the lesion, where edema belongs (labels 1 and 2 "
                    "exchanged, or a rim of interpolated labels)",
                    floor=0.02,
                )
            )
    if ed:
        e_faces = faces[EDEMA].sum()
        if e_faces >= MIN_FACES:
            share = 1.0 - float(faces[EDEMA, 0] / e_faces)
            out.append(
                Evidence(
                    "edema_inner",
                    "wt",
                    "label_semantics",
                    share,
                    "fraction",
                    f"{100 * share:.0f}% of the edema surface lies against the core rather than "
                    "unlabelled tissue",
                    "edema is enclosed by the core: necrosis and edema look exchanged",
                    floor=0.02,
                )
            )
    return out
