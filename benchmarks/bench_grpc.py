"""Loopback load generator for the gRPC service, next to the reference package's in-process time.

Starts ``dqe serve`` as a subprocess on 127.0.0.1 (a free port), then for each mode

* ``bytes``  - the client sends the five NIfTI files' bytes (``ScoreCase`` with ``files``);
* ``paths``  - the client names files on the server's storage (``ScoreCase`` with ``paths``);
* ``views``  - the client sends pre-sliced ``(3, 7, 240, 240)`` float32 views (``ScoreViews``);

measures one client in sequence (latency of one case) and ``--concurrency`` clients at once (throughput),
printing p50/p95/p99 latency, cases/s and views/s. The reference (``deep_quality_estimation.DQE().predict``
on CPU, model loaded, warm) runs on the same cases in its own process. Every run is bounded by a request
count and ``--max-seconds``; nothing leaves the loopback interface.

Usage: ``python benchmarks/bench_grpc.py [--requests 24] [--concurrency 8] [--json OUT] [--no-reference]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench_cases, git_rev, machine_line  # noqa: E402

FIELDS = ("t1c", "t1", "t2", "flair", "segmentation")
MODES = ("bytes", "paths", "views")


# ---------------------------------------------------------------------------------------------- reference
def reference_worker(cases_json: str, repeats: int) -> None:
    """Child process: warm per-case time of the reference package on CPU; prints JSON."""
    from deep_quality_estimation import DQE

    model = DQE(device="cpu")
    out: dict[str, Any] = {}
    for name, files in json.loads(cases_json):
        args = {k: Path(files[k]) for k in FIELDS}
        model.predict(**args)  # warm-up
        times = []
        mean = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            mean, _views = model.predict(**args)
            times.append((time.perf_counter() - t0) * 1e3)
        out[name] = {"p50_ms": statistics.median(times), "mean_stars": float(mean)}
    print(json.dumps(out))


def run_reference(cases: list[tuple[str, dict[str, Path]]], repeats: int) -> dict[str, Any] | None:
    payload = json.dumps([(n, {k: str(v) for k, v in f.items()}) for n, f in cases])
    cmd = [sys.executable, __file__, "--reference-worker", payload, "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(
            f"reference run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}",
            file=sys.stderr,
        )
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- server
class Server:
    """``dqe serve`` in a subprocess on a free loopback port."""

    def __init__(self, allowed_root: Path, threads: int, max_batch: int) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        port_file = Path(self.tmp.name) / "port"
        cmd = [sys.executable, "-m", "dqe.service.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--port-file", str(port_file), "--metrics-port", "-1", "--allowed-root", str(allowed_root)]
        cmd += ["--log-level", "WARNING", "--threads", str(threads), "--max-batch-size", str(max_batch)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"dqe serve did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            time.sleep(0.1)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"

    def wait_serving(self, client: Any, timeout: float = 300) -> float:
        t0 = time.perf_counter()
        while client.health() != "SERVING":
            if self.proc.poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError("dqe serve never reported SERVING")
            time.sleep(0.1)
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.tmp.cleanup()


# ---------------------------------------------------------------------------------------------- load
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def load(target: str, requests: list[Any], concurrency: int, max_seconds: float) -> dict[str, Any]:
    """Send ``requests`` (callables taking a client) from ``concurrency`` threads; latency and throughput."""
    from dqe.service.client import DQEClient

    latencies: list[float] = []
    server_ms: dict[str, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    cursor = iter(range(len(requests)))
    stop_at = time.monotonic() + max_seconds

    def worker() -> None:
        with DQEClient(target, deadline_s=600) as client:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    remote = requests[i](client)
                except Exception as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = (time.perf_counter() - t0) * 1e3
                with lock:
                    latencies.append(elapsed)
                    for k, v in remote.result.timings_ms.items():
                        server_ms.setdefault(k, []).append(v)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = len(latencies)
    return {
        "concurrency": concurrency,
        "n": n,
        "errors": errors[:5],
        "n_errors": len(errors),
        "wall_s": wall,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "cases_per_s": n / wall if wall > 0 else 0.0,
        "views_per_s": 3 * n / wall if wall > 0 else 0.0,
        "server_ms_mean": {k: statistics.fmean(v) for k, v in sorted(server_ms.items())},
    }


def build_requests(cases: list[tuple[str, dict[str, Path]]], contract: Any) -> dict[str, list[Any]]:
    """One request callable per case and mode (bytes read and views sliced once, up front)."""
    import numpy as np

    from dqe.models.case import Case
    from dqe.models.preprocess import build_views

    out: dict[str, list[Any]] = {m: [] for m in MODES}
    for name, files in cases:
        data = {k: Path(v).read_bytes() for k, v in files.items()}
        case = Case.from_files(**files, contract=contract)
        views, com = build_views(case.images, case.labels, contract)
        stacked = np.stack(views)
        out["bytes"].append(lambda c, d=data, n=name: c.score_bytes(d, case_id=n))
        out["paths"].append(
            lambda c, f=files, n=name: c.score_paths(case_id=n, **{k: str(v) for k, v in f.items()})
        )
        out["views"].append(lambda c, v=stacked, n=name, m=com: c.score_views(v, case_id=n, center_of_mass=m))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=24, help="requests per throughput run (default 24)")
    p.add_argument("--latency-requests", type=int, default=8, help="sequential requests per mode (default 8)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=120.0, help="cap per run (default 120)")
    p.add_argument("--threads", type=int, default=0, help="server intra-op threads (0 = all cores)")
    p.add_argument("--max-batch", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3, help="reference repeats per case")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--reference-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reference_worker:
        reference_worker(args.reference_worker, args.repeats)
        return 0

    from dqe.service.client import DQEClient

    cases = bench_cases(Path(tempfile.gettempdir()) / "dqe-bench-phantoms")
    root = Path(os.path.commonpath([str(Path(v).resolve().parent) for _, f in cases for v in f.values()]))
    print(f"# bench_grpc  {machine_line()}  rev {git_rev()}")
    print(f"# {len(cases)} cases: {', '.join(n for n, _ in cases)}")
    server = Server(root, args.threads, args.max_batch)
    results: dict[str, Any] = {
        "machine": machine_line(),
        "rev": git_rev(),
        "cases": [n for n, _ in cases],
        "modes": {},
    }
    try:
        with DQEClient(server.target, deadline_s=600, retries=20, backoff_s=0.5) as client:
            results["startup_to_serving_s"] = server.wait_serving(client)
            info = client.model_info()
            requests = build_requests(cases, client.contract())
        results["server"] = {
            "providers": info["providers"],
            "precision": info["precision"],
            "model_id": info["model_id"],
        }
        for mode in MODES:
            reqs = requests[mode]
            seq = [reqs[i % len(reqs)] for i in range(args.latency_requests)]
            conc = [reqs[i % len(reqs)] for i in range(args.requests)]
            load(server.target, reqs[:1], 1, args.max_seconds)  # warm this path
            results["modes"][mode] = {
                "sequential": load(server.target, seq, 1, args.max_seconds),
                "concurrent": load(server.target, conc, args.concurrency, args.max_seconds),
            }
    finally:
        server.stop()
    ref = None if args.no_reference else run_reference(cases, args.repeats)
    results["reference"] = ref
    ref_p50 = statistics.median(v["p50_ms"] for v in ref.values()) if ref else float("nan")
    ref_cps = 1e3 / ref_p50 if ref else float("nan")

    print(f"# server: {results['server']}, ready {results['startup_to_serving_s']:.1f} s after start")
    head = f"{'mode':<7}{'clients':>8}{'n':>5}{'err':>5}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"
    head += f"{'cases/s':>10}{'views/s':>10}{'x ref':>8}"
    print(head)
    for mode in MODES:
        for kind in ("sequential", "concurrent"):
            r = results["modes"][mode][kind]
            ratio = r["cases_per_s"] / ref_cps if ref else float("nan")
            print(
                f"{mode:<7}{r['concurrency']:>8}{r['n']:>5}{r['n_errors']:>5}{r['p50_ms']:>10.0f}{r['p95_ms']:>10.0f}"
                f"{r['p99_ms']:>10.0f}{r['cases_per_s']:>10.2f}{r['views_per_s']:>10.1f}{ratio:>8.2f}"
            )
    if ref:
        print(
            f"{'ref':<7}{1:>8}{len(ref):>5}{0:>5}{ref_p50:>10.0f}{'':>10}{'':>10}{ref_cps:>10.2f}{3 * ref_cps:>10.1f}{1.0:>8.2f}"
        )
        print(
            "# ref = deep_quality_estimation.DQE(device='cpu').predict, warm, in-process; p50 over cases of per-case p50"
        )
    for mode in MODES:
        print(
            f"# {mode} server-side mean ms under load: ",
            json.dumps(
                {k: round(v, 1) for k, v in results["modes"][mode]["concurrent"]["server_ms_mean"].items()}
            ),
        )
    bytes_seq, bytes_conc = results["modes"]["bytes"]["sequential"], results["modes"]["bytes"]["concurrent"]
    targets = {
        "one case p50 <= 300 ms (bytes, sequential)": bytes_seq["p50_ms"] <= 300,
        ">= 4 cases/s under concurrency (bytes)": bytes_conc["cases_per_s"] >= 4,
        ">= 5x reference (bytes, concurrent)": bool(ref) and bytes_conc["cases_per_s"] >= 5 * ref_cps,
        "views mode >= 30 views/s": results["modes"]["views"]["concurrent"]["views_per_s"] >= 30,
    }
    results["targets"] = targets
    for name, ok in targets.items():
        print(f"# target {'met' if ok else 'NOT met'}: {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
