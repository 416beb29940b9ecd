"""Throughput with 1, 2 and 3 local replicas behind one round_robin client, and the per-replica figures a
sizing calculation uses (deploy/README.md, "Sizing").

For each replica count ``n`` it starts ``n`` ``dqe serve`` processes on 127.0.0.1 (free ports, the default
model, ``--threads`` = cores // n unless given), waits until every one reports SERVING, warms each with one
exam, then sends ``--requests`` full exams (the five ``.nii.gz`` files' bytes, ``ScoreCase``, as a PACS
would) from ``--concurrency`` threads through ONE :class:`dqe.service.client.DQEClient` whose target is the
static list of all replicas (``round_robin``). Measured per run:

* wall-clock throughput (exams/s) and client-side latency p50/p95 (ms);
* server CPU seconds per exam (user+system time of the server processes from /proc over the run, divided by
  the exams answered): the figure replicas are sized by, since it does not depend on how many cores the
  benchmark machine happened to have free;
* per replica: exams/s, resident memory after the run and its peak (VmRSS / VmHWM, MiB);
* the client's own CPU seconds (it shares the machine: on 2 cores it competes with the servers);
* the load average before and after, so a busy machine shows in the output;
* the server's own stage timings (decode, preprocess, queue, inference; mean ms from the responses): what a GPU
  replica would still spend on its CPU per exam.

With ``n = 1`` it also measures one exam at a time (sequential p50, the latency of one exam on an otherwise
idle replica). On a 2-core machine expect little or no gain from more replicas: they share the same two
cores, and each one adds its own model copy and threads. Prints one JSON document on stdout.

With ``--target`` it starts nothing and loads replicas that already run (the first check on a cluster: from a
pod labelled ``dqe-client: "true"``, ``--target dns:///dqe-headless.dqe.svc.cluster.local:50051``); it then
reports throughput and latency only (server CPU and memory: the pods' metrics).

Usage: ``python benchmarks/bench_replicas.py [--replicas 1 2 3] [--requests 24] [--concurrency 4]
[--latency-requests 8] [--threads 0] [--max-seconds 120] [--json OUT] [--target T --token TOKEN]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench_cases, git_rev, machine_line  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------- replicas
class Replica:
    """One ``dqe serve`` process on a free loopback port (metrics off, warnings-only logs)."""

    def __init__(self, threads: int, max_batch: int) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        port_file = Path(self._tmp.name) / "port"
        self._log = (Path(self._tmp.name) / "serve.log").open("w")
        cmd = [sys.executable, "-m", "dqe.service.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--port-file", str(port_file), "--metrics-port", "-1", "--log-level", "WARNING"]
        cmd += ["--threads", str(threads), "--max-batch-size", str(max_batch)]
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 300
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dqe serve did not start; log in {self._log.name}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"

    def wait_serving(self, timeout: float = 300) -> float:
        """Seconds from process start to health SERVING (model loaded and warmed)."""
        from dqe.service.client import DQEClient

        with DQEClient(self.target, retries=0) as probe:
            while True:
                try:
                    if probe.health() == "SERVING":
                        return time.perf_counter() - self.t_start
                except Exception:  # not listening yet
                    pass
                if self.proc.poll() is not None or time.perf_counter() - self.t_start > timeout:
                    raise RuntimeError(f"dqe serve never reported SERVING; log in {self._log.name}")
                time.sleep(0.05)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    def memory_mib(self) -> dict[str, float]:
        """Resident memory now (VmRSS) and its peak (VmHWM), MiB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = int(line.split()[1]) / 1024
        return out

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self._tmp.cleanup()


# ---------------------------------------------------------------------------------------------- load
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_load(
    client: Any, exams: list[tuple[str, dict[str, bytes]]], n: int, concurrency: int, cap_s: float
) -> dict[str, Any]:
    """Send ``n`` exams (round robin over ``exams``) from ``concurrency`` threads through one client."""
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    cursor = iter(range(n))
    stop_at = time.monotonic() + cap_s

    def worker() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            name, data = exams[i % len(exams)]
            t0 = time.perf_counter()
            try:
                remote = client.score_bytes(data, case_id=f"{name}#{i}")
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1e3)
                for stage, ms in remote.result.timings_ms.items():
                    stages.setdefault(stage, []).append(ms)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "n": len(latencies),
        "n_errors": len(errors),
        "errors": errors[:3],
        "wall_s": round(wall, 3),
        "exams_per_s": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "server_stage_ms_mean": {k: round(statistics.fmean(v), 1) for k, v in sorted(stages.items())},
    }


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_config(
    n_replicas: int, exams: list[tuple[str, dict[str, bytes]]], args: argparse.Namespace
) -> dict[str, Any]:
    """Start ``n_replicas`` servers, load them through one round_robin client, measure, stop them."""
    from dqe.service.client import DQEClient

    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // n_replicas)
    concurrency = args.concurrency or 2 * n_replicas
    with ExitStack() as stack:
        replicas = [Replica(threads, args.max_batch) for _ in range(n_replicas)]
        for r in replicas:
            stack.callback(r.close)
        startup = [r.wait_serving() for r in replicas]
        for r in replicas:  # warm every replica's decode/preprocess path once
            with DQEClient(r.target, deadline_s=600) as one:
                one.score_bytes(exams[0][1], case_id="warm")
        out: dict[str, Any] = {"replicas": n_replicas, "threads_per_replica": threads}
        out["startup_to_serving_s"] = [round(s, 2) for s in startup]
        target = ",".join(r.target for r in replicas)
        with DQEClient(target, deadline_s=600, retries=5) as client:
            if n_replicas == 1 and args.latency_requests:
                seq = run_load(client, exams, args.latency_requests, 1, args.max_seconds)
                keep = ("n", "n_errors", "p50_ms", "p95_ms", "exams_per_s", "server_stage_ms_mean")
                out["sequential"] = {k: seq[k] for k in keep}
            cpu0, ccpu0, load0 = [r.cpu_s() for r in replicas], client_cpu_s(), os.getloadavg()[0]
            res = run_load(client, exams, args.requests, concurrency, args.max_seconds)
            cpu1, ccpu1, load1 = [r.cpu_s() for r in replicas], client_cpu_s(), os.getloadavg()[0]
        server_cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        done = max(res["n"], 1)
        out.update(res)
        out["server_cpu_s"] = [round(c, 2) for c in server_cpu]
        out["server_cpu_s_per_exam"] = sum(server_cpu) / done
        out["client_cpu_s_per_exam"] = (ccpu1 - ccpu0) / done
        out["loadavg_1min"] = [round(load0, 2), round(load1, 2)]
        out["per_replica"] = {
            "exams_per_s": res["exams_per_s"] / n_replicas,
            # share of the exams each replica served, from its CPU time (round_robin should make them equal)
            "cpu_share": [round(c / sum(server_cpu), 3) if sum(server_cpu) else None for c in server_cpu],
            "memory_mib": [r.memory_mib() for r in replicas],
        }
    return out


def run_remote(
    target: str, exams: list[tuple[str, dict[str, bytes]]], args: argparse.Namespace
) -> dict[str, Any]:
    """Load replicas that are already running (a cluster): one exam at a time, then concurrently."""
    from dqe.service.client import DQEClient

    with DQEClient(target, deadline_s=600, retries=5, token=args.token) as client:
        client.score_bytes(exams[0][1], case_id="warm")
        seq = run_load(client, exams, args.latency_requests, 1, args.max_seconds)
        res = run_load(client, exams, args.requests, args.concurrency or 8, args.max_seconds)
    return {"target": target, "sequential": seq, **res}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--requests", type=int, default=24, help="exams per throughput run (default 24)")
    p.add_argument("--concurrency", type=int, default=0, help="client threads (default 2 per replica)")
    p.add_argument(
        "--latency-requests", type=int, default=8, help="sequential exams with 1 replica (default 8)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="intra-op threads per replica (0 = cores // replicas)"
    )
    p.add_argument("--max-batch", type=int, default=24, help="server --max-batch-size (default 24)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="cap per run (default 120)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--target",
        help="load running replicas instead (e.g. dns:///dqe-headless.dqe.svc.cluster.local:50051): "
        "throughput and latency only; server CPU and memory then come from Prometheus",
    )
    p.add_argument("--token", default=os.environ.get("DQE_TOKEN"), help="bearer token with --target")
    args = p.parse_args(argv)

    cases = bench_cases(Path(tempfile.gettempdir()) / "dqe-bench-phantoms")
    exams = [(name, {k: Path(v).read_bytes() for k, v in files.items()}) for name, files in cases]
    results: dict[str, Any] = {
        "benchmark": "bench_replicas",
        "machine": machine_line(),
        "rev": git_rev(),
        "cases": [n for n, _ in cases],
        "exam_mb": round(statistics.fmean(sum(map(len, d.values())) for _, d in exams) / MIB, 2),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    if args.target:
        results["runs"].append(run_remote(args.target, exams, args))
        print(json.dumps(results, indent=2, default=str))
        return 0
    for n in args.replicas:
        print(f"# {n} replica(s) ...", file=sys.stderr)
        results["runs"].append(run_config(n, exams, args))
    one = next((r for r in results["runs"] if r["replicas"] == 1), results["runs"][0])
    results["sizing_inputs"] = {
        "server_cpu_s_per_exam": statistics.median(r["server_cpu_s_per_exam"] for r in results["runs"]),
        "exam_p50_ms_one_at_a_time": one.get("sequential", {}).get("p50_ms"),
        "server_stage_ms_one_at_a_time": one.get("sequential", {}).get("server_stage_ms_mean"),
        "exams_per_s_one_replica_saturated": one["exams_per_s"],
        "rss_mib_per_replica_max": max(
            m.get("peak_rss_mib", 0) for r in results["runs"] for m in r["per_replica"]["memory_mib"]
        ),
        "throughput_by_replicas": {str(r["replicas"]): round(r["exams_per_s"], 3) for r in results["runs"]},
    }
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
