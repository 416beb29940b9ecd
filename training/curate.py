"""``dqe curate``: rate every training case of a BraTS or nnU-Net dataset with DQE and the QC gate, and write
a keep / review / drop list, curated splits (nnU-Net ``splits_final.json``, MONAI datalist) and an HTML summary.

The scoring is the batch scorer's (:func:`dqe.service.batch.runner.run_batch`) on a staging folder of links, so
it is resumable on its journal: a run killed midway and restarted scores only what is missing. nnU-Net
channels are mapped to the model's (t1c, t1, t2, flair) by the channel names in ``dataset.json``, and its
labels to BraTS labels (1 necrosis, 2 edema, 3 enhancing) by their names.
"""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dqe.models.case import MODALITIES, NIFTI_SUFFIXES, discover_files
from dqe.models.errors import DQEError, InvalidInput, NotFound

CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "t1c": ("t1ce", "t1c", "t1gd", "t1-gd", "t1 gd", "t1+c", "t1wce", "t1 ce", "t1-ce", "t1_ce", "ce-t1"),
    "t1": ("t1", "t1n", "t1w", "native t1", "t1-native"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2-flair", "t2 flair", "t2_flair"),
}
LABEL_KEYWORDS = (
    ("non-enh", 1),
    ("non enh", 1),
    ("necro", 1),
    ("ncr", 1),
    ("enhanc", 3),
    ("edema", 2),
    ("oedema", 2),
)


@dataclass(frozen=True)
class TrainingCase:
    """One training exam: its images by model channel, its label file and the label remapping (or ``None``)."""

    case_id: str
    images: dict[str, Path]
    label: Path
    remap: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class CurateOptions:
    """Decision thresholds (stars on the model's 1-6 scale) and split settings."""

    drop_below: float = 2.0
    review_below: float = 3.5
    folds: int = 5
    seed: int = 0


def _channel_of(name: str) -> str | None:
    key = name.strip().lower()
    for channel, aliases in CHANNEL_ALIASES.items():
        if key in aliases:
            return channel
    return None


def _label_remap(labels: Mapping[str, Any]) -> tuple[tuple[int, int], ...]:
    """nnU-Net ``labels`` (v2 ``{name: value}``, v1 ``{value: name}``, or v2 regions) -> ((value, BraTS label), ...).

    Raises:
        InvalidInput: a foreground label whose name says nothing of necrosis, edema or enhancement.
    """
    items = [(v, k) for k, v in labels.items()] if all(k.isdigit() for k in labels) else list(labels.items())
    if any(isinstance(v, list) for _, v in items):  # region-based (whole tumour / tumour core / enhancing)
        regions = {name.lower(): set(v if isinstance(v, list) else [v]) for name, v in items}
        wt = next((s for n, s in regions.items() if "whole" in n), set())
        tc = next((s for n, s in regions.items() if "core" in n), set())
        et = next((s for n, s in regions.items() if "enhanc" in n), set())
        regioned = {v: 3 for v in et} | {v: 1 for v in tc - et} | {v: 2 for v in wt - tc}
        return tuple(sorted(regioned.items()))
    out: list[tuple[int, int]] = []
    for name, value in items:
        value = int(value)
        if value == 0:
            continue
        brats = next((b for word, b in LABEL_KEYWORDS if word in str(name).lower()), None)
        if brats is None:
            raise InvalidInput(
                f"dataset.json label {name!r} ({value}) is not necrosis, edema or enhancing tumour"
            )
        out.append((value, brats))
    return tuple(sorted(out))


def discover_nnunet(root: Path) -> list[TrainingCase]:
    """The training cases of an nnU-Net raw dataset (``dataset.json``, ``imagesTr``, ``labelsTr``).

    Raises:
        InvalidInput: channel names that do not map one-to-one onto t1c, t1, t2, flair.
    """
    meta = json.loads((root / "dataset.json").read_text())
    names = meta.get("channel_names") or meta.get("modality") or {}
    found = {int(k): _channel_of(str(v)) for k, v in names.items()}
    mapping = {k: c for k, c in found.items() if c is not None}
    if sorted(mapping.values()) != sorted(MODALITIES) or len(found) != 4:
        raise InvalidInput(
            f"dataset.json channels {names} do not map onto {list(MODALITIES)}", field="dataset.json"
        )
    remap = _label_remap(meta.get("labels", {}))
    ext = meta.get("file_ending", ".nii.gz")
    cases = []
    for label in sorted((root / "labelsTr").glob(f"*{ext}")):
        case_id = label.name[: -len(ext)]
        images = {channel: root / "imagesTr" / f"{case_id}_{i:04d}{ext}" for i, channel in mapping.items()}
        missing = [p.name for p in images.values() if not p.is_file()]
        if missing:
            raise NotFound(f"case {case_id!r} misses {missing} in imagesTr", field="imagesTr")
        identity = all(a == b for a, b in remap)
        cases.append(TrainingCase(case_id, images, label, None if identity else remap))
    return cases


def _case_folders(root: Path, depth: int = 4) -> list[Path]:
    """Every folder under ``root`` down to ``depth`` levels (a data tree of several sources holds cases deeper)."""
    found, level = [], [root]
    for _ in range(depth):
        level = sorted(p for d in level for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        found.extend(level)
    return found


def discover_training_set(
    root: str | Path, skipped: list[dict[str, str]] | None = None
) -> tuple[str, list[TrainingCase]]:
    """(layout, cases) of a BraTS tree of case folders (searched 4 levels deep; a case folder has four images
    and exactly one label map) or an nnU-Net raw dataset.

    Raises:
        NotFound: the folder is missing or holds no training case.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"dataset {str(root)!r} does not exist", field="dataset")
    if (root / "dataset.json").is_file() and (root / "labelsTr").is_dir():
        layout, cases = "nnunet", discover_nnunet(root)
    else:
        layout, cases = "brats", []
        for folder in _case_folders(root):
            try:
                files = discover_files(folder)
            except DQEError as exc:  # not a case folder (no images, or several label maps to choose from)
                if skipped is not None and any(_suffix_or_none(p) for p in folder.iterdir()):
                    skipped.append({"folder": str(folder), "reason": exc.message})
                continue
            case_id = folder.name if folder.parent == root else "__".join(folder.relative_to(root).parts)
            cases.append(TrainingCase(case_id, {m: files[m] for m in MODALITIES}, files["segmentation"]))
    if not cases:
        raise NotFound(
            f"no training case found in {str(root)!r} (BraTS case folders or nnU-Net)", field="dataset"
        )
    return layout, cases


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def _write_remapped(case: TrainingCase, dst: Path) -> None:
    """The label file with BraTS labels, written once (atomically: a kill leaves no half file)."""
    if dst.exists():
        return
    import nibabel as nib

    img: Any = nib.load(str(case.label))
    data = np.asarray(img.dataobj)
    out = np.zeros(data.shape, dtype=np.uint8)
    for value, brats in case.remap or ():
        out[data == value] = brats
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(".tmp-" + dst.name)
    nib.save(nib.Nifti1Image(out, img.affine, img.header), str(tmp))
    os.replace(tmp, dst)


def stage(cases: list[TrainingCase], staging: Path) -> tuple[Path, Path]:
    """Case folders of links and a ``labels`` team folder in the layout ``dqe batch`` reads."""
    cases_dir, team_dir = staging / "cases", staging / "labels"
    for case in cases:
        for channel, path in case.images.items():
            _link(path, cases_dir / case.case_id / f"{case.case_id}_{channel}{_suffix(path)}")
        dst = team_dir / f"{case.case_id}.nii.gz"
        if case.remap is None:
            _link(case.label, team_dir / f"{case.case_id}{_suffix(case.label)}")
        else:
            _write_remapped(case, dst)
    return cases_dir, team_dir


def _suffix_or_none(path: Path) -> str | None:
    return next((s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)), None)


def _suffix(path: Path) -> str:
    return next(s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s))


def decide(record: Mapping[str, Any], opts: CurateOptions) -> tuple[str, list[str]]:
    """``keep`` / ``review`` / ``drop`` and the reasons, from one journal record."""
    reasons: list[str] = []
    if record.get("error"):
        return "drop", [f"not scorable: {record.get('error_kind') or ''} {record['error']}".strip()]
    stars = record.get("mean_stars")
    verdict = record.get("verdict") or ""
    gate_reasons = [str(r) for r in record.get("gate_reasons") or []]
    decision = "keep"
    if verdict == "fail":
        decision = "drop"
        reasons.append("QC gate: fail" + (f" ({'; '.join(gate_reasons)})" if gate_reasons else ""))
    elif verdict == "review":
        decision = "review"
        reasons.append("QC gate: review" + (f" ({'; '.join(gate_reasons)})" if gate_reasons else ""))
    if stars is not None and stars < opts.drop_below:
        decision = "drop"
        reasons.append(f"DQE {stars:.2f} stars < {opts.drop_below}")
    elif stars is not None and stars < opts.review_below:
        decision = "drop" if decision == "drop" else "review"
        reasons.append(f"DQE {stars:.2f} stars < {opts.review_below}")
    return decision, reasons


def folds(case_ids: list[str], k: int, seed: int) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json``: ``k`` folds (fewer when there are fewer cases) of a seeded shuffle."""
    ids = sorted(case_ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    k = max(1, min(k, len(ids)))
    out = []
    for f in range(k):
        val = sorted(order[f::k])
        out.append({"train": sorted(set(ids) - set(val)), "val": val})
    return out


def write_outputs(
    out: Path, layout: str, cases: list[TrainingCase], rows: list[dict[str, Any]], opts: CurateOptions
) -> dict[str, Any]:
    """curation.csv, splits_final.json, datalist.json and summary.html; returns the summary."""
    by_id = {c.case_id: c for c in cases}
    with (out / "curation.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["case", "decision", "stars", "verdict", "gate_score", "reasons"]
        )
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "reasons": " | ".join(r["reasons"])})
    kept = [r["case"] for r in rows if r["decision"] == "keep"]
    splits = folds(kept, opts.folds, opts.seed)
    (out / "splits_final.json").write_text(json.dumps(splits, indent=2) + "\n")
    fold_of = {cid: f for f, split in enumerate(splits) for cid in split["val"]}

    def entry(cid: str) -> dict[str, Any]:
        c = by_id[cid]
        return {"image": [str(c.images[m]) for m in MODALITIES], "label": str(c.label), "case": cid}

    datalist = {
        "training": [{**entry(cid), "fold": fold_of.get(cid, 0)} for cid in kept],
        "review": [entry(r["case"]) for r in rows if r["decision"] == "review"],
        "dropped": [entry(r["case"]) for r in rows if r["decision"] == "drop"],
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n")
    counts = {d: sum(r["decision"] == d for r in rows) for d in ("keep", "review", "drop")}
    summary = {
        "layout": layout,
        "cases": len(rows),
        **counts,
        "thresholds": {"drop_below": opts.drop_below, "review_below": opts.review_below},
        "folds": len(splits),
        "files": {
            n: str(out / n) for n in ("curation.csv", "splits_final.json", "datalist.json", "summary.html")
        },
    }
    (out / "summary.html").write_text(_html(rows, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _stars(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _html(rows: list[dict[str, Any]], summary: Mapping[str, Any]) -> str:
    colour = {"keep": "#e6f4ea", "review": "#fff4ce", "drop": "#fde7e9"}
    body = "".join(
        f"<tr style='background:{colour[r['decision']]}'><td>{html.escape(r['case'])}</td><td>{r['decision']}</td>"
        f"<td>{_stars(r['stars'])}</td><td>{html.escape(str(r['verdict'] or ''))}</td>"
        f"<td>{html.escape(' | '.join(r['reasons']))}</td></tr>"
        for r in rows
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>dqe curate</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ccc}</style>"
        f"<h1>Dataset curation</h1><p>{summary['cases']} cases ({summary['layout']} layout): "
        f"{summary['keep']} keep, {summary['review']} review, {summary['drop']} drop. Drop below "
        f"{summary['thresholds']['drop_below']} stars or on a failed gate; review below "
        f"{summary['thresholds']['review_below']} stars or on a gate review.</p>"
        "<table><tr><th>case</th><th>decision</th><th>stars</th><th>gate</th><th>reasons</th></tr>"
        f"{body}</table>"
    )


def curate(
    dataset: str | Path, out: str | Path, opts: CurateOptions | None = None, progress: bool = False
) -> dict[str, Any]:
    """Score, decide and write the outputs (see the module docstring); resumable on ``OUT/batch/journal.jsonl``."""
    from dqe.service.batch.runner import (  # lazy: the batch scorer (onnxruntime, pandas) loads when the command runs
        BatchOptions,
        run_batch,
    )

    opts = opts or CurateOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[dict[str, str]] = []
    layout, cases = discover_training_set(dataset, skipped)
    cases_dir, team_dir = stage(cases, out / "staging")
    outcome = run_batch(
        cases_dir,
        [team_dir],
        out / "batch",
        options=BatchOptions(images=False, report_images=0, progress=progress),
    )
    from dqe.service.batch.journal import Journal  # lazy: with the batch scorer above

    journal = Journal(out / "batch" / "journal.jsonl")
    rows = []
    for case in cases:
        record = journal.records.get((case.case_id, team_dir.name), {"error": "no result"})
        decision, reasons = decide(record, opts)
        rows.append(
            {
                "case": case.case_id,
                "decision": decision,
                "stars": record.get("mean_stars"),
                "verdict": record.get("verdict"),
                "gate_score": record.get("gate_score"),
                "reasons": reasons,
            }
        )
    summary = write_outputs(out, layout, cases, rows, opts)
    summary["scored_now"], summary["skipped_already_done"] = outcome.scored_now, outcome.skipped
    summary["skipped_folders"] = skipped  # folders with NIfTI files that are not one training case, and why
    return summary
