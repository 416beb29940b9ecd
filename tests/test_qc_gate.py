"""The gate's verdict and score: stars are never altered, verdict rules, real algorithm outputs never fail."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dqe.models.case import Case
from dqe.models.phantom import make_phantom
from dqe.models.qc.config import GateConfig
from dqe.models.qc.gate import BAND, empty_segmentation_result, evaluate_case, gate_score, verdict_of
from dqe.models.qc.types import Check, GateResult, Verdict


def _check(name: str, passed: bool, severity: str) -> Check:
    return Check(name, 0.0, 0.0, passed, severity, name, "")


def test_verdict_rules():
    assert verdict_of([_check("a", True, "fail"), _check("b", True, "review")]) is Verdict.PASS
    assert verdict_of([_check("a", True, "fail"), _check("b", False, "review")]) is Verdict.REVIEW
    assert verdict_of([_check("a", False, "fail"), _check("b", False, "review")]) is Verdict.FAIL
    assert verdict_of([_check("a", False, "info")]) is Verdict.PASS


def test_gate_score_is_banded_by_verdict_and_ordered_within():
    ok = [_check("a", True, "fail")]
    rev = [_check("a", False, "review")]
    bad1 = [_check("a", False, "fail")]
    bad3 = [_check("a", False, "fail"), _check("b", False, "fail"), _check("c", False, "review")]
    scores = {
        "pass_hi": gate_score(Verdict.PASS, ok, 5.5),
        "pass_lo": gate_score(Verdict.PASS, ok, 2.0),
        "review": gate_score(Verdict.REVIEW, rev, 6.0),
        "fail1": gate_score(Verdict.FAIL, bad1, 6.0),
        "fail3": gate_score(Verdict.FAIL, bad3, 6.0),
        "empty": gate_score(Verdict.FAIL, bad1, None),
    }
    assert scores["pass_hi"] > scores["pass_lo"] >= BAND[Verdict.PASS]
    assert BAND[Verdict.PASS] > scores["review"] >= BAND[Verdict.REVIEW]
    assert BAND[Verdict.REVIEW] > scores["fail1"] > scores["fail3"] >= 0.0
    assert scores["empty"] < scores["fail1"]
    assert all(0.0 <= s < 1.0 for s in scores.values())


def test_empty_segmentation_result():
    res = empty_segmentation_result("segmentation has no tumour voxel")
    assert res.verdict is Verdict.FAIL and res.gate_score == 0.0
    assert res.reasons and "empty" in res.reasons[0]
    assert res.to_dict()["verdict"] == "fail"


def test_gate_never_alters_the_stars(engine, phantom_case):
    result = engine.score_case(phantom_case)
    before = copy.deepcopy(result.to_dict())
    gate = evaluate_case(phantom_case, result)
    assert isinstance(gate, GateResult)
    assert result.gate is None  # evaluate_case returns the verdict; it does not attach or change anything
    assert result.to_dict() == before
    again = engine.score_case(phantom_case)
    assert again.mean_stars == result.mean_stars and again.views == result.views
    stars_check = next(c for c in gate.checks if c.name == "stars")
    assert stars_check.value == result.mean_stars


def test_star_threshold_is_configurable(engine, phantom_case):
    result = engine.score_case(phantom_case)
    strict = evaluate_case(phantom_case, result, GateConfig(star_threshold=6.5))
    assert strict.verdict is not Verdict.PASS and strict.star_threshold == 6.5
    assert any(r.startswith("review: stars") for r in strict.reasons)
    lenient = evaluate_case(phantom_case, result, GateConfig(star_threshold=1.0))
    assert not any(r.startswith("review: stars") for r in lenient.reasons)


def test_gate_result_serialises(engine, phantom_case):
    import json

    result = engine.score_case(phantom_case)
    result.gate = evaluate_case(phantom_case, result)
    out = json.loads(json.dumps(result.to_dict()))
    gate = out["gate"]
    assert gate["verdict"] in ("pass", "review", "fail")
    assert 0.0 <= gate["gate_score"] < 1.0
    assert {c["name"] for c in gate["checks"]} >= {"tumour_outside_brain", "stars", "view_disagreement"}
    assert all(np.isfinite(c["value"]) for c in gate["checks"])


def test_gross_failure_fails_whatever_the_stars(engine):
    ph = make_phantom(seed=2)
    seg = np.full(ph.segmentation.shape, 2, dtype=np.uint8)  # every voxel labelled
    case = Case.from_arrays(**{**ph.arrays(), "segmentation": seg}, affine=ph.affine)
    result = engine.score_case(case)
    gate = evaluate_case(case, result, GateConfig(star_threshold=1.0))
    assert gate.verdict is Verdict.FAIL
    assert gate.gate_score < BAND[Verdict.REVIEW]
    assert gate.reasons[0].startswith("fail: ")


@pytest.mark.real_data
@pytest.mark.slow
def test_no_real_algorithm_segmentation_fails(engine):
    """BraTS Toolkit outputs, fusions, BraTS23_1 (+ _mapped), brainlesion-BraTS: none fails by default."""
    from tests.conftest import real_cases

    cases = real_cases()
    assert len(cases) >= 18
    images: dict[str, dict] = {}
    verdicts = {}
    for name, files in cases:
        key = str(files["t1c"])
        case = Case.from_files(**files, images=images.get(key))
        images.setdefault(key, dict(zip(("t1c", "t1", "t2", "flair"), case.images, strict=True)))
        result = engine.score_case(case)
        gate = evaluate_case(case, result)
        verdicts[name] = (gate.verdict.value, gate.reasons)
        assert gate.verdict is not Verdict.FAIL, (name, gate.reasons)
    # At the defaults they do not even need review (documented calibration in service/qc/config.py),
    # except the _mapped copy, whose identity header is a review on its own (issue 18).
    mapped = "BraTS-GLI-00001-000/seg-BraTS23_1_mapped"
    assert verdicts[mapped][0] == "review" and all(
        r.startswith("review: affines") for r in verdicts[mapped][1]
    )
    assert all(v == "pass" for k, (v, _) in verdicts.items() if k != mapped), verdicts


@pytest.mark.real_data
def test_identity_affine_segmentation_needs_review(engine):
    """seg-BraTS23_1_mapped: right voxels under an identity affine -> review (header geometry that
    disagrees with the images is never passed silently, issue 18); the image checks find the voxels
    aligned, so nothing fails."""
    from tests.conftest import real_cases

    files = dict(real_cases())["BraTS-GLI-00001-000/seg-BraTS23_1_mapped"]
    case = Case.from_files(**files)
    gate = evaluate_case(case, engine.score_case(case))
    affines = next(c for c in gate.checks if c.name == "affines")
    assert not affines.passed and "identity" in affines.message
    orientation = next(c for c in gate.checks if c.name == "orientation")
    assert orientation.passed
    assert gate.verdict is Verdict.REVIEW
    assert [r for r in gate.reasons if not r.startswith("review: affines")] == []
