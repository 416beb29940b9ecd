"""Regression metrics per view and for the 3-view mean, and the paper's scatter / Bland-Altman plots.

Predictions come as a table with one row per (segmentation, view) that was predicted (``seg_key, view,
pred``); ratings as one row per rated (segmentation, view) with the raters' mean (``target``) and the number
of ratings (``n_ratings``). Per-view metrics pair each rated view with its prediction; the 3-view mean
pairs, for each segmentation, the mean of its predicted views with the mean of all its ratings (the
paper's exam-level comparison).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.stats import pearson_r
from dqe.training.data import build_view_bank, expand_views, rated_views

if TYPE_CHECKING:
    import pandas as pd

MEAN = "mean"


def regression_metrics(
    pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """``mae``, ``rmse``, ``pearson``, ``bias`` (mean pred - target) in stars, and ``n``."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"predictions {p.shape} and targets {t.shape} differ in shape")
    if p.size == 0:
        return {"mae": math.nan, "rmse": math.nan, "pearson": math.nan, "bias": math.nan, "n": 0}
    err = p - t
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "pearson": pearson_r(p, t),
        "bias": float(np.mean(err)),
        "n": int(p.size),
    }


def paired(preds: pd.DataFrame, rated: pd.DataFrame) -> pd.DataFrame:
    """Rated views joined with their predictions (``seg_key, exam_id, view, target, n_ratings, pred``)."""
    return rated.merge(preds.loc[:, ["seg_key", "view", "pred"]], on=["seg_key", "view"], how="inner")


def exam_means(preds: pd.DataFrame, rated: pd.DataFrame) -> pd.DataFrame:
    """Per segmentation: mean predicted stars over its views and mean of all its ratings."""
    pred_mean = preds.groupby("seg_key")["pred"].mean()
    weighted = (
        rated.assign(total=rated["target"] * rated["n_ratings"])
        .groupby("seg_key")[["total", "n_ratings"]]
        .sum()
    )
    target_mean = weighted["total"] / weighted["n_ratings"]
    out = target_mean.rename("target").to_frame().join(pred_mean, how="inner").reset_index()
    exams = rated.drop_duplicates("seg_key").set_index("seg_key")["exam_id"]
    out["exam_id"] = out["seg_key"].map(exams)
    return out


def summarize(preds: pd.DataFrame, rated: pd.DataFrame, views: Sequence[str]) -> dict[str, dict[str, float]]:
    """Metrics for each view, for all rated views pooled (``views``) and for the 3-view mean (``mean``)."""
    pairs = paired(preds, rated)
    out: dict[str, dict[str, float]] = {}
    for view in views:
        sel = pairs[pairs["view"] == view]
        out[view] = regression_metrics(sel["pred"].to_numpy(), sel["target"].to_numpy())
    out["views"] = regression_metrics(pairs["pred"].to_numpy(), pairs["target"].to_numpy())
    means = exam_means(preds, rated)
    out[MEAN] = regression_metrics(means["pred"].to_numpy(), means["target"].to_numpy())
    return out


def scatter_plot(pred: np.ndarray, target: np.ndarray, path: str | Path, title: str = "") -> None:
    """Predicted vs. rated stars with the identity and a least-squares line (paper Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(target, pred, s=14, alpha=0.7)
    ax.plot([1, 6], [1, 6], color="grey", lw=1, label="identity")
    if pred.size >= 2 and np.std(target) > 0:
        slope, icept = np.polyfit(target, pred, 1)
        xs = np.array([1.0, 6.0])
        ax.plot(xs, slope * xs + icept, ls=":", color="c", label=f"fit (r = {pearson_r(pred, target):.2f})")
    ax.set(xlim=(0.8, 6.2), ylim=(0.8, 6.2), xlabel="rated stars", ylabel="predicted stars", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bland_altman_plot(pred: np.ndarray, target: np.ndarray, path: str | Path, title: str = "") -> None:
    """Difference (pred - rated) against the mean of both, with the bias and 95 % limits (paper Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mean = (pred + target) / 2.0
    diff = pred - target
    bias = float(diff.mean()) if diff.size else math.nan
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter(mean, diff, s=14, alpha=0.7)
    ax.axhline(bias, color="k", lw=1, label=f"bias {bias:+.2f}")
    for sign in (-1, 1):
        ax.axhline(bias + sign * 1.96 * sd, color="r", ls="--", lw=1)
    ax.set(xlabel="mean of predicted and rated stars", ylabel="predicted - rated stars", title=title)
    ax.legend(loc="upper right", title=f"limits of agreement +/- {1.96 * sd:.2f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    preds: pd.DataFrame, rated: pd.DataFrame, views: Sequence[str], out_dir: str | Path, title: str = ""
) -> dict[str, Any]:
    """Write ``metrics.json``, ``predictions.csv``, ``scatter.png`` and ``bland_altman.png`` (view level)
    and ``scatter_mean.png`` (3-view mean) into ``out_dir``; returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = summarize(preds, rated, views)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pairs = paired(preds, rated)
    preds.to_csv(out / "predictions.csv", index=False)
    if len(pairs):
        scatter_plot(
            pairs["pred"].to_numpy(), pairs["target"].to_numpy(), out / "scatter.png", f"{title} views"
        )
        bland_altman_plot(
            pairs["pred"].to_numpy(), pairs["target"].to_numpy(), out / "bland_altman.png", title
        )
        means = exam_means(preds, rated)
        scatter_plot(
            means["pred"].to_numpy(),
            means["target"].to_numpy(),
            out / "scatter_mean.png",
            f"{title} 3-view mean",
        )
    return metrics


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """A small fixed-width table (one line per view / the mean)."""
    lines = [f"{'':10s} {'n':>4s} {'MAE':>6s} {'RMSE':>6s} {'r':>6s} {'bias':>6s}"]
    for key, m in metrics.items():
        lines.append(
            f"{key:10s} {m['n']:4d} {m['mae']:6.3f} {m['rmse']:6.3f} {m['pearson']:6.3f} {m['bias']:+6.3f}"
        )
    return "\n".join(lines)


def evaluate_ratings(
    df: pd.DataFrame,
    contract: Any,
    predict_views: Any,
    out_dir: str | Path,
    title: str = "",
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score every segmentation of a validated ratings table and write the report into ``out_dir``.

    Args:
        df: ratings (see :func:`dqe.training.data.validate_ratings`).
        contract: the model's preprocessing contract (views are built with it).
        predict_views: ``(N, C, H, W) float32 -> (N,) stars``, e.g. ``Engine.run`` or a torch model.
    """
    import pandas as pd

    bank = build_view_bank(df, contract, cache_dir=cache_dir, skip_invalid=True)
    df = df[~df["seg_key"].isin(set(bank.skipped))]
    keys = sorted(set(df["seg_key"]))
    exams = df.drop_duplicates("seg_key").set_index("seg_key")["exam_id"]
    rows = []
    for key in keys:
        stars = np.asarray(predict_views(bank.views[key]), dtype=np.float64).reshape(-1)
        for view, s in zip(contract.views, stars, strict=True):
            rows.append({"seg_key": key, "exam_id": exams[key], "view": view, "pred": float(s)})
    preds = pd.DataFrame(rows)
    rated = rated_views(expand_views(df, contract.views))
    metrics = write_report(preds, rated, contract.views, out_dir, title=title)
    return {"metrics": metrics, "skipped": bank.skipped, "n_segmentations": len(keys)}
