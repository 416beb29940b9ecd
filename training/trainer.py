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

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dqe.models.contract import PreprocessingContract
from dqe.training.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    checkpoint_state,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
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
from dqe.training.inputs import ViewDataset, autocast, compute_features, predict, view_arrays, weights_digest
from dqe.training.losses.registry import build_loss
from dqe.training.model import SplitNetwork, build_model, build_optimizer, resolve_device
from dqe.training.provenance import now, provenance, seed_everything
from dqe.training.record import METRICS_COLUMNS as METRICS_COLUMNS  # re-exported: the metrics.csv header
from dqe.training.record import (
    finish_record,
    log_scalars,
    note_resume,
    open_tensorboard,
    read_record,
    write_metrics,
    write_record,
)
from dqe.training.synthetic import synthetic_ratings
from dqe.training.transforms import Pipeline, build_pipeline

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

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


@dataclass
class EpochInputs:
    """What the epochs read: the training samples and the held-out views.

    With ``use_features`` (a frozen prefix and no augmentation) the inputs are the prefix's features,
    computed once, and only the head runs in the loop; otherwise they are the preprocessed views.
    """

    dataset: ViewDataset
    val_pairs: list[tuple[str, str]]
    val_inputs: Sequence[np.ndarray] | torch.Tensor
    use_features: bool
    pipeline: Pipeline | None


def prepare_inputs(
    cfg: TrainConfig, run_dir: Path, data: RunData, split: SplitNetwork, device: torch.device, progress: bool
) -> EpochInputs:
    """The training dataset and held-out inputs of a run, with prefix features cached when they can be."""
    samples = data.train_samples
    unique_keys, index = _sample_index(samples)
    val_pairs = [(k, v) for k in data.val_keys for v in data.contract.views]
    pipeline = (
        build_pipeline(cfg.augment.transforms, len(data.contract.image_channels))
        if cfg.augment.enabled
        else None
    )
    use_features = split.frozen and (pipeline is None or len(pipeline) == 0)
    inputs: Sequence[Any] | torch.Tensor
    val_inputs: Sequence[np.ndarray] | torch.Tensor
    if use_features:
        logger.info(
            "frozen prefix and no augmentation: caching prefix features of %d views",
            len(unique_keys) + len(val_pairs),
        )
        features = _featurizer(cfg, run_dir, data.bank, split, device, progress)
        inputs = features(unique_keys)
        val_inputs = features(val_pairs) if val_pairs else torch.zeros(0)
    else:
        inputs = view_arrays(data.bank, unique_keys)
        val_inputs = view_arrays(data.bank, val_pairs)
    dataset = ViewDataset(
        inputs, index, samples["target"].to_numpy(), None if use_features else pipeline, cfg.seed
    )
    return EpochInputs(dataset, val_pairs, val_inputs, use_features, pipeline)


def _sample_index(samples: pd.DataFrame) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The distinct ``(seg_key, view)`` pairs of ``samples`` and, per sample, the position of its pair."""
    # first-appearance order (the table's), not path hashes, so moving the data does not reorder training
    unique_keys = list(dict.fromkeys(zip(samples["seg_key"], samples["view"], strict=True)))
    position = {k: i for i, k in enumerate(unique_keys)}
    index = np.array([position[k] for k in zip(samples["seg_key"], samples["view"], strict=True)])
    return unique_keys, index


def _featurizer(
    cfg: TrainConfig, run_dir: Path, bank: ViewBank, split: SplitNetwork, device: torch.device, progress: bool
) -> Callable[[Sequence[tuple[str, str]]], torch.Tensor]:
    """Prefix features of views by ``(seg_key, view)``, cached under ``data.cache_dir`` (else ``run_dir/cache``)."""
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "cache"
    digest = weights_digest(cfg)

    def features(keys: Sequence[tuple[str, str]]) -> torch.Tensor:
        arrays = view_arrays(bank, keys)
        return compute_features(split, arrays, device, cfg.train.eval_batch_size, cache_dir, digest, progress)

    return features


@dataclass
class _Run:
    """A run in progress: what its start built, and what the epochs advance (history, record)."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    data: RunData
    net: torch.nn.Module
    split: SplitNetwork
    inputs: EpochInputs
    optimizer: torch.optim.Optimizer
    record: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0


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
    cfg = _effective_config(cfg, run_dir, resume, device)
    dev = _set_up_torch(cfg)
    t_start = time.perf_counter()
    run = _start_run(cfg, run_dir, dev, resume, progress)
    last_epoch = (
        cfg.train.epochs if stop_after is None else min(cfg.train.epochs, run.start_epoch + stop_after)
    )
    _run_epochs(run, last_epoch, progress, on_epoch)
    return _summary(run, t_start)


def _effective_config(
    cfg: TrainConfig | None, run_dir: Path, resume: bool, device: str | None
) -> TrainConfig:
    """The validated config of this call: :func:`resolve_run_config`, ``device`` overriding ``train.device``."""
    cfg = resolve_run_config(cfg, run_dir, resume)
    if device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    cfg.validate()
    return cfg


def _set_up_torch(cfg: TrainConfig) -> torch.device:
    """The device to train on; sets torch's thread count (when ``train.threads`` > 0) and seeds every RNG."""
    dev = resolve_device(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    return dev


def _start_run(cfg: TrainConfig, run_dir: Path, dev: torch.device, resume: bool, progress: bool) -> _Run:
    """Build the run, restore its checkpoint on resume, write its records and (fine-tuning) initial evaluation."""
    run = _build_run(cfg, run_dir, dev, resume, progress)
    if resume and (run_dir / CHECKPOINT).is_file():
        _resume(run)
    run.split.to(dev)
    _record_start(run)
    write_metrics(run_dir / "metrics.csv", run.history)
    if _wants_initial_eval(run):
        _initial_eval(run)
    return run


def _build_run(cfg: TrainConfig, run_dir: Path, dev: torch.device, resume: bool, progress: bool) -> _Run:
    """Data, network, inputs and optimiser of a run (saves ``config.yaml`` once data and weights load).

    Raises:
        RunError / DQEError: see :func:`prepare_data`; ValueError: initial weights that do not fit.
    """
    data = prepare_data(cfg, run_dir, progress=progress)
    net = build_model(cfg.model, data.contract.n_channels)
    # saved once data and weights are known to load, so a failed start leaves no half-made run behind
    save_config(cfg, run_dir / "config.yaml")
    split = SplitNetwork(net, cfg.model.freeze_until, cfg.model.bn_eval).to(dev)
    inputs = prepare_inputs(cfg, run_dir, data, split, dev, progress)
    steps_per_epoch = math.ceil(len(inputs.dataset) / cfg.train.batch_size)
    optimizer = build_optimizer(cfg.optim, split.trainable_parameters(), cfg.train.epochs * steps_per_epoch)
    record = read_record(run_dir, resume)
    return _Run(cfg, run_dir, dev, data, net, split, inputs, optimizer, record)


def _resume(run: _Run) -> None:
    """Continue from the checkpoint: weights, optimiser, epoch, history and torch's RNG; noted in the record.

    Raises:
        RunError: the ratings data changed since the run started.
    """
    state = load_checkpoint(run.run_dir / CHECKPOINT)
    if state.get("data_hash") != run.data.data_hash:
        raise RunError(
            f"the ratings data changed since the run started (data hash {state.get('data_hash')} -> {run.data.data_hash})"
        )
    run.start_epoch, run.history = restore_checkpoint(state, run.net, run.optimizer)
    note_resume(run.record, run.start_epoch)
    logger.info("resumed %s at epoch %d", run.run_dir, run.start_epoch)


def _record_start(run: _Run) -> None:
    """Write run.json: what this call runs on (kept from earlier calls: start time, resumptions, initial eval)."""
    run.record.update(_run_facts(run))
    run.record.setdefault("started_at", now())
    write_record(run.run_dir, run.record)


def _run_facts(run: _Run) -> dict[str, Any]:
    """The run record's description of the config, data, split, inputs, device and code versions."""
    cfg, data, inputs = run.cfg, run.data, run.inputs
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        "config_digest": cfg.digest(),
        "data_hash": data.data_hash,
        "ratings": data.table_path,
        "n_ratings": int(len(data.table)),
        "n_segmentations": int(data.table["seg_key"].nunique()),
        "train_exams": data.train_exams,
        "val_exams": data.val_exams,
        "n_train_samples": len(inputs.dataset),
        "n_val_views": len(inputs.val_pairs),
        "skipped_segmentations": data.bank.skipped,
        "device": str(run.device),
        "contract": data.contract.to_dict(),
        "frozen_prefix": cfg.model.freeze_until,
        "cached_features": inputs.use_features,
        "augmentations": inputs.pipeline.describe() if inputs.pipeline is not None else [],
        **provenance(),
    }


def _wants_initial_eval(run: _Run) -> bool:
    """A fine-tuning run (``model.init`` set) at epoch 0 with held-out views and no initial evaluation yet."""
    return (
        run.start_epoch == 0
        and run.cfg.model.init is not None
        and bool(run.inputs.val_pairs)
        and "initial_eval" not in run.record
    )


def _initial_eval(run: _Run) -> None:
    """Held-out metrics of the initial weights in ``eval_initial/`` and the record."""
    # the starting point of a fine-tuning run, on the same held-out views, for a before/after comparison
    preds0 = _val_predictions(run)
    run.record["initial_eval"] = write_report(
        preds0,
        run.data.val_rated,
        run.data.contract.views,
        run.run_dir / "eval_initial",
        title=f"{run.cfg.name} (initial)",
    )
    write_record(run.run_dir, run.record)
    logger.info("initial weights on the held-out views:\n%s", format_metrics(run.record["initial_eval"]))


def _run_epochs(
    run: _Run, last_epoch: int, progress: bool, on_epoch: Callable[[dict[str, float]], None] | None
) -> None:
    """Epochs ``run.start_epoch + 1`` to ``last_epoch``: train, validate when due, log, checkpoint when due."""
    writer = open_tensorboard(run.run_dir / "tensorboard")
    loss_fn = build_loss(run.cfg.loss, task="regression")
    for epoch in range(run.start_epoch, last_epoch):
        train_loss = _train_epoch(run, epoch, loss_fn, progress)
        row = _epoch_row(run, epoch, train_loss)
        _log_epoch(run, row, writer)
        if (epoch + 1) % run.cfg.train.checkpoint_every == 0 or epoch + 1 == last_epoch:
            save_checkpoint(run.run_dir / CHECKPOINT, _checkpoint_state(run, epoch + 1))
        logger.info(
            "epoch %d/%d train_loss %.4f val_mae %.3f val_rmse %.3f val_r %.3f",
            epoch + 1, run.cfg.train.epochs, train_loss, row["val_mae"], row["val_rmse"], row["val_pearson"],
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(row)
    if writer is not None:
        writer.close()


def _epoch_loader(run: _Run, epoch: int) -> DataLoader:
    """The training batches of ``epoch``: its augmentation seeds and a shuffle seeded with ``(seed, epoch)``."""
    run.inputs.dataset.set_epoch(epoch)
    gen = torch.Generator().manual_seed(run.cfg.seed * 1_000_003 + epoch)
    return DataLoader(
        run.inputs.dataset,
        batch_size=run.cfg.train.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=0 if run.inputs.use_features else run.cfg.train.num_workers,
        pin_memory=run.device.type == "cuda",
    )


def _train_epoch(run: _Run, epoch: int, loss_fn: torch.nn.Module, progress: bool) -> float:
    """One pass over the training samples; returns the mean loss per sample."""
    loader = _epoch_loader(run, epoch)
    run.split.train()
    total, count = 0.0, 0
    bar = loader
    if progress:
        from tqdm import tqdm

        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}", unit="batch", leave=False)  # type: ignore[assignment]
    for x, y in bar:
        total += _train_step(run, x, y, loss_fn) * int(y.shape[0])
        count += int(y.shape[0])
        if progress:
            bar.set_postfix(loss=f"{total / count:.4f}")  # type: ignore[attr-defined]
    return total / max(count, 1)


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, loss_fn: torch.nn.Module) -> float:
    """One optimiser step on the batch ``(x, y)``; returns the batch's mean loss."""
    x = x.to(run.device, non_blocking=True)
    y = y.to(run.device, non_blocking=True)
    with autocast(run.device, run.cfg.train.amp):
        pred = run.split.head(x) if run.inputs.use_features else run.split(x)
    loss = loss_fn(pred.float(), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return float(loss.item())


def _epoch_row(run: _Run, epoch: int, train_loss: float) -> dict[str, float]:
    """The metrics row of ``epoch``: its training loss and, when validation is due, held-out metrics (else NaN)."""
    due = (epoch + 1) % run.cfg.train.eval_every == 0 or epoch + 1 == run.cfg.train.epochs
    val = _validate(run) if due else regression_metrics([], [])
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_mae": val["mae"],
        "val_rmse": val["rmse"],
        "val_pearson": val["pearson"],
    }


def _log_epoch(run: _Run, row: dict[str, float], writer: Any) -> None:
    """Append ``row`` to the history, metrics.csv and TensorBoard."""
    run.history.append(row)
    write_metrics(run.run_dir / "metrics.csv", run.history)
    log_scalars(writer, row, int(row["epoch"]))


def _checkpoint_state(run: _Run, epoch: int) -> dict[str, Any]:
    """The checkpoint of ``run`` after ``epoch`` completed epochs."""
    return checkpoint_state(
        run.net, run.optimizer, epoch, run.history, run.cfg, run.data.data_hash, run.data.contract
    )


def _summary(run: _Run, t_start: float) -> dict[str, Any]:
    """What this call did; a run with all its epochs done is finished first (see :func:`_finish`)."""
    summary: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "epochs_completed": len(run.history),
        "epochs": run.cfg.train.epochs,
        "history": run.history,
        "seconds": time.perf_counter() - t_start,
    }
    if len(run.history) >= run.cfg.train.epochs:
        _finish(run, summary)
    return summary


def _finish(run: _Run, summary: dict[str, Any]) -> None:
    """Save model.pth, evaluate on the held-out views (``eval/``) and close the record; fills ``summary``."""
    torch.save(run.net.state_dict(), run.run_dir / WEIGHTS)
    summary["weights"] = str(run.run_dir / WEIGHTS)
    if run.inputs.val_pairs:
        summary["eval"] = _final_eval(run)
    if "initial_eval" in run.record:
        summary["initial_eval"] = run.record["initial_eval"]
    finish_record(run.record, run.history, summary.get("eval"))
    write_record(run.run_dir, run.record)


def _final_eval(run: _Run) -> dict[str, Any]:
    """Held-out metrics of the final weights, written with predictions and plots to ``eval/``."""
    preds = _val_predictions(run)
    metrics = write_report(
        preds, run.data.val_rated, run.data.contract.views, run.run_dir / "eval", title=run.cfg.name
    )
    logger.info("held-out evaluation (%d exams):\n%s", len(run.data.val_exams), format_metrics(metrics))
    return metrics


def _val_predictions(run: _Run) -> pd.DataFrame:
    """Predicted stars per held-out view: columns seg_key, exam_id, view, pred."""
    import pandas as pd

    cfg, pairs = run.cfg, run.inputs.val_pairs
    pred = predict(
        run.split,
        run.inputs.val_inputs,
        run.device,
        cfg.train.eval_batch_size,
        features=run.inputs.use_features,
        amp=cfg.train.amp,
    )
    exams = run.data.table.drop_duplicates("seg_key").set_index("seg_key")["exam_id"]
    return pd.DataFrame(
        {
            "seg_key": [k for k, _ in pairs],
            "exam_id": [exams[k] for k, _ in pairs],
            "view": [v for _, v in pairs],
            "pred": pred,
        }
    )


def _validate(run: _Run) -> dict[str, float]:
    """Pooled metrics over rated held-out views (NaN when nothing is held out)."""
    if not run.inputs.val_pairs:
        return regression_metrics([], [])
    preds = _val_predictions(run)
    return summarize(preds, run.data.val_rated, run.data.contract.views)["views"]
