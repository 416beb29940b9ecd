"""The scoring engine: preprocessing + an ONNX Runtime session, NumPy in, dataclasses out.

It never imports grpc, so it is tested, benchmarked and used by the batch scorer without a server. The
session is built once; ``InferenceSession.run`` is thread-safe, so one engine serves many threads.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.artifacts import ModelArtifacts, ensure_model
from models.contract import PreprocessingContract
from models.errors import InvalidInput, UnsupportedMode
from models.preprocess import build_views
from models.registry import DEFAULT_MODEL_ID
from service.case import Case

logger = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs the model.

    Attributes:
        model_id: registered model to load from the model home (built on first use when possible).
        providers: ``("auto",)`` = TensorRT -> CUDA -> CPU, whichever this ONNX Runtime build has; or
            explicit names (``cpu``, ``cuda``, ``tensorrt`` or full provider names).
        precision: ``fp32`` (default). Other modes are provided by the fast-path backends.
        intra_op_threads: threads per operator; 0 lets ONNX Runtime use all cores.
        inter_op_threads: threads across operators.
        device_id: GPU index for CUDA/TensorRT.
        trt_cache_dir: TensorRT engine cache directory (GPU only).
    """

    model_id: str = DEFAULT_MODEL_ID
    providers: tuple[str, ...] = ("auto",)
    precision: str = "fp32"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    device_id: int = 0
    trt_cache_dir: str | None = None


@dataclass
class ScoreResult:
    """Stars for one segmentation.

    ``views`` maps ``axial``/``coronal``/``sagittal`` to stars (1-6 scale, unclamped, as the reference);
    ``center_of_mass`` is in voxel indices (x, y, z) of the stored array; ``timings_ms`` has the
    server-side stage times.
    """

    mean_stars: float
    views: dict[str, float]
    center_of_mass: tuple[int, int, int] | None
    warnings: list[str]
    model_id: str
    model_sha256: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    case_id: str = ""
    gate: Any | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "case_id": self.case_id,
            "mean_stars": self.mean_stars,
            "views": dict(self.views),
            "center_of_mass": list(self.center_of_mass) if self.center_of_mass is not None else None,
            "warnings": list(self.warnings),
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
        if self.gate is not None:
            out["gate"] = self.gate.to_dict() if hasattr(self.gate, "to_dict") else self.gate
        return out


class Backend(Protocol):
    """Runs ``(N, C, H, W)`` float32 views and returns ``(N,)`` float32 stars."""

    name: str
    providers: list[str]

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Execution providers to use, in priority order.

    Raises:
        UnsupportedMode: an explicitly requested provider is not in this ONNX Runtime build.
    """
    if not requested or tuple(requested) == ("auto",):
        chosen = [p for p in AUTO_ORDER if p in available]
        return chosen or ["CPUExecutionProvider"]
    chosen = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise UnsupportedMode(
                f"execution provider {name!r} is not available in this onnxruntime build; available: {list(available)}",
                field="providers",
            )
        chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OrtBackend:
    """ONNX Runtime session with graph optimisation ALL."""

    name = "onnxruntime"

    def __init__(self, artifacts: ModelArtifacts, config: EngineConfig) -> None:
        import onnxruntime as ort

        if config.precision != "fp32":
            raise UnsupportedMode(
                f"precision {config.precision!r} is not provided by the ONNX Runtime CPU backend", field="precision"
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = config.intra_op_threads
        opts.inter_op_num_threads = config.inter_op_threads
        providers = resolve_providers(config.providers, ort.get_available_providers())
        provider_options: list[dict[str, Any]] = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                cache = config.trt_cache_dir or str(artifacts.directory / "trt-cache")
                os.makedirs(cache, exist_ok=True)
                provider_options.append(
                    {"device_id": config.device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
                )
            elif p == "CUDAExecutionProvider":
                provider_options.append({"device_id": config.device_id})
            else:
                provider_options.append({})
        self.session = ort.InferenceSession(
            str(artifacts.onnx_path), opts, providers=providers, provider_options=provider_options
        )
        self.providers = list(self.session.get_providers())
        self.input_name = self.session.get_inputs()[0].name
        logger.info("onnxruntime session for %s on %s", artifacts.model_id, self.providers)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


class Engine:
    """Scores cases and pre-extracted views with one loaded model."""

    def __init__(self, config: EngineConfig | None = None, artifacts: ModelArtifacts | None = None) -> None:
        self.config = config or EngineConfig()
        self.artifacts = artifacts or ensure_model(self.config.model_id)
        self.contract: PreprocessingContract = self.artifacts.contract
        self.backend: Backend = make_backend(self.artifacts, self.config)

    # ------------------------------------------------------------------ info
    @property
    def model_id(self) -> str:
        return self.artifacts.model_id

    @property
    def model_sha256(self) -> str:
        return self.artifacts.onnx_sha256

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "onnx_sha256": self.model_sha256,
            "weights_sha256": self.artifacts.weights_sha256,
            "contract": self.contract.to_dict(),
            "backend": self.backend.name,
            "providers": list(self.backend.providers),
            "precision": self.config.precision,
            "card": self.artifacts.card,
        }

    # ------------------------------------------------------------------ inference
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Stars for a ``(N, C, H, W)`` float32 batch of views; views of one shape per call."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != self.contract.n_channels:
            raise InvalidInput(
                f"views have shape {tuple(batch.shape)}; expected (N, {self.contract.n_channels}, H, W)",
                field="views",
            )
        if batch.shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        return self.backend.run(batch.astype(np.float32, copy=False))

    def run_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """Stars for views that may differ in shape (non-BraTS grids): one run per distinct shape."""
        shapes = {v.shape for v in views}
        if len(shapes) == 1:
            return self.run(np.stack(views))
        out = np.zeros(len(views), dtype=np.float32)
        for shape in shapes:
            idx = [i for i, v in enumerate(views) if v.shape == shape]
            out[idx] = self.run(np.stack([views[i] for i in idx]))
        return out

    def preprocess(self, case: Case) -> tuple[list[np.ndarray], tuple[int, int, int]]:
        """The contract's views of ``case`` and the centre of mass they go through."""
        return build_views(case.images, case.labels, self.contract)

    def result_from_stars(
        self,
        stars: np.ndarray,
        com: tuple[int, int, int] | None,
        warnings: Sequence[str],
        timings: dict[str, float],
        case_id: str = "",
    ) -> ScoreResult:
        per_view = {name: float(s) for name, s in zip(self.contract.views, stars, strict=True)}
        mean = float(np.mean(list(per_view.values())))
        return ScoreResult(
            mean_stars=mean,
            views=per_view,
            center_of_mass=com,
            warnings=list(warnings),
            model_id=self.model_id,
            model_sha256=self.model_sha256,
            timings_ms=timings,
            case_id=case_id,
        )

    def score_case(self, case: Case) -> ScoreResult:
        """Stars for a validated case (mean of the three views, as the reference)."""
        t0 = time.perf_counter()
        views, com = self.preprocess(case)
        t1 = time.perf_counter()
        stars = self.run_views(views)
        t2 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3}
        return self.result_from_stars(stars, com, case.warnings, timings, case.case_id)

    def score_views(self, views: np.ndarray, case_id: str = "") -> ScoreResult:
        """Stars for pre-extracted ``(3, C, H, W)`` views (float32 or float16) in contract view order."""
        views = np.asarray(views)
        expected = (len(self.contract.views), self.contract.n_channels)
        if views.ndim != 4 or views.shape[:2] != expected:
            raise InvalidInput(
                f"views have shape {tuple(views.shape)}; expected ({expected[0]}, {expected[1]}, H, W)", field="views"
            )
        if views.dtype not in (np.float32, np.float16):
            raise InvalidInput(f"views have dtype {views.dtype}; expected float32 or float16", field="views")
        if not np.isfinite(views).all():
            raise InvalidInput("views contain NaN or Inf values", field="views")
        t0 = time.perf_counter()
        stars = self.run(views.astype(np.float32))
        timings = {"inference": (time.perf_counter() - t0) * 1e3}
        return self.result_from_stars(stars, None, [], timings, case_id)


def make_backend(artifacts: ModelArtifacts, config: EngineConfig) -> Backend:
    """The backend for ``config.precision`` (fp32: ONNX Runtime)."""
    if config.precision == "fp32":
        return OrtBackend(artifacts, config)
    raise UnsupportedMode(
        f"precision {config.precision!r} is not supported; available: ['fp32']", field="precision"
    )
