"""``dqe gate-eval`` with failure mechanisms, Dice bands and leave-one-exam-out thresholds, on phantoms;
the list builder on the real shared cases (``real_data``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dqe.models.phantom import make_phantom, write_case
from dqe.models.qc.brain import brain_mask_full
from dqe.models.qc.mechanisms import generate, region_dice
from dqe.service.cli import main

MECHS = ("missing_slab", "labels_msd_order", "fov_cropped")


def _save(labels: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def eval_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom exams, each with its good segmentation and three mechanism failures (with Dice)."""
    root = tmp_path_factory.mktemp("gate-eval")
    rows = []
    for seed in (4, 6):
        exam = f"EXAM-{seed}"
        ph = make_phantom(seed=seed, lesion="lobulated")
        files = write_case(ph, root / exam, case_id=exam)
        brain = brain_mask_full([ph.t1c, ph.t1, ph.t2, ph.flair])
        images = {k: str(files[k]) for k in ("t1c", "t1", "t2", "flair")}
        rows.append(
            {**images, "segmentation": str(files["segmentation"]), "label": "good", "case": f"{exam}/good"}
        )
        for m in MECHS:
            labels = generate(ph.segmentation, m, 1, brain)
            path = _save(labels, ph.affine, root / f"{exam}-{m}.nii.gz")
            rows.append(
                {
                    **images,
                    "segmentation": str(path),
                    "label": "bad",
                    "case": f"{exam}/{m}",
                    "mode": m,
                    "dice_wt": f"{region_dice(ph.segmentation, labels):.4f}",
                }
            )
    path = root / "list.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], "mode", "dice_wt"])
        w.writeheader()
        w.writerows(rows)
    return path


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_gate_eval_reports_mechanisms_bands_and_loeo(eval_list, capsys, tmp_path):
    out = tmp_path / "report"
    code, s = _run(capsys, ["gate-eval", str(eval_list), "--out", str(out), "--threads", "1", "--no-plot"])
    assert code == 0, s
    assert s["n_good"] == 2 and s["n_bad"] == 6 and s["n_errors"] == 0
    cal = s["calibration"]
    assert cal["mode"] == "loosen"  # auto: two exams with good rows
    assert set(cal["folds"]) == {"EXAM-4", "EXAM-6"}
    assert cal["frozen_thresholds"]["star_threshold"] == 3.0
    assert set(s["detection_by_mechanism"]) == set(MECHS)
    for entry in s["detection_by_mechanism"].values():
        assert entry["n"] == 2 and 0 <= entry["flagged"]["k"] <= 2
        assert entry["flagged"]["low"] <= entry["flagged"]["rate"] <= entry["flagged"]["high"]
    assert sum(b["n"] for b in s["detection_by_band"].values()) == 6
    fa = s["false_alarms"]["flagged"]
    assert fa["n"] == 2 and fa["high"] > 0.5  # two good cases say little: the interval must be wide
    rho = s["spearman_dice"]["gate_score~dice_wt (failures)"]
    assert rho["n"] == 6 and (math_isnan(rho["r"]) or -1.0 <= rho["r"] <= 1.0)
    with (out / "results.csv").open() as fh:
        got = list(csv.DictReader(fh))
    assert {r["exam"] for r in got} == {"EXAM-4", "EXAM-6"}
    slab = [r for r in got if r["mode"] == "labels_msd_order"]
    assert all(float(r["dice_wt"]) == 1.0 for r in slab)  # relabelling keeps the whole tumour
    written = json.loads((out / "summary.json").read_text())
    assert written["detection_table"] == s["detection_table"]


def math_isnan(v: float) -> bool:
    return v != v


def test_gate_eval_frozen_and_single_exam(eval_list, capsys, tmp_path):
    rows = list(csv.DictReader(eval_list.open()))
    one = tmp_path / "one.csv"
    with one.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["case"].startswith("EXAM-4"))
    code, s = _run(
        capsys, ["gate-eval", str(one), "--out", str(tmp_path / "r1"), "--threads", "1", "--no-plot"]
    )
    assert code == 0 and s["calibration"]["mode"] == "frozen"  # auto: one exam cannot be left out
    code, s = _run(
        capsys,
        ["gate-eval", str(one), "--out", str(tmp_path / "r2"), "--calibration", "loosen", "--no-plot"],
    )
    assert code == 2 and "at least two exams" in s["error"]["message"]


def test_gate_eval_refuses_a_bad_dice(tmp_path, capsys):
    lst = tmp_path / "l.csv"
    lst.write_text("t1c,t1,t2,flair,segmentation,label,dice_wt\na,b,c,d,e,bad,high\n")
    code, s = _run(capsys, ["gate-eval", str(lst), "--out", str(tmp_path / "r")])
    assert code == 2 and s["error"]["field"] == "dice_wt"


@pytest.mark.real_data
def test_list_builder_finds_four_exams_of_real_cases():
    from benchmarks.build_gate_eval_list import exam_of, real_segmentations

    segs = real_segmentations()
    assert len(segs) == 18
    assert {exam_of(name) for name, _ in segs} == {
        "BraTS-GLI-00001-000",
        "TCGA-DU-7294",
        "OtherEXampleFromTCIA",
        "brainlesion-BraTS",
    }
