"""Throughput and resident memory of a real ``dqe serve`` against ``--max-batch-size`` (issue 21).

For each batch size, a fresh ``dqe serve`` (the default model from ``$DQE_HOME``, everything else default) gets a
burst of ``--cases`` real cases as bytes from ``--clients`` concurrent callers (one exam of the bench cases each
time, interleaved), after one warm case. Recorded per size: cases per second over the burst, the server's peak
RSS during it (``VmHWM`` after a reset through ``/proc/<pid>/clear_refs``), its RSS at rest before the burst and
``--settle-s`` seconds after it, and the load average. Sizes are run in the order given, so run it twice in
reverse order on a busy machine.

Usage: ``python benchmarks/batch_sweep.py [--sizes 3,6,12,24] [--cases 24] [--clients 8] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_abuse import AUTH, start, status_mb  # noqa: E402
from benchmarks.common import bench_cases, git_rev  # noqa: E402
from benchmarks.machine import load_average  # noqa: E402


def one_size(size: int, requests: list[bytes], clients: int, settle_s: float, tmp: Path) -> dict[str, Any]:
    import grpc

    proc, port = start(tmp, "--max-batch-size", str(size))
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)])
        call = channel.unary_unary("/dqe.v1.QualityEstimation/ScoreCase")
        call(requests[0], timeout=300, metadata=AUTH)  # warm: first-call costs stay out of the burst
        time.sleep(settle_s)
        rest_mb = status_mb(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda raw: call(raw, timeout=600, metadata=AUTH), requests))
        wall = time.perf_counter() - t0
        peak_mb = status_mb(proc.pid, "VmHWM")
        time.sleep(settle_s)
        settled_mb = status_mb(proc.pid, "VmRSS")
        channel.close()
    finally:
        proc.terminate()
        proc.wait(60)
    return {
        "max_batch_size": size,
        "cases_per_s": round(len(requests) / wall, 3),
        "burst_s": round(wall, 2),
        "rss_rest_mb": round(rest_mb),
        "peak_rss_mb": round(peak_mb),
        "rss_settled_mb": round(settled_mb),
        "load_average": load_average(),
    }


def main() -> None:
    from dqe.service._proto import quality_estimation_pb2 as pb

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,6,12,24")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    exams = [
        pb.ScoreCaseRequest(
            case_id=name, files=pb.NiftiFiles(**{k: Path(v).read_bytes() for k, v in files.items()})
        ).SerializeToString()
        for name, files in bench_cases(Path(tempfile.mkdtemp()))
    ]
    requests = [exams[i % len(exams)] for i in range(args.cases)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(one_size(size, requests, args.clients, args.settle_s, Path(tmp)))
            sys.stderr.write(json.dumps(rows[-1]) + "\n")
    out = {"commit": git_rev(), "cases": args.cases, "clients": args.clients, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
