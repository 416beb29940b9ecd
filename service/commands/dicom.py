"""``dqe score|gate STUDY_DIR`` when STUDY_DIR holds a DICOM study: score, gate, write the SR (``--sr``)."""

from __future__ import annotations

import argparse
from typing import Any

from dqe.models.qc.config import GateConfig
from dqe.service.dicom_scoring import DicomOptions, Scorer, load_study_dir, score_study, write_reports


def score_dicom(
    args: argparse.Namespace, scorer: Scorer, gate_config: GateConfig | None
) -> tuple[dict[str, Any], str]:
    """The JSON output and the gate verdict of the study in ``args.case_dir``.

    Raises:
        DQEError: the study cannot be read (typed: the series it is about is named), or no dicom extra.
    """
    options = DicomOptions(series_rules=args.series_rules, segment_map=args.segment_map)
    outcome = score_study(load_study_dir(args.case_dir, options), scorer, gate_config)
    write_reports(outcome, args.sr)
    out = outcome.to_dict()
    if args.sr:
        out["sr"] = str(args.sr)
    assert outcome.result.gate is not None
    return out, outcome.result.gate.verdict.value
