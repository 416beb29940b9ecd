"""Several replicas behind one client: ``round_robin`` over a static ``ipv4:`` list, client-side health checking,
and failover when a replica dies mid-load (SIGKILL of a ``dqe serve`` process, ``stop(0)`` of an in-process
server). Every call and every batch item is answered exactly once, with the stars in-process scoring gives.

Servers run the tiny test model (tests/grpc_support.py) on 127.0.0.1:0 so 200 calls stay fast on 2 cores; the
expected scores come from the same model scored in-process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.errors import DQEError, InvalidInput, ModelNotReady
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service.cli import main
from dqe.service.client import DQEClient, channel_target
from tests.grpc_support import (
    TINY_MODEL_ID,
    WrappedEngine,
    make_certs,
    publish_tiny_model,
    read_bytes,
    running_server,
    tiny_engine,
    write_phantom,
)

REPO = Path(__file__).resolve().parents[1]
N_CASES = 10
SERVICE = "dqe.v1.QualityEstimation"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def tiny(home: Path) -> Any:
    return tiny_engine(home)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> list[tuple[dict[str, bytes], Any]]:
    """Ten small phantom cases as file bytes, each with its in-process result (the tiny model)."""
    root = tmp_path_factory.mktemp("cases")
    out = []
    for i in range(N_CASES):
        lesion = ("sphere", "lobulated", "multifocal")[i % 3]
        data = read_bytes(write_phantom(root / f"F-{i:02d}", seed=500 + i, lesion=lesion))
        out.append((data, tiny.score_case(Case.from_bytes(data, case_id=f"F-{i:02d}"))))
    assert len({r.mean_stars for _, r in out}) == N_CASES  # the cases really differ
    return out


def served(server: Any, method: str) -> int:
    """Calls of ``method`` an in-process server answered OK (its Prometheus counter)."""
    value = server.metrics.registry.get_sample_value(
        "dqe_requests_total", {"method": f"/{SERVICE}/{method}", "code": "OK"}
    )
    return int(value or 0)


def retry_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("dqe.service.client")
        and ("retry" in r.getMessage() or "resuming" in r.getMessage())
    ]


@contextlib.contextmanager
def servers(engines: list[Any], **overrides: Any) -> Iterator[list[Any]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_server(e, **overrides)) for e in engines]


def connect_all(client: DQEClient, replicas: list[Any]) -> None:
    """Call until every replica answered once, i.e. the channel has a ready connection to each (calls made
    earlier go to whichever replicas connected first)."""
    deadline = time.monotonic() + 10
    while min(served(s, "GetModelInfo") for s in replicas) == 0:
        assert time.monotonic() < deadline, "not every replica became reachable"
        client.model_info()


def static_list(*ports: int) -> str:
    return ",".join(f"127.0.0.1:{p}" for p in ports)


# ---------------------------------------------------------------------------------------------- targets
def test_target_forms() -> None:
    listed = channel_target("127.0.0.1:5001, 127.0.0.1:5002,127.0.0.2:5003")
    assert listed.target == "ipv4:127.0.0.1:5001,127.0.0.1:5002,127.0.0.2:5003"
    assert listed.balanced and listed.authority == "127.0.0.1:5001"
    assert channel_target("[::1]:5001,[::1]:5002").target == "ipv6:[::1]:5001,[::1]:5002"
    named = channel_target("localhost:5001,localhost:5002")  # names in a list are resolved once
    assert named.target.startswith(("ipv4:", "ipv6:")) and named.authority == "localhost:5001"
    assert len(named.target.split(",")) >= 2
    dns = channel_target("dns:///dqe-headless.dqe.svc.cluster.local:50051")
    assert dns.target == "dns:///dqe-headless.dqe.svc.cluster.local:50051" and dns.balanced
    single = channel_target("dqe.example.org:50051")
    assert single.target == "dqe.example.org:50051" and not single.balanced and single.authority is None
    for bad in ("", "dqe.example.org", "127.0.0.1:0", "127.0.0.1:1,,127.0.0.1:2", "127.0.0.1:1,[::1]:2"):
        with pytest.raises(InvalidInput) as info:
            channel_target(bad)
        assert info.value.field == "server", bad
    with pytest.raises(InvalidInput, match="does not resolve"):
        channel_target("127.0.0.1:1,no-such-host.invalid:2")


def test_client_sdk_imports_stay_light() -> None:
    code = (
        "import sys, dqe.service.client; "
        "bad = [m for m in ('nibabel', 'scipy', 'onnxruntime', 'torch') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------- balancing
def test_round_robin_spreads_calls_and_skips_a_replica_that_is_not_serving(tiny: Any) -> None:
    views = np.zeros((3, 7, 240, 240), dtype=np.float32)
    with servers([tiny] * 3) as trio, DQEClient(static_list(*(s.port for s in trio)), deadline_s=30) as c:
        assert c.health_checked and c.channel_target.startswith("ipv4:")
        connect_all(c, trio)
        for _ in range(30):
            c.score_views(views)
        spread = [served(s, "ScoreViews") for s in trio]
        assert sum(spread) == 30 and min(spread) >= 8, spread  # round_robin (pick_first: 30/0/0)
        # Health NOT_SERVING (what warm-up and draining report): no new calls go there.
        trio[0].health.set(SERVICE, 2)  # NOT_SERVING
        deadline = time.monotonic() + 10
        while True:  # the health watch stream delivers the change asynchronously
            before = [served(s, "ScoreViews") for s in trio]
            for _ in range(12):
                c.score_views(views)
            after = [served(s, "ScoreViews") for s in trio]
            if after[0] == before[0] or time.monotonic() > deadline:
                break
        assert after[0] == before[0], (before, after)
        assert after[1] > before[1] and after[2] > before[2]


def test_tls_with_a_static_list_verifies_every_replica_against_the_first_name(
    tiny: Any, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")  # server certificate for localhost and 127.0.0.1
    tls = {"tls_cert": str(certs["server.pem"]), "tls_key": str(certs["server.key"])}
    with servers([tiny, tiny], **tls) as pair:
        ports = [s.port for s in pair]
        for target in (static_list(*ports), ",".join(f"localhost:{p}" for p in ports)):
            with DQEClient(target, ca_cert=certs["ca.pem"], deadline_s=10, retries=0) as c:
                assert all(c.model_info()["model_id"] == TINY_MODEL_ID for _ in range(4))
            assert min(served(s, "GetModelInfo") for s in pair) > 0
        with (
            DQEClient(
                static_list(*ports), ca_cert=tmp_path / "certs" / "rogue-ca.pem", deadline_s=3, retries=0
            ) as rogue,
            pytest.raises(DQEError) as info,
        ):
            rogue.model_info()  # a CA that did not sign the servers' certificate is refused
        assert info.value.code == "UNAVAILABLE"


# ---------------------------------------------------------------------------------------------- failover
@pytest.fixture()
def victim(home: Path, tiny: Any, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int, Path]]:
    """``dqe serve`` of the tiny model in its own process (to be SIGKILLed): (process, port, metrics, log).

    Its calls wait up to 100 ms for a batch to fill, so it always has calls in flight when it is killed.
    """
    publish_tiny_model(home)
    port_file, log = tmp_path / "port", tmp_path / "victim.log"
    cmd = [sys.executable, "-m", "dqe.service.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--port-file", str(port_file), "--metrics-host", "127.0.0.1", "--metrics-port", "0"]
    cmd += [
        "--model",
        TINY_MODEL_ID,
        "--threads",
        "1",
        "--max-queue-delay-ms",
        "100",
        "--max-batch-size",
        "64",
    ]
    env = {**os.environ, "DQE_HOME": str(home)}
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=sink, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "dqe serve did not start"
            time.sleep(0.1)
        port = int(port_file.read_text())
        with DQEClient(f"127.0.0.1:{port}", retries=0) as probe:
            while probe.health(SERVICE) != "SERVING":
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        metrics_port = _logged_metrics_port(log)
        yield proc, port, metrics_port, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _logged_metrics_port(log: Path) -> int:
    import json

    for line in log.read_text().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "listening":
            return int(json.loads(line)["metrics_port"])
    raise AssertionError(f"no 'listening' line in {log.read_text()!r}")


def _in_flight(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return next(float(x.split()[1]) for x in text.splitlines() if x.startswith("dqe_in_flight_requests "))


def test_sigkill_one_of_three_replicas_mid_200_calls_every_call_returns_once(
    tiny: Any, cases: list[tuple[dict[str, bytes], Any]], victim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proc, victim_port, metrics_port, log = victim
    caplog.set_level(logging.INFO, logger="dqe.service.client")
    n = 200
    answers: list[list[Any]] = [[] for _ in range(n)]
    done = threading.Semaphore(0)
    with servers([tiny, tiny]) as pair:
        target = static_list(pair[0].port, victim_port, pair[1].port)
        with DQEClient(target, deadline_s=60, retries=3, backoff_s=0.05) as client:

            def call(k: int) -> None:
                data, _ = cases[k % N_CASES]
                try:
                    answers[k].append(client.score_bytes(data, case_id=f"call-{k:03d}"))
                except DQEError as exc:  # recorded, so the assertions below name it
                    answers[k].append(exc)
                done.release()

            with ThreadPoolExecutor(8) as pool:
                for k in range(n):
                    pool.submit(call, k)
                for _ in range(n // 3):  # a third of the calls answered: the victim is in the rotation
                    assert done.acquire(timeout=60)
                t_end = time.monotonic() + 30
                # Kill it with calls in flight: the gauge also counts the client's health Watch stream (1).
                while _in_flight(metrics_port) < 2:
                    assert time.monotonic() < t_end
                    time.sleep(0.005)
                proc.kill()
                killed_at = sum(len(a) for a in answers)
        survivors = [served(s, "ScoreCase") for s in pair]
    proc.wait(30)
    assert 0 < killed_at < n  # the kill landed in the middle of the run
    assert [len(a) for a in answers] == [1] * n  # every call returned exactly once
    for k, (answer,) in enumerate(answers):
        assert not isinstance(answer, Exception), (k, answer)
        expected = cases[k % N_CASES][1]
        assert answer.result.case_id == f"call-{k:03d}"
        assert answer.mean_stars == expected.mean_stars  # identical to in-process, not approximately
        assert answer.views == expected.views
        assert answer.result.center_of_mass == expected.center_of_mass
    victim_ok = sum('"code": "OK"' in line and "ScoreCase" in line for line in log.read_text().splitlines())
    assert victim_ok > 0 and min(survivors) > 0, (victim_ok, survivors)
    assert survivors[0] + survivors[1] + victim_ok >= n
    assert retry_logs(caplog), "no call was retried: the kill did not hit a call in flight"


def test_calls_cut_by_a_server_shutdown_are_retried_on_another_replica(
    tiny: Any, cases: list[tuple[dict[str, bytes], Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """``stop(0)`` cuts the calls a server holds (the client sees UNAVAILABLE or CANCELLED, depending on whether
    the GOAWAY or the stream reset arrives first): they are answered by the other replica."""
    caplog.set_level(logging.INFO, logger="dqe.service.client")
    held = WrappedEngine(tiny)
    with servers([held, tiny]) as (a, b):
        held.gate.clear()  # calls routed to `a` wait inside its engine
        with (
            DQEClient(static_list(a.port, b.port), deadline_s=60, backoff_s=0.05) as client,
            ThreadPoolExecutor(6) as pool,
        ):
            connect_all(client, [a, b])
            futures = [pool.submit(client.score_bytes, cases[k][0], case_id=f"h-{k}") for k in range(6)]
            deadline = time.monotonic() + 30
            while a.metrics.in_flight._value.get() < 2:  # the health Watch stream + at least one call
                assert time.monotonic() < deadline
                time.sleep(0.01)
            a.stop(0)
            held.gate.set()  # let its batcher thread go (its calls are already cancelled)
            outcomes = [f.result() for f in futures]
    for k, outcome in enumerate(outcomes):
        assert outcome.mean_stars == cases[k][1].mean_stars and outcome.result.case_id == f"h-{k}"
    assert retry_logs(caplog), "no call was cut: the stop did not hit a call in flight"


@contextlib.contextmanager
def cancelling_server() -> Iterator[int]:
    """A real gRPC server whose ScoreViews always ends with the server cancelling the call; health SERVING."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc

    class Cancelling(pb_grpc.QualityEstimationServicer):
        calls = 0

        def ScoreViews(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
            Cancelling.calls += 1
            context.cancel()
            return pb.ScoreResponse()

    server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_QualityEstimationServicer_to_server(Cancelling(), server)
    checker = health.HealthServicer()
    checker.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)
        assert Cancelling.calls > 0, "the cancelling server got no call"


def test_a_call_the_server_cancels_is_retried_elsewhere_and_reported_when_retries_are_spent(
    tiny: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dqe.service.client")
    views = np.random.default_rng(3).random((3, 7, 240, 240), dtype=np.float32)
    expected = tiny.score_views(views).mean_stars
    with cancelling_server() as bad, servers([tiny]) as (good,):
        with DQEClient(static_list(bad, good.port), deadline_s=30, backoff_s=0.05) as client:
            stars = [client.score_views(views).mean_stars for _ in range(6)]
        assert stars == [expected] * 6
        assert any("CANCELLED" in m for m in retry_logs(caplog)), retry_logs(caplog)
        with (
            DQEClient(f"127.0.0.1:{bad}", deadline_s=10, retries=2, backoff_s=0.05) as alone,
            pytest.raises(DQEError) as info,
        ):
            alone.score_views(views)
        assert info.value.code == "CANCELLED"


def test_score_batch_stream_resumes_on_another_replica_without_loss_or_duplicates(
    tiny: Any, cases: list[tuple[dict[str, bytes], Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dqe.service.client")
    engines = [WrappedEngine(tiny) for _ in range(3)]
    for e in engines:
        e.delay_s = 0.01  # the stream is still running when its replica is stopped
    n = 200
    seen: Counter[int] = Counter()
    stopped: list[int] = []
    with servers(engines) as trio, DQEClient(static_list(*(s.port for s in trio)), deadline_s=120) as client:
        warm = [len(e.calls) for e in engines]  # warm-up batches
        requests = (client.bytes_request(cases[k % N_CASES][0], case_id=f"item-{k:03d}") for k in range(n))
        for index, outcome in client.score_batch(requests):
            seen[index] += 1
            assert not isinstance(outcome, DQEError), (index, outcome)
            expected = cases[index % N_CASES][1]
            assert outcome.result.case_id == f"item-{index:03d}"
            assert outcome.mean_stars == expected.mean_stars and outcome.views == expected.views
            if sum(seen.values()) == 60:  # stop the replica carrying the stream, hard
                carrier = max(range(3), key=lambda i: len(engines[i].calls) - warm[i])
                trio[carrier].stop(0)
                stopped.append(carrier)
        others = [len(engines[i].calls) - warm[i] for i in range(3) if i != stopped[0]]
    assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}
    assert sum(others) > 0  # another replica finished the batch
    assert any("resuming" in m for m in retry_logs(caplog))


def test_items_a_replica_refuses_as_unavailable_are_sent_again_and_never_lost(
    tiny: Any, cases: list[tuple[dict[str, bytes], Any]]
) -> None:
    refusing, healthy = WrappedEngine(tiny), WrappedEngine(tiny)
    with servers([refusing, healthy]) as (a, b):
        warm = len(refusing.calls)
        refusing.fail_with = ModelNotReady("model is being unloaded")  # every item: UNAVAILABLE item error
        with DQEClient(static_list(a.port, b.port), deadline_s=60, backoff_s=0.05) as client:
            # round_robin alternates once both subchannels are READY; until then streams may all start on the
            # healthy one, so send streams until one has reached the refusing replica (at most 8)
            for _ in range(8):
                if len(refusing.calls) > warm:
                    break
                requests = [client.bytes_request(cases[k][0], case_id=f"r-{k}") for k in range(N_CASES)]
                got = dict(client.score_batch(requests))
                assert sorted(got) == list(range(N_CASES))
                for k, outcome in got.items():
                    assert not isinstance(outcome, DQEError), (k, outcome)
                    assert outcome.mean_stars == cases[k][1].mean_stars
        assert len(refusing.calls) > warm, "no stream reached the refusing replica"
        # Alone, the refusing replica's items come back once each, with its error, when retries are spent.
        with DQEClient(f"127.0.0.1:{a.port}", deadline_s=30, retries=1, backoff_s=0.05) as alone:
            requests = [alone.bytes_request(cases[k][0], case_id=f"r-{k}") for k in range(3)]
            outcomes = list(alone.score_batch(requests))
        assert sorted(i for i, _ in outcomes) == [0, 1, 2]
        assert all(isinstance(o, ModelNotReady) for _, o in outcomes), outcomes


def test_score_batch_reports_the_callers_iterator_error(tiny: Any, cases: list[Any]) -> None:
    def broken() -> Iterator[pb.ScoreCaseRequest]:
        yield DQEClient.bytes_request(cases[0][0], case_id="ok")
        raise OSError("disk went away")

    with (
        servers([tiny, tiny]) as pair,
        DQEClient(static_list(*(s.port for s in pair))) as client,
        pytest.raises(OSError, match="disk went away"),
    ):
        list(client.score_batch(broken()))


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_score_with_several_servers(
    tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    folder = tmp_path / "CLI-F"
    write_phantom(folder, seed=77)
    expected = tiny.score_case(Case.from_folder(folder))
    with servers([tiny, tiny]) as pair:
        code = main(["score", str(folder), "--server", static_list(*(s.port for s in pair))])
        out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["mean_stars"] == expected.mean_stars and out["views"] == expected.views
    code = main(["score", str(folder), "--server", "127.0.0.1:1,localhost"])
    bad = json.loads(capsys.readouterr().out)
    assert code == 2 and bad["error"]["code"] == "INVALID_ARGUMENT" and bad["error"]["field"] == "server"
