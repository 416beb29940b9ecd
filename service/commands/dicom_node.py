"""``dqe dicom-node``: run the DICOM node (C-ECHO / C-STORE SCP that scores studies and sends the SR back)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading

from dqe.models.errors import DQEError
from dqe.service.commands.common import EXIT_INVALID, error_payload, print_json
from dqe.service.settings import DicomNodeConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dicom-node",
        help="DICOM node beside a PACS: receive studies (C-STORE), score them, send the SR back",
        description=(
            "A C-ECHO / C-STORE SCP. Every instance is written to the spool folder on arrival; a study is scored "
            "once no instance arrived for --quiet-s seconds and it holds a SEG plus the four MR series; the "
            "TID 1500 SR (and a Quality Issue KOS when the verdict is not pass) is sent with C-STORE to --dest. "
            "A restart resumes from the spool: nothing is lost and no study is scored twice. Every option also "
            "reads DQE_<NAME> (e.g. DQE_QUIET_S)."
        ),
    )
    p.add_argument("--ae-title", help="own AE title (default DQE)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="DIMSE port (default 11112; 0 = any free port)")
    p.add_argument("--allowed-calling-aes", help="comma-separated calling AE titles accepted (default any)")
    p.add_argument("--spool", dest="spool_dir", help="spool folder (default ./dqe-spool)")
    p.add_argument(
        "--quiet-s", type=float, help="seconds without a new instance before a study is scored (10)"
    )
    p.add_argument("--dest", metavar="HOST:PORT", help="where the SR/KOS are sent (C-STORE)")
    p.add_argument("--dest-ae", help="the destination's AE title (default PACS)")
    for name in ("max_instances_per_study", "max_bytes_per_study", "max_instances_per_association",
                 "max_bytes_per_association", "metrics_port"):  # fmt: skip
        p.add_argument("--" + name.replace("_", "-"), type=int, dest=name)
    for name in ("tls_cert", "tls_key", "tls_ca", "series_rules", "segment_map", "model_id", "precision",
                 "log_format", "log_level"):  # fmt: skip
        p.add_argument("--" + name.replace("_", "-").replace("model-id", "model"), dest=name)
    p.add_argument("--threads", dest="intra_op_threads", type=int, help="inference threads (0 = all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cli = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(DicomNodeConfig)}
        if args.dest:
            host, _, port = args.dest.rpartition(":")
            cli["dest_host"], cli["dest_port"] = host, port
        config = DicomNodeConfig.from_sources(cli)
        from dqe.models.dicom import require_dicom  # lazy: the node is the dicom extra's

        require_dicom("dqe dicom-node")
        from dqe.service.dicom_node.node import DicomNode  # lazy: pynetdicom is the dicom extra
        from dqe.service.engine import Engine  # lazy: onnxruntime loads when the node runs
        from dqe.service.serving.server import configure_logging  # lazy: the server's log format, when run

        configure_logging(config.log_format, config.log_level)

        node = DicomNode(config, Engine(config.engine_config()))
        port = node.start()
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID
    print_json({"ae_title": config.ae_title, "host": config.host, "port": port, "spool": config.spool_dir})
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    node.stop()
    return 0
