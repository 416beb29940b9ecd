"""The shipped conformal calibration against the real data it was built from (ground-truth exams; slow)."""

from __future__ import annotations

import math

import pytest

from dqe.models.case import Case
from dqe.models.qc.decision import load_calibration
from dqe.models.qc.gate import case_evidence
from tests.conftest import SHARED_DATA

GT = SHARED_DATA / "brats2018-groundtruth"
pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def test_calibration_supports_alpha_in_every_leave_one_site_out_fold():
    cal = load_calibration()
    assert cal is not None
    assert sum(c["kind"] == "expert" for c in cal.cases) == 16
    for site in cal.sites:
        fold = cal.without([site])
        assert fold.smallest_alpha <= 0.05, (site, fold.n)


@pytest.mark.skipif(not GT.is_dir(), reason=f"no ground-truth exams at {GT}")
def test_shipped_scores_are_what_the_code_computes():
    """Regenerating the artifact from ../shared/data reproduces the shipped scores of a ground truth."""
    cal = load_calibration()
    assert cal is not None
    name = "Brats18_CBICA_AOP_1"
    names = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair", "segmentation": "seg"}
    case = Case.from_files(**{k: GT / name / f"{name}_{v}.nii.gz" for k, v in names.items()}, case_id=name)
    idx = [c["case"] for c in cal.cases].index(name)
    got = {e.key: e.value for e in case_evidence(case)}
    for key, column in cal.scores.items():
        want = column[idx]
        if math.isnan(want):
            assert key not in got or key.endswith("consensus")
        else:
            assert got[key] == pytest.approx(want, abs=1e-5), key
