"""Without the dicom extra a DICOM input is a typed error naming the extra (no pydicom needed to say so)."""

from __future__ import annotations

import pytest

from dqe.models.dicom import EXTRA_HINT, is_dicom_study_dir, is_part10
from dqe.models.dicom.errors import DicomUnavailable
from dqe.service import dicom_scoring


def test_dicom_input_without_the_extra_names_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert is_dicom_study_dir(tmp_path) and is_part10((tmp_path / "x.dcm").read_bytes())
    monkeypatch.setattr("dqe.models.dicom.dicom_available", lambda: False)
    with pytest.raises(DicomUnavailable, match=r"pip install dqe-service\[dicom\]") as err:
        dicom_scoring.load_study_dir(tmp_path)
    assert err.value.code == "FAILED_PRECONDITION" and EXTRA_HINT in err.value.message
    with pytest.raises(DicomUnavailable):
        dicom_scoring.score_instances(iter([b""]), scorer=None)  # type: ignore[arg-type]


def test_a_nifti_folder_is_not_a_dicom_study(tmp_path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "t1c.nii.gz").write_bytes(b"")
    assert not is_dicom_study_dir(tmp_path)
