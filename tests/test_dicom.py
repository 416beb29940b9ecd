"""DICOM studies -> Case: parity with the NIfTI path (stars and gate verdict), and each typed error from a crafted
study. Fixtures are written at test time (tests/dicom_support.py); real exams behind the real_data marker."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install dqe-service[dicom])")

import pydicom  # noqa: E402

from dqe.models.case import Case  # noqa: E402
from dqe.models.dicom import is_dicom_study_dir  # noqa: E402
from dqe.models.dicom.errors import (  # noqa: E402
    FrameOfReferenceMismatch,
    ModalityNotFound,
    SeriesGeometryError,
    StudyTooLarge,
    UnmappedSegment,
)
from dqe.models.dicom.study import StudyLimits, load_study, read_files, study_files  # noqa: E402
from dqe.models.phantom import make_phantom  # noqa: E402
from dqe.models.qc.gate import evaluate_case  # noqa: E402
from tests.conftest import DQE_TEST_DATA, SHARED_DATA  # noqa: E402
from tests.dicom_support import load_nifti_arrays, write_study  # noqa: E402

SMALL = (64, 60, 40)


def _load(folder: Path, **kw) -> Case:
    return load_study(read_files(study_files(folder)), **kw).case


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], np.ndarray, Path]:
    p = make_phantom(seed=3, shape=SMALL)
    folder = tmp_path_factory.mktemp("small")
    write_study(folder, p.arrays(), p.affine)
    return p.arrays(), p.affine, folder


def _assert_same_voxels(case: Case, arrays: dict[str, np.ndarray]) -> None:
    for f in ("t1c", "t1", "t2", "flair"):
        np.testing.assert_array_equal(getattr(case, f).data, arrays[f], err_msg=f)
    seg = np.where(arrays["segmentation"] == 4, 3, arrays["segmentation"])
    np.testing.assert_array_equal(case.segmentation.data, seg)


@pytest.mark.parametrize(
    ("seg_type", "rotate", "enhanced"),
    [("BINARY", 0.0, ()), ("LABELMAP", 0.0, ()), ("BINARY", 15.0, ("t2",)), ("LABELMAP", 15.0, ())],
)
def test_phantom_study_scores_as_the_nifti_case(tmp_path, engine, seg_type, rotate, enhanced) -> None:
    p = make_phantom(seed=1)
    write_study(tmp_path, p.arrays(), p.affine, seg_type=seg_type, rotate_deg=rotate, enhanced=enhanced)
    assert is_dicom_study_dir(tmp_path)
    study = load_study(read_files(study_files(tmp_path)))
    _assert_same_voxels(study.case, p.arrays())
    nifti = Case.from_arrays(**p.arrays(), affine=p.affine)
    ours, ref = engine.score_case(study.case), engine.score_case(nifti)
    assert abs(ours.mean_stars - ref.mean_stars) <= 1e-4
    for view in ref.views:
        assert abs(ours.views[view] - ref.views[view]) <= 1e-4
    assert evaluate_case(study.case, ours).verdict == evaluate_case(nifti, ref).verdict
    assert study.info.segment_labels == {1: 1, 2: 2, 3: 3}
    # the volume handed to the checks carries the DICOM geometry (oblique when rotated) as a RAS affine
    tilt = np.degrees(np.arccos(abs(study.case.t1c.affine[2, 2])))
    assert tilt == pytest.approx(rotate, abs=0.01) if rotate else tilt < 1e-6


@pytest.mark.real_data
@pytest.mark.parametrize(("seg_type", "rotate"), [("BINARY", 0.0), ("LABELMAP", 20.0)])
def test_real_exam_parity(tmp_path, engine, seg_type, rotate) -> None:
    files = {
        f: DQE_TEST_DATA / f"{n}.nii.gz"
        for f, n in (("t1c", "t1c"), ("t1", "t1n"), ("t2", "t2w"), ("flair", "t2f"))
    }
    files["segmentation"] = DQE_TEST_DATA / "seg-BraTS23_1.nii.gz"
    arrays, affine = load_nifti_arrays(files)
    write_study(tmp_path, arrays, affine, seg_type=seg_type, rotate_deg=rotate)
    case = _load(tmp_path)
    _assert_same_voxels(case, arrays)
    nifti = Case.from_files(**files)  # type: ignore[arg-type]
    ours, ref = engine.score_case(case), engine.score_case(nifti)
    assert abs(ours.mean_stars - ref.mean_stars) <= 1e-4, (ours.mean_stars, ref.mean_stars)
    assert evaluate_case(case, ours).verdict == evaluate_case(nifti, ref).verdict
    # no out-of-distribution warning: the shared exams are skull-stripped on the 1 mm atlas grid
    assert not [w for w in case.warnings if "out of distribution" in w]


@pytest.mark.real_data
def test_real_ground_truth_exam_oblique_multiframe_parity(tmp_path, engine) -> None:
    """A BraTS 2018 exam with its expert segmentation (legacy label 4), written oblique with the FLAIR series as
    one Legacy Converted Enhanced MR instance and a BINARY SEG: same stars and verdict as the NIfTI files."""
    root = SHARED_DATA / "brats2018-groundtruth" / "Brats18_TCIA01_201_1"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    names = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair", "segmentation": "seg"}
    files = {f: root / f"{root.name}_{n}.nii.gz" for f, n in names.items()}
    arrays, affine = load_nifti_arrays(files)
    write_study(tmp_path, arrays, affine, seg_type="BINARY", rotate_deg=10.0, enhanced=("flair",))
    case = _load(tmp_path)
    _assert_same_voxels(case, arrays)
    nifti = Case.from_files(**files)  # type: ignore[arg-type]
    ours, ref = engine.score_case(case), engine.score_case(nifti)
    assert abs(ours.mean_stars - ref.mean_stars) <= 1e-4, (ours.mean_stars, ref.mean_stars)
    assert evaluate_case(case, ours).verdict == evaluate_case(nifti, ref).verdict


def _copy(small, tmp_path: Path) -> Path:
    dest = tmp_path / "study"
    shutil.copytree(small[2], dest)
    return dest


def _edit(files: list[Path], change) -> None:
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        change(i, ds)
        ds.save_as(path)


def test_gantry_tilt_names_the_series(small, tmp_path) -> None:
    study = _copy(small, tmp_path)

    def shear(i: int, ds) -> None:
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y + 0.2 * i, z]

    _edit(sorted((study / "flair").iterdir()), shear)
    with pytest.raises(
        SeriesGeometryError, match=r"flair \(series #4 'T2 FLAIR'\).*degrees off their normal"
    ):
        _load(study)


def test_missing_slices_named(small, tmp_path) -> None:
    study = _copy(small, tmp_path)
    for k in (10, 11):
        (study / "t2" / f"t2-{k:04d}.dcm").unlink()
    with pytest.raises(SeriesGeometryError, match=r"t2 \(series #3 'T2 TSE'\): 2 missing slices"):
        _load(study)


def test_irregular_spacing_named(small, tmp_path) -> None:
    study = _copy(small, tmp_path)

    def jitter(i: int, ds) -> None:
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, z + (0.3 if i == 7 else 0.0)]

    _edit(sorted((study / "t1").iterdir()), jitter)
    with pytest.raises(SeriesGeometryError, match=r"t1 \(series #2 'T1 pre'\): irregular slice spacing"):
        _load(study)


def test_frame_of_reference_mismatch(small, tmp_path) -> None:
    study = _copy(small, tmp_path)
    _edit(sorted((study / "t1").iterdir()), lambda i, ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4"))
    with pytest.raises(FrameOfReferenceMismatch, match=r"t1 \(series #2 'T1 pre'\): 1\.2\.3\.4"):
        _load(study)


def test_unmapped_segment(small, tmp_path) -> None:
    study = _copy(small, tmp_path)
    seg = study / "seg" / "seg.dcm"
    ds = pydicom.dcmread(seg)
    item = ds.SegmentSequence[1]
    item.SegmentLabel = "Artefact"
    item.SegmentedPropertyTypeCodeSequence[0].CodeValue = "47973001"
    ds.save_as(seg)
    with pytest.raises(UnmappedSegment, match=r"segment 2 \('Artefact'"):
        _load(study)


def test_modality_not_found_lists_the_series(small, tmp_path) -> None:
    study = _copy(small, tmp_path)
    shutil.rmtree(study / "flair")
    with pytest.raises(ModalityNotFound, match=r"flair rules.*#1 'T1 post-contrast'.*#3 'T2 TSE'"):
        _load(study)


def test_instance_without_series_uid_is_a_typed_error(small, tmp_path) -> None:
    from dqe.models.errors import InvalidInput

    study = _copy(small, tmp_path)
    _edit(sorted((study / "t2").iterdir())[:1], lambda i, ds: delattr(ds, "SeriesInstanceUID"))
    with pytest.raises(InvalidInput, match="no SeriesInstanceUID"):
        _load(study)


def test_no_seg_is_modality_not_found(small, tmp_path) -> None:
    study = _copy(small, tmp_path)
    shutil.rmtree(study / "seg")
    with pytest.raises(ModalityNotFound, match="no SEG"):
        _load(study)


def test_study_budgets_refuse_before_decoding(small) -> None:
    files = study_files(small[2])
    with pytest.raises(StudyTooLarge, match="more than 10 instances"):
        read_files(files, StudyLimits(max_instances=10))
    with pytest.raises(StudyTooLarge, match="voxels; at most 1000 per series"):
        load_study(read_files(files), limits=StudyLimits(max_series_voxels=1000))


def test_ood_warning_when_not_skull_stripped(tmp_path) -> None:
    p = make_phantom(seed=2, shape=SMALL)
    arrays = dict(p.arrays())
    arrays["t1c"] = np.where(arrays["t1c"] == 0, 37, arrays["t1c"]).astype(np.int16)
    write_study(tmp_path, arrays, np.diag([2.0, 2.0, 2.0, 1.0]))
    warnings = _load(tmp_path).warnings
    assert any("do not look skull-stripped" in w for w in warnings)
    assert any("voxel spacing (2.0, 2.0, 2.0) mm" in w for w in warnings)


def test_resampled_series_named(small, tmp_path) -> None:
    study = _copy(small, tmp_path)
    # shift the t2 series by half a voxel along x: same frame of reference, another grid
    _edit(
        sorted((study / "t2").iterdir()),
        lambda i, ds: setattr(
            ds, "ImagePositionPatient", [ds.ImagePositionPatient[0] + 0.5, *ds.ImagePositionPatient[1:]]
        ),
    )
    case = _load(study)
    assert any("t2 (series #3 'T2 TSE'): not on the grid" in w and "trilinear" in w for w in case.warnings)
    assert case.t2.shape == case.t1c.shape


def test_cli_gate_score_and_batch_on_dicom_studies(small, tmp_path, capsys) -> None:
    """`dqe gate STUDY --sr`, `dqe score STUDY`, `dqe batch STUDIES --out` (no SUBMISSION_DIR), JSON on stdout."""
    import json

    from dqe.models.qc.gate import EXIT_CODES
    from dqe.models.qc.types import Verdict
    from dqe.service.cli import main

    study = _copy(small, tmp_path)
    sr = tmp_path / "out" / "report.dcm"
    code = main(["gate", str(study), "--sr", str(sr), "--threads", "2"])
    out = json.loads(capsys.readouterr().out)
    verdict = out["gate"]["verdict"]
    assert code == EXIT_CODES[Verdict(verdict)]
    assert out["sr"] == str(sr) and pydicom.dcmread(sr).Modality == "SR"
    assert (sr.with_name("report-kos.dcm").exists()) == (verdict != "pass")
    assert main(["score", str(study), "--threads", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_stars"] == pytest.approx(out["mean_stars"], abs=1e-6)
    broken = tmp_path / "studies" / "broken"
    shutil.copytree(study, tmp_path / "studies" / "good")
    shutil.copytree(study, broken)
    shutil.rmtree(broken / "flair")
    assert main(["batch", str(tmp_path / "studies"), "--out", str(tmp_path / "b"), "--threads", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["scored"], summary["failed"]) == (1, 1)
    rows = [json.loads(x) for x in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert {r["study"]: "error" in r for r in rows} == {"good": False, "broken": True}
    assert (tmp_path / "b" / "sr" / "good.dcm").is_file()
    assert main(["batch", str(tmp_path / "studies"), "--out", str(tmp_path / "b"), "--threads", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2  # the journal: a re-run skips both
