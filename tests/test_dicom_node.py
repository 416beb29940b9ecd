"""The DICOM node in-process against pynetdicom's SCU: C-ECHO, calling-AE allow list, instances on disk on arrival,
the per-association and per-study limits (C-STORE status A700), and one quiet study scored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom", reason="the dicom extra is not installed (pip install dqe-service[dicom])")

from pydicom import dcmread  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # noqa: E402

from dqe.models.dicom.study import study_files  # noqa: E402
from dqe.models.phantom import make_phantom  # noqa: E402
from dqe.service.dicom_node.node import DicomNode  # noqa: E402
from dqe.service.settings import DicomNodeConfig  # noqa: E402
from tests.dicom_support import write_study  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("node-study")
    p = make_phantom(seed=7, shape=(48, 44, 12))
    write_study(folder, p.arrays(), p.affine)
    return study_files(folder)


def _node(tmp_path: Path, engine, **kw) -> DicomNode:
    cfg = DicomNodeConfig.from_sources({"port": 0, "spool_dir": str(tmp_path / "spool"), **kw}, env={})
    node = DicomNode(cfg, engine)
    node.start()
    return node


def _send(port: int, paths: list[Path], calling: str = "SCU") -> list[int]:
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=calling)
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="DQE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_echo_and_allowed_calling_aes(tmp_path, engine) -> None:
    node = _node(tmp_path, engine, allowed_calling_aes="PACS", quiet_s=60)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DQE")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        assert stranger.associate("127.0.0.1", node.port, ae_title="DQE").is_rejected
    finally:
        node.stop()


def test_instances_on_disk_and_limits(tmp_path, engine, study) -> None:
    node = _node(tmp_path, engine, quiet_s=60, max_instances_per_association=5, max_instances_per_study=8)
    try:
        statuses = _send(node.port, study[:7])
        assert statuses == [0] * 5 + [0xA700] * 2  # the association's budget
        uid = str(dcmread(study[0]).StudyInstanceUID)
        assert len(list((node.spool.root / uid).glob("*.dcm"))) == 5  # on disk as each was acknowledged
        assert _send(node.port, study[5:9]) == [0, 0, 0, 0xA700]  # the study's budget (8)
        assert node.metrics.refused.labels("study_limit")._value.get() == 1
    finally:
        node.stop()
    # a restarted node counts what the spool already holds (8): the study stays at its limit
    again = _node(tmp_path, engine, quiet_s=60, max_instances_per_study=8)
    try:
        assert _send(again.port, study[9:10]) == [0xA700]
    finally:
        again.stop()


def test_uids_that_name_a_folder_are_refused(tmp_path) -> None:
    """ "." and ".." match a digits-and-dots pattern but name the spool or its parent: never a study folder."""
    from dqe.service.dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    for bad in ("..", ".", "1..2", "1.2.", "9" * 65):
        with pytest.raises(ValueError):
            spool.study_dir(bad)
        with pytest.raises(ValueError):
            spool.store("1.2.3", bad, b"x")
    assert spool.study_dir("1.2.840.10008.1") == spool.root / "1.2.840.10008.1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]


def test_association_byte_limit(tmp_path, engine, study) -> None:
    size = study[0].stat().st_size
    node = _node(tmp_path, engine, quiet_s=60, max_bytes_per_association=int(size * 2.5))
    try:
        assert _send(node.port, study[:4]) == [0, 0, 0xA700, 0xA700]
        assert _send(node.port, study[4:5]) == [0]  # a new association starts a new budget
    finally:
        node.stop()


def test_quiet_study_is_scored_once_and_marked(tmp_path, engine, study) -> None:
    node = _node(tmp_path, engine, quiet_s=0.5)
    try:
        assert set(_send(node.port, study)) == {0}
        uid = str(dcmread(study[0]).StudyInstanceUID)
        scored = node.spool.root / uid / ".scored"
        end = time.monotonic() + 60
        while not scored.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert scored.exists()
        assert (node.spool.root / uid / ".out" / "sr.dcm").is_file()
        time.sleep(1.5)  # more ticks: a scored study is not scored again
        assert sum(node.metrics.scored.labels(v)._value.get() for v in ("pass", "review", "fail")) == 1
    finally:
        node.stop()


def test_tls_with_client_certificates(tmp_path, engine) -> None:
    """With a certificate, key and CA the node speaks TLS and requires a client certificate signed by the CA."""
    import ssl

    from tests.grpc_support import make_certs

    certs = make_certs(tmp_path / "certs")
    node = _node(
        tmp_path,
        engine,
        quiet_s=60,
        tls_cert=str(certs["server.pem"]),
        tls_key=str(certs["server.key"]),
        tls_ca=str(certs["ca.pem"]),
    )

    def echo(cert: str, key: str) -> bool:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["ca.pem"]))
        ctx.load_cert_chain(str(certs[cert]), str(certs[key]))
        ae = AE(ae_title="SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DQE", tls_args=(ctx, "localhost"))
        ok = assoc.is_established and int(assoc.send_c_echo().Status) == 0
        if assoc.is_established:
            assoc.release()
        return ok

    try:
        assert echo("client.pem", "client.key")
        assert not echo("rogue.pem", "rogue.key")  # a certificate from another CA is refused
        plain = AE(ae_title="SCU")
        plain.add_requested_context(Verification)
        assert not plain.associate("127.0.0.1", node.port, ae_title="DQE").is_established  # no TLS: refused
    finally:
        node.stop()
