"""Endpoint strings and host:port shorthands, parsed once at start-up."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

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
    if not isinstance(value, str) or not value:
        raise OptionError(key, "must be 'host:port' or an endpoint string like "
                               "'tcp:host=H:port=P'")
    hp = split_host_port(value)
    if hp is not None:
        host, port = hp
        if not host:
            raise OptionError(key, f"{value!r} has no host")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return HostnameEndpoint(reactor, host, port, timeout=timeout)
        # An address needs no resolution: HostnameEndpoint would still send
        # it through getaddrinfo in a thread on every connect.
        if ip.version == 4:
            return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    try:
        return clientFromString(reactor, value)
    except Exception as e:
        raise OptionError(key, f"bad endpoint {value!r}: {e}")


def ip_socket_address(value: str) -> tuple[int, tuple[str, int]] | None:
    """``IP:port`` / ``[v6]:port`` as (address family, sockaddr); None for anything else."""
    hp = split_host_port(value)
    if hp is None:
        return None
    host, port = hp
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), (str(ip), port)


# The accept queue of the short forms: a burst of new connections waits in
# it rather than having its SYNs dropped (a client retries after 1 s).
# Twisted's own default is 50; the kernel caps it at net.core.somaxconn
# (4096 since Linux 5.4), as nginx's 511 and HAProxy's maxconn are.
BACKLOG = 4096


def server_endpoint_string(value: str) -> str:
    """Expand ``IP:port``, ``[v6]:port`` and ``port`` to Twisted's syntax
    (with a L{BACKLOG} accept queue); anything else is left as written."""
    hp = split_host_port(value)
    if hp is not None:
        host, port = hp
        if not host:
            return f"tcp:{port}:backlog={BACKLOG}"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return value  # not an address: let the endpoint parser judge it
        iface = str(ip).replace(":", "\\:")
        return f"tcp{'6' if ip.version == 6 else ''}:{port}:interface={iface}:backlog={BACKLOG}"
    if value.isdigit():
        return f"tcp:{value}:backlog={BACKLOG}"
    return value


def server_endpoint(key: str, value: str, reactor: Any) -> IStreamServerEndpoint:
    description = server_endpoint_string(value)
    if description.startswith("systemd:"):
        return SystemdEndpoint.parse(key, description, reactor)
    try:
        return serverFromString(reactor, description)
    except Exception as e:
        raise OptionError(key, f"bad listen endpoint {description!r}: {e}")


@implementer(IStreamServerEndpoint)
class SystemdEndpoint:
    """A listening socket passed by systemd's socket activation
    (``systemd:domain=INET:index=0`` or ``systemd:domain=INET6:name=web``).

    The string is checked when the config is read; the socket is looked up
    only when listening, so ``--check`` works outside systemd and a missing
    socket is a clear start-up error.
    """

    def __init__(self, reactor: Any, family: int, index: int | None, name: str | None,
                 description: str) -> None:
        self.reactor = reactor
        self.family = family
        self.index = index
        self.name = name
        self.description = description

    @classmethod
    def parse(cls, key: str, description: str, reactor: Any) -> SystemdEndpoint:
        usage = (f"bad listen endpoint {description!r}: expected "
                 "'systemd:domain=INET|INET6|UNIX:index=N' or "
                 "'systemd:domain=...:name=NAME' (the socket unit's FileDescriptorName)")
        fields: dict[str, str] = {}
        for part in description.split(":")[1:]:
            field, equals, value = part.partition("=")
            if not equals or field not in ("domain", "index", "name") or field in fields:
                raise OptionError(key, usage)
            fields[field] = value
        domain, index, name = fields.get("domain"), fields.get("index"), fields.get("name")
        if (domain not in ("INET", "INET6", "UNIX") or (index is None) == (name is None)
                or (index is not None and not index.isdigit()) or name == ""):
            raise OptionError(key, usage)
        return cls(reactor, getattr(socket, "AF_" + str(domain)),
                   None if index is None else int(index), name, description)

    def listen(self, factory: Any) -> Any:
        # Twisted's own systemd parser holds the inherited descriptors (it
        # reads LISTEN_FDS once, when twisted.internet.endpoints is imported).
        try:
            endpoint = serverFromString(self.reactor, self.description)
        except (IndexError, KeyError):
            which = f"named {self.name!r}" if self.name is not None else f"number {self.index}"
            return defer.fail(CannotListenError(None, self.description, OSError(
                f"systemd passed no socket {which}: start switchyard from its .socket unit "
                "(or systemd-socket-activate), or listen on an address")))
        return endpoint.listen(factory)


def listen_now(endpoint: IStreamServerEndpoint, factory: Any) -> Any:
    """Listen on ``endpoint`` at once and return the port, or raise what stops
    it: TCP, UNIX and inherited sockets listen synchronously, so a service
    binds in its privilegedStartService (before privileges drop) and a port
    in use stops start-up there."""
    results: list[Any] = []
    endpoint.listen(factory).addBoth(results.append)
    if not results:
        raise CannotListenError(None, str(endpoint), OSError("did not listen at once"))
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def tls_client_endpoint(reactor: Any, inner: IStreamClientEndpoint, *, server_name: str,
                        verify: bool = True, ca_file: str | None = None) -> IStreamClientEndpoint:
    """Originate TLS over ``inner``: SNI ``server_name``; the certificate checked
    against ``ca_file`` (else the system's roots) and the name by service-identity.

    ``verify=False`` is the explicit opt-out for self-signed test backends:
    the name is still sent, nothing is checked.
    """
    if verify:
        trust = None
        if ca_file is not None:
            with open(ca_file, "rb") as f:
                pems = f.read()
            certificates = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                            for part in pems.split(b"-----BEGIN CERTIFICATE-----")[1:]]
            trust = ssl.trustRootFromCertificates(certificates)
        creator: Any = ssl.optionsForClientTLS(server_name, trust)
    else:
        creator = _UnverifiedClientTLS(server_name)
    return wrapClientTLS(creator, inner)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """An IOpenSSLClientConnectionCreator that sends SNI and verifies nothing."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name.encode("idna")
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.set_min_proto_version(SSL.TLS1_2_VERSION)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self.server_name)
        return connection
