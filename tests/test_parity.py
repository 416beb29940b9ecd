"""Parity with the reference package ``deep_quality_estimation`` 0.0.3, run as an oracle.

The preprocessed network inputs must be bit-identical to the reference's DataHandler tensors, and the stars
within 1e-4 per view of ``DQE.predict`` (the only difference left is torch batch-1 vs ONNX Runtime batch-3
arithmetic, about 2e-6 stars).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.phantom import make_phantom, write_case
from dqe.models.preprocess import build_views
from tests.conftest import DQE_TEST_DATA, real_cases

TOLERANCE = 1e-4  # stars, per view
VIEWS = ("axial", "coronal", "sagittal")

# (id, make_phantom kwargs): tumour shapes, int16 and float images, labels 1/2/3 and 1/2/4, edema-only, no ET,
# a smaller grid (padding in every view) and a larger one (no padding, views wider than 240).
PHANTOMS = [
    ("sphere-int16-123", dict(seed=10, lesion="sphere")),
    ("ellipsoid-float32-124", dict(seed=11, lesion="ellipsoid", legacy_labels=True, image_dtype="float32")),
    ("lobulated-float64-123", dict(seed=12, lesion="lobulated", image_dtype="float64", seg_dtype="float64")),
    ("multifocal-int16-124", dict(seed=13, lesion="multifocal", legacy_labels=True, seg_dtype="int16")),
    ("edema-only", dict(seed=14, lesion="sphere", edema_only=True)),
    ("no-enhancing", dict(seed=15, lesion="lobulated", no_enhancing=True, seg_dtype="float32")),
    ("small-grid", dict(seed=16, lesion="ellipsoid", shape=(200, 210, 120))),
    ("large-grid", dict(seed=17, lesion="sphere", shape=(256, 250, 160), image_dtype="float32")),
]


@pytest.fixture(scope="module")
def reference():
    """The authors' model on CPU (it writes CUDA_VISIBLE_DEVICES; we put the environment back)."""
    pytest.importorskip("deep_quality_estimation")
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    from deep_quality_estimation import DQE

    model = DQE(device="cpu")
    if saved is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return model


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("parity")
    return {name: write_case(make_phantom(**kw), root / name, case_id=name) for name, kw in PHANTOMS}


def _reference_inputs(files: dict[str, Path]) -> list[np.ndarray]:
    from deep_quality_estimation.data_handler import DataHandler

    handler = DataHandler(**{k: files[k] for k in ("t1c", "t1", "t2", "flair", "segmentation")})
    dataset = handler._build_dataset()  # the exact transforms the reference feeds its network
    return [dataset[i]["inputs"].float().numpy() for i in range(3)]


def _check(engine, reference, files: dict[str, Path]) -> None:
    case = Case.from_files(**files)
    ours = engine.score_case(case)
    ref_mean, ref_views = reference.predict(
        **{k: files[k] for k in ("t1c", "t1", "t2", "flair", "segmentation")}
    )
    for view in VIEWS:
        assert abs(ours.views[view] - ref_views[view.upper()]) <= TOLERANCE, (view, ours.views, ref_views)
    assert abs(ours.mean_stars - ref_mean) <= TOLERANCE


@pytest.mark.parametrize("name", [p[0] for p in PHANTOMS])
def test_inputs_bit_identical_on_phantoms(phantom_files, name: str) -> None:
    files = phantom_files[name]
    ref = _reference_inputs(files)
    case = Case.from_files(**files)
    ours, _ = build_views(case.images, case.labels)
    for r, o in zip(ref, ours, strict=True):
        assert r.shape == o.shape
        np.testing.assert_array_equal(o, r)


@pytest.mark.parametrize("name", [p[0] for p in PHANTOMS])
def test_stars_match_reference_on_phantoms(engine, reference, phantom_files, name: str) -> None:
    _check(engine, reference, phantom_files[name])


@pytest.mark.real_data
@pytest.mark.parametrize(
    "name,files", real_cases() or [("none", {})], ids=[c[0] for c in real_cases()] or ["none"]
)
def test_real_cases_match_reference(engine, reference, name: str, files: dict[str, Path]) -> None:
    ref = _reference_inputs(files)
    case = Case.from_files(**files)
    ours, _ = build_views(case.images, case.labels)
    for r, o in zip(ref, ours, strict=True):
        np.testing.assert_array_equal(o, r)
    _check(engine, reference, files)


@pytest.mark.real_data
def test_reference_expected_values_for_brats_gli_00001(engine) -> None:
    """The reference package's own test expectation, without running the reference."""
    case = Case.from_files(
        DQE_TEST_DATA / "t1c.nii.gz",
        DQE_TEST_DATA / "t1n.nii.gz",
        DQE_TEST_DATA / "t2w.nii.gz",
        DQE_TEST_DATA / "t2f.nii.gz",
        DQE_TEST_DATA / "seg-BraTS23_1.nii.gz",
    )
    result = engine.score_case(case)
    expected = {"axial": 5.45253849029541, "coronal": 5.1386494636535645, "sagittal": 5.3556928634643555}
    for view, value in expected.items():
        assert abs(result.views[view] - value) <= TOLERANCE
    assert abs(result.mean_stars - 5.315626939137776) <= TOLERANCE
    assert result.center_of_mass == (159, 100, 63)
