"""Every use of a private Twisted name, in one place, checked once at start-up.

The splice fast path takes sockets over from Twisted's transports (their
unsent buffers, their half-close flags), the reactor hands relay events out
without Twisted's per-event logging context (its epoll books), and workers
keep shared sockets open past Twisted's shutdown(2). None of that is public
Twisted API. L{check} looks for each name once; a part whose names are
missing is switched off with one log line: Twisted's relay instead of the
fast path, Twisted's own epoll reactor instead of switchyard's. Slower, and
never a failed connection. setup.cfg's Twisted bounds say which versions the
suite ran against (scripts/test runs it on the oldest and the newest).
"""

from __future__ import annotations

import _socket
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from twisted.internet import abstract, tcp
from twisted.logger import Logger

log = Logger(namespace="switchyard.internals")

# Names the fast path needs: on every FileDescriptor (write buffers and the
# half-close flags), on TCP connections (abort and shutdown flags).
FAST_PATH_NAMES: tuple[tuple[str, str], ...] = (
    ("FileDescriptor", "dataBuffer"),
    ("FileDescriptor", "offset"),
    ("FileDescriptor", "_tempDataBuffer"),
    ("FileDescriptor", "_tempDataLen"),
    ("FileDescriptor", "_writeDisconnecting"),
    ("FileDescriptor", "_writeDisconnected"),
    ("tcp.Connection", "_aborting"),
    ("tcp.Connection", "_shouldShutdown"),
)
# Names switchyard's reactor needs from Twisted's epoll reactor.
REACTOR_NAMES: tuple[tuple[str, str], ...] = (
    ("EPollReactor", "_poller"),
    ("EPollReactor", "_reads"),
    ("EPollReactor", "_writes"),
    ("EPollReactor", "_selectables"),
    ("EPollReactor", "_doReadOrWrite"),
)
# Names workers need to leave shared listening sockets to the others.
SHARING_NAMES: tuple[tuple[str, str], ...] = (
    ("tcp.Port", "_shouldShutdown"),
)
# Names the fast accept needs: CPython's accept(2) without the socket
# object Python's own accept() builds around it (enum conversions and a
# Python-level constructor, per connection).
ACCEPT_NAMES: tuple[tuple[str, str], ...] = (
    ("_socket.socket", "_accept"),
)
# tcp.Server's constructor, as Port.doRead calls it: the fast accept makes a
# client's Twisted transport this way when a target needs one.
_SERVER_PARAMETERS = ("self", "sock", "protocol", "client", "server", "sessionno", "reactor")


def _epoll_reactor() -> Any:
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # no epoll on this system
        return None
    return EPollReactor


def _has(owner: str, name: str) -> bool:
    """Whether ``name`` exists on ``owner``: as a class attribute, or assigned
    in its __init__ (instance attributes, without building one)."""
    if owner == "FileDescriptor":
        cls: Any = abstract.FileDescriptor
    elif owner == "tcp.Connection":
        cls = tcp.Connection
    elif owner == "tcp.Port":
        cls = tcp.Port
    elif owner == "_socket.socket":
        cls = _socket.socket
    else:
        cls = _epoll_reactor()
        if cls is None:
            return False
    if hasattr(cls, name):
        return True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        code = getattr(init, "__code__", None)
        if code is not None and name in code.co_names:
            return True
    return False


def missing(names: Iterable[tuple[str, str]]) -> list[str]:
    """The names of ``names`` this Twisted lacks, as ``owner.name``."""
    return [f"{owner}.{name}" for owner, name in names if not _has(owner, name)]


class Availability(NamedTuple):
    fast_path: bool
    reactor: bool
    sharing: bool
    accept: bool = True  # listeners accept on switchyard's reactor (with fast_path)


def _server_constructor_missing() -> list[str]:
    try:
        names = tuple(inspect.signature(tcp.Server.__init__).parameters)
    except (TypeError, ValueError):
        names = ()
    return [] if names == _SERVER_PARAMETERS else ["tcp.Server.__init__(sock, protocol, "
                                                   "client, server, sessionno, reactor)"]


@functools.lru_cache(maxsize=1)
def check() -> Availability:
    """Look for every private name once; log one line for each part switched off."""
    parts = {}
    for part, names, consequence in (
            ("fast_path", FAST_PATH_NAMES, "relaying through Twisted's transports"),
            ("reactor", REACTOR_NAMES, "using Twisted's own reactor"),
            ("sharing", SHARING_NAMES, "workers > 1 is refused"),
            ("accept", ACCEPT_NAMES, "listeners accept through Twisted's ports")):
        lacking = missing(names)
        if part == "accept":
            lacking += _server_constructor_missing()
        parts[part] = not lacking
        if lacking:
            log.warn("this Twisted lacks {names}: {part} is off, {consequence}",
                     names=", ".join(lacking), part=part.replace("_", " "),
                     consequence=consequence)
    if _epoll_reactor() is None:
        parts["reactor"] = False
    return Availability(**parts)


# -- the fast path: taking a socket over from its transport ------------------


def writes_open(transport: Any) -> bool:
    """No write-side end is pending or done on a Twisted transport, nor an
    abort, nor descriptors queued for sendmsg (they would be lost)."""
    return (not transport._writeDisconnecting
            and not transport._writeDisconnected
            and not getattr(transport, "_aborting", False)
            and not getattr(transport, "_sendmsgQueue", None))


def take_unsent(transport: Any) -> bytes:
    """Empty a FileDescriptor's unsent write buffer, returning its bytes in order."""
    if len(transport.dataBuffer) <= transport.offset and not transport._tempDataBuffer:
        # Nothing unsent (the usual case): leave the transport's attributes
        # alone, as assigning them would give each transport its own copies.
        return b""
    parts: list[Any] = [memoryview(transport.dataBuffer)[transport.offset:]]
    parts.extend(transport._tempDataBuffer)
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    return b"".join(parts)


def close_without_shutdown(descriptor: Any) -> None:
    """Closing ``descriptor`` (a TCP connection or port) will not call
    shutdown(2) first: the relay already sent both ends of stream, or the
    socket is shared with other processes, whose copies shutdown would stop."""
    descriptor._shouldShutdown = False


# -- the fast accept ------------------------------------------------------------


def raw_socket(family: int, fd: int | None, flags: int = 0) -> Any:
    """A stream socket as CPython's socket type (no Python-level wrapper:
    every method is C, ``_accept`` included): descriptor ``fd`` (connected
    or listening), or a new one (``fd`` None) with ``flags`` (SOCK_NONBLOCK...)."""
    return _socket.socket(family, _socket.SOCK_STREAM | flags, 0, fd)


def accept_function(listening: Any) -> Callable[[], tuple[int, Any]]:
    """accept(2) on a L{raw_socket}: (the new descriptor, the client's address)."""
    return listening._accept  # type: ignore[no-any-return]


def server_transport(sock: Any, protocol: Any, address: tuple[Any, ...], port: Any,
                     sessionno: int, reactor: Any) -> Any:
    """The Twisted transport of an accepted socket, as the port would have made
    it (it registers itself for reading)."""
    return tcp.Server(sock, protocol, address, port, sessionno, reactor)


# -- workers: a unix listening socket shared with other processes ------------


def leave_unix_socket_file(port: Any) -> Any:
    """A worker's adopted unix port stops without touching what the others
    still serve: Twisted's unix port would unlink the socket file (the
    parent removes it at the end) and shutdown(2) the shared socket."""
    port.connectionLost = functools.partial(tcp.Port.connectionLost, port)
    close_without_shutdown(port)
    return port


# -- the reactor: epoll's books ------------------------------------------------


class EpollParts(NamedTuple):
    poller: Any  # select.epoll
    selectables: dict[int, Any]
    reads: set[int]
    writes: set[int]
    dispatch: Callable[[Any, int, int], None]  # Twisted's handling of one event


def epoll_parts(reactor: Any) -> EpollParts:
    """The epoll reactor's own books, read once after it was built."""
    return EpollParts(poller=reactor._poller, selectables=reactor._selectables,
                      reads=reactor._reads, writes=reactor._writes,
                      dispatch=reactor._doReadOrWrite)
