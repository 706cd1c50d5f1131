"""Endpoint strings and host:port shorthands, parsed once at start-up."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint

from switchyard.interfaces import OptionError

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")
_ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "unix", "ssl", "tls", "systemd", "tor", "onion"})


def split_host_port(value: str) -> tuple[str, int] | None:
    """``host:port`` / ``[v6]:port`` shorthand, or None for an endpoint string."""
    m = _HOST_PORT.match(value)
    if m is None:
        return None
    host = m.group("v6") or m.group("host") or ""
    port = int(m.group("port"))
    if host.lower() in _ENDPOINT_TYPES or not 0 < port < 65536:
        return None
    return host, port


def client_endpoint(key: str, value: Any, reactor: Any, timeout: float) -> IStreamClientEndpoint:
    """A server of a backend: ``host:port`` (any name, resolved at each
    connect, IPv4 and IPv6) or a Twisted client endpoint string."""
    from twisted.internet.endpoints import HostnameEndpoint, clientFromString

    if not isinstance(value, str) or not value:
        raise OptionError(key, "must be 'host:port' or an endpoint string like "
                               "'tcp:host=H:port=P'")
    hp = split_host_port(value)
    if hp is not None:
        host, port = hp
        if not host:
            raise OptionError(key, f"{value!r} has no host")
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    try:
        return clientFromString(reactor, value)
    except Exception as e:
        raise OptionError(key, f"bad endpoint {value!r}: {e}")


def server_endpoint_string(value: str) -> str:
    """Expand ``IP:port``, ``[v6]:port`` and ``port`` to Twisted's syntax."""
    hp = split_host_port(value)
    if hp is not None:
        host, port = hp
        if not host:
            return f"tcp:{port}"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return value  # not an address: let the endpoint parser judge it
        iface = str(ip).replace(":", "\\:")
        return f"tcp{'6' if ip.version == 6 else ''}:{port}:interface={iface}"
    if value.isdigit():
        return f"tcp:{value}"
    return value


def server_endpoint(key: str, value: str, reactor: Any) -> IStreamServerEndpoint:
    from twisted.internet.endpoints import serverFromString

    description = server_endpoint_string(value)
    try:
        return serverFromString(reactor, description)
    except Exception as e:
        raise OptionError(key, f"bad listen endpoint {description!r}: {e}")
