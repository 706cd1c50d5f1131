"""The splice(2) relay over real loopback sockets and the real reactor."""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from switchyard.deadlines import Deadlines
from switchyard.relay.splice import (
    PIPE_SIZE,
    SUPPORTED,
    DirectConnect,
    SpliceRelay,
    _loopback,
    can_splice,
    close_socket,
)
from tests import traffic

reactor: Any = _reactor
OPENING = len(traffic.MAGIC) + 8  # what the switch would have sniffed: the digest header
LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends a reset
_ABORTED = (error.ConnectionAborted,)
_CONNECTION_DONE = Failure(error.ConnectionDone())


class _Books:
    """Stands in for the switch's bookkeeping; the sockets around it are real."""

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_activity = 0.0
        self.reason: str | None = None
        self.detail = ""

    def relay_ended(self, reason: str, detail: str = "") -> None:
        if self.reason is None:
            self.reason = reason
            self.detail = detail


@implementer(IHalfCloseableProtocol)
class _Front(Protocol):
    """The client side, as the switch does it: buffer the opening, connect, splice."""

    transport: Any

    def __init__(self, harness: _Harness) -> None:
        self.harness = harness
        self.books = _Books()
        self.opening = b""
        self.connecting = False
        self.eof_before_relay = False
        self.relay: SpliceRelay | None = None
        self.peer: Any = None
        self.lost: dict[str, Failure] = {}
        self.leaked: list[bytes] = []  # what Twisted delivered after the takeover: nothing
        self.done: defer.Deferred[_Front] = defer.Deferred()

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
        d: defer.Deferred[Any] = self.harness.backend.connect(_BackFactory(self))
        d.addCallback(self._connected)
        d.addErrback(self._failed)

    @defer.inlineCallbacks
    def _connected(self, back: _Back) -> Any:
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


class _Back(Protocol):
    def __init__(self, front: _Front) -> None:
        self.front = front

    def dataReceived(self, data: bytes) -> None:
        self.front.leaked.append(data)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.front.lost["backend"] = reason
        if "client" not in self.front.lost and self.front.relay is None:
            self.front.transport.abortConnection()
        self.front._maybe_done()


class _BackFactory(Factory):
    noisy = False

    def __init__(self, front: _Front) -> None:
        self.front = front

    def buildProtocol(self, addr: Any) -> _Back:
        return _Back(self.front)


def _nothing(front: _Front, peer: Any) -> None:
    return None


class _Harness(Factory):
    noisy = False

    def __init__(self, backend: IStreamClientEndpoint, prefix: bytes = b"",
                 opening_size: int = OPENING,
                 before_start: Callable[[_Front, Any], Any] = _nothing) -> None:
        self.backend = backend
        self.prefix = prefix
        self.opening_size = opening_size
        self.before_start = before_start
        self.fronts: list[_Front] = []
        self.errors: list[Failure] = []
        self._started: list[defer.Deferred[_Front]] = []
        self.running: list[_Front] = []

    def buildProtocol(self, addr: Any) -> _Front:
        return _Front(self)

    def started(self, front: _Front) -> None:
        self.running.append(front)
        waiting, self._started = self._started, []
        for d in waiting:
            d.callback(front)

    def next_start(self) -> defer.Deferred[_Front]:
        d: defer.Deferred[_Front] = defer.Deferred()
        self._started.append(d)
        return d


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _in_thread(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """Run ``f`` in a thread of its own (the reactor's pool has only 10)."""
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


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _fd_count() -> int:
    """Open descriptors, not counting the relays' shared pool of spare pipes."""
    from switchyard.relay import splice

    return len(os.listdir("/proc/self/fd")) - 2 * len(splice._SPARE_PIPES)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _count_until_eof(sock: socket.socket) -> int:
    n = 0
    buf = bytearray(1 << 20)
    while True:
        got = sock.recv_into(buf)
        if not got:
            return n
        n += got


class _RawBackend:
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


class _UnixDigestServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class SpliceRelayTests(unittest.TestCase):
    timeout = 180
    if not SUPPORTED:
        skip = "splice(2) is Linux only"

    @defer.inlineCallbacks
    def listen(self, backend: IStreamClientEndpoint, **options: Any) -> Any:
        harness = _Harness(backend, **options)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(harness)
        self.addCleanup(port.stopListening)
        return harness, port.getHost().port

    def digest_backend(self) -> IStreamClientEndpoint:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        return HostnameEndpoint(reactor, "127.0.0.1", backend.port)

    def raw_backend(self, handle: Callable[[socket.socket], Any]) -> _RawBackend:
        backend = _RawBackend(handle)
        self.addCleanup(backend.close)
        return backend

    def listening_backend(self) -> tuple[_RawBackend, threading.Event]:
        """A backend that reads the opening, sets the event, then reads to the end."""
        opened = threading.Event()

        def handle(conn: socket.socket) -> bytes:
            _recv_exact(conn, OPENING)
            opened.set()
            return traffic.recv_all(conn)

        return self.raw_backend(handle), opened

    @defer.inlineCallbacks
    def all_done(self, harness: _Harness, n: int) -> Any:
        for _ in range(600):
            if len(harness.fronts) >= n:
                break
            yield _sleep(0.05)
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
        for _ in range(40):  # sockets of finished handler threads close a moment later
            if _fd_count() == before:
                break
            yield _sleep(0.05)
        self.assertEqual(_fd_count(), before)

    def assert_clean_end(self, front: _Front) -> None:
        """Both transports closed in order, neither aborted."""
        for side in ("client", "backend"):
            self.assertIsNone(front.lost[side].check(*_ABORTED), front.lost[side])

    # -- which transports qualify ------------------------------------------

    @defer.inlineCallbacks
    def test_canSpliceOnlyPlainSockets(self) -> Any:
        backend = self.raw_backend(lambda conn: conn.recv(OPENING))
        seen: dict[str, bool] = {}

        def check(front: _Front, peer: Any) -> None:
            seen["tcp"] = can_splice(front.transport, peer)
            wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
            wrapper.makeConnection(peer)
            seen["wrapper"] = can_splice(front.transport, wrapper)
            seen["string"] = can_splice(StringTransport(), peer)
            peer.TLS = True  # what startTLS sets
            seen["tls"] = can_splice(front.transport, peer)
            del peer.TLS

        harness, port = yield self.listen(backend.endpoint(), before_start=check)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"x" * OPENING)
            front = yield harness.next_start()
            self.assertEqual(seen, {"tcp": True, "wrapper": False, "string": False,
                                    "tls": False})
            yield _in_thread(backend.finished.wait, 10)
            got = yield _in_thread(traffic.recv_all, client)
        self.assertEqual(got, b"")
        yield front.done
        self.assertFalse(can_splice(front.transport, front.peer))  # closed now

    # -- integrity, counts, fds --------------------------------------------

    @defer.inlineCallbacks
    def test_integrityUnderConcurrency(self) -> Any:
        """Twenty checked transfers of megabytes both ways at once, counted exactly."""
        harness, port = yield self.listen(self.digest_backend())
        yield _sleep(0)  # the running reactor has all of its own fds (its SIGCHLD waker)
        before = _fd_count()
        sizes = [(1_000_000 + 97_003 * i, 3_500_000 - 101_009 * i) for i in range(20)]
        seen = yield defer.gatherResults([
            _in_thread(traffic.exchange, port, send, receive, i)
            for i, (send, receive) in enumerate(sizes)])
        fronts = yield self.all_done(harness, 20)
        self.assertEqual(sorted((s["sent"], s["received"]) for s in seen),
                         sorted((f.books.bytes_in, f.books.bytes_out) for f in fronts))
        for front in fronts:
            self.assertEqual((front.books.reason, front.books.detail), ("normal", ""))
            self.assert_clean_end(front)
            self.assertGreater(front.books.last_activity, 0)
        yield self.assert_no_fd_leak(before)

    @defer.inlineCallbacks
    def test_unixSocketBackend(self) -> Any:
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "digest.sock")
        server = _UnixDigestServer(path, traffic._DigestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            os.unlink(path)
            os.rmdir(directory)

        self.addCleanup(stop)
        harness, port = yield self.listen(UNIXClientEndpoint(reactor, path))
        seen = yield _in_thread(traffic.exchange, port, 3_000_000, 4_000_000, 9)
        [front] = yield self.all_done(harness, 1)
        self.assertEqual((front.books.bytes_in, front.books.bytes_out),
                         (seen["sent"], seen["received"]))
        self.assertEqual(front.books.reason, "normal")

    @defer.inlineCallbacks
    def test_prefixAndUnsentBuffersGoFirstAndOnce(self) -> Any:
        """What Twisted still held for either socket leaves before any spliced byte."""
        go = threading.Event()
        prefix = traffic.payload(1, 16 * 1024 * 1024)  # more than the kernel buffers hold
        banner = traffic.payload(2, 16 * 1024 * 1024)
        opening = b"OPEN" + b"o" * (OPENING - 4)
        body = traffic.payload(3, 3_000_000)
        reply = traffic.payload(4, 2_000_000)
        unsent: dict[str, int] = {}

        def handle(conn: socket.socket) -> bytes:
            go.wait(30)
            got = traffic.recv_all(conn)
            conn.sendall(reply)
            return got

        backend = self.raw_backend(handle)

        @defer.inlineCallbacks
        def before_start(front: _Front, peer: Any) -> Any:
            front.transport.write(banner)
            yield _sleep(0.3)  # Twisted sends what the kernel takes, and no more
            peer.write(b"extra-to-peer")
            front.transport.write(b"extra-to-client")
            unsent["peer_offset"] = peer.offset
            for name, t in (("peer", peer), ("client", front.transport)):
                unsent[name] = len(t.dataBuffer) - t.offset + t._tempDataLen

        harness, port = yield self.listen(backend.endpoint(), prefix=prefix,
                                          before_start=before_start)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(opening)
                go.wait(30)
                def send() -> None:
                    s.sendall(body)
                    s.shutdown(socket.SHUT_WR)

                writer = threading.Thread(target=send)
                writer.start()
                got = traffic.recv_all(s)
                writer.join()
                return got

        got_d = _in_thread(client)
        yield harness.next_start()
        go.set()
        got = yield got_d
        [front] = yield self.all_done(harness, 1)
        yield _in_thread(backend.finished.wait, 30)
        # The takeover really had both kinds of buffer to deal with.
        self.assertGreater(unsent["peer_offset"], 0)
        self.assertGreater(unsent["peer"], 1024 * 1024)
        self.assertGreater(unsent["client"], 1024 * 1024)
        self.assertIsNone(backend.error)
        self.assertTrue(backend.result == prefix + opening + b"extra-to-peer" + body,
                        "the backend's stream differs")
        self.assertTrue(got == banner + b"extra-to-client" + reply, "the client's stream differs")
        # Buffered bytes were counted when written (by the switch), not again.
        self.assertEqual((front.books.bytes_in, front.books.bytes_out),
                         (len(opening) + len(body), len(reply)))
        self.assertEqual(front.books.reason, "normal")

    # -- half-close ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_clientEndOfStreamBeforeTheSplice(self) -> Any:
        """A client that sent everything and half-closed before the backend answered."""
        # Waiting for more than the client sends, the front sees its end of stream.
        harness, port = yield self.listen(self.digest_backend(), opening_size=1000)
        seen = yield _in_thread(traffic.exchange, port, 0, 300_000, 3)
        [front] = yield self.all_done(harness, 1)
        self.assertTrue(front.eof_before_relay)
        self.assertEqual((front.books.bytes_in, front.books.bytes_out),
                         (seen["sent"], seen["received"]))
        self.assertEqual(front.books.reason, "normal")
        self.assert_clean_end(front)

    @defer.inlineCallbacks
    def test_backendHalfClosesFirst(self) -> Any:
        """The backend's FIN reaches the client; the client's bytes still reach the backend."""
        greeting = traffic.payload(5, 1_000_000)
        body = traffic.payload(6, 5_000_000)

        def handle(conn: socket.socket) -> bytes:
            _recv_exact(conn, OPENING)
            conn.sendall(greeting)
            conn.shutdown(socket.SHUT_WR)
            return traffic.recv_all(conn)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(b"h" * OPENING)
                first = traffic.recv_all(s)  # ends only if the FIN was passed on
                s.sendall(body)
                s.shutdown(socket.SHUT_WR)
                return first, traffic.recv_all(s)

        first, after = yield _in_thread(client)
        [front] = yield self.all_done(harness, 1)
        yield _in_thread(backend.finished.wait, 30)
        self.assertTrue(first == greeting)
        self.assertEqual(after, b"")
        self.assertTrue(backend.result == body)
        self.assertEqual((front.books.bytes_in, front.books.bytes_out),
                         (OPENING + len(body), len(greeting)))
        self.assertEqual(front.books.reason, "normal")
        self.assert_clean_end(front)

    # -- flow control --------------------------------------------------------

    @defer.inlineCallbacks
    def test_slowClientPausesBackend(self) -> Any:
        """A client that does not read stops the backend within the kernel's buffers."""
        bound = traffic.kernel_buffering()
        total = traffic.whole_chunks(bound + 32 * 1024 * 1024, 65536)
        sent = [0]

        def handle(conn: socket.socket) -> None:
            _recv_exact(conn, OPENING)
            chunk = b"x" * 65536
            while sent[0] < total:
                conn.sendall(chunk)
                sent[0] += len(chunk)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())
        client = socket.socket()
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.connect(("127.0.0.1", port))
        client.sendall(b"s" * OPENING)
        front = yield harness.next_start()
        yield _sleep(0.5)
        cpu = _cpu_seconds()
        yield _sleep(1.5)
        # Stalled means waiting on the reactor, not polling a full pipe.
        self.assertLess(_cpu_seconds() - cpu, 0.5)
        # Kernel buffers on both legs (and the relay's pipe) hold the rest.
        self.assertLess(sent[0], bound)
        relay = front.relay
        assert relay is not None
        self.assertFalse(relay.peer.reading)
        self.assertTrue(relay.client.writing)
        self.assertLessEqual(relay.peer.outgoing.pending, PIPE_SIZE)
        got = yield _in_thread(_count_until_eof, client)
        client.close()
        self.assertEqual(got, total)
        [front] = yield self.all_done(harness, 1)
        self.assertEqual(front.books.bytes_out, total)
        self.assertEqual(front.books.reason, "normal")

    @defer.inlineCallbacks
    def test_slowBackendPausesClient(self) -> Any:
        """A backend that does not read stops the client within a few MB."""
        total = 64 * 1024 * 1024
        sent = [0]
        reading = threading.Event()

        def handle(conn: socket.socket) -> int:
            reading.wait(30)
            return _count_until_eof(conn)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                chunk = b"y" * 65536
                s.sendall(b"c" * OPENING)
                while sent[0] < total:
                    s.sendall(chunk)
                    sent[0] += len(chunk)
                s.shutdown(socket.SHUT_WR)
                return traffic.recv_all(s)

        got_d = _in_thread(client)
        front = yield harness.next_start()
        yield _sleep(0.5)
        cpu = _cpu_seconds()
        yield _sleep(1.5)
        self.assertLess(_cpu_seconds() - cpu, 0.5)
        self.assertLess(sent[0], 24 * 1024 * 1024)
        relay = front.relay
        assert relay is not None
        self.assertFalse(relay.client.reading)
        self.assertTrue(relay.peer.writing)
        reading.set()
        got = yield got_d
        self.assertEqual(got, b"")
        [front] = yield self.all_done(harness, 1)
        yield _in_thread(backend.finished.wait, 30)
        self.assertEqual(backend.result, OPENING + total)
        self.assertEqual(front.books.bytes_in, OPENING + total)
        self.assertEqual(front.books.reason, "normal")

    # -- resets and stop -----------------------------------------------------

    @defer.inlineCallbacks
    def test_clientResetEndsBoth(self) -> Any:
        def handle(conn: socket.socket) -> None:
            _recv_exact(conn, OPENING)
            chunk = b"z" * 65536
            while True:  # until the relay's reset reaches us
                conn.sendall(chunk)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> None:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(b"r" * OPENING)
            _recv_exact(s, 1_000_000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.close()

        yield _in_thread(client)
        [front] = yield self.all_done(harness, 1)
        yield _in_thread(backend.finished.wait, 30)
        self.assertEqual(front.books.reason, "client_reset")
        self.assertIn(front.books.detail, ("Connection reset by peer", "Broken pipe"))
        self.assertIsInstance(backend.error, (ConnectionResetError, BrokenPipeError))
        self.assertGreaterEqual(front.books.bytes_out, 1_000_000)

    @defer.inlineCallbacks
    def test_backendResetEndsBoth(self) -> Any:
        def handle(conn: socket.socket) -> None:
            _recv_exact(conn, OPENING)
            conn.sendall(b"b" * 1_000_000)
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(b"r" * OPENING)
                try:
                    traffic.recv_all(s)
                except ConnectionResetError:
                    return "reset"
                return "eof"

        outcome = yield _in_thread(client)
        [front] = yield self.all_done(harness, 1)
        self.assertEqual(front.books.reason, "backend_reset")
        self.assertEqual(front.books.detail, "Connection reset by peer")
        # A reset is passed on as a reset: a FIN would pass a truncated stream off as whole.
        self.assertEqual(outcome, "reset")

    @defer.inlineCallbacks
    def test_resetAfterHalfCloseEndsBoth(self) -> Any:
        """A reset on a socket the relay only writes to (the reactor reports it as lost)."""
        def handle(conn: socket.socket) -> None:
            _recv_exact(conn, OPENING)
            chunk = b"w" * 65536
            while True:
                conn.sendall(chunk)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> None:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(b"w" * OPENING)
            s.shutdown(socket.SHUT_WR)
            _recv_exact(s, 2_000_000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.close()

        yield _in_thread(client)
        [front] = yield self.all_done(harness, 1)
        yield _in_thread(backend.finished.wait, 30)
        self.assertEqual(front.books.reason, "client_reset")
        self.assertIn(front.books.detail, ("Connection reset by peer", "Broken pipe"))
        self.assertIsInstance(backend.error, (ConnectionResetError, BrokenPipeError))

    @defer.inlineCallbacks
    def test_reactorLettingGoClosesBoth(self) -> Any:
        """At shutdown the reactor drops its descriptors and calls connectionLost."""
        backend, opened = self.listening_backend()
        harness, port = yield self.listen(backend.endpoint())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"l" * OPENING)
            front = yield harness.next_start()
            yield _in_thread(opened.wait, 10)
            relay = front.relay
            assert relay is not None
            for side in (relay.client, relay.peer):  # what disconnectAll does
                reactor.removeReader(side)
                reactor.removeWriter(side)
                side.connectionLost(Failure(error.ConnectionLost()))
            try:
                yield _in_thread(traffic.recv_all, client)
            except ConnectionResetError:
                pass
        [front] = yield self.all_done(harness, 1)
        self.assertEqual(front.books.reason, "shutdown")

    @defer.inlineCallbacks
    def test_stopClosesBoth(self) -> Any:
        """The switch's idle timeout: both ends get an orderly close."""
        backend, opened = self.listening_backend()
        harness, port = yield self.listen(backend.endpoint())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"i" * OPENING)
            front = yield harness.next_start()
            # Stopped with the opening still in flight, it would be a reset.
            yield _in_thread(opened.wait, 10)
            assert front.relay is not None
            front.relay.stop("idle_timeout", "no data either way for 0s")
            front.relay.stop("again")  # a second stop changes nothing
            got = yield _in_thread(traffic.recv_all, client)
        self.assertEqual(got, b"")
        [front] = yield self.all_done(harness, 1)
        yield _in_thread(backend.finished.wait, 30)
        self.assertIsNone(backend.error)
        self.assertEqual(backend.result, b"")
        self.assertEqual((front.books.reason, front.books.detail),
                         ("idle_timeout", "no data either way for 0s"))
        self.assert_clean_end(front)

    @defer.inlineCallbacks
    def test_stopWithBytesInFlightResets(self) -> Any:
        def handle(conn: socket.socket) -> None:
            _recv_exact(conn, OPENING)
            chunk = b"f" * 65536
            while True:
                conn.sendall(chunk)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())
        client = socket.socket()
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.connect(("127.0.0.1", port))
        client.sendall(b"f" * OPENING)
        front = yield harness.next_start()
        yield _sleep(0.5)
        assert front.relay is not None
        front.relay.stop("idle_timeout")
        [front] = yield self.all_done(harness, 1)
        yield _in_thread(backend.finished.wait, 30)
        self.assertEqual(front.books.reason, "idle_timeout")
        self.assertIsInstance(backend.error, (ConnectionResetError, BrokenPipeError))
        with self.assertRaises(ConnectionResetError):
            yield _in_thread(_count_until_eof, client)


class DirectConnectTests(unittest.TestCase):
    """The bare-socket connect of the fast path, against real loopback sockets."""

    if not SUPPORTED:
        skip = "splice(2) is Linux only"

    def connect(self, port: int, done: Callable[[Any, Any], None] | None = None
                ) -> tuple[DirectConnect, list[Any]]:
        outcomes: list[Any] = []
        deadlines = Deadlines(reactor, 5.0, DirectConnect.expired)
        self.addCleanup(deadlines.stop)
        attempt = DirectConnect(reactor, socket.AF_INET, ("127.0.0.1", port), deadlines,
                                done or (lambda sock, failure: outcomes.append((sock, failure))))
        return attempt, outcomes

    @defer.inlineCallbacks
    def outcome(self, outcomes: list[Any]) -> Any:
        """The one outcome, once there is one (a busy kernel can delay the
        loopback handshake past the call: then a poll round decides)."""
        for _ in range(200):
            if outcomes:
                break
            yield _sleep(0.01)
        self.assertEqual(len(outcomes), 1)
        return outcomes[0]

    @defer.inlineCallbacks
    def test_loopbackConnectsWithinTheCall(self) -> Any:
        """On loopback the handshake is over when connect(2) returns: the
        socket is handed over at once, never registered for a poll round."""
        listening = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listening.close)
        within_the_call = 0
        for _ in range(10):
            writers_before = set(reactor.getWriters())
            attempt, outcomes = self.connect(listening.getsockname()[1])
            if outcomes:
                within_the_call += 1
                self.assertIsNone(attempt.done)  # decided, nothing pending
                self.assertEqual(set(reactor.getWriters()), writers_before)
            sock, failure = yield self.outcome(outcomes)
            self.assertIsNone(failure)
            accepted, _ = listening.accept()
            self.assertEqual(accepted.getpeername(), sock.getsockname())
            accepted.close()
            close_socket(reactor, sock)
        # Always, on an idle machine; a loaded one may defer a few.
        self.assertGreater(within_the_call, 0)

    @defer.inlineCallbacks
    def test_loopbackRefusalIsAConnectError(self) -> Any:
        probe = socket.create_server(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        attempt, outcomes = self.connect(port)
        sock, failure = yield self.outcome(outcomes)
        self.assertIsNone(sock)
        self.assertTrue(failure.check(error.ConnectionRefusedError), failure)
        self.assertEqual([w for w in reactor.getWriters() if w is attempt], [])

    @defer.inlineCallbacks
    def test_takerThatFailsLeavesNoSocketBehind(self) -> Any:
        """A taker that raises before any relay owns the socket: it is closed
        and unregistered, and the error logged."""
        listening = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listening.close)
        handed: list[socket.socket] = []

        def done(sock: Any, failure: Any) -> None:
            handed.append(sock)
            raise RuntimeError("taker failed")

        attempt, _ = self.connect(listening.getsockname()[1], done)
        for _ in range(200):
            if handed:
                break
            yield _sleep(0.01)
        [sock] = handed
        self.assertEqual(sock.fileno(), -1)  # closed
        self.assertNotIn(attempt, reactor.getWriters())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_loopbackAddresses(self) -> None:
        for host, expected in [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                               ("10.0.0.1", False), ("2001:db8::1", False),
                               ("localhost", False)]:
            self.assertEqual(_loopback(host), expected, host)
