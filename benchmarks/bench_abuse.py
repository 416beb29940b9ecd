"""Abuse benchmark: for each attack of issue 11, the server's peak RSS and the latency of a normal request made
meanwhile, against the same request on an idle server.

Starts ``dqe serve`` (the default model from ``$DQE_HOME``, a bearer token) as a subprocess on 127.0.0.1, so its
memory is read from ``/proc/<pid>/status`` alone: ``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``
(peak) and ``VmRSS`` 5 s after the attack (settled). The normal request is the real BraTS-GLI-00001-000 case as
bytes when ``../shared/data`` has it, else a seeded 240 x 240 x 155 phantom. Each attack runs once; the normal
request is sent 0.1 s after the attack starts.

Usage: ``python benchmarks/bench_abuse.py [--json OUT] [--only ATTACK ...] [--publish]`` (``make bench-abuse``) (about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, bench_cases, git_rev, machine_line  # noqa: E402
from benchmarks.machine import load_average  # noqa: E402

TOKEN = "bench-abuse-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
FIELDS = ("t1c", "t1", "t2", "flair", "segmentation")
ATTACKS = ("idle_streams", "gzip_floods", "inflate_bombs", "unauthenticated_400mb", "wide_grid", "burst")


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(key)


def start(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """``dqe serve`` on 127.0.0.1 with the bench token and ``extra`` flags, once its health is SERVING."""
    from dqe.service.client import DQEClient

    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "dqe"), "serve", "--host", "127.0.0.1", "--port", "0",
           "--port-file", str(port_file), "--metrics-port", "-1", "--log-level", "WARNING", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "DQE_TOKEN": TOKEN}, stderr=(tmp / "log").open("wb"))
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {(tmp / 'log').read_text()[-2000:]}")
        time.sleep(0.05)
    port = int(port_file.read_text())
    with DQEClient(f"127.0.0.1:{port}", token=TOKEN) as client:
        while client.health() != "SERVING":
            time.sleep(0.1)
    return proc, port


def nifti_gz(shape: tuple[int, ...]) -> bytes:
    import nibabel as nib
    import numpy as np

    header = nib.Nifti1Header()
    header.set_data_dtype("uint8")
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    z = zlib.compressobj(9, 8, 31)
    body = np.zeros(int(np.prod(shape)), dtype=np.uint8).tobytes()
    return z.compress(header.binaryblock + b"\x00" * 4) + z.compress(body) + z.flush()


class Bench:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, normal: dict[str, bytes]) -> None:
        import grpc

        from dqe.service._proto import quality_estimation_pb2 as pb
        from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc

        self.pb, self.pb_grpc, self.grpc = pb, pb_grpc, grpc
        self.proc, self.port = proc, port
        self.cancelled_details = ""
        self.extra: dict[str, Any] = {}
        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)
        self.stub = pb_grpc.QualityEstimationStub(self.channel)
        self.normal = pb.ScoreCaseRequest(case_id="normal", files=pb.NiftiFiles(**normal))
        member = gzip.compress(b"", mtime=0)
        flood = member * (4 * 1024 * 1024 // len(member))
        self.flood = self.serialised(dict.fromkeys(FIELDS, flood))
        self.bomb = self.serialised(dict.fromkeys(FIELDS, nifti_gz((1024, 1024, 256))))
        self.wide = self.serialised(dict.fromkeys(FIELDS, nifti_gz((1600, 1600, 3))))
        self.big = self.serialised({"t1c": os.urandom(16) * 25_000_000})  # 400 MB

    def serialised(self, files: dict[str, bytes]) -> bytes:
        return bytes(self.pb.ScoreCaseRequest(files=self.pb.NiftiFiles(**files)).SerializeToString())

    def new_stub(self) -> Any:
        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        return self.pb_grpc.QualityEstimationStub(
            self.grpc.insecure_channel(f"127.0.0.1:{self.port}", options=opts)
        )

    def normal_s(self) -> float:
        t0 = time.perf_counter()
        self.stub.ScoreCase(self.normal, timeout=120, metadata=AUTH)
        return time.perf_counter() - t0

    def health_s(self) -> float:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        t0 = time.perf_counter()
        health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        return time.perf_counter() - t0

    def code(self, fn: Callable[[], Any]) -> str:
        try:
            fn()
        except self.grpc.RpcError as err:
            name = str(err.code().name)  # type: ignore[attr-defined]
            if name == "CANCELLED" and not self.cancelled_details:
                self.cancelled_details = str(err.details())  # type: ignore[attr-defined]
            return name
        return "OK"

    def run(self, name: str, attack: Callable[[], list[str]]) -> dict[str, Any]:
        pid = self.proc.pid
        before = status_mb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        codes: list[str] = []
        thread = threading.Thread(target=lambda: codes.extend(attack()))
        thread.start()
        time.sleep(0.1)
        health = self.health_s()
        during = self.normal_s()
        thread.join()
        peak = status_mb(pid, "VmHWM")
        time.sleep(5)
        row = {
            "attack": name,
            "outcomes": {c: codes.count(c) for c in sorted(set(codes))},
            "rss_before_mb": round(before, 1),
            "peak_growth_mb": round(peak - before, 1),
            "settled_growth_mb": round(status_mb(pid, "VmRSS") - before, 1),
            "health_ms": round(health * 1e3, 1),
            "normal_ms": round(during * 1e3, 1),
            **self.extra,
        }
        self.extra = {}
        print(json.dumps(row), flush=True)
        return row

    # ------------------------------------------------------------------ attacks
    def idle_streams(self) -> list[str]:
        stop = threading.Event()

        def silent() -> Iterator[Any]:
            stop.wait(60)
            return
            yield

        stub = self.new_stub()
        calls = [stub.ScoreBatch(silent(), metadata=AUTH, timeout=60) for _ in range(64)]
        time.sleep(3)  # the normal request and the health check run meanwhile
        stop.set()
        return [self.code(lambda c=c: list(c)) for c in calls]  # type: ignore[misc]

    def raw_call(self, raw: bytes, metadata: Any = AUTH) -> str:
        """ScoreCase with an already serialised request (no client-side protobuf work while timing)."""
        channel = self.grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.max_send_message_length", -1)]
        )
        call = channel.unary_unary("/dqe.v1.QualityEstimation/ScoreCase")
        try:
            return self.code(lambda: call(raw, timeout=120, metadata=metadata))
        finally:
            channel.close()

    def gzip_floods(self) -> list[str]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda _: self.raw_call(self.flood), range(2)))

    def inflate_bombs(self) -> list[str]:
        with ThreadPoolExecutor(3) as pool:
            return list(pool.map(lambda _: self.raw_call(self.bomb), range(3)))

    def unauthenticated_400mb(self) -> list[str]:
        return [self.raw_call(self.big, metadata=(("authorization", "Bearer no"),))]

    def wide_grid(self) -> list[str]:
        return [self.raw_call(self.wide)]

    def burst(self) -> list[str]:
        """320 full-size real cases at once on one channel (already serialised, so the client's protobuf work
        is not timed); records when each call's status came back, counted from when it was sent."""
        channel = self.grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.max_send_message_length", -1)]
        )
        call = channel.unary_unary("/dqe.v1.QualityEstimation/ScoreCase")
        raw = self.normal.SerializeToString()
        outcomes: list[tuple[str, float]] = []
        lock, done = threading.Lock(), threading.Event()

        def record(future: Any, sent: float) -> None:
            err = future.exception()
            with lock:
                outcomes.append(("OK" if err is None else str(err.code().name), time.perf_counter() - sent))
                if len(outcomes) == 320:
                    done.set()

        for _ in range(320):
            sent = time.perf_counter()
            call.future(raw, timeout=120, metadata=AUTH).add_done_callback(lambda f, s=sent: record(f, s))
        done.wait(300)
        channel.close()
        refused = sorted(t for c, t in outcomes if c == "RESOURCE_EXHAUSTED")
        if refused:
            self.extra = {
                "refused_median_s": round(statistics.median(refused), 3),
                "refused_max_s": round(refused[-1], 3),
            }
        return [c for c, _ in outcomes]


LABELS = {
    "idle": "idle server",
    "idle_streams": "64 idle ScoreBatch streams",
    "gzip_floods": "2 gzip-member floods (4 MiB, ~210 000 members, all five fields)",
    "inflate_bombs": "3 inflate bombs (256 MiB NIfTI in all five fields)",
    "unauthenticated_400mb": "unauthenticated 400 MB request",
    "wide_grid": "1600 x 1600 x 3 grid",
    "burst": "burst of 320 real cases at once on one channel (3.5 GB)",
}
ABUSE_START, ABUSE_END = "<!-- abuse:start -->", "<!-- abuse:end -->"


def render(data: dict[str, Any]) -> str:
    """The Markdown table of one run (README.md and benchmarks/RESULTS.md carry it between the abuse markers)."""
    load = data.get("load_average") or ["?"] * 3
    out = [
        f"Generated by `make bench-abuse` from one run of `benchmarks/bench_abuse.py` at git {data['git']} on "
        f"{data['machine']} (load average {load[0]} at the start). Real model; the normal request is "
        f"{data['normal_request']}, sent 0.1 s after each attack starts; growth is the server's peak `VmHWM` over "
        "its RSS before the attack and includes the normal request's own decoding.",
        "",
        "| attack | outcomes | peak RSS growth | 5 s later | health during | normal request during |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        name = LABELS.get(row["attack"], row["attack"])
        if row["attack"] == "idle":
            out.append(
                f"| {name} | | (RSS {row['rss_mb']:.0f} MB) | | {row['health_ms']} ms | {row['normal_ms']:.0f} ms |"
            )
            continue
        outcomes = ", ".join(f"{n} {c}" for c, n in row["outcomes"].items())
        if "refused_max_s" in row:
            outcomes += (
                f" (refused after {row['refused_median_s']:.2f} s median, {row['refused_max_s']:.2f} s max)"
            )
        out.append(
            f"| {name} | {outcomes} | {row['peak_growth_mb']:+.0f} MB | {row['settled_growth_mb']:+.0f} MB | "
            f"{row['health_ms']} ms | {row['normal_ms']:.0f} ms |"
        )
    return "\n".join(out)


def publish(data: dict[str, Any]) -> None:
    from benchmarks.report import replace_block

    block = render(data)
    for target in (REPO / "README.md", REPO / "benchmarks" / "RESULTS.md"):
        target.write_text(replace_block(target.read_text(), block, ABUSE_START, ABUSE_END))
        print(f"wrote the abuse table into {target.relative_to(REPO)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the run (machine, git, rows) here")
    parser.add_argument("--only", nargs="+", choices=ATTACKS, help="run these attacks only")
    parser.add_argument(
        "--publish", action="store_true", help="write the table into README.md and benchmarks/RESULTS.md"
    )
    args = parser.parse_args()
    if args.publish and args.only:
        parser.error("--publish needs every attack (no --only)")
    load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        cases = bench_cases(Path(tmp) / "phantoms")
        name, files = cases[0]
        normal = {k: Path(v).read_bytes() for k, v in files.items()}
        normal_request = f"{name}, {sum(map(len, normal.values())) / 1e6:.2f} MB"
        print(f"# {machine_line()} | git {git_rev()} | load {load} | normal request: {normal_request}")
        proc, port = start(Path(tmp))
        try:
            bench = Bench(proc, port, normal)
            bench.normal_s()
            idle = [bench.normal_s() for _ in range(5)]
            idle_health = [bench.health_s() for _ in range(5)]
            base = {
                "attack": "idle",
                "rss_mb": round(status_mb(proc.pid, "VmRSS"), 1),
                "health_ms": round(statistics.median(idle_health) * 1e3, 1),
                "normal_ms": round(statistics.median(idle) * 1e3, 1),
            }
            print(json.dumps(base), flush=True)
            rows = [base]
            for attack in args.only or ATTACKS:
                rows.append(bench.run(attack, getattr(bench, attack)))
        finally:
            proc.terminate()
            proc.wait(60)
    data = {
        "machine": machine_line(),
        "git": git_rev(),
        "load_average": load,
        "normal_request": normal_request,
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    if args.publish:
        publish(data)


if __name__ == "__main__":
    main()
