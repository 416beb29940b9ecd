"""The Ray engine: the same two stages on Ray Data, for when one machine is not enough.

``ray.data.from_items(cases).map_batches(ScorerActor, compute=ActorPoolStrategy(size=N), num_gpus=1 if GPUs
else 0)`` (a fixed pool of N actors; older Ray spelled it ``concurrency=N``): each
actor holds one :class:`~dqe.service.engine.Engine` (one ONNX Runtime session, on the actor's GPU when the
cluster has GPUs and ``onnxruntime-gpu`` is installed) and runs exactly the local pipeline's functions
(:func:`~dqe.service.batch.prepare.prepare_case` then :func:`~dqe.service.batch.scoring.score_prepared`) on one
case per call, so the stars are the same numbers as with ``--engine local``. Records stream back to the
driver, which journals them as they arrive (crash safety and resumption are the driver's, as locally).

Pointing it at a cluster::

    # on the cluster: `ray start --head` (and `ray start --address=HEAD:6379` on the workers)
    export RAY_ADDRESS=ray://head-node:10001        # or HEAD:6379 when the driver runs on a cluster node
    dqe batch CASES SUB1 SUB2 --out OUT --engine ray --workers 8

or ``--ray-address ADDRESS`` (passed to ``ray.init(address=...)``). Every node needs this package, the model
in its model home (``DQE_HOME``, e.g. a shared volume; ``dqe model export`` builds it) and the dataset at
the same paths (a shared file system): the driver ships case paths, not voxels. PNG mosaics travel back
inside the records, so the report is written on the driver only. When Ray is already initialised (tests,
notebooks) that connection is used and left open.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.service.batch.dataset import CaseSpec
from dqe.service.batch.prepare import PrepareOptions, prepare_case
from dqe.service.batch.scoring import load_gate, score_prepared
from dqe.service.engine import Engine

if TYPE_CHECKING:
    from dqe.models.qc.config import GateConfig
    from dqe.service.engine import EngineConfig

logger = logging.getLogger(__name__)


class ScorerActor:
    """A Ray Data actor: one engine, one worker pool; ``__call__`` scores a batch of cases.

    Args:
        engine_config: the :class:`~dqe.service.engine.EngineConfig` to build (pickled to the actor).
        options: :class:`PrepareOptions` fields as a dict.
        gate: use the QC gate when it is installed on the worker.
        workers: decoding threads inside the actor.
        extra: fields copied into every record.
        env: environment variables to set before the engine loads (``DQE_HOME``).
        gate_config: the gate's configuration; evidence_dir: where its NIfTI maps go (``None``: none).
    """

    def __init__(
        self,
        engine_config: EngineConfig,
        options: dict[str, Any],
        gate: bool,
        workers: int,
        extra: dict[str, Any],
        env: dict[str, str] | None = None,
        gate_config: GateConfig | None = None,
        evidence_dir: str | None = None,
    ) -> None:
        for key, value in (env or {}).items():
            os.environ.setdefault(key, value)

        self.engine = Engine(engine_config)
        self.options = PrepareOptions(**options)
        self.gate = load_gate(gate_config, evidence_dir) if gate else None
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dqe-ray")
        self.extra = extra

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: list[str] = []
        for text in batch["case"]:
            spec = CaseSpec.from_json(str(text))
            prepared = prepare_case(spec, self.engine, self.pool, self.options)
            for rec in score_prepared(self.engine, prepared, self.gate, self.pool, self.extra):
                for key in ("_png", "_evidence_png"):
                    png = rec.pop(key, None)
                    rec[key + "_b64"] = base64.b64encode(png).decode() if png else None
                out.append(json.dumps(rec))
        return {"record": np.asarray(out, dtype=object)}


def _ensure_ray(address: str | None) -> bool:
    """Connect to Ray (``address`` > ``RAY_ADDRESS`` > a local instance); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:  # an existing cluster (HOST:6379, "auto" or ray://HOST:10001): no local-only options
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    return True


def run_ray(
    specs: Sequence[CaseSpec],
    engine_config: EngineConfig,
    options: PrepareOptions,
    gate: bool,
    workers: int = 2,
    concurrency: int = 1,
    extra: dict[str, Any] | None = None,
    address: str | None = None,
    gate_config: GateConfig | None = None,
    evidence_dir: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Yield batches of records as actors finish cases (order not guaranteed).

    Args:
        specs: cases with their pending jobs.
        engine_config: the engine each actor builds.
        options: what stage 1 computes.
        gate: use the QC gate when installed.
        workers: decoding threads per actor.
        concurrency: number of actors (one GPU each when the cluster has GPUs).
        extra: fields copied into every record.
        address: Ray address; default ``RAY_ADDRESS`` or a new local instance.
        gate_config: the gate's configuration (default thresholds and alpha when ``None``).
        evidence_dir: folder for the gate's NIfTI disagreement maps (shared storage with a cluster).
    """
    import ray

    if not specs:
        return
    started = _ensure_ray(address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        gpus = float(ray.cluster_resources().get("GPU", 0))
        env = {k: os.environ[k] for k in ("DQE_HOME",) if k in os.environ}
        items = ray.data.from_items([{"case": s.to_json()} for s in specs], override_num_blocks=len(specs))
        ds = items.map_batches(
            ScorerActor,  # type: ignore[arg-type]
            fn_constructor_kwargs={
                "engine_config": engine_config,
                "options": asdict(options),
                "gate": gate,
                "workers": workers,
                "extra": extra or {},
                "env": env,
                "gate_config": gate_config,
                "evidence_dir": evidence_dir,
            },
            batch_size=1,
            batch_format="numpy",
            # A fixed pool of ``concurrency`` actors (Ray >= 2.51 spells ``concurrency=N`` this way).
            compute=ray.data.ActorPoolStrategy(size=max(1, concurrency)),
            num_gpus=1 if gpus >= 1 else 0,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            records = []
            for text in batch["record"]:
                rec = json.loads(str(text))
                for key in ("_png", "_evidence_png"):
                    b64 = rec.pop(key + "_b64", None)
                    rec[key] = base64.b64decode(b64) if b64 else None
                records.append(rec)
            yield records
    finally:
        if started:
            ray.shutdown()
