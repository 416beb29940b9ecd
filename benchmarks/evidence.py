"""Time the evidence and consensus add-ons of issue 18 next to the gate's own checks, on the real cases.

For every real (exam, segmentation) pair in ``../shared/data`` (the algorithm outputs and the
``brats2018-groundtruth`` expert segmentations), loaded once, after one warm-up round, ``repeats`` rounds time

* ``checks_ms``: ``evaluate_case`` (the gate's checks; no network: the stars are a fixed dummy result);
* ``slices_ms``: :func:`dqe.models.qc.explain.add_evidence` without a map (what every gated call now adds:
  the lattice disagreement map and the per-region evidence slices);
* ``map_ms``: the full-resolution map and its NIfTI file (only with ``--evidence DIR``);

and, per exam with at least three segmentations (the BraTS Toolkit exams), ``consensus_ms`` of
:func:`dqe.models.qc.consensus.consensus_dice` over all of them. Medians and quartiles in ms; the load average
is printed with them because the machine is shared.

    .venv/bin/python benchmarks/evidence.py [--repeats 3] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import SHARED_DATA, real_cases  # noqa: E402

GT = SHARED_DATA / "brats2018-groundtruth"


def _pairs() -> list[tuple[str, dict[str, Path]]]:
    pairs = real_cases()
    if GT.is_dir():
        for folder in sorted(p for p in GT.iterdir() if p.is_dir()):
            n = folder.name
            files = {
                k: folder / f"{n}_{v}.nii.gz"
                for k, v in {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair"}.items()
            }
            pairs.append((f"gt/{n}", {**files, "segmentation": folder / f"{n}_seg.nii.gz"}))
    return pairs


def _q(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=float)
    return {
        "n": int(a.size),
        "median": round(float(np.median(a)), 2),
        "p25": round(float(np.percentile(a, 25)), 2),
        "p75": round(float(np.percentile(a, 75)), 2),
    }


def main() -> None:
    from dqe.models.case import Case
    from dqe.models.qc.consensus import consensus_dice
    from dqe.models.qc.explain import add_evidence
    from dqe.models.qc.gate import evaluate_case
    from dqe.models.result import ScoreResult
    from dqe.service.evidence_io import write_evidence_map

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    pairs = _pairs()[: args.limit or None]
    if not pairs:
        print(json.dumps({"skipped": f"no real data at {SHARED_DATA}"}))
        return
    stars = ScoreResult(4.0, {"axial": 4.0, "coronal": 4.0, "sagittal": 4.0}, None, [], "m", "sha")
    cases = []
    for name, files in pairs:
        try:
            cases.append((name, Case.from_files(**files, case_id=name.replace("/", "_"))))
        except Exception as exc:  # an empty or unusable segmentation is not timed
            print(f"skip {name}: {exc}", file=sys.stderr)
    checks, slices, maps = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.repeats + 1):
            for _name, case in cases:
                t0 = time.perf_counter()
                gate = evaluate_case(case, stars)
                t1 = time.perf_counter()
                add_evidence(gate, case)
                t2 = time.perf_counter()
                _, full = add_evidence(gate, case, full_map=True)
                if full is not None:
                    write_evidence_map(case, full, tmp, case.case_id)
                t3 = time.perf_counter()
                if rnd:  # round 0 warms up
                    checks.append((t1 - t0) * 1e3)
                    slices.append((t2 - t1) * 1e3)
                    maps.append((t3 - t2) * 1e3 - (t2 - t1) * 1e3)
    by_exam: dict[str, list[np.ndarray]] = {}
    for name, case in cases:
        if name.startswith(("TCGA", "OtherEXample")):
            by_exam.setdefault(name.split("/")[0], []).append(case.labels)
    cons = []
    for labels in by_exam.values():
        if len(labels) >= 3:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                consensus_dice(labels)
                cons.append(((time.perf_counter() - t0) * 1e3, len(labels)))
    print(
        json.dumps(
            {
                "cases": len(cases),
                "repeats": args.repeats,
                "load_average": os.getloadavg(),
                "cpus": os.cpu_count(),
                "checks_ms": _q(checks),
                "slices_ms": _q(slices),
                "map_ms": _q(maps),
                "consensus_ms": _q([c for c, _ in cons]) if cons else None,
                "consensus_segmentations": sorted({n for _, n in cons}),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
