"""``dqe serve``: run the gRPC quality-estimation server until SIGTERM / SIGINT, then drain.

Every flag is generated from a :class:`dqe.service.settings.ServerConfig` field (its doc, default and ``DQE_*``
variable); flags win over the environment, the environment over defaults.
"""

from __future__ import annotations

import argparse

from dqe.models.artifacts import find_model, model_home
from dqe.models.errors import DQEError
from dqe.service.commands.common import EXIT_INVALID, error_payload, print_json
from dqe.service.settings import ServerConfig, add_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC server (health, reflection, TLS, metrics, dynamic batching)",
        description="Serve dqe.v1.QualityEstimation over gRPC. Flags override DQE_* environment variables. "
        "Exit 0 after a clean drain, 2 on bad configuration or when the model cannot be loaded.",
    )
    add_flags(p, ServerConfig)  # one flag per ServerConfig field: its doc, default and DQE_* name
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys
    import threading

    from dqe.models.qc.alpha import (  # lazy: the gate's calibration (scipy) loads when the command runs: `dqe --help` stays instant
        with_alpha,
    )
    from dqe.service.serving.server import (  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        configure_logging,
        create_server,
    )

    try:
        config = ServerConfig.from_sources(
            {k: v for k, v in vars(args).items() if k not in ("func", "command")}
        )
        with_alpha(config.alpha)  # DQE_ALPHA below the calibration's 1/(n+1) stops the server at start-up
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
