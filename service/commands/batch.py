"""``dqe batch``: score every team's segmentation of every case of a challenge dataset."""

from __future__ import annotations

import argparse

from dqe.models.errors import DQEError
from dqe.service.commands.common import (
    EXIT_INVALID,
    add_alpha_arg,
    add_engine_args,
    add_evidence_arg,
    add_label_convention_arg,
    alpha_arg,
    engine_config,
    error_payload,
    label_convention,
    print_json,
)
from dqe.service.settings import BatchSettings

DESCRIPTION = """\
Score a BraTS-style dataset: CASES_DIR holds one folder per case (four MR images, BraTS 2021/2023/Toolkit
names); each SUBMISSION_DIR holds one segmentation per case named <case id>.nii.gz (the folder name is the
team). Writes OUT_DIR/scores.csv, scores.parquet, summary.json, report.html and png/. Results are journaled
as they finish (OUT_DIR/journal.jsonl): re-running skips what is done. Exit 0 when the run completed (failed
segmentations are rows with an error), 2 when the dataset or model cannot be used.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="score many teams' segmentations of many cases; tables, summary and an HTML report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cases_dir", metavar="CASES_DIR", help="folder of case folders")
    p.add_argument(
        "submissions",
        metavar="SUBMISSION_DIR",
        nargs="*",
        help="one folder per team; none: CASES_DIR holds one DICOM study per folder (four MR series + SEG each), "
        "scored and gated with an SR per study in OUT_DIR/sr/ and a line per study in OUT_DIR/results.jsonl",
    )
    p.add_argument(
        "--out", required=True, metavar="OUT_DIR", help="output folder (created; reused to resume)"
    )
    p.add_argument(
        "--labels", metavar="GT_DIR", help="ground-truth folder (<case id>.nii.gz): adds Dice, HD95, NSD"
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local threads or Ray Data (default local)",
    )
    p.add_argument(
        "--gate", action=argparse.BooleanOptionalAction, default=True, help="QC gate verdicts (default on)"
    )
    p.add_argument(
        "--workers",
        dest="decode_workers",
        type=int,
        help="decoding threads (local) / actors (ray) (env DQE_DECODE_WORKERS, default 2)",
    )
    p.add_argument("--prefetch", type=int, default=1, help="prepared cases waiting for inference (default 1)")
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default $RAY_ADDRESS or a local Ray)"
    )
    p.add_argument(
        "--nsd-tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)"
    )
    p.add_argument(
        "--report-images", type=int, default=100, help="worst segmentations shown with views (default 100)"
    )
    p.add_argument("--no-images", action="store_true", help="do not render per-segmentation PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--consensus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-region Dice of each team with the majority vote of the other teams (cases with >= 3 "
        "teams), a column and a gate input; a case with any pending team is then re-scored in full "
        "(default on)",
    )
    add_alpha_arg(p)
    add_evidence_arg(p)
    add_engine_args(p)
    add_label_convention_arg(p)
    p.add_argument("--series-rules", metavar="JSON", help="DICOM studies: series selection rules")
    p.add_argument("--segment-map", metavar="JSON", help="DICOM studies: SEG segment -> label map")
    p.set_defaults(func=run)


def run_dicom(args: argparse.Namespace) -> int:
    """``dqe batch STUDIES_DIR --out OUT`` (no SUBMISSION_DIR): one DICOM study per folder."""
    from dqe.service.dicom_scoring import (  # lazy: highdicom and onnxruntime load when the command runs
        DicomOptions,
        run_study_batch,
    )
    from dqe.service.engine import Engine  # lazy: onnxruntime loads when the command runs

    try:
        options = DicomOptions(series_rules=args.series_rules, segment_map=args.segment_map)
        summary = run_study_batch(args.cases_dir, args.out, Engine(engine_config(args)), options)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json(summary)
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.submissions:
        return run_dicom(args)
    from dqe.service.batch import (  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        BatchOptions,
        run_batch,
    )

    try:
        workers = BatchSettings.from_sources({"decode_workers": args.decode_workers}).decode_workers
        alpha = alpha_arg(args)
        options = BatchOptions(
            engine=args.engine,
            gate=args.gate,
            workers=workers,
            prefetch=max(1, args.prefetch),
            ray_concurrency=workers,
            ray_address=args.ray_address,
            nsd_tolerance_mm=args.nsd_tolerance,
            images=not args.no_images,
            report_images=max(0, args.report_images),
            progress=not args.no_progress,
            label_convention=label_convention(args),
            consensus=args.consensus,
            alpha=alpha,
            evidence_dir=args.evidence,
        )
        outcome = run_batch(
            args.cases_dir, args.submissions, args.out, args.labels, engine_config(args), options
        )
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json(outcome.to_dict())
    return 0
