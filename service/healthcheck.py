"""A gRPC health probe: ``python -m dqe.service.healthcheck`` exits 0 when the server reports SERVING, else 1.

Used by the Docker ``HEALTHCHECK`` (and usable as a Kubernetes exec probe). The target defaults to
``127.0.0.1:$DQE_PORT``; TLS settings default to the server's own ``DQE_TLS_*`` variables, so the probe works
inside the container whatever the server's configuration: with TLS it trusts ``DQE_HEALTHCHECK_CA`` (or the
server's own certificate) and, with mutual TLS, presents ``DQE_HEALTHCHECK_CERT``/``_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="python -m dqe.service.healthcheck", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--target", default=env.get("DQE_HEALTHCHECK_TARGET") or f"127.0.0.1:{env.get('DQE_PORT') or 50051}"
    )
    p.add_argument("--service", default="", help="service name to check (default: the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    p.add_argument("--tls-ca", default=env.get("DQE_HEALTHCHECK_CA") or env.get("DQE_TLS_CERT") or None)
    p.add_argument("--tls-cert", default=env.get("DQE_HEALTHCHECK_CERT") or None)
    p.add_argument("--tls-key", default=env.get("DQE_HEALTHCHECK_KEY") or None)
    p.add_argument("--server-name", default=env.get("DQE_HEALTHCHECK_SERVER_NAME") or None)
    p.add_argument("--plaintext", action="store_true", help="ignore the TLS settings")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.tls_ca and not args.plaintext:
        with open(args.tls_ca, "rb") as fh:
            ca = fh.read()
        key = cert = None
        if args.tls_cert and args.tls_key:
            with open(args.tls_cert, "rb") as fh:
                cert = fh.read()
            with open(args.tls_key, "rb") as fh:
                key = fh.read()
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as err:
            sys.stderr.write(f"{args.target}: {err.code().name} {err.details()}\n")  # type: ignore[attr-defined]
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    sys.stdout.write(f"{args.target}: {status}\n")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
