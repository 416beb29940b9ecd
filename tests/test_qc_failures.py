"""The seeded failure generator: API, determinism, what each mode does, and that the gate flags each one
(on a phantom always; on a real shared case with ``real_data``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from dqe.models.case import Case
from dqe.models.phantom import make_phantom
from dqe.models.qc.brain import brain_mask_full
from dqe.models.qc.failures import FAILURE_MODES, MIN_COMPARTMENT_VOXELS, applicable_modes, generate_failure
from dqe.models.qc.gate import case_checks, verdict_of

# The checks that name the right reason for each failure mode (any one of them suffices).
EXPECTED_REASONS = {
    "spill": {"tumour_outside_brain", "tumour_brain_fraction", "tumour_volume"},
    "all_voxels": {"tumour_outside_brain", "tumour_brain_fraction", "tumour_volume"},
    # issue 18: the per-region evidence of the same family can carry the reason (conformal rule)
    "shift": {"boundary_alignment", "tumour_outside_brain", "boundary_shift", "boundary_scale"},
    "flip_lr": {"orientation"},
    "erode": {
        "undersegmentation",
        "boundary_alignment",
        "boundary_scale",
        "boundary_shift",
        "abnormal_outside",
    },
    "dilate": {
        "flair_hyperintensity",
        "tumour_brain_fraction",
        "tumour_volume",
        "boundary_alignment",
        "boundary_scale",
        "boundary_shift",
    },
    "false_positives": {
        "distant_fragments",
        "distant_fragment_share",
        "distant_fragments_flair",
        "core_outside_lesion",
    },
    "drop_enhancing": {"unlabelled_enhancement", "unlabelled_enhancing"},
    "swap_enhancing_necrosis": {"et_vs_necrosis", "et_enhancement", "et_vs_necrosis_t1c", "et_enclosed"},
}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=4)  # lesion ~32 voxels lateral of the midline


@pytest.fixture(scope="module")
def brain(phantom):
    return brain_mask_full([phantom.t1c, phantom.t1, phantom.t2, phantom.flair])


def test_api_is_stable():
    assert set(FAILURE_MODES) == {
        "spill",
        "all_voxels",
        "shift",
        "flip_lr",
        "erode",
        "dilate",
        "false_positives",
        "drop_enhancing",
        "swap_enhancing_necrosis",
        "empty",
    }
    assert isinstance(FAILURE_MODES, tuple)


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_deterministic_and_different(phantom, brain, mode):
    seg = phantom.segmentation
    a = generate_failure(seg, mode, 7, brain)
    b = generate_failure(seg, mode, 7, brain)
    assert a.dtype == seg.dtype and a.shape == seg.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, seg)
    np.testing.assert_array_equal(seg, phantom.segmentation)  # input untouched


def test_seeds_differ_for_random_modes(phantom, brain):
    seg = phantom.segmentation
    for mode in ("spill", "shift", "erode", "dilate", "false_positives"):
        assert not np.array_equal(
            generate_failure(seg, mode, 0, brain), generate_failure(seg, mode, 1, brain)
        ), mode


def test_mode_semantics(phantom, brain):
    seg = phantom.segmentation
    wt = seg > 0
    n = int(wt.sum())
    assert not generate_failure(seg, "empty", 0).any()
    every = generate_failure(seg, "all_voxels", 0)
    assert (every > 0).all() and np.array_equal(every[wt], seg[wt])
    spill = generate_failure(seg, "spill", 0, brain)
    assert (spill > 0).sum() > 0.2 * brain.sum() and ((spill > 0) & ~brain).any()
    shifted = generate_failure(seg, "shift", 3, brain)
    moved = np.abs(ndi.center_of_mass(shifted > 0) - np.array(ndi.center_of_mass(wt)))
    assert 3.5 <= float(np.linalg.norm(moved)) <= 31
    eroded = generate_failure(seg, "erode", 0, brain)
    assert 0.1 * n <= (eroded > 0).sum() <= 0.41 * n and not ((eroded > 0) & ~wt).any()
    dilated = generate_failure(seg, "dilate", 0, brain)
    assert (dilated > 0).sum() > 1.5 * n and not ((dilated > 0) & ~wt & ~brain).any()
    fp = generate_failure(seg, "false_positives", 0, brain)
    _, n_comp = ndi.label(fp > 0)
    assert n_comp >= 4 and np.array_equal(fp[wt], seg[wt])
    dropped = generate_failure(seg, "drop_enhancing", 0, brain)
    assert not (dropped == 3).any() and np.array_equal(dropped > 0, wt)
    swapped = generate_failure(seg, "swap_enhancing_necrosis", 0, brain)
    assert (swapped == 3).sum() == (seg == 1).sum() and (swapped == 1).sum() == (seg == 3).sum()


def test_flip_is_about_the_brain_midline(phantom, brain):
    seg = phantom.segmentation
    flipped = generate_failure(seg, "flip_lr", 0, brain)
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    mid = (xs[0] + xs[-1]) / 2.0
    com = ndi.center_of_mass(seg > 0)[0]
    com_f = ndi.center_of_mass(flipped > 0)[0]
    assert com_f == pytest.approx(2 * mid - com, abs=0.01)
    np.testing.assert_array_equal(generate_failure(flipped, "flip_lr", 0, brain), seg)


def test_legacy_label_convention_is_kept(brain):
    seg = make_phantom(seed=4, legacy_labels=True).segmentation
    assert set(np.unique(generate_failure(seg, "swap_enhancing_necrosis", 0, brain))) <= {0, 1, 2, 4}
    fp = generate_failure(seg, "false_positives", 1, brain)
    assert not (fp == 3).any()


def test_invalid_requests_raise(phantom):
    seg = phantom.segmentation
    with pytest.raises(ValueError, match="not one of"):
        generate_failure(seg, "melt", 0)
    with pytest.raises(ValueError, match="no tumour"):
        generate_failure(np.zeros_like(seg), "shift", 0)
    with pytest.raises(ValueError, match="3-D"):
        generate_failure(seg[0], "shift", 0)
    no_et = make_phantom(seed=4, no_enhancing=True).segmentation
    assert "drop_enhancing" not in applicable_modes(no_et)
    with pytest.raises(ValueError, match="does not apply"):
        generate_failure(no_et, "drop_enhancing", 0)
    tiny_et = np.where(seg == 3, 1, seg).astype(seg.dtype)
    tiny_et[tuple(np.argwhere(seg == 3)[: MIN_COMPARTMENT_VOXELS - 1].T)] = 3
    assert "drop_enhancing" not in applicable_modes(tiny_et)
    assert "swap_enhancing_necrosis" not in applicable_modes(tiny_et)
    assert "drop_enhancing" in applicable_modes(tiny_et, min_voxels=1)


@pytest.mark.parametrize("mode", [m for m in FAILURE_MODES if m != "empty"])
def test_gate_flags_every_mode_on_a_phantom(phantom, brain, mode):
    seg = generate_failure(phantom.segmentation, mode, 0, brain)
    case = Case.from_arrays(**{**phantom.arrays(), "segmentation": seg}, affine=phantom.affine)
    checks = case_checks(case)
    verdict = verdict_of(checks)
    failed = {c.name for c in checks if not c.passed and c.severity in ("fail", "review")}
    assert verdict.value in ("fail", "review"), (mode, failed)
    assert failed & EXPECTED_REASONS[mode], (mode, failed)


def test_empty_mode_is_rejected_by_the_case(phantom):
    from dqe.models.errors import EmptySegmentation

    seg = generate_failure(phantom.segmentation, "empty", 0)
    with pytest.raises(EmptySegmentation):
        Case.from_arrays(**{**phantom.arrays(), "segmentation": seg}, affine=phantom.affine)


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("source", ["BraTS-GLI-00001-000/seg-BraTS23_1", "OtherEXampleFromTCIA/fusion/mav"])
def test_gate_flags_every_mode_on_real_cases(engine, source):
    """Every applicable failure mode of a real segmentation: fail or review, for the right reason."""
    from dqe.models.errors import EmptySegmentation
    from dqe.models.qc.gate import empty_segmentation_result, evaluate_case
    from tests.conftest import real_cases

    files = dict(real_cases())[source]
    good = Case.from_files(**files)
    brain = brain_mask_full(good.images)
    images = dict(zip(("t1c", "t1", "t2", "flair"), good.images, strict=True))
    modes = applicable_modes(good.labels)
    if source.startswith("BraTS-GLI"):
        assert set(modes) == set(FAILURE_MODES)  # this case exercises every mode
    from dqe.models.nifti import from_array

    for mode in modes:
        labels = generate_failure(good.labels, mode, 0, brain)
        seg = from_array(labels, "segmentation", good.segmentation.affine)
        if mode == "empty":
            with pytest.raises(EmptySegmentation) as info:
                Case(**images, segmentation=seg)
            gate = empty_segmentation_result(info.value.message)
            assert gate.verdict.value == "fail"
            continue
        case = Case(**images, segmentation=seg)
        result = engine.score_case(case)
        gate = evaluate_case(case, result)
        failed = {c.name for c in gate.checks if not c.passed and c.severity in ("fail", "review")}
        assert gate.verdict.value in ("fail", "review"), (mode, result.mean_stars, failed)
        assert failed & EXPECTED_REASONS[mode], (mode, failed)
        assert any(r.split(": ")[1] in EXPECTED_REASONS[mode] for r in gate.reasons)
