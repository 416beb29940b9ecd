"""What a run writes about itself as it goes: ``run.json``, ``metrics.csv`` and TensorBoard scalars."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from dqe.training.provenance import now

logger = logging.getLogger(__name__)

METRICS_COLUMNS = ("epoch", "train_loss", "val_mae", "val_rmse", "val_pearson")
RECORD = "run.json"


def read_record(run_dir: Path, resume: bool) -> dict[str, Any]:
    """The run record to continue: the saved ``run.json`` on resume (when there is one), else empty."""
    path = run_dir / RECORD
    return json.loads(path.read_text()) if (resume and path.is_file()) else {}


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as ``run_dir/run.json`` (indented JSON; values JSON cannot hold become strings)."""
    (run_dir / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")


def note_resume(record: dict[str, Any], epoch: int) -> None:
    """Add a resumption at ``epoch`` (completed epochs) to ``record["resumed_at"]``."""
    record.setdefault("resumed_at", []).append({"time": now(), "epoch": epoch})


def finish_record(
    record: dict[str, Any], history: list[dict[str, float]], evaluation: dict[str, Any] | None
) -> None:
    """Mark ``record`` finished: the time, the last metrics row and the held-out evaluation (if any)."""
    record["finished_at"] = now()
    record["final"] = {"history_last": history[-1] if history else None, "eval": evaluation}


def write_metrics(
    path: Path, rows: list[dict[str, float]], columns: tuple[str, ...] = METRICS_COLUMNS
) -> None:
    """Rewrite the per-epoch CSV log atomically (header ``columns``, one row per epoch)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in columns})
    os.replace(tmp, path)


def open_tensorboard(folder: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` logging to ``folder``, or ``None`` when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the CSV log always exists
        logger.warning("tensorboard is not installed; logging to metrics.csv only")
        return None
    return SummaryWriter(log_dir=str(folder))


def log_scalars(
    writer: Any, row: dict[str, float], epoch: int, columns: tuple[str, ...] = METRICS_COLUMNS
) -> None:
    """Add the metrics of ``row`` that are not NaN to ``writer`` at step ``epoch`` (no-op without a writer)."""
    if writer is None:
        return
    for key in columns[1:]:
        if not math.isnan(row[key]):
            writer.add_scalar(key, row[key], epoch)
    writer.flush()
