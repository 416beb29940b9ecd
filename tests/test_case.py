"""``Case`` validation, BraTS naming discovery and typed errors at the input boundary."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dqe.models.case import Case, classify_filename, discover_files
from dqe.models.errors import EmptySegmentation, InvalidInput, NotFound, UnreadableFile
from dqe.models.phantom import NAMINGS, make_phantom, write_case

SMALL = (64, 64, 40)


@pytest.fixture(scope="module")
def small():
    return make_phantom(seed=3, shape=SMALL)


def _arrays(ph, **override):
    arrays = ph.arrays()
    arrays.update(override)
    return arrays


@pytest.mark.parametrize("naming", sorted(NAMINGS))
def test_discovers_every_brats_naming(tmp_path: Path, small, naming: str) -> None:
    paths = write_case(small, tmp_path / naming, case_id="C-001", naming=naming)
    found = discover_files(tmp_path / naming)
    assert found == paths


@pytest.mark.parametrize(
    "name,field",
    [
        ("BraTS-GLI-00001-000-t1c.nii.gz", "t1c"),
        ("BraTS-GLI-00001-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00001-000-t2f.nii.gz", "flair"),
        ("BraTS2021_00000_t1ce.nii.gz", "t1c"),
        ("BraTS2021_00000_flair.nii", "flair"),
        ("TCGA-DU-7294_fla_bet.nii.gz", "flair"),
        ("TCGA-DU-7294_t1_bet.nii.gz", "t1"),
        ("seg-BraTS23_1.nii.gz", "segmentation"),
        ("notes.txt", None),
        ("brain_mask.nii.gz", None),
    ],
)
def test_classify_filename(name: str, field: str | None) -> None:
    assert classify_filename(name) == field


def test_missing_and_ambiguous_files_are_typed(tmp_path: Path, small) -> None:
    paths = write_case(small, tmp_path / "c", case_id="C")
    paths["t2"].unlink()
    with pytest.raises(NotFound, match="no t2 file"):
        discover_files(tmp_path / "c")
    write_case(small, tmp_path / "d", case_id="D")
    write_case(small, tmp_path / "d", case_id="E")
    with pytest.raises(InvalidInput, match="2 t1c files"):
        discover_files(tmp_path / "d")
    with pytest.raises(NotFound):
        discover_files(tmp_path / "missing")


def test_valid_case_has_labels_and_counts(small) -> None:
    case = Case.from_arrays(**small.arrays())
    assert case.labels.dtype == np.uint8
    assert case.labels_present() == [1, 2, 3]
    assert int(case.counts.sum()) == int(np.prod(SMALL))
    assert any("grid" in w for w in case.warnings)  # not 240x240x155


def test_rejects_wrong_dimensionality(small) -> None:
    with pytest.raises(InvalidInput, match=r"t2 has shape \(64, 64, 40, 3\); expected a 3-D volume"):
        Case.from_arrays(**_arrays(small, t2=np.stack([small.t2] * 3, axis=-1)))


def test_trailing_singleton_axis_is_dropped_with_a_note(small) -> None:
    case = Case.from_arrays(**_arrays(small, t2=small.t2[..., None]))
    assert any("trailing singleton" in w for w in case.warnings)


def test_rejects_mismatched_shapes(small) -> None:
    with pytest.raises(InvalidInput, match="flair has shape") as err:
        Case.from_arrays(**_arrays(small, flair=small.flair[:, :, :-1]))
    assert err.value.field == "flair"


def test_rejects_unknown_labels_naming_them(small) -> None:
    seg = small.segmentation.copy()
    seg[0, 0, 0] = 7
    with pytest.raises(
        InvalidInput, match=r"segmentation has labels \{7\}; expected a subset of \{0, 1, 2, 3, 4\}"
    ):
        Case.from_arrays(**_arrays(small, segmentation=seg))


def test_rejects_fractional_and_negative_labels(small) -> None:
    seg = small.segmentation.astype(np.float32)
    seg[0, 0, 0] = 1.5
    with pytest.raises(InvalidInput, match=r"\{1.5\}"):
        Case.from_arrays(**_arrays(small, segmentation=seg))
    seg = small.segmentation.astype(np.int16)
    seg[0, 0, 0] = -1
    with pytest.raises(InvalidInput, match=r"\{-1\}"):
        Case.from_arrays(**_arrays(small, segmentation=seg))


def test_rejects_nan_segmentation(small) -> None:
    seg = small.segmentation.astype(np.float32)
    seg[1, 1, 1] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        Case.from_arrays(**_arrays(small, segmentation=seg))


def test_empty_segmentation_is_a_typed_error(small) -> None:
    """The reference crashes here with 'cannot convert float NaN to integer'."""
    with pytest.raises(EmptySegmentation):
        Case.from_arrays(**_arrays(small, segmentation=np.zeros(SMALL, np.uint8)))


def test_all_nan_image_rejected_partial_nan_warned(small) -> None:
    with pytest.raises(InvalidInput, match="t1 has no finite voxel"):
        Case.from_arrays(**_arrays(small, t1=np.full(SMALL, np.nan, np.float32)))
    t1 = small.t1.astype(np.float32)
    t1[:2] = np.nan
    case = Case.from_arrays(**_arrays(small, t1=t1))
    assert any("NaN/Inf voxels replaced" in w for w in case.warnings)


def test_legacy_label_warning() -> None:
    ph = make_phantom(seed=4, shape=SMALL, legacy_labels=True)
    case = Case.from_arrays(**ph.arrays())
    assert any("legacy label 4" in w for w in case.warnings)


def test_affine_mismatch_warns(tmp_path: Path, small) -> None:
    paths = write_case(small, tmp_path / "c", case_id="C")
    seg = nib.load(paths["segmentation"])
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), np.eye(4)), paths["segmentation"])
    case = Case.from_files(**paths)
    assert any("segmentation affine differs" in w for w in case.warnings)


def test_truncated_and_non_nifti_files(tmp_path: Path, small) -> None:
    paths = write_case(small, tmp_path / "c", case_id="C")
    raw = paths["t1c"].read_bytes()
    paths["t1c"].write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnreadableFile, match="t1c: gzip stream is truncated"):
        Case.from_files(**paths)
    paths["t1c"].write_bytes(gzip.compress(b"this is not a nifti file" * 100))
    with pytest.raises(UnreadableFile, match="t1c"):
        Case.from_files(**paths)
    # an uncompressed file whose voxel data is cut short
    nii = tmp_path / "short.nii"
    nii.write_bytes(gzip.decompress(raw)[:100_000])
    with pytest.raises(UnreadableFile, match="t1c: .*(header promises|Expected .* bytes)"):
        Case.from_files(**{**paths, "t1c": nii})
    with pytest.raises(NotFound):
        Case.from_files(**{**paths, "t1c": tmp_path / "absent.nii.gz"})


def test_scaled_nifti_slices_match_get_fdata(tmp_path: Path, small) -> None:
    """scl_slope/scl_inter are applied to slices exactly as nibabel's get_fdata does."""
    from dqe.models.nifti import load_nifti

    img = nib.Nifti1Image(small.t1.astype(np.int16), small.affine)
    img.header.set_slope_inter(0.37, 12.5)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    vol = load_nifti(path, "t1")
    expected = nib.load(path).get_fdata()
    np.testing.assert_array_equal(vol[:, :, 20], expected[:, :, 20])
    np.testing.assert_array_equal(vol[30, :, :], expected[30, :, :])
