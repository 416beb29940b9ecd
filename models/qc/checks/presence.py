"""Region presence: tissue the images show as a region, left out of it.

* ``et``: enhancing tissue (T1c above ``ENH_Z`` and T1c minus T1 above ``ENH_Z``, robust z of normal
  brain) inside the whole tumour *including its enclosed holes* that is not labelled enhancing, as a share
  of all the lesion's enhancing tissue (``unlabelled_enhancing``: u / (u + ET + ``PRIOR_ML``), volumes in
  ml; the prior keeps a few stray voxels of a lesion without ET from counting as a share): a dropped or
  relabelled ET. A share, not a volume: large tumours have more stray enhancing voxels, at every site.
* ``wt``: FLAIR-abnormal tissue (above half the lesion's median) in the 3 voxel layers just outside the
  whole tumour, as a share of those layers on brain (``abnormal_outside``): dropped edema, a cut or a
  shrunken outline.
"""

from __future__ import annotations

import numpy as np

from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.context import ENHANCING
from dqe.models.qc.morphology import fill_holes
from dqe.models.qc.regional import Regional, shells
from dqe.models.qc.types import EvidenceSlice

ENH_Z = 2.5
PRIOR_ML = 1.0
LAYERS = 3


def presence(reg: Regional) -> list[Evidence]:
    out: list[Evidence] = []
    box = reg.sub("wt", LAYERS + 1)
    lab = reg.labels[box]
    wt = reg.mask("wt")[box]
    filled = fill_holes(wt)
    t1c, t1 = reg.z("t1c")[box], reg.z("t1")[box]
    enh = (t1c > ENH_Z) & (t1c - t1 > ENH_Z) & filled & (lab != ENHANCING)
    ml = float(np.count_nonzero(enh)) * reg.voxel_ml
    et_ml = float(np.count_nonzero(lab == ENHANCING)) * reg.voxel_ml
    share = ml / (ml + et_ml + PRIOR_ML)
    per_axial = enh.sum(axis=(0, 1))
    z0 = int(reg.offset[2]) + int(box[2].start or 0)
    slices = (
        (EvidenceSlice("axial", z0 + int(np.argmax(per_axial)), ml),) if per_axial.size and ml > 0 else ()
    )
    out.append(
        Evidence(
            "unlabelled_enhancing",
            "et",
            "presence",
            share,
            "fraction",
            f"{ml:.1f} ml inside the lesion enhance (T1c and T1c minus T1 > {ENH_Z:g} SD) but are not "
            f"labelled enhancing ({100 * share:.0f}% of its enhancing tissue; labelled ET {et_ml:.1f} ml)",
            "enhancing tumour is missing from the labels",
            floor=0.01,
            slices=slices,
        )
    )
    flair = reg.z("flair")[box]
    inside = flair[wt]
    med = float(np.median(inside)) if inside.size else 0.0
    if med >= 1.0:
        _, outside = shells(wt, LAYERS)
        band = np.zeros_like(wt)
        for lay in outside:
            band |= lay
        band &= reg.brain[box]
        if np.count_nonzero(band) >= 50:
            share = float(np.mean(flair[band] > 0.5 * med))
            out.append(
                Evidence(
                    "abnormal_outside",
                    "wt",
                    "presence",
                    share,
                    "fraction",
                    f"{100 * share:.0f}% of the {LAYERS} mm just outside the whole tumour is FLAIR-abnormal "
                    f"like the lesion (> {0.5 * med:.1f} SD)",
                    "the abnormality continues beyond the labels (a region or part of it left out)",
                    floor=0.02,
                )
            )
    return out
