"""The independent failure mechanisms: API, determinism, what each does, severities that span the bands."""

from __future__ import annotations

import numpy as np
import pytest

from dqe.models.phantom import make_phantom
from dqe.models.qc.brain import brain_mask_full
from dqe.models.qc.failures import FAILURE_MODES
from dqe.models.qc.mechanisms import (
    DETERMINISTIC,
    MECHANISMS,
    applicable_mechanisms,
    generate,
    region_dice,
)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=4, lesion="lobulated")


@pytest.fixture(scope="module")
def legacy():
    return make_phantom(seed=4, lesion="lobulated", legacy_labels=True)


@pytest.fixture(scope="module")
def brain(phantom):
    return brain_mask_full([phantom.t1c, phantom.t1, phantom.t2, phantom.flair])


def test_mechanisms_are_new_and_stable():
    assert isinstance(MECHANISMS, tuple) and len(set(MECHANISMS)) == len(MECHANISMS) == 10
    assert not set(MECHANISMS) & set(FAILURE_MODES)  # nothing reused from the calibration modes
    assert "flip_lr" not in MECHANISMS  # the orientation check's mirror image
    assert set(MECHANISMS) >= DETERMINISTIC


def test_applicability_follows_the_label_convention(phantom, legacy):
    modern = applicable_mechanisms(phantom.segmentation)
    old = applicable_mechanisms(legacy.segmentation)
    assert "labels_123_as_124" in modern and "labels_124_as_123" not in modern
    assert "labels_124_as_123" in old and "labels_123_as_124" not in old
    edema_only = make_phantom(seed=1, edema_only=True).segmentation
    assert "labels_123_as_124" not in applicable_mechanisms(edema_only)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_deterministic_changes_labels_and_keeps_input(phantom, legacy, brain, mechanism):
    seg = (legacy if mechanism == "labels_124_as_123" else phantom).segmentation
    before = seg.copy()
    a = generate(seg, mechanism, 3, brain)
    b = generate(seg, mechanism, 3, brain)
    assert a.dtype == seg.dtype and a.shape == seg.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, seg), mechanism
    np.testing.assert_array_equal(seg, before)
    assert set(np.unique(a)) <= {0, 1, 2, 3, 4}


@pytest.mark.parametrize("mechanism", sorted(set(MECHANISMS) - DETERMINISTIC))
def test_random_mechanisms_vary_with_the_seed(phantom, brain, mechanism):
    outs = [generate(phantom.segmentation, mechanism, s, brain) for s in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:]), mechanism


def test_label_convention_mechanisms_are_exact(phantom, legacy, brain):
    seg = phantom.segmentation
    msd = generate(seg, "labels_msd_order", 0, brain)
    np.testing.assert_array_equal(msd == 2, seg == 1)
    np.testing.assert_array_equal(msd == 1, seg == 2)
    np.testing.assert_array_equal(msd == 3, seg == 3)
    old = generate(seg, "labels_123_as_124", 0, brain)
    assert not (old == 3).any() and np.array_equal(old == 1, (seg == 1) | (seg == 3))
    dropped = generate(legacy.segmentation, "labels_124_as_123", 0, brain)
    assert not (dropped == 4).any() and np.array_equal(dropped > 0, np.isin(legacy.segmentation, (1, 2)))
    assert region_dice(seg, msd) == 1.0  # a pure relabelling keeps the whole tumour


def test_class_dropped_removes_one_class(phantom, brain):
    seen = set()
    for seed in range(6):
        out = generate(phantom.segmentation, "class_dropped", seed, brain)
        gone = {k for k in (1, 2) if (phantom.segmentation == k).any() and not (out == k).any()}
        assert len(gone) == 1
        seen |= gone
    assert seen == {1, 2}  # the seed chooses which


def test_missing_slab_zeroes_consecutive_axial_slices_only(phantom, brain):
    seg = phantom.segmentation
    out = generate(seg, "missing_slab", 5, brain)
    lost = (seg > 0).any(axis=(0, 1)) & ~(out > 0).any(axis=(0, 1))
    idx = np.flatnonzero(lost)
    assert idx.size >= 1 and np.all(np.diff(idx) == 1)  # one slab
    keep = ~lost
    np.testing.assert_array_equal(out[:, :, keep], seg[:, :, keep])


def test_fov_cropped_cuts_a_half_space(phantom, brain):
    seg = phantom.segmentation
    out = generate(seg, "fov_cropped", 2, brain)
    changed = seg != out
    assert changed.any() and not (out[changed] > 0).any()  # only removed, never added


def test_resampling_and_registration_degrade_gradually(phantom, brain):
    seg = phantom.segmentation
    for mechanism in ("interp_linear", "nearest_wrong_spacing", "other_registration"):
        dice = [region_dice(seg, generate(seg, mechanism, s, brain)) for s in range(6)]
        assert all(0.0 < d < 1.0 for d in dice), (mechanism, dice)
        assert max(dice) - min(dice) > 0.01, (mechanism, dice)  # severity comes from the seed
    lin = generate(seg, "interp_linear", 0, brain)
    # linear interpolation of label values invents labels at borders: necrosis (1) appears outside the core
    core = np.isin(seg, (1, 3))
    assert ((lin == 1) & ~core).any()


def test_flip_ap_reverses_axis_1(phantom, brain):
    out = generate(phantom.segmentation, "flip_ap", 0, brain)
    np.testing.assert_array_equal(out, phantom.segmentation[:, ::-1, :])


def test_region_dice():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    assert region_dice(a, b) == 1.0
    a[0, 0, :2] = 2
    b[0, 0, 2:] = 2
    assert region_dice(a, b) == 0.0
    b[0, 0, :2] = 3
    assert region_dice(a, b, "WT") == pytest.approx(2 * 2 / (2 + 4))
    assert region_dice(a, b, "ET") == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mechanism": "nope"}, "not one of"),
        ({"labels": np.zeros((4, 4), np.uint8)}, "3-D"),
        ({"labels": np.zeros((4, 4, 4), np.uint8)}, "no tumour voxel"),
        ({"brain_mask": np.ones((2, 2, 2), bool)}, "brain_mask has shape"),
        ({"mechanism": "labels_124_as_123"}, "does not apply"),
    ],
)
def test_errors(phantom, kwargs, message):
    args = {"labels": phantom.segmentation, "mechanism": "missing_slab", "seed": 0, "brain_mask": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(args["labels"], args["mechanism"], args["seed"], args["brain_mask"])
