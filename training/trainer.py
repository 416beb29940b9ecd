"""The training loop: data from a ratings table, the paper's recipe, resumable checkpoints and logs.

A run directory holds::

    config.yaml          the resolved config (what --resume reads)
    run.json             seed, data hash, code and library versions, device, split, start/resume times
    metrics.csv          one row per epoch: epoch,train_loss,val_mae,val_rmse,val_pearson
    tensorboard/         the same scalars as TensorBoard events
    checkpoints/last.pt  model + optimiser + epoch + history (rewritten atomically, train.checkpoint_every)
    model.pth            the final weights (state dict; the paper keeps the last checkpoint, no selection)
    eval/                held-out metrics per view and 3-view mean, predictions, scatter and Bland-Altman plots

Determinism: the sample order of epoch ``e`` comes from a generator seeded with ``(seed, e)`` and the
augmentation of sample ``i`` in epoch ``e`` from ``numpy.random.default_rng([seed, e, i])``, so a resumed
run repeats exactly what an uninterrupted one would have done (on the same device and thread count).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dqe.models.contract import PreprocessingContract
from dqe.models.registry import sha256_file
from dqe.training.config import TrainConfig, build_contract, from_dict, save_config
from dqe.training.data import (
    ViewBank,
    build_view_bank,
    data_hash,
    expand_views,
    make_samples,
    rated_views,
    read_ratings,
    split_exams,
)
from dqe.training.evaluate import format_metrics, regression_metrics, summarize, write_report
from dqe.training.model import SplitNetwork, build_model, build_optimizer, init_path, resolve_device
from dqe.training.provenance import now, provenance, seed_everything
from dqe.training.synthetic import synthetic_ratings
from dqe.training.transforms import Pipeline, build_pipeline

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

METRICS_COLUMNS = ("epoch", "train_loss", "val_mae", "val_rmse", "val_pearson")
CHECKPOINT = Path("checkpoints") / "last.pt"
WEIGHTS = "model.pth"
# Settings that may change between a run and its resumption (they do not change what is computed,
# except epochs, which extends the run).
RESUMABLE_KEYS = {
    ("train", "epochs"),
    ("train", "eval_every"),
    ("train", "checkpoint_every"),
    ("train", "num_workers"),
    ("train", "device"),
    ("train", "threads"),
    ("train", "eval_batch_size"),
}


class RunError(ValueError):
    """The run directory and the request disagree (existing run without --resume, changed config...)."""


@dataclass
class RunData:
    """Everything the loop needs from the ratings table."""

    contract: PreprocessingContract
    table: pd.DataFrame
    bank: ViewBank
    train_samples: pd.DataFrame
    val_rated: pd.DataFrame
    val_keys: list[str]
    train_exams: list[str]
    val_exams: list[str]
    data_hash: str
    table_path: str


def ratings_path(cfg: TrainConfig, run_dir: Path) -> Path:
    """The ratings table of a run, generating the synthetic one on first use."""
    if cfg.data.synthetic is not None:
        folder = run_dir / "data"
        table = folder / "ratings.csv"
        if not table.is_file():
            s = cfg.data.synthetic
            synthetic_ratings(folder, exams=s.exams, grid=tuple(s.grid), raters=s.raters, seed=s.seed)  # type: ignore[arg-type]
        return table
    if cfg.data.ratings is None:
        raise RunError("data.ratings is not set (a CSV/Parquet ratings table; e.g. --set data.ratings=FILE)")
    return Path(cfg.data.ratings)


def prepare_data(cfg: TrainConfig, run_dir: Path, progress: bool = False) -> RunData:
    """Read, split and preprocess the ratings table of ``cfg``.

    Raises:
        NotFound / InvalidInput: the table or its files (see :func:`dqe.training.data.read_ratings`).
    """
    contract = build_contract(cfg.contract)
    table_path = ratings_path(cfg, run_dir)
    df = read_ratings(table_path, views=contract.views)
    cache = (Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "cache") / "views"
    bank = build_view_bank(df, contract, cache_dir=cache, skip_invalid=True, progress=progress)
    if bank.skipped:
        df = df[~df["seg_key"].isin(set(bank.skipped))].reset_index(drop=True)
    train_exams, val_exams = split_exams(
        df["exam_id"].tolist(), cfg.data.val_fraction, cfg.seed, cfg.data.val_exams
    )
    train_df = df[df["exam_id"].isin(set(train_exams))]
    val_df = df[df["exam_id"].isin(set(val_exams))]
    if train_df.empty:
        raise RunError("no training ratings left after the split; lower data.val_fraction or add exams")
    return RunData(
        contract=contract,
        table=df,
        bank=bank,
        train_samples=make_samples(train_df, contract.views, cfg.data.targets),
        val_rated=rated_views(expand_views(val_df, contract.views))
        if len(val_df)
        else val_df.assign(target=[], n_ratings=[]),
        val_keys=list(dict.fromkeys(val_df["seg_key"])),
        train_exams=train_exams,
        val_exams=val_exams,
        data_hash=data_hash(df),
        table_path=str(table_path),
    )


class ViewDataset(Dataset):
    """Samples ``(input, target)``: ``inputs[index[i]]`` augmented by ``pipeline`` with a per-(epoch, i) seed."""

    def __init__(
        self,
        inputs: Sequence[Any] | torch.Tensor,
        index: np.ndarray,
        targets: np.ndarray,
        pipeline: Pipeline | None,
        seed: int,
    ) -> None:
        self.inputs = inputs
        self.index = np.asarray(index, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.pipeline = pipeline
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.index.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[int(self.index[i])]
        if self.pipeline is not None and len(self.pipeline):
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            x = self.pipeline(np.asarray(x), rng)
        tensor = (
            x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        )
        return tensor, torch.tensor(self.targets[i])


def view_arrays(bank: ViewBank, keys: Sequence[tuple[str, str]]) -> list[np.ndarray]:
    return [bank.view(k, v) for k, v in keys]


def weights_digest(cfg: TrainConfig) -> str | None:
    """A key for the frozen prefix's features: initial weights + architecture + cut + contract."""
    path = init_path(cfg.model.init)
    if path is None or cfg.model.freeze_until is None:
        return None

    text = json.dumps(
        [sha256_file(path), cfg.model.architecture, cfg.model.freeze_until, cfg.contract.labels],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compute_features(
    split: SplitNetwork,
    arrays: Sequence[np.ndarray],
    device: torch.device,
    batch_size: int,
    cache_dir: Path | None = None,
    digest: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Frozen-prefix features of ``arrays`` (on CPU), cached on disk per view content when ``digest`` is set."""
    store = cache_dir / "features" / digest if (cache_dir is not None and digest) else None
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    out: list[torch.Tensor | None] = [None] * len(arrays)
    names: list[Path | None] = [None] * len(arrays)
    todo: list[int] = []
    for i, arr in enumerate(arrays):
        if store is not None:
            name = store / (hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest() + ".pt")
            names[i] = name
            if name.is_file():
                out[i] = torch.load(name, weights_only=True)
                continue
        todo.append(i)
    split.eval()
    chunks = range(0, len(todo), batch_size)
    if progress and todo:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="features", unit="batch", leave=False)  # type: ignore[assignment]
    for start in chunks:
        idx = todo[start : start + batch_size]
        batch = torch.from_numpy(np.stack([arrays[i] for i in idx]).astype(np.float32)).to(device)
        feats = split.features(batch).float().cpu()
        for j, i in enumerate(idx):
            out[i] = feats[j].clone()
            target = names[i]
            if target is not None:
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                torch.save(out[i], tmp)
                os.replace(tmp, target)
    return torch.stack([t for t in out if t is not None])


def predict(
    split: SplitNetwork,
    arrays: Sequence[np.ndarray] | torch.Tensor,
    device: torch.device,
    batch_size: int,
    features: bool = False,
    amp: bool = False,
) -> np.ndarray:
    """Stars for views (or, with ``features``, for prefix features) in eval mode."""
    split.eval()
    preds: list[np.ndarray] = []
    n = len(arrays)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            if isinstance(arrays, torch.Tensor):
                batch = arrays[start : start + batch_size]
            else:
                batch = torch.from_numpy(
                    np.stack(list(arrays[start : start + batch_size])).astype(np.float32)
                )
            batch = batch.to(device)
            with _autocast(device, amp):
                out = split.head(batch) if features else split(batch)
            preds.append(out.float().cpu().numpy().reshape(-1))
    return np.concatenate(preds) if preds else np.zeros((0,), dtype=np.float32)


def _autocast(device: torch.device, amp: bool) -> Any:
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"
    )


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(METRICS_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in METRICS_COLUMNS})
    os.replace(tmp, path)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _config_delta(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    diffs = []
    for section in sorted(set(a) | set(b)):
        va, vb = a.get(section), b.get(section)
        if isinstance(va, dict) and isinstance(vb, dict):
            for key in sorted(set(va) | set(vb)):
                if va.get(key) != vb.get(key) and (section, key) not in RESUMABLE_KEYS:
                    diffs.append(f"{section}.{key}: {va.get(key)!r} -> {vb.get(key)!r}")
        elif va != vb:
            diffs.append(f"{section}: {va!r} -> {vb!r}")
    return diffs


def resolve_run_config(cfg: TrainConfig | None, run_dir: Path, resume: bool) -> TrainConfig:
    """The config to run: the given one for a new run; the saved one (epochs etc. updatable) on resume.

    Raises:
        RunError: a new run into a directory that has one, a resume without a saved run, or a resume with a
            config that changes anything but the resumable settings.
    """
    import yaml

    saved_path = run_dir / "config.yaml"
    has_run = (run_dir / CHECKPOINT).is_file() or saved_path.is_file()
    if not resume:
        if has_run:
            raise RunError(
                f"{str(run_dir)!r} already holds a run; pass --resume to continue it or choose a new --out"
            )
        if cfg is None:
            raise RunError("a config is required for a new run")
        return cfg
    if not saved_path.is_file():
        raise RunError(f"nothing to resume in {str(run_dir)!r} (no config.yaml)")
    saved: TrainConfig = from_dict(TrainConfig, yaml.safe_load(saved_path.read_text()))
    if cfg is None:
        return saved.validate()
    diffs = _config_delta(saved.to_dict(), cfg.to_dict())
    if diffs:
        raise RunError(f"--resume with a different config: {'; '.join(diffs)}")
    return cfg


def train(
    cfg: TrainConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run; returns a summary (final metrics, paths, timings).

    Args:
        cfg: the config (``None`` on resume reads the saved one).
        run_dir: the run directory (created).
        resume: continue from ``checkpoints/last.pt``.
        device: overrides ``train.device``.
        progress: tqdm progress bars.
        stop_after: stop after this many epochs in this call (the run stays resumable); for tests.
        on_epoch: called with each epoch's metrics row.

    Raises:
        RunError: see :func:`resolve_run_config`; DQEError for bad data.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = resolve_run_config(cfg, run_dir, resume)
    if device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    cfg.validate()
    dev = resolve_device(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    t_start = time.perf_counter()

    data = prepare_data(cfg, run_dir, progress=progress)
    contract = data.contract
    net = build_model(cfg.model, contract.n_channels)
    # saved once data and weights are known to load, so a failed start leaves no half-made run behind
    save_config(cfg, run_dir / "config.yaml")
    split = SplitNetwork(net, cfg.model.freeze_until, cfg.model.bn_eval).to(dev)

    samples = data.train_samples
    # first-appearance order (the table's), not path hashes, so moving the data does not reorder training
    unique_keys = list(dict.fromkeys(zip(samples["seg_key"], samples["view"], strict=True)))
    position = {k: i for i, k in enumerate(unique_keys)}
    index = np.array([position[k] for k in zip(samples["seg_key"], samples["view"], strict=True)])
    val_pairs = [(k, v) for k in data.val_keys for v in contract.views]
    pipeline = (
        build_pipeline(cfg.augment.transforms, len(contract.image_channels)) if cfg.augment.enabled else None
    )
    use_features = split.frozen and (pipeline is None or len(pipeline) == 0)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "cache"
    digest = weights_digest(cfg)
    inputs: Sequence[Any] | torch.Tensor
    val_inputs: Sequence[np.ndarray] | torch.Tensor
    if use_features:
        logger.info(
            "frozen prefix and no augmentation: caching prefix features of %d views",
            len(unique_keys) + len(val_pairs),
        )
        inputs = compute_features(
            split,
            view_arrays(data.bank, unique_keys),
            dev,
            cfg.train.eval_batch_size,
            cache_dir,
            digest,
            progress,
        )
        val_inputs = (
            compute_features(
                split,
                view_arrays(data.bank, val_pairs),
                dev,
                cfg.train.eval_batch_size,
                cache_dir,
                digest,
                progress,
            )
            if val_pairs
            else torch.zeros(0)
        )
    else:
        inputs = view_arrays(data.bank, unique_keys)
        val_inputs = view_arrays(data.bank, val_pairs)
    dataset = ViewDataset(
        inputs, index, samples["target"].to_numpy(), None if use_features else pipeline, cfg.seed
    )
    steps_per_epoch = math.ceil(len(dataset) / cfg.train.batch_size)
    optimizer = build_optimizer(cfg.optim, split.trainable_parameters(), cfg.train.epochs * steps_per_epoch)

    history: list[dict[str, float]] = []
    start_epoch = 0
    record_path = run_dir / "run.json"
    record: dict[str, Any] = json.loads(record_path.read_text()) if (resume and record_path.is_file()) else {}
    if resume and (run_dir / CHECKPOINT).is_file():
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
        if state.get("data_hash") != data.data_hash:
            raise RunError(
                f"the ratings data changed since the run started (data hash {state.get('data_hash')} -> {data.data_hash})"
            )
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        record.setdefault("resumed_at", []).append({"time": now(), "epoch": start_epoch})
        logger.info("resumed %s at epoch %d", run_dir, start_epoch)
    split.to(dev)
    record.update(
        {
            "name": cfg.name,
            "seed": cfg.seed,
            "config_digest": cfg.digest(),
            "data_hash": data.data_hash,
            "ratings": data.table_path,
            "n_ratings": int(len(data.table)),
            "n_segmentations": int(data.table["seg_key"].nunique()),
            "train_exams": data.train_exams,
            "val_exams": data.val_exams,
            "n_train_samples": len(dataset),
            "n_val_views": len(val_pairs),
            "skipped_segmentations": data.bank.skipped,
            "device": str(dev),
            "contract": contract.to_dict(),
            "frozen_prefix": cfg.model.freeze_until,
            "cached_features": use_features,
            "augmentations": pipeline.describe() if pipeline is not None else [],
            **provenance(),
        }
    )
    record.setdefault("started_at", now())
    record_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    _write_metrics(run_dir / "metrics.csv", history)

    if start_epoch == 0 and cfg.model.init is not None and val_pairs and "initial_eval" not in record:
        # the starting point of a fine-tuning run, on the same held-out views, for a before/after comparison
        preds0 = _val_predictions(split, data, val_pairs, val_inputs, dev, cfg, use_features)
        record["initial_eval"] = write_report(
            preds0, data.val_rated, contract.views, run_dir / "eval_initial", title=f"{cfg.name} (initial)"
        )
        record_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        logger.info("initial weights on the held-out views:\n%s", format_metrics(record["initial_eval"]))

    writer = _tensorboard(run_dir / "tensorboard")
    loss_fn = torch.nn.MSELoss()
    last_epoch = cfg.train.epochs if stop_after is None else min(cfg.train.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        dataset.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=0 if use_features else cfg.train.num_workers,
            pin_memory=dev.type == "cuda",
        )
        split.train()
        total, count = 0.0, 0
        bar = loader
        if progress:
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", leave=False)  # type: ignore[assignment]
        for x, y in bar:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with _autocast(dev, cfg.train.amp):
                pred = split.head(x) if use_features else split(x)
            loss = loss_fn(pred.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * int(y.shape[0])
            count += int(y.shape[0])
            if progress:
                bar.set_postfix(loss=f"{total / count:.4f}")  # type: ignore[attr-defined]
        train_loss = total / max(count, 1)
        due = (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs
        val = (
            _validate(split, data, val_pairs, val_inputs, dev, cfg, use_features)
            if due
            else regression_metrics([], [])
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_mae": val["mae"],
            "val_rmse": val["rmse"],
            "val_pearson": val["pearson"],
        }
        history.append(row)
        _write_metrics(run_dir / "metrics.csv", history)
        if writer is not None:
            for key in METRICS_COLUMNS[1:]:
                if not math.isnan(row[key]):
                    writer.add_scalar(key, row[key], epoch + 1)
            writer.flush()
        last = epoch + 1 == last_epoch
        if (epoch + 1) % cfg.train.checkpoint_every == 0 or last:
            _save_checkpoint(
                run_dir / CHECKPOINT,
                {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "config": cfg.to_dict(),
                    "config_digest": cfg.digest(),
                    "data_hash": data.data_hash,
                    "torch_rng": torch.get_rng_state(),
                    "architecture": cfg.model.architecture,
                    "in_channels": contract.n_channels,
                    "contract": contract.to_dict(),
                },
            )
        logger.info(
            "epoch %d/%d train_loss %.4f val_mae %.3f val_rmse %.3f val_r %.3f",
            epoch + 1, cfg.train.epochs, train_loss, val["mae"], val["rmse"], val["pearson"],
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(row)
    if writer is not None:
        writer.close()

    completed = len(history)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "epochs_completed": completed,
        "epochs": cfg.train.epochs,
        "history": history,
        "seconds": time.perf_counter() - t_start,
    }
    if completed >= cfg.train.epochs:
        torch.save(net.state_dict(), run_dir / WEIGHTS)
        summary["weights"] = str(run_dir / WEIGHTS)
        if val_pairs:
            preds = _val_predictions(split, data, val_pairs, val_inputs, dev, cfg, use_features)
            metrics = write_report(preds, data.val_rated, contract.views, run_dir / "eval", title=cfg.name)
            summary["eval"] = metrics
            logger.info("held-out evaluation (%d exams):\n%s", len(data.val_exams), format_metrics(metrics))
        if "initial_eval" in record:
            summary["initial_eval"] = record["initial_eval"]
        record["finished_at"] = now()
        record["final"] = {"history_last": history[-1] if history else None, "eval": summary.get("eval")}
        record_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return summary


def _val_predictions(
    split: SplitNetwork,
    data: RunData,
    val_pairs: list[tuple[str, str]],
    val_inputs: Sequence[np.ndarray] | torch.Tensor,
    dev: torch.device,
    cfg: TrainConfig,
    use_features: bool,
) -> pd.DataFrame:
    import pandas as pd

    pred = predict(
        split, val_inputs, dev, cfg.train.eval_batch_size, features=use_features, amp=cfg.train.amp
    )
    exams = data.table.drop_duplicates("seg_key").set_index("seg_key")["exam_id"]
    return pd.DataFrame(
        {
            "seg_key": [k for k, _ in val_pairs],
            "exam_id": [exams[k] for k, _ in val_pairs],
            "view": [v for _, v in val_pairs],
            "pred": pred,
        }
    )


def _validate(
    split: SplitNetwork,
    data: RunData,
    val_pairs: list[tuple[str, str]],
    val_inputs: Sequence[np.ndarray] | torch.Tensor,
    dev: torch.device,
    cfg: TrainConfig,
    use_features: bool,
) -> dict[str, float]:
    """Pooled metrics over rated held-out views (NaN when nothing is held out)."""
    if not val_pairs:
        return regression_metrics([], [])
    preds = _val_predictions(split, data, val_pairs, val_inputs, dev, cfg, use_features)
    return summarize(preds, data.val_rated, data.contract.views)["views"]


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the CSV log always exists
        logger.warning("tensorboard is not installed; logging to metrics.csv only")
        return None
    return SummaryWriter(log_dir=str(folder))
