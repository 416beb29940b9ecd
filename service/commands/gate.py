"""``dqe gate`` (one case: verdict as JSON, exit code for shell pipelines) and ``dqe gate-eval`` (ROC of
stars alone vs the gate on a labelled list of cases)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dqe.models.errors import DQEError, EmptySegmentation
from dqe.service.commands.common import (
    EXIT_INVALID,
    add_alpha_arg,
    add_case_args,
    add_engine_args,
    add_evidence_arg,
    add_star_threshold_arg,
    dicom_study_dir,
    engine_config,
    error_payload,
    gate_case,
    gate_config,
    load_case,
    print_json,
)
from dqe.service.commands.dicom import score_dicom
from dqe.service.gate_eval import evaluate_list

EXIT_PASS, EXIT_FAIL, EXIT_REVIEW = 0, 1, 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gate",
        help="QC gate for one case: stars + plausibility checks -> pass / review / fail (JSON)",
        description=(
            "Score a segmentation and run the QC gate. Prints the score result with its gate verdict as JSON. "
            "Exit 0 pass, 1 fail (an empty segmentation fails), 3 review, 2 invalid input."
        ),
    )
    add_case_args(p)
    add_engine_args(p)
    add_star_threshold_arg(p)
    add_alpha_arg(p)
    add_evidence_arg(p)
    p.set_defaults(func=run)

    e = sub.add_parser(
        "gate-eval",
        help="evaluate the gate vs stars alone on a labelled CSV list (ROC AUC, confusion table, ROC plot)",
        description=(
            "LIST.csv has columns t1c,t1,t2,flair,segmentation,label (label good or bad; optional columns "
            "case, mode, exam and dice_wt/dice_tc/dice_et are carried into the report: detection per "
            "mechanism and per severity band, false alarms with Clopper-Pearson intervals, Spearman "
            "rho(gate score, Dice)). Prints a JSON summary and writes summary.json, results.csv and "
            "roc.png to --out."
        ),
    )
    e.add_argument("list_csv", type=Path, metavar="LIST.csv")
    e.add_argument("--out", type=Path, default=Path("gate-eval"), help="output folder (default ./gate-eval)")
    add_engine_args(e)
    add_star_threshold_arg(e)
    e.add_argument("--no-plot", action="store_true", help="skip the ROC plot (no matplotlib needed)")
    e.add_argument(
        "--calibration",
        choices=("auto", "frozen", "loosen", "data"),
        default="auto",
        help="thresholds: frozen (the defaults for every row), loosen or data (leave-one-exam-out: each "
        "exam gated with thresholds derived from the other exams' good rows; see "
        "dqe.models.qc.calibration), auto (loosen with >= 2 exams, else frozen; default)",
    )
    e.set_defaults(func=run_eval)


def run(args: argparse.Namespace) -> int:
    from dqe.models.qc.gate import (  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        EXIT_CODES,
        Verdict,
        empty_segmentation_result,
    )

    t0 = time.perf_counter()
    try:
        cfg = gate_config(args)
        from dqe.service.engine import (  # lazy: onnxruntime + NIfTI stack load when a model is run, not when a command is parsed
            Engine,  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        )

        engine = Engine(engine_config(args))
        t1 = time.perf_counter()
        if dicom_study_dir(args):
            out, verdict = score_dicom(args, engine, cfg)
            print_json(out)
            return EXIT_CODES[Verdict(verdict)]
        try:
            case = load_case(args)
        except EmptySegmentation as exc:
            gate = empty_segmentation_result(exc.message, cfg)
            print_json(
                {
                    "case_id": getattr(args, "case_dir", None) or args.seg,
                    "mean_stars": None,
                    "gate": gate.to_dict(),
                }
            )
            return EXIT_FAIL
        t2 = time.perf_counter()
        result = engine.score_case(case)
        result.gate, evidence_file = gate_case(case, result, cfg, args.evidence)
        t3 = time.perf_counter()
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    out = result.to_dict()
    if evidence_file is not None:
        out["evidence_map"] = str(evidence_file)
    out["timings_ms"].update(
        {
            "engine_load": (t1 - t0) * 1e3,
            "decode": (t2 - t1) * 1e3,
            "gate": result.gate.elapsed_ms,
            "total": (t3 - t0) * 1e3,
        }
    )
    print_json(out)
    return EXIT_CODES[result.gate.verdict]


def run_eval(args: argparse.Namespace) -> int:

    try:
        summary = evaluate_list(
            args.list_csv,
            args.out,
            engine_config(args),
            gate_config(args),
            plot=not args.no_plot,
            calibration=args.calibration,
        )
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json(summary)
    return 0
