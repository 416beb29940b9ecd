"""Kubernetes loose ends of issue 21: GetModelInfo reports the limits a client must respect, the in-flight gauge
leaves long-lived health watches out, and connections are aged (GOAWAY) without cutting the calls on them."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from dqe.service.serving.server import connection_age_options
from dqe.service.settings import ServerConfig
from tests.grpc_support import read_bytes, running_server, tiny_engine, write_phantom


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return tiny_engine(tmp_path_factory.mktemp("limits-home"))


def test_model_info_reports_the_limits_a_client_must_respect(tiny) -> None:
    limits = {
        "max_volume_voxels": 5_000_000,
        "max_grid_side": 300,
        "max_view_side": 320,
        "max_streams": 7,
        "max_call_s": 42.5,
        "decode_budget_mb": 300,
        "max_message_mb": 20,
    }
    with running_server(tiny, **limits) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        info = pb_grpc.QualityEstimationStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert (info.max_volume_voxels, info.max_grid_side, info.max_view_side, info.max_streams) == (
        5_000_000,
        300,
        320,
        7,
    )
    assert info.max_call_seconds == 42.5
    assert info.decode_budget_bytes == 300 * 1024 * 1024
    assert info.max_receive_message_bytes == 20 * 1024 * 1024


def test_in_flight_gauge_leaves_health_watches_out(tiny, tmp_path: Path) -> None:
    """A client-side health check holds a Watch stream per connection for as long as it lives: counting it would
    show an idle server as busy. A scoring call held in the engine is counted."""
    from tests.grpc_support import WrappedEngine

    held = WrappedEngine(tiny)
    files = read_bytes(write_phantom(tmp_path / "case", seed=3))
    with running_server(held) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        gauge = server.metrics.in_flight
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.2)
        assert gauge._value.get() == 0
        held.gate.clear()
        stub = pb_grpc.QualityEstimationStub(ch)
        future = stub.ScoreCase.future(pb.ScoreCaseRequest(files=pb.NiftiFiles(**files)), timeout=60)
        deadline = time.monotonic() + 30
        while gauge._value.get() < 1:
            assert time.monotonic() < deadline, "the held ScoreCase never showed in the gauge"
            time.sleep(0.01)
        assert gauge._value.get() == 1
        held.gate.set()
        assert future.result().mean_stars > 0
        watch.cancel()
        deadline = time.monotonic() + 10
        while gauge._value.get() != 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_connection_age_options() -> None:
    assert connection_age_options(ServerConfig(max_connection_age_s=0)) == []
    assert dict(
        connection_age_options(ServerConfig(max_connection_age_s=2.5, max_connection_age_grace_s=9))
    ) == {
        "grpc.max_connection_age_ms": 2500,
        "grpc.max_connection_age_grace_ms": 9000,
    }


def test_an_aged_connection_reconnects_and_its_calls_finish(tiny, tmp_path: Path) -> None:
    """With a 1 s connection age the server sends GOAWAY; a call running across it still finishes, and the
    channel's next calls succeed on a new connection."""
    from tests.grpc_support import WrappedEngine

    held = WrappedEngine(tiny)
    files = read_bytes(write_phantom(tmp_path / "case", seed=4))
    request = pb.ScoreCaseRequest(files=pb.NiftiFiles(**files))
    with (
        running_server(held, max_connection_age_s=1.0, max_connection_age_grace_s=30.0) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        stub = pb_grpc.QualityEstimationStub(ch)
        first = stub.ScoreCase(request, timeout=60).mean_stars
        held.gate.clear()
        future = stub.ScoreCase.future(request, timeout=60)
        threading.Event().wait(2.5)  # the connection passes its age while the call is held
        held.gate.set()
        assert future.result().mean_stars == first
        for _ in range(3):
            assert stub.ScoreCase(request, timeout=60).mean_stars == first
            threading.Event().wait(0.6)


def test_the_concurrent_call_limit_never_refuses_health_or_model_info(tiny, tmp_path: Path) -> None:
    """``max_concurrent_rpcs`` calls held open (idle ScoreBatch streams): another scoring call is refused at once
    naming the setting, while health Check and GetModelInfo still answer (gRPC's own limit refused them too)."""
    files = read_bytes(write_phantom(tmp_path / "case", seed=5))
    release = threading.Event()

    def silent():
        release.wait(60)
        return
        yield  # pragma: no cover

    with (
        running_server(tiny, max_concurrent_rpcs=3, max_streams=10) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        stub = pb_grpc.QualityEstimationStub(ch)
        streams = [stub.ScoreBatch(silent(), timeout=60) for _ in range(3)]
        try:
            time.sleep(0.5)
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).max_streams == 10
            with pytest.raises(grpc.RpcError) as refused:
                stub.ScoreCase(pb.ScoreCaseRequest(files=pb.NiftiFiles(**files)), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_concurrent_rpcs" in refused.value.details()
        finally:
            release.set()
            for stream in streams:
                with contextlib.suppress(grpc.RpcError):
                    list(stream)
        time.sleep(0.3)
        assert stub.ScoreCase(pb.ScoreCaseRequest(files=pb.NiftiFiles(**files)), timeout=30).mean_stars > 0
