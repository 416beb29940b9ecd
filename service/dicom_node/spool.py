"""The node's disk state: every instance on arrival, each study's progress as marker files.

Layout under the spool folder::

    <StudyInstanceUID>/<SOPInstanceUID>.dcm   instances, written to a temporary name, fsynced, renamed
    <StudyInstanceUID>/.out/sr.dcm, kos.dcm   the reports, written before the study is marked scored
    <StudyInstanceUID>/.scored                JSON: verdict, stars, report UIDs (the study is never scored again)
    <StudyInstanceUID>/.sent                  the reports reached the destination
    <StudyInstanceUID>/.failed                JSON: the typed error; retried only when a newer instance arrives

A restart therefore loses no acknowledged instance (C-STORE success is answered after the rename), scores no study
twice (``.scored`` is written atomically after the reports), and resends reports that were scored but not sent.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A DICOM UID: dot-separated numeric components, at most 64 characters (PS3.5 9.1). The components rule keeps
# "." and ".." (which name the spool itself or its parent) from ever being a study folder or an instance name.
_UID = re.compile(r"^(?=.{1,64}$)[0-9]+(?:\.[0-9]+)*$")
SCORED, SENT, FAILED, OUT = ".scored", ".sent", ".failed", ".out"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class StudyState:
    uid: str
    folder: Path
    instances: int
    bytes: int
    last_arrival: float  # newest instance's mtime (epoch seconds)
    scored: bool
    sent: bool
    failed_at: float | None


class Spool:
    """The spool folder (created)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def study_dir(self, study_uid: str) -> Path:
        if not _UID.match(study_uid):
            raise ValueError(f"StudyInstanceUID {study_uid!r} is not a UID")
        return self.root / study_uid

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one instance (Part-10 bytes) durably; returns its path."""
        folder = self.study_dir(study_uid)
        if not _UID.match(sop_uid):
            raise ValueError(f"SOPInstanceUID {sop_uid!r} is not a UID")
        folder.mkdir(exist_ok=True)
        path = folder / f"{sop_uid}.dcm"
        atomic_write(path, data)
        return path

    def state(self, folder: Path) -> StudyState:
        files = [p for p in folder.glob("*.dcm")]
        stats = [p.stat() for p in files]
        failed = folder / FAILED
        return StudyState(
            uid=folder.name,
            folder=folder,
            instances=len(files),
            bytes=sum(s.st_size for s in stats),
            last_arrival=max((s.st_mtime for s in stats), default=0.0),
            scored=(folder / SCORED).exists(),
            sent=(folder / SENT).exists(),
            failed_at=failed.stat().st_mtime if failed.exists() else None,
        )

    def studies(self) -> list[StudyState]:
        return [self.state(p) for p in sorted(self.root.iterdir()) if p.is_dir() and _UID.match(p.name)]

    def mark(self, study_uid: str, marker: str, payload: dict[str, Any] | None = None) -> None:
        body = json.dumps({"at": time.time(), **(payload or {})}, default=str).encode()
        atomic_write(self.study_dir(study_uid) / marker, body)

    def write_out(self, study_uid: str, name: str, data: bytes) -> Path:
        out = self.study_dir(study_uid) / OUT
        out.mkdir(exist_ok=True)
        path = out / name
        atomic_write(path, data)
        return path

    def outputs(self, study_uid: str) -> list[Path]:
        out = self.study_dir(study_uid) / OUT
        return sorted(out.glob("*.dcm")) if out.is_dir() else []
