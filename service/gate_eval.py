"""Gate evaluation on a labelled list of cases: ROC AUC of stars alone vs the gate score, the confusion
table, detection per failure mechanism and per severity band, the false-alarm rate among good
segmentations with its exact interval, Spearman rho(gate score, Dice), a ROC plot and per-case results.

The list is a CSV with columns ``t1c,t1,t2,flair,segmentation,label`` (paths, relative ones resolved
against the CSV's folder; ``label`` is ``good`` or ``bad``); optional columns are carried into the report:
``case``, ``mode`` (the failure mode or mechanism: per-mechanism tables), ``exam`` (the exam the images
belong to; defaults to ``case`` up to its first ``/``), ``dice_wt``/``dice_tc``/``dice_et`` (Dice of a
failure to the good segmentation it was made from: severity bands and the rank correlation).

Thresholds (``calibration``): ``frozen`` evaluates every row with the given :class:`GateConfig`;
``loosen``/``data`` evaluate leave-one-exam-out: the rows of each exam are gated with thresholds derived
(:mod:`dqe.models.qc.calibration`) from the good segmentations of the *other* exams only, so no row is
judged with thresholds its own exam helped set, and failures never set thresholds.

AUC here is the probability that a good segmentation ranks above a bad one (ties count half). A
segmentation with no tumour label cannot be scored: it gets the gate's ``fail`` verdict and ranks lowest
for the stars as well (a pipeline would reject it either way).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.case import MODALITIES, Case
from dqe.models.errors import DQEError, EmptySegmentation, InvalidInput, NotFound
from dqe.models.qc.calibration import fold_configs
from dqe.models.qc.evalstats import Outcome, clopper_pearson, detection, detection_by_mechanism_and_band
from dqe.models.qc.gate import empty_segmentation_result, evaluate_case
from dqe.models.stats import auc, spearman
from dqe.service.engine import Engine

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.models.nifti import Volume
    from dqe.models.qc.config import GateConfig
    from dqe.models.qc.types import Check
    from dqe.service.engine import Engine, EngineConfig

logger = logging.getLogger(__name__)

COLUMNS = ("t1c", "t1", "t2", "flair", "segmentation", "label")
LABELS = ("good", "bad")
CALIBRATIONS = ("auto", "frozen", "loosen", "data")
DICE_COLUMNS = ("dice_wt", "dice_tc", "dice_et")
IMAGE_CACHE = 2  # decoded image sets kept (segmentations of one exam are usually listed together)


@dataclass
class Row:
    """One line of the list and what the gate made of it."""

    files: dict[str, Path]
    label: str
    case: str = ""
    mode: str = ""
    exam: str = ""
    dice: dict[str, float] = field(default_factory=dict)
    mean_stars: float | None = None
    views: dict[str, float] = field(default_factory=dict)
    verdict: str = ""
    gate_score: float | None = None
    reasons: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    score_ms: float = 0.0
    gate_ms: float = 0.0
    error: str = ""
    checks: list[Check] = field(default_factory=list)
    config: GateConfig | None = None  # the thresholds this row was gated with

    @property
    def dice_wt(self) -> float:
        """WT Dice to the source segmentation (1.0 for a good row without one, NaN for a bad one)."""
        return self.dice.get("dice_wt", 1.0 if self.label == "good" else math.nan)


def read_list(path: str | Path) -> list[Row]:
    """Parse and validate the CSV list.

    Raises:
        NotFound: the CSV does not exist.
        InvalidInput: a required column is missing, a label is not good/bad, or the list is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"list {str(path)!r} does not exist", field="list_csv")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInput(
                f"list {path.name} lacks columns {missing}; expected {','.join(COLUMNS)}", field="list_csv"
            )
        rows = []
        for i, rec in enumerate(reader, start=2):
            label = (rec["label"] or "").strip().lower()
            if label not in LABELS:
                raise InvalidInput(
                    f"{path.name} line {i}: label {rec['label']!r}; expected good or bad", field="label"
                )
            files = {}
            for key in COLUMNS[:5]:
                p = Path((rec[key] or "").strip())
                files[key] = p if p.is_absolute() else (path.parent / p)
            case = (rec.get("case") or "").strip()
            dice = {}
            for key in DICE_COLUMNS:
                text = (rec.get(key) or "").strip()
                if text:
                    try:
                        dice[key] = float(text)
                    except ValueError:
                        raise InvalidInput(
                            f"{path.name} line {i}: {key} {text!r} is not a number", field=key
                        ) from None
            rows.append(
                Row(
                    files=files,
                    label=label,
                    case=case,
                    mode=(rec.get("mode") or "").strip(),
                    exam=(rec.get("exam") or "").strip() or case.split("/")[0],
                    dice=dice,
                )
            )
    if not rows:
        raise InvalidInput(f"list {path.name} has no rows", field="list_csv")
    return rows


def roc_points(good: Sequence[float], bad: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """ROC of flagging a case as bad when its score is <= t: (false-positive rate on good, true-positive
    rate on bad) for every threshold, from (0, 0) to (1, 1)."""
    g = np.asarray(good, dtype=float)
    b = np.asarray(bad, dtype=float)
    thresholds = np.unique(np.concatenate([g, b]))
    fpr = [0.0] + [float((g <= t).mean()) for t in thresholds]
    tpr = [0.0] + [float((b <= t).mean()) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def _rank_value(v: float | None) -> float:
    return -math.inf if v is None else float(v)


def evaluate_rows(
    rows: list[Row],
    engine: Engine,
    gate_config: GateConfig,
    configs: dict[str, GateConfig] | None = None,
) -> None:
    """Score and gate every row in place with its exam's config (``configs``, else ``gate_config``).

    A row already gated with the same config is skipped; errors other than an empty segmentation are
    recorded on the row.
    """

    cache: OrderedDict[tuple[str, ...], dict[str, Volume]] = OrderedDict()
    for n, row in enumerate(rows, start=1):
        cfg = (configs or {}).get(row.exam, gate_config)
        if row.config == cfg or row.error:
            continue
        row.config = cfg
        key = tuple(str(row.files[m]) for m in MODALITIES)
        images = cache.get(key)
        case: Case
        try:
            case = Case.from_files(**row.files, case_id=row.case or None, images=images)  # type: ignore[arg-type]
        except EmptySegmentation as exc:
            gate = empty_segmentation_result(exc.message, cfg)
            row.verdict, row.gate_score, row.reasons = gate.verdict.value, gate.gate_score, list(gate.reasons)
            row.failed_checks = [c.name for c in gate.checks if not c.passed]
            continue
        except DQEError as exc:
            row.error = f"{exc.kind}: {exc.message}"
            logger.warning("row %d skipped: %s", n, row.error)
            continue
        if images is None:
            cache[key] = dict(zip(MODALITIES, case.images, strict=True))
            while len(cache) > IMAGE_CACHE:
                cache.popitem(last=False)
        t0 = time.perf_counter()
        result = engine.score_case(case)
        row.score_ms = (time.perf_counter() - t0) * 1e3
        gate = evaluate_case(case, result, cfg)
        row.mean_stars, row.views = result.mean_stars, dict(result.views)
        row.verdict, row.gate_score, row.reasons = gate.verdict.value, gate.gate_score, list(gate.reasons)
        row.failed_checks = [c.name for c in gate.checks if not c.passed and c.severity in ("fail", "review")]
        row.checks = list(gate.checks)
        row.gate_ms = gate.elapsed_ms
        logger.info(
            "%d/%d %s %s: %.2f stars, %s",
            n,
            len(rows),
            row.label,
            row.case or row.files["segmentation"].name,
            row.mean_stars,
            row.verdict,
        )


def loeo_configs(
    rows: list[Row], engine: Engine, gate_config: GateConfig, rule: str
) -> tuple[dict[str, GateConfig], dict[str, dict[str, dict[str, float]]]]:
    """Leave-one-exam-out thresholds: the good rows are gated with ``gate_config`` to read their check
    values, then each exam gets the config derived from the good rows of the other exams.

    Returns:
        ``(config per exam, thresholds changed per exam)``.

    Raises:
        InvalidInput: fewer than two exams have good rows (nothing to leave out).
    """

    good = [r for r in rows if r.label == "good"]
    evaluate_rows(good, engine, gate_config)
    by_exam: dict[str, list[list[Check]]] = {}
    for r in good:
        if not r.error and r.checks:
            by_exam.setdefault(r.exam, []).append(r.checks)
    for r in rows:  # exams with failures only still get a fold (all good rows are training data)
        by_exam.setdefault(r.exam, [])
    if sum(1 for v in by_exam.values() if v) < 2:
        raise InvalidInput(
            f"leave-one-exam-out needs good segmentations of at least two exams; found {sorted(by_exam)} "
            "(give an exam column, or use --calibration frozen)",
            field="exam",
        )
    folds = fold_configs(by_exam, rule, gate_config)
    return {e: c for e, (c, _) in folds.items()}, {e: ch for e, (_, ch) in folds.items()}


def summarize(rows: list[Row], gate_config: GateConfig) -> dict[str, Any]:
    """AUCs, confusion tables, false fails, per-mode table and timing of evaluated rows."""
    done = [r for r in rows if not r.error]
    good = [r for r in done if r.label == "good"]
    bad = [r for r in done if r.label == "bad"]
    confusion = {lab: dict(Counter(r.verdict for r in done if r.label == lab)) for lab in LABELS}
    for lab in LABELS:
        for v in ("pass", "review", "fail"):
            confusion[lab].setdefault(v, 0)
    thr = gate_config.star_threshold
    stars_flag = {
        lab: sum(1 for r in done if r.label == lab and (r.mean_stars is None or r.mean_stars < thr))
        for lab in LABELS
    }
    per_mode: dict[str, dict[str, Any]] = {}
    for r in done:
        key = r.mode or r.label
        entry = per_mode.setdefault(key, {"n": 0, "pass": 0, "review": 0, "fail": 0, "stars": []})
        entry["n"] += 1
        entry[r.verdict] += 1
        if r.mean_stars is not None:
            entry["stars"].append(r.mean_stars)
    for entry in per_mode.values():
        s = entry.pop("stars")
        entry["stars_min"] = round(min(s), 3) if s else None
        entry["stars_max"] = round(max(s), 3) if s else None
    gate_ms = np.asarray([r.gate_ms for r in done if r.gate_ms > 0])
    score_ms = np.asarray([r.score_ms for r in done if r.score_ms > 0])

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 2) if a.size else None

    return {
        "n": len(rows),
        "n_good": len(good),
        "n_bad": len(bad),
        "n_errors": len(rows) - len(done),
        "errors": [{"segmentation": str(r.files["segmentation"]), "error": r.error} for r in rows if r.error],
        "auc_stars": auc([_rank_value(r.mean_stars) for r in good], [_rank_value(r.mean_stars) for r in bad]),
        "auc_gate": auc(
            [float(r.gate_score or 0.0) for r in good], [float(r.gate_score or 0.0) for r in bad]
        ),
        "confusion": confusion,
        "false_fails_good": confusion["good"]["fail"],
        "flagged_good": confusion["good"]["review"] + confusion["good"]["fail"],
        "flagged_bad": confusion["bad"]["review"] + confusion["bad"]["fail"],
        "missed_bad": confusion["bad"]["pass"],
        "stars_alone": {
            "threshold": thr,
            "flagged_good": stars_flag["good"],
            "flagged_bad": stars_flag["bad"],
            "missed_bad": len(bad) - stars_flag["bad"],
        },
        "per_mode": per_mode,
        "gate_ms": {"median": pct(gate_ms, 50), "p95": pct(gate_ms, 95), "max": pct(gate_ms, 100)},
        "score_ms": {"median": pct(score_ms, 50), "p95": pct(score_ms, 95)},
        "missed": [
            {
                "case": r.case,
                "mode": r.mode,
                "segmentation": str(r.files["segmentation"]),
                "stars": r.mean_stars,
            }
            for r in bad
            if r.verdict == "pass"
        ],
        "failed_good": [
            {"case": r.case, "segmentation": str(r.files["segmentation"]), "reasons": r.reasons}
            for r in good
            if r.verdict == "fail"
        ],
    }


def mechanism_summary(rows: list[Row]) -> dict[str, Any]:
    """Detection per mechanism and per severity band, false alarms with Clopper-Pearson intervals and
    Spearman rho of the gate score (and of the stars) with WT Dice, over the evaluated rows."""

    done = [r for r in rows if not r.error]
    good = [r for r in done if r.label == "good"]
    bad = [r for r in done if r.label == "bad"]
    outcomes = [Outcome(r.mode or "bad", r.dice_wt, r.verdict) for r in bad]

    def rho(rs: list[Row], value: str) -> dict[str, Any]:
        xs = [(float(r.gate_score or 0.0) if value == "gate" else _rank_value(r.mean_stars)) for r in rs]
        ys = [r.dice_wt for r in rs]
        finite = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
        return spearman([x for x, _ in finite], [y for _, y in finite])

    return {
        "false_alarms": {
            "flagged": clopper_pearson(sum(r.verdict in ("review", "fail") for r in good), len(good)),
            "failed": clopper_pearson(sum(r.verdict == "fail" for r in good), len(good)),
        },
        "detection_by_mechanism": detection(outcomes, "mechanism"),
        "detection_by_band": detection(outcomes, "band"),
        "detection_table": detection_by_mechanism_and_band(outcomes),
        "spearman_dice": {
            "gate_score~dice_wt (failures)": rho(bad, "gate"),
            "gate_score~dice_wt (all)": rho(done, "gate"),
            "stars~dice_wt (failures)": rho(bad, "stars"),
        },
    }


def write_results(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "case",
                "exam",
                "mode",
                "label",
                *DICE_COLUMNS,
                "segmentation",
                "mean_stars",
                "axial",
                "coronal",
                "sagittal",
                "verdict",
                "gate_score",
                "failed_checks",
                "score_ms",
                "gate_ms",
                "error",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.case,
                    r.exam,
                    r.mode,
                    r.label,
                    *(f"{r.dice[k]:.4f}" if k in r.dice else "" for k in DICE_COLUMNS),
                    str(r.files["segmentation"]),
                    "" if r.mean_stars is None else f"{r.mean_stars:.4f}",
                    *(f"{r.views[v]:.4f}" if v in r.views else "" for v in ("axial", "coronal", "sagittal")),
                    r.verdict,
                    "" if r.gate_score is None else f"{r.gate_score:.4f}",
                    ";".join(r.failed_checks),
                    f"{r.score_ms:.1f}",
                    f"{r.gate_ms:.2f}",
                    r.error,
                ]
            )


def plot_roc(rows: list[Row], summary: dict[str, Any], path: Path) -> None:
    """ROC curves of stars alone and of the gate score (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if not r.error]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for name, key, value in (
        ("stars alone", "auc_stars", lambda r: _rank_value(r.mean_stars)),
        ("QC gate", "auc_gate", lambda r: float(r.gate_score or 0.0)),
    ):
        fpr, tpr = roc_points(
            [value(r) for r in done if r.label == "good"], [value(r) for r in done if r.label == "bad"]
        )
        ax.plot(fpr, tpr, label=f"{name} (AUC {summary[key]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("good segmentations flagged (false-positive rate)")
    ax.set_ylabel("bad segmentations flagged (true-positive rate)")
    ax.set_title(f"{summary['n_good']} good vs {summary['n_bad']} bad segmentations")
    ax.legend(loc="lower right")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_list(
    list_csv: str | Path,
    out_dir: str | Path,
    engine_config: EngineConfig,
    gate_config: GateConfig,
    plot: bool = True,
    calibration: str = "frozen",
) -> dict[str, Any]:
    """Run the whole evaluation and write ``summary.json``, ``results.csv`` and ``roc.png`` to ``out_dir``.

    Args:
        calibration: ``frozen`` (every row gated with ``gate_config``), a rule of
            :mod:`dqe.models.qc.calibration` (``loosen``, ``data``) applied leave-one-exam-out, or ``auto``
            (``loosen`` when good rows of at least two exams are listed, else ``frozen``).

    Returns:
        The summary (also written as JSON), with the paths written under ``files``.

    Raises:
        NotFound, InvalidInput: a bad list (see :func:`read_list`), an unknown calibration, or fewer than
            two exams with good rows for leave-one-exam-out.
    """
    from dataclasses import asdict

    if calibration not in CALIBRATIONS:
        raise InvalidInput(
            f"calibration {calibration!r} is not one of {', '.join(CALIBRATIONS)}", field="calibration"
        )
    rows = read_list(list_csv)
    if calibration == "auto":
        exams = {r.exam for r in rows if r.label == "good"}
        calibration = "loosen" if len(exams) >= 2 else "frozen"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine(engine_config)
    configs: dict[str, GateConfig] | None = None
    changed: dict[str, dict[str, dict[str, float]]] = {}
    if calibration != "frozen":
        configs, changed = loeo_configs(rows, engine, gate_config, calibration)
    evaluate_rows(rows, engine, gate_config, configs)
    summary = summarize(rows, gate_config)
    summary.update(mechanism_summary(rows))
    summary["calibration"] = {
        "mode": calibration,
        "frozen_thresholds": asdict(gate_config),
        "folds": {exam: changed.get(exam, {}) for exam in sorted({r.exam for r in rows})}
        if calibration != "frozen"
        else {},
        "unchanged_in_every_fold": calibration != "frozen" and not any(changed.values()),
    }
    files = {"summary": out / "summary.json", "results": out / "results.csv"}
    write_results(rows, files["results"])
    if plot and summary["n_good"] and summary["n_bad"]:
        files["roc"] = out / "roc.png"
        plot_roc(rows, summary, files["roc"])
    summary["files"] = {k: str(v) for k, v in files.items()}
    files["summary"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
