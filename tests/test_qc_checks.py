"""Each QC check on crafted volumes where the right answer is known (seeded phantoms, no engine)."""

from __future__ import annotations

import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.nifti import Volume, from_array
from dqe.models.phantom import make_phantom
from dqe.models.qc import checks as C
from dqe.models.qc.brain import brain_mask, brain_mask_full, signal_mask
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.gate import case_checks, verdict_of
from dqe.models.qc.morphology import box_dilate, box_erode, fill_holes
from dqe.models.qc.types import Check

CFG = GateConfig()
# Phantom seed 4: lesion centred ~32 voxels right of the midline (x=152), so a left-right flip moves it.
LATERAL_SEED = 4


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=LATERAL_SEED)


@pytest.fixture(scope="module")
def brain(phantom) -> np.ndarray:
    return brain_mask_full([phantom.t1c, phantom.t1, phantom.t2, phantom.flair])


def case_with(phantom, seg: np.ndarray, affine: np.ndarray | None = None) -> Case:
    arrays = {**phantom.arrays(), "segmentation": seg.astype(np.uint8)}
    return Case.from_arrays(**arrays, affine=phantom.affine if affine is None else affine)


def checks_of(case: Case, cfg: GateConfig = CFG) -> dict[str, Check]:
    return {c.name: c for c in case_checks(case, cfg)}


def sphere(shape, centre, radius) -> np.ndarray:
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


def test_good_phantom_passes_every_check(phantom):
    checks = checks_of(case_with(phantom, phantom.segmentation))
    failed = [c for c in checks.values() if not c.passed]
    assert failed == []
    assert verdict_of(list(checks.values())).value == "pass"
    for name in (
        "tumour_outside_brain",
        "tumour_brain_fraction",
        "tumour_volume",
        "flair_hyperintensity",
        "boundary_alignment",
        "orientation",
        "et_enhancement",
        "et_vs_necrosis",
        "grid",
        "affines",
    ):
        assert name in checks, name


# ----------------------------------------------------------------------------------------- brain mask
def test_brain_mask_ignores_small_residue_and_fills_holes(phantom, brain):
    flair = phantom.flair.astype(np.float32)
    # Interpolation residue outside the brain (below 0.1 % of the maximum) and a negative rim inside.
    noisy = flair + np.float32(0.5) * (flair == 0)
    noisy[brain & (np.roll(~brain, 1, axis=0))] = -40.0
    hole = sphere(flair.shape, (120, 120, 77), 4)
    images = [a.astype(np.float32) for a in (phantom.t1c, phantom.t1, phantom.t2)] + [noisy]
    for a in images:
        a[hole] = 0.0
    got = brain_mask_full(images)
    assert not got[0, 0, 0]
    assert got[hole].all(), "enclosed zero voxels are brain"
    np.testing.assert_allclose(got.sum(), brain.sum(), rtol=0.01)
    vols = [from_array(a, n) for a, n in zip(images, ("t1c", "t1", "t2", "flair"), strict=True)]
    coarse = brain_mask(vols, step=2)
    np.testing.assert_allclose(coarse.sum() * 8, brain.sum(), rtol=0.03)


def test_signal_mask_treats_nan_as_no_signal():
    a = np.zeros((10, 10, 10), dtype=np.float32)
    a[2:5, 2:5, 2:5] = 100.0
    a[0, 0, 0] = np.nan
    m = signal_mask([a])
    assert m.sum() == 27 and not m[0, 0, 0]


def test_morphology_helpers_match_scipy():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    m = rng.random((20, 21, 22)) > 0.8
    box = np.ones((3, 3, 3), dtype=bool)
    np.testing.assert_array_equal(box_dilate(m, 1), ndi.binary_dilation(m, structure=box))
    np.testing.assert_array_equal(box_erode(m, 1), ndi.binary_erosion(m, structure=box, border_value=0))
    shell = sphere((20, 20, 20), (10, 10, 10), 6) & ~sphere((20, 20, 20), (10, 10, 10), 3)
    np.testing.assert_array_equal(fill_holes(shell), ndi.binary_fill_holes(shell))


# ----------------------------------------------------------------------------------------- extent
def test_tumour_outside_brain_fraction(phantom, brain):
    seg = phantom.segmentation.copy()
    ok = checks_of(case_with(phantom, seg))["tumour_outside_brain"]
    assert ok.passed and ok.value == 0.0
    # A block entirely outside the head (well away from the brain), as large as the lesion.
    n_wt = int((seg > 0).sum())
    block = np.zeros_like(seg)
    side = int(round(n_wt ** (1 / 3)))
    block[2 : 2 + side, 2 : 2 + side, 2 : 2 + side] = 2
    assert not (block.astype(bool) & box_dilate(brain, 3)).any()
    spilled = np.maximum(seg, block)
    expected = side**3 / (n_wt + side**3)
    check = checks_of(case_with(phantom, spilled))["tumour_outside_brain"]
    assert check.value == pytest.approx(expected, abs=0.03)
    assert not check.passed and check.severity == "fail"


def test_extent_uses_voxel_zooms(phantom):
    """The same voxels at 2 mm are 8x the volume; fractions of the brain do not change."""
    seg = phantom.segmentation
    n_wt = int((seg > 0).sum())
    ref = checks_of(case_with(phantom, seg))
    np.testing.assert_allclose(ref["tumour_volume"].value, n_wt / 1000.0)
    vols = {
        k: Volume(name=k, data=v, affine=np.diag([2.0, 2.0, 2.0, 1.0]), zooms=(2.0, 2.0, 2.0))
        for k, v in phantom.arrays().items()
    }
    big = checks_of(Case(**vols))
    np.testing.assert_allclose(big["tumour_volume"].value, n_wt * 8 / 1000.0)
    assert big["tumour_volume"].passed is False and big["tumour_volume"].severity == "fail"  # > 600 ml
    np.testing.assert_allclose(
        big["tumour_brain_fraction"].value, ref["tumour_brain_fraction"].value, rtol=1e-6
    )
    assert not big["grid"].passed  # 2 mm is not the training grid


def test_brain_fraction_every_voxel_labelled(phantom, brain):
    seg = np.full(phantom.segmentation.shape, 2, dtype=np.uint8)
    checks = checks_of(case_with(phantom, seg))
    frac = checks["tumour_brain_fraction"]
    assert frac.value == pytest.approx(seg.size / brain.sum(), rel=0.03)
    assert frac.severity == "fail" and not frac.passed
    assert verdict_of(list(checks.values())).value == "fail"


def test_tiny_tumour_is_reviewed(phantom):
    seg = np.zeros_like(phantom.segmentation)
    seg[150:156, 120:126, 100:106] = 2  # 216 voxels = 0.216 ml
    check = checks_of(case_with(phantom, seg))["tumour_volume"]
    assert check.value == pytest.approx(0.216) and not check.passed and check.severity == "review"


# ----------------------------------------------------------------------------------------- fragments
def test_distant_fragments_count_share_and_flair(phantom):
    seg = phantom.segmentation.copy()
    wt = seg > 0
    centres = [(70, 80, 40), (70, 160, 40), (80, 120, 110), (100, 70, 110)]
    blobs = np.zeros_like(wt)
    for c in centres:
        blobs |= sphere(seg.shape, c, 7)
    from scipy import ndimage as ndi

    assert ndi.distance_transform_edt(~wt)[blobs].min() > 15  # far from the lesion by construction
    seg[blobs & ~wt] = 2
    checks = checks_of(case_with(phantom, seg))
    assert checks["distant_fragments"].value == 4 and not checks["distant_fragments"].passed
    share = blobs.sum() / (seg > 0).sum()
    # Volumes are estimated on the 2 mm lattice: small blobs are counted to within ~20 %.
    assert checks["distant_fragment_share"].value == pytest.approx(share, rel=0.2)
    # The blobs are normal brain on FLAIR: a fail.
    flair = checks["distant_fragments_flair"]
    assert flair.value < 0.5 and flair.severity == "fail" and not flair.passed


def test_near_satellite_is_not_a_distant_fragment(phantom):
    seg = phantom.segmentation.copy()
    wt = seg > 0
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(~wt)
    ring = (dist > 4) & (dist < 6)
    idx = np.argwhere(ring)[0]
    seg[sphere(seg.shape, idx, 1.5) & ~wt] = 2  # an island ~4 mm from the lesion
    checks = checks_of(case_with(phantom, seg))
    assert checks["distant_fragments"].value == 0


# ----------------------------------------------------------------------------------------- label logic
def test_label_convention_and_compartments(phantom):
    seg = phantom.segmentation.copy()
    mixed = seg.copy()
    mixed[(seg == 3) & (np.indices(seg.shape)[0] % 2 == 0)] = 4
    checks = checks_of(case_with(phantom, mixed))
    assert not checks["label_convention"].passed and checks["label_convention"].severity == "review"
    legacy = np.where(seg == 3, 4, seg)
    assert checks_of(case_with(phantom, legacy))["label_convention"].passed
    no_edema = np.where(seg == 2, 0, seg)
    mc = checks_of(case_with(phantom, no_edema))["missing_compartments"]
    assert not mc.passed and "edema" in mc.message
    no_core = np.where(seg > 0, 2, 0).astype(np.uint8)
    mc2 = checks_of(case_with(phantom, no_core))["missing_compartments"]
    assert mc2.passed and mc2.value == 2  # necrosis and ET missing: a low-grade look, not a failure


def test_enclosed_holes_fraction(phantom):
    seg = phantom.segmentation.copy()
    core = (seg == 1) | (seg == 3)  # the whole core (~1/8 of the lesion) left unlabelled inside the edema
    holed = np.where(core, 0, seg)
    expected = core.sum() / (holed > 0).sum()
    check = checks_of(case_with(phantom, holed))["enclosed_holes"]
    assert check.value == pytest.approx(expected, rel=0.2)
    assert not check.passed


def test_core_outside_lesion(phantom):
    seg = phantom.segmentation.copy()
    island = sphere(seg.shape, (75, 120, 60), 8)
    seg[island] = 3
    check = checks_of(case_with(phantom, seg))["core_outside_lesion"]
    core = (seg == 1) | (seg == 3)
    assert check.value == pytest.approx(island.sum() / core.sum(), rel=0.2)
    assert not check.passed


# ----------------------------------------------------------------------------------------- intensity
def test_flair_hyperintensity_good_vs_normal_brain(phantom):
    good = checks_of(case_with(phantom, phantom.segmentation))["flair_hyperintensity"]
    assert good.passed and good.value > 5  # phantom edema 1050 vs brain 450 on FLAIR
    seg = np.zeros_like(phantom.segmentation)
    seg[sphere(seg.shape, (75, 120, 60), 15)] = 2  # a 'tumour' in normal brain, far from the lesion
    bad = checks_of(case_with(phantom, seg))["flair_hyperintensity"]
    assert abs(bad.value) < 0.75 and not bad.passed and bad.severity == "fail"


def test_enhancement_swap_and_drop(phantom):
    seg = phantom.segmentation
    good = checks_of(case_with(phantom, seg))
    assert good["et_enhancement"].passed and good["et_enhancement"].value > 5
    assert good["et_vs_necrosis"].passed and good["unlabelled_enhancement"].passed
    swapped = seg.copy()
    swapped[seg == 3] = 1
    swapped[seg == 1] = 3
    sw = checks_of(case_with(phantom, swapped))
    assert sw["et_vs_necrosis"].value == pytest.approx(-good["et_vs_necrosis"].value, rel=0.2)
    assert not sw["et_vs_necrosis"].passed and sw["et_vs_necrosis"].severity == "fail"
    dropped = np.where(seg == 3, 2, seg).astype(np.uint8)
    dr = checks_of(case_with(phantom, dropped))
    assert "et_enhancement" not in dr  # no ET left to judge
    et_ml = (seg == 3).sum() / 1000.0
    assert dr["unlabelled_enhancement"].value == pytest.approx(et_ml, rel=0.25)
    assert not dr["unlabelled_enhancement"].passed


def test_undersegmentation_after_heavy_erosion(phantom):
    from scipy import ndimage as ndi

    seg = phantom.segmentation
    depth = ndi.distance_transform_edt(seg > 0)
    eroded = np.where(depth > np.quantile(depth[seg > 0], 0.8), seg, 0).astype(np.uint8)
    good = checks_of(case_with(phantom, seg))["undersegmentation"]
    bad = checks_of(case_with(phantom, eroded))["undersegmentation"]
    assert good.passed and good.value < 0.1
    assert not bad.passed and bad.value > 0.6


# ----------------------------------------------------------------------------------------- geometry
def test_boundary_alignment_detects_shift(phantom):
    seg = phantom.segmentation
    good = checks_of(case_with(phantom, seg))["boundary_alignment"]
    assert good.passed and good.value > 0.9
    shifted = np.zeros_like(seg)
    shifted[:, 12:, :] = seg[:, :-12, :]
    bad = checks_of(case_with(phantom, shifted))["boundary_alignment"]
    assert not bad.passed and bad.value < 0.5
    assert "12 mm" in bad.message  # moved back by the 12 mm it was shifted


def test_orientation_detects_left_right_flip(phantom, brain):
    from dqe.models.qc.failures import generate_failure

    seg = phantom.segmentation
    good = checks_of(case_with(phantom, seg))["orientation"]
    assert good.passed and good.value < -3
    flipped = generate_failure(seg, "flip_lr", 0, brain)
    bad = checks_of(case_with(phantom, flipped))["orientation"]
    assert not bad.passed and bad.severity == "fail" and bad.value > 3


def test_orientation_not_evaluated_for_symmetric_tumour(phantom):
    seg = np.zeros_like(phantom.segmentation)
    seg[100:141, 100:130, 60:90] = 2  # symmetric about the midline x = 120
    assert "orientation" not in checks_of(case_with(phantom, seg))


def test_grid_check():
    ph = make_phantom(seed=2, shape=(200, 200, 120))
    checks = checks_of(Case.from_arrays(**ph.arrays(), affine=ph.affine))
    assert not checks["grid"].passed and checks["grid"].severity == "review"
    assert "240, 240, 155" in checks["grid"].message


def test_affine_checks(phantom):
    seg_vol = from_array(phantom.segmentation, "segmentation", np.eye(4))
    imgs = {k: from_array(v, k, phantom.affine) for k, v in phantom.arrays().items() if k != "segmentation"}
    identity = checks_of(Case(**imgs, segmentation=seg_vol))["affines"]
    # lost geometry is never passed silently (issue 18): review
    assert not identity.passed and identity.severity == "review" and "identity" in identity.message
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[0, 3] = -239
    other = checks_of(Case(**imgs, segmentation=from_array(phantom.segmentation, "segmentation", ras)))[
        "affines"
    ]
    assert not other.passed and other.severity == "review" and "RAS" in other.message
    same = checks_of(case_with(phantom, phantom.segmentation))["affines"]
    assert same.passed and same.value == 0


# ----------------------------------------------------------------------------------------- scorer checks
def test_view_spread_and_stars_checks():
    spread = C.view_spread({"axial": 4.0, "coronal": 2.2, "sagittal": 3.9}, CFG)
    assert spread is not None and spread.value == pytest.approx(1.8) and not spread.passed
    assert C.view_spread({"axial": 4.0, "coronal": 3.6, "sagittal": 3.9}, CFG).passed  # type: ignore[union-attr]
    low = C.stars(2.5, CFG)
    assert not low.passed and low.severity == "review" and low.threshold == 3.0
    assert C.stars(3.5, GateConfig(star_threshold=3.0)).passed
    assert not C.stars(3.5, GateConfig(star_threshold=4.0)).passed


def test_graded_thresholds():
    chk = C.graded("x", 0.5, review=0.2, fail=0.4, unit="fraction", describe=lambda v: f"{v}")
    assert chk.severity == "fail" and chk.threshold == 0.4 and not chk.passed
    chk = C.graded("x", 0.3, review=0.2, fail=0.4, unit="fraction", describe=lambda v: f"{v}")
    assert chk.severity == "review" and chk.threshold == 0.2
    chk = C.graded("x", 0.1, review=0.2, fail=0.4, unit="fraction", describe=lambda v: f"{v}")
    assert chk.passed and chk.severity == "fail"
    chk = C.graded(
        "x", 0.1, review=0.2, fail=None, unit="z", describe=lambda v: f"{v}", higher_is_worse=False
    )
    assert not chk.passed and chk.severity == "review"


def test_context_step_adapts_to_huge_boxes(phantom):
    small = Context(case_with(phantom, phantom.segmentation), 2)
    assert small.step == 2
    everything = Context(case_with(phantom, np.full(phantom.segmentation.shape, 2, np.uint8)), 2)
    assert everything.step > 2


def test_degenerate_inputs_give_finite_checks(phantom):
    """A one-voxel tumour, NaN/Inf in a float image and a small grid: finite values, no crash."""
    seg = np.zeros_like(phantom.segmentation)
    seg[151, 121, 99] = 2  # on no even lattice point
    checks = case_checks(case_with(phantom, seg))
    assert all(np.isfinite(c.value) for c in checks)
    assert not next(c for c in checks if c.name == "tumour_volume").passed
    flair = phantom.flair.astype(np.float32)
    flair[10:20, 10:20, 10:20] = np.nan
    flair[100, 100, 100] = np.inf
    arrays = {**phantom.arrays(), "flair": flair}
    nan_checks = case_checks(Case.from_arrays(**arrays, affine=phantom.affine))
    assert all(np.isfinite(c.value) for c in nan_checks)
    assert verdict_of(nan_checks).value == "pass"
    small = make_phantom(seed=1, shape=(64, 64, 48))
    small_checks = case_checks(Case.from_arrays(**small.arrays(), affine=small.affine))
    assert all(np.isfinite(c.value) for c in small_checks)


def test_checks_are_fast_enough(phantom):
    """A generous CPU-time guard (the budget is 50 ms on a quiet core; its time is measured by `make bench`)."""
    import time

    case = case_with(phantom, phantom.segmentation)
    case_checks(case)
    t0 = time.process_time()
    for _ in range(3):
        case_checks(case)
    per_case = (time.process_time() - t0) / 3 * 1e3
    assert per_case < 250, f"checks took {per_case:.0f} ms CPU per case"
