"""Label conventions and BraTS tracks: mapping, refusal, out-of-distribution warnings in single-case scoring
and in ``dqe batch``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.errors import InvalidInput
from dqe.models.labels import (
    CHOICES,
    CONVENTIONS,
    apply_convention,
    detect_track,
    get_convention,
    track_warnings,
)
from dqe.models.nifti import from_array
from dqe.models.phantom import make_phantom, write_case

MSD_FROM_BRATS = {0: 0, 1: 2, 2: 1, 3: 3}  # BraTS 2023 label -> MSD Task01 label


def _seg_volume(values: np.ndarray):
    return from_array(values, "segmentation", None)


def _save(labels: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    nib.save(img, str(path))
    return path


def _to(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(labels)
    for src, dst in table.items():
        out[labels == src] = dst
    return out


# ----------------------------------------------------------------------------------------- unit level
def test_conventions_are_data_with_a_flag_each():
    assert CHOICES[0] == "auto" and set(CHOICES[1:]) == set(CONVENTIONS)
    for conv in CONVENTIONS.values():
        assert set(conv.mapping.values()) <= {0, 1, 2, 3}, conv.name
        assert 0 in conv.mapping and conv.mapping[0] == 0
    assert not CONVENTIONS["brats2023"].caveat and not CONVENTIONS["brats2021"].caveat
    assert CONVENTIONS["msd"].caveat and CONVENTIONS["met-core-edema"].caveat
    assert get_convention("auto") is None
    with pytest.raises(InvalidInput, match="not one of"):
        get_convention("brats1999")


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        ("brats2023", [0, 1, 2, 3], [0, 1, 2, 3]),
        ("brats2021", [0, 1, 2, 4], [0, 1, 2, 3]),
        ("brats2024-post", [0, 1, 2, 3, 4], [0, 1, 2, 3, 0]),
        ("msd", [0, 1, 2, 3], [0, 2, 1, 3]),
        ("met-core-edema", [0, 1, 2], [0, 3, 2]),
        ("whole-tumour", [0, 1], [0, 2]),
    ],
)
def test_mapping(name, raw, expected):
    arr = np.array(raw, dtype=np.int16).reshape(1, 1, -1)
    vol = apply_convention(_seg_volume(arr), name)
    np.testing.assert_array_equal(vol.data.ravel(), expected)
    assert vol.data.dtype == np.uint8
    assert (CONVENTIONS[name].caveat in vol.notes) == bool(CONVENTIONS[name].caveat)


def test_auto_is_the_identity():
    vol = _seg_volume(np.array([0, 1, 2, 4], np.uint8).reshape(1, 1, 4))
    assert apply_convention(vol, "auto") is vol and apply_convention(vol, None) is vol


@pytest.mark.parametrize(
    "name, raw, found",
    [
        ("brats2021", [0, 1, 3], "{3}"),
        ("met-core-edema", [0, 1, 2, 3], "{3}"),
        ("msd", [0, 7, 255], "{7, 255}"),
    ],
)
def test_values_outside_the_convention_are_refused_naming_the_flag(name, raw, found):
    vol = _seg_volume(np.array(raw, np.int16).reshape(1, 1, -1))
    with pytest.raises(InvalidInput, match="--label-convention") as info:
        apply_convention(vol, name)
    assert found in info.value.message and name in info.value.message


def test_non_integer_labels_are_refused():
    vol = _seg_volume(np.array([0, 1.5], np.float32).reshape(1, 1, 2))
    with pytest.raises(InvalidInput, match="non-integer"):
        apply_convention(vol, "msd")


@pytest.mark.parametrize(
    "name, code, ood",
    [
        ("BraTS-MET-00001-000", "MET", True),
        ("/data/BraTS-PED-00042-000/BraTS-PED-00042-000-seg.nii.gz", "PED", True),
        ("BraTS-MEN-RT-0001-1", "MEN-RT", True),
        ("brats-men-00007-000", "MEN", True),
        ("BraTS-SSA-00002-000", "SSA", True),
        ("BraTS-GLI-00001-000", "GLI", False),
        ("BraTS2021_00495", "GLI", False),
        ("BraTS20_Training_001", "GLI", False),
    ],
)
def test_track_detection(name, code, ood):
    track = detect_track([name])
    assert track is not None and track.code == code and track.in_distribution is not ood
    assert bool(track_warnings([name])) is ood


def test_no_track_for_other_names():
    assert detect_track(["TCGA-DU-7294", "/work/shared/data/brainlesion-BraTS/x.nii.gz", ""]) is None


# ----------------------------------------------------------------------------------------- cases and CLI
@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=2)


def _arrays(ph):
    return [ph.t1c, ph.t1, ph.t2, ph.flair]


def test_case_named_as_another_track_carries_the_warning(phantom):
    met = Case.from_arrays(*_arrays(phantom), phantom.segmentation, case_id="BraTS-MET-00003-000")
    gli = Case.from_arrays(*_arrays(phantom), phantom.segmentation, case_id="BraTS-GLI-00003-000")
    assert any("BraTS-MET" in w and "training distribution" in w for w in met.warnings)
    assert not any("training distribution" in w for w in gli.warnings)


def test_out_of_range_labels_name_the_flag(phantom):
    seg = phantom.segmentation.copy()
    seg[seg == 2] = 5
    with pytest.raises(InvalidInput, match=r"labels \{5\}.*--label-convention"):
        Case.from_arrays(*_arrays(phantom), seg)


def test_mixed_3_and_4_hints_at_the_2024_convention(phantom):
    seg = phantom.segmentation.copy()
    seg[seg == 1] = 4
    case = Case.from_arrays(*_arrays(phantom), seg)
    assert any("brats2024-post" in w for w in case.warnings)


@pytest.fixture(scope="module")
def msd_case(phantom, tmp_path_factory):
    """The phantom written twice: BraTS labels and the same voxels in the MSD order."""
    root = tmp_path_factory.mktemp("msd")
    files = write_case(phantom, root / "case", case_id="PHANTOM-00002-000")
    msd = _save(_to(phantom.segmentation, MSD_FROM_BRATS), phantom.affine, root / "msd-seg.nii.gz")
    return files, msd


def _cli(argv: list[str]) -> tuple[int, dict]:
    from dqe.service.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, json.loads(buf.getvalue())


def test_score_maps_an_msd_map_to_the_same_stars(msd_case):
    files, msd = msd_case
    images = [f"--{k}={files[k]}" for k in ("t1c", "t1", "t2", "flair")]
    code, brats = _cli(["score", *images, f"--seg={files['segmentation']}", "--threads", "1"])
    assert code == 0, brats
    code, mapped = _cli(["score", *images, f"--seg={msd}", "--label-convention", "msd", "--threads", "1"])
    assert code == 0, mapped
    assert mapped["mean_stars"] == pytest.approx(brats["mean_stars"], abs=0.0)  # same network input
    assert any("Medical Segmentation Decathlon" in w for w in mapped["warnings"])
    code, unmapped = _cli(["score", *images, f"--seg={msd}", "--threads", "1"])
    assert code == 0 and unmapped["mean_stars"] != brats["mean_stars"]  # why the flag matters


def test_gate_refuses_a_map_outside_the_convention(msd_case):
    files, _ = msd_case
    code, out = _cli(["gate", str(files["segmentation"].parent), "--label-convention", "met-core-edema"])
    assert code == 2 and "--label-convention" in out["error"]["message"]


def test_server_scoring_refuses_the_flag(msd_case):
    files, msd = msd_case
    images = [f"--{k}={files[k]}" for k in ("t1c", "t1", "t2", "flair")]
    code, out = _cli(
        ["score", *images, f"--seg={msd}", "--label-convention", "msd", "--server", "127.0.0.1:1"]
    )
    assert code == 2 and out["error"]["field"] == "label_convention"


# ----------------------------------------------------------------------------------------- batch
@pytest.fixture(scope="module")
def track_dataset(phantom, tmp_path_factory):
    """Cases BraTS-GLI-00002-000 and BraTS-MET-00002-000 (same phantom), team A with BraTS labels and
    team B with the MSD order."""
    root = tmp_path_factory.mktemp("tracks")
    for case_id in ("BraTS-GLI-00002-000", "BraTS-MET-00002-000"):
        write_case(phantom, root / "cases" / case_id, case_id=case_id, include_segmentation=False)
        (root / "A").mkdir(exist_ok=True)
        (root / "B").mkdir(exist_ok=True)
        _save(phantom.segmentation, phantom.affine, root / "A" / f"{case_id}.nii.gz")
        _save(_to(phantom.segmentation, MSD_FROM_BRATS), phantom.affine, root / "B" / f"{case_id}.nii.gz")
    return root


def _batch(root: Path, out: Path, teams: list[str], *extra: str) -> list[dict]:
    code, printed = _cli(
        [
            "batch",
            str(root / "cases"),
            *(str(root / t) for t in teams),
            "--out",
            str(out),
            "--no-images",
            "--no-progress",
            "--no-gate",
            "--threads",
            "1",
            *extra,
        ]
    )
    assert code == 0, printed
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines() if line.strip()]


def _records(lines: list[dict]) -> dict[tuple[str, str], dict]:
    out = {}
    for line in lines:
        for rec in line.get("records", [line]):
            if "case" in rec and "team" in rec:
                out[(rec["case"], rec["team"])] = rec
    return out


def test_batch_other_track_is_scored_with_the_warning(track_dataset, tmp_path):
    pytest.importorskip("pandas")
    recs = _records(_batch(track_dataset, tmp_path / "out", ["A"]))
    gli, met = recs[("BraTS-GLI-00002-000", "A")], recs[("BraTS-MET-00002-000", "A")]
    assert gli["mean_stars"] is not None and met["mean_stars"] == pytest.approx(gli["mean_stars"], abs=0.0)
    assert any("BraTS-MET" in w and "training distribution" in w for w in met["warnings"])
    assert not any("training distribution" in w for w in gli["warnings"])


def test_batch_maps_a_non_brats_convention(track_dataset, tmp_path):
    pytest.importorskip("pandas")
    brats = _records(_batch(track_dataset, tmp_path / "a", ["A"]))
    mapped = _records(_batch(track_dataset, tmp_path / "b", ["B"], "--label-convention", "msd"))
    for case_id in ("BraTS-GLI-00002-000", "BraTS-MET-00002-000"):
        rec = mapped[(case_id, "B")]
        assert rec["mean_stars"] == pytest.approx(brats[(case_id, "A")]["mean_stars"], abs=0.0)
        assert any("Medical Segmentation Decathlon" in w for w in rec["warnings"])
