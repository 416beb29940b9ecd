"""Leave-one-exam-out threshold rules and the evaluation statistics (exact intervals, bands, tables)."""

from __future__ import annotations

import math

import pytest

from dqe.models.qc.calibration import THRESHOLDS, derive_config, fold_configs, threshold_fields
from dqe.models.qc.config import GateConfig
from dqe.models.qc.evalstats import (
    Outcome,
    clopper_pearson,
    detection,
    detection_by_mechanism_and_band,
    severity_band,
)
from dqe.models.qc.types import Check


def _check(name: str, value: float) -> Check:
    return Check(name, value, 0.0, True, "review", "", "")


def test_every_threshold_names_real_config_fields():
    names = set(GateConfig.__dataclass_fields__)
    for spec in THRESHOLDS:
        assert spec.review in names and (spec.fail is None or spec.fail in names), spec
    assert "star_threshold" in threshold_fields()


def test_loosen_keeps_defaults_when_good_cases_pass():
    good = [[_check("stars", 4.2), _check("flair_hyperintensity", 3.0), _check("tumour_volume", 80.0)]]
    cfg, changed = derive_config(good, "loosen")
    assert cfg == GateConfig() and changed == {}


def test_loosen_moves_a_crossed_threshold_beyond_the_worst_good_case():
    base = GateConfig()
    good = [[_check("stars", 2.5)], [_check("flair_hyperintensity", 1.2)], [_check("stars", 3.9)]]
    cfg, changed = derive_config(good, "loosen")
    # stars: no fail threshold, margin 10 % of |3.0| = 0.3 below the worst good value
    assert cfg.star_threshold == pytest.approx(2.5 - 0.3)
    # flair: margin 10 % of the review-fail gap (0.75); the fail threshold moves by the same amount
    assert cfg.flair_review == pytest.approx(1.2 - 0.075)
    assert cfg.flair_fail == pytest.approx(base.flair_fail + (cfg.flair_review - base.flair_review))
    assert set(changed) == {"star_threshold", "flair_review", "flair_fail"}
    assert changed["star_threshold"]["default"] == base.star_threshold
    assert cfg.volume_review_ml == base.volume_review_ml  # untouched


def test_data_rule_ignores_default_positions():
    good = [[_check("tumour_volume", 100.0)], [_check("tumour_volume", 140.0)]]
    cfg, changed = derive_config(good, "data")
    margin = 0.1 * (GateConfig().volume_fail_ml - GateConfig().volume_review_ml)
    assert cfg.volume_review_ml == pytest.approx(140.0 + margin)  # tighter than the default 350
    assert cfg.volume_fail_ml - cfg.volume_review_ml == pytest.approx(250.0)
    assert "volume_review_ml" in changed


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        derive_config([], "tuned")


def test_folds_never_use_the_held_out_exam():
    by_exam = {
        "A": [[_check("stars", 2.0)]],  # a good case of A that the default would flag
        "B": [[_check("stars", 4.0)]],
        "C": [[_check("stars", 4.5)]],
    }
    folds = fold_configs(by_exam, "loosen")
    assert folds["A"][0].star_threshold == GateConfig().star_threshold  # A's own case is not used
    assert folds["B"][0].star_threshold == pytest.approx(2.0 - 0.3)
    assert folds["C"][0].star_threshold == pytest.approx(2.0 - 0.3)


def test_clopper_pearson_matches_closed_forms():
    zero = clopper_pearson(0, 18)
    assert zero["rate"] == 0.0 and zero["low"] == 0.0
    assert zero["high"] == pytest.approx(1 - 0.025 ** (1 / 18), rel=1e-9)  # 0.185
    assert zero["upper_one_sided"] == pytest.approx(1 - 0.05 ** (1 / 18), rel=1e-9)  # 0.153
    full = clopper_pearson(10, 10)
    assert full["high"] == 1.0 and full["low"] == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    mid = clopper_pearson(5, 10)
    assert mid["low"] < 0.5 < mid["high"] and mid["low"] == pytest.approx(1 - mid["high"], rel=1e-9)
    assert math.isnan(clopper_pearson(0, 0)["rate"])
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


@pytest.mark.parametrize(
    "dice, band",
    [
        (1.0, "dice>=0.9"),
        (0.9, "dice>=0.9"),
        (0.8999, "0.7<=dice<0.9"),
        (0.7, "0.7<=dice<0.9"),
        (0.0, "dice<0.7"),
    ],
)
def test_severity_bands(dice, band):
    assert severity_band(dice) == band


def test_severity_band_unknown_for_nan():
    assert severity_band(float("nan")) == "unknown"


def test_detection_tables_count_flags():
    outcomes = [
        Outcome("slab", 0.95, "pass"),
        Outcome("slab", 0.5, "fail"),
        Outcome("interp", 0.8, "review"),
        Outcome("interp", 0.85, "pass"),
    ]
    by_mech = detection(outcomes, "mechanism")
    assert by_mech["slab"]["n"] == 2 and by_mech["slab"]["flagged"]["k"] == 1
    assert by_mech["slab"]["failed"]["k"] == 1 and by_mech["interp"]["failed"]["k"] == 0
    assert by_mech["interp"]["dice_wt_min"] == 0.8
    by_band = detection(outcomes, "band")
    assert by_band["0.7<=dice<0.9"]["n"] == 2 and by_band["0.7<=dice<0.9"]["flagged"]["k"] == 1
    table = detection_by_mechanism_and_band(outcomes)
    assert table == {
        "interp": {"0.7<=dice<0.9": "1/2"},
        "slab": {"dice<0.7": "1/1", "dice>=0.9": "0/1"},
    }
