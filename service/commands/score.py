"""``dqe score``: stars for one case, as JSON on stdout."""

from __future__ import annotations

import argparse
import time

from dqe.models.errors import DQEError, InvalidInput
from dqe.service.commands.common import (
    EXIT_INVALID,
    add_alpha_arg,
    add_case_args,
    add_engine_args,
    add_evidence_arg,
    add_remote_args,
    dicom_study_dir,
    engine_config,
    error_payload,
    gate_case,
    gate_config,
    load_case,
    print_json,
)
from dqe.service.commands.dicom import score_dicom


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score one case (folder or explicit files) and print JSON",
        description="Predict expert-like star ratings (1-6) for a segmentation. Exit 0 on success, 2 on invalid input.",
    )
    add_case_args(p)
    add_engine_args(p)
    p.add_argument(
        "--server",
        metavar="TARGET",
        help="score through running dqe gRPC servers instead of locally: HOST:PORT, several comma-separated "
        "(HOST:PORT,HOST:PORT,...) or dns:///NAME:PORT; calls are spread with round_robin and retried on "
        "another replica when one is unavailable",
    )
    p.add_argument("--gate", action="store_true", help="also run the QC gate and include its verdict")
    add_alpha_arg(p)
    add_evidence_arg(p)
    remote = p.add_argument_group("with --server")
    add_remote_args(remote)
    remote.add_argument(
        "--tls", action="store_true", help="use TLS, verifying the server with the system roots"
    )
    remote.add_argument(
        "--tls-ca", metavar="PEM", help="CA that signed the server certificate (implies --tls)"
    )
    remote.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS")
    remote.add_argument("--tls-key", metavar="PEM", help="client private key for mutual TLS")
    remote.add_argument(
        "--tls-server-name", metavar="NAME", help="expected server certificate name, if not the host"
    )
    remote.add_argument("--views", action="store_true", help="slice locally and send only the views (~5 MB)")
    remote.add_argument(
        "--remote-paths", action="store_true", help="the paths are on the server: send paths, not bytes"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if args.server and dicom_study_dir(args):
        print_json(
            error_payload(
                InvalidInput(
                    "a DICOM study is sent to a server with the ScoreStudy RPC (one Part-10 instance per "
                    "message); `dqe score --server` sends NIfTI cases only: score it locally or call ScoreStudy",
                    field="case_dir",
                )
            )
        )
        return EXIT_INVALID
    if args.server:
        from dqe.service.commands.remote import (  # lazy: grpc loads only for --server
            score_command,  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        )

        return score_command(args)
    t0 = time.perf_counter()
    try:
        from dqe.service.engine import (  # lazy: onnxruntime + NIfTI stack load when a model is run, not when a command is parsed
            Engine,  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        )

        cfg = gate_config(args) if args.gate else None
        if args.evidence and cfg is None:
            raise InvalidInput(
                "--evidence needs --gate (the map is part of the gate's evidence)", field="evidence"
            )
        engine = Engine(engine_config(args))
        t1 = time.perf_counter()
        if dicom_study_dir(args):
            out, _ = score_dicom(args, engine, None)
            print_json(out)
            return 0
        case = load_case(args)
        t2 = time.perf_counter()
        result = engine.score_case(case)
        evidence_file = None
        if cfg is not None:
            result.gate, evidence_file = gate_case(case, result, cfg, args.evidence)
        t3 = time.perf_counter()
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    out = result.to_dict()
    if evidence_file is not None:
        out["evidence_map"] = str(evidence_file)
    out["timings_ms"].update(
        {"engine_load": (t1 - t0) * 1e3, "decode": (t2 - t1) * 1e3, "total": (t3 - t0) * 1e3}
    )
    out["engine"] = {
        "backend": engine.backend.name,
        "providers": list(engine.backend.providers),
        "precision": engine.config.precision,
    }
    print_json(out)
    return 0
