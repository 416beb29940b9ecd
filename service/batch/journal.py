"""A crash-safe, append-only journal of batch results (JSON Lines).

Each record is one line; a group of records (one case) is written with a single ``write`` and made
durable with ``flush`` + ``os.fsync`` before the run moves on, so a crash loses at most the case in
flight. A torn last line (the process died mid-write) is detected on open and cut off, so the next
append starts on a clean line. When a key appears more than once (a segmentation re-scored after its
file changed) the last record wins.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

JOURNAL_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/Inf floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class Journal:
    """Append-only JSONL file keyed by ``(case, team)``.

    Args:
        path: the journal file (created on first append).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.torn_lines = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good_end = 0
        pos = 0
        while pos < len(raw):
            nl = raw.find(b"\n", pos)
            if nl < 0:  # no newline: the last write was cut short
                self.torn_lines += 1
                break
            line = raw[pos:nl]
            pos = nl + 1
            if not line.strip():
                good_end = pos
                continue
            try:
                rec = json.loads(line)
                key = (str(rec["case"]), str(rec["team"]))
            except (ValueError, KeyError, TypeError):
                self.torn_lines += 1
                logger.warning(
                    "journal %s: skipping an unreadable line at byte %d", self.path, pos - len(line) - 1
                )
                continue
            self.records[key] = rec
            good_end = pos
        if good_end < len(raw):
            logger.warning(
                "journal %s: cutting off %d bytes of a torn last record", self.path, len(raw) - good_end
            )
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())

    def done(self, case: str, team: str, input_key: str) -> bool:
        """Whether ``(case, team)`` has a final record for these inputs.

        A record counts when it has stars, or a typed (deterministic) error; an unexpected error (a bug,
        memory) is retried on the next run.
        """
        rec = self.records.get((case, team))
        if rec is None or rec.get("input_key") != input_key:
            return False
        return not rec.get("error") or bool(rec.get("error_typed"))

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records durably (one write, flush, fsync) and index them."""
        recs = [_clean({**r, "journal_version": JOURNAL_VERSION}) for r in records]
        if not recs:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # make the new directory entry durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        for r in recs:
            self.records[(r["case"], r["team"])] = r

    def __len__(self) -> int:
        return len(self.records)
