"""Arguments and helpers shared by the commands that take a case (score, gate)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.service.engine import EngineConfig

EXIT_INVALID = 2


def add_case_args(parser: argparse.ArgumentParser) -> None:
    """A case folder with BraTS naming, and/or explicit files (explicit files win)."""
    parser.add_argument("case_dir", nargs="?", help="case folder with BraTS 2023/2021/Toolkit file names")
    for name in ("t1c", "t1", "t2", "flair"):
        parser.add_argument(f"--{name}", metavar="FILE", help=f"{name} NIfTI file")
    parser.add_argument("--seg", "--segmentation", dest="seg", metavar="FILE", help="segmentation NIfTI file")
    add_label_convention_arg(parser)


def add_label_convention_arg(parser: argparse.ArgumentParser) -> None:
    """``--label-convention NAME``: how to read the segmentation's labels (:mod:`dqe.models.labels`)."""
    from dqe.models.labels import AUTO, CHOICES

    parser.add_argument(
        "--label-convention",
        choices=CHOICES,
        default=os.environ.get("DQE_LABEL_CONVENTION", AUTO),
        help="segmentation label layout, mapped to BraTS labels before scoring: auto (BraTS 1/2/3 or legacy "
        "1/2/4, unchanged; default), brats2023, brats2021, brats2024-post (4 = resection cavity -> "
        "background), msd (1 edema, 2 non-enhancing, 3 enhancing), met-core-edema (1 lesion, 2 edema), "
        "whole-tumour (1 lesion); non-BraTS maps get an out-of-distribution warning (env "
        "DQE_LABEL_CONVENTION)",
    )


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=os.environ.get("DQE_MODEL"), help="model id (default: the reference model)"
    )
    parser.add_argument(
        "--providers",
        default=os.environ.get("DQE_PROVIDERS", "auto"),
        help="comma-separated execution providers: auto, tensorrt, cuda, cpu (default: auto)",
    )
    parser.add_argument(
        "--precision",
        default=os.environ.get("DQE_PRECISION", "fp32"),
        help="fp32 (default, reference parity), bf16 or fp16 where the hardware supports it, "
        "or auto (the fastest mode this machine runs)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("DQE_BACKEND", "auto"),
        help="auto (by precision), onnxruntime or openvino (env DQE_BACKEND)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("DQE_THREADS", "0")),
        help="intra-op threads (0 = all cores)",
    )


def engine_config(args: argparse.Namespace) -> EngineConfig:
    from dqe.models.registry import DEFAULT_MODEL_ID
    from dqe.service.engine import EngineConfig

    return EngineConfig(
        model_id=args.model or DEFAULT_MODEL_ID,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()),
        precision=args.precision,
        backend=args.backend,
        intra_op_threads=args.threads,
    )


def case_files(args: argparse.Namespace) -> dict[str, str] | None:
    explicit = {"t1c": args.t1c, "t1": args.t1, "t2": args.t2, "flair": args.flair, "segmentation": args.seg}
    if all(explicit.values()):
        return explicit  # type: ignore[return-value]
    return None


def load_case(args: argparse.Namespace) -> Case:
    """The case named on the command line.

    Raises:
        InvalidInput: neither a folder nor all five files were given.
    """
    from dqe.models.case import Case, discover_files
    from dqe.models.errors import InvalidInput

    files = case_files(args)
    convention = getattr(args, "label_convention", None)
    if files is not None:
        return Case.from_files(
            files["t1c"],
            files["t1"],
            files["t2"],
            files["flair"],
            files["segmentation"],
            label_convention=convention,
        )
    if not args.case_dir:
        raise InvalidInput("give a case folder or all of --t1c --t1 --t2 --flair --seg", field="case_dir")
    found = discover_files(args.case_dir, require_segmentation=args.seg is None)
    for name in ("t1c", "t1", "t2", "flair"):
        if getattr(args, name):
            found[name] = getattr(args, name)
    if args.seg:
        found["segmentation"] = args.seg
    from pathlib import Path

    return Case.from_files(
        **found,  # type: ignore[arg-type]
        case_id=Path(args.case_dir).name,
        label_convention=convention,
    )


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def error_payload(exc: BaseException) -> dict[str, Any]:
    from dqe.models.errors import DQEError

    if isinstance(exc, DQEError):
        return {"error": {"code": exc.code, "kind": exc.kind, "field": exc.field, "message": exc.message}}
    return {"error": {"code": "INTERNAL", "kind": type(exc).__name__, "field": None, "message": str(exc)}}
