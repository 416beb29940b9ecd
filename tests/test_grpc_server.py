"""The gRPC server over a real channel on 127.0.0.1:0: parity with in-process scoring, health, reflection,
deadlines, message limits, metrics, request ids, the batch stream, retries and configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.errors import DQEError, InvalidInput, ModelNotReady, NotFound
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from dqe.service.client import DQEClient
from dqe.service.settings import ServerConfig
from tests.conftest import real_cases
from tests.grpc_support import WrappedEngine, read_bytes, rpc_code, running_server, tiny_engine, write_phantom

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder with two full-grid phantom cases (BraTS 2023 names)."""
    root = tmp_path_factory.mktemp("cases")
    write_phantom(root / "P-0001", seed=1, shape=(240, 240, 155))
    write_phantom(root / "P-0002", seed=2, shape=(240, 240, 155), lesion="lobulated", legacy_labels=True)
    return root


@pytest.fixture(scope="module")
def real_server(engine, cases: Path):
    with running_server(engine, allowed_roots=(str(cases),), decode_workers=2) as server:
        yield server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return tiny_engine(tmp_path_factory.mktemp("home"))


def files_of(folder: Path) -> dict[str, Path]:
    from dqe.models.case import discover_files

    return discover_files(folder)


# ---------------------------------------------------------------------------------------------- parity
def test_grpc_scores_equal_in_process_exactly(engine, real_server, cases: Path) -> None:
    client = DQEClient(f"127.0.0.1:{real_server.port}", deadline_s=120)
    for name in ("P-0001", "P-0002"):
        files = files_of(cases / name)
        local = engine.score_case(Case.from_folder(cases / name))
        by_bytes = client.score_bytes(read_bytes(files), case_id=name)
        by_path = client.score_paths(cases / name)
        views, com = engine.preprocess(Case.from_folder(cases / name))
        by_views = client.score_views(np.stack(views), case_id=name, center_of_mass=com)
        sliced = client.score_files(**files, case_id=name, local_slicing=True)
        for remote in (by_bytes, by_path, by_views, sliced):
            assert remote.result.mean_stars == local.mean_stars  # exact, not approximately
            assert remote.result.views == local.views
            assert remote.result.center_of_mass == local.center_of_mass
            assert remote.result.model_sha256 == engine.model_sha256
        assert by_bytes.result.warnings == local.warnings == by_path.result.warnings
        assert by_path.result.case_id == name
        assert by_bytes.runtime["providers"] == list(engine.backend.providers)
        assert {"decode", "preprocess", "queue", "inference", "server_total"} <= set(
            by_bytes.result.timings_ms
        )
    client.close()


@pytest.mark.real_data
@pytest.mark.slow
def test_grpc_equals_in_process_on_real_cases(engine, real_server) -> None:
    client = DQEClient(f"127.0.0.1:{real_server.port}", deadline_s=120)
    for _name, files in real_cases()[:2]:
        local = engine.score_case(Case.from_files(**files))
        remote = client.score_files(**files)
        assert remote.result.mean_stars == local.mean_stars
        assert remote.result.views == local.views
        assert remote.result.warnings == list(local.warnings)
    client.close()


def test_float16_views_are_accepted_and_close(engine, real_server, cases: Path) -> None:
    views, com = engine.preprocess(Case.from_folder(cases / "P-0001"))
    exact = engine.score_views(np.stack(views))
    with DQEClient(f"127.0.0.1:{real_server.port}") as client:
        half = client.score_views(np.stack(views).astype(np.float16))
    assert abs(half.mean_stars - exact.mean_stars) < 0.05


# ---------------------------------------------------------------------------------------------- health etc.
def test_health_not_serving_until_warm_then_serving_and_client_retries(tiny) -> None:
    wrapped = WrappedEngine(tiny)
    wrapped.gate.clear()  # hold the warm-up batch
    with running_server(wrapped, wait_ready=False) as server:
        client = DQEClient(f"127.0.0.1:{server.port}", retries=0, deadline_s=5)
        assert client.health() == "NOT_SERVING"
        assert client.health("dqe.v1.QualityEstimation") == "NOT_SERVING"
        views = np.zeros((3, 7, 240, 240), dtype=np.float32)
        with pytest.raises(ModelNotReady, match="warming up"):
            client.score_views(views)
        # A client that retries on UNAVAILABLE gets through once warm-up finishes.
        patient = DQEClient(f"127.0.0.1:{server.port}", retries=8, backoff_s=0.1, deadline_s=30)
        threading.Timer(0.5, wrapped.gate.set).start()
        result = patient.score_views(views)
        assert np.isfinite(result.mean_stars)
        assert client.health() == "SERVING" == client.health("dqe.v1.QualityEstimation")
        assert client.health("no.such.Service") == "SERVICE_UNKNOWN"
        # The Docker probe agrees.
        from dqe.service.healthcheck import main as probe

        assert probe(["--target", f"127.0.0.1:{server.port}", "--plaintext"]) == 0
    assert probe(["--target", f"127.0.0.1:{server.port}", "--plaintext", "--timeout", "0.5"]) == 1


def test_reflection_lists_the_service(tiny) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with running_server(tiny) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
        names = {s.name for s in response.list_services_response.service}
        assert {"dqe.v1.QualityEstimation", "grpc.health.v1.Health"} <= names
        symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol="dqe.v1.ScoreResponse")
        described = next(iter(stub.ServerReflectionInfo(iter([symbol]), timeout=10)))
        assert described.file_descriptor_response.file_descriptor_proto


def test_deadline_exceeded_and_expired_work_dropped(tiny) -> None:
    wrapped = WrappedEngine(tiny)
    with running_server(wrapped, max_batch_size=3, max_queue_delay_ms=0) as server:
        wrapped.delay_s = 1.0
        before = len(wrapped.calls)
        target = f"127.0.0.1:{server.port}"
        slow = DQEClient(target, deadline_s=10)
        hurried = DQEClient(target, deadline_s=0.3, retries=0)
        views = np.zeros((3, 7, 240, 240), dtype=np.float32)
        first = threading.Thread(target=slow.score_views, args=(views,))
        first.start()
        time.sleep(0.2)  # the first call is running; the next one waits in the queue past its deadline
        with pytest.raises(DQEError) as info:
            hurried.score_views(views + 1)
        assert info.value.code == "DEADLINE_EXCEEDED"
        first.join(10)
        wrapped.delay_s = 0.0
        time.sleep(0.2)
        assert len(wrapped.calls) == before + 1, "the expired call's views were run anyway"
        assert server.runtime.batcher.stats.dropped_expired >= 1
        assert slow.health() == "SERVING"


def test_oversize_message_rejected_clearly(tiny, tmp_path: Path) -> None:
    with running_server(tiny, max_message_mb=1) as server:
        stub = pb_grpc.QualityEstimationStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        big = pb.ScoreCaseRequest(files=pb.NiftiFiles(t1c=os.urandom(2 * 1024 * 1024)))
        code, details, _ = rpc_code(lambda: stub.ScoreCase(big, timeout=10))
        assert code == "RESOURCE_EXHAUSTED"
        assert "larger than max" in details
        with DQEClient(f"127.0.0.1:{server.port}") as client:
            assert client.health() == "SERVING"
            assert client.model_info()["max_receive_message_bytes"] == 1024 * 1024


@pytest.mark.slow
def test_raised_limit_accepts_a_full_size_uncompressed_case(tiny, tmp_path: Path) -> None:
    # The default (64 MiB) is sized for compressed cases (issue 11); uncompressed ones need a larger limit.
    from dqe.models.phantom import make_phantom, write_case

    paths = write_case(make_phantom(seed=3), tmp_path / "raw", compressed=False)
    size = sum(p.stat().st_size for p in paths.values())
    assert size > 64 * 1024 * 1024  # far above gRPC's 4 MiB default
    with running_server(tiny, max_message_mb=128) as server, DQEClient(f"127.0.0.1:{server.port}") as client:
        remote = client.score_files(**paths)
        local = tiny.score_case(Case.from_files(**paths))
        assert remote.mean_stars == local.mean_stars


def test_internal_errors_are_logged_not_sent(tiny, caplog: pytest.LogCaptureFixture) -> None:
    wrapped = WrappedEngine(tiny)
    with running_server(wrapped) as server:
        wrapped.fail_with = RuntimeError("secret backend detail")
        stub = pb_grpc.QualityEstimationStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        request = DQEClient.views_request(np.zeros((3, 7, 240, 240), dtype=np.float32))
        with caplog.at_level("ERROR"):
            code, details, trailing = rpc_code(
                lambda: stub.ScoreViews(request, timeout=10, metadata=(("x-request-id", "req-42"),))
            )
        assert code == "INTERNAL"
        assert "secret" not in details and "Traceback" not in details
        assert "req-42" in details
        assert any("secret backend detail" in (r.exc_text or str(r.exc_info)) for r in caplog.records)
        wrapped.fail_with = None
        with DQEClient(f"127.0.0.1:{server.port}") as client:
            assert client.health() == "SERVING"
            assert np.isfinite(client.score_views(np.zeros((3, 7, 240, 240), dtype=np.float32)).mean_stars)


def test_request_id_round_trip_and_metrics(tiny, tmp_path: Path) -> None:
    paths = write_phantom(tmp_path / "M-1", seed=4)
    with running_server(tiny) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.QualityEstimationStub(channel)
        request = DQEClient.bytes_request(read_bytes(paths), "m1")
        response, call = stub.ScoreCase.with_call(request, timeout=30, metadata=(("x-request-id", "abc123"),))
        assert response.request_id == "abc123"
        assert ("x-request-id", "abc123") in tuple(call.initial_metadata())
        bad = DQEClient.bytes_request({**read_bytes(paths), "segmentation": b"junk" * 100}, "bad")
        assert rpc_code(lambda: stub.ScoreCase(bad, timeout=30))[0] == "INVALID_ARGUMENT"
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
    assert 'dqe_requests_total{code="OK",method="/dqe.v1.QualityEstimation/ScoreCase"} 1.0' in text
    assert (
        'dqe_errors_total{code="INVALID_ARGUMENT",method="/dqe.v1.QualityEstimation/ScoreCase"} 1.0' in text
    )
    assert "dqe_request_latency_seconds_bucket" in text
    assert "dqe_batch_size_views_count" in text and "dqe_queue_wait_seconds_count" in text
    assert "dqe_ready 1.0" in text


def test_batch_stream_answers_every_item_and_survives_bad_ones(tiny, tmp_path: Path) -> None:
    root = tmp_path / "root"
    good = [write_phantom(root / f"B-{i}", seed=10 + i) for i in range(4)]
    with (
        running_server(tiny, allowed_roots=(str(root),)) as server,
        DQEClient(f"127.0.0.1:{server.port}") as client,
    ):
        requests = [
            client.bytes_request(read_bytes(good[0]), "b0"),
            client.paths_request(root / "B-1"),
            client.bytes_request({**read_bytes(good[2]), "t2": b"not a nifti file at all" * 30}, "bad-bytes"),
            client.paths_request(root / "missing"),
            client.views_request(np.zeros((3, 7, 240, 240), dtype=np.float32), "zeros"),
            client.bytes_request(read_bytes(good[3]), "b3", run_gate=False),
        ]
        got = dict(client.score_batch(requests))
        assert sorted(got) == list(range(6))
        for i, folder in ((0, "B-0"), (1, "B-1"), (5, "B-3")):
            local = tiny.score_case(Case.from_folder(root / folder))
            assert got[i].result.views == local.views  # type: ignore[union-attr]
        assert isinstance(got[2], InvalidInput) and got[2].field == "t2"
        assert isinstance(got[3], NotFound)
        assert got[4].result.case_id == "zeros"  # type: ignore[union-attr]
        assert client.health() == "SERVING"


def test_run_gate_fills_gate_fields_or_warns(engine, real_server, cases: Path) -> None:
    with DQEClient(f"127.0.0.1:{real_server.port}") as client:
        remote = client.score_paths(cases / "P-0001", run_gate=True)
    try:
        from dqe.models.qc.gate import evaluate_case
    except ImportError:
        assert remote.result.gate is None
        assert any("QC gate is not available" in w for w in remote.result.warnings)
        return
    local_result = engine.score_case(Case.from_folder(cases / "P-0001"))
    expected = evaluate_case(Case.from_folder(cases / "P-0001"), local_result)
    gate = remote.result.gate
    assert gate is not None
    assert gate.verdict == expected.verdict
    assert gate.gate_score == pytest.approx(expected.gate_score)
    assert [c.name for c in gate.checks] == [c.name for c in expected.checks]
    assert remote.result.mean_stars == local_result.mean_stars  # the gate never alters the stars


def test_model_info(engine, real_server) -> None:
    with DQEClient(f"127.0.0.1:{real_server.port}") as client:
        info = client.model_info()
        contract = client.contract()
    assert info["model_id"] == engine.model_id
    assert info["onnx_sha256"] == engine.model_sha256
    assert info["providers"] == list(engine.backend.providers)
    assert contract == engine.contract
    assert info["server_paths_enabled"] is True


# ---------------------------------------------------------------------------------------------- config / build
def test_config_cli_over_env_over_defaults() -> None:
    env = {"DQE_PORT": "6000", "DQE_MAX_BATCH_SIZE": "12", "DQE_ALLOWED_ROOTS": os.pathsep.join(["/a", "/b"])}
    env |= {"DQE_WARMUP": "false", "DQE_PROVIDERS": "cuda,cpu", "DQE_MODEL": "m1"}
    cfg = ServerConfig.from_sources({"port": 7000, "max_queue": None}, env=env)
    assert cfg.port == 7000  # CLI wins
    assert cfg.max_batch_size == 12  # env beats default
    assert cfg.max_queue == ServerConfig().max_queue  # default
    assert cfg.allowed_roots == ("/a", "/b")
    assert cfg.warmup is False and cfg.providers == ("cuda", "cpu") and cfg.model_id == "m1"
    with pytest.raises(InvalidInput, match="DQE_MAX_BATCH_SIZE"):
        ServerConfig.from_sources({}, env={"DQE_MAX_BATCH_SIZE": "lots"})
    with pytest.raises(InvalidInput, match="tls_key"):
        ServerConfig(tls_cert="cert.pem")


def test_serving_code_never_imports_torch() -> None:
    code = (
        "import sys; import dqe.service.serving.server, dqe.service.client, dqe.service.serving.servicer, dqe.service.healthcheck, "
        "dqe.service.commands.serve; bad = [m for m in ('torch', 'monai') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_code_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dqe.service.protogen", "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
