"""ScoreStudy over a real gRPC server on loopback: Part-10 instances in, result + SR (+ KOS) out; typed errors
keep their status codes."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest

pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install dqe-service[dicom])")

import pydicom  # noqa: E402

from dqe.models.dicom.study import study_files  # noqa: E402
from dqe.models.phantom import make_phantom  # noqa: E402
from dqe.service._proto import quality_estimation_pb2 as pb  # noqa: E402
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc  # noqa: E402
from dqe.service.dicom_scoring import load_study_dir, score_study  # noqa: E402
from tests.dicom_support import write_study  # noqa: E402
from tests.grpc_support import running_server  # noqa: E402


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rpc-study")
    p = make_phantom(seed=4, shape=(64, 60, 40))
    write_study(folder, p.arrays(), p.affine, seg_type="LABELMAP")
    return folder


def _instances(folder: Path):
    for path in study_files(folder):
        yield pb.DicomInstance(data=path.read_bytes())


def test_score_study_rpc_returns_result_and_reports(engine, study_dir) -> None:
    local = score_study(load_study_dir(study_dir), engine)
    with running_server(engine) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = pb_grpc.QualityEstimationStub(channel).ScoreStudy(_instances(study_dir), timeout=120)
    assert abs(reply.result.mean_stars - local.result.mean_stars) <= 1e-4
    assert pb.Verdict.Name(reply.result.gate.verdict) == "VERDICT_" + local.result.gate.verdict.value.upper()
    assert reply.study_instance_uid == local.study_uid
    sr = pydicom.dcmread(io.BytesIO(reply.structured_report))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == local.study_uid
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    if local.kos is None:
        assert reply.key_object_selection == b""
    else:
        kos = pydicom.dcmread(io.BytesIO(reply.key_object_selection))
        assert kos.ConceptNameCodeSequence[0].CodeValue == "113010"


def test_score_study_rpc_typed_errors(engine, study_dir) -> None:
    with running_server(engine) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.QualityEstimationStub(channel)
        no_seg = [m for m in _instances(study_dir) if b"1.2.840.10008.5.1.4.1.1.66" not in m.data[:1024]]
        with pytest.raises(grpc.RpcError) as err:
            stub.ScoreStudy(iter(no_seg), timeout=60)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no SEG" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.ScoreStudy(iter([pb.DicomInstance(data=b"not dicom")]), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Part-10" in err.value.details()


def test_score_study_counts_against_the_pending_budget(engine, study_dir) -> None:
    """The instances' bytes are reserved in the server-wide budget ScoreCase uses (max_pending_mb): a study
    larger than what is free is refused with RESOURCE_EXHAUSTED, and the budget is whole again afterwards."""
    size = sum(len(m.data) for m in _instances(study_dir))
    assert size > 1024 * 1024  # the phantom study is larger than the 1 MiB budget below
    with (
        running_server(engine, max_pending_mb=1) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.QualityEstimationStub(ch).ScoreStudy(_instances(study_dir), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert server.runtime.pending.used == 0


def test_score_study_message_that_does_not_parse(engine) -> None:
    with running_server(engine) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.stream_unary(
            "/dqe.v1.QualityEstimation/ScoreStudy",
            request_serializer=lambda b: b,
            response_deserializer=pb.ScoreStudyResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            raw(iter([b"\xff\xff\xff"]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in err.value.details()
