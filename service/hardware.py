"""What this machine can run: CPU instruction sets, OpenVINO's CPU capabilities, ONNX Runtime's GPU providers.

The engine asks this module before it builds a backend, so a precision the hardware lacks is refused with
:class:`dqe.models.errors.UnsupportedMode` instead of being emulated slowly or silently replaced:

* ``bf16`` needs a CPU with AMX-BF16 (Intel Sapphire Rapids and later) or AVX512-BF16 (Intel Cooper Lake,
  AMD Zen 4 and later) and the ``openvino`` runtime.
* ``fp16`` needs an NVIDIA GPU through ONNX Runtime's TensorRT or CUDA execution provider.

Nothing here imports onnxruntime or openvino at module import time (``dqe --help`` stays instant).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# /proc/cpuinfo flag names (Linux) of the instructions that matter to inference.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INTERESTING_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU as the kernel reports it.

    ``flags`` are the lower-case ``/proc/cpuinfo`` flags (empty when the file is unreadable, e.g. macOS);
    ``logical_cpus`` counts the CPUs this process may run on.
    """

    model: str
    flags: frozenset[str]
    logical_cpus: int

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def native_bf16(self) -> bool:
        """True when the CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16 dot products)."""
        return self.amx_bf16 or self.avx512_bf16

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "logical_cpus": self.logical_cpus,
            "flags": [f for f in INTERESTING_FLAGS if f in self.flags],
        }


def parse_cpuinfo(text: str, logical_cpus: int | None = None) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (the first processor block is enough)."""
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.lower().split())
        if model and flags:
            break
    return CpuInfo(model=model or "unknown", flags=flags, logical_cpus=logical_cpus or _logical_cpus())


def _logical_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The host CPU (cached; reads ``/proc/cpuinfo`` once)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def import_openvino() -> Any:
    """Import the ``openvino`` module with its usage telemetry disabled; returns the module.

    ``import openvino`` imports ``openvino.tools.ovc``, which sends an "import" event through the
    ``openvino_telemetry`` package; the sender forks a process (``multiprocessing.Process``) from a background
    thread. A fork while gRPC threads run is unsupported by gRPC (and sends data off the machine), so while
    OpenVINO is first imported, ``openvino_telemetry`` is made unimportable: OpenVINO then binds its own no-op
    stub (``openvino.tools.ovc.telemetry_stub``) for the life of the process. Other code may still import
    ``openvino_telemetry`` afterwards. When OpenVINO was already imported elsewhere this only returns it.

    Raises:
        ImportError: OpenVINO is not installed.
    """
    already = sys.modules.get("openvino")
    if already is not None:
        return already
    blocked = "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # makes `import` raise ImportError
    try:
        import openvino
    finally:
        if blocked and sys.modules.get("openvino_telemetry", 0) is None:
            del sys.modules["openvino_telemetry"]
    return openvino


@functools.lru_cache(maxsize=1)
def openvino_version() -> str | None:
    """The installed OpenVINO runtime's version, or ``None`` when the ``openvino`` package is absent.

    Imports OpenVINO (with telemetry disabled, see :func:`import_openvino`).
    """
    try:
        openvino = import_openvino()
    except ImportError:
        return None
    return str(openvino.get_version())


@functools.lru_cache(maxsize=1)
def openvino_cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` for the CPU device (``()`` when OpenVINO is absent).

    ``BF16`` appears only where the CPU plugin has native bf16 kernels (AMX or AVX512-BF16).
    """
    if openvino_version() is None:
        return ()
    ov = import_openvino()

    try:
        return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # the CPU plugin failed to load
        logger.warning("openvino CPU plugin unavailable: %s", exc)
        return ()


@functools.lru_cache(maxsize=1)
def ort_providers() -> tuple[str, ...]:
    """Execution providers compiled into the installed ONNX Runtime.

    A listed GPU provider means the build has it, not that a GPU and driver are present: the backend checks
    the providers a session actually got.
    """
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


@dataclass(frozen=True)
class Hardware:
    """Everything backend selection needs to know, as plain data (tests build fake ones)."""

    cpu: CpuInfo
    openvino: str | None
    openvino_capabilities: tuple[str, ...]
    ort_providers: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def gpu_providers(self) -> tuple[str, ...]:
        return tuple(p for p in GPU_PROVIDERS if p in self.ort_providers)

    def bf16_support(self) -> tuple[bool, str]:
        """Whether ``bf16`` can run here, and why (or why not) in words."""
        if self.openvino is None:
            return (
                False,
                "bf16 runs through the OpenVINO runtime, which is not installed (pip install openvino)",
            )
        native = [f for f in BF16_FLAGS if f in self.cpu.flags]
        if self.cpu.flags and not native:
            return False, (
                f"CPU {self.cpu.model!r} has neither AMX-BF16 nor AVX512-BF16; bf16 would be emulated "
                "(slower than fp32), so it is refused"
            )
        if "BF16" not in self.openvino_capabilities:
            return False, f"OpenVINO {self.openvino} reports no native bf16 on CPU {self.cpu.model!r}"
        how = "/".join(native) if native else "OpenVINO BF16 capability"
        return True, f"CPU {self.cpu.model!r} has {how}"

    def fp16_support(self) -> tuple[bool, str]:
        """Whether ``fp16`` can run here: it needs ONNX Runtime's TensorRT or CUDA provider."""
        if self.gpu_providers:
            return True, f"onnxruntime has {list(self.gpu_providers)}"
        return False, (
            "fp16 needs an NVIDIA GPU through onnxruntime-gpu (TensorRT or CUDA execution provider); this "
            f"onnxruntime has only {list(self.ort_providers)}. On CPUs with AMX/AVX512-BF16 use bf16"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu.summary(),
            "openvino": self.openvino,
            "openvino_cpu_capabilities": list(self.openvino_capabilities),
            "onnxruntime_providers": list(self.ort_providers),
            "bf16": self.bf16_support()[0],
            "fp16": self.fp16_support()[0],
        }


@functools.lru_cache(maxsize=2)
def detect(probe_openvino: bool = True) -> Hardware:
    """The :class:`Hardware` of this process (cached).

    ``probe_openvino=False`` skips importing OpenVINO (about half a second) for callers that only need
    ONNX Runtime's fp32; the result then reports OpenVINO as absent.
    """
    hw = Hardware(
        cpu=cpu_info(),
        openvino=openvino_version() if probe_openvino else None,
        openvino_capabilities=openvino_cpu_capabilities() if probe_openvino else (),
        ort_providers=ort_providers(),
        notes=() if probe_openvino else ("openvino not probed",),
    )
    logger.debug("hardware: %s", hw.summary())
    return hw
