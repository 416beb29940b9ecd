"""Report plots (matplotlib, Agg backend, imported lazily): stars vs a metric, and a Bland-Altman-style plot.

The Bland-Altman-style plot compares two quality scales, so stars are first mapped linearly from the
model's 1-6 range onto 0-1 (``(stars - 1) / 5``); x is the mean of that and the metric, y their difference
(scaled stars - metric), with the mean difference and its 95 % limits of agreement (+/- 1.96 SD).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

STAR_RANGE = (1.0, 6.0)


def _figure(width: float = 6.0, height: float = 4.5):  # type: ignore[no-untyped-def]
    # A bare Figure renders through Agg without pyplot: no global backend switch, thread-safe per figure.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _scored(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[np.isfinite(df["mean_stars"].to_numpy(float)) & np.isfinite(df[metric].to_numpy(float))]


def scatter_png(df: pd.DataFrame, metric: str, label: str) -> bytes | None:
    """Mean stars (y) against ``metric`` (x), one colour per team, with a least-squares line."""
    data = _scored(df, metric)
    if data.empty:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for team, group in data.groupby("team", sort=True):
        ax.scatter(group[metric], group["mean_stars"], s=28, alpha=0.8, label=str(team))
    x, y = data[metric].to_numpy(float), data["mean_stars"].to_numpy(float)
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, slope * xs + intercept, ":", color="#d03fa0", label="linear fit")
    ax.set_xlabel(label)
    ax.set_ylabel("mean stars (1-6)")
    ax.set_title(f"Predicted stars vs {label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def bland_altman_png(df: pd.DataFrame, metric: str, label: str) -> bytes | None:
    """Mean vs difference of scaled stars ((stars - 1) / 5) and ``metric`` with limits of agreement."""
    data = _scored(df, metric)
    if data.empty:
        return None
    lo, hi = STAR_RANGE
    scaled = (data["mean_stars"].to_numpy(float) - lo) / (hi - lo)
    ref = data[metric].to_numpy(float)
    mean, diff = (scaled + ref) / 2, scaled - ref
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    fig = _figure()
    ax = fig.add_subplot()
    for team in sorted(data["team"].unique()):
        sel = (data["team"] == team).to_numpy()
        ax.scatter(mean[sel], diff[sel], s=28, alpha=0.8, label=str(team))
    ax.axhline(bias, color="k", lw=1, label=f"bias {bias:+.3f}")
    for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
        ax.axhline(limit, color="gray", ls="--", lw=1)
    ax.set_xlabel(f"mean of scaled stars and {label}")
    ax.set_ylabel(f"scaled stars - {label}")
    ax.set_title("Bland-Altman-style agreement (stars mapped 1-6 -> 0-1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def team_boxplot_png(df: pd.DataFrame) -> bytes | None:
    """Distribution of mean stars per team."""
    data = df[np.isfinite(df["mean_stars"].to_numpy(float))]
    if data.empty:
        return None
    teams = sorted(data["team"].unique())
    fig = _figure(max(4.0, 0.9 * len(teams) + 2), 3.8)
    ax = fig.add_subplot()
    ax.boxplot([data.loc[data["team"] == t, "mean_stars"].to_numpy(float) for t in teams], showmeans=True)
    ax.set_xticks(range(1, len(teams) + 1), teams, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean stars (1-6)")
    ax.set_title("Stars per team")
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)
