"""``dqe model``: build, inspect and list the models in the model home."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dqe.service.commands.common import EXIT_INVALID, error_payload, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="export / inspect models in the model home ($DQE_HOME)")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    e = msub.add_parser("export", help="export a registered model to ONNX, verify parity, publish it")
    e.add_argument("--model", default=None, help="model id (default: the reference model)")
    e.add_argument("--force", action="store_true", help="rebuild even if already published")
    e.add_argument(
        "--parity-case",
        action="append",
        default=[],
        type=Path,
        help="extra real case folder for the parity check",
    )
    e.set_defaults(func=run_export)
    i = msub.add_parser("info", help="print a published model's card and contract")
    i.add_argument("--model", default=None)
    i.set_defaults(func=run_info)
    c = msub.add_parser(
        "calibrate-precision",
        help="measure each fast precision mode's error vs fp32 on real cases and record it in the model card",
        description=(
            "Scores every (images, segmentation) pair found under --data with ONNX Runtime fp32 and with each "
            "mode (bf16, fp16, fp32-openvino; default: those this machine runs), then writes max/mean |delta| "
            "stars into card.json under precision_errors. Exit 0 when every mode is within --budget, 1 otherwise."
        ),
    )
    c.add_argument("--model", default=None)
    c.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("DQE_SHARED_DATA"),
        help="folder of real cases (default: $DQE_SHARED_DATA)",
    )
    c.add_argument("--modes", default="", help="comma-separated modes (default: every mode available here)")
    c.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    c.add_argument(
        "--budget", type=float, default=0.01, help="largest acceptable |delta| in stars (default 0.01)"
    )
    c.add_argument("--dry-run", action="store_true", help="measure and print, do not write the card")
    c.set_defaults(func=run_calibrate)
    ls = msub.add_parser("list", help="list registered and published models")
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_export(args: argparse.Namespace) -> int:
    from dqe.models.errors import DQEError
    from dqe.models.registry import DEFAULT_MODEL_ID

    try:
        import contextlib
        import sys

        from dqe.models.export import export_model

        # torch.onnx prints progress on stdout; keep stdout for this command's JSON.
        with contextlib.redirect_stdout(sys.stderr):
            art = export_model(args.model or DEFAULT_MODEL_ID, force=args.force, extra_cases=args.parity_case)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json({"model_id": art.model_id, "directory": str(art.directory), "card": art.card})
    return 0


def run_info(args: argparse.Namespace) -> int:
    from dqe.models.artifacts import ensure_model
    from dqe.models.errors import DQEError
    from dqe.models.registry import DEFAULT_MODEL_ID

    try:
        art = ensure_model(args.model or DEFAULT_MODEL_ID, build=False)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json(
        {
            "model_id": art.model_id,
            "directory": str(art.directory),
            "card": art.card,
            "contract": art.contract.to_dict(),
        }
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from dqe.models.artifacts import model_home
    from dqe.models.registry import REGISTRY

    home = model_home() / "models"
    published = sorted(p.name for p in home.iterdir() if (p / "card.json").is_file()) if home.is_dir() else []
    print_json({"home": str(model_home()), "registered": sorted(REGISTRY), "published": published})
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from dqe.models.artifacts import ensure_model
    from dqe.models.errors import DQEError, InvalidInput
    from dqe.models.registry import DEFAULT_MODEL_ID
    from dqe.service.backends.calibration import (
        available_modes,
        calibrate,
        discover_cases,
        write_precision_errors,
    )

    try:
        if not args.data:
            raise InvalidInput(
                "give --data DIR (a folder of real cases) or set DQE_SHARED_DATA", field="data"
            )
        model_id = args.model or DEFAULT_MODEL_ID
        art = ensure_model(model_id, build=False)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()] or available_modes()
        if not modes:
            raise InvalidInput("no fast precision mode is available on this machine", field="modes")
        cases = discover_cases(args.data)
        if not cases:
            raise InvalidInput(
                f"no (images, segmentation) pairs found under {str(args.data)!r}", field="data"
            )
        source = f"{len(cases)} real segmentations under {Path(args.data).name}/"
        entries = calibrate(modes, cases, model_id, args.threads, args.budget, source)
        if not args.dry_run:
            write_precision_errors(art.directory, entries)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json(
        {
            "model_id": model_id,
            "card": None if args.dry_run else str(art.directory / "card.json"),
            "cases": [c.name for c in cases],
            "precision_errors": entries,
        }
    )
    return 0 if all(e["within_budget"] for e in entries.values()) else 1
