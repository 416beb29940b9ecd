"""ONNX Runtime backends.

* :class:`OrtBackend` - one dynamic-shape session on the CPU provider; ``InferenceSession.run`` is
  thread-safe, so one backend serves many threads. This is the fp32 reference-parity default.
* :class:`OrtDeviceBackend` - the GPU path (CUDA or TensorRT provider). One static-shape session per
  (batch bucket, H, W) with its input and output buffers allocated once on the device and bound through
  IO binding: a batch costs one host->device copy of the whole ``(N, C, H, W)`` array and one device->host
  copy of ``N`` floats, never a copy per view. Batches are padded up to the next configured batch size (or
  split at the largest one) so a handful of sessions serve every request, and CUDA graphs (CUDA provider)
  or TensorRT's own graph capture replay each static session without per-kernel launches. fp16 runs as
  TensorRT fp16 engines (cached on disk under the model directory, keyed by the model's sha256) or as an
  fp16 copy of the graph on the CUDA provider.

  The same class runs on the CPU provider (``device="cpu"``), so static sessions, bucketing/padding, IO
  binding, thread safety, the fp16 graph conversion and the refusal of a silent CPU fallback are tested on
  machines without a GPU. Not exercised without one: allocation of the OrtValues on ``cuda``, the CUDA
  provider options (``use_tf32=0``, ``enable_cuda_graph``) and graph capture/replay, TensorRT engine build,
  ``trt_fp16_enable`` numerics and the on-disk engine/timing caches.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.errors import UnsupportedMode
from dqe.service.backends.config import CPU_ARENA_MODES, GPU_PROVIDERS, Plan

if TYPE_CHECKING:
    from dqe.models.artifacts import ModelArtifacts
    from dqe.service.backends.config import EngineConfig

logger = logging.getLogger(__name__)

MAX_STATIC_SESSIONS = 8


def run_options(config: EngineConfig) -> Any:
    """Options of each run: with ``cpu_arena="shrink"``, the CPU arena hands its free chunks back after the run
    (so resident memory at rest does not stay at what the largest batch needed)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if config.cpu_arena == "shrink":
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def session_options(config: EngineConfig) -> Any:
    """Graph optimisation ALL, the configured thread counts, the CPU arena mode and (by default) no spin-waiting
    workers.

    Raises:
        UnsupportedMode: ``cpu_arena`` is not one of :data:`CPU_ARENA_MODES`.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = config.inter_op_threads
    if config.cpu_arena not in CPU_ARENA_MODES:
        raise UnsupportedMode(
            f"cpu_arena is {config.cpu_arena!r}; expected one of {list(CPU_ARENA_MODES)}", field="cpu_arena"
        )
    opts.enable_cpu_mem_arena = config.cpu_arena != "off"
    spin = "1" if config.spin_wait else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


class OrtBackend:
    """ONNX Runtime on the CPU provider: one session, dynamic shapes, thread-safe ``run``."""

    name = "onnxruntime"

    def __init__(self, artifacts: ModelArtifacts, config: EngineConfig, plan: Plan) -> None:
        import onnxruntime as ort

        if plan.precision != "fp32":
            raise UnsupportedMode(
                f"precision {plan.precision!r} is not provided by the ONNX Runtime CPU backend",
                field="precision",
            )
        self.precision = "fp32"
        self.session = ort.InferenceSession(
            str(artifacts.onnx_path), session_options(config), providers=list(plan.providers)
        )
        self.providers = list(self.session.get_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.run_options = run_options(config)
        logger.info("onnxruntime session for %s on %s (fp32)", artifacts.model_id, self.providers)

    def run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        out = self.session.run(None, feed, self.run_options)[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "precision": self.precision,
            "providers": list(self.providers),
            "device": "cpu",
        }


def fp16_model_bytes(onnx_path: Path) -> bytes:
    """The model with fp16 weights and activations, fp32 input and output (Cast nodes at the edges).

    Raises:
        UnsupportedMode: the ``onnx`` package needed for the conversion is not installed.
    """
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise UnsupportedMode(
            f"fp16 on the CUDA provider converts the graph with the onnx package, which is missing ({exc}); "
            "install onnx or use the TensorRT provider",
            field="precision",
        ) from exc
    model = onnx.load(str(onnx_path))
    return bytes(convert_float_to_float16(model, keep_io_types=True).SerializeToString())


def bucket_plan(n: int, sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """How to cover ``n`` rows with static batch sizes: ``[(start, stop, bucket), ...]``.

    Greedy: the largest size that fits the rows left, repeatedly; a remainder smaller than every size is
    padded up to the smallest one. Padding is thus below the smallest size (2 rows for sizes (3, 24)).
    """
    ordered = sorted({int(s) for s in sizes if int(s) > 0}, reverse=True)
    if not ordered:
        raise ValueError(f"static batch sizes {sizes!r} has no positive size")
    out: list[tuple[int, int, int]] = []
    start = 0
    while start < n:
        rest = n - start
        bucket = next((s for s in ordered if s <= rest), ordered[-1])
        stop = min(start + bucket, n)
        out.append((start, stop, bucket))
        start = stop
    return out


@dataclass
class _StaticSession:
    """A session whose input is fixed to one shape, with device buffers bound once."""

    session: Any
    binding: Any
    input: Any  # OrtValue on the device, (N, C, H, W) float32
    output: Any  # OrtValue on the device, (N, 1) float32
    shape: tuple[int, int, int, int]
    cuda_graph: bool
    lock: threading.Lock
    runs: int = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.input.update_inplace(batch)  # the one host->device copy of this batch
            self.binding.synchronize_inputs()
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
            self.runs += 1
            # The N output floats back to the host (works for device and CPU OrtValues alike).
            return np.asarray(self.binding.copy_outputs_to_cpu()[0], dtype=np.float32).reshape(-1)


class OrtDeviceBackend:
    """ONNX Runtime with static-shape sessions and IO binding (the GPU path; also runs on CPU for tests).

    Args:
        artifacts: the published model.
        config: ``device_id``, ``trt_cache_dir``, ``static_batch_sizes``, ``cuda_graph``, threads.
        plan: from :func:`dqe.service.backends.plan_backend`; its providers decide CUDA, TensorRT or CPU.
        device: ``"cuda"`` or ``"cpu"``; default: ``"cuda"`` when the plan has a GPU provider.

    Raises:
        UnsupportedMode: a GPU provider was planned but the session did not get it (no device or driver),
            or fp16 was asked for on a provider that cannot run it.
    """

    name = "onnxruntime"

    def __init__(
        self, artifacts: ModelArtifacts, config: EngineConfig, plan: Plan, device: str | None = None
    ) -> None:
        self.artifacts = artifacts
        self.config = config
        self.plan = plan
        self.precision = plan.precision
        self.device = device or ("cuda" if plan.on_gpu else "cpu")
        self.providers = list(plan.providers)
        self.batch_sizes = tuple(sorted({int(b) for b in config.static_batch_sizes if int(b) > 0})) or (3,)
        self.trt = "TensorrtExecutionProvider" in plan.providers
        self.cuda_graph = bool(config.cuda_graph) and self.device == "cuda"
        self.trt_cache = self._trt_cache_dir() if self.trt else None
        self._model: str | bytes = str(artifacts.onnx_path)
        if self.precision == "fp16" and not self.trt:
            self._model = fp16_model_bytes(artifacts.onnx_path)
        elif self.precision not in ("fp32", "fp16"):
            raise UnsupportedMode(
                f"precision {self.precision!r} is not provided by onnxruntime", field="precision"
            )
        self._sessions: OrderedDict[tuple[int, int, int, int], _StaticSession] = OrderedDict()
        self._lock = threading.Lock()
        # Build the default-shape session now so provider problems surface at startup, not on a request.
        self._session_for(
            (self.batch_sizes[0], artifacts.contract.n_channels, *artifacts.contract.spatial_size)
        )
        logger.info(
            "onnxruntime static sessions for %s on %s (%s, device=%s, batch sizes %s, cuda graph %s)",
            artifacts.model_id,
            self.providers,
            self.precision,
            self.device,
            self.batch_sizes,
            self.cuda_graph,
        )

    # ------------------------------------------------------------------ sessions
    def _trt_cache_dir(self) -> str:
        root = (
            Path(self.config.trt_cache_dir)
            if self.config.trt_cache_dir
            else self.artifacts.directory / "trt-cache"
        )
        # Engines depend on model bytes and precision: one folder per (sha256, precision) never goes stale.
        path = root / f"{self.artifacts.onnx_sha256[:16]}-{self.precision}"
        os.makedirs(path, exist_ok=True)
        return str(path)

    def _provider_options(self, cuda_graph: bool) -> list[dict[str, Any]]:
        options: list[dict[str, Any]] = []
        for p in self.providers:
            if p == "TensorrtExecutionProvider":
                options.append(
                    {
                        "device_id": self.config.device_id,
                        "trt_fp16_enable": self.precision == "fp16",
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": self.trt_cache,
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": self.trt_cache,
                        "trt_cuda_graph_enable": cuda_graph,
                    }
                )
            elif p == "CUDAExecutionProvider":
                options.append(
                    {
                        "device_id": self.config.device_id,
                        # fp32 keeps full-precision convolutions: TF32 would break reference parity.
                        "use_tf32": 0,
                        "cudnn_conv_algo_search": "EXHAUSTIVE",
                        "enable_cuda_graph": int(cuda_graph and not self.trt),
                    }
                )
            else:
                options.append({})
        return options

    def _build(self, shape: tuple[int, int, int, int], cuda_graph: bool) -> _StaticSession:
        import onnxruntime as ort

        opts = session_options(self.config)
        n, _, h, w = shape
        # Free dimensions become constants: shape inference, memory planning and TensorRT see one shape.
        for dim, value in (("batch", n), ("height", h), ("width", w)):
            opts.add_free_dimension_override_by_name(dim, value)
        session = ort.InferenceSession(
            self._model, opts, providers=self.providers, provider_options=self._provider_options(cuda_graph)
        )
        got = list(session.get_providers())
        wanted_gpu = [p for p in self.providers if p in GPU_PROVIDERS]
        if wanted_gpu and wanted_gpu[0] not in got:
            raise UnsupportedMode(
                f"onnxruntime did not start {wanted_gpu[0]} (session providers {got}); no usable GPU or "
                "driver, and falling back to CPU silently is refused",
                field="providers",
            )
        device_id = self.config.device_id if self.device == "cuda" else 0
        inp = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, device_id)
        out_meta = session.get_outputs()[0]
        out_shape = [n, *[int(d) if isinstance(d, int) else 1 for d in out_meta.shape[1:]]]
        out = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, self.device, device_id)
        binding = session.io_binding()
        binding.bind_ortvalue_input(session.get_inputs()[0].name, inp)
        binding.bind_ortvalue_output(out_meta.name, out)
        self.providers = got
        return _StaticSession(session, binding, inp, out, shape, cuda_graph, threading.Lock())

    def _session_for(self, shape: tuple[int, int, int, int]) -> _StaticSession:
        with self._lock:
            found = self._sessions.get(shape)
            if found is not None:
                self._sessions.move_to_end(shape)
                return found
            try:
                static = self._build(shape, self.cuda_graph)
            except UnsupportedMode:
                raise
            except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
                if not self.cuda_graph:
                    raise
                # CUDA graphs need every node on the GPU provider; run without them rather than fail.
                logger.warning("CUDA graph capture unavailable for %s (%s); running without it", shape, exc)
                self.cuda_graph = False
                static = self._build(shape, False)
            self._sessions[shape] = static
            while len(self._sessions) > MAX_STATIC_SESSIONS:
                old, _ = self._sessions.popitem(last=False)
                logger.info("dropped static session %s (more than %d shapes)", old, MAX_STATIC_SESSIONS)
            return static

    # ------------------------------------------------------------------ inference
    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n, c, h, w = batch.shape
        out = np.empty(n, dtype=np.float32)
        for start, stop, bucket in bucket_plan(n, self.batch_sizes):
            static = self._session_for((bucket, c, h, w))
            rows = stop - start
            if rows == bucket:
                chunk = batch[start:stop]
            else:  # pad with zeros up to the static batch size; padded rows are dropped below
                chunk = np.zeros((bucket, c, h, w), dtype=np.float32)
                chunk[:rows] = batch[start:stop]
            out[start:stop] = static.run(chunk)[:rows]
        return out

    def warmup(
        self, batch_sizes: tuple[int, ...] | None = None, spatial: tuple[int, int] | None = None
    ) -> None:
        """Build (and, for TensorRT, compile and cache) every static session and run it once."""
        c = self.artifacts.contract.n_channels
        h, w = spatial or tuple(self.artifacts.contract.spatial_size)
        for b in batch_sizes or self.batch_sizes:
            self.run(np.zeros((b, c, h, w), dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "precision": self.precision,
            "providers": list(self.providers),
            "device": self.device,
            "static_batch_sizes": list(self.batch_sizes),
            "static_sessions": [list(s) for s in self._sessions],
            "io_binding": True,
            "cuda_graph": self.cuda_graph,
            "trt_engine_cache": self.trt_cache,
        }
