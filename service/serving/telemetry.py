"""Prometheus metrics of one server, in their own registry (several servers can live in one process).

Exposed on an HTTP port as ``/metrics`` by :meth:`Metrics.serve`.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class Metrics:
    """Counters and histograms for requests, batches and the queue."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dqe_requests", "gRPC calls by method and status code", ["method", "code"], registry=r
        )
        self.errors = Counter(
            "dqe_errors", "failed gRPC calls by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "dqe_request_latency_seconds",
            "server-side call latency",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("dqe_in_flight_requests", "calls being handled", registry=r)
        self.batch_size = Histogram(
            "dqe_batch_size_views", "views per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_time = Histogram(
            "dqe_queue_wait_seconds",
            "time a request's views waited for a batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "dqe_inference_seconds", "time one inference batch took", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("dqe_queue_views", "views waiting for inference", registry=r)
        self.dropped = Counter("dqe_dropped", "requests dropped before inference", ["reason"], registry=r)
        self.ready = Gauge("dqe_ready", "1 once the model is loaded and warmed up", registry=r)
        self._http: Any = None

    def observe_batch(self, size: int, waits_s: list[float], run_s: float) -> None:
        """The :data:`dqe.service.serving.batcher.BatchObserver` hook."""
        self.batch_size.observe(size)
        self.inference_time.observe(run_s)
        for w in waits_s:
            self.queue_time.observe(w)

    def serve(self, host: str, port: int) -> int:
        """Start the ``/metrics`` HTTP server in a daemon thread; returns the bound port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        bound = int(server.server_port)
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
