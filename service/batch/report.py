"""``report.html``: one self-contained page (PNGs embedded as base64 data URIs; the same PNGs in ``png/``).

Sections: run facts; per-team summary; stars vs reference metrics (correlations with 95 % CIs, scatter,
Bland-Altman-style plot) when ground truth was given; every segmentation worst first (failures first, then
by mean stars ascending) as a table; and for the worst ``max_images`` the centre-of-mass views with the
colour overlay, stars per view, gate verdict and reasons.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqe.service.batch import figures
from dqe.service.batch.writer import atomic_write_bytes

if TYPE_CHECKING:
    import pandas as pd

VIEWS = ("axial", "coronal", "sagittal")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{margin-top:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eef}
td.l,th.l{text-align:left}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;margin:14px 0}
.card img{max-width:100%;display:block;margin-top:6px}
.badge{display:inline-block;white-space:nowrap;border-radius:4px;padding:1px 8px;color:#fff;font-weight:600;font-size:12px}
.pass{background:#2e8b57}.review{background:#d9a400}.fail{background:#c0392b}.none{background:#888}.error{background:#6c3483}
.plots{display:flex;flex-wrap:wrap}.plots figure{width:48%;margin:0 1% 12px 0}
.plots img{max-width:100%;border:1px solid #ddd;background:#fff}figcaption{font-size:12px;color:#555}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.err{color:#8e1b1b}.muted{color:#666;font-size:12px}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def worst_first(df: pd.DataFrame) -> pd.DataFrame:
    """Failures first, then ascending mean stars; ties by case and team."""
    key = df.assign(_failed=(df["error"] != "").astype(int), _stars=df["mean_stars"].fillna(-math.inf))
    return key.sort_values(["_failed", "_stars", "case", "team"], ascending=[False, True, True, True]).drop(
        columns=["_failed", "_stars"]
    )


def _team_table(summary: dict[str, Any]) -> str:
    teams = summary.get("teams", {})
    has_metrics = any("metrics_mean" in t for t in teams.values())
    head = [
        "team",
        "n",
        "scored",
        "failures",
        "mean stars",
        "median stars",
        "min stars",
        "pass",
        "review",
        "fail",
    ]
    if has_metrics:
        head += ["mean Dice", "mean NSD"]
    rows = []
    for name, t in teams.items():
        cells = [f'<td class="l">{html.escape(name)}</td>'] + [
            f"<td>{_fmt(t[k])}</td>"
            for k in ("n", "scored", "failures", "mean_stars", "median_stars", "min_stars")
        ]
        cells += [f"<td>{t['verdicts'].get(v, 0)}</td>" for v in ("pass", "review", "fail")]
        if has_metrics:
            m = t.get("metrics_mean", {})
            cells += [f"<td>{_fmt(m.get('dice_mean'))}</td>", f"<td>{_fmt(m.get('nsd_mean'))}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th class="{"l" if h == "team" else ""}">{h}</th>' for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _correlation_table(summary: dict[str, Any]) -> str:
    corr = summary.get("correlations") or {}
    rows = []
    for key, value in corr.items():
        stars, metric = key.split("~")
        if stars != "mean_stars":
            continue
        p, s = value["pearson"], value["spearman"]
        rows.append(
            f'<tr><td class="l">{html.escape(metric)}</td><td>{p["n"]}</td>'
            f"<td>{_fmt(p['r'])} [{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}]</td>"
            f"<td>{_fmt(s['r'])} [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]</td></tr>"
        )
    if not rows:
        return ""
    return (
        '<table><tr><th class="l">metric</th><th>n</th><th>Pearson r [95% CI]</th><th>Spearman &rho; [95% CI]</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _badge(row: Any) -> str:
    if row["error"]:
        return '<span class="badge error">error</span>'
    verdict = row["verdict"] or "none"
    return f'<span class="badge {html.escape(verdict)}">{html.escape(verdict if row["verdict"] else "no verdict")}</span>'


def _rows_table(df: pd.DataFrame) -> str:
    head = '<tr><th>#</th><th class="l">case</th><th class="l">team</th><th>mean</th><th>axial</th><th>coronal</th>'
    head += '<th>sagittal</th><th class="l">verdict</th><th class="l">error</th></tr>'
    rows = []
    for rank, (_, r) in enumerate(df.iterrows(), start=1):
        rows.append(
            f'<tr><td>{rank}</td><td class="l">{html.escape(r["case"])}</td><td class="l">{html.escape(r["team"])}</td>'
            + "".join(f"<td>{_fmt(r[c])}</td>" for c in ("mean_stars", *VIEWS))
            + f'<td class="l">{_badge(r)}</td><td class="l err">{html.escape(r["error"])}</td></tr>'
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _card(r: Any, rank: int, png_dir: Path) -> str:
    stars = " &middot; ".join(f"{v} {_fmt(r[v], 2)}" for v in VIEWS)
    parts = [
        f'<div class="card" id="r{rank}"><b>#{rank} {html.escape(r["case"])} / {html.escape(r["team"])}</b> '
        f"&nbsp;{_badge(r)} &nbsp;mean stars <b>{_fmt(r['mean_stars'], 2)}</b> ({stars})"
    ]
    if r["gate_score"] == r["gate_score"] and r["verdict"]:
        parts.append(f" &nbsp;gate score {_fmt(r['gate_score'], 2)}")
    if r["gate_reasons"]:
        items = "".join(f"<li>{html.escape(x)}</li>" for x in r["gate_reasons"].split("; "))
        parts.append(f'<ul class="muted">{items}</ul>')
    if r["error"]:
        parts.append(f'<div class="err">{html.escape(r["error"])}</div>')
    if r["warnings"]:
        parts.append(f'<div class="muted">warnings: {html.escape(r["warnings"])}</div>')
    png = png_dir / r["png"] if r["png"] else None
    if png is not None and png.is_file():
        parts.append(_img(png.read_bytes(), f"{r['case']} {r['team']} views"))
    parts.append(_evidence(r, png_dir))
    parts.append("</div>")
    return "".join(parts)


def _evidence(r: Any, png_dir: Path) -> str:
    """Per-region verdicts, consensus Dice and the evidence panels of one row ("" when it has none)."""
    facts = []
    for region in ("wt", "tc", "et"):
        bits = []
        verdict = r.get(f"verdict_{region}", "")
        if isinstance(verdict, str) and verdict:
            bits.append(html.escape(verdict))
        cons = r.get(f"consensus_dice_{region}")
        if cons is not None and cons == cons:
            bits.append(f"consensus Dice {_fmt(cons, 2)}")
        where = r.get(f"evidence_{region}", "")
        if isinstance(where, str) and where:
            bits.append(f"strongest evidence at {html.escape(where)}")
        if bits:
            facts.append(f"<li>{region.upper()}: {', '.join(bits)}</li>")
    out = f'<ul class="muted">{"".join(facts)}</ul>' if facts else ""
    name = r.get("evidence_png", "")
    png = png_dir / name if isinstance(name, str) and name else None
    if png is not None and png.is_file():
        out += _img(png.read_bytes(), f"{r['case']} {r['team']} evidence slices")
    return out


def _plots(df: pd.DataFrame, png_dir: Path) -> list[str]:

    out = []
    specs: list[tuple[str, str, Any]] = [
        ("plot_team_stars.png", "Mean stars per team", lambda: figures.team_boxplot_png(df))
    ]
    if "dice_mean" in df.columns:
        specs += [
            (
                "plot_stars_vs_dice.png",
                "Mean stars vs Dice (mean of WT/TC/ET)",
                lambda: figures.scatter_png(df, "dice_mean", "Dice (mean of WT/TC/ET)"),
            ),
            (
                "plot_bland_altman_dice.png",
                "Bland-Altman-style agreement of stars (mapped 1-6 to 0-1) and Dice",
                lambda: figures.bland_altman_png(df, "dice_mean", "Dice"),
            ),
        ]
    if "nsd_mean" in df.columns:
        specs.append(
            (
                "plot_stars_vs_nsd.png",
                "Mean stars vs normalised surface Dice (mean of WT/TC/ET)",
                lambda: figures.scatter_png(df, "nsd_mean", "NSD (mean of WT/TC/ET)"),
            )
        )
    for name, caption, make in specs:
        data = make()
        if data:
            atomic_write_bytes(png_dir / name, data)
            out.append(
                f"<figure>{_img(data, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    return out


def render_report(df: pd.DataFrame, summary: dict[str, Any], out_dir: Path, max_images: int = 100) -> str:
    """The HTML text of the report; plot PNGs are written to ``out_dir/png``."""
    png_dir = out_dir / "png"
    ordered = worst_first(df)
    plots = _plots(df, png_dir)
    facts = (
        f"model <b>{html.escape(str(summary.get('model_id', '')))}</b> "
        f"(onnx sha256 {html.escape(str(summary.get('model_sha256', ''))[:12])}&hellip;, {html.escape(str(summary.get('precision', '')))}) "
        f"&middot; {summary.get('n_cases', 0)} cases &times; {summary.get('n_teams', 0)} teams = "
        f"{summary.get('n_segmentations', 0)} segmentations &middot; {summary.get('n_scored', 0)} scored, "
        f"{summary.get('n_failed', 0)} failed &middot; gate {'on' if summary.get('gate') else 'off'}"
    )
    legend = (
        '<p class="legend">overlay:<span style="background:#ff0000"></span>necrosis (1)'
        '<span style="background:#ffe600"></span>enhancing tumour (3/4)<span style="background:#00c800"></span>edema (2)'
        " &middot; rows: axial, coronal, sagittal through the tumour core's centre of mass; evidence panels: per "
        "region the slices where segmentation and images disagree most (WT on FLAIR, TC/ET on T1c)</p>"
    )
    body = [
        "<h1>DQE batch report</h1>",
        f"<p>{facts}</p>",
        "<h2>Teams</h2>",
        _team_table(summary),
    ]
    corr = _correlation_table(summary)
    if corr:
        body += ["<h2>Stars vs reference metrics</h2>", corr]
    if plots:
        body += ['<div class="plots">', *plots, "</div>"]
    body += ["<h2>All segmentations, worst first</h2>", _rows_table(ordered)]
    shown = ordered.head(max_images)
    body += [f"<h2>Views of the {len(shown)} worst</h2>", legend]
    body += [_card(r, rank, png_dir) for rank, (_, r) in enumerate(shown.iterrows(), start=1)]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>DQE batch report</title>'
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(
    df: pd.DataFrame, summary: dict[str, Any], out_dir: str | Path, max_images: int = 100
) -> Path:
    """Render and write ``out_dir/report.html`` atomically."""
    out = Path(out_dir)
    text = render_report(df, summary, out, max_images=max_images)
    return atomic_write_bytes(out / "report.html", text.encode())
