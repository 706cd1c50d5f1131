"""What test modules share: waiting on a condition with a deadline, ports that
no other test can take, reading sockets to the end, and blocking work run off
the reactor.

Synchronisation is always a condition polled until a deadline, never a bare
sleep: L{wait_for} (blocking code and threads), L{until} (from the reactor,
in C{inlineCallbacks} tests), L{steady} (a value that has stopped changing).
L{later} is only for an observation window (watching that nothing happens)
and for pacing a peer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

__all__ = [
    "LOCALHOST",
    "WAIT",
    "client_port",
    "count_until_eof",
    "free_port",
    "free_port6",
    "in_thread",
    "later",
    "recv_all",
    "recv_exact",
    "send_and_read",
    "steady",
    "until",
    "wait_for",
]

LOCALHOST = "127.0.0.1"
# How long any condition may take on a loaded 2-core machine: generous, since
# a deadline is only reached when the behaviour is broken.
WAIT = 30.0
POLL = 0.05

T = TypeVar("T")


# -- waiting on conditions -----------------------------------------------------


def wait_for(condition: Callable[[], T], what: str, timeout: float = WAIT,
             interval: float = POLL) -> T:
    """Poll ``condition`` until it returns something true, and return that.

    @raise AssertionError: naming ``what``, once ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def later(seconds: float) -> defer.Deferred[None]:
    """A Deferred that fires after ``seconds`` on the reactor (observation windows only)."""
    return deferLater(_reactor(), seconds, lambda: None)


@defer.inlineCallbacks
def until(condition: Callable[[], Any], what: str, timeout: float = WAIT,
          interval: float = POLL) -> Any:
    """L{wait_for} for code on the reactor: yields while it polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        yield later(interval)


def steady(read: Callable[[], T], what: str, settle: float = 0.5,
           timeout: float = WAIT) -> T:
    """Poll ``read()`` until it returns the same value for ``settle`` seconds;
    return that value (a backend that has stopped sending, memory that has
    settled)."""
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while True:
        time.sleep(POLL)
        now_value = read()
        now = time.monotonic()
        if now_value != value:
            value, since = now_value, now
        elif now - since >= settle:
            return value
        if now > deadline:
            raise AssertionError(f"{what} still changing after {timeout:g}s (last {value!r})")


def in_thread(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """Run blocking ``f(*args)`` in a thread of its own (the reactor's pool
    has only 10) and fire with its result on the reactor."""
    reactor = _reactor()
    d: defer.Deferred[Any] = defer.Deferred()

    def run() -> None:
        try:
            result = f(*args)
        except BaseException:
            failure = Failure()
            reactor.callFromThread(d.errback, failure)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, daemon=True).start()
    return d


# -- ports ---------------------------------------------------------------------


def _reserve(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as listening:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, 0))
        listening.listen(1)
        address = listening.getsockname()[:2]
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.connect(address)
            accepted, _ = listening.accept()
            # The accepted side closes first: its TIME_WAIT holds the port.
            accepted.close()
        return int(address[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a server a test starts, kept from every
    other automatic choice for a minute.

    The kernel chooses it (bind to port 0); a connection is then accepted
    and closed there, server side first, so a TIME_WAIT socket stays on the
    port. Until it expires (60 s) the kernel gives the port to no bind(0)
    and no outgoing connection, of this test run or a parallel one; a
    server that sets SO_REUSEADDR before binding (Twisted, nginx, sshd,
    haproxy, Python's socketserver and asyncio all do) listens on it as
    usual, and a connect to it is refused until then.
    """
    return _reserve(socket.AF_INET, LOCALHOST)


def free_port6() -> int:
    """L{free_port} on ::1."""
    return _reserve(socket.AF_INET6, "::1")


def client_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    """A port a client program binds its own end to (``curl --local-port``):
    free a moment ago, not reserved (clients do not set SO_REUSEADDR). The
    caller retries if it was taken meanwhile."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST if family == socket.AF_INET else "::1", 0))
        return int(sock.getsockname()[1])


# -- reading sockets -----------------------------------------------------------


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; ConnectionError if the stream ends first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the end of stream."""
    parts = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def count_until_eof(sock: socket.socket) -> int:
    """How many bytes arrive until the end of stream (without keeping them)."""
    n = 0
    buf = bytearray(1 << 20)
    while True:
        got = sock.recv_into(buf)
        if not got:
            return n
        n += got


def send_and_read(port: int, data: bytes, source: str | None = None,
                  timeout: float = WAIT) -> bytes:
    """Connect to 127.0.0.1:``port`` (from ``source`` if given), send ``data``,
    and read until the end of stream."""
    with socket.create_connection((LOCALHOST, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(data)
        return recv_all(s)
