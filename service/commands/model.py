"""``dqe model``: build, inspect and list the models in the model home."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dqe.models.artifacts import ensure_model, model_home
from dqe.models.errors import DQEError, InvalidInput, ModelNotReady
from dqe.models.registry import REGISTRY
from dqe.service.commands.common import (
    EXIT_INVALID,
    add_model_arg,
    add_parity_case_arg,
    add_threads_arg,
    engine_settings,
    error_payload,
    model_id,
    print_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="export / inspect models in the model home ($DQE_HOME)")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    e = msub.add_parser("export", help="export a registered model to ONNX, verify parity, publish it")
    add_model_arg(e)
    e.add_argument("--force", action="store_true", help="rebuild even if already published")
    add_parity_case_arg(e)
    e.set_defaults(func=run_export)
    i = msub.add_parser("info", help="print a published model's card and contract")
    add_model_arg(i)
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
    add_model_arg(c)
    c.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("DQE_SHARED_DATA"),
        help="folder of real cases (default: $DQE_SHARED_DATA)",
    )
    c.add_argument("--modes", default="", help="comma-separated modes (default: every mode available here)")
    add_threads_arg(c)
    c.add_argument(
        "--budget", type=float, default=0.01, help="largest acceptable |delta| in stars (default 0.01)"
    )
    c.add_argument("--dry-run", action="store_true", help="measure and print, do not write the card")
    c.set_defaults(func=run_calibrate)
    ls = msub.add_parser("list", help="list registered and published models")
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_export(args: argparse.Namespace) -> int:

    try:
        try:
            from dqe.models.export import (  # lazy: torch (export extra only): never loaded by the server or the client
                export_model,  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
            )
        except ImportError as exc:
            raise ModelNotReady(
                f"export needs torch, MONAI and the reference package ({exc}); "
                "run `pip install 'dqe-service[export]'`",
                field="model",
            ) from None
        art = export_model(model_id(args), force=args.force, extra_cases=args.parity_case)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json({"model_id": art.model_id, "directory": str(art.directory), "card": art.card})
    return 0


def run_info(args: argparse.Namespace) -> int:

    try:
        art = ensure_model(model_id(args), build=False)
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

    home = model_home() / "models"
    published = sorted(p.name for p in home.iterdir() if (p / "card.json").is_file()) if home.is_dir() else []
    print_json({"home": str(model_home()), "registered": sorted(REGISTRY), "published": published})
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from dqe.service.calibration import (  # lazy: loads the runtime when the command runs: `dqe --help` stays instant
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
        mid = model_id(args)
        art = ensure_model(mid, build=False)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()] or available_modes()
        if not modes:
            raise InvalidInput("no fast precision mode is available on this machine", field="modes")
        cases = discover_cases(args.data)
        if not cases:
            raise InvalidInput(
                f"no (images, segmentation) pairs found under {str(args.data)!r}", field="data"
            )
        source = f"{len(cases)} real segmentations under {Path(args.data).name}/"
        entries = calibrate(modes, cases, mid, engine_settings(args).intra_op_threads, args.budget, source)
        if not args.dry_run:
            write_precision_errors(art.directory, entries)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json(
        {
            "model_id": mid,
            "card": None if args.dry_run else str(art.directory / "card.json"),
            "cases": [c.name for c in cases],
            "precision_errors": entries,
        }
    )
    return 0 if all(e["within_budget"] for e in entries.values()) else 1
