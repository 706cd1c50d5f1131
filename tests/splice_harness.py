"""The harness the splice relay tests drive: a front that buffers the opening,
connects to a backend and hands both sockets to L{SpliceRelay}, as the switch
does, with real loopback sockets and the reactor trial runs (Twisted's default,
or SwitchyardReactor when scripts/test runs these modules again under it)."""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from switchyard.relay.splice import SpliceRelay, can_splice
from tests import traffic
from tests.fakes import FakeBooks
from tests.helpers import recv_exact, until

reactor: Any = _reactor

OPENING = len(traffic.MAGIC) + 8  # what the switch would have sniffed: the digest header
LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends a reset
ABORTED = (error.ConnectionAborted,)
_CONNECTION_DONE = Failure(error.ConnectionDone())


@implementer(IHalfCloseableProtocol)
class Front(Protocol):
    """The client side, as the switch does it: buffer the opening, connect, splice."""

    transport: Any

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.books = FakeBooks()
        self.opening = b""
        self.connecting = False
        self.eof_before_relay = False
        self.relay: SpliceRelay | None = None
        self.peer: Any = None
        self.lost: dict[str, Failure] = {}
        self.leaked: list[bytes] = []  # what Twisted delivered after the takeover: nothing
        self.done: defer.Deferred[Front] = defer.Deferred()

    def connectionMade(self) -> None:
        self.harness.fronts.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.leaked.append(data)
            return
        self.books.bytes_in += len(data)
        self.opening += data
        if len(self.opening) >= self.harness.opening_size:
            self._connect()

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.leaked.append(b"<eof>")
            return
        # The relay finds the end of stream again on the socket.
        self.eof_before_relay = True
        self._connect()

    def writeConnectionLost(self) -> None:
        pass

    def _connect(self) -> None:
        if self.connecting:
            return
        self.connecting = True
        self.transport.pauseProducing()
        d: defer.Deferred[Any] = self.harness.backend.connect(BackFactory(self))
        d.addCallback(self._connected)
        d.addErrback(self._failed)

    @defer.inlineCallbacks
    def _connected(self, back: Back) -> Any:
        peer: Any = back.transport
        self.peer = peer
        # Two writes, as the switch's PROXY header and opening would be.
        peer.write(self.harness.prefix)
        peer.write(self.opening)
        yield self.harness.before_start(self, peer)
        if not can_splice(self.transport, peer):
            raise AssertionError("plain TCP transports must be spliceable")
        self.relay = SpliceRelay(reactor, self.books, self.transport, peer).start()
        self.harness.started(self)

    def _failed(self, f: Failure) -> None:
        self.harness.errors.append(f)
        self.transport.abortConnection()
        if self.peer is not None:
            self.peer.abortConnection()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.lost["client"] = reason
        self._maybe_done()

    def _maybe_done(self) -> None:
        if len(self.lost) == 2 and not self.done.called:
            self.done.callback(self)


class Back(Protocol):
    def __init__(self, front: Front) -> None:
        self.front = front

    def dataReceived(self, data: bytes) -> None:
        self.front.leaked.append(data)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.front.lost["backend"] = reason
        if "client" not in self.front.lost and self.front.relay is None:
            self.front.transport.abortConnection()
        self.front._maybe_done()


class BackFactory(Factory):
    noisy = False

    def __init__(self, front: Front) -> None:
        self.front = front

    def buildProtocol(self, addr: Any) -> Back:
        return Back(self.front)


def nothing(front: Front, peer: Any) -> None:
    return None


class Harness(Factory):
    noisy = False

    def __init__(self, backend: IStreamClientEndpoint, prefix: bytes = b"",
                 opening_size: int = OPENING,
                 before_start: Callable[[Front, Any], Any] = nothing) -> None:
        self.backend = backend
        self.prefix = prefix
        self.opening_size = opening_size
        self.before_start = before_start
        self.fronts: list[Front] = []
        self.errors: list[Failure] = []
        self._started: list[defer.Deferred[Front]] = []
        self.running: list[Front] = []

    def buildProtocol(self, addr: Any) -> Front:
        return Front(self)

    def started(self, front: Front) -> None:
        self.running.append(front)
        waiting, self._started = self._started, []
        for d in waiting:
            d.callback(front)

    def next_start(self) -> defer.Deferred[Front]:
        d: defer.Deferred[Front] = defer.Deferred()
        self._started.append(d)
        return d


def fd_count() -> int:
    """Open descriptors, not counting the relays' shared pool of spare pipes."""
    from switchyard.relay import splice

    return len(os.listdir("/proc/self/fd")) - 2 * len(splice._SPARE_PIPES)


class RawBackend:
    """One-connection backend running ``handle(conn)`` in a thread; records the outcome."""

    def __init__(self, handle: Callable[[socket.socket], Any]) -> None:
        self.listening = socket.create_server(("127.0.0.1", 0))
        self.port = self.listening.getsockname()[1]
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

        def run() -> None:
            try:
                conn, _ = self.listening.accept()
                with conn:
                    conn.settimeout(60)
                    self.result = handle(conn)
            except BaseException as e:  # the test inspects it
                self.error = e
            finally:
                self.finished.set()

        threading.Thread(target=run, daemon=True).start()

    def endpoint(self) -> IStreamClientEndpoint:
        return HostnameEndpoint(reactor, "127.0.0.1", self.port)

    def close(self) -> None:
        self.listening.close()


class UnixDigestServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True



class SpliceCase(unittest.TestCase):
    """Starts the harness in front of a backend; checks how relays ended."""

    timeout = 180

    @defer.inlineCallbacks
    def listen(self, backend: IStreamClientEndpoint, **options: Any) -> Any:
        harness = Harness(backend, **options)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(harness)
        self.addCleanup(port.stopListening)
        return harness, port.getHost().port

    def digest_backend(self) -> IStreamClientEndpoint:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        return HostnameEndpoint(reactor, "127.0.0.1", backend.port)

    def raw_backend(self, handle: Callable[[socket.socket], Any]) -> RawBackend:
        backend = RawBackend(handle)
        self.addCleanup(backend.close)
        return backend

    def listening_backend(self) -> tuple[RawBackend, threading.Event]:
        """A backend that reads the opening, sets the event, then reads to the end."""
        opened = threading.Event()

        def handle(conn: socket.socket) -> bytes:
            recv_exact(conn, OPENING)
            opened.set()
            return traffic.recv_all(conn)

        return self.raw_backend(handle), opened

    @defer.inlineCallbacks
    def all_done(self, harness: Harness, n: int) -> Any:
        yield until(lambda: len(harness.fronts) >= n, f"{n} clients to connect")
        self.assertEqual(harness.errors, [])
        fronts = yield defer.gatherResults([f.done for f in harness.fronts[:n]])
        for front in fronts:
            self.assertEqual(front.leaked, [])
            self.assertTrue(front.relay is not None and front.relay.done)
        # None of the relays' descriptors stays registered.
        registered = reactor.getReaders() + reactor.getWriters()
        self.assertEqual([d for d in registered if type(d).__name__ == "_Socket"], [])
        return fronts

    @defer.inlineCallbacks
    def assert_no_fd_leak(self, before: int) -> Any:
        # Sockets of finished handler threads close a moment later.
        try:
            yield until(lambda: fd_count() == before, "the descriptors to be closed", 5)
        except AssertionError:
            pass
        self.assertEqual(fd_count(), before)

    def assert_clean_end(self, front: Front) -> None:
        """Both transports closed in order, neither aborted."""
        for side in ("client", "backend"):
            self.assertIsNone(front.lost[side].check(*ABORTED), front.lost[side])

