"""gRPC over loopback: one case at a time and under concurrency (child process).

Starts ``dqe serve`` (fp32, ONNX Runtime) as a subprocess on a free 127.0.0.1 port, waits for health SERVING
(after its warm-up batch), then runs these request kinds with :class:`dqe.service.client.DQEClient`:

* ``bytes``: ``ScoreCase`` with the five files' bytes (read once before timing);
* ``paths``: ``ScoreCase`` naming the files on the server's storage (``--allowed-root``);
* ``views``: ``ScoreViews`` with pre-sliced ``(3, 7, H, W)`` float32 views (slicing done before timing):
  the network and transport only, so the report compares it with the reference's model-only time;
* ``views_sliced``: ``score_files(local_slicing=True)`` as ``dqe score --server --views`` runs it: decode,
  validate and slice locally (timed), then ``ScoreViews``; the report compares it with the reference's
  whole exam.

Each kind is first sent once (warm-up), then ``sequential`` requests from one client (latency of one case),
and for bytes/paths/views ``concurrent`` requests from ``clients`` threads (throughput). Latencies in ms.
"""

from __future__ import annotations

import functools
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.proc import emit, read_spec

logger = logging.getLogger(__name__)

KINDS = ("bytes", "paths", "views", "views_sliced")
CONCURRENT_KINDS = ("bytes", "paths", "views")
Request = Callable[[Any], Any]


class Server:
    """``dqe serve`` in a subprocess on a free loopback port (fp32, metrics off, warnings only)."""

    def __init__(self, allowed_root: Path, threads: int) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="dqe-bench-serve-")
        port_file = Path(self.tmp.name) / "port"
        self.log = open(Path(self.tmp.name) / "stderr.log", "w+")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "dqe.service.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--port-file", str(port_file), "--metrics-port", "-1", "--allowed-root", str(allowed_root)]
        cmd += ["--log-level", "WARNING", "--threads", str(threads), "--precision", "fp32"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        deadline = time.monotonic() + 300
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"dqe serve did not start: {self.log.read()[-2000:]}")
            time.sleep(0.05)
        self.started = t0
        self.target = f"127.0.0.1:{int(port_file.read_text())}"

    def wait_serving(self, client: Any, timeout_s: float = 300) -> float:
        """Seconds from process start to health SERVING."""
        while client.health() != "SERVING":
            if self.proc.poll() is not None or time.perf_counter() - self.started > timeout_s:
                raise RuntimeError("dqe serve never reported SERVING")
            time.sleep(0.05)
        return time.perf_counter() - self.started

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.tmp.cleanup()


def drive(target: str, requests: list[Request], clients: int) -> dict[str, Any]:
    """Send ``requests`` from ``clients`` threads, each with its own channel; latencies (ms) and wall (s)."""
    from dqe.service.client import DQEClient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    cursor = iter(range(len(requests)))

    def worker() -> None:
        with DQEClient(target, deadline_s=600) as client:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    requests[i](client)
                except Exception as exc:  # counted and reported; a benchmark must not hide failures
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "latency_ms": latencies,
        "wall_s": wall,
        "errors": errors[:5],
        "n_errors": len(errors),
    }


def _bytes(data: dict[str, bytes], name: str, client: Any) -> Any:
    return client.score_bytes(data, case_id=name)


def _paths(files: dict[str, Path], name: str, client: Any) -> Any:
    return client.score_paths(case_id=name, **{k: str(v) for k, v in files.items()})


def _views(views: Any, com: tuple[int, int, int], name: str, client: Any) -> Any:
    return client.score_views(views, case_id=name, center_of_mass=com)


def _views_sliced(files: dict[str, Path], name: str, client: Any) -> Any:
    return client.score_files(**{k: str(v) for k, v in files.items()}, case_id=name, local_slicing=True)


def build_requests(cases: list[tuple[str, dict[str, Path]]]) -> dict[str, list[Request]]:
    """One request callable per case and kind (bytes read and views sliced here, before any timing)."""
    import numpy as np

    from dqe.models.case import Case
    from dqe.models.contract import CONTRACT_V1
    from dqe.models.preprocess import build_views

    out: dict[str, list[Request]] = {k: [] for k in KINDS}
    for name, files in cases:
        data = {k: Path(v).read_bytes() for k, v in files.items()}
        case = Case.from_files(**files)  # type: ignore[arg-type]
        views, com = build_views(case.images, case.labels, CONTRACT_V1)
        stacked = np.stack(views)
        out["bytes"].append(functools.partial(_bytes, data, name))
        out["paths"].append(functools.partial(_paths, files, name))
        out["views"].append(functools.partial(_views, stacked, com, name))
        out["views_sliced"].append(functools.partial(_views_sliced, files, name))
    return out


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from dqe.service.client import DQEClient

    cases = [(name, {k: Path(v) for k, v in files.items()}) for name, files in spec["cases"]]
    server = Server(Path(spec["allowed_root"]), int(spec.get("threads", 0)))
    result: dict[str, Any] = {"sequential": {}, "concurrent": {}}
    try:
        with DQEClient(server.target, deadline_s=600, retries=20, backoff_s=0.5) as client:
            result["start_to_serving_s"] = server.wait_serving(client)
            info = client.model_info()
        result["server"] = {k: info.get(k) for k in ("model_id", "precision", "providers", "backend")}
        requests = build_requests(cases)
        n_seq, n_conc, clients = int(spec["sequential"]), int(spec["concurrent"]), int(spec["clients"])
        for kind in KINDS:
            reqs = requests[kind]
            drive(server.target, reqs, 1)  # warm this path with every case once
            result["sequential"][kind] = drive(server.target, [reqs[i % len(reqs)] for i in range(n_seq)], 1)
            if kind in CONCURRENT_KINDS:
                conc = [reqs[i % len(reqs)] for i in range(n_conc)]
                result["concurrent"][kind] = drive(server.target, conc, clients)
    finally:
        server.stop()
    result["request_bytes_median"] = {
        "bytes": statistics.median(sum(Path(v).stat().st_size for v in f.values()) for _, f in cases)
    }
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    emit(measure(read_spec(sys.argv)))
