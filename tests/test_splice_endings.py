"""How the splice(2) relay ends (switchyard/relay/splice.py): resets passed on
as resets, the reactor letting go, stop() with and without bytes in flight,
and the idle clock it keeps, over real loopback sockets."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from twisted.internet import defer, error
from twisted.python.failure import Failure

from switchyard.relay.splice import SUPPORTED
from tests import traffic
from tests.helpers import count_until_eof, in_thread, recv_exact, until
from tests.splice_harness import LINGER_RESET, OPENING, SpliceCase, reactor


class SpliceEndingTests(SpliceCase):
    if not SUPPORTED:
        skip = "splice(2) is Linux only"

    @defer.inlineCallbacks
    def test_clientResetEndsBoth(self) -> Any:
        def handle(conn: socket.socket) -> None:
            recv_exact(conn, OPENING)
            chunk = b"z" * 65536
            while True:  # until the relay's reset reaches us
                conn.sendall(chunk)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> None:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(b"r" * OPENING)
            recv_exact(s, 1_000_000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.close()

        yield in_thread(client)
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
        self.assertEqual(front.books.reason, "client_reset")
        self.assertIn(front.books.detail, ("Connection reset by peer", "Broken pipe"))
        self.assertIsInstance(backend.error, (ConnectionResetError, BrokenPipeError))
        self.assertGreaterEqual(front.books.bytes_out, 1_000_000)

    @defer.inlineCallbacks
    def test_backendResetEndsBoth(self) -> Any:
        delivered = threading.Event()

        def handle(conn: socket.socket) -> None:
            recv_exact(conn, OPENING)
            conn.sendall(b"b" * 1_000_000)
            delivered.wait(30)  # all of it reached the client: only the reset is left
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(b"r" * OPENING)
                recv_exact(s, 1_000_000)
                delivered.set()
                try:
                    traffic.recv_all(s)
                except ConnectionResetError:
                    return "reset"
                return "eof"

        outcome = yield in_thread(client)
        [front] = yield self.all_done(harness, 1)
        self.assertEqual(front.books.reason, "backend_reset")
        self.assertEqual(front.books.detail, "Connection reset by peer")
        # A reset is passed on as a reset: a FIN would pass a truncated stream off as whole.
        self.assertEqual(outcome, "reset")

    @defer.inlineCallbacks
    def test_resetAfterHalfCloseEndsBoth(self) -> Any:
        """A reset on a socket the relay only writes to (the reactor reports it as lost)."""
        def handle(conn: socket.socket) -> None:
            recv_exact(conn, OPENING)
            chunk = b"w" * 65536
            while True:
                conn.sendall(chunk)

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> None:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(b"w" * OPENING)
            s.shutdown(socket.SHUT_WR)
            recv_exact(s, 2_000_000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            s.close()

        yield in_thread(client)
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
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
            yield in_thread(opened.wait, 10)
            relay = front.relay
            assert relay is not None
            for side in (relay.client, relay.peer):  # what disconnectAll does
                reactor.removeReader(side)
                reactor.removeWriter(side)
                side.connectionLost(Failure(error.ConnectionLost()))
            try:
                yield in_thread(traffic.recv_all, client)
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
            yield in_thread(opened.wait, 10)
            assert front.relay is not None
            front.relay.stop("idle_timeout", "no data either way for 0s")
            front.relay.stop("again")  # a second stop changes nothing
            got = yield in_thread(traffic.recv_all, client)
        self.assertEqual(got, b"")
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
        self.assertIsNone(backend.error)
        self.assertEqual(backend.result, b"")
        self.assertEqual((front.books.reason, front.books.detail),
                         ("idle_timeout", "no data either way for 0s"))
        self.assert_clean_end(front)

    @defer.inlineCallbacks
    def test_stopWithBytesInFlightResets(self) -> Any:
        def handle(conn: socket.socket) -> None:
            recv_exact(conn, OPENING)
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
        relay = front.relay
        assert relay is not None
        yield until(lambda: relay.client.incoming.backlog, "bytes waiting for the client")
        relay.stop("idle_timeout")
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
        self.assertEqual(front.books.reason, "idle_timeout")
        self.assertIsInstance(backend.error, (ConnectionResetError, BrokenPipeError))
        with self.assertRaises(ConnectionResetError):
            yield in_thread(count_until_eof, client)

    # -- the idle clock --------------------------------------------------------

    @defer.inlineCallbacks
    def test_bytesFromTheBackendMoveTheIdleClock(self) -> Any:
        """A download: every read from the backend is activity (the listener's
        idle sweep reads last_activity)."""
        sent_at: list[float] = []

        def handle(conn: socket.socket) -> None:
            recv_exact(conn, OPENING)
            for _ in range(5):
                sent_at.append(reactor.seconds())
                conn.sendall(b"d" * 100)
                time.sleep(0.05)  # pacing: separate reads

        backend = self.raw_backend(handle)
        harness, port = yield self.listen(backend.endpoint())

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(b"d" * OPENING)
                return traffic.recv_all(s)

        got = yield in_thread(client)
        [front] = yield self.all_done(harness, 1)
        self.assertEqual(got, b"d" * 500)
        self.assertEqual(front.books.bytes_out, 500)
        self.assertGreaterEqual(front.books.last_activity, sent_at[-1])

    @defer.inlineCallbacks
    def test_bytesFromTheClientMoveTheIdleClock(self) -> Any:
        """An upload: every read from the client is activity."""
        sent_at: list[float] = []
        backend, _ = self.listening_backend()
        harness, port = yield self.listen(backend.endpoint())

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(b"u" * OPENING)
                for _ in range(5):
                    time.sleep(0.05)  # pacing: separate reads
                    sent_at.append(reactor.seconds())
                    s.sendall(b"u" * 100)
                s.shutdown(socket.SHUT_WR)
                return traffic.recv_all(s)

        got = yield in_thread(client)
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
        self.assertEqual((got, backend.result), (b"", b"u" * 500))
        self.assertEqual(front.books.bytes_in, OPENING + 500)
        self.assertGreaterEqual(front.books.last_activity, sent_at[-1])
