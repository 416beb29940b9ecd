"""Render a ``benchmarks/run.py`` JSON report as Markdown and write it between the generated-block markers.

``README.md`` gets the summary table and ``benchmarks/RESULTS.md`` the full results; in both files only the text
between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is replaced, so hand-written notes around it stay.
Every number printed comes from the JSON (medians, sample counts and ratios computed by that run); a mode this
machine lacks prints as "not available here", a precision mode without a model-card entry as "not calibrated on
this machine", and p95/p99 print only when the run had enough samples.

    .venv/bin/python -m benchmarks.report benchmarks/out/bench.json [--readme README.md]
        [--results benchmarks/RESULTS.md] [--print]

A ``--quick`` run's JSON is refused (exit 2): its few samples are for smoke tests, not for publication.
Standard library only, so it runs (and is tested) without the project's dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
NOT_AVAILABLE = "not available here"
NOT_CALIBRATED = "not calibrated on this machine"
TABLE_MODES = ("fp32", "bf16", "fp16")
SECTIONS = ("exam", "floor", "cold", "batch", "grpc", "gate")  # every section of benchmarks/run.py
P95_MIN, P99_MIN = 20, 100
REPO = Path(__file__).resolve().parents[1]


class ReportError(ValueError):
    """The JSON cannot be published (quick run, wrong schema) or a target file lacks its markers."""


# ----------------------------------------------------------------------------------------------- formatting
def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}{unit}"


def _x(value: float | None) -> str:
    return "" if value is None else f" ({value:.1f}×)"


def _stars(value: float | None) -> str:
    return "–" if value is None else ("0" if value == 0 else f"{value:.1e}")


def _median(summary: Mapping[str, Any] | None) -> float | None:
    return None if not summary else summary.get("median")


def _tail(summary: Mapping[str, Any], key: str, need: int) -> str:
    value = summary.get(key)
    return _num(value) if value is not None else f"– (n={summary.get('n', 0)} < {need})"


def available(data: Mapping[str, Any], mode: str) -> bool:
    return bool(data["machine"]["modes"].get(mode, {}).get("available"))


def _mode_cell(data: Mapping[str, Any], mode: str, text: str | None) -> str:
    """``text`` for a measured mode, "not available here" for a mode this machine lacks, blank otherwise."""
    if not available(data, mode):
        return NOT_AVAILABLE
    return text if text is not None else ""


def precision_error_text(data: Mapping[str, Any], mode: str) -> str:
    """The model card's recorded max |delta| vs fp32 for ``mode``, or "not calibrated on this machine"."""
    if mode == "fp32":
        return "0 (the reference mode)"
    entry = (data.get("precision_errors") or {}).get(mode)
    if not entry or entry.get("max_abs_stars") is None:
        return NOT_CALIBRATED
    where = f", measured on {entry['cpu']}" if entry.get("cpu") else ""
    return f"{_stars(entry['max_abs_stars'])} (model card{where})"


def machine_line(data: Mapping[str, Any]) -> str:
    m = data["machine"]
    flags = m.get("cpu_flags") or []
    lacking = [f for f in m.get("cpu_flags_checked", []) if f not in flags]
    versions = m.get("versions", {})
    libs = ", ".join(
        f"{k} {v}" for k, v in versions.items() if v and k in ("onnxruntime", "onnxruntime-gpu", "openvino")
    )
    dirty = " + uncommitted changes" if m.get("worktree_dirty") else ""
    load = m.get("load_average_start")
    return (
        f"{m['cpu_model']}, {m['logical_cores']} logical cores"
        f"{', ' + _num(m['mem_total_gib']) + ' GiB' if m.get('mem_total_gib') else ''}; "
        f"flags {' '.join(flags) or 'none of interest'}"
        f"{' (lacks ' + ' '.join(lacking) + ')' if lacking else ''}; "
        f"commit {m.get('commit_short') or 'unknown'}{dirty}; Python {m['python']}, {libs or 'no runtime versions'}; "
        f"load average at start {load[0] if load else '?'}, at end "
        f"{(data.get('load_average_end') or ['?'])[0]}; {m.get('started_at', '')}"
    )


def _method_line(data: Mapping[str, Any]) -> str:
    return (
        "Every figure: median over the run's samples (sample counts in `benchmarks/RESULTS.md`), both sides "
        "warm, ratios (×, higher is better for us) computed in the same run"
        + (" — **QUICK RUN: too few samples, not for publication**" if data.get("quick") else "")
        + "."
    )


# ----------------------------------------------------------------------------------------------- README
def readme_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """The README summary table's rows (header included)."""
    s = data.get("sections", {})
    modes = list(TABLE_MODES)
    rows = [["", "reference", *(f"ours {m}" for m in modes)]]

    def per_mode(section: Mapping[str, Any] | None, key: str, unit: str = "", speed: str = "") -> list[str]:
        out = []
        for m in modes:
            entry = (section or {}).get("modes", {}).get(m)
            text = (
                None
                if entry is None
                else _num(_median(entry[key]), unit) + _x(entry.get(speed) if speed else None)
            )
            out.append(_mode_cell(data, m, text))
        return out

    def fp32_only(text: str) -> list[str]:
        return [text, *[""] * (len(modes) - 1)]

    exam = s.get("exam")
    if exam:
        n_cases = len(exam["cases"])
        rows.append(
            [
                f"one exam from `.nii.gz`, ms ({n_cases} exams)",
                _num(_median(exam["reference"]["exam_ms"])),
                *per_mode(exam, "exam_ms", speed="speedup_exam"),
            ]
        )
        rows.append(
            [
                "network alone, 3 views, ms",
                _num(_median(exam["reference"]["model_ms"])),
                *per_mode(exam, "model_ms", speed="speedup_model"),
            ]
        )
    floor = s.get("floor")
    if floor:
        cells = []
        for m in modes:
            f = floor["modes"].get(m)
            text = None
            if f is not None and f.get("share_of_peak") is not None:
                text = f"{100 * f['share_of_peak']:.0f} % (floor {_num(f['floor_ms'])} ms)"
            cells.append(_mode_cell(data, m, text))
        rows.append(["network alone, share of this CPU's measured matmul peak", "", *cells])
    cold = s.get("cold")
    if cold:
        rows.append(
            [
                "cold process → first score, s",
                _num(_median(cold["reference"]["wall_s"])),
                *fp32_only(_num(_median(cold["ours"]["wall_s"])) + _x(cold.get("speedup_wall"))),
            ]
        )
        rows.append(
            [
                "cold process peak RSS, MiB",
                _num(_median(cold["reference"]["peak_rss_mib"])),
                *fp32_only(_num(_median(cold["ours"]["peak_rss_mib"]))),
            ]
        )
    batch = s.get("batch")
    if batch:
        rows.append(
            [
                f"batch (`dqe batch` vs one by one), {batch['segmentations']} segmentations, seg/s",
                _num(_median(batch["reference"]["seg_per_s"])),
                *per_mode(batch, "seg_per_s", speed="speedup"),
            ]
        )
    grpc = s.get("grpc")
    ref_exam = _median(exam["reference"]["exam_ms"]) if exam else None
    ref_model = _median(exam["reference"]["model_ms"]) if exam else None
    if grpc:
        seq, conc = grpc["sequential"], grpc["concurrent"]
        if "bytes" in seq:
            rows.append(
                [
                    "gRPC one case over loopback (bytes), ms",
                    f"{_num(ref_exam)} (exam)",
                    *fp32_only(_num(_median(seq["bytes"]["latency_ms"])) + _x(seq["bytes"].get("speedup"))),
                ]
            )
        if "bytes" in conc:
            c = conc["bytes"]
            ref_rate = 1e3 / ref_exam if ref_exam else None
            rows.append(
                [
                    f"gRPC {c['clients']} concurrent clients (bytes), cases/s",
                    f"{_num(ref_rate)} (1 / exam)",
                    *fp32_only(_num(c["cases_per_s"]) + _x(c.get("speedup"))),
                ]
            )
        if "views_sliced" in seq:
            v = seq["views_sliced"]
            rows.append(
                [
                    "gRPC views, client-side decoding + slicing included, ms",
                    f"{_num(ref_exam)} (exam)",
                    *fp32_only(_num(_median(v["latency_ms"])) + _x(v.get("speedup"))),
                ]
            )
        if "views" in seq:
            v = seq["views"]
            rows.append(
                [
                    "gRPC views pre-sliced (network + transport), ms",
                    f"{_num(ref_model)} (network alone)",
                    *fp32_only(_num(_median(v["latency_ms"])) + _x(v.get("speedup"))),
                ]
            )
    gate = s.get("gate")
    if gate:
        share = gate.get("gate_over_score")
        rows.append(
            [
                "QC gate added time, ms (vs scoring a loaded case)",
                "no gate",
                *fp32_only(
                    f"{_num(_median(gate['gate_ms']))} (+{100 * share:.0f} % of {_num(_median(gate['score_ms']))})"
                    if share is not None
                    else _num(_median(gate["gate_ms"]))
                ),
            ]
        )
    if exam:
        rows.append(
            [
                "max \\|Δ\\| stars vs reference (this run)",
                "0",
                *[
                    _mode_cell(
                        data,
                        m,
                        _stars(exam["modes"][m]["max_abs_stars_vs_reference"])
                        if m in exam["modes"]
                        else None,
                    )
                    for m in modes
                ],
            ]
        )
    rows.append(
        ["max \\|Δ\\| stars vs fp32 (model card)", "", *[precision_error_text(data, m) for m in modes]]
    )
    return rows


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _errors(data: Mapping[str, Any]) -> str:
    errs = data.get("errors") or {}
    return "".join(f"\n\n**Section `{k}` failed in this run:** {v}" for k, v in errs.items())


def render_readme(data: Mapping[str, Any]) -> str:
    """The README block: machine line, summary table, unavailable-mode reasons."""
    why = [
        f"{m}: {NOT_AVAILABLE} ({data['machine']['modes'][m]['why']})"
        for m in TABLE_MODES
        if not available(data, m)
    ]
    return (
        f"Measured by `make bench` on {machine_line(data)}. {_method_line(data)} Blank: not measured in that "
        "mode. Sample counts, tails and method: [`benchmarks/RESULTS.md`](benchmarks/RESULTS.md).\n\n"
        + _table(readme_rows(data))
        + ("\n\n" + "; ".join(why) + "." if why else "")
        + _errors(data)
    )


# ----------------------------------------------------------------------------------------------- RESULTS
def render_results(data: Mapping[str, Any]) -> str:
    """The full generated block of RESULTS.md (also what ``make bench`` prints)."""
    m = data["machine"]
    s = data.get("sections", {})
    out = [
        f"Generated by `benchmarks/report.py` from `{data.get('command', 'benchmarks/run.py')}` "
        f"({_num(data.get('elapsed_s'))} s). {_method_line(data)}",
        "",
        f"**Machine:** {machine_line(data)}",
        "",
    ]
    out.append(
        "Modes here: "
        + "; ".join(f"{k} {'yes' if v['available'] else 'no'} ({v['why']})" for k, v in m["modes"].items())
        + "."
    )
    out.append(
        f"ONNX Runtime providers: {', '.join(m.get('onnxruntime_providers', []))}; other versions: "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
        + "."
    )
    times = ", ".join(
        f"{k} {_num(v.get('section_s'))} s" for k, v in s.items() if v.get("section_s") is not None
    )
    if times:
        out.append(f"Section wall times: {times}.")
    out += ["", "### Summary", "", _table(readme_rows(data))]
    exam = s.get("exam")
    if exam:
        out += [
            "",
            f"### One exam from `.nii.gz`, and the network alone (exams: {', '.join(exam['cases'])}; "
            f"samples per exam after a warm-up: {exam['repeats_per_case']}, reference "
            f"{exam.get('reference_repeats_per_case', exam['repeats_per_case'])})",
            "",
        ]
        rows = [
            [
                "side",
                "exam median ms",
                "exam p95 ms",
                "exam p99 ms",
                "worst exam p95 / its median",
                "n",
                "× ref",
                "network (3 views) median ms",
                "n",
                "× ref",
                "engine load ms",
                "max \\|Δ\\| vs ref",
                "max \\|Δ\\| vs fp32",
            ]
        ]
        r = exam["reference"]
        rows.append(
            [
                "reference `DQE.predict`",
                _num(_median(r["exam_ms"])),
                _tail(r["exam_ms"], "p95", P95_MIN),
                _tail(r["exam_ms"], "p99", P99_MIN),
                _num(r.get("worst_case_p95_over_median")),
                str(r["exam_ms"]["n"]),
                "1.0",
                _num(_median(r["model_ms"])),
                str(r["model_ms"]["n"]),
                "1.0",
                _num(r.get("load_ms")),
                "0",
                "",
            ]
        )
        for mode in ("fp32", "fp32-openvino", "bf16", "fp16"):
            e = exam["modes"].get(mode)
            if e is None:
                rows.append([mode, NOT_AVAILABLE if not available(data, mode) else "not run", *[""] * 11])
                continue
            rows.append(
                [
                    mode,
                    _num(_median(e["exam_ms"])),
                    _tail(e["exam_ms"], "p95", P95_MIN),
                    _tail(e["exam_ms"], "p99", P99_MIN),
                    _num(e.get("worst_case_p95_over_median")),
                    str(e["exam_ms"]["n"]),
                    _num(e.get("speedup_exam")),
                    _num(_median(e["model_ms"])),
                    str(e["model_ms"]["n"]),
                    _num(e.get("speedup_model")),
                    _num(e.get("load_ms")),
                    _stars(e.get("max_abs_stars_vs_reference")),
                    _stars(e.get("max_abs_stars_vs_fp32")),
                ]
            )
        out.append(_table(rows))
    floor = s.get("floor")
    if floor:
        peaks = ", ".join(f"{k} {_num(v)}" for k, v in floor["peak_gflops"].items())
        out += [
            "",
            "### Physical floor of the network",
            "",
            f"{floor['macs_per_exam'] / 1e9:.2f} GMAC = {_num(floor['gflop_per_exam'])} GFLOP per exam (three views "
            f"of 7 × 240 × 240); median matmul rate ({floor['matmul_n']}³ float32) in GFLOP/s: {peaks}.",
            "",
        ]
        rows = [["mode", "peak GFLOP/s used", "floor ms", "network median ms", "share of peak"]]
        for mode, f in floor["modes"].items():
            model = (exam or {}).get("modes", {}).get(mode, {}).get("model_ms")
            share = f.get("share_of_peak")
            rows.append(
                [
                    mode,
                    _num(f["peak_gflops"]),
                    _num(f["floor_ms"]),
                    _num(_median(model)),
                    "–" if share is None else f"{100 * share:.0f} %",
                ]
            )
        out.append(_table(rows))
    cold = s.get("cold")
    if cold:
        out += [
            "",
            f"### Cold process to first score (runs per side, alternated: {cold['reference']['wall_s']['n']})",
            "",
        ]
        rows = [["side", "command", "wall median s", "min–max s", "peak RSS median MiB", "× ref"]]
        for side in ("reference", "ours"):
            c = cold[side]
            rows.append(
                [
                    side,
                    f"`{cold['commands'][side]}`",
                    _num(_median(c["wall_s"])),
                    f"{_num(c['wall_s']['min'])}–{_num(c['wall_s']['max'])}",
                    _num(_median(c["peak_rss_mib"])),
                    "1.0" if side == "reference" else _num(cold.get("speedup_wall")),
                ]
            )
        out.append(_table(rows))
    batch = s.get("batch")
    if batch:
        out += [
            "",
            f"### Batch (segmentations: {batch['segmentations']}, exams: {batch['exams']}, "
            f"passes per side: {batch['passes']})",
            "",
        ]
        rows = [["side", "seg/s median", "min–max", "× ref", "peak RSS MiB", "max \\|Δ\\| stars vs ref"]]
        r = batch["reference"]
        rows.append(
            [
                "reference `DQE.predict`, one by one",
                _num(_median(r["seg_per_s"])),
                f"{_num(r['seg_per_s']['min'])}–{_num(r['seg_per_s']['max'])}",
                "1.0",
                _num(r["peak_rss_mib"]),
                "0",
            ]
        )
        for mode in TABLE_MODES:
            e = batch["modes"].get(mode)
            if e is None:
                rows.append(
                    [
                        f"`dqe batch` {mode}",
                        NOT_AVAILABLE if not available(data, mode) else "not run",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            rows.append(
                [
                    f"`dqe batch` {mode}",
                    _num(_median(e["seg_per_s"])),
                    f"{_num(e['seg_per_s']['min'])}–{_num(e['seg_per_s']['max'])}",
                    _num(e.get("speedup")),
                    _num(e["peak_rss_mib"]),
                    _stars(e.get("max_abs_stars_vs_reference")),
                ]
            )
        out.append(_table(rows))
    grpc = s.get("grpc")
    if grpc:
        srv = grpc.get("server", {})
        out += [
            "",
            f"### gRPC over loopback (`dqe serve` {srv.get('precision', '')} {srv.get('providers', '')}, "
            f"SERVING {_num(grpc['start_to_serving_s'])} s after start; median case "
            f"{_num(grpc['case_bytes_median'] / 1e6)} MB of files)",
            "",
        ]
        rows = [
            [
                "kind",
                "clients",
                "n",
                "errors",
                "median ms",
                "p95 ms",
                "p99 ms",
                "cases/s",
                "compared with",
                "×",
            ]
        ]
        for phase in ("sequential", "concurrent"):
            for kind, e in grpc[phase].items():
                lat = e["latency_ms"]
                rate = e.get("cases_per_s") if phase == "concurrent" else None
                rows.append(
                    [
                        kind,
                        str(e.get("clients", 1)),
                        str(lat["n"]),
                        str(e["n_errors"]),
                        _num(_median(lat)),
                        _tail(lat, "p95", P95_MIN),
                        _tail(lat, "p99", P99_MIN),
                        _num(rate),
                        grpc["compared_with"].get(kind, "") + (" (rate)" if phase == "concurrent" else ""),
                        _num(e.get("speedup")),
                    ]
                )
        out.append(_table(rows))
    gate = s.get("gate")
    if gate:
        share = gate.get("gate_over_score")
        out += [
            "",
            f"### QC gate added time (segmentations: {gate['segmentations']}, rounds: {gate['repeats']})",
            "",
            _table(
                [
                    ["", "median ms", "p95 ms", "max ms", "n"],
                    [
                        "score a loaded case (fp32)",
                        _num(_median(gate["score_ms"])),
                        _tail(gate["score_ms"], "p95", P95_MIN),
                        _num(gate["score_ms"]["max"]),
                        str(gate["score_ms"]["n"]),
                    ],
                    [
                        "QC gate on it",
                        _num(_median(gate["gate_ms"])),
                        _tail(gate["gate_ms"], "p95", P95_MIN),
                        _num(gate["gate_ms"]["max"]),
                        str(gate["gate_ms"]["n"]),
                    ],
                ]
            ),
            "",
            f"Gate / score (medians): {'–' if share is None else f'{100 * share:.0f} %'}.",
        ]
    out += ["", "### Precision modes: error against fp32", ""]
    out.append(
        _table(
            [
                ["mode", "max \\|Δ\\| stars vs fp32"],
                *[[mode, precision_error_text(data, mode)] for mode in ("fp32-openvino", "bf16", "fp16")],
            ]
        )
    )
    parity = (data.get("precision_errors") or {}).get("export_parity_max_abs_stars")
    if parity is not None:
        out.append(
            f"\nExport parity recorded in the model card (torch vs ONNX Runtime): {_stars(parity)} stars."
        )
    return "\n".join(out) + _errors(data)


# ----------------------------------------------------------------------------------------------- writing
def replace_block(text: str, block: str, start: str = START, end: str = END) -> str:
    """``text`` with everything between the markers replaced by ``block`` (markers kept).

    Raises:
        ReportError: the markers are missing, repeated or in the wrong order.
    """
    if text.count(start) != 1 or text.count(end) != 1:
        raise ReportError(f"expected exactly one {start} and one {end}")
    head, rest = text.split(start)
    if end not in rest:
        raise ReportError(f"{end} comes before {start}")
    _, tail = rest.split(end)
    return f"{head}{start}\n{block.strip()}\n{end}{tail}"


def check_publishable(data: Mapping[str, Any]) -> None:
    """Raises ReportError: a quick run, a run with a failed or missing section, or a JSON not written by
    ``benchmarks/run.py``."""
    if data.get("schema") != "dqe-bench/1":
        raise ReportError(f"not a benchmarks/run.py report (schema {data.get('schema')!r})")
    if data.get("quick"):
        raise ReportError(
            "a --quick run is for smoke tests: run `make bench` without --quick to publish figures"
        )
    failed = sorted((data.get("errors") or {}).keys())
    missing = [name for name in SECTIONS if name not in (data.get("sections") or {}) and name not in failed]
    if failed or missing:
        raise ReportError(
            f"sections failed {failed} / not run {missing}: publish only a complete run, so that every "
            "figure comes from the same run"
        )


def publish(data: Mapping[str, Any], readme: Path, results: Path) -> None:
    """Rewrite the generated blocks of ``readme`` and ``results`` from ``data`` (each file atomically).

    Raises:
        ReportError: see :func:`check_publishable` and :func:`replace_block` (nothing is written then).
    """
    check_publishable(data)
    updates = {
        readme: replace_block(readme.read_text(), render_readme(data)),
        results: replace_block(results.read_text(), render_results(data)),
    }
    for path, text in updates.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", type=Path, help="report written by benchmarks/run.py")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--print", action="store_true", help="print the README block instead of writing files"
    )
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    if args.print:
        print(render_readme(data))
        return 0
    try:
        publish(data, args.readme, args.results)
    except ReportError as exc:
        print(f"report: {exc}; README and RESULTS.md left unchanged", file=sys.stderr)
        return 2
    print(f"report: wrote the generated blocks of {args.readme} and {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
