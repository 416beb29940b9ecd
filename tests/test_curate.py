"""``dqe curate`` over BraTS and nnU-Net layouts: decisions, splits, channel/label mapping, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dqe.models.phantom import make_phantom, write_case
from dqe.training.curate import CurateOptions, _label_remap, curate, decide, folds
from tests.conftest import SHARED_DATA, real_data_available

SHAPE = (96, 96, 72)


def _brats(root: Path, n: int, empty: tuple[int, ...] = ()) -> Path:
    for i in range(n):
        case_id = f"CASE-{i:03d}"
        phantom = make_phantom(seed=i, shape=SHAPE)
        if i in empty:
            phantom.segmentation[...] = 0
        write_case(phantom, root / case_id, case_id=case_id)
    return root


def _nnunet(root: Path, n: int) -> Path:
    """The same phantoms as :func:`_brats`, as an nnU-Net raw dataset with shuffled channels and MSD labels."""
    order = {0: "flair", 1: "t1", 2: "t1c", 3: "t2"}
    names = {"0": "FLAIR", "1": "T1w", "2": "T1Gd", "3": "T2w"}
    msd = {0: 0, 2: 1, 1: 2, 3: 3}  # BraTS label -> MSD value (edema 1, non-enhancing 2, enhancing 3)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        p = make_phantom(seed=i, shape=SHAPE)
        arrays = p.arrays()
        for k, channel in order.items():
            nib.save(
                nib.Nifti1Image(arrays[channel], p.affine),
                str(root / "imagesTr" / f"BRATS_{i:03d}_{k:04d}.nii.gz"),
            )
        seg = np.zeros_like(p.segmentation)
        for brats, value in msd.items():
            seg[p.segmentation == brats] = value
        nib.save(nib.Nifti1Image(seg, p.affine), str(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz"))
    labels = {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    meta = {"channel_names": names, "labels": labels, "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_decisions_and_reasons():
    opts = CurateOptions(drop_below=2.0, review_below=3.5)
    assert decide({"mean_stars": 5.0, "verdict": "pass"}, opts) == ("keep", [])
    assert decide({"mean_stars": 3.0, "verdict": "pass"}, opts)[0] == "review"
    assert decide({"mean_stars": 1.5, "verdict": "pass"}, opts)[0] == "drop"
    decision, reasons = decide({"mean_stars": 5.0, "verdict": "fail", "gate_reasons": ["x: y"]}, opts)
    assert decision == "drop" and "x: y" in reasons[0]
    assert (
        decide({"error": "segmentation has no tumour voxel", "error_kind": "EmptySegmentation"}, opts)[0]
        == "drop"
    )


def test_label_remap_forms():
    assert _label_remap({"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumor": 3}) == (
        (1, 2),
        (2, 1),
        (3, 3),
    )
    assert _label_remap({"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing"}) == (
        (1, 1),
        (2, 2),
        (4, 3),
    )
    regions = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert _label_remap(regions) == ((1, 2), (2, 1), (3, 3))


def test_folds_cover_every_kept_case_once():
    splits = folds([f"c{i}" for i in range(7)], 3, seed=1)
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == sorted(f"c{i}" for i in range(7)) and len(splits) == 3
    assert all(not set(s["val"]) & set(s["train"]) for s in splits)


@pytest.mark.slow
def test_brats_and_nnunet_layouts_give_the_same_stars(tmp_path):
    brats = curate(_brats(tmp_path / "brats", 3, empty=(2,)), tmp_path / "out_brats")
    nnunet = curate(_nnunet(tmp_path / "nnunet", 2), tmp_path / "out_nnunet")
    assert brats["layout"] == "brats" and nnunet["layout"] == "nnunet"
    rows_b = {r["case"]: r for r in _csv(tmp_path / "out_brats")}
    rows_n = {r["case"]: r for r in _csv(tmp_path / "out_nnunet")}
    assert rows_b["CASE-002"]["decision"] == "drop" and "not scorable" in rows_b["CASE-002"]["reasons"]
    for i in range(2):  # channels mapped by name and labels by meaning: the very same stars
        assert float(rows_n[f"BRATS_{i:03d}"]["stars"]) == pytest.approx(
            float(rows_b[f"CASE-{i:03d}"]["stars"]), abs=1e-5
        )
    splits = json.loads((tmp_path / "out_brats" / "splits_final.json").read_text())
    datalist = json.loads((tmp_path / "out_brats" / "datalist.json").read_text())
    kept = {r for r, row in rows_b.items() if row["decision"] == "keep"}
    assert {c for s in splits for c in s["val"]} == kept == {e["case"] for e in datalist["training"]}
    assert all(len(e["image"]) == 4 for e in datalist["training"])
    assert "CASE-002" in (tmp_path / "out_brats" / "summary.html").read_text()


def _csv(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / "curation.csv").open() as fh:
        return list(csv.DictReader(fh))


def _journal_keys(out: Path) -> list[tuple[str, str]]:
    path = out / "batch" / "journal.jsonl"
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keys = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:  # a torn last line: the restart cuts it off
            continue
        keys.append((rec["case"], rec["team"]))
    return keys


@pytest.mark.slow
def test_killed_run_restarts_without_losing_or_repeating(tmp_path):
    n = 8
    data = _brats(tmp_path / "data", n)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dqe.service.cli", "curate", str(data), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_journal_keys(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _journal_keys(out)
    assert 0 < len(before) < n, f"the first run was not stopped midway ({len(before)} of {n} done)"
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout)
    after = _journal_keys(out)
    assert summary["skipped_already_done"] == len(set(before))
    assert summary["scored_now"] == n - len(set(before))
    assert len(after) == len(set(after)) == n  # nothing repeated, nothing lost
    assert after[: len(before)] == before
    assert summary["cases"] == n


@pytest.mark.real_data
@pytest.mark.slow
def test_curate_shared_ground_truth(tmp_path):
    if not real_data_available():
        pytest.skip("no shared data")
    summary = curate(SHARED_DATA, tmp_path / "out")  # the whole tree: the 16 ground-truth exams are its cases
    assert summary["cases"] == 16 and summary["keep"] + summary["review"] + summary["drop"] == 16
    # a folder with three candidate label maps is not a training case, and the summary says why
    reasons = {Path(s["folder"]).name: s["reason"] for s in summary["skipped_folders"]}
    assert "3 segmentation files" in reasons["data"]
    rows = _csv(tmp_path / "out")
    assert all(float(r["stars"]) > 1.0 for r in rows)
