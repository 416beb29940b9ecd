"""Inputs shared by the benchmark scripts: the real cases in ../shared/data, or seeded phantoms."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DQE_SHARED_DATA", REPO.parent / "shared" / "data"))


def bench_cases(phantom_root: Path | None = None) -> list[tuple[str, dict[str, Path]]]:
    """One segmentation per real exam (4 exams), or two phantoms written under ``phantom_root``."""
    cases: list[tuple[str, dict[str, Path]]] = []
    dqe = SHARED / "brainlesion-deep_quality_estimation" / "tests" / "data"
    if dqe.is_dir():
        cases.append(
            (
                "BraTS-GLI-00001-000",
                {
                    "t1c": dqe / "t1c.nii.gz",
                    "t1": dqe / "t1n.nii.gz",
                    "t2": dqe / "t2w.nii.gz",
                    "flair": dqe / "t2f.nii.gz",
                    "segmentation": dqe / "seg-BraTS23_1.nii.gz",
                },
            )
        )
    for case in ("TCGA-DU-7294", "OtherEXampleFromTCIA"):
        root = SHARED / "brainlesion-tutorials" / "BraTS-Toolkit" / "data" / case / f"{case}_brainles"
        if root.is_dir():
            raw = root / "raw_bet"
            files = {
                k: raw / f"{case}_{v}_bet.nii.gz"
                for k, v in (("t1c", "t1c"), ("t1", "t1"), ("t2", "t2"), ("flair", "fla"))
            }
            cases.append((case, {**files, "segmentation": root / "fusion" / "mav.nii.gz"}))
    pre = SHARED / "brainlesion-BraTS" / "data" / "preprocessed_case"
    if pre.is_dir():
        files = {
            k: pre / f"{v}.nii.gz"
            for k, v in (("t1c", "t1c"), ("t1", "t1n"), ("t2", "t2w"), ("flair", "t2f"))
        }
        cases.append(
            (
                "brainlesion-BraTS",
                {**files, "segmentation": SHARED / "brainlesion-BraTS" / "outputs" / "segmentation.nii.gz"},
            )
        )
    if cases:
        return cases
    from dqe.models.phantom import make_phantom, write_case

    root = phantom_root or Path("/tmp/dqe-bench-phantoms")
    return [
        (f"phantom-{s}", write_case(make_phantom(seed=s), root / f"phantom-{s}", case_id=f"P{s}"))
        for s in (0, 1)
    ]


def machine_line() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
