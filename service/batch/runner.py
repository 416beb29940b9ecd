"""``run_batch``: discover, skip what the journal has, score the rest, write the outputs.

Outputs in ``out_dir``: ``journal.jsonl`` (append-only, the source of truth), ``scores.csv``,
``scores.parquet``, ``summary.json``, ``report.html`` and ``png/``; all but the journal are rewritten
atomically from the journal at the end of every run, so re-running an interrupted or finished batch is
always safe and only scores what is missing or changed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dqe.models.artifacts import ensure_model
from dqe.models.errors import InvalidInput
from dqe.models.qc.alpha import with_alpha
from dqe.service.batch.dataset import CaseSpec, Dataset, discover_dataset
from dqe.service.batch.journal import Journal
from dqe.service.batch.pipeline import run_local
from dqe.service.batch.prepare import PrepareOptions
from dqe.service.batch.ray_engine import run_ray
from dqe.service.batch.report import write_report
from dqe.service.batch.scoring import load_gate
from dqe.service.batch.summary import build_summary, score_table
from dqe.service.batch.writer import atomic_write_bytes, safe_name, write_json, write_table
from dqe.service.engine import Engine, EngineConfig

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"


@dataclass(frozen=True)
class BatchOptions:
    """How ``dqe batch`` runs.

    Attributes:
        engine: ``local`` (threads on this machine) or ``ray`` (Ray Data actors).
        gate: add QC gate verdicts when ``dqe.models.qc.gate`` is installed.
        workers: decoding/preparation threads (per actor with Ray).
        prefetch: prepared cases waiting for inference (local engine; bounds memory).
        ray_concurrency: Ray actors (each one engine; one GPU each when the cluster has GPUs).
        ray_address: Ray cluster address (default ``RAY_ADDRESS`` or a local instance).
        nsd_tolerance_mm: normalised surface Dice tolerance (mm).
        images: render the per-segmentation PNGs.
        report_images: how many of the worst segmentations get their views in ``report.html``.
        progress: tqdm progress bar on stderr.
        label_convention: how the segmentations' labels are read (:mod:`dqe.models.labels`; ``auto``).
        consensus: per-region Dice of each segmentation with the consensus of the other teams' (cases with
            >= 3 scored teams; :mod:`dqe.models.qc.consensus`); a case with any pending team is then
            re-scored in full, because every team's consensus depends on the others.
        alpha: the gate's significance level (``None``: the gate configuration's default).
        evidence_dir: write each gated segmentation's disagreement map there as NIfTI (``None``: no maps).
    """

    engine: str = "local"
    gate: bool = True
    workers: int = 2
    prefetch: int = 1
    ray_concurrency: int = 1
    ray_address: str | None = None
    nsd_tolerance_mm: float = 1.0
    images: bool = True
    report_images: int = 100
    progress: bool = True
    label_convention: str = "auto"
    consensus: bool = True
    alpha: float | None = None
    evidence_dir: str | None = None


@dataclass
class BatchOutcome:
    """What a run did: counts and output paths."""

    out_dir: Path
    total: int
    skipped: int
    scored_now: int
    failed: int
    elapsed_s: float
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "segmentations": self.total,
            "skipped_already_done": self.skipped,
            "scored_now": self.scored_now,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "segmentations_per_s": round(self.scored_now / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
            "files": self.files,
        }


def _pending(dataset: Dataset, journal: Journal, whole_cases: bool = False) -> tuple[list[CaseSpec], int]:
    """Cases with their jobs still to score, and how many jobs are skipped.

    With ``whole_cases`` (consensus on) a case with any pending job is scored again with all its jobs: the
    consensus of each team depends on every other team's segmentation of that case.
    """
    specs, skipped = [], 0
    for spec in dataset.cases:
        todo = [j for j in spec.jobs if not journal.done(j.case_id, j.team, j.input_key)]
        if todo and whole_cases and len(spec.jobs) > 1:
            todo = list(spec.jobs)
        skipped += len(spec.jobs) - len(todo)
        if todo:
            specs.append(spec.with_jobs(todo))
    return specs, skipped


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="seg",
        desc="dqe batch",
        file=sys.stderr,
        disable=not enabled,
        smoothing=0.1,
    )


def _store_png(rec: dict[str, Any], png_dir: Path) -> None:
    for key, suffix in (("png", ".png"), ("evidence_png", "_evidence.png")):
        data = rec.pop("_" + key, None)
        rec[key] = ""
        if data:
            name = safe_name(rec["case"], rec["team"]) + suffix
            atomic_write_bytes(png_dir / name, data)
            rec[key] = name


def run_batch(
    cases_dir: str | Path,
    submission_dirs: Sequence[str | Path],
    out_dir: str | Path,
    labels_dir: str | Path | None = None,
    engine_config: Any = None,
    options: BatchOptions | None = None,
) -> BatchOutcome:
    """Score every case x team of a dataset into ``out_dir`` (resumable; see the module docstring).

    Args:
        cases_dir, submission_dirs, labels_dir: see :func:`dqe.service.batch.dataset.discover_dataset`.
        out_dir: output folder (created).
        engine_config: :class:`dqe.service.engine.EngineConfig` (default: the reference model, fp32).
        options: :class:`BatchOptions`.

    Raises:
        NotFound, InvalidInput: the dataset folders are missing or malformed (per-segmentation problems are
            recorded in the ``error`` column instead).
        ModelNotReady, IntegrityError, UnsupportedMode: the model cannot be loaded as configured.
    """

    t0 = time.perf_counter()
    opts = options or BatchOptions()
    cfg: EngineConfig = engine_config or EngineConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = ensure_model(cfg.model_id)
    gate_cfg = with_alpha(opts.alpha)
    gate_fn = load_gate(gate_cfg, opts.evidence_dir) if opts.gate else None
    use_gate = gate_fn is not None
    extra: dict[str, Any] = {}
    key_extra = {
        "model_sha256": artifacts.onnx_sha256,
        "precision": cfg.precision,
        "gate": use_gate,
        "nsd_tolerance_mm": opts.nsd_tolerance_mm,
        "consensus": opts.consensus,
        **({"alpha": opts.alpha} if opts.alpha is not None else {}),
        **({"evidence_dir": str(Path(opts.evidence_dir).resolve())} if opts.evidence_dir else {}),
    }
    dataset = discover_dataset(
        cases_dir, submission_dirs, labels_dir, key_extra=key_extra, label_convention=opts.label_convention
    )
    journal = Journal(out / JOURNAL_NAME)
    specs, skipped = _pending(dataset, journal, whole_cases=opts.consensus)
    total = len(dataset.jobs)
    logger.info("%d segmentations, %d already done, %d to score", total, skipped, total - skipped)
    prep = PrepareOptions(
        keep_case=use_gate or opts.consensus, mosaic=opts.images, nsd_tolerance_mm=opts.nsd_tolerance_mm
    )
    scored_now = 0
    t_run = time.perf_counter()
    with _progress(total, skipped, opts.progress) as bar:
        for records in _engine_stream(specs, cfg, prep, gate_fn, opts, extra):
            for rec in records:
                _store_png(rec, out / "png")
            journal.append(records)
            scored_now += len(records)
            bar.update(len(records))
    run_s = time.perf_counter() - t_run
    files = write_outputs(dataset, journal, out, cfg, opts, info_extra={"gate": use_gate, "run_s": run_s})
    keys = {(j.case_id, j.team) for j in dataset.jobs}
    failed = sum(1 for k, r in journal.records.items() if k in keys and r.get("error"))
    return BatchOutcome(out, total, skipped, scored_now, failed, time.perf_counter() - t0, files)


def _engine_stream(
    specs: list[CaseSpec],
    cfg: Any,
    prep: PrepareOptions,
    gate_fn: Any,
    opts: BatchOptions,
    extra: dict[str, Any],
) -> Iterator[list[dict[str, Any]]]:
    if not specs:
        return iter(())
    if opts.engine == "ray":
        return run_ray(
            specs,
            cfg,
            prep,
            gate=opts.gate,
            gate_config=with_alpha(opts.alpha),
            evidence_dir=opts.evidence_dir,
            workers=opts.workers,
            concurrency=opts.ray_concurrency,
            extra=extra,
            address=opts.ray_address,
        )
    if opts.engine != "local":
        raise InvalidInput(f"engine {opts.engine!r} is not one of ['local', 'ray']", field="engine")

    engine = Engine(cfg)
    return run_local(specs, engine, prep, gate_fn, workers=opts.workers, prefetch=opts.prefetch, extra=extra)


def write_outputs(
    dataset: Dataset,
    journal: Journal,
    out: Path,
    cfg: Any,
    opts: BatchOptions,
    info_extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Rewrite ``scores.csv``/``.parquet``, ``summary.json`` and ``report.html`` from the journal."""

    records = [
        journal.records[(j.case_id, j.team)] for j in dataset.jobs if (j.case_id, j.team) in journal.records
    ]
    df = score_table(records)
    first = records[0] if records else {}
    info = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_id": first.get("model_id", cfg.model_id),
        "model_sha256": first.get("model_sha256", ""),
        "precision": first.get("precision", cfg.precision),
        "engine": opts.engine,
        "labels": str(dataset.labels_dir) if dataset.labels_dir else None,
        "nsd_tolerance_mm": opts.nsd_tolerance_mm,
        "unmatched_files": dataset.unmatched,
        "host_cpus": os.cpu_count(),
        **(info_extra or {}),
    }
    summary = build_summary(df, info)
    files = {
        "journal": str(out / JOURNAL_NAME),
        "csv": str(out / "scores.csv"),
        "parquet": str(out / "scores.parquet"),
    }
    write_table(df, files["csv"], files["parquet"])
    files["summary"] = str(write_json(out / "summary.json", summary))
    files["report"] = str(write_report(df, summary, out, max_images=opts.report_images))
    return files
