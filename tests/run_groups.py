"""Run the test suite as one pytest process per area and print one total line.

Usage: ``python tests/run_groups.py "GLOB GLOB" "GLOB" ...`` (the Makefile's ``TEST_GROUPS``). Separate
processes keep the native thread pools of torch (reference oracle, training), OpenVINO, Ray and gRPC apart: a
single long process crashed once with SIGSEGV after all of them had loaded. Fails when a test file belongs to no
group, so nothing is silently left out.
"""

from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path

COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def main(groups: list[str]) -> int:
    files = {Path(p) for p in glob.glob("tests/test_*.py")}
    covered = {Path(p) for group in groups for pattern in group.split() for p in glob.glob(pattern)}
    missing = sorted(str(p) for p in files - covered)
    if missing:
        print(f"test files in no Makefile TEST_GROUPS entry: {missing}")
        return 1
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    worst = 0
    for group in groups:
        paths = sorted({p for pattern in group.split() for p in glob.glob(pattern)})
        print(f"== pytest {' '.join(paths)}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *paths], stdout=subprocess.PIPE, text=True
        )
        sys.stdout.write(proc.stdout)
        summary = [line for line in proc.stdout.splitlines() if COUNT.search(line)]
        for number, kind in COUNT.findall(summary[-1] if summary else ""):
            key = "error" if kind.startswith("error") else kind
            if key in totals:
                totals[key] += int(number)
        if proc.returncode != 0:
            worst = proc.returncode
            if not summary:  # crashed before pytest could summarise (e.g. a signal)
                totals["error"] += 1
                print(f"pytest exited with {proc.returncode} before its summary")
    failed = totals["failed"] + totals["error"]
    print(f"total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if worst or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
