"""Inference backends and the choice between them.

A backend runs ``(N, C, H, W)`` float32 views and returns ``(N,)`` float32 stars. Which one runs is decided
by :func:`plan_backend` from the configuration and the hardware (:mod:`dqe.service.hardware`):

=========  ==================  =================================================================
precision  backend             where
=========  ==================  =================================================================
fp32       onnxruntime         default; CPU, or CUDA with TF32 off (reference parity <= 1e-4 stars)
fp32       openvino            opt-in (``backend="openvino"``), CPU, f32 inference precision
bf16       openvino            CPUs with AMX-BF16 or AVX512-BF16
fp16       onnxruntime         NVIDIA GPUs: TensorRT (fp16 engines, cached on disk) or CUDA (fp16 graph)
=========  ==================  =================================================================

``precision="auto"`` picks the fastest row the machine supports (fp16 > bf16 > fp32). Anything the machine
cannot run raises :class:`dqe.models.errors.UnsupportedMode`; nothing falls back silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dqe.models.errors import UnsupportedMode
from dqe.service.backends.config import GPU_PROVIDERS, EngineConfig, Plan
from dqe.service.backends.openvino import OpenVinoBackend
from dqe.service.backends.ort import OrtBackend, OrtDeviceBackend
from dqe.service.hardware import detect

if TYPE_CHECKING:
    from dqe.models.artifacts import ModelArtifacts
    from dqe.service.hardware import Hardware

PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("onnxruntime", "openvino")

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# fp32 leaves TensorRT out of "auto": TensorRT builds fp32 engines with TF32 on Ampere and later, which
# breaks the 1e-4-star parity promise. Name it explicitly to use it anyway.
AUTO_ORDER_FP32 = ("CUDAExecutionProvider", "CPUExecutionProvider")
AUTO_ORDER_FP16 = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def mode_key(backend: str, precision: str) -> str:
    """The name a mode is recorded under in the model card's ``precision_errors``.

    ``fp32`` is the ONNX Runtime reference-parity mode; other backends' fp32 is ``fp32-<backend>``.
    """
    if precision == "fp32" and backend != "onnxruntime":
        return f"fp32-{backend}"
    return precision


def mode_config(mode: str) -> tuple[str, str]:
    """``(precision, backend)`` for a mode key (inverse of :func:`mode_key`).

    Raises:
        UnsupportedMode: not a known mode.
    """
    if mode in PRECISIONS:
        return mode, "auto"
    prec, _, backend = mode.partition("-")
    if prec == "fp32" and backend in BACKENDS:
        return prec, backend
    raise UnsupportedMode(f"mode {mode!r} is not one of {[*PRECISIONS, 'fp32-openvino']}", field="precision")


class Backend(Protocol):
    """Runs ``(N, C, H, W)`` float32 views and returns ``(N,)`` float32 stars.

    ``run`` is safe to call from several threads at once.
    """

    name: str
    providers: list[str]
    precision: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def _is_auto(requested: Sequence[str]) -> bool:
    return not requested or tuple(r.lower() for r in requested) == ("auto",)


def resolve_providers(
    requested: Sequence[str], available: Sequence[str], precision: str = "fp32"
) -> list[str]:
    """ONNX Runtime execution providers to use, in priority order.

    ``auto`` means CUDA -> CPU for fp32 and TensorRT -> CUDA for fp16. Explicit names (``cpu``, ``cuda``,
    ``tensorrt`` or full provider names) must all be available; CPU is appended as the last resort for
    nodes a GPU provider does not take.

    Raises:
        UnsupportedMode: an explicitly requested provider is not in this ONNX Runtime build, or fp16 has no
            GPU provider to run on.
    """
    if _is_auto(requested):
        order = AUTO_ORDER_FP16 if precision == "fp16" else AUTO_ORDER_FP32
        chosen = [p for p in order if p in available]
    else:
        chosen = []
        for name in requested:
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if full not in available:
                raise UnsupportedMode(
                    f"execution provider {name!r} is not available in this onnxruntime build; available: "
                    f"{list(available)}",
                    field="providers",
                )
            chosen.append(full)
    if precision == "fp16" and not any(p in GPU_PROVIDERS for p in chosen):
        raise UnsupportedMode(
            f"precision 'fp16' needs the TensorRT or CUDA execution provider; got {chosen or list(requested)} "
            f"(available: {list(available)})",
            field="precision",
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def plan_backend(config: EngineConfig, hw: Hardware) -> Plan:
    """Decide backend, precision and providers for ``config`` on ``hw``.

    Raises:
        UnsupportedMode: unknown precision/backend, or a combination this machine cannot run (bf16 without
            AMX/AVX512-BF16 or OpenVINO, fp16 without a GPU provider, bf16 on onnxruntime, fp16 on OpenVINO).
    """
    precision = config.precision.lower()
    backend = config.backend.lower()
    if precision not in (*PRECISIONS, "auto"):
        raise UnsupportedMode(
            f"precision {config.precision!r} is not one of {[*PRECISIONS, 'auto']}", field="precision"
        )
    if backend not in (*BACKENDS, "auto"):
        raise UnsupportedMode(
            f"backend {config.backend!r} is not one of {[*BACKENDS, 'auto']}", field="backend"
        )
    requested = tuple(config.providers)
    wants_gpu = not _is_auto(requested) and any(
        PROVIDER_ALIASES.get(p.lower(), p) in GPU_PROVIDERS for p in requested
    )
    cpu_only = not _is_auto(requested) and not wants_gpu

    if precision == "auto":
        precision = _auto_precision(backend, hw, wants_gpu, cpu_only)

    if precision == "fp32":
        if backend == "openvino":
            _require_openvino_cpu(hw, requested, "fp32")
            return Plan(
                "openvino", "fp32", (), "fp32 on the OpenVINO CPU runtime (asked for backend=openvino)"
            )
        providers = resolve_providers(requested, hw.ort_providers, "fp32")
        return Plan("onnxruntime", "fp32", tuple(providers), "fp32 reference-parity default")

    if precision == "bf16":
        if backend == "onnxruntime":
            raise UnsupportedMode(
                "precision 'bf16' is provided by the OpenVINO runtime; ONNX Runtime has no bf16 CPU kernels "
                "(use backend=auto or openvino)",
                field="backend",
            )
        _require_openvino_cpu(hw, requested, "bf16")
        ok, why = hw.bf16_support()
        if not ok:
            raise UnsupportedMode(f"precision 'bf16' is not supported here: {why}", field="precision")
        return Plan("openvino", "bf16", (), why)

    # fp16
    if backend == "openvino":
        raise UnsupportedMode(
            "precision 'fp16' is not supported on CPU (the OpenVINO backend runs on CPU); fp16 needs an NVIDIA "
            "GPU through onnxruntime. On CPUs with AMX/AVX512-BF16 use bf16",
            field="precision",
        )
    ok, why = hw.fp16_support()
    if not ok:
        raise UnsupportedMode(f"precision 'fp16' is not supported here: {why}", field="precision")
    providers = resolve_providers(requested, hw.ort_providers, "fp16")
    return Plan("onnxruntime", "fp16", tuple(providers), why)


def _auto_precision(backend: str, hw: Hardware, wants_gpu: bool, cpu_only: bool) -> str:
    if backend != "openvino" and not cpu_only and hw.fp16_support()[0]:
        return "fp16"
    if backend != "onnxruntime" and not wants_gpu and hw.bf16_support()[0]:
        return "bf16"
    return "fp32"


def _require_openvino_cpu(hw: Hardware, requested: Sequence[str], precision: str) -> None:
    if hw.openvino is None:
        raise UnsupportedMode(
            f"precision {precision!r} on the OpenVINO backend needs the openvino package "
            "(pip install 'dqe-service[fast]')",
            field="backend",
        )
    if not _is_auto(requested) and any(
        PROVIDER_ALIASES.get(p.lower(), p) != "CPUExecutionProvider" for p in requested
    ):
        raise UnsupportedMode(
            f"the OpenVINO backend runs on CPU; providers {list(requested)} cannot be honoured with "
            f"precision {precision!r}",
            field="providers",
        )


def make_backend(artifacts: ModelArtifacts, config: EngineConfig, hw: Hardware | None = None) -> Backend:
    """Build the backend :func:`plan_backend` chooses for ``config`` on this machine.

    Raises:
        UnsupportedMode: see :func:`plan_backend`; also when a GPU provider is compiled in but the session
            could not actually use it (no device or driver).
    """

    if hw is None:
        # ONNX Runtime fp32 never consults OpenVINO: skip importing it on the default path.
        needs_openvino = config.precision.lower() != "fp32" or config.backend.lower() == "openvino"
        hw = detect(probe_openvino=needs_openvino)
    plan = plan_backend(config, hw)
    if plan.backend == "openvino":
        return OpenVinoBackend(artifacts, config, plan)
    if plan.on_gpu:
        return OrtDeviceBackend(artifacts, config, plan)

    return OrtBackend(artifacts, config, plan)
