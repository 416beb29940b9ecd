"""Fast paths vs the reference package, on the same real cases, in one run.

For the reference (``deep_quality_estimation.DQE().predict`` on Path inputs) and for each precision mode this
machine runs (``fp32`` = ONNX Runtime, ``fp32-openvino``, ``bf16`` = OpenVINO, ``fp16`` = GPU):

* model only: ms for the 3 views of one exam (p50 over repeats; the reference runs its 3 batch-1 forwards);
* one exam end to end from ``.nii.gz`` (decode + validate + centre of mass + preprocess + inference), p50
  over the cases;
* batch throughput: every segmentation of an exam scored with the exam's images decoded once
  (``Case.from_files(..., images=...)``) and the views of all its segmentations in one inference call;
* the largest |delta| in stars against ONNX Runtime fp32 and against the reference;
* where one exam's time goes (decode per modality with ISA-L and zlib, sequential and in 4 threads, label
  validation, centre of mass, slicing + preprocessing, inference);
* the physical floor: multiply-accumulates of DenseNet121 on a (3, 7, 240, 240) input counted from the ONNX
  graph, over the peak FLOP/s of this CPU measured with a large matmul (numpy fp32, OpenVINO f32 and bf16).

Figures on a shared machine are noisy: our modes are measured round-robin (so load bursts hit them alike),
the reference runs in a child process twice (before and after ours; the better run counts), the matmul peak
is the best of three measurements, and both p50 and best are reported.

Usage: ``python benchmarks/bench_fast.py [--data DIR] [--repeats 7] [--max-cases N] [--no-reference] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DQE_HOME", str(Path(__file__).resolve().parents[1] / ".dqe-home"))

import numpy as np  # noqa: E402

from benchmarks.common import SHARED, git_rev, machine_line  # noqa: E402
from dqe.service.backends.calibration import RealCase, discover_cases  # noqa: E402

FIELDS = ("t1c", "t1", "t2", "flair", "segmentation")


def p50(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# ----------------------------------------------------------------------------- physical floor
def count_macs(onnx_path: Path, shape: tuple[int, ...] = (3, 7, 240, 240)) -> int:
    """Multiply-accumulates of every Conv and Gemm/MatMul for ``shape``, from the ONNX graph."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if not out or w is None:
            continue
        if node.op_type == "Conv":  # per output element: (C_in / groups) * kH * kW
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            macs += int(np.prod(out)) * (w[1] if trans_b else w[0])
        elif node.op_type == "MatMul":
            macs += int(np.prod(out)) * w[0]
    return macs


def peak_flops(threads: int) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matmul: numpy (BLAS) fp32, OpenVINO f32 and bf16 (best of 8)."""
    n = 2048
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    flop = 2.0 * n**3
    out = {"numpy_fp32": flop / min(timed(lambda: a @ b, 6)) / 1e6}
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return out
    param = ops.parameter([n, n], ov.Type.f32)
    model = ov.Model([ops.matmul(param, ops.constant(b), False, False)], [param])
    for hint in ("f32", "bf16"):
        props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint}
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        try:
            req = ov.Core().compile_model(model, "CPU", props).create_infer_request()
        except Exception:  # bf16 refused on CPUs without it
            continue
        out[f"openvino_{hint}"] = flop / min(timed(lambda r=req: r.infer({0: a}), 8)) / 1e6
    return out


# ----------------------------------------------------------------------------- stage breakdown
def _onnx_path() -> Path:
    from dqe.models.artifacts import ensure_model
    from dqe.models.registry import DEFAULT_MODEL_ID

    return ensure_model(DEFAULT_MODEL_ID).onnx_path


def stage_breakdown(case: RealCase, repeats: int, threads: int) -> dict[str, Any]:
    """Where one exam's time goes, stage by stage (p50 ms), with the fp32 engine."""
    from dqe.models.case import Case
    from dqe.models.nifti import decode_nifti, gunzip, load_nifti
    from dqe.models.preprocess import build_views, center_of_mass
    from dqe.service.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(intra_op_threads=threads))

    raw = {k: Path(case.files[k]).read_bytes() for k in FIELDS}
    out: dict[str, Any] = {"read_bytes_MB": sum(len(v) for v in raw.values()) / 1e6}
    for backend in ("isal", "zlib"):
        for k in FIELDS:
            out[f"gunzip_{backend}_{k}"] = p50(timed(lambda k=k, b=backend: gunzip(raw[k], k, b), repeats))

        def one(field: str, b: str = backend) -> bytes:
            return gunzip(raw[field], field, b)

        seq = timed(lambda: [one(f) for f in FIELDS], repeats)
        with ThreadPoolExecutor(4) as pool:
            par = timed(lambda: list(pool.map(one, FIELDS)), repeats)
        out[f"gunzip_{backend}_5_files_sequential"] = p50(seq)
        out[f"gunzip_{backend}_5_files_4_threads"] = p50(par)
    inflated = gunzip(raw["t1c"], "t1c")
    out["header_parse_and_array_view"] = p50(timed(lambda: decode_nifti(inflated, "t1c"), repeats))
    files = case.files
    out["load_5_files_4_threads"] = p50(timed(lambda: _load_parallel(files, load_nifti), repeats))
    vols = _load_parallel(files, load_nifti)
    out["case_validation"] = p50(timed(lambda: Case(**vols), repeats))
    c = Case(**vols)
    out["center_of_mass"] = p50(timed(lambda: center_of_mass(c.labels, engine.contract), repeats))
    com = center_of_mass(c.labels, engine.contract)
    out["slice_and_preprocess"] = p50(
        timed(lambda: build_views(c.images, c.labels, engine.contract, com), repeats)
    )
    views = np.stack(build_views(c.images, c.labels, engine.contract, com)[0])
    out["inference_3_views"] = p50(timed(lambda: engine.run(views), repeats))
    out["Case.from_files_total"] = p50(timed(lambda: load_case(case), repeats))
    return out


def _load_parallel(files: dict[str, Path], load: Callable[..., Any]) -> dict[str, Any]:
    with ThreadPoolExecutor(4) as pool:
        futures = {k: pool.submit(load, files[k], k) for k in FIELDS}
        return {k: f.result() for k, f in futures.items()}


# ----------------------------------------------------------------------------- ours
def load_case(case: RealCase, images: dict[str, Any] | None = None) -> Any:
    from dqe.models.case import Case

    return Case.from_files(*(case.files[k] for k in FIELDS), case_id=case.name, images=images)


def groups_of(cases: list[RealCase]) -> dict[tuple[str, ...], list[RealCase]]:
    """Cases grouped by their image files (one exam, several segmentations)."""
    groups: dict[tuple[str, ...], list[RealCase]] = {}
    for c in cases:
        groups.setdefault(tuple(str(c.files[k]) for k in FIELDS[:4]), []).append(c)
    return groups


def bench_modes(
    modes: list[str], cases: list[RealCase], repeats: int, threads: int
) -> dict[str, dict[str, Any]]:
    """Every mode measured round-robin (mode after mode within each repeat, case and exam), so a burst of
    load from other processes hits all modes alike and the ratios between them stay meaningful."""
    import dataclasses

    from dqe.service.backends import mode_config
    from dqe.service.engine import Engine, EngineConfig

    engines, load_ms = {}, {}
    for mode in modes:
        precision, backend = mode_config(mode)
        t0 = time.perf_counter()
        config = dataclasses.replace(
            EngineConfig(intra_op_threads=threads), precision=precision, backend=backend
        )
        engines[mode] = Engine(config)
        load_ms[mode] = (time.perf_counter() - t0) * 1e3
    views = np.stack(engines[modes[0]].preprocess(load_case(cases[0]))[0])
    for engine in engines.values():
        engine.run(views)  # warm-up
    model: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeats):
        for m, engine in engines.items():
            model[m].extend(timed(lambda e=engine: e.run(views), 1, warmup=0))

    e2e: dict[str, list[float]] = {m: [] for m in modes}
    stars: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    for c in cases:
        load_case(c)  # page cache
        for m, engine in engines.items():
            t = time.perf_counter()
            result = engine.score_case(load_case(c))
            e2e[m].append((time.perf_counter() - t) * 1e3)
            stars[m][c.name] = [result.views[v] for v in engine.contract.views]

    batch_s = {m: 0.0 for m in modes}
    groups = list(groups_of(cases).values())
    for group in groups:
        best: dict[str, float] = {m: float("inf") for m in modes}
        for _ in range(2):  # best of two passes per exam
            for m, engine in engines.items():
                t = time.perf_counter()
                base = load_case(group[0])
                images = {k: getattr(base, k) for k in FIELDS[:4]}
                batch = []
                for c in group:
                    case = base if c is group[0] else load_case(c, images)
                    batch.extend(engine.preprocess(case)[0])
                engine.run(np.stack(batch))
                best[m] = min(best[m], time.perf_counter() - t)
        for m in modes:
            batch_s[m] += best[m]
    return {
        m: {
            "mode": m,
            "engine": {
                k: v
                for k, v in engines[m].info().items()
                if k in ("backend", "providers", "precision", "runtime")
            },
            "engine_load_ms": load_ms[m],
            "model_3_views_ms": p50(model[m]),
            "model_3_views_min_ms": min(model[m]),
            "exam_e2e_ms": p50(e2e[m]),
            "exam_e2e_min_ms": min(e2e[m]),
            "batch_segmentations": len(cases),
            "batch_seconds": batch_s[m],
            "batch_seg_per_s": len(cases) / batch_s[m],
            "stars": stars[m],
        }
        for m in modes
    }


# ----------------------------------------------------------------------------- reference
def bench_reference(cases: list[RealCase], repeats: int, views: np.ndarray) -> dict[str, Any]:
    """The reference in a child process, so no thread pool of ours competes with torch's."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "views.npy", views)
        spec = {
            "cases": [[c.name, {k: str(v) for k, v in c.files.items()}] for c in cases],
            "repeats": repeats,
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, __file__, "--reference-child", tmp], capture_output=True, text=True, check=True
        )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _reference_child(folder: Path) -> None:
    spec = json.loads((folder / "spec.json").read_text())
    cases = [RealCase(n, {k: Path(v) for k, v in f.items()}) for n, f in spec["cases"]]
    print(json.dumps(_reference(cases, int(spec["repeats"]), np.load(folder / "views.npy"))))


def _reference(cases: list[RealCase], repeats: int, views: np.ndarray) -> dict[str, Any]:
    import torch
    from deep_quality_estimation import DQE

    model = DQE(device="cpu")
    net = model.model.eval()
    x = torch.from_numpy(views)

    def forward3() -> None:
        with torch.no_grad():
            for i in range(3):  # the reference's DataLoader runs one view per batch
                net(x[i : i + 1])

    model_ms = timed(forward3, repeats)
    e2e, stars = [], {}
    for c in cases:
        t = time.perf_counter()
        _, per_view = model.predict(*(Path(c.files[k]) for k in FIELDS))
        e2e.append((time.perf_counter() - t) * 1e3)
        by_name = {str(getattr(k, "name", k)).lower().split(".")[-1]: float(v) for k, v in per_view.items()}
        stars[c.name] = [by_name[v] for v in ("axial", "coronal", "sagittal")]
    total_s = sum(e2e) / 1e3
    return {
        "mode": "reference",
        "model_3_views_ms": p50(model_ms),
        "model_3_views_min_ms": min(model_ms),
        "exam_e2e_ms": p50(e2e),
        "exam_e2e_min_ms": min(e2e),
        "batch_segmentations": len(cases),
        "batch_seconds": total_s,
        "batch_seg_per_s": len(cases) / total_s,
        "stars": stars,
    }


def max_delta(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    return max(float(np.max(np.abs(np.subtract(a[k], b[k])))) for k in a)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument(
        "--modes", default="", help="comma-separated (default: fp32 + every mode available here)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    parser.add_argument("--max-cases", type=int, default=0, help="use only the first N segmentations")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--reference-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_child:
        _reference_child(args.reference_child)
        return 0

    from dqe.models.nifti import gzip_backend
    from dqe.service.backends.calibration import available_modes
    from dqe.service.hardware import detect

    cases = discover_cases(args.data)
    if args.max_cases:
        cases = cases[: args.max_cases]
    if not cases:
        print(f"no real cases under {args.data}; set --data or DQE_SHARED_DATA", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m] or ["fp32", *available_modes()]
    hw = detect()
    print(f"# bench_fast  rev {git_rev()}  {machine_line()}")
    print(f"# cpu flags {hw.cpu.summary()['flags']}  openvino {hw.openvino}  gzip {gzip_backend()}")
    print(f"# {len(cases)} segmentations of {len(groups_of(cases))} exams under {args.data}; modes {modes}")

    peaks = peak_flops(args.threads)  # measured again at the end; the best of both is the peak
    macs = count_macs(_onnx_path())
    typical = next((c for c in cases if c.name.endswith("seg-BraTS23_1")), cases[0])
    breakdown = stage_breakdown(typical, args.repeats, args.threads)

    from dqe.service.engine import Engine, EngineConfig

    first_views = np.stack(
        Engine(EngineConfig(intra_op_threads=args.threads)).preprocess(load_case(cases[0]))[0]
    )
    reference = None if args.no_reference else bench_reference(cases, args.repeats, first_views)
    results = bench_modes(modes, cases, args.repeats, args.threads)
    if reference is not None:  # a second reference run after ours; the better of the two counts
        again = bench_reference(cases, args.repeats, first_views)
        for key in (
            "model_3_views_ms",
            "model_3_views_min_ms",
            "exam_e2e_ms",
            "exam_e2e_min_ms",
            "batch_seconds",
        ):
            reference[key] = min(reference[key], again[key])
        reference["batch_seg_per_s"] = reference["batch_segmentations"] / reference["batch_seconds"]
    if "bf16" in results:
        breakdown["inference_3_views_bf16"] = results["bf16"]["model_3_views_ms"]
    for _ in range(2):
        for name, gf in peak_flops(args.threads).items():
            peaks[name] = max(peaks.get(name, 0.0), gf)
    fp32 = results.get("fp32")

    # ------------------------------------------------------------------ table
    print()
    hdr = (
        f"{'mode':<15}{'model 3 views p50/best':>24}{'exam e2e p50/best':>22}{'batch seg/s':>13}"
        f"{'max|d| fp32':>13}{'max|d| ref':>12}"
    )
    print(hdr)
    print("-" * len(hdr))
    rows = ([reference] if reference else []) + list(results.values())
    for r in rows:
        d32 = max_delta(r["stars"], fp32["stars"]) if fp32 and r is not reference else float("nan")
        dref = max_delta(r["stars"], reference["stars"]) if reference else float("nan")
        r["max_abs_delta_vs_fp32"] = d32
        r["max_abs_delta_vs_reference"] = dref
        print(
            f"{r['mode']:<15}{r['model_3_views_ms']:>13.1f} /{r['model_3_views_min_ms']:>6.1f} ms"
            f"{r['exam_e2e_ms']:>11.1f} /{r['exam_e2e_min_ms']:>6.1f} ms"
            f"{r['batch_seg_per_s']:>13.2f}{d32:>13.2g}{dref:>12.2g}"
        )
    if reference:
        print("\nratios vs reference, p50 over p50 (higher is better)")
        for r in results.values():
            print(
                f"  {r['mode']:<15} model x{reference['model_3_views_ms'] / r['model_3_views_ms']:.1f}   "
                f"exam x{reference['exam_e2e_ms'] / r['exam_e2e_ms']:.1f}   "
                f"batch x{r['batch_seg_per_s'] / reference['batch_seg_per_s']:.1f}"
            )

    print(f"\none exam, stage by stage (p50 ms; case {typical.name})")
    for k, v in breakdown.items():
        print(f"  {k:<40}{v:>9.1f}")

    gflop = 2 * macs / 1e9
    print(f"\nphysical floor: {macs / 1e9:.2f} GMAC = {gflop:.1f} GFLOP per exam (3 views of 7x240x240)")
    for name, gf in peaks.items():
        print(f"  peak {name:<16}{gf:>8.1f} GFLOP/s  -> floor {gflop / gf * 1e3:>7.1f} ms")
    floors = {
        "fp32": max(peaks.get("openvino_f32", 0.0), peaks["numpy_fp32"]),
        "bf16": peaks.get("openvino_bf16"),
    }
    for r in results.values():
        peak = floors.get(r["engine"]["precision"])
        if peak:
            floor_ms = gflop / peak * 1e3
            r["floor_ms"] = floor_ms
            r["fraction_of_peak"] = floor_ms / r["model_3_views_min_ms"]
            print(
                f"  {r['mode']:<15} model best {r['model_3_views_min_ms']:.1f} ms = "
                f"{100 * r['fraction_of_peak']:.0f}% of the measured {r['engine']['precision']} matmul peak "
                f"(p50 {r['model_3_views_ms']:.1f} ms)"
            )

    if args.json:
        payload = {
            "rev": git_rev(),
            "machine": machine_line(),
            "hardware": hw.summary(),
            "cases": [c.name for c in cases],
            "modes": results,
            "reference": reference,
            "breakdown_ms": breakdown,
            "macs_per_exam": macs,
            "peak_gflops": peaks,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
