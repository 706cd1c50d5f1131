"""switchyard's accept: a listening TCP socket read by switchyard's reactor, accept(2)
in a loop per event, every client handed on as a bare socket.

Twisted's port accepts each client into a ``tcp.Server`` transport, with a
protocol, an address object, a log prefix and a logging context around each
event: most of what a short connection costs before its first byte is read.
A listener on switchyard's reactor keeps Twisted's port for what it does well
(binding from an endpoint string, adopted and inherited sockets, closing)
and takes over only the reading of its socket: the L{Acceptor} is
registered in the port's place (no system call), accepts up to
L{ACCEPT_BATCH} clients per event, and hands each one, non-blocking and
with TCP_NODELAY (inherited from the listening socket), to ``accepted``.
The connection reads its opening from the bare socket; a Twisted transport
is made for it only when its target needs one.

Used only where everything it needs is there (L{internals.check}'s
``accept``, switchyard's reactor, a plain TCP port, ``fast_path``); every
other listener accepts through Twisted's port as before.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.relay import internals
from switchyard.relay import reactor as _reactor_module

log = Logger(namespace="switchyard.listener")

# Clients accepted per readable event at most: a burst is taken in one go,
# and the reactor still gets back to the connections already open.
ACCEPT_BATCH = 64
# At most one warning per listener this often about clients that could not
# be accepted (out of descriptors or memory).
WARNING_INTERVAL = 10.0
# accept(2) errors about one client that is gone already: go on with the next.
_CLIENT_GONE = frozenset({errno.ECONNABORTED, errno.EPERM, errno.EPROTO})
_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


class _Reserve:
    """One descriptor kept open, given up when accept(2) runs out of them, so
    that the clients waiting can be accepted and closed (refused at once)
    rather than left in the queue, waking every poll, until they give up."""

    fd = -1

    @classmethod
    def hold(cls) -> None:
        if cls.fd < 0:
            try:
                cls.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                cls.fd = -1

    @classmethod
    def release(cls) -> bool:
        if cls.fd < 0:
            return False
        os.close(cls.fd)
        cls.fd = -1
        return True


def can_accept(reactor: Any, port: Any) -> bool:
    """Whether L{Acceptor} can take ``port`` over: a plain TCP port (not TLS,
    not UNIX) on switchyard's reactor, with everything the fence checks."""
    return (type(port) is tcp.Port and hasattr(reactor, "adopt")
            and internals.check().accept and internals.check().fast_path)


@implementer(IReadDescriptor)
class Acceptor:
    """Accepts for a Twisted TCP port on switchyard's reactor (see the module)."""

    __slots__ = ("port", "reactor", "accepted", "fd", "sock", "family", "closed",
                 "_warned", "_refused")

    def __init__(self, reactor: Any, port: Any,
                 accepted: Callable[[Any, tuple[Any, ...]], None]) -> None:
        """Take over reading ``port``'s socket: each client is passed to
        ``accepted(sock, address)`` (a bare non-blocking socket, accept(2)'s
        address)."""
        self.port = port
        self.reactor = reactor
        self.accepted = accepted
        self.fd = port.fileno()
        # A socket of our own on the listening socket (a duplicate: the port
        # closes its own at the end, this one is closed by stop()).
        probe = socket.socket(fileno=os.dup(self.fd))
        self.family = probe.family
        self.sock = internals.raw_socket(probe.family, probe.detach())
        # Accepted sockets inherit it: no setsockopt per connection.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = False
        self._warned = -WARNING_INTERVAL
        self._refused = 0
        _Reserve.hold()
        reading, _ = reactor.adopt(self.fd, self)
        if not reading:  # the port was not reading (paused): it is now
            reactor.set_interest(self, self.fd, True, False)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "Acceptor"

    def doRead(self) -> None:
        self.on_event(0)

    def on_event(self, event: int) -> None:
        """The listening socket is readable (or in error): accept what waits."""
        if self.closed:
            return
        accept = internals.accept_function(self.sock)
        family = self.family
        accepted = self.accepted
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _CLIENT_GONE:
                    continue
                if e.errno in _NO_DESCRIPTORS:
                    self._refuse_waiting(e)
                else:
                    self._warn(e)
                return
            try:
                sock = internals.raw_socket(family, fd)
                sock.setblocking(False)
            except OSError:
                os.close(fd)
                continue
            try:
                accepted(sock, address)
            except Exception:
                log.failure("listener: a new connection failed to start")
                self._drop(sock)

    def _drop(self, sock: Any) -> None:
        try:
            fd = sock.fileno()
        except OSError:
            return
        if fd >= 0:
            self.reactor.forget(fd)
            sock.close()

    def _refuse_waiting(self, e: OSError) -> None:
        """Out of descriptors: accept and close the clients waiting, with the
        reserved descriptor, so they hear at once rather than time out."""
        if not _Reserve.release():
            self._warn(e)
            return
        try:
            for _ in range(ACCEPT_BATCH):
                try:
                    fd, _address = internals.accept_function(self.sock)()
                except OSError:
                    break
                os.close(fd)
                self._refused += 1
        finally:
            _Reserve.hold()
        self._warn(e)

    def _warn(self, e: OSError) -> None:
        now = time.monotonic()
        if now - self._warned < WARNING_INTERVAL:
            return
        self._warned = now
        log.warn("listener on {address}: cannot accept connections: {error} ({refused} "
                 "refused since the last warning); raise the descriptor limit (ulimit -n, "
                 "LimitNOFILE) or lower max_connections",
                 address=_where(self.port), error=e.strerror or str(e), refused=self._refused)
        self._refused = 0

    def stop(self) -> None:
        """Accept no more (the port stops listening next: it unregisters the fd)."""
        if not self.closed:
            self.closed = True
            self.sock.close()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor is letting go of every descriptor (shutdown): what it
        # would have done for the port.
        self.stop()
        self.port.connectionLost(reason)


def _where(port: Any) -> str:
    try:
        host = port.getHost()
    except Exception:
        return "?"
    return f"{host.host}:{host.port}"


# Its events skip Twisted's per-event logging context (switchyard.relay.reactor).
_reactor_module.DIRECT.add(Acceptor)
