"""``dqe model``: build, inspect and list the models in the model home."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands.common import EXIT_INVALID, error_payload, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="export / inspect models in the model home ($DQE_HOME)")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    e = msub.add_parser("export", help="export a registered model to ONNX, verify parity, publish it")
    e.add_argument("--model", default=None, help="model id (default: the reference model)")
    e.add_argument("--force", action="store_true", help="rebuild even if already published")
    e.add_argument("--parity-case", action="append", default=[], type=Path, help="extra real case folder for the parity check")
    e.set_defaults(func=run_export)
    i = msub.add_parser("info", help="print a published model's card and contract")
    i.add_argument("--model", default=None)
    i.set_defaults(func=run_info)
    ls = msub.add_parser("list", help="list registered and published models")
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_export(args: argparse.Namespace) -> int:
    from models.errors import DQEError
    from models.registry import DEFAULT_MODEL_ID

    try:
        from models.export import export_model

        art = export_model(args.model or DEFAULT_MODEL_ID, force=args.force, extra_cases=args.parity_case)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json({"model_id": art.model_id, "directory": str(art.directory), "card": art.card})
    return 0


def run_info(args: argparse.Namespace) -> int:
    from models.artifacts import ensure_model
    from models.errors import DQEError
    from models.registry import DEFAULT_MODEL_ID

    try:
        art = ensure_model(args.model or DEFAULT_MODEL_ID, build=False)
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json({"model_id": art.model_id, "directory": str(art.directory), "card": art.card, "contract": art.contract.to_dict()})
    return 0


def run_list(args: argparse.Namespace) -> int:
    from models.artifacts import model_home
    from models.registry import REGISTRY

    home = model_home() / "models"
    published = sorted(p.name for p in home.iterdir() if (p / "card.json").is_file()) if home.is_dir() else []
    print_json({"home": str(model_home()), "registered": sorted(REGISTRY), "published": published})
    return 0
