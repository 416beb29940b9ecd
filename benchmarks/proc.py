"""Child processes for benchmark sides: each side runs in its own interpreter so its threads, imports and
peak memory are its own.

A child is ``python -m benchmarks.<module> SPEC.json``; it prints one JSON object as its last stdout line.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


class ChildFailed(RuntimeError):
    """A benchmark child exited non-zero or printed no JSON; the message holds its stderr tail."""


@dataclass(frozen=True)
class ChildRun:
    """What a child process returned: its JSON, wall seconds and peak resident memory (MiB)."""

    result: Any
    wall_s: float
    peak_rss_mib: float
    stdout: str


def run_process(cmd: list[str], timeout_s: float = 1800.0, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``cmd`` from the repository root; wall time (s) and peak RSS (``ru_maxrss`` via ``os.wait4``).

    ``result`` is stdout parsed as JSON (the whole of it, else its last line), or ``None``.

    Raises:
        ChildFailed: non-zero exit, or killed after ``timeout_s`` seconds.
    """
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True, env=env)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read()
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-3000:]
            why = f"killed after {timeout_s:.0f} s" if wall >= timeout_s else f"exited {proc.returncode}"
            raise ChildFailed(f"{' '.join(cmd[:4])} {why}:\n{tail}")
    # Children print one JSON line last; `dqe score` prints its whole stdout as one indented JSON document.
    result = None
    for text in (stdout.strip(), *stdout.strip().splitlines()[-1:]):
        try:
            result = json.loads(text)
            break
        except json.JSONDecodeError:
            continue
    # Linux reports ru_maxrss in KiB.
    return ChildRun(result=result, wall_s=wall, peak_rss_mib=usage.ru_maxrss / 1024.0, stdout=stdout)


def run_child(module: str, spec: dict[str, Any], timeout_s: float = 1800.0) -> ChildRun:
    """``python -m benchmarks.<module> SPEC`` with ``spec`` written to a temporary JSON file.

    Raises:
        ChildFailed: the child failed or printed no JSON object.
    """
    with tempfile.TemporaryDirectory(prefix="dqe-bench-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        run = run_process([sys.executable, "-m", f"benchmarks.{module}", str(path)], timeout_s)
    if not isinstance(run.result, dict):
        raise ChildFailed(f"benchmarks.{module} printed no JSON object; stdout tail: {run.stdout[-500:]!r}")
    return run


def read_spec(argv: list[str]) -> dict[str, Any]:
    """The spec a child was started with (``argv[1]`` is the JSON file).

    Raises:
        SystemExit: no spec file given.
    """
    if len(argv) != 2:
        raise SystemExit(f"usage: python -m {argv[0]} SPEC.json (started by benchmarks/run.py)")
    spec: dict[str, Any] = json.loads(Path(argv[1]).read_text())
    return spec


def emit(result: dict[str, Any]) -> None:
    """Print the child's result as the last stdout line."""
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
