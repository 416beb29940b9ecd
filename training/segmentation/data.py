"""Exams for ``dqe seg-train``: discovery (BraTS folders or seeded phantoms), split, MONAI transforms.

Every exam becomes ``{"image": [t1c, t1, t2, flair], "label": seg, "case_id": ...}``. The deterministic
transforms (load, region channels, resize to the training grid, z-score of the brain) are cached by MONAI's
``CacheDataset``; the random ones (flips, intensity scale/shift) run per epoch. ``raw`` keeps the resized
images before normalisation: the DQE term scales them itself, as serving does.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt

from dqe.models.case import MODALITIES, discover_files
from dqe.models.contract import CONTRACT_V1
from dqe.models.errors import DQEError, NotFound
from dqe.models.phantom import make_phantom, write_case
from dqe.training.segmentation.config import SegTrainConfig

Exam = dict[str, Any]


def discover_exams(root: str | Path) -> list[Exam]:
    """Every case folder under ``root`` with four images and one segmentation (others are skipped, logged).

    Raises:
        NotFound: ``root`` is missing or holds no usable case.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"dataset folder {str(root)!r} does not exist", field="data.root")
    exams = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            files = discover_files(folder)
        except DQEError:
            continue
        exams.append(
            {
                "image": [str(files[m]) for m in MODALITIES],
                "label": str(files["segmentation"]),
                "case_id": folder.name,
            }
        )
    if not exams:
        raise NotFound(f"no BraTS-style case folder under {str(root)!r}", field="data.root")
    return exams


def synthetic_exams(folder: Path, count: int, shape: Sequence[int], seed: int) -> list[Exam]:
    """``count`` seeded phantom exams written (once) under ``folder``."""
    shapes = ("sphere", "ellipsoid", "lobulated")
    exams = []
    for i in range(count):
        case_id = f"PHANTOM-{i:05d}-000"
        target = folder / case_id
        if not target.is_dir():
            phantom = make_phantom(seed=seed + i, shape=tuple(shape), lesion=shapes[i % len(shapes)])  # type: ignore[arg-type]
            write_case(phantom, target, case_id=case_id)
        files = discover_files(target)
        exams.append(
            {
                "image": [str(files[m]) for m in MODALITIES],
                "label": str(files["segmentation"]),
                "case_id": case_id,
            }
        )
    return exams


def split_exams(exams: list[Exam], cfg: SegTrainConfig) -> tuple[list[Exam], list[Exam]]:
    """(train, validation) by case id: ``data.val_cases`` or a seeded ``val_fraction`` (at least one each)."""
    ids = [e["case_id"] for e in exams]
    if cfg.data.val_cases:
        missing = set(cfg.data.val_cases) - set(ids)
        if missing:
            raise NotFound(f"data.val_cases {sorted(missing)} are not in the dataset", field="data.val_cases")
        held = set(cfg.data.val_cases)
    else:
        n_val = min(max(1, round(len(ids) * cfg.data.val_fraction)), len(ids) - 1)
        held = set(random.Random(cfg.seed).sample(ids, n_val))
    return [e for e in exams if e["case_id"] not in held], [e for e in exams if e["case_id"] in held]


class RegionChannelsd(mt.MapTransform):
    """Labels ``(1, X, Y, Z)`` -> BraTS regions ``(3, X, Y, Z)`` float in ``regions`` order.

    The contract's label map (TC = 1, 3, 4; WT = 1-4; ET = 3, 4), so BraTS 2023 (label 3) and older BraTS
    (label 4) exams both work; MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` knows only label 4.
    """

    def __init__(self, keys: Sequence[Hashable], regions: Sequence[str]) -> None:
        super().__init__(keys)
        self.regions = tuple(regions)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.keys:
            labels = torch.as_tensor(np.asarray(out[key]))[0]
            masks = [torch.isin(labels, torch.tensor(CONTRACT_V1.label_map[r])) for r in self.regions]
            out[key] = torch.stack(masks).float()
        return out


def deterministic_transforms(cfg: SegTrainConfig) -> mt.Compose:
    """Load, region channels, resize to ``data.grid``, keep ``raw``, z-score each channel inside the brain."""
    grid = tuple(cfg.data.grid)
    return mt.Compose(
        [
            mt.LoadImaged(keys=["image", "label"], image_only=True),
            mt.EnsureChannelFirstd(keys=["image", "label"]),
            RegionChannelsd(keys=["label"], regions=cfg.regions),
            mt.Resized(keys=["image"], spatial_size=grid, mode="trilinear"),
            mt.Resized(keys=["label"], spatial_size=grid, mode="nearest"),
            mt.CopyItemsd(keys=["image"], names=["raw"]),
            mt.NormalizeIntensityd(keys=["image"], nonzero=True, channel_wise=True),
            mt.EnsureTyped(keys=["image", "label", "raw"], track_meta=False),
        ]
    )


def random_transforms() -> mt.Compose:
    """BraTS-style augmentation: flips on the three axes, intensity scale and shift of the normalised images."""
    return mt.Compose(
        [
            *(mt.RandFlipd(keys=["image", "label", "raw"], prob=0.5, spatial_axis=a) for a in range(3)),
            mt.RandScaleIntensityd(keys=["image"], factors=0.1, prob=1.0),
            mt.RandShiftIntensityd(keys=["image"], offsets=0.1, prob=1.0),
        ]
    )
