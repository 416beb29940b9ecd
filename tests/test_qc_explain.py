"""Evidence a person can look at: the disagreement map, its slices, the NIfTI file, ``--evidence`` and
``--alpha`` on the commands, and per-region results carrying evidence and consensus."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.errors import InvalidInput
from dqe.models.phantom import make_phantom, write_case
from dqe.models.qc.context import Context
from dqe.models.qc.evidence import evidence_map, evidence_slices
from dqe.models.qc.types import Check, GateResult, RegionResult, Verdict


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=3, lesion="lobulated")


def _case(ph, seg: np.ndarray) -> Case:
    return Case.from_arrays(**{**ph.arrays(), "segmentation": seg}, affine=ph.affine)


def _total(case: Case, full: bool = False) -> dict[str, float]:
    em = evidence_map(Context(case, 2), full_resolution=full)
    assert em is not None
    return {r: float(m.sum()) * em.sample_ml for r, m in em.maps.items()}


def test_faults_light_up_their_region(phantom) -> None:
    good = _total(_case(phantom, phantom.segmentation))
    shifted = _total(_case(phantom, np.roll(phantom.segmentation, 4, axis=0)))
    swapped = phantom.segmentation.copy()
    swapped[phantom.segmentation == 1], swapped[phantom.segmentation == 3] = 3, 1
    swap = _total(_case(phantom, swapped))
    # a 4-voxel shift: every region's evidence grows by an order of magnitude over the true labels
    for r in ("wt", "tc", "et"):
        assert shifted[r] > 10 * max(good[r], 0.05), (r, good, shifted)
    # enhancing <-> necrosis swapped: the ET and TC maps see it, whole tumour unchanged (same WT)
    assert swap["et"] > 10 * max(good["et"], 0.05)
    assert swap["wt"] == pytest.approx(good["wt"], rel=1e-6)


def test_slices_point_at_the_fault_and_use_full_grid_indices(phantom) -> None:
    seg = np.roll(phantom.segmentation, 4, axis=2)  # shifted along the axial axis
    case = _case(phantom, seg)
    ctx = Context(case, 2)
    slices = evidence_slices(evidence_map(ctx))
    zs = np.flatnonzero((phantom.segmentation > 0).any(axis=(0, 1)))
    for region, found in slices.items():
        assert found, region
        assert [s.strength for s in found] == sorted((s.strength for s in found), reverse=True)
        assert {s.axis for s in found} <= {"axial", "coronal", "sagittal"}
        for s in found:
            size = case.shape[{"sagittal": 0, "coronal": 1, "axial": 2}[s.axis]]
            assert 0 <= s.index < size and s.index % ctx.step == 0
    axial = [s for s in slices["wt"] if s.axis == "axial"][0]
    assert zs[0] - 6 <= axial.index <= zs[-1] + 6  # at the lesion, not somewhere in the brain
    # the lattice's choice is a near-strongest slice of the full-resolution map, with a comparable strength
    full = evidence_map(ctx, full_resolution=True)
    assert full is not None
    profile = full.maps["wt"].sum(axis=(0, 1)) * full.sample_ml
    z0 = full.box[2].start
    assert profile[axial.index - z0] >= 0.5 * profile.max()
    assert axial.strength == pytest.approx(profile.max(), rel=0.5)


def test_no_statistics_no_evidence() -> None:
    assert evidence_slices(None) == {"wt": [], "tc": [], "et": []}


def test_nifti_map_has_the_segmentations_grid_and_affine(phantom, tmp_path: Path) -> None:
    import nibabel as nib

    from dqe.service.evidence_io import write_evidence_map

    case = _case(phantom, np.roll(phantom.segmentation, 3, axis=1))
    full = evidence_map(Context(case, 2), full_resolution=True)
    assert full is not None
    path = write_evidence_map(case, full, tmp_path / "ev", "case/../x y")
    assert path.parent == tmp_path / "ev" and path.name == "case_.._x_y_evidence.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and data.shape == case.shape
    np.testing.assert_allclose(img.affine, case.segmentation.affine, atol=1e-6)
    assert data.min() >= 0 and data.max() > 1.0
    np.testing.assert_array_equal(data, full.combined())
    # nothing outside the tumour's box grown by the band
    assert not data[:, :, :2].any() and not data[:2].any()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput):
        write_evidence_map(case, full, tmp_path / "file", "c")


# ------------------------------------------------------------------ regions, consensus, alpha
def test_with_regions_keeps_the_gates_regions_and_fills_missing_ones() -> None:
    from dqe.models.qc.explain import with_regions
    from dqe.models.qc.types import EvidenceSlice

    checks = [
        Check("a", 1, 0, False, "review", "m", region="tc", p_value=0.01),
        Check("b", 1, 0, True, "review", "m", region="tc", p_value=0.2),
    ]
    own = RegionResult("wt", Verdict.FAIL, 0.001)
    gate = GateResult(Verdict.FAIL, 0.1, [], checks, 3.0, regions=[own])
    out = with_regions(gate, {"wt": 0.5, "tc": 0.9, "et": 1.0}, {"et": [EvidenceSlice("axial", 4, 2.0)]})
    wt, tc, et = out.regions
    assert (wt.verdict, wt.p_value, wt.consensus_dice) == (Verdict.FAIL, 0.001, 0.5)
    assert tc.verdict == Verdict.REVIEW and tc.p_value == pytest.approx(0.02)  # Bonferroni 2 x 0.01
    assert tc.checks == checks
    assert et.verdict == Verdict.PASS and et.p_value == 1.0 and et.evidence_slices[0].index == 4


def test_gate_with_evidence_passes_consensus_through(phantom) -> None:
    from dqe.models.qc.explain import gate_with_evidence
    from dqe.models.result import ScoreResult

    case = _case(phantom, phantom.segmentation)
    views = {"axial": 4.5, "coronal": 4.5, "sagittal": 4.5}
    result = ScoreResult(4.5, views, None, [], "m", "sha")
    gate, full = gate_with_evidence(case, result, consensus={"wt": 0.8, "tc": 0.7, "et": 0.6})
    assert full is None
    assert [(r.region, r.consensus_dice) for r in gate.regions] == [("wt", 0.8), ("tc", 0.7), ("et", 0.6)]
    assert gate.to_dict()["regions"][0]["consensus_dice"] == 0.8
    gate2, full2 = gate_with_evidence(case, result, full_map=True)
    assert full2 is not None and all(r.consensus_dice is None for r in gate2.regions)


def test_alpha_validation() -> None:
    from dqe.models.qc.alpha import check_alpha, min_supported_alpha, with_alpha

    assert check_alpha(0.1) == 0.1
    for bad in (0, 1, -0.5, 2, float("nan"), "x"):
        with pytest.raises(InvalidInput, match="alpha"):
            check_alpha(bad)  # type: ignore[arg-type]
    calibrated = SimpleNamespace(calibration_size=19)
    assert min_supported_alpha(calibrated) == pytest.approx(0.05)
    with pytest.raises(InvalidInput, match=r"supports alpha >= 0\.05"):
        check_alpha(0.01, calibrated)
    assert check_alpha(0.05, calibrated) == 0.05
    assert min_supported_alpha(SimpleNamespace(min_alpha=0.1)) == 0.1
    assert with_alpha(None).alpha == with_alpha(0).alpha  # unset keeps the configuration's default
    assert with_alpha(0.2).alpha == 0.2


def test_the_shipped_calibration_sets_the_alpha_floor() -> None:
    """A plain GateConfig is judged against the calibration it selects: 1/(n+1) of the shipped set, and a
    larger floor once sites are left out of it."""
    from dqe.models.qc.alpha import check_alpha, min_supported_alpha
    from dqe.models.qc.config import GateConfig
    from dqe.models.qc.gate import calibration_for

    cal = calibration_for(GateConfig())
    assert cal is not None and cal.n >= 1
    floor = min_supported_alpha(GateConfig())
    assert floor == pytest.approx(1.0 / (cal.n + 1))
    with pytest.raises(InvalidInput, match="supports alpha"):
        check_alpha(floor * 0.9, GateConfig())
    assert check_alpha(floor, GateConfig()) == pytest.approx(floor)
    site = cal.summary()["sites"][0]
    fewer = GateConfig(calibration_exclude_sites=(site,))
    assert min_supported_alpha(fewer) > floor


# ------------------------------------------------------------------ the commands
@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory, phantom) -> Path:
    folder = tmp_path_factory.mktemp("ev") / "EV-00001-000"
    write_case(phantom, folder, case_id="EV-00001-000")
    return folder


def _cli(argv: list[str]) -> tuple[int, dict]:
    from dqe.service.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, json.loads(buf.getvalue())


def test_dqe_gate_evidence_and_alpha(case_dir: Path, tmp_path: Path) -> None:
    code, out = _cli(["gate", str(case_dir), "--threads", "2", "--alpha", "0.1", "--evidence", str(tmp_path)])
    assert code in (0, 3), out
    assert Path(out["evidence_map"]).is_file() and Path(out["evidence_map"]).parent == tmp_path
    regions = out["gate"]["regions"]
    assert [r["region"] for r in regions] == ["wt", "tc", "et"]
    assert all({"axis", "index", "strength"} <= set(s) for r in regions for s in r["evidence_slices"])


def test_dqe_score_gate_evidence(case_dir: Path, tmp_path: Path) -> None:
    code, out = _cli(["score", str(case_dir), "--threads", "2", "--gate", "--evidence", str(tmp_path)])
    assert code == 0 and Path(out["evidence_map"]).is_file()
    assert out["gate"]["regions"][0]["region"] == "wt"
    code, out = _cli(["score", str(case_dir), "--evidence", str(tmp_path)])
    assert code == 2 and out["error"]["field"] == "evidence"


@pytest.mark.parametrize("alpha", ["1.5", "0", "-0.1"])
def test_bad_alpha_is_a_typed_error(case_dir: Path, alpha: str) -> None:
    code, out = _cli(["gate", str(case_dir), f"--alpha={alpha}"])
    assert code == 2 and out["error"]["field"] == "alpha" and out["error"]["kind"] == "InvalidInput"


def test_bad_alpha_environment_is_a_typed_error(case_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQE_ALPHA", "abc")
    code, out = _cli(["gate", str(case_dir)])
    assert code == 2 and "DQE_ALPHA" in out["error"]["message"]


# ------------------------------------------------------------------ real cases (skipped without ../shared/data)
@pytest.mark.real_data
def test_real_consensus_fusions_agree_with_the_algorithms_most() -> None:
    """TCGA-FG-6692: five BraTS Toolkit algorithms and their majority-vote fusion; the fusion agrees with the
    consensus of the algorithms at least as well as the median single algorithm does."""
    import nibabel as nib

    from dqe.models.qc.consensus import consensus_dice
    from tests.conftest import TOOLKIT

    root = TOOLKIT / "OtherEXampleFromTCIA" / "OtherEXampleFromTCIA_brainles"
    algos = sorted((root / "segmentation").glob("*.nii.gz"))
    fusion = root / "fusion" / "mav.nii.gz"
    labels = [np.asarray(nib.load(str(p)).dataobj).astype(np.uint8) for p in [*algos, fusion]]
    values = consensus_dice(labels)
    assert all(v is not None and all(0.0 <= x <= 1.0 for x in v.values()) for v in values)
    singles = [v["wt"] for v in values[:-1] if v is not None]
    assert values[-1] is not None and values[-1]["wt"] >= float(np.median(singles))
    # the algorithms agree on the whole tumour (README of the shared data: WT Dice 0.91-0.98 between them)
    assert min(singles) > 0.85


@pytest.mark.real_data
def test_real_faults_light_up_their_region() -> None:
    """BraTS-GLI-00001-000: the evidence grows with the size of a shift and in the region a fault concerns.

    Measured (z x ml, lattice): true labels wt 12.8 / tc 2.6 / et 24.8; dilated by 2 voxels wt 46.9; ET and
    necrosis swapped et 55.1; shifted 3 / 6 voxels total 58 / 77 against 40. Real tumours are heterogeneous,
    so the true labels are not at zero; the assertions keep a margin below the measured ratios.
    """
    from scipy import ndimage as ndi

    from tests.conftest import real_cases

    name, files = real_cases()[0]  # BraTS-GLI-00001-000 / seg-BraTS23_1
    case = Case.from_files(**files)
    images = [np.asarray(v.data) for v in case.images]
    lab = case.labels.copy()
    lab[lab == 4] = 3

    def with_labels(seg: np.ndarray) -> Case:
        return Case.from_arrays(*images, segmentation=seg.astype(np.uint8), affine=case.segmentation.affine)

    good = _total(case)
    grown = ndi.binary_dilation(lab > 0, iterations=2) & (lab == 0)
    dilated = _total(with_labels(np.where(grown, 2, lab)))
    swapped = lab.copy()
    swapped[lab == 1], swapped[lab == 3] = 3, 1
    swap = _total(with_labels(swapped))
    shifts = [sum(_total(with_labels(np.roll(lab, s, axis=1))).values()) for s in (3, 6)]
    assert dilated["wt"] > 3 * good["wt"], (name, good, dilated)
    assert swap["et"] > 1.8 * good["et"] and swap["wt"] == pytest.approx(good["wt"]), (good, swap)
    assert sum(good.values()) < shifts[0] < shifts[1], (good, shifts)


def test_evidence_with_server_is_refused_before_connecting(case_dir: Path, tmp_path: Path) -> None:
    code, out = _cli(
        [
            "score",
            str(case_dir),
            "--server",
            "127.0.0.1:1",
            "--gate",
            "--evidence",
            str(tmp_path),
            "--deadline",
            "2",
        ]
    )
    assert code == 2 and out["error"]["field"] == "evidence"
    code, out = _cli(
        ["score", str(case_dir), "--server", "127.0.0.1:1", "--gate", "--alpha", "7", "--deadline", "2"]
    )
    assert code == 2 and out["error"]["field"] == "alpha"
