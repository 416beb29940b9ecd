"""Added time of the QC gate per case, next to the time of scoring it.

For every real segmentation in ../shared/data (or two seeded phantoms when absent) and one generated
failure per mode of the first exam, measures the gate's checks (best of ``--repeat`` runs: wall clock and
CPU time of this process) and one scoring pass, and prints a table and the ratio gate / score.

    .venv/bin/python benchmarks/bench_gate.py [--repeat 5] [--json OUT]

Timings on a shared machine are noisy; the CPU-time column is the steadier one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DQE_HOME", str(REPO / ".dqe-home"))


def _cases() -> list[tuple[str, object]]:
    from benchmarks.build_gate_eval_list import real_segmentations
    from dqe.models.case import Case
    from dqe.models.nifti import from_array
    from dqe.models.qc.brain import brain_mask_full
    from dqe.models.qc.failures import applicable_modes, generate_failure

    out: list[tuple[str, object]] = []
    images: dict[str, dict] = {}
    real = real_segmentations()
    if not real:
        from dqe.models.phantom import make_phantom

        for seed in (2, 4):
            ph = make_phantom(seed=seed)
            out.append((f"phantom-{seed}", Case.from_arrays(**ph.arrays(), affine=ph.affine)))
        base = out[-1][1]
    else:
        for name, files in real:
            key = str(files["t1c"])
            case = Case.from_files(**files, case_id=name, images=images.get(key))  # type: ignore[arg-type]
            images.setdefault(key, dict(zip(("t1c", "t1", "t2", "flair"), case.images, strict=True)))
            out.append((name, case))
        base = out[0][1]
    brain = brain_mask_full(base.images)  # type: ignore[attr-defined]
    imgs = dict(zip(("t1c", "t1", "t2", "flair"), base.images, strict=True))  # type: ignore[attr-defined]
    for mode in applicable_modes(base.labels):  # type: ignore[attr-defined]
        if mode == "empty":
            continue
        labels = generate_failure(base.labels, mode, 0, brain)  # type: ignore[attr-defined]
        seg = from_array(labels, "segmentation", base.segmentation.affine)  # type: ignore[attr-defined]
        out.append((f"failure:{mode}", Case(**imgs, segmentation=seg)))
    return out


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from dqe.models.qc.gate import evaluate_case
    from dqe.service.engine import Engine, EngineConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = parser.parse_args(argv)

    engine = Engine(EngineConfig(intra_op_threads=args.threads))
    rows = []
    print(f"{'case':56s} {'verdict':7s} {'gate wall':>9s} {'gate cpu':>9s} {'score':>8s} {'ratio':>6s}")
    for name, case in _cases():
        t0 = time.perf_counter()
        result = engine.score_case(case)  # type: ignore[arg-type]
        score_ms = (time.perf_counter() - t0) * 1e3
        walls, cpus = [], []
        for _ in range(args.repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            gate = evaluate_case(case, result)  # type: ignore[arg-type]
            walls.append((time.perf_counter() - w0) * 1e3)
            cpus.append((time.process_time() - c0) * 1e3)
        row = {
            "case": name,
            "verdict": gate.verdict.value,
            "gate_wall_ms": min(walls),
            "gate_cpu_ms": min(cpus),
            "score_ms": score_ms,
        }
        rows.append(row)
        print(
            f"{name[:56]:56s} {row['verdict']:7s} {row['gate_wall_ms']:9.1f} {row['gate_cpu_ms']:9.1f} "
            f"{score_ms:8.1f} {row['gate_wall_ms'] / score_ms:6.3f}"
        )
    wall = np.array([r["gate_wall_ms"] for r in rows])
    cpu = np.array([r["gate_cpu_ms"] for r in rows])
    score = np.array([r["score_ms"] for r in rows])
    summary = {
        "gate_wall_ms": {"median": float(np.median(wall)), "max": float(wall.max())},
        "gate_cpu_ms": {"median": float(np.median(cpu)), "max": float(cpu.max())},
        "score_ms_median": float(np.median(score)),
        "ratio_gate_to_score_median": float(np.median(wall / score)),
        "cases_over_50ms_cpu": int((cpu > 50).sum()),
        "n": len(rows),
    }
    print(
        f"\ngate: median {summary['gate_wall_ms']['median']:.1f} ms wall / {summary['gate_cpu_ms']['median']:.1f} ms CPU, "
        f"max {summary['gate_wall_ms']['max']:.1f} / {summary['gate_cpu_ms']['max']:.1f}; "
        f"scoring median {summary['score_ms_median']:.0f} ms; gate adds {100 * summary['ratio_gate_to_score_median']:.1f}% "
        f"(median); {summary['cases_over_50ms_cpu']}/{len(rows)} cases over 50 ms CPU"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
