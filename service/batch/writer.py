"""Atomic output files: write to a temporary file in the same folder, fsync, then ``os.replace``.

A reader (or a crash) sees either the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(*parts: str) -> str:
    """A file-system-safe name joined from ``parts`` (``__`` between them)."""
    return "__".join(_UNSAFE.sub("_", p).strip("._") or "_" for p in parts)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return atomic_write(path, write)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (NaN/Inf written as ``null``), indented."""
    text = json.dumps(_json_safe(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def write_table(df: pd.DataFrame, csv_path: str | Path, parquet_path: str | Path) -> None:
    """``scores.csv`` (NaN as empty cells) and ``scores.parquet`` (pyarrow), both atomically."""
    atomic_write(csv_path, lambda fh: df.to_csv(fh, index=False, lineterminator="\n"))
    atomic_write(parquet_path, lambda fh: df.to_parquet(fh, index=False, engine="pyarrow"))
