"""The private coding scheme of the SR (designator ``99DQE``; ``99`` marks a private scheme in DICOM PS3.16 8.2),
identified in each SR's Coding Scheme Identification Sequence, and the standard codes the reports use.

| code | meaning | unit |
|---|---|---|
| DQE0001 | Mean expert-like star rating: mean of the three views, 1 (unusable) to 6 (perfect) | ``{star}`` (UCUM) |
| DQE0002 | Axial star rating | ``{star}`` |
| DQE0003 | Coronal star rating | ``{star}`` |
| DQE0004 | Sagittal star rating | ``{star}`` |
| DQE0010 | QC gate score: continuous plausibility, higher = more plausible; ranks segmentations | ``1`` |
| DQE0020 | QC gate reason: one sentence per failed check | text |
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SCHEME = "99DQE"
SCHEME_NAME = "DQE deep quality estimation codes"
SCHEME_ORGANIZATION = "dqe-service project"
SCHEME_VERSION = "1"

MEAN_STARS = Code("DQE0001", SCHEME, "Mean expert-like star rating")
VIEW_STARS = {
    "axial": Code("DQE0002", SCHEME, "Axial star rating"),
    "coronal": Code("DQE0003", SCHEME, "Coronal star rating"),
    "sagittal": Code("DQE0004", SCHEME, "Sagittal star rating"),
}
GATE_SCORE = Code("DQE0010", SCHEME, "QC gate score")
GATE_REASON = Code("DQE0020", SCHEME, "QC gate reason")
ALL_PRIVATE = (MEAN_STARS, *VIEW_STARS.values(), GATE_SCORE, GATE_REASON)

STAR_UNIT = Code("{star}", "UCUM", "star")
NO_UNIT = Code("1", "UCUM", "no units")

QUALITY_ASSESSMENT = codes.DCM.QualityAssessment  # 111050
# CID 6044 Quality Control Standard values, by gate verdict
VERDICT_CODES = {
    "pass": codes.DCM.UsableMeetsTheQualityControlStandard,  # 111237
    "review": codes.DCM.UsableDoesNotMeetTheQualityControlStandard,  # 111236
    "fail": codes.DCM.UnusableQualityRendersImageUnusable,  # 111235
}
QUALITY_ISSUE = codes.DCM.QualityIssue  # 113010, CID 7010
MR_PROCEDURE = codes.cid100.MultiparametricMRI  # DCM 126020, CID 100
