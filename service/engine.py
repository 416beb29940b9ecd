"""The scoring engine: preprocessing + an inference backend, NumPy in, dataclasses out.

It never imports grpc, so it is tested, benchmarked and used by the batch scorer without a server. The
backend (:mod:`dqe.service.backends`) is chosen once from the configured precision and the hardware: ONNX
Runtime fp32 by default (reference parity), OpenVINO bf16 on CPUs with AMX/AVX512-BF16, ONNX Runtime
TensorRT/CUDA fp16 on GPUs. A mode the machine cannot run raises ``UnsupportedMode``; the engine never falls
back silently and says what it runs in :meth:`Engine.info` and its log. Every backend's ``run`` is
thread-safe, so one engine serves many threads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.models.artifacts import ModelArtifacts, ensure_model
from dqe.models.case import Case
from dqe.models.contract import PreprocessingContract
from dqe.models.errors import InvalidInput
from dqe.models.preprocess import build_views
from dqe.models.result import ScoreResult
from dqe.service.backends import (
    AUTO_ORDER,
    PROVIDER_ALIASES,
    Backend,
    Plan,
    make_backend,
    mode_key,
    plan_backend,
    resolve_providers,
)
from dqe.service.backends.config import EngineConfig
from dqe.service.hardware import detect

__all__ = [
    "AUTO_ORDER",
    "PROVIDER_ALIASES",
    "Backend",
    "Engine",
    "EngineConfig",
    "Plan",
    "make_backend",
    "plan_backend",
    "resolve_providers",
]

logger = logging.getLogger(__name__)


class Engine:
    """Scores cases and pre-extracted views with one loaded model."""

    def __init__(self, config: EngineConfig | None = None, artifacts: ModelArtifacts | None = None) -> None:
        config = config or EngineConfig()
        self.artifacts = artifacts or ensure_model(config.model_id)
        self.contract: PreprocessingContract = self.artifacts.contract
        self.backend: Backend = make_backend(self.artifacts, config)
        # The configuration as it runs: "auto" replaced by the backend and precision that were chosen.
        self.config = dataclasses.replace(config, precision=self.backend.precision, backend=self.backend.name)
        error = self.precision_error()
        logger.info(
            "engine %s: backend=%s precision=%s providers=%s%s",
            self.model_id,
            self.backend.name,
            self.backend.precision,
            list(self.backend.providers),
            f" (recorded max |delta| {error['max_abs_stars']:.2g} stars vs {error.get('against', 'fp32')})"
            if error
            else "",
        )

    # ------------------------------------------------------------------ info
    @property
    def model_id(self) -> str:
        return self.artifacts.model_id

    @property
    def model_sha256(self) -> str:
        return self.artifacts.onnx_sha256

    @property
    def mode(self) -> str:
        """The running mode's key in the card's ``precision_errors`` (``fp32``, ``bf16``, ``fp32-openvino``, ...)."""
        return mode_key(self.backend.name, self.backend.precision)

    def precision_error(self) -> dict[str, Any] | None:
        """The card's recorded error of the running mode against fp32 (``max_abs_stars``, ...), if any."""
        if self.mode == "fp32":
            parity = self.artifacts.card.get("parity")
            if isinstance(parity, dict) and "max_abs_diff_stars" in parity:
                return {"max_abs_stars": parity["max_abs_diff_stars"], "against": "reference (torch)"}
            return None
        recorded = self.artifacts.card.get("precision_errors", {})
        found = recorded.get(self.mode) if isinstance(recorded, dict) else None
        return dict(found) if isinstance(found, dict) else None

    def info(self) -> dict[str, Any]:
        """What is loaded and how it runs: model, backend, providers, precision, hardware, recorded error."""

        return {
            "model_id": self.model_id,
            "onnx_sha256": self.model_sha256,
            "weights_sha256": self.artifacts.weights_sha256,
            "contract": self.contract.to_dict(),
            "backend": self.backend.name,
            "providers": list(self.backend.providers),
            "precision": self.backend.precision,
            "mode": self.mode,
            "precision_error": self.precision_error(),
            "runtime": self.backend.describe(),
            "hardware": detect().summary(),
            "card": self.artifacts.card,
        }

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Run zero views through the model once per batch size (default: the static sizes, or 3).

        On the GPU path this builds every static session (and compiles/caches TensorRT engines), so call it
        before reporting SERVING.
        """

        detect()  # probe the hardware now (imports OpenVINO), not in the first model-info request
        warm = getattr(self.backend, "warmup", None)
        if callable(warm):
            warm(tuple(batch_sizes) if batch_sizes else None)
            return
        c, (h, w) = self.contract.n_channels, self.contract.spatial_size
        for b in batch_sizes or (len(self.contract.views),):
            self.run(np.zeros((b, c, h, w), dtype=np.float32))

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
                f"views have shape {tuple(views.shape)}; expected ({expected[0]}, {expected[1]}, H, W)",
                field="views",
            )
        if views.dtype not in (np.float32, np.float16):
            raise InvalidInput(f"views have dtype {views.dtype}; expected float32 or float16", field="views")
        if not np.isfinite(views).all():
            raise InvalidInput("views contain NaN or Inf values", field="views")
        t0 = time.perf_counter()
        stars = self.run(views.astype(np.float32))
        timings = {"inference": (time.perf_counter() - t0) * 1e3}
        return self.result_from_stars(stars, None, [], timings, case_id)
