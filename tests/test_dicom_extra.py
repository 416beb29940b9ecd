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


def test_node_settings_from_flags_env_and_defaults() -> None:
    from dqe.models.errors import InvalidInput
    from dqe.service.settings import DicomNodeConfig

    cfg = DicomNodeConfig.from_sources(
        {"port": 0}, env={"DQE_QUIET_S": "2.5", "DQE_ALLOWED_CALLING_AES": "A,B"}
    )
    assert (cfg.port, cfg.quiet_s, cfg.allowed_calling_aes, cfg.ae_title) == (0, 2.5, ("A", "B"), "DQE")
    assert cfg.engine_config().model_id == cfg.model_id
    with pytest.raises(InvalidInput, match="DQE_QUIET_S"):
        DicomNodeConfig.from_sources({}, env={"DQE_QUIET_S": "0"})
    with pytest.raises(InvalidInput, match="tls_cert and tls_key"):
        DicomNodeConfig.from_sources({"tls_cert": "a.pem"}, env={})
