"""Per-region evidence checks on seeded phantoms: each fault family injected into a phantom is caught by
its own check (and by the conformal rule against a calibration of clean phantoms); clean phantoms pass."""

from __future__ import annotations

import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.phantom import make_phantom
from dqe.models.qc.checks.resampling import phase_concentration
from dqe.models.qc.checks.semantics import face_counts
from dqe.models.qc.config import GateConfig
from dqe.models.qc.decision import Calibration, decide
from dqe.models.qc.faults import FAMILIES, make_fault
from dqe.models.qc.gate import case_evidence, evaluate_case
from dqe.models.qc.regional import cross_dilate, cross_erode, shells
from dqe.models.result import ScoreResult

SHAPE = (112, 112, 80)
CAL_SEEDS = range(20, 39)  # 19 clean phantoms: smallest alpha 1/20 = 0.05
ALPHA = 0.05
TEST_SEED = 4
# The check that must carry the evidence for each family (its key has the largest z of the case).
EXPECTED = {
    "shift": "boundary_shift",
    "erode": "boundary_scale",
    "dilate": ("boundary_scale", "border_normal"),
    "upsample": "staircase",
    "slab": "flat_cut",
    "swap_et_ncr": "et_vs_necrosis_t1c",
    "swap_ncr_ed": ("necrosis_outer_contact", "edema_inner"),
    "decathlon": ("necrosis_outer_contact", "edema_inner"),
}


def phantom_case(seed: int, labels: np.ndarray | None = None) -> Case:
    p = make_phantom(seed=seed, shape=SHAPE)
    arrays = p.arrays()
    if labels is not None:
        arrays["segmentation"] = labels
    return Case.from_arrays(**arrays, affine=p.affine)


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    cases, evs = [], []
    for s in CAL_SEEDS:
        cases.append({"case": f"phantom{s}", "site": f"s{s % 3}", "kind": "expert"})
        evs.append(case_evidence(phantom_case(s)))
    return Calibration.from_scores(cases, evs)


@pytest.fixture(scope="module")
def clean() -> Case:
    return phantom_case(TEST_SEED)


def test_clean_phantoms_pass(calibration, clean):
    for seed in (TEST_SEED, 5, 6):
        d = decide(case_evidence(phantom_case(seed)), calibration, ALPHA)
        assert d.p_value > ALPHA, (seed, d.z)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_fault_is_caught_by_its_check(calibration, clean, family):
    lab = make_fault(clean.labels, family, seed=3)
    ev = case_evidence(phantom_case(TEST_SEED, lab))
    d = decide(ev, calibration, ALPHA)
    assert d.p_value <= ALPHA, d.z
    names = EXPECTED[family]
    names = names if isinstance(names, tuple) else (names,)
    own = [k for k in d.z if k.split(".", 1)[1] in names]
    assert own, d.z
    assert min(d.check_p[k] for k in own) <= ALPHA


def test_region_dropped_is_caught(calibration, clean):
    lab = clean.labels.copy()
    lab[lab == 3] = 0  # enhancing rim written as background
    d = decide(case_evidence(phantom_case(TEST_SEED, lab)), calibration, ALPHA)
    assert d.p_value <= ALPHA


def test_gate_result_carries_alpha_regions_and_p_values(calibration, clean, tmp_path):
    import json

    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration.to_json()))
    result = ScoreResult(5.0, {}, None, [], "m", "")
    cfg = GateConfig(calibration_path=str(path), expected_grid=SHAPE)
    good = evaluate_case(clean, result, cfg)
    assert good.verdict.value == "pass", good.reasons
    assert good.alpha == ALPHA and good.p_value > ALPHA
    assert [r.region for r in good.regions] == ["wt", "tc", "et"]
    assert all(c.p_value is not None for c in good.checks if c.family == "boundary_fit")
    bad = evaluate_case(phantom_case(TEST_SEED, make_fault(clean.labels, "swap_et_ncr", 0)), result, cfg)
    assert bad.verdict.value in ("review", "fail") and bad.p_value <= ALPHA
    assert any(r.verdict.value != "pass" for r in bad.regions)
    for r in bad.regions:  # where to look: slices inside the grid, on a named axis
        for sl in r.evidence_slices:
            assert sl.axis in ("sagittal", "coronal", "axial")
            assert 0 <= sl.index < SHAPE[("sagittal", "coronal", "axial").index(sl.axis)]
    assert any(r.evidence_slices for r in bad.regions)
    assert "combined p" in " ".join(bad.reasons) or bad.verdict.value == "fail"
    assert result.mean_stars == 5.0  # the gate never alters stars
    low = evaluate_case(
        clean, result, GateConfig(calibration_path=str(path), alpha=0.01, expected_grid=SHAPE)
    )
    assert "warning" in low.calibration  # 0.01 < 1/(19+1): cannot flag, and says so


def test_fault_generators_are_seeded_and_change_labels(clean):
    for family in FAMILIES:
        a = make_fault(clean.labels, family, 7)
        b = make_fault(clean.labels, family, 7)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, clean.labels), family


def test_morphology_and_shells():
    m = np.zeros((9, 9, 9), dtype=bool)
    m[2:7, 2:7, 2:7] = True
    assert np.count_nonzero(cross_erode(m)) == 27
    assert np.count_nonzero(cross_dilate(m)) == 125 + 6 * 25
    inside, outside = shells(m, 2)
    assert np.count_nonzero(inside[0]) == 125 - 27 and np.count_nonzero(inside[1]) == 27 - 1
    assert np.count_nonzero(outside[0]) == 6 * 25


def test_phase_concentration_and_faces():
    staircase = np.arange(0, 200, 2)  # transitions every 2 voxels
    r = phase_concentration(staircase, np.array([2.0, 3.0]))
    assert r[0] == pytest.approx(1.0) and r[1] < 0.1
    lab = np.zeros((3, 3, 3), dtype=np.uint8)
    lab[1, 1, 1] = 1
    f = face_counts(lab)
    assert f[1, 0] == 6 and f[0, 1] == 6
