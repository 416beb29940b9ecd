"""Fine-tuning data from the released weights' point of view: two ways to make ratings without raters.

``metric`` (the paper's outlook: a differentiable surrogate of a non-differentiable metric)
    every candidate segmentation of an exam (algorithm outputs, the reference itself, and failures made
    from the reference) is rated ``1 + 5 * score`` stars, where ``score`` is the worst region's (WT, TC,
    ET) mix of Dice and surface Dice (tolerance ``tolerance_mm``) against the exam's reference
    segmentation (see :func:`metric_score`).

``failure`` (failure-aware)
    failures made from the reference by :func:`dqe.models.qc.failures.generate_failure` are rated
    ``failure_stars`` (low) in every view; the good segmentations keep what the released model says about
    them (``good_stars: teacher``, per view) or a fixed value, so the model learns to push failures down
    without forgetting what it knew.

Both write an ordinary ratings table (``exam_id, t1c, t1, t2, flair, segmentation, view, rater, stars``)
plus ``candidates.csv`` (what every candidate is and its metrics), so fine-tuning is then a normal
:func:`dqe.training.trainer.train` run starting from ``model.init: released``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from dqe.models.case import Case
from dqe.models.contract import CONTRACT_V1
from dqe.models.errors import InvalidInput, NotFound
from dqe.models.network import load_network
from dqe.models.nifti import load_nifti
from dqe.models.preprocess import build_views
from dqe.models.qc.brain import brain_mask_full
from dqe.models.qc.failures import FAILURE_MODES, applicable_modes, generate_failure
from dqe.models.stats import REGION_LABELS, auc, dice, pearson_r
from dqe.training.data import read_ratings
from dqe.training.model import released_weights
from dqe.training.trainer import RunError, train

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MODES = ("metric", "failure")
REGIONS = REGION_LABELS  # from the preprocessing contract (dqe.models.stats)


@dataclass(frozen=True)
class FinetuneCase:
    """One exam: four images, a reference segmentation, other candidate segmentations, an optional brain mask."""

    exam_id: str
    images: dict[str, Path]
    reference: Path
    candidates: tuple[Path, ...] = ()
    brain_mask: Path | None = None


@dataclass(frozen=True)
class FinetuneOptions:
    """How candidates are made and rated.

    Attributes:
        mode: ``metric`` or ``failure`` (see the module docstring).
        failure_modes: modes of :data:`dqe.models.qc.failures.FAILURE_MODES` to generate (``()`` = all that apply
            to the reference, except ``empty``, which a case cannot even be built from).
        seeds_per_mode: failures per mode and exam.
        tolerance_mm: surface Dice tolerance.
        dice_weight: weight of Dice against surface Dice in the score (0..1).
        region_weights: the regions scored (WT/TC/ET) and their weights for ``aggregate="mean"``.
        aggregate: ``min`` (the worst region, the default) or ``mean`` (weighted) over the regions.
        min_region_ml: regions below this volume in both segmentations are not scored (WT always is).
        failure_stars: target for failures in ``failure`` mode.
        good_stars: ``"teacher"`` (the released model's own per-view stars) or a number, for good
            segmentations in ``failure`` mode.
        seed: base seed of the failure generator.
        balance: in ``failure`` mode, repeat the good segmentations' ratings so both groups weigh the same.
    """

    mode: str = "metric"
    failure_modes: tuple[str, ...] = ()
    seeds_per_mode: int = 1
    tolerance_mm: float = 2.0
    dice_weight: float = 0.5
    region_weights: dict[str, float] = field(default_factory=lambda: {"WT": 1.0, "TC": 1.0, "ET": 1.0})
    aggregate: str = "min"
    min_region_ml: float = 1.0
    failure_stars: float = 1.5
    good_stars: str | float = "teacher"
    seed: int = 0
    balance: bool = True

    def validate(self) -> FinetuneOptions:
        if self.mode not in MODES:
            raise ValueError(f"fine-tuning mode {self.mode!r} is not one of {MODES}")
        if not 0.0 <= self.dice_weight <= 1.0:
            raise ValueError(f"dice_weight is {self.dice_weight}; expected within [0, 1]")
        if not 1.0 <= self.failure_stars <= 6.0:
            raise ValueError(f"failure_stars is {self.failure_stars}; expected within [1, 6]")
        if self.good_stars != "teacher" and not 1.0 <= float(self.good_stars) <= 6.0:
            raise ValueError(
                f"good_stars is {self.good_stars!r}; expected 'teacher' or a number within [1, 6]"
            )
        if self.aggregate not in ("min", "mean"):
            raise ValueError(f"aggregate is {self.aggregate!r}; expected 'min' or 'mean'")
        unknown = set(self.region_weights) - set(REGIONS)
        if unknown or sum(self.region_weights.values()) <= 0:
            raise ValueError(f"region_weights {self.region_weights} must weight {sorted(REGIONS)} positively")
        return self


# ------------------------------------------------------------------------------------------ metrics
def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    return np.isin(labels, REGIONS[region])


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
        for i, n in zip(idx, mask.shape, strict=True)
    )


def surface_dice(a: np.ndarray, b: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Surface Dice (Nikolov et al. 2021): the fraction of both borders within ``tolerance_mm`` of the other.

    Borders are the mask voxels with a background 6-neighbour; distances are Euclidean in mm
    (``spacing``). 1 when both masks are empty, 0 when exactly one is. Computed on the bounding box of both
    masks (plus the tolerance), so it costs little on a 240 x 240 x 155 grid.
    """
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    margin = int(math.ceil(tolerance_mm / min(spacing))) + 2
    box = _bbox(a | b, margin)
    a, b = np.pad(a[box], 1), np.pad(b[box], 1)
    border_a = a & ~ndimage.binary_erosion(a)
    border_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~border_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~border_a, sampling=spacing)
    close = int(np.count_nonzero(to_b[border_a] <= tolerance_mm)) + int(
        np.count_nonzero(to_a[border_b] <= tolerance_mm)
    )
    return close / (int(np.count_nonzero(border_a)) + int(np.count_nonzero(border_b)))


def metric_score(
    candidate: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    options: FinetuneOptions | None = None,
) -> dict[str, float]:
    """Per-region Dice and surface Dice, the aggregated ``score`` (0..1) and ``stars = 1 + 5 * score``.

    A region's score is ``dice_weight * Dice + (1 - dice_weight) * surface Dice``. Regions smaller than
    ``min_region_ml`` in both segmentations are left out (an almost absent enhancing tumour makes Dice pure
    noise), except WT, which always counts. ``aggregate="min"`` takes the worst region (a segmentation that
    labels the whole head as edema keeps perfect TC/ET but is unusable), ``"mean"`` the weighted mean.
    """
    opts = options or FinetuneOptions()
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, float] = {}
    scores: dict[str, float] = {}
    for region in opts.region_weights:
        ca, ra = region_mask(candidate, region), region_mask(reference, region)
        d = dice(ca, ra)
        sd = surface_dice(ca, ra, spacing, opts.tolerance_mm)
        out[f"dice_{region}"] = d
        out[f"sdice_{region}"] = sd
        largest_ml = max(int(np.count_nonzero(ca)), int(np.count_nonzero(ra))) * voxel_ml
        if region == "WT" or largest_ml >= opts.min_region_ml:
            scores[region] = opts.dice_weight * d + (1.0 - opts.dice_weight) * sd
    if not scores:  # WT not weighted and every weighted region tiny: fall back to all of them
        scores = {
            r: opts.dice_weight * out[f"dice_{r}"] + (1.0 - opts.dice_weight) * out[f"sdice_{r}"]
            for r in opts.region_weights
        }
    if opts.aggregate == "min":
        score = min(scores.values())
    else:
        weight = sum(opts.region_weights[r] for r in scores)
        score = sum(opts.region_weights[r] * v for r, v in scores.items()) / weight
    out["score"] = score
    out["stars"] = 1.0 + 5.0 * score
    return out


# ------------------------------------------------------------------------------------------ cases
def read_cases(path: str | Path) -> list[FinetuneCase]:
    """A cases table (CSV): ``exam_id, t1c, t1, t2, flair, reference`` and optional ``candidates``
    (paths separated by ``;``) and ``brain_mask``; relative paths are resolved against the table's folder.

    Raises:
        NotFound / InvalidInput: missing table, columns or files.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"cases table {str(path)!r} does not exist", field="cases")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    required = ["exam_id", "t1c", "t1", "t2", "flair", "reference"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InvalidInput(
            f"cases table lacks columns {missing}; expected {required} (+ candidates, brain_mask)",
            field="cases",
        )

    def resolve(p: str) -> Path:
        q = Path(p)
        q = q if q.is_absolute() else (path.parent / q).resolve()
        if not q.is_file():
            raise NotFound(f"cases table names a missing file {str(q)!r}", field="cases")
        return q

    cases = []
    for row in df.to_dict("records"):
        cands = tuple(resolve(p) for p in str(row.get("candidates", "")).split(";") if p.strip())
        mask = str(row.get("brain_mask", "")).strip()
        cases.append(
            FinetuneCase(
                exam_id=str(row["exam_id"]),
                images={k: resolve(row[k]) for k in ("t1c", "t1", "t2", "flair")},
                reference=resolve(row["reference"]),
                candidates=cands,
                brain_mask=resolve(mask) if mask else None,
            )
        )
    return cases


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    s = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(s[0]), float(s[1]), float(s[2]))


def _write_labels(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    nib.save(img, str(path))


def make_candidates(case: FinetuneCase, options: FinetuneOptions, out_dir: Path) -> list[dict[str, Any]]:
    """The candidates of one exam with their metrics against the reference; failures are written as NIfTI
    under ``out_dir/<exam_id>/``. Each entry: ``exam_id, segmentation, kind (reference|candidate|failure),
    failure_mode, seed`` + the metric columns."""

    ref_case = Case.from_files(**case.images, segmentation=case.reference, case_id=case.exam_id)  # type: ignore[arg-type]
    ref = ref_case.labels
    spacing = _spacing(ref_case.segmentation.affine)
    brain = None
    if case.brain_mask is not None:
        brain = load_nifti(case.brain_mask, "brain_mask").values() > 0
    else:
        brain = brain_mask_full(ref_case.images)
    entries: list[dict[str, Any]] = []

    def add(path: Path, labels: np.ndarray, kind: str, mode: str = "", seed: int = -1) -> None:
        metrics = metric_score(labels, ref, spacing, options)
        entries.append(
            {
                "exam_id": case.exam_id,
                "segmentation": str(path),
                "kind": kind,
                "failure_mode": mode,
                "seed": seed,
                **metrics,
            }
        )

    add(case.reference, ref, "reference")
    for cand in case.candidates:
        labels = Case.from_files(
            **case.images,  # type: ignore[arg-type]
            segmentation=cand,
            images=dict(zip(("t1c", "t1", "t2", "flair"), ref_case.images, strict=True)),
        ).labels
        add(cand, labels, "candidate")
    wanted = options.failure_modes or tuple(m for m in FAILURE_MODES if m != "empty")
    usable = set(applicable_modes(ref))
    for m_index, mode in enumerate(wanted):
        if mode not in usable:
            logger.info("%s: failure mode %s does not apply, skipped", case.exam_id, mode)
            continue
        for k in range(options.seeds_per_mode):
            seed = options.seed * 10_000 + m_index * 100 + k
            failed = generate_failure(ref, mode, seed, brain_mask=brain)
            if not (failed > 0).any():
                continue
            path = out_dir / case.exam_id / f"{mode}-{seed}.nii.gz"
            if not path.is_file():
                _write_labels(failed, ref_case.segmentation.affine, path)
            add(path, failed, "failure", mode, seed)
    return entries


def teacher_stars(
    rows: Sequence[dict[str, Any]], case: FinetuneCase, cache_dir: Path | None = None
) -> dict[str, list[float]]:
    """The released model's per-view stars for each segmentation in ``rows`` (torch, reference contract)."""
    import torch

    net = load_network(released_weights())
    out: dict[str, list[float]] = {}
    images = None
    for row in rows:
        c = Case.from_files(**case.images, segmentation=row["segmentation"], images=images)  # type: ignore[arg-type]
        images = dict(zip(("t1c", "t1", "t2", "flair"), c.images, strict=True))
        views, _ = build_views(c.images, c.labels, CONTRACT_V1)
        with torch.no_grad():
            stars = net(torch.from_numpy(np.stack(views))).reshape(-1).numpy()
        out[row["segmentation"]] = [float(s) for s in stars]
    return out


def _rating(base: dict[str, str], segmentation: str, view: str, rater: str, stars: float) -> dict[str, Any]:
    return {**base, "segmentation": segmentation, "view": view, "rater": rater, "stars": float(stars)}


def build_table(
    cases: Sequence[FinetuneCase],
    options: FinetuneOptions,
    out_dir: str | Path,
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    segmentations_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ratings table for fine-tuning and the candidates table; both written to ``out_dir``.

    Generated failures go to ``segmentations_dir`` (default ``out_dir/segmentations``); files already there
    are reused, so two tables (both modes) can share one set of failures. In ``failure`` mode with
    ``balance``, each good segmentation's ratings are repeated (raters ``teacher-0``, ``teacher-1``, ...)
    so that good and failed segmentations weigh about the same under ``data.targets: rater``.

    Returns:
        ``(ratings, candidates)``; ratings use ``rater`` = ``metric``, ``failure``, ``teacher-*`` or ``fixed-*``.
    """
    import pandas as pd

    options = options.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seg_dir = Path(segmentations_dir) if segmentations_dir else out / "segmentations"
    ratings: list[dict[str, Any]] = []
    all_candidates: list[dict[str, Any]] = []
    for case in cases:
        entries = make_candidates(case, options, seg_dir)
        all_candidates.extend(entries)
        base = {"exam_id": case.exam_id, **{k: str(v) for k, v in case.images.items()}}
        if options.mode == "metric":
            ratings.extend(_rating(base, e["segmentation"], "all", "metric", e["stars"]) for e in entries)
            continue
        good = [e for e in entries if e["kind"] != "failure"]
        failed = [e for e in entries if e["kind"] == "failure"]
        copies = max(1, round(len(failed) / max(len(good), 1))) if options.balance else 1
        taught = teacher_stars(good, case) if options.good_stars == "teacher" else {}
        for e in good:
            for j in range(copies):
                if options.good_stars == "teacher":
                    for view, stars in zip(views, taught[e["segmentation"]], strict=True):
                        e[f"teacher_{view}"] = stars
                        ratings.append(
                            _rating(
                                base, e["segmentation"], view, f"teacher-{j}", float(np.clip(stars, 1, 6))
                            )
                        )
                else:
                    ratings.append(
                        _rating(base, e["segmentation"], "all", f"fixed-{j}", float(options.good_stars))
                    )
        ratings.extend(
            _rating(base, e["segmentation"], "all", "failure", options.failure_stars) for e in failed
        )
    table = pd.DataFrame(ratings)
    cands = pd.DataFrame(all_candidates)
    table.to_csv(out / "ratings.csv", index=False)
    cands.to_csv(out / "candidates.csv", index=False)
    logger.info("fine-tuning table (%s): %d ratings over %d candidates", options.mode, len(table), len(cands))
    return table, cands


# ------------------------------------------------------------------------------------------ verdict


def heldout_criteria(
    preds: pd.DataFrame, candidates: pd.DataFrame, ratings_table: str | Path
) -> pd.DataFrame:
    """Per held-out segmentation: its 3-view mean stars (``pred``) joined with its candidate row (kind,
    failure mode, metric stars). ``preds`` is a run's ``eval*/predictions.csv``."""

    segs = read_ratings(ratings_table).drop_duplicates("seg_key").set_index("seg_key")["segmentation"]
    mean = preds.groupby("seg_key")["pred"].mean()
    frame = mean.rename("pred").reset_index()
    frame["segmentation"] = frame["seg_key"].map(segs)
    return frame.merge(candidates, on="segmentation", how="inner")


def summarize_heldout(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """Mode-independent before/after figures on held-out segmentations (see :func:`verdict`).

    ``mae_m`` / ``r_m``: MAE and Pearson r against the metric stars; ``auc``: good (reference or other
    algorithm) vs generated failure; ``good`` / ``fail``: mean stars; ``drift``: mean |after - before| of
    the good segmentations.
    """

    out: dict[str, Any] = {}
    for tag, frame in (("before", before), ("after", after)):
        good, fail = frame[frame["kind"] != "failure"], frame[frame["kind"] == "failure"]
        out[tag] = {
            "n": int(len(frame)),
            "mae_m": float(np.abs(frame["pred"] - frame["stars"]).mean()),
            "r_m": pearson_r(frame["pred"].to_numpy(), frame["stars"].to_numpy()),
            "auc": auc(good["pred"].to_numpy(), fail["pred"].to_numpy()),
            "good": float(good["pred"].mean()) if len(good) else math.nan,
            "fail": float(fail["pred"].mean()) if len(fail) else math.nan,
        }
    pair = before.loc[before["kind"] != "failure", ["segmentation", "pred"]].merge(
        after.loc[after["kind"] != "failure", ["segmentation", "pred"]],
        on="segmentation",
        suffixes=("_b", "_a"),
    )
    out["drift"] = float(np.abs(pair["pred_a"] - pair["pred_b"]).mean()) if len(pair) else math.nan
    return out


MAX_GOOD_DRIFT = 0.5  # stars: how far good segmentations may move in failure-aware fine-tuning


def verdict(mode: str, figures: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether a fine-tuned model is better than the released one on held-out segmentations, and why not.

    ``metric``: lower MAE and higher Pearson r against the metric stars. ``failure``: a higher AUC (good vs
    failure), failures rated lower, and good segmentations moved by at most :data:`MAX_GOOD_DRIFT` stars.
    """
    b, a = figures["before"], figures["after"]
    reasons: list[str] = []
    if mode == "metric":
        if not a["mae_m"] < b["mae_m"]:
            reasons.append(f"MAE vs metric stars did not go down ({b['mae_m']:.2f} -> {a['mae_m']:.2f})")
        if not a["r_m"] > b["r_m"]:
            reasons.append(f"Pearson r vs metric stars did not go up ({b['r_m']:.2f} -> {a['r_m']:.2f})")
    else:
        if not a["auc"] > b["auc"]:
            reasons.append(f"AUC good vs failure did not go up ({b['auc']:.2f} -> {a['auc']:.2f})")
        if not a["fail"] < b["fail"]:
            reasons.append(f"failures were not rated lower ({b['fail']:.2f} -> {a['fail']:.2f})")
        if not figures["drift"] <= MAX_GOOD_DRIFT:
            reasons.append(f"good segmentations moved {figures['drift']:.2f} stars (> {MAX_GOOD_DRIFT})")
    return not reasons, reasons


def finetune(
    cases: Sequence[FinetuneCase],
    options: FinetuneOptions,
    cfg: Any,
    run_dir: str | Path,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the fine-tuning table in ``run_dir/finetune``, train from the released weights, judge the result.

    The summary's ``finetune`` section has the held-out figures before and after (:func:`summarize_heldout`)
    and ``improved`` / ``reasons`` from :func:`verdict`; ``dqe finetune --publish`` publishes only an
    improved model.

    Raises:
        RunError: ``run_dir`` already holds a run, or nothing is held out to judge on.
    """
    import dataclasses
    import json

    import pandas as pd

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        raise RunError(f"{str(run_dir)!r} already holds a run; choose a new --out")
    table_dir = run_dir / "finetune"
    build_table(cases, options, table_dir)
    table = (table_dir / "ratings.csv").resolve()
    data = dataclasses.replace(cfg.data, ratings=str(table), synthetic=None)
    model = cfg.model if cfg.model.init is not None else dataclasses.replace(cfg.model, init="released")
    cfg = dataclasses.replace(cfg, data=data, model=model).validate()
    summary = train(cfg, run_dir, device=device, progress=progress)
    if "eval" not in summary or "initial_eval" not in summary:
        raise RunError(
            "fine-tuning needs held-out exams to judge the result (data.val_fraction or data.val_exams)"
        )
    cands = pd.read_csv(table_dir / "candidates.csv")
    frames = [
        heldout_criteria(pd.read_csv(run_dir / sub / "predictions.csv"), cands, table)
        for sub in ("eval_initial", "eval")
    ]
    figures = summarize_heldout(*frames)
    improved, reasons = verdict(options.mode, figures)
    summary["improved"] = improved
    summary["finetune"] = {
        "mode": options.mode,
        "options": dataclasses.asdict(options),
        **figures,
        "improved": improved,
        "reasons": reasons,
    }
    record_path = run_dir / "run.json"
    record = json.loads(record_path.read_text())
    record["finetune"] = summary["finetune"]
    record_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return summary
