"""``EngineConfig`` (how the engine runs the model) and ``Plan`` (what a backend will run): the types every backend
reads, defined below the backends so that none imports the package that chooses between them."""

from __future__ import annotations

from dataclasses import dataclass

from dqe.models.registry import DEFAULT_MODEL_ID


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs the model.

    Attributes:
        model_id: registered model to load from the model home (built on first use when possible).
        providers: ``("auto",)`` = CUDA -> CPU for fp32, TensorRT -> CUDA for fp16, whichever this ONNX
            Runtime build has; or explicit names (``cpu``, ``cuda``, ``tensorrt`` or full provider names).
        precision: ``fp32`` (default, reference parity <= 1e-4 stars), ``bf16`` (OpenVINO on CPUs with
            AMX/AVX512-BF16), ``fp16`` (GPU) or ``auto`` (the fastest of these the machine runs). The engine
            replaces ``auto`` by what it chose.
        backend: ``auto`` (by precision), ``onnxruntime`` or ``openvino`` (fp32 or bf16 on CPU).
        intra_op_threads: threads per operator; 0 lets the runtime use all cores.
        inter_op_threads: threads across operators (ONNX Runtime).
        device_id: GPU index for CUDA/TensorRT.
        trt_cache_dir: TensorRT engine cache root (GPU only; default ``<model dir>/trt-cache``).
        static_batch_sizes: GPU path: batch sizes that get a static-shape session; other batches are padded
            up to the next size or split at the largest.
        cuda_graph: GPU path: replay each static session as a CUDA graph where every node runs on the GPU.
        spin_wait: let ONNX Runtime's idle worker threads spin between runs. Off by default: on a few shared
            cores the spinning threads steal the CPU from the decode threads of the next request (measured
            on 2 cores: decode right after a run 25 ms without spinning, 71 ms with; model 389 vs 523 ms).
        cpu_arena: ONNX Runtime's CPU memory arena (CPU provider): ``shrink`` (default) keeps the arena but
            hands its free chunks back after every run, ``keep`` keeps what the largest batch grew it to,
            ``off`` allocates with malloc. Measured on the real model (issue 21, 2 shared cores): resident
            memory after batches of 3, 12, 24 views 204/381/629 MB with ``keep``, 177/185/179 MB with
            ``shrink``, 210/250/342 MB with ``off``; speed within the machine's noise.
    """

    model_id: str = DEFAULT_MODEL_ID
    providers: tuple[str, ...] = ("auto",)
    precision: str = "fp32"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    device_id: int = 0
    trt_cache_dir: str | None = None
    backend: str = "auto"
    static_batch_sizes: tuple[int, ...] = (3, 24)
    cuda_graph: bool = True
    spin_wait: bool = False
    cpu_arena: str = "shrink"


CPU_ARENA_MODES = ("shrink", "keep", "off")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class Plan:
    """What will run: backend, precision, ONNX Runtime providers (empty for OpenVINO) and why."""

    backend: str
    precision: str
    providers: tuple[str, ...]
    reason: str

    @property
    def on_gpu(self) -> bool:
        return any(p in GPU_PROVIDERS for p in self.providers)
