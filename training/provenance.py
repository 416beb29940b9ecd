"""What a run records about itself: code version, library versions, host, seeds."""

from __future__ import annotations

import datetime as _dt
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """``git describe --always --dirty --tags`` of the checkout, else the installed package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        text = out.stdout.strip()
        if text:
            return f"git:{text}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"dqe-service {version('dqe-service')}"
    except Exception:
        return "unknown"


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform()}
    for name in ("torch", "monai", "torchio", "pytorch_optimizer", "onnxruntime"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace("_", "-"))
        except Exception:
            versions[name] = "absent"
    return versions


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "code_version": code_version(),
        "versions": library_versions(),
        "argv": list(sys.argv),
        **(extra or {}),
    }
