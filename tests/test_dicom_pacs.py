"""DICOM answers checked by independent tools: PixelMed's DicomSRValidator and dicom3tools' dciodvfy (each skips
with a reason when absent; `.ci/run` installs them)."""

from __future__ import annotations

import dataclasses
import json
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


# ------------------------------------------------------------------------------------------ Orthanc + node
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian orthanc / dcmtk; .ci/run installs them)")


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc on loopback, configured by its JSON file; the node is a known modality (AE DQE)."""
    _need("Orthanc", "storescu", "findscu", "movescu")
    import json
    import time
    import urllib.request

    ports = {"dicom": _free_port(), "http": _free_port(), "node": _free_port()}
    cfg = {
        "Name": "dqe-test",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "DicomAet": "ORTHANC",
        "DicomPort": ports["dicom"],
        "HttpPort": ports["http"],
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"dqe": ["DQE", "127.0.0.1", ports["node"]]},
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    log = open(tmp_path / "orthanc.log", "wb")  # noqa: SIM115 - held by the Orthanc process until teardown
    proc = subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/system", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("Orthanc did not start: " + (tmp_path / "orthanc.log").read_text()[-2000:])
        yield ports
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


class Node:
    """``dqe dicom-node`` as its own process (so it can be killed), sending to Orthanc."""

    def __init__(self, tmp_path: Path, ports: dict[str, int], quiet_s: float) -> None:
        self.tmp, self.ports, self.quiet_s = tmp_path, ports, quiet_s
        self.spool = tmp_path / "spool"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        import os
        import sys
        import time

        dqe = Path(sys.executable).with_name("dqe")
        cmd = [str(dqe), "dicom-node", "--port", str(self.ports["node"]), "--spool", str(self.spool),
               "--quiet-s", str(self.quiet_s), "--dest", f"127.0.0.1:{self.ports['dicom']}", "--dest-ae", "ORTHANC",
               "--threads", "2", "--log-format", "text"]  # fmt: skip
        self.starts += 1
        err = open(self.tmp / f"node-{self.starts}.log", "wb")  # noqa: SIM115 - the node process writes it
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=dict(os.environ))
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + 120
        while b"}" not in line and time.monotonic() < deadline:  # the JSON says where it listens
            line += self.proc.stdout.readline()
        assert b'"port"' in line, (self.tmp / f"node-{self.starts}.log").read_text()[-2000:]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.tmp.glob("node-*.log")))


def _storescu(port: int, ae: str, paths: list[Path]) -> None:
    out = subprocess.run(["storescu", "-R", "-aec", ae, "127.0.0.1", str(port), *map(str, paths)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def _find_series(port: int, study_uid: str, modality: str) -> list[str]:
    """SeriesInstanceUIDs Orthanc returns on a C-FIND (DCMTK findscu) for one modality in a study."""
    cmd = ["findscu", "-S", "-aet", "FINDER", "-aec", "ORTHANC", "-k", "QueryRetrieveLevel=SERIES",
           "-k", f"StudyInstanceUID={study_uid}", "-k", f"Modality={modality}", "-k", "SeriesInstanceUID",
           "127.0.0.1", str(port)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return [line.split("[")[1].split("]")[0] for line in (out.stdout + out.stderr).splitlines()
            if "SeriesInstanceUID" in line and "[" in line]  # fmt: skip


def _wait_for(fn, timeout_s: float, every_s: float = 0.25):
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(every_s)
    return fn()


@pytest.fixture(scope="module")
def pacs_study(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("pacs-study")
    p = make_phantom(seed=6, shape=(64, 60, 40))
    return folder, write_study(folder, p.arrays(), p.affine, seg_type="BINARY").study_uid


@pytest.mark.slow
def test_orthanc_to_node_and_back(orthanc, pacs_study, tmp_path, record_property) -> None:
    """storescu -> Orthanc; movescu: Orthanc C-MOVEs the study to the node; the node scores it after the quiet
    period and C-STOREs SR + KOS into Orthanc; findscu finds them; within quiet + 10 s of the move."""
    import time

    folder, study_uid = pacs_study
    quiet_s = 2.0
    node = Node(tmp_path, orthanc, quiet_s)
    node.start()
    try:
        _storescu(orthanc["dicom"], "ORTHANC", study_files(folder))
        move = ["movescu", "-S", "-aet", "MOVER", "-aem", "DQE", "-aec", "ORTHANC", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(orthanc["dicom"])]  # fmt: skip
        assert subprocess.run(move, capture_output=True, timeout=300).returncode == 0
        moved = time.monotonic()
        found = _wait_for(lambda: _find_series(orthanc["dicom"], study_uid, "SR"), quiet_s + 10.0)
        elapsed = time.monotonic() - moved
        record_property("sr_in_orthanc_after_move_s", round(elapsed, 2))  # measured; see --junitxml
        assert len(found) == 1, node.logs()[-3000:]
        assert elapsed <= quiet_s + 10.0
        verdict = json.loads((node.spool / study_uid / ".scored").read_text())["verdict"]
        kos = _find_series(orthanc["dicom"], study_uid, "KO")
        assert len(kos) == (0 if verdict == "pass" else 1)
    finally:
        node.stop()


@pytest.mark.slow
def test_node_killed_mid_study_scores_it_once(orthanc, pacs_study, tmp_path) -> None:
    """Half the study, kill -9, restart, the rest: scored exactly once (one SR in Orthanc, one 'scored' line in
    the logs of both runs), and a third start scores nothing again."""
    import time

    folder, study_uid = pacs_study
    files = study_files(folder)
    quiet_s = 2.0
    node = Node(tmp_path, orthanc, quiet_s)
    node.start()
    _storescu(orthanc["node"], "DQE", files[: len(files) // 2])
    node.kill()  # mid-study: the first half is on disk, nothing scored yet (quiet period not over)
    assert not (node.spool / study_uid / ".scored").exists()
    assert len(list((node.spool / study_uid).glob("*.dcm"))) == len(files) // 2
    node.start()
    try:
        _storescu(orthanc["node"], "DQE", files[len(files) // 2 :])
        assert _wait_for(lambda: _find_series(orthanc["dicom"], study_uid, "SR"), quiet_s + 20.0)
        node.stop()
        node.start()  # a restart after the study was scored and sent
        time.sleep(quiet_s + 2.0)
        assert len(_find_series(orthanc["dicom"], study_uid, "SR")) == 1
        assert node.logs().count(f"study {study_uid} scored") == 1, node.logs()[-3000:]
    finally:
        node.stop()


def test_labelmap_sr_only_trips_dciodvfy_on_the_newer_sop_class(tmp_path, engine) -> None:
    """An SR that references a LABELMAP SEG (Label Map Segmentation Storage, 1.2.840.10008.5.1.4.1.1.66.7, added
    to the standard after Debian's dicom3tools 2022-06-18 build) gets exactly one kind of dciodvfy error: the
    segment number of a reference it does not know to be a segmentation. PixelMed finds none."""
    p = make_phantom(seed=8, shape=(48, 44, 12))
    write_study(tmp_path, p.arrays(), p.affine, seg_type="LABELMAP")
    study = load_study(read_files(study_files(tmp_path)))
    result = engine.score_case(study.case)
    docs = build_reports(result, evaluate_case(study.case, result), study.info)
    assert str(study.info.seg.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.66.7"
    path = tmp_path / "sr.dcm"
    path.write_bytes(docs.sr_bytes())
    kinds = {e for e in _errors(_dciodvfy(path))}
    assert kinds == {
        "Error - Shall not be present for Referenced SOP Class that is not segmentation - attribute "
        "<ReferencedSegmentNumber>"
    }
