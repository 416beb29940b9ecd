"""Batch scoring vs the reference package scoring the same segmentations one by one.

Data: the two BraTS Toolkit cases in ../shared/data (TCGA-DU-7294 and OtherEXampleFromTCIA), each with five
algorithm outputs and two fusions = 14 segmentations. A temporary dataset of symlinks is built under /tmp
(CASES_DIR/<case>/<images>, one SUBMISSION_DIR per algorithm); nothing is copied.

Each side runs in its own child process so its peak RSS is its own:

* ``reference``: ``deep_quality_estimation.DQE().predict(t1c=Path, ...)`` per segmentation (torch, CPU);
* ``batch``: :func:`dqe.service.batch.run_batch` (local engine: decode once per case, prefetch, one engine call
  per case), as ``dqe batch`` runs it; mosaics on unless ``--no-images``; no ground truth.

Prints segmentations/s for both (scoring loop only, model load excluded, and wall time including it), the
ratio, peak RSS, and the largest star difference between the two (parity check).

    .venv/bin/python benchmarks/bench_batch.py [--repeat 3] [--replicate 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DQE_SHARED_DATA", REPO.parent / "shared" / "data"))
TOOLKIT = SHARED / "brainlesion-tutorials" / "BraTS-Toolkit" / "data"
CASES = ("TCGA-DU-7294", "OtherEXampleFromTCIA")
os.environ.setdefault("DQE_HOME", str(REPO / ".dqe-home"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def build_dataset(root: Path, replicate: int = 1) -> tuple[Path, list[Path], list[dict[str, str]]]:
    """Symlink dataset; returns (cases_dir, submission_dirs, jobs as explicit file maps)."""
    cases_dir = root / "cases"
    subs: dict[str, Path] = {}
    jobs: list[dict[str, str]] = []
    for copy in range(replicate):
        for case in CASES:
            src = TOOLKIT / case / f"{case}_brainles"
            if not src.is_dir():
                raise SystemExit(
                    f"missing {src}: the shared BraTS Toolkit data is needed (set DQE_SHARED_DATA)"
                )
            case_id = case if replicate == 1 else f"{case}-r{copy}"
            folder = cases_dir / case_id
            folder.mkdir(parents=True, exist_ok=True)
            images = {}
            for field, token in (("t1c", "t1c"), ("t1", "t1"), ("t2", "t2"), ("flair", "fla")):
                target = src / "raw_bet" / f"{case}_{token}_bet.nii.gz"
                link = folder / f"{case_id}_{token}_bet.nii.gz"
                link.symlink_to(target)
                images[field] = str(target)
            segs = sorted((src / "segmentation").glob("*.nii.gz")) + sorted((src / "fusion").glob("*.nii.gz"))
            for seg in segs:
                team = seg.name.split(".")[0]
                team = f"fusion-{team}" if seg.parent.name == "fusion" else team
                sub = subs.setdefault(team, root / "submissions" / team)
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"{case_id}.nii.gz").symlink_to(seg)
                jobs.append({**images, "segmentation": str(seg), "case": case_id, "team": team})
    return cases_dir, sorted(subs.values()), jobs


def run_reference(jobs: list[dict[str, str]]) -> dict:
    t0 = time.perf_counter()
    from deep_quality_estimation import DQE

    model = DQE(device="cpu")
    t1 = time.perf_counter()
    stars = {}
    for job in jobs:
        mean, _views = model.predict(
            t1c=Path(job["t1c"]),
            t1=Path(job["t1"]),
            t2=Path(job["t2"]),
            flair=Path(job["flair"]),
            segmentation=Path(job["segmentation"]),
        )
        stars[f"{job['case']}/{job['team']}"] = float(mean)
    t2 = time.perf_counter()
    return {
        "n": len(jobs),
        "load_s": t1 - t0,
        "run_s": t2 - t1,
        "wall_s": t2 - t0,
        "rss_mb": peak_rss_mb(),
        "stars": stars,
    }


def run_batch_side(
    cases: str, subs: list[str], out: str, workers: int, threads: int, images: bool, precision: str
) -> dict:
    t0 = time.perf_counter()
    from dqe.service.batch import BatchOptions, run_batch
    from dqe.service.engine import EngineConfig

    outcome = run_batch(
        cases,
        subs,
        out,
        engine_config=EngineConfig(intra_op_threads=threads, precision=precision),
        options=BatchOptions(progress=False, workers=workers, images=images),
    )
    wall = time.perf_counter() - t0
    summary = json.loads((Path(out) / "summary.json").read_text())
    import pandas as pd

    df = pd.read_parquet(Path(out) / "scores.parquet")
    stars = {f"{r.case}/{r.team}": float(r.mean_stars) for r in df.itertuples()}
    return {
        "n": outcome.scored_now,
        "failed": outcome.failed,
        "run_s": float(summary["run_s"]),
        "wall_s": wall,
        "rss_mb": peak_rss_mb(),
        "stars": stars,
    }


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--repeat", type=int, default=3, help="batch repetitions (fresh output folder each; best kept)"
    )
    p.add_argument(
        "--replicate", type=int, default=1, help="copies of the two cases (steady-state throughput)"
    )
    p.add_argument("--workers", type=int, default=2, help="batch decoding threads")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--no-images", action="store_true", help="batch without report mosaics")
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated engine precisions for the batch side (e.g. fp32,bf16)",
    )
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:  # inside a child process
        kind, payload = args.child[0], json.loads(args.child[1])
        result = run_reference(payload["jobs"]) if kind == "reference" else run_batch_side(**payload)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="dqe-bench-batch-") as tmp:
        root = Path(tmp)
        cases_dir, subs, jobs = build_dataset(root, args.replicate)
        n = len(jobs)
        print(
            f"{n} segmentations ({len(CASES) * args.replicate} cases x {len(subs)} algorithms/fusions); cpus={os.cpu_count()}"
        )
        ref = None
        if not args.skip_reference:
            ref = child(["--child", "reference", json.dumps({"jobs": jobs})])
        sides: dict[str, list[dict]] = {}
        for precision in [x.strip() for x in args.precision.split(",") if x.strip()]:
            runs = sides.setdefault(precision, [])
            for i in range(max(1, args.repeat)):
                payload = {
                    "cases": str(cases_dir),
                    "subs": [str(s) for s in subs],
                    "out": str(root / f"out-{precision}-{i}"),
                    "workers": args.workers,
                    "threads": args.threads,
                    "images": not args.no_images,
                    "precision": precision,
                }
                runs.append(child(["--child", "batch", json.dumps(payload)]))

    rows = []
    if ref is not None:
        rows.append(("reference DQE().predict, one by one", ref))
    best = {prec: min(runs, key=lambda r: r["run_s"]) for prec, runs in sides.items()}
    for prec, runs in sides.items():
        rows.append((f"dqe batch {prec} (best of {len(runs)})", best[prec]))
    print(
        f"\n{'side':40s} {'n':>4s} {'load+run s':>11s} {'run s':>8s} {'seg/s':>8s} {'seg/s wall':>10s} {'peak RSS MB':>12s}"
    )
    for name, r in rows:
        print(
            f"{name:40s} {r['n']:4d} {r['wall_s']:11.2f} {r['run_s']:8.2f} {r['n'] / r['run_s']:8.2f} "
            f"{r['n'] / r['wall_s']:10.2f} {r['rss_mb']:12.0f}"
        )
    figures: dict = {"n": n, "cpus": os.cpu_count(), "batch": {}}
    for prec, runs in sides.items():
        print(f"batch {prec} runs (s):", ", ".join(f"{r['run_s']:.2f}" for r in runs))
        b = best[prec]
        entry = {k: v for k, v in b.items() if k != "stars"}
        entry["runs_s"] = [r["run_s"] for r in runs]
        if ref is not None:
            ratio = (b["n"] / b["run_s"]) / (ref["n"] / ref["run_s"])
            wall_ratio = (b["n"] / b["wall_s"]) / (ref["n"] / ref["wall_s"])
            diffs = [abs(b["stars"][k] - v) for k, v in ref["stars"].items() if k in b["stars"]]
            print(
                f"  {prec}: speed-up {ratio:.1f}x (scoring loop), {wall_ratio:.1f}x (wall incl. model load); "
                f"max |stars - reference| over {len(diffs)} segmentations: {max(diffs):.2e}"
            )
            entry.update({"speedup": ratio, "speedup_wall": wall_ratio, "max_abs_star_diff": max(diffs)})
        figures["batch"][prec] = entry
    if ref is not None:
        figures["reference"] = {k: v for k, v in ref.items() if k != "stars"}
    print("target: >= 10 segmentations/s on 2 cores (timings on a shared machine are noisy)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
