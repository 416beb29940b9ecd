"""``dqe score --server TARGET``: the command-line glue around :class:`dqe.service.client.DQEClient`.

``TARGET`` is ``HOST:PORT``, a comma-separated list of them, or ``dns:///NAME:PORT`` (see
:func:`dqe.service.client.channel_target`); a malformed target is a typed ``INVALID_ARGUMENT`` error (exit 2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dqe.models.case import discover_files
from dqe.models.errors import DQEError, InvalidInput
from dqe.service.client import DQEClient
from dqe.service.commands.common import (
    EXIT_INVALID,
    alpha_arg,
    case_files,
    client_settings,
    error_payload,
    label_convention,
    print_json,
)


def client_from_args(args: argparse.Namespace) -> DQEClient:
    """A client from ``dqe score``'s ``--server``/``--tls-*``/``--token``/``--deadline`` options.

    Raises:
        InvalidInput: ``--server`` is malformed (field ``server``).
        OSError: a TLS file cannot be read.
    """
    settings = client_settings(args)
    return DQEClient(
        args.server,
        tls=bool(getattr(args, "tls", False)),
        ca_cert=getattr(args, "tls_ca", None),
        client_cert=getattr(args, "tls_cert", None),
        client_key=getattr(args, "tls_key", None),
        server_name=getattr(args, "tls_server_name", None),
        token=settings.token or None,
        deadline_s=settings.deadline_s,
        retries=settings.retries,
    )


def _local_case_files(args: argparse.Namespace) -> tuple[dict[str, Path], str]:
    """The five files and case id ``dqe score`` would score locally (same rules as ``load_case``)."""
    explicit = case_files(args)
    if explicit is not None:
        files = {k: Path(v) for k, v in explicit.items()}
        return files, files["segmentation"].name.split(".")[0]
    if not args.case_dir:
        raise InvalidInput("give a case folder or all of --t1c --t1 --t2 --flair --seg", field="case_dir")
    found = discover_files(args.case_dir, require_segmentation=args.seg is None)
    for name in ("t1c", "t1", "t2", "flair"):
        if getattr(args, name):
            found[name] = Path(getattr(args, name))
    if args.seg:
        found["segmentation"] = Path(args.seg)
    return found, Path(args.case_dir).name


def score_command(args: argparse.Namespace) -> int:
    """``dqe score --server TARGET``: same inputs and JSON shape as local ``dqe score``; exit 0 or 2."""
    t0 = time.perf_counter()
    try:
        if label_convention(args) != "auto":
            raise InvalidInput(
                "--label-convention is applied by local scoring only; the server reads BraTS labels "
                "(score without --server, or convert the segmentation first)",
                field="label_convention",
            )
        if getattr(args, "evidence", None):
            raise InvalidInput(
                "--evidence maps are written by local scoring only (score without --server)", field="evidence"
            )
        alpha = alpha_arg(args)
        with client_from_args(args) as client:
            if getattr(args, "remote_paths", False):
                if args.case_dir and not all(getattr(args, f) for f in ("t1c", "t1", "t2", "flair", "seg")):
                    extra = {f: getattr(args, f) for f in ("t1c", "t1", "t2", "flair") if getattr(args, f)}
                    if args.seg:
                        extra["segmentation"] = args.seg
                    remote = client.score_paths(args.case_dir, run_gate=args.gate, alpha=alpha, **extra)
                else:
                    files, case_id = _local_case_files(args)
                    remote = client.score_paths(
                        None,
                        case_id=case_id,
                        run_gate=args.gate,
                        alpha=alpha,
                        **files,  # type: ignore[arg-type]
                    )
            else:
                files, case_id = _local_case_files(args)
                remote = client.score_files(
                    **files,  # type: ignore[arg-type]
                    case_id=case_id,
                    run_gate=args.gate,
                    alpha=alpha,
                    local_slicing=bool(getattr(args, "views", False)),
                )
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    except (OSError, ValueError) as exc:  # unreadable TLS files, bad target
        print_json(
            {
                "error": {
                    "code": "INVALID_ARGUMENT",
                    "kind": type(exc).__name__,
                    "field": None,
                    "message": str(exc),
                }
            }
        )
        return EXIT_INVALID
    out = remote.to_dict()
    out["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1e3, 3)
    print_json(out)
    return 0
