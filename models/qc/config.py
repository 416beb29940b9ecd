"""Thresholds of the QC gate, with the data each default came from.

Calibration data (``../shared/data``; ``benchmarks/build_gate_eval_list.py`` builds the same list):
18 real algorithm segmentations of 4 exams -- BraTS-GLI-00001-000 (seg-BraTS23_1, its ``_mapped`` copy,
BraTS Toolkit isen), TCGA-DU-7294 and TCGA-FG-6692 ("OtherEXampleFromTCIA"; 5 BraTS Toolkit algorithms + 2
fusions each) and the brainlesion-BraTS case -- and 369 seeded synthetic failures of the 16 distinct ones
(:mod:`dqe.models.qc.failures`, seeds 0-2). "good" below is the range over the 18 real segmentations, "bad"
the range over the failures of the mode named. Intensities are robust z-scores against normal-appearing
brain (NAB: brain minus the tumour grown by 4 mm; median and IQR/1.349 on a 4 mm lattice), so they do not
depend on scanner units. Geometry is measured on a 2 mm lattice (3-4 mm when labels fill a huge box).

The rules are meant to be ones a neuroradiologist would sign; thresholds sit well away from the good
range rather than at a tuned optimum (with 18 good cases from 4 exams, margins matter more than fit):

* ``outside_brain_review/fail`` = 2 % / 10 % of whole-tumour (WT) voxels more than one lattice voxel
  outside the brain mask: gliomas are intra-axial. good: 0.0 % (brainlesion-BraTS has a 1-voxel rim
  outside the skull-strip, which the tolerance absorbs); bad: every voxel 78-85 %, spill 8.5-11 %,
  shift up to 12 %.
* ``brain_fraction_review/fail`` = 30 % / 50 % of the brain volume. good: 1.6-14.2 % (BraTS whole
  tumours rarely exceed a quarter of the brain); bad: spill 57-82 %, every voxel 545-874 %, dilation 7-42 %.
* ``volume_review_ml/fail_ml`` = 350 / 600 ml (review also below ``volume_min_ml`` = 0.5 ml). good:
  23.7-144.7 ml (the largest BraTS whole tumours are ~300-400 ml); bad: spill 679-1170 ml, dilation
  87-431 ml.
* ``fragment_distance_mm`` = 10 mm: an island this far from the main lesion is a separate focus.
  Review at ``fragment_count_review`` = 3 such islands of >= ``fragment_min_ml`` = 0.1 ml, or when they
  hold ``fragment_share_review`` = 5 % of the WT. good: no distant island in any of the 18; bad:
  false-positive blobs 4-8 islands, 5.9-41 %. Fail when the islands hold >= 2 % of the WT and their median
  FLAIR z is below ``fragment_flair_fail`` = 0.5 -- they look like normal brain (blobs: -0.6 .. 0.6; real
  satellite lesions are FLAIR-hyperintense).
* ``holes_review`` = 5 % of the WT: unlabelled voxels enclosed by tumour. good: 0-0.7 %.
* ``core_outside_review`` = 10 % of necrosis + ET outside the main lesion. good: 0 %.
* ``flair_review/fail`` = 1.5 / 0.75: median FLAIR z of the WT -- the BraTS protocol defines the WT as the
  FLAIR-hyperintense abnormality. good: 2.57-5.96; bad: dilation 0.42-1.53, flip -0.31-0.45, spill
  -0.07-1.06.
* ``undersegmentation_review/fail`` = 30 % / 60 % of the 4 mm band just outside the WT border that is
  FLAIR-hyperintense like the lesion (z above half the WT's median; evaluated when that median is at least
  ``flair_review``). good: 4-12 %; bad: heavy erosion 42-90 % (incl. held-out seeds 10-12).
* ``alignment_review/fail`` = 0.75 / 0.5: contrast across the WT border (hyperintensity inside minus the
  4 mm band outside) as a fraction of the best contrast of the same mask moved up to
  ``alignment_search_mm`` = 20 mm. good: 0.91-1.0; bad: shift 0.21-0.65, erosion 0.33-0.83, flip 0-0.56.
  Not evaluated when the best contrast is below ``alignment_min_contrast`` = 0.3 z.
* ``orientation_fail`` = 0.5: median hyperintensity of the mirror image of the WT (left-right about the
  brain's midline) minus that of the WT itself. good: -4.5 .. -1.4; bad: left-right flip +1.4 .. +3.3.
* ``et_min_ml`` = 1 ml: the enhancement checks need this much ET (and necrosis); TCGA-DU-7294 has
  0-0.35 ml of ET, too little for a stable median.
* ``et_enhancement_review`` = 0.5: median (T1c z - T1 z) of the ET. good: 1.29-5.19 (11 with ET >= 1 ml).
* ``et_vs_necrosis_review/fail`` = 0.5 / 0.0: enhancement of ET minus that of necrosis; enhancing tumour
  enhances more than necrosis by definition. good: 1.62-4.76; bad: swapped labels -4.76 .. -1.62.
* ``unlabelled_enhancement_review_ml`` = 2 ml of tumour with (T1c z - T1 z) > ``enhancement_z`` = 2
  labelled necrosis or edema. good: 0.0-1.06 ml; bad: dropped ET 4.9-21.4 ml, swapped 4.9-20.5 ml.
* ``view_spread_review`` = 1.5 stars between the three views. good: 0.14-0.93 (bad: 0.03-2.14, so it
  is a weak signal and only ever asks for review).
* ``alpha`` = 0.05: the false-alarm level of the conformal rule (:mod:`dqe.models.qc.decision`): a good
  segmentation exchangeable with the calibration set is flagged with probability <= alpha. 0.05 is the
  conventional level and is reachable in every leave-one-site-out fold of the shipped calibration (the
  smallest supported level is 1/(n+1); n >= 20 in every fold, so 1/(n+1) <= 0.048). A level below
  ``1/(n+1)`` can never flag, and the gate says so (``calibration.smallest_alpha`` in every result).
  ``calibration_path`` (default: the shipped ``gate_calibration.json``) and the ``calibration_exclude_*``
  fields select the calibration set (the evaluation leaves the site under test out).
  The review thresholds of the site-dependent intensity checks below (flair, under-segmentation, boundary
  alignment, ET enhancement, ET vs necrosis, unlabelled enhancement) are no longer decisions: those
  checks are scores of the conformal rule; their *fail* thresholds (gross failures) still apply.
* ``star_threshold`` = 3.0 stars: review below. good: 3.68-5.32; bad: 2.82-5.59 -- the reference model
  overestimates bad segmentations (issue 4), so stars alone never fail a case.
"""

from __future__ import annotations

from dataclasses import dataclass

EXPECTED_GRID = (240, 240, 155)


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the QC gate (see the module docstring for the data behind each default).

    Fractions are 0-1, volumes in ml, distances in mm, intensities in robust z units of normal brain.
    ``step`` is the lattice spacing in voxels the image checks run on (2 = every other voxel; it is
    raised to 3-4 automatically when the labels fill a huge box, to keep the checks within budget).
    """

    star_threshold: float = 3.0
    view_spread_review: float = 1.5
    step: int = 2
    outside_brain_review: float = 0.02
    outside_brain_fail: float = 0.10
    brain_fraction_review: float = 0.30
    brain_fraction_fail: float = 0.50
    volume_min_ml: float = 0.5
    volume_review_ml: float = 350.0
    volume_fail_ml: float = 600.0
    fragment_distance_mm: float = 10.0
    fragment_min_ml: float = 0.1
    fragment_count_review: int = 3
    fragment_share_review: float = 0.05
    fragment_flair_fail: float = 0.5
    fragment_flair_min_share: float = 0.02
    holes_review: float = 0.05
    core_outside_review: float = 0.10
    flair_review: float = 1.5
    flair_fail: float = 0.75
    undersegmentation_review: float = 0.3
    undersegmentation_fail: float = 0.6
    alignment_review: float = 0.75
    alignment_fail: float = 0.5
    alignment_search_mm: float = 20.0
    alignment_min_contrast: float = 0.3
    orientation_fail: float = 0.5
    et_min_ml: float = 1.0
    et_enhancement_review: float = 0.5
    et_vs_necrosis_review: float = 0.5
    et_vs_necrosis_fail: float = 0.0
    enhancement_z: float = 2.0
    unlabelled_enhancement_review_ml: float = 2.0
    expected_grid: tuple[int, int, int] = EXPECTED_GRID
    alpha: float = 0.05
    calibration_path: str = ""
    calibration_exclude_sites: tuple[str, ...] = ()
    calibration_exclude_cases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
