"""Batch throughput: ``dqe batch`` over real segmentations vs the reference scoring them one by one.

Data: the two BraTS Toolkit exams in ``../shared/data`` (TCGA-DU-7294, OtherEXampleFromTCIA), each with five
algorithm outputs and two fusions (14 segmentations). :func:`build_dataset` lays them out as ``dqe batch``
reads them (``CASES/<case>/`` images, one ``SUBMISSION/<team>/<case>.nii.gz`` folder per algorithm) with
symlinks; nothing is copied.

Child sides (``python -m benchmarks.batch SPEC``), both warm, ``repeats`` passes each:

* ``reference``: ``DQE(device="cpu")`` loaded, one warm-up ``predict``, then each pass calls ``predict`` on
  every segmentation in turn;
* ``ours``: one warm-up :func:`dqe.service.batch.run_batch` (imports, page cache), then each pass is a
  ``run_batch`` into a fresh output folder, exactly as ``dqe batch CASES SUBS --out OUT`` runs it: building
  the engine, decoding, QC gate, mosaics, journal, CSV/Parquet, summary and HTML report included. The
  reference's passes include none of that work and no model load, so the comparison is conservative for us.

A pass's throughput is segmentations / pass seconds; the report gives the median over passes for both sides.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.proc import emit, read_spec

logger = logging.getLogger(__name__)

CASES = ("TCGA-DU-7294", "OtherEXampleFromTCIA")
TOKENS = (("t1c", "t1c"), ("t1", "t1"), ("t2", "t2"), ("flair", "fla"))


class NoBatchData(RuntimeError):
    """The shared BraTS Toolkit exams are not on this machine."""


def build_dataset(
    shared: Path, root: Path, max_cases: int = 0, max_segmentations: int = 0
) -> tuple[Path, list[Path], list[dict[str, str]]]:
    """Symlink dataset under ``root``: ``(cases_dir, submission_dirs, jobs)``; a job maps the five fields
    (plus ``case``/``team``) to file paths. ``max_cases``/``max_segmentations`` (per exam) trim it for quick
    runs (0 = all).

    Raises:
        NoBatchData: an exam folder is missing under ``shared``.
    """
    toolkit = shared / "brainlesion-tutorials" / "BraTS-Toolkit" / "data"
    cases_dir = root / "cases"
    subs: dict[str, Path] = {}
    jobs: list[dict[str, str]] = []
    for case in CASES[: max_cases or None]:
        src = toolkit / case / f"{case}_brainles"
        if not src.is_dir():
            raise NoBatchData(f"missing {src} (the shared BraTS Toolkit exams; set DQE_SHARED_DATA)")
        folder = cases_dir / case
        folder.mkdir(parents=True, exist_ok=True)
        images = {}
        for field, token in TOKENS:
            target = src / "raw_bet" / f"{case}_{token}_bet.nii.gz"
            (folder / f"{case}_{token}_bet.nii.gz").symlink_to(target)
            images[field] = str(target)
        segs = sorted((src / "segmentation").glob("*.nii.gz")) + sorted((src / "fusion").glob("*.nii.gz"))
        for seg in segs[: max_segmentations or None]:
            team = seg.name.split(".")[0]
            team = f"fusion-{team}" if seg.parent.name == "fusion" else team
            sub = subs.setdefault(team, root / "submissions" / team)
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{case}.nii.gz").symlink_to(seg)
            jobs.append({**images, "segmentation": str(seg), "case": case, "team": team})
    return cases_dir, sorted(subs.values()), jobs


def reference_side(jobs: list[dict[str, str]], repeats: int) -> dict[str, Any]:
    from deep_quality_estimation import DQE

    model = DQE(device="cpu")

    def predict(job: dict[str, str]) -> float:
        mean, _ = model.predict(**{k: Path(job[k]) for k in ("t1c", "t1", "t2", "flair", "segmentation")})
        return float(mean)

    predict(jobs[0])  # warm-up
    pass_s, stars = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for job in jobs:
            stars[f"{job['case']}/{job['team']}"] = predict(job)
        pass_s.append(time.perf_counter() - t0)
    return {"n": len(jobs), "pass_s": pass_s, "stars": stars}


def our_side(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from dqe.service.batch import BatchOptions, run_batch
    from dqe.service.engine import EngineConfig

    config = EngineConfig(intra_op_threads=int(spec.get("threads", 0)), precision=spec["precision"])
    options = BatchOptions(progress=False)
    out_root = Path(spec["out"])

    def one(name: str) -> tuple[float, Any]:
        t0 = time.perf_counter()
        outcome = run_batch(
            spec["cases_dir"], spec["subs"], out_root / name, engine_config=config, options=options
        )
        return time.perf_counter() - t0, outcome

    one("warm-up")
    pass_s, scored, failed = [], 0, 0
    for i in range(int(spec["repeats"])):
        seconds, outcome = one(f"pass-{i}")
        pass_s.append(seconds)
        scored, failed = outcome.scored_now, outcome.failed
    df = pd.read_parquet(out_root / f"pass-{int(spec['repeats']) - 1}" / "scores.parquet")
    stars = {f"{r.case}/{r.team}": float(r.mean_stars) for r in df.itertuples()}
    return {"n": scored, "failed": failed, "pass_s": pass_s, "stars": stars, "cpus": os.cpu_count()}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["side"] == "reference":
        return reference_side(spec["jobs"], int(spec["repeats"]))
    return our_side(spec)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    emit(measure(read_spec(sys.argv)))
