"""Scoring core vs the reference package, on the same cases, in one run.

Measures for the reference (``deep_quality_estimation.DQE.predict``) and for ours (``Case.from_files`` +
``Engine.score_case``, ONNX Runtime fp32):

* warm ms per exam (p50 over repeats, model already loaded), each implementation in its own process;
* cold: a fresh process from start to its first printed score (imports, model load, decode, inference);
* peak RSS of those processes (``ru_maxrss`` via ``os.wait4``);
* the largest |difference| in stars between the two.

Usage: ``python benchmarks/bench_core.py [--repeats 5] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench_cases, git_rev, machine_line  # noqa: E402

FIELDS = ("t1c", "t1", "t2", "flair", "segmentation")


def _worker(impl: str, cases_json: str, repeats: int) -> None:
    cases = [(n, {k: Path(v) for k, v in f.items()}) for n, f in json.loads(cases_json)]
    out: dict[str, dict] = {}
    if impl == "reference":
        from deep_quality_estimation import DQE

        model = DQE(device="cpu")

        def score(files):
            mean, views = model.predict(**{k: files[k] for k in FIELDS})
            return float(mean), {k.lower(): float(v) for k, v in views.items()}
    else:
        from dqe.models.case import Case
        from dqe.service.engine import Engine

        engine = Engine()

        def score(files):
            r = engine.score_case(Case.from_files(**files))
            return r.mean_stars, r.views

    for name, files in cases:
        score(files)  # warm-up
        times, result = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = score(files)
            times.append((time.perf_counter() - t0) * 1e3)
        out[name] = {
            "p50_ms": statistics.median(times),
            "min_ms": min(times),
            "mean": result[0],
            "views": result[1],
        }
    print(json.dumps(out))


def _run(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in KiB and stdout of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return wall, usage.ru_maxrss, stdout


COLD = {
    "reference": (
        "from pathlib import Path; import json, sys; f = json.loads(sys.argv[1]); "
        "from deep_quality_estimation import DQE; m, v = DQE(device='cpu').predict(**{k: Path(p) for k, p in f.items()}); print(m)"
    ),
    "ours": (
        "import json, sys; f = json.loads(sys.argv[1]); from dqe.models.case import Case; from dqe.service.engine import Engine; "
        "print(Engine().score_case(Case.from_files(**f)).mean_stars)"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", choices=("reference", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.cases, args.repeats)
        return

    cases = bench_cases()
    cases_json = json.dumps([(n, {k: str(v) for k, v in f.items()}) for n, f in cases])
    warm, rss = {}, {}
    for impl in ("reference", "ours"):
        _, rss[impl], stdout = _run(
            [
                sys.executable,
                __file__,
                "--worker",
                impl,
                "--cases",
                cases_json,
                "--repeats",
                str(args.repeats),
            ]
        )
        warm[impl] = json.loads(stdout.strip().splitlines()[-1])
    cold = {}
    first = json.dumps({k: str(v) for k, v in cases[0][1].items()})
    for impl in ("reference", "ours"):
        walls, peaks = [], []
        for _ in range(3):
            wall, peak, _ = _run([sys.executable, "-c", COLD[impl], first])
            walls.append(wall)
            peaks.append(peak)
        cold[impl] = {"median_s": statistics.median(walls), "peak_rss_mib": max(peaks) / 1024}

    print(f"# bench_core  ({machine_line()}, commit {git_rev()}, {args.repeats} warm repeats)")
    print(f"{'case':24s} {'ref p50 ms':>11s} {'ours p50 ms':>12s} {'speed-up':>9s} {'max |d| stars':>14s}")
    ratios, diffs = [], []
    for name, _ in cases:
        r, o = warm["reference"][name], warm["ours"][name]
        d = max(abs(r["views"][v] - o["views"][v]) for v in ("axial", "coronal", "sagittal"))
        ratios.append(r["p50_ms"] / o["p50_ms"])
        diffs.append(d)
        print(f"{name:24s} {r['p50_ms']:11.1f} {o['p50_ms']:12.1f} {ratios[-1]:8.1f}x {d:14.2e}")
    ref_p50 = statistics.median(w["p50_ms"] for w in warm["reference"].values())
    our_p50 = statistics.median(w["p50_ms"] for w in warm["ours"].values())
    print(
        f"{'median over cases':24s} {ref_p50:11.1f} {our_p50:12.1f} {ref_p50 / our_p50:8.1f}x {max(diffs):14.2e}"
    )
    print()
    print(f"{'cold process -> first score':30s} {'reference':>10s} {'ours':>10s} {'ratio':>7s}")
    print(
        f"{'median wall s (3 runs)':30s} {cold['reference']['median_s']:10.2f} {cold['ours']['median_s']:10.2f} "
        f"{cold['reference']['median_s'] / cold['ours']['median_s']:6.1f}x"
    )
    print(
        f"{'peak RSS MiB (cold run)':30s} {cold['reference']['peak_rss_mib']:10.0f} {cold['ours']['peak_rss_mib']:10.0f}"
    )
    print(f"{'peak RSS MiB (warm loop)':30s} {rss['reference'] / 1024:10.0f} {rss['ours'] / 1024:10.0f}")
    if args.json:
        args.json.write_text(json.dumps({"warm": warm, "cold": cold, "warm_rss_kib": rss}, indent=2))


if __name__ == "__main__":
    main()
