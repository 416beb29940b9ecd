"""Segmentation losses compared in one run: Dice+BCE, a paper-000 candidate, RRW, and Dice+BCE + a DQE term.

Each variant trains ``dqe seg-train`` from the same seed on the same 12 expert-labelled exams of
``../shared/data/brats2018-groundtruth`` (``training/configs/seg_brats.yaml`` with the grid reduced to
64 x 64 x 48, i.e. 3.75 x 3.75 x 3.2 mm, SegResNet with 8 filters) for the same number of epochs, validating only
after the last, then predicts the 4 held-out exams. Predictions are upsampled to the
original 240 x 240 x 155 grid (trilinear on the logits), thresholded at 0.5 and nested into a label map
(edema where WT, necrosis where TC, enhancing where ET); Dice and HD95 (mm, 1 mm voxels) per region come from
MONAI's metrics, and the stars from the frozen DQE network on those label maps (the views ``dqe score`` builds;
tests/test_training_losses_dqe.py checks the equality on the shared case). The ground truth's own stars are
printed for scale.

    python -m benchmarks.seg_losses --epochs 4 --json benchmarks/out/seg_losses.json

What it cannot show: with 4 held-out exams and one seed per variant, differences of a few Dice points are
within run-to-run noise; a handful of CPU epochs is far from convergence, so the table ranks early training,
not final quality.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from benchmarks.machine import load_average, machine_info
from dqe.models.case import Case
from dqe.training.losses.dqe import DQELoss
from dqe.training.segmentation.config import load_seg_config
from dqe.training.segmentation.data import deterministic_transforms, discover_exams
from dqe.training.segmentation.trainer import build_network, seg_train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "seg_brats.yaml"
REGIONS = ("WT", "TC", "ET")
GRID = [64, 64, 48]
DICE_BCE_PER_CHANNEL = {r: {"weight": 1 / 3, "losses": {"dice": 1, "bce": 1}} for r in REGIONS}
VARIANTS: dict[str, Any] = {
    "dice_bce": "dice_bce",
    "channel_wise_weighted": "channel_wise_weighted",
    "rrw": "rrw",
    "dice_bce+dqe": {"channels": DICE_BCE_PER_CHANNEL, "dqe_weight": 0.2, "dqe": {"upsample": 3.75}},
}
logger = logging.getLogger("benchmarks.seg_losses")


def label_map(regions: np.ndarray) -> np.ndarray:
    """Nested BraTS labels (2 edema, 1 necrosis, 3 enhancing) from WT/TC/ET masks ``(3, X, Y, Z)``."""
    out = np.zeros(regions.shape[1:], dtype=np.uint8)
    out[regions[0]] = 2
    out[regions[1]] = 1
    out[regions[2]] = 3
    return out


def region_masks(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels > 0, np.isin(labels, (1, 3, 4)), np.isin(labels, (3, 4))])


def evaluate(run_dir: Path, cfg: Any, dqe: DQELoss) -> list[dict[str, Any]]:
    """Per held-out exam: Dice and HD95 per region at full resolution, stars of prediction and ground truth."""
    record = json.loads((run_dir / "run.json").read_text())
    exams = {e["case_id"]: e for e in discover_exams(cfg.data.root)}
    net = build_network(cfg)
    net.load_state_dict(torch.load(run_dir / "model.pth", map_location="cpu", weights_only=True))
    net.eval()
    transform = deterministic_transforms(cfg)
    rows = []
    for case_id in record["val_cases"]:
        exam = exams[case_id]
        case = Case.from_files(*exam["image"], exam["label"])
        images = torch.from_numpy(np.stack([np.asarray(v[:, :, :], dtype=np.float64) for v in case.images]))[
            None
        ]
        truth = np.asarray(case.labels[:, :, :]).copy()
        truth[truth == 4] = 3  # BraTS 2018 writes enhancing tumour as 4; the one-hot below reads 0-3
        with torch.no_grad():
            logits = net(transform(exam)["image"][None].float())
            full = F.interpolate(logits, size=truth.shape, mode="trilinear", align_corners=False)
        pred = label_map((torch.sigmoid(full[0]) > 0.5).numpy())
        p_reg = torch.from_numpy(region_masks(pred)[None].astype(np.float32))
        t_reg = torch.from_numpy(region_masks(truth)[None].astype(np.float32))
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p_reg, t_reg)[0]
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p_reg, t_reg)[
            0
        ]
        with torch.no_grad():
            stars = float(dqe.stars(_onehot(pred), images)[0]) if pred.any() else float("nan")
            truth_stars = float(dqe.stars(_onehot(truth), images)[0])
        row = {"case": case_id, "stars": stars, "truth_stars": truth_stars}
        for i, r in enumerate(REGIONS):
            row[f"dice_{r}"], row[f"hd95_{r}"] = float(dice[i]), float(hd[i])
        rows.append(row)
        logger.info("%s %s", run_dir.name, row)
    return rows


def _onehot(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([labels == k for k in (0, 1, 2, 3)]).astype(np.float32))[None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "seg_losses")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "out" / "seg_losses.json")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    report: dict[str, Any] = {"machine": machine_info(), "load_start": load_average(), "epochs": args.epochs}
    dqe = DQELoss(labels=(0, 1, 2, 3))
    results = {}
    for name in args.variants:
        overrides = [
            f"train.epochs={args.epochs}",
            f"train.eval_every={args.epochs}",
            "train.device=cpu",
            f"data.grid={json.dumps(GRID)}",
            f"loss={json.dumps(VARIANTS[name])}",
        ]
        cfg = load_seg_config(CONFIG, overrides)
        if not (args.out / name / "model.pth").is_file():  # a finished variant is not trained again
            seg_train(cfg, args.out / name)
        train_s = _train_seconds(args.out / name)
        rows = evaluate(args.out / name, cfg, dqe)
        results[name] = {"train_s": train_s, "cases": rows, "mean": _means(rows)}
        logger.info("%s: %s", name, results[name]["mean"])
    report["results"], report["load_end"] = results, load_average()
    report["train_cases"] = json.loads((args.out / args.variants[0] / "run.json").read_text())["train_cases"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


def _train_seconds(run_dir: Path) -> float:
    """Wall time of the run's epochs (training + the final validation), from its metrics.csv."""
    import csv

    with (run_dir / "metrics.csv").open() as fh:
        return sum(float(r["seconds"]) for r in csv.DictReader(fh))


def _means(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in rows[0] if k != "case"]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def table(report: dict[str, Any]) -> str:
    head = "| loss | Dice WT | Dice TC | Dice ET | HD95 WT | HD95 TC | HD95 ET (mm) | DQE stars | train s |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, res in report["results"].items():
        m = res["mean"]
        lines.append(
            f"| {name} | {m['dice_WT']:.3f} | {m['dice_TC']:.3f} | {m['dice_ET']:.3f} | {m['hd95_WT']:.1f} | "
            f"{m['hd95_TC']:.1f} | {m['hd95_ET']:.1f} | {m['stars']:.2f} | {res['train_s']:.0f} |"
        )
    first = next(iter(report["results"].values()))
    lines.append(f"| (ground truth) | 1 | 1 | 1 | 0 | 0 | 0 | {first['mean']['truth_stars']:.2f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
