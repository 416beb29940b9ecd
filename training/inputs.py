"""What the network reads: views augmented per (epoch, sample), or cached features of a frozen prefix.

``ViewDataset`` seeds the augmentation of sample ``i`` in epoch ``e`` with
``numpy.random.default_rng([seed, e, i])``, so an epoch's inputs do not depend on what ran before it (a resumed
run sees the same samples).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dqe.models.registry import sha256_file
from dqe.training.config import TrainConfig
from dqe.training.data import ViewBank
from dqe.training.model import SplitNetwork, init_path
from dqe.training.transforms import Pipeline


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
        """Seed the augmentations of the coming pass with ``epoch``."""
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
    """The preprocessed views ``(segmentation key, view)`` of ``bank``, in the order of ``keys``."""
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
            with autocast(device, amp):
                out = split.head(batch) if features else split(batch)
            preds.append(out.float().cpu().numpy().reshape(-1))
    return np.concatenate(preds) if preds else np.zeros((0,), dtype=np.float32)


def autocast(device: torch.device, amp: bool) -> Any:
    """A bfloat16 autocast context when ``amp`` is set and ``device`` is a GPU; a no-op context otherwise."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"
    )
