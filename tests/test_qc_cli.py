"""``dqe gate`` exit codes and JSON, and ``dqe gate-eval`` on a small synthetic list."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dqe.models.phantom import make_phantom, write_case
from dqe.models.qc.brain import brain_mask_full
from dqe.models.qc.failures import generate_failure
from dqe.service.cli import main


def _save_seg(labels: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def gate_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A lateral phantom exam plus a good, a gross-failure and an empty segmentation on disk."""
    root = tmp_path_factory.mktemp("gate")
    ph = make_phantom(seed=4)
    files = write_case(ph, root / "case", case_id="GATE-00004-000")
    brain = brain_mask_full([ph.t1c, ph.t1, ph.t2, ph.flair])
    segs = {
        "good": files["segmentation"],
        "all_voxels": _save_seg(
            generate_failure(ph.segmentation, "all_voxels", 0, brain), ph.affine, root / "all.nii.gz"
        ),
        "shift": _save_seg(
            generate_failure(ph.segmentation, "shift", 1, brain), ph.affine, root / "shift.nii.gz"
        ),
        "empty": _save_seg(np.zeros_like(ph.segmentation), ph.affine, root / "empty.nii.gz"),
    }
    return {"root": root, "folder": root / "case", "files": files, "segs": segs}


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out)


def _image_args(files: dict) -> list[str]:
    return [f"--{k}={files[k]}" for k in ("t1c", "t1", "t2", "flair")]


def test_gate_pass_exit_0(gate_case, capsys):
    code, out = _run(capsys, ["gate", str(gate_case["folder"]), "--threads", "1"])
    assert code == 0, out["gate"]["reasons"]
    assert out["gate"]["verdict"] == "pass"
    assert 1.0 <= out["mean_stars"] <= 6.5
    assert out["gate"]["star_threshold"] == 3.0
    assert out["timings_ms"]["gate"] > 0


def test_gate_fail_exit_1(gate_case, capsys):
    argv = [
        "gate",
        *_image_args(gate_case["files"]),
        f"--seg={gate_case['segs']['all_voxels']}",
        "--threads",
        "1",
    ]
    code, out = _run(capsys, argv)
    assert code == 1
    assert out["gate"]["verdict"] == "fail"
    assert any("tumour_outside_brain" in r for r in out["gate"]["reasons"])


def test_gate_review_exit_3(gate_case, capsys):
    code, out = _run(capsys, ["gate", str(gate_case["folder"]), "--star-threshold", "6.5", "--threads", "1"])
    assert code == 3
    assert out["gate"]["verdict"] == "review"
    assert out["gate"]["reasons"] and out["gate"]["reasons"][0].startswith("review: stars")


def test_gate_empty_segmentation_fails_exit_1(gate_case, capsys):
    argv = ["gate", str(gate_case["folder"]), f"--seg={gate_case['segs']['empty']}", "--threads", "1"]
    code, out = _run(capsys, argv)
    assert code == 1
    assert out["gate"]["verdict"] == "fail" and out["mean_stars"] is None


def test_gate_invalid_input_exit_2(gate_case, capsys):
    code, out = _run(capsys, ["gate", str(gate_case["root"] / "no-such-case")])
    assert code == 2 and out["error"]["code"] == "NOT_FOUND"
    code, out = _run(capsys, ["gate"])
    assert code == 2 and out["error"]["code"] == "INVALID_ARGUMENT"


def test_gate_subprocess_exit_code(gate_case):
    """The installed entry point gives the same exit code to a shell pipeline."""
    import os
    import subprocess
    import sys

    argv = [
        sys.executable,
        "-m",
        "dqe.service.cli",
        "gate",
        *_image_args(gate_case["files"]),
        f"--seg={gate_case['segs']['all_voxels']}",
        "--threads",
        "1",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["gate"]["verdict"] == "fail"


def _write_list(path: Path, gate_case: dict, rows: list[tuple[str, str]]) -> Path:
    files = gate_case["files"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t1c", "t1", "t2", "flair", "segmentation", "label", "mode"])
        for seg, label in rows:
            w.writerow(
                [files["t1c"], files["t1"], files["t2"], files["flair"], gate_case["segs"][seg], label, seg]
            )
    return path


def test_gate_eval_small_list(gate_case, capsys, tmp_path):
    rows = [("good", "good"), ("all_voxels", "bad"), ("shift", "bad"), ("empty", "bad")]
    lst = _write_list(tmp_path / "list.csv", gate_case, rows)
    code, summary = _run(capsys, ["gate-eval", str(lst), "--out", str(tmp_path / "report"), "--threads", "1"])
    assert code == 0
    assert summary["n_good"] == 1 and summary["n_bad"] == 3 and summary["n_errors"] == 0
    assert summary["confusion"]["good"]["pass"] == 1
    assert summary["confusion"]["bad"]["pass"] == 0 and summary["false_fails_good"] == 0
    assert summary["auc_gate"] == 1.0
    assert 0.0 <= summary["auc_stars"] <= 1.0
    assert summary["per_mode"]["empty"]["fail"] == 1
    for key in ("summary", "results", "roc"):
        assert Path(summary["files"][key]).is_file()
    with open(summary["files"]["results"]) as fh:
        results = list(csv.DictReader(fh))
    assert [r["verdict"] for r in results][0] == "pass"
    assert json.loads(Path(summary["files"]["summary"]).read_text())["auc_gate"] == 1.0


def test_gate_eval_rejects_bad_lists(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("t1c,t1,segmentation,label\na,b,c,good\n")
    code, out = _run(capsys, ["gate-eval", str(bad), "--out", str(tmp_path / "r")])
    assert code == 2 and "lacks columns" in out["error"]["message"]
    lab = tmp_path / "lab.csv"
    lab.write_text("t1c,t1,t2,flair,segmentation,label\na,b,c,d,e,maybe\n")
    code, out = _run(capsys, ["gate-eval", str(lab), "--out", str(tmp_path / "r")])
    assert code == 2 and "good or bad" in out["error"]["message"]
    code, out = _run(capsys, ["gate-eval", str(tmp_path / "missing.csv")])
    assert code == 2 and out["error"]["code"] == "NOT_FOUND"


def test_auc_and_roc_helpers():
    from dqe.service.gate_eval import auc, roc_points

    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([2, 2], [2, 2]) == 0.5
    assert auc([3, 1], [2]) == 0.5
    fpr, tpr = roc_points([3, 4], [1, 2])
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
