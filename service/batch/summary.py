"""From journal records to the score table and the per-team summary."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.stats import correlations
from dqe.service.batch.metrics import metric_columns

if TYPE_CHECKING:
    import pandas as pd

VIEWS = ("axial", "coronal", "sagittal")
LEADING = ("case", "team", "mean_stars", *VIEWS, "verdict", "gate_score", "error")
TRAILING = (
    "error_code",
    "gate_reasons",
    "warnings",
    "com_x",
    "com_y",
    "com_z",
    "segmentation",
    "png",
    "evidence_png",
    "model_id",
    "model_sha256",
    "precision",
    "elapsed_ms",
    "input_key",
)
VERDICTS = ("pass", "review", "fail")
REGIONS = ("wt", "tc", "et")
CONSENSUS = tuple(f"consensus_dice_{r}" for r in REGIONS)
GATE_NUMERIC = (
    "gate_alpha",
    "gate_p_value",
    *(f"p_value_{r}" for r in REGIONS),
    *(f"predicted_dice_{r}{s}" for r in REGIONS for s in ("", "_low", "_high")),
)
GATE_TEXT = ("gate_combination", *(f"verdict_{r}" for r in REGIONS), *(f"evidence_{r}" for r in REGIONS))


def score_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per record, sorted by case then team, with the columns of ``scores.csv``.

    Metric columns appear only when some record has them; list fields are joined with ``"; "``.
    """
    import pandas as pd

    rows = []
    for rec in records:
        row = {
            k: v
            for k, v in rec.items()
            if not k.startswith("_") and k not in ("com", "error_typed", "journal_version", "evidence_slices")
        }
        com = rec.get("com") or [None, None, None]
        row["com_x"], row["com_y"], row["com_z"] = com
        for key in ("gate_reasons", "warnings"):
            row[key] = "; ".join(rec.get(key) or [])
        rows.append(row)
    metrics = [c for c in metric_columns() if any(r.get(c) is not None for r in rows)]
    # consensus and per-region gate columns appear once some record has them (older journals lack them)
    consensus = [c for c in CONSENSUS if any(c in r for r in rows)]
    gate_num = [c for c in GATE_NUMERIC if any(c in r for r in rows)]
    gate_text = [c for c in GATE_TEXT if any(c in r for r in rows)]
    columns = [*LEADING, *metrics, *consensus, *gate_num, *gate_text, *TRAILING]
    df = pd.DataFrame(rows, columns=columns)
    for col in gate_text:
        df[col] = df[col].fillna("").astype(str)
    for col in ("mean_stars", *VIEWS, "gate_score", *metrics, *consensus, *gate_num, "elapsed_ms"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("com_x", "com_y", "com_z"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in (
        "verdict",
        "error",
        "error_code",
        "gate_reasons",
        "warnings",
        "segmentation",
        "png",
        "evidence_png",
    ):
        df[col] = df[col].fillna("").astype(str)
    return df.sort_values(["case", "team"], kind="stable").reset_index(drop=True)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def team_summary(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per team: n, scored, failures, mean/median stars (of scored rows), verdict counts, metric means."""
    metrics = [c for c in metric_columns() if c in df.columns]
    out: dict[str, dict[str, Any]] = {}
    for team, group in df.groupby("team", sort=True):
        stars = group["mean_stars"].dropna()
        failed = group["error"] != ""
        verdicts = {v: int((group["verdict"] == v).sum()) for v in VERDICTS}
        verdicts["none"] = int(((group["verdict"] == "") & ~failed).sum())
        entry: dict[str, Any] = {
            "n": int(len(group)),
            "scored": int(stars.size),
            "failures": int(failed.sum()),
            "mean_stars": _num(stars.mean()) if stars.size else None,
            "median_stars": _num(stars.median()) if stars.size else None,
            "min_stars": _num(stars.min()) if stars.size else None,
            "verdicts": verdicts,
            "failed": sorted(group.loc[failed, "case"].tolist()),
        }
        if metrics:
            entry["metrics_mean"] = {m: _num(group[m].mean()) for m in metrics}
        if all(c in group.columns for c in CONSENSUS):
            entry["consensus_dice_mean"] = {r: _num(group[f"consensus_dice_{r}"].mean()) for r in REGIONS}
        out[str(team)] = entry
    return out


def correlation_summary(
    df: pd.DataFrame, star_columns: Sequence[str] = ("mean_stars", *VIEWS)
) -> dict[str, Any]:
    """Pearson and Spearman (with 95 % CIs) of each star column with each metric column present."""
    metrics = [c for c in metric_columns() if c in df.columns]
    if not metrics:
        return {}
    cols = {c: df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in (*star_columns, *metrics)}
    return correlations(cols, star_columns, metrics)  # type: ignore[arg-type]


def build_summary(df: pd.DataFrame, info: dict[str, Any]) -> dict[str, Any]:
    """The content of ``summary.json``."""
    stars = df["mean_stars"].dropna()
    return {
        **info,
        "n_cases": int(df["case"].nunique()),
        "n_teams": int(df["team"].nunique()),
        "n_segmentations": int(len(df)),
        "n_scored": int(stars.size),
        "n_failed": int((df["error"] != "").sum()),
        "mean_stars": _num(stars.mean()) if stars.size else None,
        "teams": team_summary(df),
        "correlations": correlation_summary(df),
    }
