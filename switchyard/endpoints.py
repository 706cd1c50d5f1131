"""Endpoint strings and host:port shorthands, parsed once at start-up."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

import attr
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


def _split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint string as Twisted reads it: the type, the positional
    arguments and the ``key=value`` ones (``\\:`` escapes a colon)."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if equals:
            kwargs[name] = value
        else:
            args.append(part)
    return parts[0], args, kwargs


# What each plain endpoint type takes, to name a mistake before Twisted
# answers it with a Python error.
_SERVER_PARAMETERS = {"tcp": ("port", "interface", "backlog"),
                      "tcp6": ("port", "interface", "backlog")}
_CLIENT_PARAMETERS = {"tcp": ("host", "port", "timeout", "bindAddress"),
                      "tcp6": ("host", "port", "timeout", "bindAddress")}
_PORT_PARAMETERS = {"tcp", "tcp6", "ssl", "tls"}


def _check_description(description: str, client: bool) -> None:
    """Raise ValueError naming the parameter of a tcp/tcp6/ssl endpoint
    string that Twisted would refuse with a bare Python error."""
    kind, args, kwargs = _split_description(description)
    accepted = (_CLIENT_PARAMETERS if client else _SERVER_PARAMETERS).get(kind)
    if accepted is not None:
        for name in kwargs:
            if name not in accepted:
                raise ValueError(f"unknown parameter {name!r} ({kind} takes "
                                 f"{', '.join(accepted)})")
    if kind not in _PORT_PARAMETERS:
        return
    port = kwargs.get("port", args[1] if client and len(args) > 1 else
                      args[0] if not client and args else None)
    if port is not None:
        if not port.isdigit():
            raise ValueError(f"port {port!r} is not a number")
        if int(port) > 65535:
            raise ValueError(f"port {port} is out of range (0 to 65535)")
    for name in ("backlog", "timeout"):
        if name in kwargs and not kwargs[name].isdigit():
            raise ValueError(f"{name} {kwargs[name]!r} is not a number")
    interface = kwargs.get("interface")
    if interface is not None and interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(f"interface {interface!r} is not an IP address")


def _looks_like_host(host: str) -> bool:
    """A name or address meant as a host (not an endpoint type such as 'tcp')."""
    return "." in host or ":" in host or host == "localhost"


def _endpoint_problem(value: str, e: Exception, client: bool = False) -> str:
    """A Twisted endpoint parser's exception, said in words."""
    message = str(e)
    unknown = re.search(r"Unknown endpoint type: '([^']*)'", message)
    if unknown:
        if ":" not in value:
            return f"{value!r} has no port: write '{value}:PORT'"
        host_port = _HOST_PORT.match(value)
        if host_port and (client or _looks_like_host(host_port.group("host") or "::")):
            return f"port {host_port.group('port')} is out of range (1 to 65535)"
        known = ", ".join(sorted(_ENDPOINT_TYPES - {"tls"}))
        return f"unknown endpoint type {unknown.group(1)!r} (known: {known}, and plugins')"
    keyword = re.search(r"unexpected keyword argument '([^']*)'", message)
    if keyword:
        return f"unknown parameter {keyword.group(1)!r}"
    if isinstance(e, OSError) and e.filename:
        return f"cannot read {e.filename!r}: {e.strerror}"
    if "key values mismatch" in message or "keys do not match" in message:
        _, _, files = _split_description(value)
        key, cert = files.get("privateKey"), files.get("certKey", files.get("privateKey"))
        return (f"the private key {key!r} does not belong to the certificate {cert!r} (they "
                "are not a pair)")
    if isinstance(e, SSL.Error):
        return "a key or certificate file cannot be used: " + (_openssl_reason(e) or message)
    literal = re.search(r"invalid literal for int\(\) with base 10: ('[^']*')", message)
    if literal:
        return f"{literal.group(1)} is not a number"
    return message or type(e).__name__


def _openssl_reason(e: Exception) -> str:
    """The reasons in an OpenSSL error's list, joined."""
    found = e.args[0] if e.args and isinstance(e.args[0], list) else []
    return ", ".join(str(item[2]) for item in found if isinstance(item, tuple) and len(item) > 2)


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
        _check_description(value, client=True)
        return clientFromString(reactor, value)
    except Exception as e:
        raise OptionError(key, f"bad endpoint {value!r}: "
                               f"{_endpoint_problem(value, e, client=True)}")


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
    host_port = _HOST_PORT.match(value)
    host = host_port and (host_port.group("v6") or host_port.group("host") or "")
    if host_port and description == value and host and _looks_like_host(host):
        # The short form with a host name or a port out of range.
        port = int(host_port.group("port"))
        if not 0 < port < 65536:
            raise OptionError(key, f"bad listen endpoint {value!r}: port {port} is out of "
                                   "range (1 to 65535)")
        raise OptionError(key, f"bad listen endpoint {value!r}: {host!r} is not an IP "
                               f"address (listen on an address, e.g. '127.0.0.1:{port}' or "
                               f"'[::]:{port}', or on every one: '{port}')")
    try:
        _check_description(description, client=False)
        return serverFromString(reactor, description)
    except Exception as e:
        raise OptionError(key, f"bad listen endpoint {description!r}: "
                               f"{_endpoint_problem(value, e)}")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ListenAddress:
    """Where a listen string binds, as far as the string says: for telling
    two listeners on one address apart, and for explain's local address."""

    kind: str  # "tcp" (tcp, tcp6, ssl), "unix", "systemd" or the endpoint type
    host: str  # an IP address ("" for every IPv4 address, "::" for every one), a path, a name
    port: int = 0

    def overlaps(self, other: ListenAddress) -> bool:
        """Whether both cannot listen at once."""
        if self.kind != other.kind:
            return False
        if self.kind != "tcp":
            return self.host == other.host and self.port == other.port
        if self.port == 0 or self.port != other.port:
            return False  # port 0: each gets a port of its own
        # The IPv6 wildcard takes IPv4 too (Linux's default dual stack).
        wildcards = {"", "0.0.0.0", "::"}
        if self.host in wildcards or other.host in wildcards:
            v6 = ":" in self.host or ":" in other.host
            return not v6 or "::" in (self.host, other.host) or self.host == other.host
        return ipaddress.ip_address(self.host) == ipaddress.ip_address(other.host)

    def __str__(self) -> str:
        if self.kind != "tcp":
            return self.host
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def listen_address(value: str) -> ListenAddress | None:
    """The address a (valid) listen string binds, or None if it cannot be told."""
    description = server_endpoint_string(value)
    kind, args, kwargs = _split_description(description)
    if kind in ("tcp", "tcp6", "ssl"):
        port = kwargs.get("port", args[0] if args else "")
        if not port.isdigit():
            return None
        default = "::" if kind == "tcp6" else ""
        return ListenAddress("tcp", kwargs.get("interface", default) or default, int(port))
    if kind == "unix":
        return ListenAddress("unix", kwargs.get("address", args[0] if args else ""))
    if kind == "systemd":
        return ListenAddress("systemd", description)
    return None


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
