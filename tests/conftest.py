"""Shared fixtures: seeded phantom cases in tmp_path, the real shared cases (skipped when absent), one engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DQE_SHARED_DATA", REPO.parent / "shared" / "data"))
DQE_TEST_DATA = SHARED_DATA / "brainlesion-deep_quality_estimation" / "tests" / "data"
TOOLKIT = SHARED_DATA / "brainlesion-tutorials" / "BraTS-Toolkit" / "data"
BRATS_CASE = SHARED_DATA / "brainlesion-BraTS"
GROUND_TRUTH = SHARED_DATA / "brats2018-groundtruth"


def real_data_available() -> bool:
    return DQE_TEST_DATA.is_dir()


REAL_DATA_REASON = f"real BraTS cases not found at {SHARED_DATA} (set DQE_SHARED_DATA)"


def real_cases() -> list[tuple[str, dict[str, Path]]]:
    """Every (case, segmentation) pair in ../shared/data, as explicit file maps."""
    cases: list[tuple[str, dict[str, Path]]] = []
    if DQE_TEST_DATA.is_dir():
        imgs = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}
        base = {k: DQE_TEST_DATA / f"{v}.nii.gz" for k, v in imgs.items()}
        for seg in ("seg-BraTS23_1", "seg-BraTS23_1_mapped", "seg-bratstoolkit_isen"):
            cases.append(
                (f"BraTS-GLI-00001-000/{seg}", {**base, "segmentation": DQE_TEST_DATA / f"{seg}.nii.gz"})
            )
    for case in ("TCGA-DU-7294", "OtherEXampleFromTCIA"):
        root = TOOLKIT / case / f"{case}_brainles"
        if not root.is_dir():
            continue
        raw = root / "raw_bet"
        base = {
            k: raw / f"{case}_{v}_bet.nii.gz"
            for k, v in {"t1c": "t1c", "t1": "t1", "t2": "t2", "flair": "fla"}.items()
        }
        for seg in sorted((root / "segmentation").glob("*.nii.gz")) + sorted(
            (root / "fusion").glob("*.nii.gz")
        ):
            cases.append(
                (f"{case}/{seg.parent.name}/{seg.name.split('.')[0]}", {**base, "segmentation": seg})
            )
    pre = BRATS_CASE / "data" / "preprocessed_case"
    if pre.is_dir():
        base = {
            k: pre / f"{v}.nii.gz"
            for k, v in {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}.items()
        }
        cases.append(
            (
                "brainlesion-BraTS/preprocessed_case",
                {**base, "segmentation": BRATS_CASE / "outputs" / "segmentation.nii.gz"},
            )
        )
    return cases


def ground_truth_cases() -> list[tuple[str, dict[str, Path]]]:
    """Every expert ground truth in ../shared/data/brats2018-groundtruth (``<exam>_{t1ce,t1,t2,flair,seg}``).

    Kept apart from :func:`real_cases`: 16 exams are too many for the fast path's loops over real cases.
    """
    cases: list[tuple[str, dict[str, Path]]] = []
    if not GROUND_TRUTH.is_dir():
        return cases
    names = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair", "segmentation": "seg"}
    for exam in sorted(p for p in GROUND_TRUTH.iterdir() if p.is_dir()):
        cases.append((f"{exam.name}/seg", {k: exam / f"{exam.name}_{v}.nii.gz" for k, v in names.items()}))
    return cases


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_data_available():
        return
    skip = pytest.mark.skip(reason=REAL_DATA_REASON)
    for item in items:
        if "real_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine():
    """One fp32 ONNX Runtime engine for the whole session (model built by `make model` or on first use)."""
    from dqe.service.engine import Engine, EngineConfig

    return Engine(EngineConfig(intra_op_threads=2))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BraTS 2023-named phantom case folder (seed 0, spherical lesion, int16 images, labels 1/2/3)."""
    from dqe.models.phantom import make_phantom, write_case

    folder = tmp_path_factory.mktemp("phantom") / "PHANTOM-00000-000"
    write_case(make_phantom(seed=0), folder, case_id="PHANTOM-00000-000")
    return folder


@pytest.fixture(scope="session")
def phantom_case(phantom_dir: Path):
    from dqe.models.case import Case

    return Case.from_folder(phantom_dir)
