"""Conformal p-values and their max-z combination: hand-computed cases and validity under exchangeability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.conformal import combined_p, conformal_p, max_z, robust_scale, smallest_alpha
from dqe.models.qc.decision import Calibration, critical_score, decide
from dqe.models.qc.dicepred import conformal_quantile


def test_conformal_p_hand_computed():
    cal = [0.1, 0.5, 0.3, 0.9]
    assert conformal_p(0.95, cal) == pytest.approx(1 / 5)  # larger than all: 1/(n+1)
    assert conformal_p(0.5, cal) == pytest.approx(3 / 5)  # 0.5 and 0.9 >= 0.5, plus itself
    assert conformal_p(0.0, cal) == pytest.approx(1.0)
    assert conformal_p(math.nan, cal) == 1.0
    assert conformal_p(0.2, [0.1, math.nan, 0.3]) == pytest.approx(2 / 3)  # NaN calibration ignored
    assert smallest_alpha(16) == pytest.approx(1 / 17)


def test_critical_score_matches_p_value():
    cal = np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 0.6, 0.7, 0.8, 0.05])
    # n = 10: alpha 0.2 allows 1 calibration score >= s (p = 2/11 <= 0.2)
    thr = critical_score(cal, 0.2)
    assert thr == pytest.approx(0.8)
    assert conformal_p(0.85, cal) <= 0.2 < conformal_p(0.8, cal)
    assert critical_score(cal, 0.05) == math.inf  # below 1/(n+1): can never flag


def test_p_values_uniform_under_exchangeability():
    """Exchangeable test and calibration draws: P(p <= a) ~= floor(a(n+1))/(n+1), for single scores and for
    the max-z combination of several checks of different scales and distributions."""
    rng = np.random.default_rng(0)
    n, trials = 19, 3000
    single = []
    combined = []
    for _ in range(trials):
        draws = rng.normal(size=n + 1)
        single.append(conformal_p(draws[-1], draws[:-1]))
        data = {
            "a": rng.normal(0, 1, n + 1),
            "b": rng.exponential(5.0, n + 1),
            "c": rng.standard_t(2, n + 1) * 100,
        }
        cal = {k: v[:-1] for k, v in data.items()}
        test = {k: float(v[-1]) for k, v in data.items()}
        combined.append(combined_p(test, cal)[0])
    for p in (single, combined):
        arr = np.asarray(p)
        for a in (0.05, 0.1, 0.25, 0.5):
            expected = math.floor(a * (n + 1)) / (n + 1)
            assert abs(float(np.mean(arr <= a)) - expected) < 0.025


def test_max_z_hand_computed():
    cal = {"x": np.array([0.0, 1.0, 2.0]), "y": np.array([10.0, 10.0, 10.0])}
    t, stat_cal, z = max_z({"x": 5.0}, cal, floors={"y": 1.0})
    # augmented x = 0,1,2,5: median 1.5, 90th percentile (linear) = 2 + 0.7 * 3 = 4.1 -> scale 2.6
    assert z["x"] == pytest.approx((5.0 - 1.5) / 2.6)
    assert t == pytest.approx(z["x"])
    assert stat_cal[0] == pytest.approx(0.0)  # y: (10-10)/1 = 0 beats x's negative z
    p, _ = combined_p({"x": 5.0}, cal, floors={"y": 1.0})
    assert p == pytest.approx(1 / 4)


def test_robust_scale_floor():
    med, scale = robust_scale(np.array([1.0, 1.0, 1.0]), 0.5)
    assert med == 1.0 and scale == 0.5
    med, scale = robust_scale(np.arange(11.0), 0.0)
    assert med == 5.0 and scale == pytest.approx(4.0)


def test_decide_regions_and_flag():
    cases = [{"case": f"c{i}", "site": "A" if i < 10 else "B", "kind": "expert"} for i in range(20)]
    rng = np.random.default_rng(1)
    evs = [
        [
            Evidence("s", "wt", "boundary_fit", float(rng.normal()), "", "", ""),
            Evidence("s", "et", "label_semantics", float(rng.normal()), "", "", ""),
        ]
        for _ in cases
    ]
    cal = Calibration.from_scores(cases, evs)
    assert cal.n == 20 and cal.sites == ["A", "B"]
    assert cal.without(["A"]).n == 10
    bad = [
        Evidence("s", "wt", "boundary_fit", 50.0, "", "", ""),
        Evidence("s", "et", "label_semantics", 0.0, "", "", ""),
    ]
    d = decide(bad, cal, 0.05)
    assert d.p_value == pytest.approx(1 / 21)
    assert d.region_p["wt"] == pytest.approx(1 / 21)
    assert d.region_p["et"] > 0.05
    assert d.check_p["wt.s"] == pytest.approx(1 / 21)


def test_conformal_quantile():
    r = np.arange(1, 10, dtype=float)  # 9 residuals, coverage 0.9 -> ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(r, 0.9) == 9.0
    assert conformal_quantile(r, 0.5) == 5.0
    assert conformal_quantile(np.arange(3.0), 0.9) == math.inf


def test_a_named_calibration_file_that_does_not_exist_is_an_error_not_a_silent_fallback(tmp_path) -> None:
    from dqe.models.errors import NotFound
    from dqe.models.qc.decision import load_calibration

    with pytest.raises(NotFound, match="calibration"):
        load_calibration(str(tmp_path / "missing.json"))


def test_without_the_shipped_calibration_every_result_says_the_conformal_rule_did_not_run(
    monkeypatch,
) -> None:
    from dqe.models.case import Case
    from dqe.models.phantom import make_phantom
    from dqe.models.qc import decision, gate
    from dqe.models.result import ScoreResult

    monkeypatch.setattr(gate, "calibration_for", lambda cfg: None)
    ph = make_phantom(seed=3, shape=(112, 112, 80))
    case = Case.from_arrays(**ph.arrays(), affine=ph.affine)
    views = {"axial": 5.0, "coronal": 5.0, "sagittal": 5.0}
    result = ScoreResult(5.0, views, None, [], "phantom", "0" * 64)
    out = gate.evaluate_case(case, result)
    assert out.p_value is None and "did not run" in out.calibration["warning"]
    assert decision.CALIBRATION_FILE.is_file()  # the shipped file is there in this install
