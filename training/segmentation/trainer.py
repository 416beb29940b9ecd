"""The ``dqe seg-train`` loop: MONAI network, registered loss, cached data, resumable, recorded like ``dqe train``.

Run directory::

    config.yaml          the resolved config (what --resume reads)
    run.json             provenance, split, device, resumptions, final metrics (training/record.py)
    metrics.csv          one row per epoch: train_loss and per-region Dice / HD95 on the held-out exams
    tensorboard/         the same scalars
    checkpoints/last.pt  weights, optimiser, scheduler, epoch, history, torch RNG (resume is exact)
    model.pth            the final weights
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.nets import SegResNet, UNet

from dqe.models.errors import InvalidInput
from dqe.training import record as rec
from dqe.training.checkpoint import load_checkpoint, save_checkpoint
from dqe.training.losses.compound import CompoundLoss
from dqe.training.losses.dqe import DQELoss
from dqe.training.losses.registry import build_loss
from dqe.training.provenance import now, provenance, seed_everything
from dqe.training.segmentation.config import SegTrainConfig, load_seg_config, save_seg_config
from dqe.training.segmentation.data import (
    deterministic_transforms,
    discover_exams,
    random_transforms,
    split_exams,
    synthetic_exams,
)

logger = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.pt"


def metric_columns(regions: tuple[str, ...]) -> tuple[str, ...]:
    """The ``metrics.csv`` header: epoch, train_loss, seconds, val_dice_<r> per region, val_hd95_<r>, val_dice_mean."""
    names = [r.lower() for r in regions]
    return (
        "epoch",
        "train_loss",
        "seconds",
        *(f"val_dice_{n}" for n in names),
        *(f"val_hd95_{n}" for n in names),
        "val_dice_mean",
    )


def build_network(cfg: SegTrainConfig) -> torch.nn.Module:
    """SegResNet or UNet, 4 MR channels in, one logit per region out."""
    n_out, f = len(cfg.regions), cfg.model.init_filters
    if cfg.model.architecture == "segresnet":
        return SegResNet(spatial_dims=3, in_channels=4, out_channels=n_out, init_filters=f)
    return UNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=n_out,
        channels=(f, 2 * f, 4 * f, 8 * f),
        strides=(2, 2, 2),
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("train.device is 'cuda' but no CUDA device is available", field="train.device")
    return torch.device(name)


def compute_loss(loss_fn: torch.nn.Module, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """The loss of a batch; losses with a DQE term also receive the unnormalised images (``raw``)."""
    if isinstance(loss_fn, DQELoss):
        return loss_fn(logits, batch["raw"].to(logits.device))
    if isinstance(loss_fn, CompoundLoss) and loss_fn.dqe is not None:
        return loss_fn(logits, batch["label"], images=batch["raw"].to(logits.device))
    return loss_fn(logits, batch["label"])


def _as_numpy(value: torch.Tensor | tuple[torch.Tensor, ...]) -> np.ndarray:
    """MONAI's ``aggregate()`` result (a tensor with ``mean_batch``) as numpy."""
    tensor = value[0] if isinstance(value, tuple) else value
    return tensor.detach().cpu().numpy()


@torch.no_grad()
def evaluate(
    net: torch.nn.Module, loader: DataLoader, regions: tuple[str, ...], device: torch.device
) -> dict[str, float]:
    """Per-region Dice and HD95 (voxels of the training grid; MONAI metrics) of thresholded sigmoid outputs."""
    net.eval()
    dice = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=False)
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="mean_batch")
    for batch in loader:
        pred = (torch.sigmoid(net(batch["image"].to(device))) > 0.5).float().cpu()
        dice(pred, batch["label"])
        hd95(pred, batch["label"])
    d, h = _as_numpy(dice.aggregate()), _as_numpy(hd95.aggregate())
    out = {}
    for i, r in enumerate(regions):
        out[f"val_dice_{r.lower()}"] = float(d[i])
        out[f"val_hd95_{r.lower()}"] = float(h[i])
    out["val_dice_mean"] = float(np.mean(d))
    return out


@dataclass
class SegRun:
    """What a started run holds."""

    cfg: SegTrainConfig
    run_dir: Path
    device: torch.device
    net: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    val_loader: DataLoader
    record: dict[str, Any]
    history: list[dict[str, float]]
    start_epoch: int = 0


def _exams(cfg: SegTrainConfig, run_dir: Path) -> list[dict[str, Any]]:
    if cfg.data.root is not None:
        return discover_exams(cfg.data.root)
    return synthetic_exams(run_dir / "phantoms", cfg.data.synthetic, cfg.data.synthetic_shape, cfg.seed)


def start(cfg: SegTrainConfig, run_dir: Path, resume: bool = False) -> SegRun:
    """Build data, network, loss and optimiser; restore ``checkpoints/last.pt`` when resuming."""
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = _device(cfg.train.device)
    train_exams, val_exams = split_exams(_exams(cfg, run_dir), cfg)
    det = deterministic_transforms(cfg)
    train_ds = CacheDataset(train_exams, det, cache_rate=cfg.data.cache_rate, num_workers=0, progress=False)
    val_ds = CacheDataset(val_exams, det, cache_rate=cfg.data.cache_rate, num_workers=0, progress=False)
    train_ds_aug = _Augmented(train_ds, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds_aug, batch_size=cfg.train.batch_size, shuffle=True, generator=gen, num_workers=0
    )
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=0)
    net = build_network(cfg).to(device)
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    record = rec.read_record(run_dir, resume)
    run = SegRun(
        cfg, run_dir, device, net, loss_fn, optimizer, scheduler, train_loader, val_loader, record, []
    )
    ckpt = run_dir / CHECKPOINT
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.T_max = (
            cfg.train.epochs
        )  # a resume that raises train.epochs stretches the cosine to the new end
        run.start_epoch, run.history = int(state["epoch"]), list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["loader_rng"])
        rec.note_resume(record, run.start_epoch)
    record.update(
        {
            "task": "segmentation",
            "config_digest": cfg.digest(),
            "train_cases": [e["case_id"] for e in train_exams],
            "val_cases": [e["case_id"] for e in val_exams],
            "device": str(device),
            "parameters": sum(p.numel() for p in net.parameters()),
            **provenance(),
        }
    )
    record.setdefault("started_at", now())
    rec.write_record(run_dir, record)
    save_seg_config(cfg, run_dir / "config.yaml")
    return run


class _Augmented(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The cached exams with the random transforms applied on access.

    :meth:`reseed` at the start of every epoch seeds the transforms from (seed, epoch), so a run resumed at
    an epoch boundary draws what an uninterrupted one would without saving MONAI's per-transform RNGs.
    """

    def __init__(self, base: CacheDataset, seed: int) -> None:
        self.base, self.aug, self.seed = base, random_transforms(), seed

    def reseed(self, epoch: int) -> None:
        self.aug.set_random_state(seed=(self.seed * 1_000_003 + epoch) % (2**32))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        return self.aug(self.base[index])


def _checkpoint(run: SegRun, epoch: int) -> None:
    save_checkpoint(
        run.run_dir / CHECKPOINT,
        {
            "model": run.net.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "epoch": epoch,
            "history": run.history,
            "config": run.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "loader_rng": run.train_loader.generator.get_state(),  # type: ignore[union-attr]
        },
    )


def train_epoch(run: SegRun, epoch: int) -> float:
    """One pass over the training exams (``epoch`` counted from 0); the mean loss per batch."""
    run.net.train()
    run.train_loader.dataset.reseed(epoch)  # type: ignore[attr-defined]
    total, count = 0.0, 0
    for batch in run.train_loader:
        logits = run.net(batch["image"].to(run.device))
        loss = compute_loss(
            run.loss_fn, logits, {k: v.to(run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        total += float(loss.item())
        count += 1
    run.scheduler.step()
    return total / max(count, 1)


def seg_train(
    cfg: SegTrainConfig, run_dir: Path, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Train to ``train.epochs`` (continuing a checkpoint with ``resume``); returns the last metrics row.

    ``stop_after`` ends this call after that many epochs in total (an interruption: the run is left
    resumable, ``model.pth`` and the final record are not written).
    """
    run = start(cfg, run_dir, resume)
    columns = metric_columns(cfg.regions)
    writer = rec.open_tensorboard(run_dir / "tensorboard")
    try:
        for epoch in range(run.start_epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            loss = train_epoch(run, epoch)
            row: dict[str, float] = {c: math.nan for c in columns}
            row.update({"epoch": epoch + 1, "train_loss": loss})
            last = epoch + 1 == cfg.train.epochs
            if last or (epoch + 1) % cfg.train.eval_every == 0:
                row.update(evaluate(run.net, run.val_loader, cfg.regions, run.device))
            row["seconds"] = time.perf_counter() - t0
            run.history.append(row)
            rec.write_metrics(run_dir / "metrics.csv", run.history, columns)
            rec.log_scalars(writer, row, epoch + 1, columns)
            logger.info(
                "epoch %d/%d loss %.4f val dice %.3f", epoch + 1, cfg.train.epochs, loss, row["val_dice_mean"]
            )
            if last or (epoch + 1) % cfg.train.checkpoint_every == 0:
                _checkpoint(run, epoch + 1)
            if stop_after is not None and epoch + 1 >= stop_after and not last:
                return row
    finally:
        if writer is not None:
            writer.close()
    torch.save(run.net.state_dict(), run_dir / "model.pth")
    rec.finish_record(run.record, run.history, run.history[-1] if run.history else None)
    rec.write_record(run_dir, run.record)
    return run.history[-1] if run.history else {}


def resume_config(run_dir: Path, overrides: list[str]) -> SegTrainConfig:
    """The saved config of a run, with overrides (e.g. more epochs)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InvalidInput(f"{str(run_dir)!r} holds no config.yaml to resume", field="out")
    return load_seg_config(path, overrides)
