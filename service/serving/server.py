"""The gRPC server: the servicer plus health, reflection, TLS, auth, metrics, warm-up and a clean drain.

``create_server(config, engine=None) -> (server, port)`` binds, starts listening at once (health answers
NOT_SERVING) and loads and warms the model in a background thread; health turns SERVING after the warm-up
batch ran. ``server.stop(grace)`` turns health NOT_SERVING, refuses new calls, lets in-flight calls finish
within ``grace`` seconds, then stops the batcher. Serving never imports torch.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dqe.models.artifacts import ensure_model
from dqe.models.buffers import BufferPool
from dqe.models.errors import InvalidInput
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from dqe.service.engine import Engine
from dqe.service.hardware import Hardware, detect
from dqe.service.serving.batcher import DynamicBatcher
from dqe.service.serving.interceptor import REQUEST_ID, ServiceInterceptor
from dqe.service.serving.paths import PathPolicy
from dqe.service.serving.policy import check_table, service_methods
from dqe.service.serving.runtime import DecodeBudget, Runtime, Slots
from dqe.service.serving.servicer import SERVICE_NAME, QualityEstimationServicer
from dqe.service.serving.telemetry import Metrics
from dqe.service.settings import ServerConfig

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DQEServer:
    """A running DQE gRPC server (made by :func:`create_server`)."""

    def __init__(self, config: ServerConfig, engine: Engine | None = None) -> None:
        self.config = config
        # Probe the hardware (imports OpenVINO when installed, with its telemetry off) before any gRPC object
        # exists: gRPC does not support fork() once its threads run, and the probe used to run in the warm-up
        # thread after start(). Cached, so the engine and GetModelInfo reuse it.
        self.hardware = probe_hardware()
        self.metrics = Metrics()
        # Health Check and GetModelInfo run on this pool (see the interceptor), never behind scoring calls.
        self.control_pool = ThreadPoolExecutor(
            max_workers=config.control_threads, thread_name_prefix="dqe-control"
        )
        # Refusals (overloaded, unauthenticated) run here: they never read the request and take milliseconds,
        # so a burst of them neither waits behind nor holds the handler threads admitted calls use.
        self.refusal_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dqe-refuse")
        self.health = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=ThreadPoolExecutor(max_workers=2)
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, NOT_SERVING)
        self.runtime = Runtime(
            config=config,
            decode_pool=ThreadPoolExecutor(
                max_workers=config.decode_workers, thread_name_prefix="dqe-decode"
            ),
            paths=PathPolicy(config.allowed_roots),
            budget=DecodeBudget(config.decode_budget_bytes),
            pending=DecodeBudget(
                config.max_pending_mb * 1024 * 1024, "ScoreCase requests pending", "max_pending_mb"
            ),
            decodes=Slots(config.max_pending_decodes, "ScoreCase decodes pending", "max_pending_decodes"),
            receiving=Slots(config.max_receiving, "ScoreCase requests received", "max_receiving"),
            receiving_views=Slots(
                config.max_receiving_views, "ScoreViews requests received", "max_receiving_views"
            ),
            streams=Slots(config.max_streams, "ScoreBatch streams", "max_streams"),
            buffers=BufferPool(config.decode_budget_bytes, idle_s=BUFFER_IDLE_S),
        )
        self._engine = engine
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._done = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.metrics_port: int | None = None
        self.grpc_server = grpc.server(
            ThreadPoolExecutor(max_workers=config.handler_threads, thread_name_prefix="dqe-grpc"),
            interceptors=[
                ServiceInterceptor(
                    token=config.bearer_token(),
                    metrics=self.metrics,
                    control_pool=self.control_pool,
                    max_scoring_calls=config.max_scoring_calls,
                    max_calls=config.max_concurrent_rpcs,
                    admission=self.runtime.admit,
                    refusal_pool=self.refusal_pool,
                    turn=self.runtime.turn,
                )
            ],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.http2.bdp_probe", 0),
                *connection_age_options(config),
            ],
            # No maximum_concurrent_rpcs: gRPC's limit refuses health checks too; the interceptor enforces
            # config.max_concurrent_rpcs on every call but the control methods.
            maximum_concurrent_rpcs=None,
        )
        pb_grpc.add_QualityEstimationServicer_to_server(
            QualityEstimationServicer(self.runtime), self.grpc_server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        services = [
            pb.DESCRIPTOR.services_by_name["QualityEstimation"],
            health_pb2.DESCRIPTOR.services_by_name["Health"],
        ]
        if config.reflection:
            from grpc_reflection.v1alpha import reflection, reflection_pb2

            names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.grpc_server)
            services.append(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
        # Every registered RPC must have an entry in the method-policy table: a missing one fails here, at start-up.
        check_table(m for service in services for m in service_methods(service))
        self.port = self._bind()

    # ------------------------------------------------------------------ lifecycle
    def _bind(self) -> int:
        cfg = self.config
        address = cfg.address
        if cfg.tls:
            creds = grpc.ssl_server_credentials(
                [(_read(cfg.tls_key, "tls_key"), _read(cfg.tls_cert, "tls_cert"))],
                root_certificates=_read(cfg.tls_client_ca, "tls_client_ca") if cfg.tls_client_ca else None,
                require_client_auth=bool(cfg.tls_client_ca),
            )
            port = self.grpc_server.add_secure_port(address, creds)
        else:
            port = self.grpc_server.add_insecure_port(address)
        if port == 0:
            raise InvalidInput(f"cannot bind {address} (in use or not a local address)", field="port")
        return int(port)

    def start(self) -> None:
        """Start serving (health NOT_SERVING) and load + warm up the model in the background."""
        return_memory_eagerly()
        threading.Thread(
            target=trim_memory_forever,
            args=(self._stopped, self.runtime.buffers),
            name="dqe-malloc-trim",
            daemon=True,
        ).start()
        self.grpc_server.start()
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        if self.config.port_file:
            Path(self.config.port_file).write_text(f"{self.port}\n")
        logger.info(
            "listening on %s:%d (%s)",
            self.config.host,
            self.port,
            "mTLS" if self.config.tls_client_ca else "TLS" if self.config.tls else "plaintext",
            extra={"event": "listening", "port": self.port, "metrics_port": self.metrics_port},
        )
        threading.Thread(target=self._load_and_warm, name="dqe-warmup", daemon=True).start()

    def _load_and_warm(self) -> None:
        try:
            engine = self._engine
            if engine is None:
                # Never export here: that would import torch into the server (``dqe serve`` checks first).
                artifacts = ensure_model(self.config.model_id, build=False)
                engine = Engine(self.config.engine_config(), artifacts=artifacts)
            batcher = DynamicBatcher(
                engine.run,
                max_batch_size=self.config.max_batch_size,
                max_queue_delay_s=self.config.max_queue_delay_ms / 1e3,
                max_queue=self.config.max_queue,
                workers=self.config.batch_workers,
                observer=self.metrics.observe_batch,
                on_drop=lambda reason: self.metrics.dropped.labels(reason).inc(),
            )
            if self.config.warmup:
                self._warm_up(engine)
            self.runtime.engine, self.runtime.batcher = engine, batcher
        except BaseException as exc:
            self.failed = exc
            logger.error(
                "model load / warm-up failed: %s", exc, exc_info=exc, extra={"event": "warmup_failed"}
            )
            self._done.set()
            return
        with self._stop_lock:
            if not self._stopped.is_set():
                for name in ("", SERVICE_NAME):
                    self.health.set(name, SERVING)
                self.metrics.ready.set(1)
        self.ready.set()
        self._done.set()

    def _warm_up(self, engine: Engine) -> None:
        """Run the batch sizes the server will see first (the engine's static sizes on accelerators, else a
        case of 3 views), so the first real request does not pay for session or TensorRT engine builds."""
        t0 = time.perf_counter()
        warm = getattr(engine, "warmup", None)
        if callable(warm):
            warm()
        else:
            contract = engine.contract
            engine.run(
                np.zeros((len(contract.views), contract.n_channels, *contract.spatial_size), dtype=np.float32)
            )
        logger.info("warm-up took %.0f ms", (time.perf_counter() - t0) * 1e3, extra={"event": "warmup"})

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model is warm (True) or loading failed / timed out (False; see ``failed``)."""
        self._done.wait(timeout)
        return self.ready.is_set()

    def health_status(self) -> str:
        """What the health service reports for this server: ``SERVING`` or ``NOT_SERVING``."""
        return "SERVING" if self.ready.is_set() and not self._stopped.is_set() else "NOT_SERVING"

    def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new calls, finish in-flight ones within ``grace`` s, then stop."""
        grace = self.config.grace_s if grace is None else grace
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            self.health.enter_graceful_shutdown()
            self.metrics.ready.set(0)
        logger.info("draining (grace %.1f s)", grace, extra={"event": "draining"})
        t0 = time.perf_counter()
        self.grpc_server.stop(grace).wait()
        if self.runtime.batcher is not None:
            self.runtime.batcher.close(timeout=max(grace, 1.0))
        self.runtime.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.control_pool.shutdown(wait=False, cancel_futures=True)
        self.refusal_pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.shutdown()
        logger.info("stopped after %.2f s", time.perf_counter() - t0, extra={"event": "stopped"})

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self.grpc_server.wait_for_termination(timeout))


def connection_age_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC channel options that send a GOAWAY to connections older than ``max_connection_age_s`` and close them
    ``max_connection_age_grace_s`` later (none when the age is 0)."""
    if config.max_connection_age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1e3)),
        ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1e3)),
    ]


BUFFER_IDLE_S = 2.0  # decode buffers unused this long leave the process (warm RSS at rest stays low)
M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024


def _libc() -> Any:
    """The C library already loaded in this process (glibc on Linux), or ``None``.

    ``ctypes.CDLL(None)`` resolves symbols in the running process; ``ctypes.util.find_library`` is avoided
    because it runs ``ldconfig -p`` in a subprocess, a fork once gRPC's threads run (tests/test_forks.py).
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - probe the symbol: musl and others have no mallopt
    except (OSError, AttributeError):
        return None
    return libc


def return_memory_eagerly() -> bool:
    """Make glibc give large buffers back to the OS when they are freed (Linux/glibc only; else a no-op).

    glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after which request
    buffers of 1-32 MiB come from per-thread arenas and stay resident after the request failed. A fixed 1 MiB
    threshold keeps every such buffer in its own mapping, unmapped on free.

    Returns:
        Whether the setting was applied.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        ok = bool(libc.mallopt(M_TRIM_THRESHOLD, 4 * MMAP_THRESHOLD_BYTES)) and ok
    except (OSError, AttributeError):
        return False
    logger.debug("glibc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD_BYTES, ok)
    return ok


def trim_memory_forever(stop: threading.Event, pool: BufferPool | None = None, every_s: float = 1.0) -> None:
    """Every ``every_s`` seconds, drop the decode buffers idle for :data:`BUFFER_IDLE_S` and hand the free pages
    of glibc's heaps back to the OS (``malloc_trim(0)``, a few ms), so memory freed after a burst of requests
    leaves the process instead of staying resident in the pool or in the per-thread arenas of the handler
    threads that received them."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    while not stop.wait(every_s):
        if pool is not None:
            pool.trim()
        if trim is not None:
            trim(0)


def probe_hardware() -> Hardware:
    """The cached :func:`dqe.service.hardware.detect` result, probed now (before gRPC starts)."""
    t0 = time.perf_counter()
    hw = detect()
    logger.info(
        "hardware probed in %.0f ms (openvino %s)",
        (time.perf_counter() - t0) * 1e3,
        hw.openvino or "absent",
        extra={"event": "hardware", "hardware": hw.summary()},
    )
    return hw


def create_server(config: ServerConfig, engine: Engine | None = None) -> tuple[DQEServer, int]:
    """Build, bind and start a server; the model loads and warms up in the background.

    Args:
        config: server settings.
        engine: an already loaded engine (tests, embedding); ``None`` loads ``config``'s model.

    Returns:
        The running server and the bound port (useful with ``port=0``).

    Raises:
        InvalidInput: the address cannot be bound, or TLS files cannot be read.
    """
    server = DQEServer(config, engine)
    server.start()
    return server, server.port


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{field} file {path!r} cannot be read ({exc})", field=field) from exc


# ---------------------------------------------------------------------------------------------- logging
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the call being handled in this thread) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Entry-point logging for ``dqe serve``: JSON (or text) lines on stderr with request ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
