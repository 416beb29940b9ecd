"""Batch run with ground truth: reference metrics, correlations, PNG mosaics and an HTML report that renders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.test_batch_data import BROKEN, TEAMS, build_dataset

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("monai")


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dqe.service.batch import BatchOptions, run_batch
    from dqe.service.engine import EngineConfig

    data = build_dataset(tmp_path_factory.getbasetemp() / "batch-dataset")
    out = tmp_path_factory.mktemp("batch-report") / "out"
    run_batch(
        data["cases"],
        [data[t] for t in TEAMS],
        out,
        labels_dir=data["gt"],
        engine_config=EngineConfig(intra_op_threads=2),
        options=BatchOptions(progress=False, gate=True, images=True, workers=2),
    )
    return out


def test_metrics_against_ground_truth(labelled_run: Path) -> None:
    import pandas as pd

    df = pd.read_parquet(labelled_run / "scores.parquet")
    for metric in ("dice", "hd95", "nsd"):
        for region in ("WT", "TC", "ET"):
            assert f"{metric}_{region}" in df.columns
    alpha = df[df["team"] == "alpha"]  # alpha submitted the ground truth itself
    assert (alpha[["dice_WT", "dice_TC", "dice_ET", "nsd_WT", "nsd_mean"]] == 1.0).all().all()
    assert (alpha[["hd95_WT", "hd95_TC", "hd95_ET"]] == 0.0).all().all()
    beta = df[df["team"] == "beta"]  # shifted by 4 voxels
    assert ((beta["dice_WT"] > 0.3) & (beta["dice_WT"] < 1.0)).all()
    assert ((beta["hd95_WT"] > 0) & (beta["hd95_WT"] <= 4.0 + 1e-6)).all()
    gamma = df[(df["team"] == "gamma") & (df["error"] == "")]  # enhancing relabelled as necrosis
    assert (
        (gamma["dice_WT"] == 1.0).all()
        and (gamma["dice_TC"] == 1.0).all()
        and (gamma["dice_ET"] == 0.0).all()
    )
    assert gamma["hd95_ET"].isna().all()  # one side empty: undefined, not inf
    broken = df[(df["case"] == BROKEN[0]) & (df["team"] == BROKEN[1])]
    assert broken["dice_WT"].isna().all()


def test_summary_has_correlations_with_intervals(labelled_run: Path) -> None:
    summary = json.loads((labelled_run / "summary.json").read_text())
    corr = summary["correlations"]["mean_stars~dice_mean"]
    for kind in ("pearson", "spearman"):
        c = corr[kind]
        assert c["n"] == 8
        assert -1 <= c["ci_low"] <= c["r"] <= c["ci_high"] <= 1
    assert "axial~dice_WT" in summary["correlations"]
    assert summary["teams"]["alpha"]["metrics_mean"]["dice_mean"] == 1.0


def test_report_is_self_contained_and_sorted_worst_first(labelled_run: Path) -> None:
    import pandas as pd

    text = (labelled_run / "report.html").read_text()
    assert not re.search(r'(?:src|href)="(?!data:)', text), "every resource must be embedded"
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) >= 8 + 3  # 8 mosaics + team, scatter, Bland-Altman plots
    assert all(__import__("base64").b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    for name in ("plot_stars_vs_dice.png", "plot_bland_altman_dice.png", "plot_team_stars.png"):
        assert (labelled_run / "png" / name).is_file()
    df = pd.read_csv(labelled_run / "scores.csv", keep_default_na=False)
    assert all((labelled_run / "png" / p).is_file() for p in df.loc[df["error"] == "", "png"])
    # The table lists the failure first, then ascending stars.
    table = text.split("All segmentations, worst first")[1]
    order = re.findall(r"<tr><td>(\d+)</td><td class=\"l\">([^<]+)</td><td class=\"l\">([^<]+)</td>", table)
    pairs = [(c, t) for _, c, t in order][:9]
    assert pairs[0] == BROKEN
    scored = df[df["error"] == ""].astype({"mean_stars": float}).sort_values("mean_stars")
    assert pairs[1:] == list(zip(scored["case"], scored["team"], strict=True))
    assert "Bland-Altman" in text and "necrosis" in text


def test_real_gate_verdicts_when_the_gate_is_installed(labelled_run: Path) -> None:
    import importlib.util

    import pandas as pd

    df = pd.read_csv(labelled_run / "scores.csv", keep_default_na=False)
    summary = json.loads((labelled_run / "summary.json").read_text())
    if importlib.util.find_spec("dqe.models.qc.gate") is None:
        assert summary["gate"] is False and set(df["verdict"]) == {""}
        pytest.skip("dqe.models.qc.gate is not installed: verdicts are left empty (checked)")
    scored = df[df["error"] == ""]
    assert summary["gate"] is True
    assert set(scored["verdict"]) <= {"pass", "review", "fail"} and (scored["verdict"] != "").all()
    assert scored["gate_score"].astype(float).notna().all()
    flagged = scored[scored["verdict"] != "pass"]
    assert (flagged["gate_reasons"] != "").all(), "a review/fail verdict must say why"
    text = (labelled_run / "report.html").read_text()
    for reason in flagged["gate_reasons"]:
        assert reason.split("; ")[0][:40] in text.replace("&#x27;", "'").replace("&quot;", '"').replace(
            "&amp;", "&"
        )


def test_mosaic_overlay_uses_the_paper_colours() -> None:
    from dqe.service.batch.mosaic import overlay

    gray = np.full((1, 4), 100, np.uint8)
    rgb = overlay(gray, np.array([[0, 1, 2, 3]], np.uint8)).astype(int)
    assert np.abs(rgb[0, 0] - 100).max() <= 2 and len(set(rgb[0, 0].tolist())) == 1  # grey (64 levels)
    r, g, b = rgb[0, 1]
    assert r > 150 and g < 60 and b < 60  # necrosis red
    r, g, b = rgb[0, 2]
    assert g > 130 and r < 60 and b < 60  # edema green
    r, g, b = rgb[0, 3]
    assert r > 150 and g > 150 and b < 60  # enhancing yellow


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (CI installs it: apt-get install chromium)",
)
def test_report_renders_in_headless_chromium(labelled_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    cmd = [
        str(shutil.which("chromium")),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        (labelled_run / "report.html").resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), proc.stderr.decode(errors="replace")[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert float(pixels.std()) > 20.0, "screenshot is blank"
    colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 200, f"only {len(colours)} distinct colours: the page did not render its plots"
