"""``--server`` targets: one address, a comma-separated list (static ``ipv4:``/``ipv6:``) or a resolver name (``dns:///``), and the round_robin service config."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

from dqe.models.errors import InvalidInput

logger = logging.getLogger(__name__)

RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")
SERVICE_NAME = "dqe.v1.QualityEstimation"


@dataclass(frozen=True)
class ChannelTarget:
    """What a ``--server`` value becomes: the gRPC target, its TLS authority and whether it names replicas.

    Attributes:
        target: the gRPC channel target (``host:port``, ``ipv4:a:p,b:p``, ``ipv6:[a]:p,...``, ``dns:///...``).
        authority: the ``:authority`` / TLS name to use, or ``None`` for gRPC's default.
        balanced: several replicas were named (a list or a resolver scheme), so health checking is on.
    """

    target: str
    authority: str | None = None
    balanced: bool = False


def _split_host_port(entry: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port).

    Raises:
        InvalidInput: no port, or a port outside 1-65535 (field ``server``).
    """
    host, sep, port_text = entry.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(
            f"server target {entry!r} is not HOST:PORT (port 1-65535); several targets are comma-separated",
            field="server",
        )
    return host.strip("[]"), int(port_text)


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def channel_target(server: str) -> ChannelTarget:
    """The gRPC target for ``server``: one ``host:port``, a comma-separated list of them, or a resolver URI.

    * ``host:port``: passed through (gRPC's DNS resolver; ``round_robin`` spreads calls over every address the
      name resolves to, pick-first behaviour for a single address).
    * ``a:p1,b:p2,...``: a static list, written as gRPC's ``ipv4:`` (or ``ipv6:``) target. Host names in the
      list are resolved once, here (IPv4 addresses preferred); use ``dns:///name:port`` for a name whose
      addresses change (gRPC re-resolves it when a connection fails). The first entry is the ``:authority``:
      with TLS every replica must present a certificate for it (or give ``server_name``).
    * ``dns:///name:port``, ``ipv4:...``, ``ipv6:...``, ``unix:...``: passed through.

    Raises:
        InvalidInput: empty entries, a missing port, a name that does not resolve (field ``server``).
    """
    server = server.strip()
    if not server:
        raise InvalidInput("server target is empty; expected HOST:PORT[,HOST:PORT...]", field="server")
    if server.startswith(RESOLVER_SCHEMES):
        return ChannelTarget(server, balanced=not server.startswith("unix"))
    entries = [e.strip() for e in server.split(",")]
    if any(not e for e in entries):
        raise InvalidInput(f"server target list {server!r} has an empty entry", field="server")
    if len(entries) == 1:
        _split_host_port(entries[0])
        return ChannelTarget(entries[0])
    parsed = [_split_host_port(e) for e in entries]
    v4: list[str] = []
    v6: list[str] = []
    for host, port in parsed:
        ip = _literal_ip(host)
        if ip is not None:
            (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise InvalidInput(f"server {host!r} does not resolve ({exc})", field="server") from None
        found4 = sorted({f"{i[4][0]}:{port}" for i in infos if i[0] == socket.AF_INET})
        if found4:
            v4.extend(found4)
        else:
            v6.extend(sorted({f"[{i[4][0]}]:{port}" for i in infos if i[0] == socket.AF_INET6}))
    if v4 and v6:
        raise InvalidInput(
            f"server list {server!r} mixes IPv4 {v4} and IPv6 {v6} addresses; gRPC's static list takes one family",
            field="server",
        )
    scheme, addresses = ("ipv4", v4) if v4 else ("ipv6", v6)
    # The first entry is the :authority and the name TLS verifies on every replica (gRPC's default for a
    # static list is the whole list, which no certificate names).
    return ChannelTarget(f"{scheme}:{','.join(addresses)}", authority=entries[0], balanced=True)


def service_config(health_checked: bool) -> str:
    """The channel's service config JSON: ``round_robin``, plus client-side health checking if asked."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_checked:
        config["healthCheckConfig"] = {"serviceName": SERVICE_NAME}
    return json.dumps(config)
