"""``make bench``: every speed figure of README and RESULTS.md from ONE run on ONE machine, as ONE JSON report.

Sections (each side in its own child process, both sides warm, the same statistic for both sides):

* ``exam``: one exam from ``.nii.gz`` to stars, reference ``DQE.predict`` vs ours in every mode this machine
  runs, plus the network alone on the three views (:mod:`benchmarks.exam`);
* ``floor``: the network's multiply-accumulates over this CPU's measured matmul peak (:mod:`benchmarks.floor`),
  set against each mode's network time from ``exam``;
* ``cold``: a fresh process to its first printed score (reference ``DQE(...).predict`` via ``python -c``, ours
  ``dqe score``), wall seconds and peak RSS, the two sides alternated;
* ``batch``: ``dqe batch`` over the real BraTS Toolkit segmentations vs the reference one by one
  (:mod:`benchmarks.batch`);
* ``grpc``: ``dqe serve`` over loopback, one case at a time and under concurrency, bytes / paths / views
  (:mod:`benchmarks.grpc_load`);
* ``gate``: the QC gate's added time next to the score's (:mod:`benchmarks.gate`).

The statistic is the median over samples (never a best-of); a normal run takes >= 7 samples per figure on each
side, p95 needs >= 20 samples and p99 >= 100 (:mod:`benchmarks.stats`); ratios are computed here from this
run's medians. ``--quick`` takes fewer samples to prove the pipeline; its JSON says ``"quick": true`` and
``benchmarks/report.py`` refuses to publish it.

    .venv/bin/python -m benchmarks.run [--quick] [--json benchmarks/out/bench.json] [--sections exam,gate]

Exit status 1 when a section failed (the others still run and the JSON records the error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the benchmarks package importable
    sys.path.insert(0, str(REPO))

from benchmarks import report  # noqa: E402
from benchmarks.common import SHARED, bench_cases  # noqa: E402
from benchmarks.machine import load_average, machine_info  # noqa: E402
from benchmarks.proc import ChildFailed, run_child, run_process  # noqa: E402
from benchmarks.stats import MIN_REPEATS, ratio, summarise  # noqa: E402

logger = logging.getLogger("benchmarks.run")

SCHEMA = "dqe-bench/1"
SECTIONS = ("exam", "floor", "cold", "batch", "grpc", "gate")
FIELDS = ("t1c", "t1", "t2", "flair", "segmentation")
DEFAULT_JSON = REPO / "benchmarks" / "out" / "bench.json"


@dataclass(frozen=True)
class Plan:
    """How many samples each section takes (normal run: every figure from >= ``MIN_REPEATS`` samples)."""

    # Per case; 25 x 4 exams = 100 samples per side and mode, so each case has >= 20 (its p95) and the mode
    # >= 100 (its p99): the exam tail of issue 21 is judged per case, p95 against that case's median.
    exam_repeats: int = 25
    # The reference takes ~8 s an exam on 2 cores: its median (the ratios' denominator) from the usual 7.
    exam_reference_repeats: int = MIN_REPEATS
    exam_cases: int = 0  # 0 = every exam
    cold_runs: int = MIN_REPEATS
    batch_passes: int = MIN_REPEATS
    batch_exams: int = 0  # 0 = both BraTS Toolkit exams (14 segmentations)
    batch_segmentations: int = 0  # per exam; 0 = all seven
    grpc_sequential: int = 30
    grpc_concurrent: int = 100  # >= 100 so p99 is printed
    grpc_clients: int = 8
    gate_repeats: int = MIN_REPEATS
    gate_cases: int = 0  # 0 = every real segmentation
    floor_repeats: int = MIN_REPEATS


QUICK = Plan(
    exam_repeats=1,
    exam_reference_repeats=1,
    exam_cases=2,
    cold_runs=1,
    batch_passes=1,
    batch_exams=1,
    batch_segmentations=3,
    grpc_sequential=2,
    grpc_concurrent=4,
    grpc_clients=2,
    gate_repeats=1,
    gate_cases=2,
    floor_repeats=1,
)


def _cases_json(cases: list[tuple[str, dict[str, Path]]]) -> list[list[Any]]:
    return [[name, {k: str(v) for k, v in files.items()}] for name, files in cases]


def max_abs_delta(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Largest |a - b| over the keys both have (values: floats or equal-length lists of floats)."""
    deltas: list[float] = []
    for key in a.keys() & b.keys():
        x, y = a[key], b[key]
        pairs = zip(x, y, strict=True) if isinstance(x, list) else [(x, y)]
        deltas.extend(abs(float(p) - float(q)) for p, q in pairs)
    return max(deltas) if deltas else None


# ----------------------------------------------------------------------------------------------- sections
def exam_section(
    plan: Plan, cases: list[tuple[str, dict[str, Path]]], modes: list[str], threads: int
) -> dict[str, Any]:
    base = {"cases": _cases_json(cases), "repeats": plan.exam_repeats, "threads": threads}
    ref = run_child("exam", {**base, "side": "reference", "repeats": plan.exam_reference_repeats}).result
    ours_run = run_child("exam", {**base, "side": "ours", "modes": modes})
    ours = ours_run.result
    ref_exam, ref_model = summarise(ref["exam_ms"]["reference"]), summarise(ref["model_ms"]["reference"])
    names = [n for n, _ in cases]
    out: dict[str, Any] = {
        "cases": names,
        "repeats_per_case": plan.exam_repeats,
        "reference_repeats_per_case": plan.exam_reference_repeats,
        "views_shape": ours["views_shape"],
        "reference": {
            "exam_ms": ref_exam,
            "model_ms": ref_model,
            "load_ms": ref["load_ms"]["reference"],
            **case_tails(ref["exam_ms"]["reference"], names),
        },
        "modes": {},
    }
    fp32_stars = ours["stars"].get("fp32", {})
    for mode in modes:
        exam, model = summarise(ours["exam_ms"][mode]), summarise(ours["model_ms"][mode])
        out["modes"][mode] = {
            "exam_ms": exam,
            "model_ms": model,
            "load_ms": ours["load_ms"][mode],
            "speedup_exam": ratio(ref_exam["median"], exam["median"]),
            "speedup_model": ratio(ref_model["median"], model["median"]),
            "max_abs_stars_vs_reference": max_abs_delta(ours["stars"][mode], ref["stars"]["reference"]),
            "max_abs_stars_vs_fp32": max_abs_delta(ours["stars"][mode], fp32_stars),
            **case_tails(ours["exam_ms"][mode], [n for n, _ in cases]),
        }
    return out


def case_tails(samples: list[float], names: list[str]) -> dict[str, Any]:
    """Per-case summaries of interleaved exam samples (sample ``i`` is case ``i % len(names)``, the order of
    ``benchmarks/exam.py``) and the worst case's p95 over its own median (``None`` below 20 samples a case)."""
    by_case = {name: summarise(samples[k :: len(names)]) for k, name in enumerate(names)}
    tails = [ratio(c["p95"], c["median"]) for c in by_case.values()]
    return {
        "exam_ms_by_case": by_case,
        "worst_case_p95_over_median": max((t for t in tails if t is not None), default=None),
    }


def floor_section(plan: Plan, modes: list[str], exam: dict[str, Any] | None) -> dict[str, Any]:
    raw = run_child("floor", {"repeats": plan.floor_repeats, "modes": modes}).result
    gflop = 2.0 * raw["macs_per_exam"] / 1e9
    peak = raw["peak_gflops"]
    # The fp32 peak is the faster of the two libraries' median matmul rates; bf16 has only OpenVINO's.
    by_precision = {
        "fp32": max(peak.get("numpy_fp32", 0.0), peak.get("openvino_f32", 0.0)),
        "bf16": peak.get("openvino_bf16"),
    }
    out: dict[str, Any] = {**raw, "gflop_per_exam": gflop, "modes": {}}
    for mode in modes:
        precision = "bf16" if mode == "bf16" else "fp32" if mode.startswith("fp32") else None
        rate = by_precision.get(precision) if precision else None
        if not rate:
            continue
        floor_ms = gflop / rate * 1e3
        model_ms = exam["modes"][mode]["model_ms"]["median"] if exam and mode in exam["modes"] else None
        out["modes"][mode] = {
            "peak_gflops": rate,
            "floor_ms": floor_ms,
            "share_of_peak": ratio(floor_ms, model_ms),
        }
    return out


def cold_section(plan: Plan, case: dict[str, Path]) -> dict[str, Any]:
    files = {k: str(v) for k, v in case.items()}
    reference = [
        sys.executable,
        "-c",
        "import json, sys; from pathlib import Path; from deep_quality_estimation import DQE; "
        "f = json.loads(sys.argv[1]); m, _ = DQE(device='cpu').predict(**{k: Path(v) for k, v in f.items()}); "
        "print(json.dumps({'mean_stars': float(m)}))",
        json.dumps(files),
    ]
    ours = [sys.executable, "-m", "dqe.service.cli", "score", "--t1c", files["t1c"], "--t1", files["t1"]]
    ours += ["--t2", files["t2"], "--flair", files["flair"], "--seg", files["segmentation"]]
    walls: dict[str, list[float]] = {"reference": [], "ours": []}
    rss: dict[str, list[float]] = {"reference": [], "ours": []}
    stars: dict[str, float] = {}
    for _ in range(plan.cold_runs):  # alternate, so load bursts hit both sides alike
        for side, cmd in (("reference", reference), ("ours", ours)):
            run = run_process(cmd, timeout_s=600)
            if not isinstance(run.result, dict) or "mean_stars" not in run.result:
                raise ChildFailed(f"cold {side} printed no score: {run.stdout[-300:]!r}")
            walls[side].append(run.wall_s)
            rss[side].append(run.peak_rss_mib)
            stars[side] = float(run.result["mean_stars"])
    out: dict[str, Any] = {
        side: {"wall_s": summarise(walls[side]), "peak_rss_mib": summarise(rss[side])} for side in walls
    }
    out["speedup_wall"] = ratio(out["reference"]["wall_s"]["median"], out["ours"]["wall_s"]["median"])
    out["abs_stars_diff"] = abs(stars["reference"] - stars["ours"])
    out["commands"] = {
        "reference": "python -c 'DQE(device=\"cpu\").predict(...)'",
        "ours": "dqe score --t1c ...",
    }
    return out


def batch_section(plan: Plan, modes: list[str], threads: int) -> dict[str, Any]:
    from benchmarks.batch import build_dataset

    with tempfile.TemporaryDirectory(prefix="dqe-bench-batch-") as tmp:
        cases_dir, subs, jobs = build_dataset(SHARED, Path(tmp), plan.batch_exams, plan.batch_segmentations)
        ref = run_child("batch", {"side": "reference", "jobs": jobs, "repeats": plan.batch_passes})
        n = len(jobs)
        ref_rate = summarise([n / s for s in ref.result["pass_s"]])
        out: dict[str, Any] = {
            "segmentations": n,
            "exams": len({j["case"] for j in jobs}),
            "passes": plan.batch_passes,
            "reference": {"seg_per_s": ref_rate, "peak_rss_mib": ref.peak_rss_mib},
            "modes": {},
        }
        for mode in modes:
            spec = {
                "side": "ours",
                "precision": mode,
                "cases_dir": str(cases_dir),
                "subs": [str(s) for s in subs],
                "out": str(Path(tmp) / f"out-{mode}"),
                "repeats": plan.batch_passes,
                "threads": threads,
            }
            run = run_child("batch", spec)
            if run.result["n"] != n or run.result["failed"]:
                raise ChildFailed(
                    f"dqe batch {mode} scored {run.result['n']}/{n}, {run.result['failed']} failed"
                )
            rate = summarise([n / s for s in run.result["pass_s"]])
            out["modes"][mode] = {
                "seg_per_s": rate,
                "speedup": ratio(rate["median"], ref_rate["median"]),
                "peak_rss_mib": run.peak_rss_mib,
                "max_abs_stars_vs_reference": max_abs_delta(run.result["stars"], ref.result["stars"]),
            }
    return out


def grpc_section(
    plan: Plan, cases: list[tuple[str, dict[str, Path]]], exam: dict[str, Any] | None, threads: int
) -> dict[str, Any]:
    root = Path(os.path.commonpath([str(Path(v).resolve().parent) for _, f in cases for v in f.values()]))
    spec = {
        "cases": _cases_json(cases),
        "allowed_root": str(root),
        "sequential": plan.grpc_sequential,
        "concurrent": plan.grpc_concurrent,
        "clients": plan.grpc_clients,
        "threads": threads,
    }
    raw = run_child("grpc_load", spec, timeout_s=1800).result
    ref_exam = exam["reference"]["exam_ms"]["median"] if exam else None
    ref_model = exam["reference"]["model_ms"]["median"] if exam else None
    # What each kind is compared with: like for like (see benchmarks/grpc_load.py).
    against = {"bytes": ref_exam, "paths": ref_exam, "views_sliced": ref_exam, "views": ref_model}
    out: dict[str, Any] = {
        "start_to_serving_s": raw["start_to_serving_s"],
        "server": raw["server"],
        "case_bytes_median": raw["request_bytes_median"]["bytes"],
        "compared_with": {
            "bytes": "reference exam",
            "paths": "reference exam",
            "views_sliced": "reference exam",
            "views": "reference model only",
        },
        "sequential": {},
        "concurrent": {},
    }
    for kind, r in raw["sequential"].items():
        lat = summarise(r["latency_ms"])
        out["sequential"][kind] = {
            "latency_ms": lat,
            "n_errors": r["n_errors"],
            "errors": r["errors"],
            "speedup": ratio(against[kind], lat["median"]),
        }
    for kind, r in raw["concurrent"].items():
        lat = summarise(r["latency_ms"])
        rate = len(r["latency_ms"]) / r["wall_s"] if r["wall_s"] > 0 else None
        ref_ms = against[kind]
        ref_rate = 1e3 / ref_ms if ref_ms else None
        out["concurrent"][kind] = {
            "clients": r["clients"],
            "latency_ms": lat,
            "cases_per_s": rate,
            "n_errors": r["n_errors"],
            "errors": r["errors"],
            "speedup": ratio(rate, ref_rate),
        }
    return out


def gate_section(plan: Plan, cases: list[tuple[str, dict[str, Path]]], threads: int) -> dict[str, Any]:
    cases = cases[: plan.gate_cases or None]
    raw = run_child(
        "gate", {"cases": _cases_json(cases), "repeats": plan.gate_repeats, "threads": threads}
    ).result
    score, gate = summarise(raw["score_ms"]), summarise(raw["gate_ms"])
    return {
        "segmentations": raw["n_cases"],
        "repeats": plan.gate_repeats,
        "score_ms": score,
        "gate_ms": gate,
        "gate_over_score": ratio(gate["median"], score["median"]),
        "verdicts": raw["verdicts"],
    }


# ----------------------------------------------------------------------------------------------- inputs
def gate_cases() -> list[tuple[str, dict[str, Path]]]:
    """Every real segmentation in the shared data, the expert ground truths of ``brats2018-groundtruth``
    included (or the exam cases, phantoms included, without it)."""
    from benchmarks.gate_conformal import gt_exams
    from dqe.service.calibration import discover_cases

    real = discover_cases(SHARED)
    if real:
        out = [(c.name, {k: Path(v) for k, v in c.files.items()}) for c in real]
        gt = (SHARED / "brats2018-groundtruth").is_dir()
        return out + ([(exam, files) for exam, files, _ in gt_exams(SHARED)] if gt else [])
    return bench_cases(Path(tempfile.gettempdir()) / "dqe-bench-phantoms")


def precision_errors(modes: list[str]) -> dict[str, Any]:
    """Each mode's recorded error against fp32 from the model card, or ``None`` where none is recorded."""
    from dqe.models.artifacts import ensure_model
    from dqe.models.registry import DEFAULT_MODEL_ID

    card = ensure_model(DEFAULT_MODEL_ID, build=False).card
    recorded = card.get("precision_errors") or {}
    out: dict[str, Any] = {}
    for mode in modes:
        if mode == "fp32":
            continue
        entry = recorded.get(mode)
        keep = (
            "max_abs_stars",
            "mean_abs_stars",
            "n_views",
            "cpu",
            "measured_at",
            "within_budget",
            "budget_stars",
        )
        out[mode] = {k: entry.get(k) for k in keep} if isinstance(entry, dict) else None
    parity = card.get("parity") or {}
    out["export_parity_max_abs_stars"] = parity.get("max_abs_diff_stars")
    return out


# ----------------------------------------------------------------------------------------------- main
def run(plan: Plan, sections: list[str], quick: bool, threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    machine = machine_info()
    available = {m: v["available"] for m, v in machine["modes"].items()}
    exam_modes = [m for m in ("fp32", "fp32-openvino", "bf16", "fp16") if available.get(m)]
    batch_modes = [m for m in ("fp32", "bf16", "fp16") if available.get(m)]
    # The same exams for the exam, cold and gRPC sections, so the gRPC ratios compare like with like.
    exam_cases = bench_cases(Path(tempfile.gettempdir()) / "dqe-bench-phantoms")[: plan.exam_cases or None]
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "quick": quick,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *sys.argv[1:]]),
        "plan": asdict(plan),
        "machine": machine,
        "shared_data": str(SHARED) if SHARED.is_dir() else None,
        "precision_errors": precision_errors(["fp32", "fp32-openvino", "bf16", "fp16"]),
        "sections": {},
        "errors": {},
    }
    steps = {
        "exam": lambda: exam_section(plan, exam_cases, exam_modes, threads),
        "floor": lambda: floor_section(plan, exam_modes, data["sections"].get("exam")),
        "cold": lambda: cold_section(plan, exam_cases[0][1]),
        "batch": lambda: batch_section(plan, batch_modes, threads),
        "grpc": lambda: grpc_section(plan, exam_cases, data["sections"].get("exam"), threads),
        "gate": lambda: gate_section(plan, gate_cases(), threads),
    }
    for name in sections:
        s0 = time.perf_counter()
        print(f"# {name} ...", file=sys.stderr, flush=True)
        try:
            data["sections"][name] = steps[name]()
            data["sections"][name]["section_s"] = time.perf_counter() - s0
        except Exception as exc:  # one failed section must not lose the others' figures
            logger.exception("section %s failed", name)
            data["errors"][name] = f"{type(exc).__name__}: {exc}"
    data["load_average_end"] = load_average()
    data["elapsed_s"] = time.perf_counter() - t0
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="few samples: proves the pipeline, not publishable"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"report path (default {DEFAULT_JSON})"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument("--threads", type=int, default=0, help="our intra-op threads (0 = all cores)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = run(QUICK if args.quick else Plan(), sections, args.quick, args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(report.render_results(data))
    print(f"\nJSON report: {args.json}")
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
