"""The machine line of a benchmark report: CPU, cores, memory, load, commit and library versions.

Everything is read from this machine at run time (``/proc/cpuinfo``, ``/proc/meminfo``, ``os.getloadavg``,
``git``, installed package metadata); which precision modes run here is decided by
:func:`dqe.service.hardware.detect`, never assumed.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# Report columns: precision modes of the README table, in order.
TABLE_MODES = ("fp32", "bf16", "fp16")


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def mode_availability() -> dict[str, dict[str, Any]]:
    """``{mode: {"available": bool, "why": str}}`` for fp32, bf16, fp16 and fp32-openvino on this machine."""
    from dqe.service.hardware import detect

    hw = detect()
    bf16, bf16_why = hw.bf16_support()
    fp16, fp16_why = hw.fp16_support()
    ov = hw.openvino is not None
    return {
        "fp32": {"available": True, "why": "ONNX Runtime CPUExecutionProvider"},
        "fp32-openvino": {
            "available": ov,
            "why": f"OpenVINO {str(hw.openvino).split('-')[0]}"
            if ov
            else "the openvino package is not installed",
        },
        "bf16": {"available": bf16, "why": bf16_why},
        "fp16": {"available": fp16, "why": fp16_why},
    }


def machine_info() -> dict[str, Any]:
    """Everything the report's machine line prints, as JSON-ready data."""
    from dqe.service.hardware import INTERESTING_FLAGS, detect

    hw = detect()
    sha = _git("rev-parse", "HEAD")
    return {
        "cpu_model": hw.cpu.model,
        "cpu_flags": [f for f in INTERESTING_FLAGS if f in hw.cpu.flags],
        "cpu_flags_checked": list(INTERESTING_FLAGS),
        "logical_cores": hw.cpu.logical_cpus,
        "mem_total_gib": _mem_total_gib(),
        "load_average_start": load_average(),
        "commit": sha,
        "commit_short": sha[:7],
        "worktree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            name: _version(name)
            for name in (
                "onnxruntime",
                "onnxruntime-gpu",
                "openvino",
                "numpy",
                "torch",
                "deep-quality-estimation",
                "grpcio",
            )
        },
        "onnxruntime_providers": list(hw.ort_providers),
        "modes": mode_availability(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
