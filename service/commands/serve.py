"""``dqe serve``: run the gRPC quality-estimation server until SIGTERM / SIGINT, then drain.

Every flag has a ``DQE_*`` environment variable (see :mod:`dqe.service.settings`); flags win over the environment,
the environment over defaults.
"""

from __future__ import annotations

import argparse

from dqe.models.artifacts import find_model, model_home
from dqe.models.errors import DQEError
from dqe.service.commands.common import EXIT_INVALID, error_payload, print_json
from dqe.service.settings import ServerConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC server (health, reflection, TLS, metrics, dynamic batching)",
        description="Serve dqe.v1.QualityEstimation over gRPC. Flags override DQE_* environment variables. "
        "Exit 0 after a clean drain, 2 on bad configuration or when the model cannot be loaded.",
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", help="interface to bind (env DQE_HOST, default 0.0.0.0)")
    net.add_argument("--port", type=int, help="gRPC port, 0 = any free port (env DQE_PORT, default 50051)")
    net.add_argument(
        "--port-file", help="write the bound port to this file once listening (env DQE_PORT_FILE)"
    )
    net.add_argument(
        "--max-message-mb",
        type=int,
        help="largest request/response in MiB (env DQE_MAX_MESSAGE_MB, default 64)",
    )
    net.add_argument(
        "--handler-threads", type=int, help="gRPC handler threads (env DQE_HANDLER_THREADS, default 160)"
    )
    net.add_argument(
        "--control-threads",
        type=int,
        help="threads for health and GetModelInfo only (env DQE_CONTROL_THREADS, default 4)",
    )
    net.add_argument(
        "--max-concurrent-rpcs", type=int, help="calls beyond this get RESOURCE_EXHAUSTED (default 512)"
    )
    net.add_argument(
        "--grace-s",
        type=float,
        help="seconds to drain in-flight calls on SIGTERM (env DQE_GRACE_S, default 30)",
    )
    net.add_argument(
        "--max-call-s",
        type=float,
        help="longest processing time of one call, with or without a client deadline; 0 = none "
        "(env DQE_MAX_CALL_S, default 600)",
    )
    net.add_argument(
        "--no-reflection",
        dest="reflection",
        action="store_const",
        const=False,
        help="disable server reflection",
    )
    sec = p.add_argument_group("security")
    sec.add_argument("--tls-cert", help="PEM server certificate chain (env DQE_TLS_CERT)")
    sec.add_argument("--tls-key", help="PEM server private key (env DQE_TLS_KEY)")
    sec.add_argument(
        "--tls-client-ca", help="PEM CA for client certificates: enables mutual TLS (env DQE_TLS_CLIENT_CA)"
    )
    sec.add_argument(
        "--token-file",
        help="file holding the bearer token clients must send (env DQE_TOKEN_FILE; or DQE_TOKEN)",
    )
    sec.add_argument(
        "--allowed-root",
        dest="allowed_roots",
        action="append",
        metavar="DIR",
        help="folder server-side paths may be read from; repeatable (env DQE_ALLOWED_ROOTS, os.pathsep-separated)",
    )
    bat = p.add_argument_group("batching")
    bat.add_argument(
        "--max-batch-size", type=int, help="views per inference batch (env DQE_MAX_BATCH_SIZE, default 24)"
    )
    bat.add_argument(
        "--max-queue-delay-ms",
        type=float,
        help="wait for a batch to fill (env DQE_MAX_QUEUE_DELAY_MS, default 5)",
    )
    bat.add_argument(
        "--max-queue",
        type=int,
        help="views waiting before RESOURCE_EXHAUSTED (env DQE_MAX_QUEUE, default 768)",
    )
    bat.add_argument(
        "--batch-workers", type=int, help="concurrent inference batches (env DQE_BATCH_WORKERS, default 1)"
    )
    bat.add_argument(
        "--decode-workers", type=int, help="threads decoding NIfTI (env DQE_DECODE_WORKERS, default 2)"
    )
    lim = p.add_argument_group("limits")
    lim.add_argument(
        "--max-pending-decodes",
        type=int,
        help="ScoreCase calls waiting for or in decoding before RESOURCE_EXHAUSTED "
        "(env DQE_MAX_PENDING_DECODES, default 64)",
    )
    lim.add_argument(
        "--max-receiving",
        type=int,
        help="ScoreCase calls whose request body is received and held at once; other admitted calls wait "
        "unread, their bodies held back by HTTP/2 flow control (env DQE_MAX_RECEIVING, default 4)",
    )
    lim.add_argument(
        "--max-receiving-views",
        type=int,
        help="ScoreViews calls whose request is received and held at once; the others wait unread "
        "(env DQE_MAX_RECEIVING_VIEWS, default 16)",
    )
    lim.add_argument(
        "--receive-lease-s",
        type=float,
        help="a ScoreCase whose request has not arrived this long after its receiving slot was granted gives "
        "the slot to the next call (env DQE_RECEIVE_LEASE_S, default 30)",
    )
    lim.add_argument(
        "--max-pending-mb",
        type=int,
        help="MiB of ScoreCase requests waiting for or in decoding before RESOURCE_EXHAUSTED "
        "(env DQE_MAX_PENDING_MB, default 768)",
    )
    lim.add_argument(
        "--decode-budget-mb",
        type=int,
        help="MiB of inflated NIfTI held by calls being decoded, server-wide (env DQE_DECODE_BUDGET_MB, "
        "default 1024)",
    )
    lim.add_argument(
        "--max-volume-voxels",
        type=int,
        help="voxels per volume, checked from the header (env DQE_MAX_VOLUME_VOXELS, default 33554432)",
    )
    lim.add_argument(
        "--max-grid-side", type=int, help="longest case grid axis (env DQE_MAX_GRID_SIDE, default 512)"
    )
    lim.add_argument(
        "--max-view-side", type=int, help="largest ScoreViews H/W (env DQE_MAX_VIEW_SIDE, default 512)"
    )
    lim.add_argument(
        "--max-streams", type=int, help="concurrent ScoreBatch streams (env DQE_MAX_STREAMS, default 64)"
    )
    lim.add_argument(
        "--stream-idle-s",
        type=float,
        help="end a ScoreBatch stream idle this long (env DQE_STREAM_IDLE_S, default 60)",
    )
    bat.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_const",
        const=False,
        help="report SERVING without a warm-up batch",
    )
    eng = p.add_argument_group("engine")
    eng.add_argument("--model", dest="model_id", help="model id (env DQE_MODEL, default the reference model)")
    eng.add_argument(
        "--providers", help="comma-separated: auto, tensorrt, cuda, cpu (env DQE_PROVIDERS, default auto)"
    )
    eng.add_argument(
        "--precision", help="fp32 (default, reference parity), bf16, fp16 or auto (env DQE_PRECISION)"
    )
    eng.add_argument("--backend", help="auto, onnxruntime or openvino (env DQE_BACKEND, default auto)")
    eng.add_argument(
        "--threads",
        dest="intra_op_threads",
        type=int,
        help="intra-op threads, 0 = all cores (env DQE_THREADS)",
    )
    obs = p.add_argument_group("observability")
    obs.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics port, 0 = free port, -1 = off (default 9464)"
    )
    obs.add_argument("--metrics-host", help="interface for /metrics (env DQE_METRICS_HOST, default 0.0.0.0)")
    obs.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="log lines on stderr (env DQE_LOG_FORMAT, default json)",
    )
    obs.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (env DQE_LOG_LEVEL, default INFO)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys
    import threading

    from dqe.service.serving.server import (  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        configure_logging,
        create_server,
    )

    try:
        config = ServerConfig.from_sources(
            {k: v for k, v in vars(args).items() if k not in ("func", "command")}
        )
    except DQEError as exc:
        print_json(error_payload(exc))
        return EXIT_INVALID

    try:
        found = find_model(config.model_id)
    except DQEError as exc:  # a model directory that fails its checksum
        found, problem = None, exc.message
    else:
        problem = f"model {config.model_id!r} is not built in {str(model_home())!r}"
    if found is None:
        # The server never exports (that would load torch into it): one line saying how to build the model.
        sys.stderr.write(
            f"dqe serve: {problem}; build it with `dqe model export --model {config.model_id}` "
            "(needs `pip install 'dqe-service[export]'`) or point DQE_HOME at a model home that has it\n"
        )
        return EXIT_INVALID
    configure_logging(config.log_format, config.log_level)
    log = logging.getLogger("dqe.service.commands.serve")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name, extra={"event": "signal"})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server, _port = create_server(config)
    except DQEError as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed", "field": exc.field})
        return EXIT_INVALID
    # Wait for warm-up or a signal, whichever comes first; a failed model load ends the process.
    while not stop.is_set() and not server.wait_ready(timeout=0.2):
        if server.failed is not None:
            server.stop(grace=0)
            return EXIT_INVALID
    stop.wait()
    server.stop()
    return 0
