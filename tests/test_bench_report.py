"""The benchmark report generator on a synthetic ``benchmarks/run.py`` JSON: markers replaced, hand-written text
kept, unavailable modes and uncalibrated precision errors printed as such, tails only with enough samples,
quick runs refused. Fast: no model, no data, no child processes."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    """A benchmarks module by path (the benchmarks folder is not part of the installed package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = _load("report")
stats = _load("stats")

README = """# Title

Hand-written intro.

<!-- bench:start -->
OLD TABLE 999 ms
<!-- bench:end -->

Hand-written text after.
"""
RESULTS = """# Results

## Method (hand-written)

<!-- bench:start -->
old generated block
<!-- bench:end -->

## Parity (hand-written)
"""


def _synthetic(bf16: bool = False, card_bf16: float | None = None) -> dict[str, Any]:
    """A run on an AVX2-only CPU (bf16 and fp16 unavailable unless ``bf16``), figures chosen by hand."""
    s = stats.summarise
    ref_exam = [1200.0, 1180.0, 1210.0, 1190.0, 1250.0, 1220.0, 1205.0]  # median 1205
    our_exam = [250.0, 260.0, 255.0, 245.0, 258.0, 252.0, 249.0]  # median 252
    modes = {
        "fp32": {"available": True, "why": "ONNX Runtime CPUExecutionProvider"},
        "fp32-openvino": {"available": True, "why": "OpenVINO 2025.0"},
        "bf16": {"available": bf16, "why": "CPU 'AMD EPYC' has neither AMX-BF16 nor AVX512-BF16"},
        "fp16": {"available": False, "why": "fp16 needs an NVIDIA GPU"},
    }
    exam_modes = {
        "fp32": {
            "exam_ms": s(our_exam),
            "model_ms": s([130.0] * 7),
            "load_ms": 300.0,
            "speedup_exam": 1205.0 / 252.0,
            "speedup_model": 240.0 / 130.0,
            "max_abs_stars_vs_reference": 1.9e-6,
            "max_abs_stars_vs_fp32": 0.0,
        }
    }
    batch_modes = {
        "fp32": {
            "seg_per_s": s([5.4] * 7),
            "speedup": 5.4 / 0.8,
            "peak_rss_mib": 870.0,
            "max_abs_stars_vs_reference": 9.5e-7,
        }
    }
    if bf16:
        exam_modes["bf16"] = {**exam_modes["fp32"], "exam_ms": s([174.0] * 7), "speedup_exam": 1205.0 / 174.0}
        batch_modes["bf16"] = {**batch_modes["fp32"], "seg_per_s": s([6.7] * 7), "speedup": 6.7 / 0.8}
    lat_seq = s([260.0 + i for i in range(30)])
    lat_conc = s([2000.0 + i for i in range(100)])
    return {
        "schema": "dqe-bench/1",
        "quick": False,
        "command": "python -m benchmarks.run",
        "elapsed_s": 600.0,
        "machine": {
            "cpu_model": "AMD EPYC",
            "cpu_flags": ["avx2"],
            "cpu_flags_checked": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"],
            "logical_cores": 2,
            "mem_total_gib": 24.0,
            "load_average_start": [0.2, 0.3, 0.4],
            "commit": "abcdef1234567890",
            "commit_short": "abcdef1",
            "worktree_dirty": False,
            "python": "3.11.9",
            "versions": {"onnxruntime": "1.20.0", "openvino": "2025.0", "torch": "2.13.0"},
            "onnxruntime_providers": ["CPUExecutionProvider"],
            "modes": modes,
            "started_at": "2026-11-29T12:00:00+00:00",
        },
        "load_average_end": [0.3, 0.3, 0.4],
        "precision_errors": {
            "fp32-openvino": {"max_abs_stars": 4.3e-6, "cpu": "AMD EPYC"},
            "bf16": None if card_bf16 is None else {"max_abs_stars": card_bf16, "cpu": "Xeon"},
            "fp16": None,
            "export_parity_max_abs_stars": 1.9e-6,
        },
        "sections": {
            "exam": {
                "cases": ["A", "B", "C", "D"],
                "repeats_per_case": 7,
                "reference": {"exam_ms": s(ref_exam), "model_ms": s([240.0] * 7), "load_ms": 4000.0},
                "modes": exam_modes,
            },
            "floor": {
                "macs_per_exam": 10.25e9,
                "gflop_per_exam": 20.5,
                "peak_gflops": {"numpy_fp32": 203.0},
                "matmul_n": 2048,
                "modes": {"fp32": {"peak_gflops": 203.0, "floor_ms": 101.0, "share_of_peak": 101.0 / 130.0}},
            },
            "cold": {
                "reference": {"wall_s": s([6.0] * 7), "peak_rss_mib": s([856.0] * 7)},
                "ours": {"wall_s": s([0.75] * 7), "peak_rss_mib": s([285.0] * 7)},
                "speedup_wall": 8.0,
                "commands": {"reference": "python -c ...", "ours": "dqe score ..."},
            },
            "batch": {
                "segmentations": 14,
                "exams": 2,
                "passes": 7,
                "reference": {"seg_per_s": s([0.8] * 7), "peak_rss_mib": 850.0},
                "modes": batch_modes,
            },
            "grpc": {
                "start_to_serving_s": 3.0,
                "server": {"precision": "fp32", "providers": ["CPUExecutionProvider"]},
                "case_bytes_median": 8.0e6,
                "compared_with": {"bytes": "reference exam", "views": "reference model only"},
                "sequential": {"bytes": {"latency_ms": lat_seq, "n_errors": 0, "speedup": 1205.0 / 274.5}},
                "concurrent": {
                    "bytes": {
                        "clients": 8,
                        "latency_ms": lat_conc,
                        "cases_per_s": 3.5,
                        "n_errors": 0,
                        "speedup": 4.2,
                    }
                },
            },
            "gate": {
                "segmentations": 18,
                "repeats": 7,
                "score_ms": s([150.0] * 7),
                "gate_ms": s([30.0] * 7),
                "gate_over_score": 0.2,
            },
        },
        "errors": {},
    }


def _write(tmp_path: Path) -> tuple[Path, Path]:
    readme, results = tmp_path / "README.md", tmp_path / "RESULTS.md"
    readme.write_text(README)
    results.write_text(RESULTS)
    return readme, results


def _row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]  # "\\|" is a literal bar


def test_markers_replaced_and_hand_written_text_kept(tmp_path: Path) -> None:
    readme, results = _write(tmp_path)
    report.publish(_synthetic(), readme, results)
    text = readme.read_text()
    assert "OLD TABLE 999" not in text
    assert text.startswith("# Title\n\nHand-written intro.\n\n<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->\n\nHand-written text after.\n")
    assert text.count(report.START) == 1 and text.count(report.END) == 1
    exam = _row(text, "one exam")
    assert exam[1] == "1205"  # the reference median of the synthetic samples
    assert exam[2] == "252 (4.8×)"  # ours and the ratio computed by the run
    assert "commit abcdef1" in text and "lacks avx512f avx512_bf16 amx_bf16" in text
    body = results.read_text()
    assert "old generated block" not in body
    assert "## Method (hand-written)" in body and body.rstrip().endswith("## Parity (hand-written)")


def test_unavailable_modes_and_uncalibrated_errors(tmp_path: Path) -> None:
    readme, results = _write(tmp_path)
    report.publish(_synthetic(bf16=False), readme, results)
    text = readme.read_text()
    exam, batch = _row(text, "one exam"), _row(text, "batch")
    assert exam[3:] == [report.NOT_AVAILABLE, report.NOT_AVAILABLE]  # bf16, fp16 on an AVX2-only CPU
    assert batch[3:] == [report.NOT_AVAILABLE, report.NOT_AVAILABLE]
    assert _row(text, "network alone, share")[2:] == [
        "78 % (floor 101 ms)",
        report.NOT_AVAILABLE,
        report.NOT_AVAILABLE,
    ]
    card = _row(text, "max \\|Δ\\| stars vs fp32")
    assert card[3] == report.NOT_CALIBRATED and card[4] == report.NOT_CALIBRATED
    assert "bf16: not available here (CPU 'AMD EPYC' has neither" in text
    assert report.NOT_CALIBRATED in results.read_text()


def test_available_mode_prints_its_figures(tmp_path: Path) -> None:
    readme, results = _write(tmp_path)
    report.publish(_synthetic(bf16=True, card_bf16=0.0061), readme, results)
    text = readme.read_text()
    exam = _row(text, "one exam")
    assert exam[3] == "174 (6.9×)"
    assert _row(text, "batch")[3] == "6.70 (8.4×)"
    assert _row(text, "max \\|Δ\\| stars vs fp32")[3] == "6.1e-03 (model card, measured on Xeon)"
    assert exam[4] == report.NOT_AVAILABLE  # fp16 still lacks a GPU


def test_tails_only_with_enough_samples(tmp_path: Path) -> None:
    readme, results = _write(tmp_path)
    report.publish(_synthetic(), readme, results)
    grpc = [line for line in results.read_text().splitlines() if line.startswith("| bytes |")]
    sequential, concurrent = (
        next(r for r in grpc if f"| {c} | {n} |" in r) for c, n in (("1", 30), ("8", 100))
    )
    assert "– (n=30 < 100)" in sequential  # p99 withheld
    assert "< 100" not in concurrent and "| 2098 |" in concurrent  # p99 of 2000..2099 = 2098.01
    assert stats.summarise(range(99))["p99"] is None
    assert stats.summarise(range(100))["p99"] == pytest.approx(98.01)
    assert stats.summarise(range(19))["p95"] is None


def test_quick_run_and_missing_markers_are_refused(tmp_path: Path) -> None:
    readme, results = _write(tmp_path)
    quick = copy.deepcopy(_synthetic())
    quick["quick"] = True
    with pytest.raises(report.ReportError, match="quick"):
        report.publish(quick, readme, results)
    partial = copy.deepcopy(_synthetic())
    del partial["sections"]["grpc"]
    partial["errors"] = {"batch": "ChildFailed: boom"}
    del partial["sections"]["batch"]
    with pytest.raises(report.ReportError, match=r"failed \['batch'\] / not run \['grpc'\]"):
        report.publish(partial, readme, results)
    results.write_text("# Results without markers\n")
    with pytest.raises(report.ReportError, match="exactly one"):
        report.publish(_synthetic(), readme, results)
    assert readme.read_text() == README  # nothing written when any target is refused


def test_cli_refuses_quick_json_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme, results = _write(tmp_path)
    data = _synthetic()
    data["quick"] = True
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    assert report.main([str(path), "--readme", str(readme), "--results", str(results)]) == 2
    assert "left unchanged" in capsys.readouterr().err
    assert readme.read_text() == README


def test_normal_plan_meets_the_sample_rules() -> None:
    run = _load("run")  # puts the repository root on sys.path for its own benchmarks imports
    plan, quick = run.Plan(), run.QUICK
    for field in (
        "exam_repeats",
        "cold_runs",
        "batch_passes",
        "gate_repeats",
        "floor_repeats",
        "grpc_sequential",
    ):
        assert getattr(plan, field) >= stats.MIN_REPEATS, field
        assert getattr(quick, field) < stats.MIN_REPEATS, field  # quick really is reduced (and refused)
    assert plan.grpc_concurrent >= stats.P99_MIN_SAMPLES  # so the concurrent p99 is printed
    assert run.SECTIONS == report.SECTIONS  # the publisher requires exactly what the driver runs
    assert run.max_abs_delta({"a": [1.0, 2.0], "b": 3.0}, {"a": [1.5, 2.0], "b": 2.0, "c": 9.0}) == 1.0
    assert run.max_abs_delta({"a": 1.0}, {"b": 1.0}) is None


@pytest.mark.parametrize("name", ["README.md", "benchmarks/RESULTS.md"])
def test_repository_files_have_one_generated_block(name: str) -> None:
    """`make bench` can publish into the real files: exactly one marker pair, in order, each."""
    text = (REPO / name).read_text()
    assert report.replace_block(text, "X").count("\nX\n") == 1


def test_abuse_table_is_rendered_from_one_run_and_published_between_its_markers(tmp_path: Path) -> None:
    from benchmarks.bench_abuse import ABUSE_END, ABUSE_START, render
    from benchmarks.report import replace_block

    data = {
        "machine": "Test CPU, 2 cores",
        "git": "abc1234",
        "load_average": [0.5, 0.4, 0.3],
        "normal_request": "case, 11.07 MB",
        "rows": [
            {"attack": "idle", "rss_mb": 280.4, "health_ms": 1.1, "normal_ms": 600.2},
            {
                "attack": "burst",
                "outcomes": {"OK": 67, "RESOURCE_EXHAUSTED": 253},
                "rss_before_mb": 271.6,
                "peak_growth_mb": 1280.8,
                "settled_growth_mb": 484.0,
                "health_ms": 370.9,
                "normal_ms": 30390.9,
                "refused_median_s": 0.041,
                "refused_max_s": 0.605,
            },
        ],
    }
    table = render(data)
    assert "git abc1234" in table and "Test CPU, 2 cores" in table and "load average 0.5" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 3  # header, idle, burst
    assert "67 OK, 253 RESOURCE_EXHAUSTED (refused after 0.04 s median, 0.60 s max)" in rows[2]
    assert "+1281 MB" in rows[2] and "+484 MB" in rows[2]
    doc = f"before\n{ABUSE_START}\nold table\n{ABUSE_END}\nafter\n"
    out = replace_block(doc, table, ABUSE_START, ABUSE_END)
    assert "old table" not in out and out.startswith("before\n") and out.endswith("after\n")
    assert out.count("| burst of 320") == 1
