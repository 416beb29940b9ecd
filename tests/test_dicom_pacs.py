"""DICOM answers checked by independent tools: PixelMed's DicomSRValidator and dicom3tools' dciodvfy (each skips
with a reason when absent; `.ci/run` installs them)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install dqe-service[dicom])")

from dqe.models.dicom.report import build_reports  # noqa: E402
from dqe.models.dicom.study import load_study, read_files, study_files  # noqa: E402
from dqe.models.phantom import make_phantom  # noqa: E402
from dqe.models.qc.gate import evaluate_case  # noqa: E402
from dqe.models.qc.types import Verdict  # noqa: E402
from tests.dicom_support import write_study  # noqa: E402

PIXELMED = Path("/usr/share/java/pixelmed.jar")
# JDK 17 caps XPath expression sizes; PixelMed's template stylesheets exceed the cap, so it is lifted
JAVA_XPATH = [
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]


def _pixelmed(path: Path) -> str:
    if not (shutil.which("java") and PIXELMED.is_file()):
        pytest.skip("PixelMed (Debian libpixelmed-java) or a JRE is not installed")
    cmd = ["java", *JAVA_XPATH, "-cp", str(PIXELMED), "com.pixelmed.validate.DicomSRValidator", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return out.stdout + out.stderr


def _dciodvfy(path: Path) -> str:
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr


def _errors(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("Error") or "Exception" in line]


@pytest.fixture(scope="module")
def reports(tmp_path_factory, engine) -> dict[str, Path]:
    """SR (+ KOS: the verdict is forced to review) of a phantom study with a BINARY SEG."""
    folder = tmp_path_factory.mktemp("study")
    p = make_phantom(seed=5, shape=(64, 60, 40))
    write_study(folder, p.arrays(), p.affine, seg_type="BINARY")
    study = load_study(read_files(study_files(folder)))
    result = engine.score_case(study.case)
    gate = dataclasses.replace(evaluate_case(study.case, result), verdict=Verdict.REVIEW)
    docs = build_reports(result, gate, study.info)
    assert docs.kos is not None
    out = {"sr": folder / "sr.dcm", "kos": folder / "kos.dcm"}
    out["sr"].write_bytes(docs.sr_bytes())
    out["kos"].write_bytes(docs.kos_bytes() or b"")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["sr", "kos"])
def test_pixelmed_validator_finds_no_error(reports, doc) -> None:
    report = _pixelmed(reports[doc])
    assert "Root Template Validation Complete" in report, report[-2000:]
    assert _errors(report) == [], report[-3000:]


@pytest.mark.parametrize("doc", ["sr", "kos"])
def test_dciodvfy_finds_no_error(reports, doc) -> None:
    report = _dciodvfy(reports[doc])
    assert _errors(report) == [], report
