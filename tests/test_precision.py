"""Precision modes: backend choice, typed refusals, the GPU code path on CPU, recorded errors on real cases."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from dqe.models.errors import IntegrityError, UnsupportedMode
from dqe.service.backends import Plan, mode_config, mode_key, plan_backend, resolve_providers
from dqe.service.engine import Engine, EngineConfig
from dqe.service.hardware import CpuInfo, Hardware, detect, parse_cpuinfo
from tests.conftest import SHARED_DATA, ground_truth_cases, real_cases

BUDGET = 0.01
CPU_ONLY = ("CPUExecutionProvider",)
WITH_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def fake_hw(
    flags: tuple[str, ...] = ("avx512f", "avx512_bf16"),
    openvino: str | None = "2026.0",
    caps: tuple[str, ...] = ("BF16", "FP32"),
    providers: tuple[str, ...] = CPU_ONLY,
) -> Hardware:
    cpu = CpuInfo(model="Test CPU", flags=frozenset(flags), logical_cpus=2)
    return Hardware(cpu=cpu, openvino=openvino, openvino_capabilities=caps, ort_providers=providers)


def cfg(**kw: object) -> EngineConfig:
    return dataclasses.replace(EngineConfig(intra_op_threads=2), **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- hardware detection
def test_parse_cpuinfo_reads_model_and_flags() -> None:
    text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"
    info = parse_cpuinfo(text, logical_cpus=4)
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.amx_bf16 and not info.avx512_bf16 and info.native_bf16
    assert parse_cpuinfo("model name : Old\nflags : sse2 avx2\n").native_bf16 is False


def test_detect_matches_proc_cpuinfo() -> None:
    hw = detect()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    has_bf16 = " avx512_bf16" in text or " amx_bf16" in text
    assert hw.cpu.native_bf16 == has_bf16
    assert "CPUExecutionProvider" in hw.ort_providers


# ----------------------------------------------------------------------------- planning (pure)
def test_fp32_default_is_onnxruntime_and_auto_skips_tensorrt() -> None:
    plan = plan_backend(EngineConfig(), fake_hw(providers=WITH_GPU))
    assert plan.backend == "onnxruntime" and plan.precision == "fp32"
    assert plan.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")  # TF32 would break parity
    assert plan_backend(EngineConfig(), fake_hw()).providers == CPU_ONLY


def test_bf16_plans_openvino_when_cpu_has_it() -> None:
    for flags in (("avx512_bf16",), ("amx_bf16", "amx_tile")):
        plan = plan_backend(cfg(precision="bf16"), fake_hw(flags=flags))
        assert (plan.backend, plan.precision, plan.providers) == ("openvino", "bf16", ())


@pytest.mark.parametrize(
    ("config", "hw", "field", "words"),
    [
        (dict(precision="bf16"), dict(flags=("avx2", "avx512f"), caps=("FP32",)), "precision", "AVX512-BF16"),
        (dict(precision="bf16"), dict(openvino=None), "backend", "openvino"),
        (dict(precision="bf16"), dict(caps=("FP32",)), "precision", "no native bf16"),
        (dict(precision="bf16", backend="onnxruntime"), {}, "backend", "OpenVINO"),
        (dict(precision="bf16", providers=("cuda",)), dict(providers=WITH_GPU), "providers", "CPU"),
        (dict(precision="fp16"), {}, "precision", "GPU"),
        (
            dict(precision="fp16", backend="openvino"),
            dict(providers=WITH_GPU),
            "precision",
            "not supported on CPU",
        ),
        (
            dict(precision="fp16", providers=("cpu",)),
            dict(providers=WITH_GPU),
            "precision",
            "TensorRT or CUDA",
        ),
        (dict(precision="int8"), {}, "precision", "not one of"),
        (dict(backend="tvm"), {}, "backend", "not one of"),
        (dict(providers=("cuda",)), {}, "providers", "not available"),
    ],
)
def test_unsupported_combinations_raise_typed_errors(config: dict, hw: dict, field: str, words: str) -> None:
    with pytest.raises(UnsupportedMode) as err:
        plan_backend(cfg(**config), fake_hw(**hw))
    assert err.value.code == "FAILED_PRECONDITION"
    assert err.value.field == field
    assert words.lower() in err.value.message.lower()


def test_fp16_plans_tensorrt_then_cuda_on_gpu_machines() -> None:
    plan = plan_backend(cfg(precision="fp16"), fake_hw(providers=WITH_GPU))
    assert plan.backend == "onnxruntime" and plan.on_gpu
    assert plan.providers == WITH_GPU
    cuda_only = plan_backend(cfg(precision="fp16", providers=("cuda",)), fake_hw(providers=WITH_GPU))
    assert cuda_only.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_auto_precision_picks_the_fastest_supported_mode() -> None:
    assert plan_backend(cfg(precision="auto"), fake_hw(providers=WITH_GPU)).precision == "fp16"
    assert plan_backend(cfg(precision="auto"), fake_hw()).precision == "bf16"
    assert (
        plan_backend(cfg(precision="auto", providers=("cpu",)), fake_hw(providers=WITH_GPU)).precision
        == "bf16"
    )
    none = fake_hw(flags=("avx2",), caps=("FP32",))
    assert plan_backend(cfg(precision="auto"), none).precision == "fp32"
    assert plan_backend(cfg(precision="auto", backend="onnxruntime"), fake_hw()).precision == "fp32"


def test_mode_keys_round_trip() -> None:
    assert mode_key("onnxruntime", "fp32") == "fp32"
    assert mode_key("openvino", "fp32") == "fp32-openvino"
    assert mode_key("openvino", "bf16") == "bf16"
    assert mode_key("onnxruntime", "fp16") == "fp16"
    assert mode_config("fp32") == ("fp32", "auto")
    assert mode_config("bf16") == ("bf16", "auto")
    assert mode_config("fp32-openvino") == ("fp32", "openvino")
    with pytest.raises(UnsupportedMode):
        mode_config("fp8")


def test_resolve_providers_keeps_explicit_order() -> None:
    assert resolve_providers(("cpu",), CPU_ONLY) == ["CPUExecutionProvider"]
    assert resolve_providers(("tensorrt",), WITH_GPU, "fp32") == [
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    ]


# ----------------------------------------------------------------------------- engines on this machine
def test_fp16_on_this_machine_is_refused_or_runs_on_a_gpu() -> None:
    if detect().fp16_support()[0]:
        pytest.skip("this machine has a GPU provider; fp16 is exercised by the real-data test")
    with pytest.raises(UnsupportedMode) as err:
        Engine(cfg(precision="fp16"))
    assert err.value.field == "precision" and "GPU" in err.value.message


def test_bf16_on_this_machine_runs_or_is_refused(engine: Engine, phantom_case) -> None:
    ok, why = detect().bf16_support()
    if not ok:
        with pytest.raises(UnsupportedMode):
            Engine(cfg(precision="bf16"))
        return
    fast = Engine(cfg(precision="bf16"))
    info = fast.info()
    assert (info["backend"], info["precision"], info["mode"]) == ("openvino", "bf16", "bf16")
    assert fast.config.precision == "bf16" and fast.config.backend == "openvino"
    assert info["runtime"]["inference_precision"] == "bf16"
    ref = engine.score_case(phantom_case)
    got = fast.score_case(phantom_case)
    deltas = [abs(got.views[v] - ref.views[v]) for v in ref.views]
    assert max(deltas) <= BUDGET
    assert max(deltas) > 0  # it really ran in reduced precision


def test_openvino_fp32_matches_onnxruntime(engine: Engine, phantom_case) -> None:
    if detect().openvino is None:
        pytest.skip("openvino is not installed")
    ov32 = Engine(cfg(backend="openvino"))
    assert ov32.info()["runtime"]["inference_precision"] == "f32"  # never OpenVINO's bf16 default
    ref, got = engine.score_case(phantom_case), ov32.score_case(phantom_case)
    for view in ref.views:
        assert got.views[view] == pytest.approx(ref.views[view], abs=1e-4)


def test_auto_precision_engine_reports_what_it_chose() -> None:
    auto = Engine(cfg(precision="auto"))
    expected = "fp16" if detect().fp16_support()[0] else ("bf16" if detect().bf16_support()[0] else "fp32")
    assert auto.config.precision == expected == auto.info()["precision"]
    assert auto.info()["hardware"]["cpu"]["model"] == detect().cpu.model


def test_engine_info_names_backend_providers_precision(engine: Engine) -> None:
    info = engine.info()
    assert (info["backend"], info["precision"], info["mode"]) == ("onnxruntime", "fp32", "fp32")
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["runtime"]["device"] == "cpu"


# ----------------------------------------------------------------------------- GPU code path, run on CPU
@pytest.fixture(scope="module")
def device_backend_fp32():
    from dqe.models.artifacts import ensure_model
    from dqe.service.backends.ort import OrtDeviceBackend

    art = ensure_model(EngineConfig().model_id)
    plan = Plan("onnxruntime", "fp32", CPU_ONLY, "test: the GPU path on the CPU provider")
    return OrtDeviceBackend(art, cfg(static_batch_sizes=(3, 4)), plan)


def test_bucket_plan_pads_below_the_smallest_size() -> None:
    from dqe.service.backends.ort import bucket_plan

    assert bucket_plan(3, (3, 24)) == [(0, 3, 3)]
    assert bucket_plan(4, (3, 24)) == [(0, 3, 3), (3, 4, 3)]
    assert bucket_plan(50, (24, 3)) == [(0, 24, 24), (24, 48, 24), (48, 50, 3)]
    for n in range(1, 60):
        plan = bucket_plan(n, (3, 24))
        assert plan[0][0] == 0 and plan[-1][1] == n
        assert all(b >= stop - start for start, stop, b in plan)
        assert sum(b for *_, b in plan) - n < 3


def test_static_iobinding_path_matches_the_dynamic_session(device_backend_fp32, engine: Engine) -> None:
    rng = np.random.default_rng(0)
    batch = rng.random((7, 7, 240, 240), dtype=np.float32)
    batch[:, 4:] = batch[:, 4:] > 0.7  # binary label channels as the contract makes them
    ref = engine.run(batch)
    got = device_backend_fp32.run(batch)  # 4 + 3: two static sessions, one padded row-free
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(device_backend_fp32.run(batch[:1]), ref[:1], atol=1e-5)  # padded to 3
    info = device_backend_fp32.describe()
    assert info["io_binding"] is True and info["device"] == "cpu"
    assert sorted(map(tuple, info["static_sessions"])) == [(3, 7, 240, 240), (4, 7, 240, 240)]


def test_static_sessions_are_thread_safe(device_backend_fp32, engine: Engine) -> None:
    rng = np.random.default_rng(1)
    batches = [rng.random((3, 7, 240, 240), dtype=np.float32) for _ in range(4)]
    expected = [engine.run(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = device_backend_fp32.run(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-5)


@pytest.mark.slow
def test_fp16_graph_on_the_static_path_stays_within_budget(engine: Engine, phantom_case) -> None:
    """The CUDA-provider fp16 route (graph converted to fp16) run by the CPU provider: numerics only."""
    pytest.importorskip("onnx")
    from dqe.models.artifacts import ensure_model
    from dqe.service.backends.ort import OrtDeviceBackend

    art = ensure_model(EngineConfig().model_id)
    fp16 = OrtDeviceBackend(art, cfg(), Plan("onnxruntime", "fp16", CPU_ONLY, "test"))
    views = np.stack(engine.preprocess(phantom_case)[0])
    delta = np.abs(fp16.run(views) - engine.run(views))
    assert delta.max() <= BUDGET and delta.max() > 0


def test_gpu_provider_that_does_not_start_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime falls back to CPU when CUDA cannot load; the backend must refuse that, not hide it."""
    import onnxruntime as ort

    from dqe.models.artifacts import ensure_model
    from dqe.service.backends.ort import OrtDeviceBackend

    real = ort.InferenceSession

    def cpu_only_session(model, opts, providers=None, provider_options=None):  # type: ignore[no-untyped-def]
        return real(model, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", cpu_only_session)
    art = ensure_model(EngineConfig().model_id)
    plan = Plan("onnxruntime", "fp32", ("CUDAExecutionProvider", "CPUExecutionProvider"), "test")
    with pytest.raises(UnsupportedMode) as err:
        OrtDeviceBackend(art, cfg(cuda_graph=False), plan, device="cpu")
    assert "CUDAExecutionProvider" in err.value.message


# ----------------------------------------------------------------------------- card: precision_errors
def test_write_precision_errors_is_atomic_and_keeps_the_checksum(tmp_path: Path) -> None:
    from dqe.models.artifacts import ModelArtifacts, ensure_model
    from dqe.service.calibration import write_precision_errors

    src = ensure_model(EngineConfig().model_id).directory
    dst = tmp_path / "model"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("trt-cache", "ov-cache", ".card*"))
    before = json.loads((dst / "card.json").read_text())
    (dst / "card.json").chmod(0o644)
    entry = {"max_abs_stars": 0.004, "mean_abs_stars": 0.001, "n_views": 3, "within_budget": True}
    write_precision_errors(dst, {"bf16": entry})
    write_precision_errors(dst, {"fp32-openvino": {**entry, "max_abs_stars": 1e-6}})
    card = json.loads((dst / "card.json").read_text())
    assert card["precision_errors"]["bf16"] == entry  # merged, not replaced
    assert card["precision_errors"]["fp32-openvino"]["max_abs_stars"] == 1e-6
    assert {k: v for k, v in card.items() if k != "precision_errors"} == {
        k: v for k, v in before.items() if k != "precision_errors"
    }
    assert ModelArtifacts.load(dst, verify=True).onnx_sha256 == before["onnx_sha256"]
    assert not list(dst.glob(".card*"))  # no temporary or lock file left behind
    assert (dst / "card.json").stat().st_mode & 0o777 == 0o644

    (dst / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        write_precision_errors(dst, {"bf16": entry})
    assert json.loads((dst / "card.json").read_text()) == card


def test_error_stats() -> None:
    from dqe.service.calibration import error_stats

    ref = np.array([[5.0, 4.0, 3.0], [2.0, 2.0, 2.0]])
    got = ref + np.array([[0.003, -0.001, 0.0], [0.0, 0.0, -0.006]])
    stats = error_stats(got, ref)
    assert stats["max_abs_stars"] == pytest.approx(0.006)
    assert stats["mean_abs_stars"] == pytest.approx(0.010 / 6)
    assert stats["max_abs_mean_stars"] == pytest.approx(0.002)
    assert (stats["n_views"], stats["n_cases"]) == (6, 2)


# ----------------------------------------------------------------------------- real cases
@pytest.mark.real_data
def test_discover_cases_finds_every_shared_pair() -> None:
    from dqe.service.calibration import discover_cases

    found = {tuple(sorted((k, str(v)) for k, v in c.files.items())) for c in discover_cases(SHARED_DATA)}
    pairs = real_cases() + ground_truth_cases()
    expected = {tuple(sorted((k, str(v)) for k, v in f.items())) for _, f in pairs}
    assert found == expected


@pytest.mark.real_data
@pytest.mark.slow
def test_each_available_mode_scores_real_cases_within_its_recorded_error(engine: Engine) -> None:
    """Every mode this machine runs, on every real segmentation, against ONNX Runtime fp32.

    The bound is the card's recorded max |delta| when it was measured on this CPU (plus 1e-4 for
    thread-count-dependent summation order), else the 0.01-star budget; it never exceeds the budget.
    """
    from dqe.service.calibration import available_modes, preprocessed_views, stars_per_case

    modes = available_modes()
    if not modes:
        pytest.skip("no fast precision mode on this machine")
    views = preprocessed_views(engine, [_case(n, f) for n, f in real_cases()])
    ref = stars_per_case(engine, views)
    card = engine.artifacts.card.get("precision_errors", {})
    hw = detect()
    for mode in modes:
        precision, backend = mode_config(mode)
        fast = Engine(
            cfg(
                precision=precision, backend=backend, providers=("auto",) if precision == "fp16" else ("cpu",)
            )
        )
        assert fast.mode == mode
        delta = np.abs(stars_per_case(fast, views).astype(np.float64) - ref)
        recorded = card.get(mode)
        same_cpu = (
            bool(recorded)
            and recorded.get("cpu") == hw.cpu.model
            and recorded.get("cpu_flags") == hw.cpu.summary()["flags"]
        )
        bound = min(recorded["max_abs_stars"] + 1e-4, BUDGET) if same_cpu else BUDGET
        assert delta.max() <= bound, f"{mode}: max |delta| {delta.max():.4g} stars > {bound:.4g}"
        if recorded:
            assert recorded["max_abs_stars"] <= BUDGET and recorded["within_budget"] is True


def _case(name: str, files: dict[str, Path]):
    from dqe.service.calibration import RealCase

    return RealCase(name=name, files=files)
