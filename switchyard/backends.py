"""Backends: servers reached over endpoints, tried in order, behind one target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr
from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.endpoints import client_endpoint
from switchyard.interfaces import IConnection, ITarget, OptionError
from switchyard.options import Options
from switchyard.proxyheader import build_header

_CONNECTION_DONE = Failure(error.ConnectionDone())


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Server:
    """One server of a backend: how to reach it and what to call it in logs."""

    description: str
    endpoint: IStreamClientEndpoint


@implementer(IHalfCloseableProtocol)
class _BackendProtocol(Protocol):
    """The backend side of a relay: everything it hears goes to the client."""

    def __init__(self, connection: IConnection) -> None:
        self.connection = connection

    def dataReceived(self, data: bytes) -> None:
        self.connection.peer_data(data)

    def readConnectionLost(self) -> None:
        self.connection.peer_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.connection.peer_lost(reason)


class _BackendFactory(Factory):
    noisy = False  # one per connection: the access log says it all

    def __init__(self, connection: IConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> _BackendProtocol:
        return _BackendProtocol(self.connection)


# Cancelling a HostnameEndpoint connect (addTimeout does) fails with
# ConnectingCancelledError rather than CancelledError.
_TIMEOUTS = (defer.TimeoutError, defer.CancelledError, error.TimeoutError,
             error.ConnectingCancelledError)


@implementer(ITarget)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class BackendTarget:
    """Servers tried in order, each within ``connect_timeout``."""

    name: str
    servers: tuple[Server, ...]
    proxy_protocol: str | None
    connect_timeout: float

    def attach(self, connection: IConnection) -> None:
        self._connect(connection, 0, [])

    def _connect(self, connection: Any, index: int, failures: list[str]) -> None:
        server = self.servers[index]
        connection.set_server(server.description)
        d = server.endpoint.connect(_BackendFactory(connection))
        d.addTimeout(self.connect_timeout, connection.reactor)
        connection.pending = d

        def connected(protocol: _BackendProtocol) -> None:
            connection.pending = None
            prefix = b""
            if self.proxy_protocol is not None:
                prefix = build_header(self.proxy_protocol, connection.client_address,
                                      connection.local_address, connection.facts)
            connection.splice(protocol.transport, prefix)

        def failed(f: Failure) -> None:
            connection.pending = None
            if connection.closing:
                return
            timed_out = f.check(*_TIMEOUTS) is not None
            failures.append(f"{server.description}: "
                            + ("timed out" if timed_out else f.getErrorMessage()))
            if index + 1 < len(self.servers):
                self._connect(connection, index + 1, failures)
                return
            connection.close("backend_timeout" if timed_out else "backend_refused",
                             "; ".join(failures))

        d.addCallbacks(connected, failed)


_BACKEND_OPTIONS = ("servers", "proxy_protocol", "connect_timeout")
DEFAULT_CONNECT_TIMEOUT = 5.0


def compile_backend(name: str, raw: Mapping[str, Any], reactor: Any) -> BackendTarget:
    """A [backend.NAME] table as a target; raises OptionError naming the key."""
    options = Options(raw, _BACKEND_OPTIONS)
    connect_timeout = options.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    servers = raw.get("servers")
    if isinstance(servers, str):
        servers = [servers]
    if not isinstance(servers, list) or not servers:
        raise OptionError("servers", "a non-empty list of servers is required")
    pp = options.choice("proxy_protocol", "none", ("none", "v1", "v2"))
    return BackendTarget(
        name=name,
        servers=tuple(
            Server(description=s, endpoint=client_endpoint(f"servers[{i}]", s, reactor,
                                                           connect_timeout))
            for i, s in enumerate(servers)),
        proxy_protocol=None if pp == "none" else pp,
        connect_timeout=connect_timeout,
    )
