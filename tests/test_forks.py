"""No process is forked once the gRPC server runs (issue 10, point 4).

gRPC does not support ``fork()`` after its threads start ("Other threads are currently calling into gRPC,
skipping fork() handlers"); OpenVINO's usage telemetry used to fork a sender process from a background thread
as soon as ``openvino`` was imported, which the hardware probe did in the warm-up thread. Each test starts a
real server in a fresh Python process (:data:`CHILD`), which counts:

* every ``fork()`` made through Python (``os.register_at_fork``: ``os.fork``, ``multiprocessing``, and
  ``subprocess`` with a ``preexec_fn``), with the stack that made it;
* every process-creation audit event (``sys.addaudithook``: ``subprocess.Popen``, ``os.posix_spawn``,
  ``os.system``, ``os.exec``, ``os.fork``, ...), which also covers ``subprocess`` without ``preexec_fn``;

across start, hardware probe, model load, warm-up and 20 ``ScoreCase`` calls (raw stub, no deadline), for each
backend and precision installed here. The tiny test model keeps it fast; forks do not depend on model size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.grpc_support import TINY_MODEL_ID, publish_tiny_model, write_phantom

CALLS = 20

# The child registers its counters before it imports anything of ours or gRPC's.
CHILD = r"""
import os, sys, json, threading, traceback
forks, events = [], []
os.register_at_fork(before=lambda: forks.append(
    threading.current_thread().name + "\n" + "".join(traceback.format_stack(limit=12))))
WATCH = ("os.fork", "os.forkpty", "os.posix_spawn", "os.system", "os.exec", "os.spawn", "subprocess.Popen")
sys.addaudithook(lambda event, args: events.append(event + " " + repr(args)[:300]) if event in WATCH else None)

import grpc
from dqe.service._proto import quality_estimation_pb2 as pb, quality_estimation_pb2_grpc as pb_grpc
from dqe.service.serving.server import create_server
from dqe.service.settings import ServerConfig

backend, precision, case_paths, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, model_id=os.environ["DQE_TEST_MODEL"],
                      backend=backend, precision=precision, intra_op_threads=1, log_level="WARNING")
server, port = create_server(config)
ready = server.wait_ready(120)
out = {"ready": ready, "failed": type(server.failed).__name__ if server.failed else None,
       "failed_message": str(server.failed) if server.failed else None,
       "bf16_supported": server.hardware.bf16_support()[0], "openvino": server.hardware.openvino,
       "stars": []}
if ready:
    files = {k: open(v, "rb").read() for k, v in json.loads(case_paths).items()}
    request = pb.ScoreCaseRequest(case_id="fork", files=pb.NiftiFiles(**files))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.QualityEstimationStub(channel)
        for _ in range(calls):
            out["stars"].append(stub.ScoreCase(request).mean_stars)  # no deadline, no metadata
        out["backend"] = stub.GetModelInfo(pb.GetModelInfoRequest()).runtime.backend
server.stop(grace=1.0)
out["forks"], out["process_events"] = forks, events
print("FORKS-JSON " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("fork-home")
    publish_tiny_model(home)
    return home


@pytest.fixture(scope="module")
def case_paths(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A phantom case as JSON ``{NiftiFiles field: path}``."""
    paths = write_phantom(tmp_path_factory.mktemp("fork-case") / "fork-case", seed=7)
    return json.dumps({field: str(path) for field, path in paths.items()})


def run_child(home: Path, case_paths: str, backend: str, precision: str) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "DQE_HOME": str(home), "DQE_TEST_MODEL": TINY_MODEL_ID}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, backend, precision, case_paths, str(CALLS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FORKS-JSON ")]
    assert proc.returncode == 0 and lines, f"child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("FORKS-JSON ")), proc.stderr


def assert_no_fork(report: dict[str, Any], stderr: str) -> None:
    assert report["forks"] == [], "fork() after start:\n" + "\n".join(report["forks"])
    assert report["process_events"] == [], report["process_events"]
    assert "skipping fork() handlers" not in stderr


def test_onnxruntime_fp32_never_forks(tiny_home: Path, case_paths: str) -> None:
    report, stderr = run_child(tiny_home, case_paths, "onnxruntime", "fp32")
    assert report["ready"], report
    assert report["backend"] == "onnxruntime"
    assert len(report["stars"]) == CALLS and len(set(report["stars"])) == 1, report["stars"]
    assert_no_fork(report, stderr)


def test_openvino_fp32_never_forks(tiny_home: Path, case_paths: str) -> None:
    pytest.importorskip("openvino", reason="the `fast` extra (openvino) is not installed")
    report, stderr = run_child(tiny_home, case_paths, "openvino", "fp32")
    assert report["openvino"], report
    assert report["ready"], report
    assert report["backend"] == "openvino"
    assert len(report["stars"]) == CALLS and len(set(report["stars"])) == 1, report["stars"]
    assert_no_fork(report, stderr)


def test_openvino_bf16_never_forks_or_is_refused(tiny_home: Path, case_paths: str) -> None:
    """Where the CPU lacks native bf16 the server refuses to load (UnsupportedMode) — still without forking."""
    pytest.importorskip("openvino", reason="the `fast` extra (openvino) is not installed")
    report, stderr = run_child(tiny_home, case_paths, "openvino", "bf16")
    if report["bf16_supported"]:
        assert report["ready"], report
        assert len(report["stars"]) == CALLS, report
    else:
        assert not report["ready"], report
        assert report["failed"] == "UnsupportedMode", report
        assert "bf16" in report["failed_message"], report
    assert_no_fork(report, stderr)


def test_counters_see_a_fork(tmp_path: Path) -> None:
    """The child's counters are not blind: the same hooks record a multiprocessing sender like OpenVINO's."""
    script = CHILD.split("import grpc", 1)[0] + (
        "import multiprocessing\n"
        "p = multiprocessing.get_context('fork').Process(target=int)\np.start(); p.join()\n"
        "import subprocess\nsubprocess.run(['true'])\n"
        "print('FORKS-JSON ' + json.dumps({'forks': forks, 'process_events': events}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout.split("FORKS-JSON ", 1)[1])
    assert len(report["forks"]) == 1, report
    assert any(e.startswith("subprocess.Popen") for e in report["process_events"]), report
