"""The gRPC server side: server lifecycle, thin servicer, interceptor, dynamic batcher, Prometheus telemetry."""
