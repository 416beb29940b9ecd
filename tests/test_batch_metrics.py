"""Reference metrics (MONAI) with their edge cases, correlations with CIs, the journal and the dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest


def _cube(shape=(40, 40, 40), lo=(10, 10, 10), size=10, label=2) -> np.ndarray:
    a = np.zeros(shape, dtype=np.uint8)
    a[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = label
    return a


@pytest.fixture(scope="module")
def metrics_fn():
    pytest.importorskip("monai")
    from dqe.service.batch.metrics import segmentation_metrics

    return segmentation_metrics


def test_identical_segmentations_score_perfectly(metrics_fn) -> None:
    seg = _cube(label=2)
    seg[14:18, 14:18, 14:18] = 1
    seg[13:19, 13:19, 13] = 3
    m = metrics_fn(seg, seg)
    for r in ("WT", "TC", "ET"):
        assert m[f"dice_{r}"] == 1.0 and m[f"nsd_{r}"] == 1.0 and m[f"hd95_{r}"] == 0.0
    assert m["dice_mean"] == 1.0 and m["nsd_mean"] == 1.0


def test_shifted_cube_dice_is_analytic_and_distances_bounded(metrics_fn) -> None:
    gt = _cube(label=2)
    pred = _cube(lo=(12, 10, 10), label=2)  # shifted by 2 voxels along x: overlap 8 x 10 x 10
    m = metrics_fn(pred, gt, spacing=(1.0, 1.0, 1.0), nsd_tolerance_mm=2.0)
    assert m["dice_WT"] == pytest.approx(2 * 800 / 2000, abs=1e-6)
    assert 0 < m["hd95_WT"] <= 2.0 + 1e-6
    assert m["nsd_WT"] == pytest.approx(1.0)  # every boundary voxel within 2 mm
    strict = metrics_fn(pred, gt, nsd_tolerance_mm=0.0)
    assert strict["nsd_WT"] < 1.0
    # Distances are in mm: doubling the spacing along the shift axis doubles the worst boundary distance.
    wide = metrics_fn(pred, gt, spacing=(2.0, 1.0, 1.0), nsd_tolerance_mm=2.0)
    assert wide["hd95_WT"] > m["hd95_WT"] and wide["dice_WT"] == m["dice_WT"]


def test_empty_region_edge_cases_are_explicit(metrics_fn) -> None:
    gt = _cube(label=2)  # edema only: TC and ET empty in the reference
    both_empty = metrics_fn(gt, gt)
    assert both_empty["dice_ET"] == 1.0 and both_empty["nsd_ET"] == 1.0 and math.isnan(both_empty["hd95_ET"])
    pred = gt.copy()
    pred[15, 15, 15] = 3  # the prediction has an enhancing voxel the reference lacks
    one_empty = metrics_fn(pred, gt)
    assert one_empty["dice_ET"] == 0.0 and one_empty["nsd_ET"] == 0.0 and math.isnan(one_empty["hd95_ET"])
    assert one_empty["dice_TC"] == 0.0  # label 3 is tumour core too
    assert one_empty["dice_WT"] == 1.0
    nothing = metrics_fn(np.zeros_like(gt), np.zeros_like(gt))
    assert nothing["dice_WT"] == 1.0 and math.isnan(nothing["hd95_WT"])


def test_legacy_label_4_is_enhancing(metrics_fn) -> None:
    a = _cube(label=2)
    a[12:16, 12:16, 12:16] = 3
    b = np.where(a == 3, 4, a).astype(np.uint8)
    m = metrics_fn(a, b)
    assert m["dice_ET"] == 1.0 and m["dice_TC"] == 1.0


def test_crop_does_not_change_the_metrics(metrics_fn) -> None:
    rng = np.random.default_rng(3)
    gt = (rng.random((30, 30, 30)) > 0.4).astype(np.uint8) * 2
    pred = np.roll(gt, 1, axis=1)
    small = metrics_fn(pred, gt)
    big_gt = np.zeros((80, 70, 60), np.uint8)
    big_pred = np.zeros_like(big_gt)
    big_gt[20:50, 15:45, 10:40] = gt
    big_pred[20:50, 15:45, 10:40] = pred
    big = metrics_fn(big_pred, big_gt)
    for k in ("dice_WT", "hd95_WT", "nsd_WT"):
        assert big[k] == pytest.approx(small[k], rel=1e-6)
    inter = np.logical_and(pred > 0, gt > 0).sum()
    assert small["dice_WT"] == pytest.approx(2 * inter / ((pred > 0).sum() + (gt > 0).sum()), rel=1e-6)


def test_shape_mismatch_is_invalid_input(metrics_fn) -> None:
    from dqe.models.errors import InvalidInput

    with pytest.raises(InvalidInput, match="shape"):
        metrics_fn(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8))


# ---------------------------------------------------------------- correlations


def test_pearson_matches_numpy_and_its_interval_is_fisher_z() -> None:
    from dqe.models.stats import pearson

    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.6 * x + rng.normal(scale=0.8, size=50)
    res = pearson(x, y)
    r = np.corrcoef(x, y)[0, 1]
    assert res["r"] == pytest.approx(r, rel=1e-12) and res["n"] == 50
    se = 1 / math.sqrt(50 - 3)
    assert res["ci_low"] == pytest.approx(math.tanh(math.atanh(r) - 1.959964 * se), abs=1e-5)
    assert res["ci_high"] == pytest.approx(math.tanh(math.atanh(r) + 1.959964 * se), abs=1e-5)
    assert 0 < res["p"] < 0.01


def test_spearman_interval_and_nan_handling() -> None:
    from dqe.models.stats import spearman

    x = np.array([1, 2, 3, 4, 5, 6, 7, 8, np.nan])
    y = np.array([2, 1, 4, 3, 6, 5, 8, 7, 100.0])
    res = spearman(x, y)
    assert res["n"] == 8  # the NaN pair is dropped
    rho = res["r"]
    assert rho == pytest.approx(0.9047619, abs=1e-6)
    se = math.sqrt((1 + rho**2 / 2) / 5)
    assert res["ci_low"] == pytest.approx(math.tanh(math.atanh(rho) - 1.959964 * se), abs=1e-5)
    assert res["ci_low"] < rho < res["ci_high"] <= 1


def test_correlations_are_nan_when_undefined() -> None:
    from dqe.models.stats import pearson, spearman

    for fn in (pearson, spearman):
        assert math.isnan(fn([1, 2, 3], [1, 2, 3])["r"])  # fewer than 4 pairs
        assert math.isnan(fn([1, 1, 1, 1, 1], [1, 2, 3, 4, 5])["r"])  # constant
    perfect = spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert perfect["r"] == pytest.approx(1.0) and perfect["ci_low"] == pytest.approx(1.0)


# ---------------------------------------------------------------- journal


def test_journal_cuts_a_torn_last_line_and_keeps_the_last_record(tmp_path: Path) -> None:
    from dqe.service.batch.journal import Journal

    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append([{"case": "a", "team": "t", "input_key": "k1", "mean_stars": 4.0, "error": ""}])
    j.append([{"case": "a", "team": "t", "input_key": "k2", "mean_stars": float("nan"), "error": ""}])
    with path.open("ab") as fh:
        fh.write(b'{"case": "b", "team": "t", "inp')
    j2 = Journal(path)
    assert j2.torn_lines == 1 and len(j2) == 1
    assert j2.records[("a", "t")]["input_key"] == "k2" and j2.records[("a", "t")]["mean_stars"] is None
    assert path.read_bytes().endswith(b"\n")
    assert all(json.loads(line) for line in path.read_text().splitlines())
    assert j2.done("a", "t", "k2") and not j2.done("a", "t", "k1") and not j2.done("b", "t", "k2")


def test_journal_retries_untyped_errors_only(tmp_path: Path) -> None:
    from dqe.service.batch.journal import Journal

    j = Journal(tmp_path / "j.jsonl")
    j.append(
        [
            {"case": "a", "team": "t", "input_key": "k", "error": "UnreadableFile: x", "error_typed": True},
            {"case": "b", "team": "t", "input_key": "k", "error": "MemoryError: y", "error_typed": False},
        ]
    )
    assert j.done("a", "t", "k") and not j.done("b", "t", "k")


def test_case_spec_round_trips_through_json(tmp_path: Path) -> None:
    from dqe.models.errors import NotFound
    from dqe.service.batch.dataset import CaseSpec, SegJob

    spec = CaseSpec(
        "C1",
        tmp_path,
        {"t1c": tmp_path / "a.nii.gz"},
        None,
        (
            SegJob("C1", "t", None, NotFound("gone", field="segmentation"), "key"),
            SegJob("C1", "u", tmp_path / "s.nii.gz"),
        ),
    )
    back = CaseSpec.from_json(spec.to_json())
    assert back.case_id == "C1" and back.images == spec.images and back.ground_truth is None
    assert isinstance(back.jobs[0].error, NotFound) and back.jobs[0].error.field == "segmentation"
    assert back.jobs[1].segmentation == tmp_path / "s.nii.gz" and back.jobs[1].error is None


def test_missing_ground_truth_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    from dqe.service.batch.dataset import CaseSpec
    from dqe.service.batch.prepare import _reference_labels

    expected = CaseSpec("C1", tmp_path, {}, None, (), labels_expected=True)
    labels, note = _reference_labels(expected, {})
    assert labels is None and note is not None and "C1.nii.gz" in note
    assert _reference_labels(CaseSpec("C1", tmp_path, {}, None, ()), {}) == (None, None)
    broken = tmp_path / "C1.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    labels, note = _reference_labels(CaseSpec("C1", tmp_path, {}, broken, (), labels_expected=True), {})
    assert labels is None and note is not None and "UnreadableFile" in note
