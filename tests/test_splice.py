"""The splice(2) relay (switchyard/relay/splice.py) over real loopback sockets
and the reactor trial runs: which transports qualify, integrity, what Twisted
still buffered, half-close, flow control. Endings are in test_splice_endings,
the bare-socket connect in test_splice_connect."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from switchyard.relay.splice import PIPE_SIZE, SUPPORTED, SpliceRelay, can_splice
from tests import traffic
from tests.helpers import count_until_eof, in_thread, later, recv_exact, steady, until
from tests.splice_harness import OPENING, Front, SpliceCase, UnixDigestServer, fd_count, reactor


class SpliceRelayTests(SpliceCase):
    if not SUPPORTED:
        skip = "splice(2) is Linux only"

    @defer.inlineCallbacks
    def assertNoRelayEvents(self, window: float = 1.0) -> Any:
        """While nothing can move, the relay gets no events: it waits on the
        reactor rather than polling a full pipe or socket."""
        events = [0]
        pump, copy = SpliceRelay._pump, SpliceRelay._copy_message

        def counting(method: Any) -> Any:
            def counted(relay: SpliceRelay, d: Any) -> None:
                events[0] += 1
                method(relay, d)
            return counted

        self.patch(SpliceRelay, "_pump", counting(pump))
        self.patch(SpliceRelay, "_copy_message", counting(copy))
        yield later(window)  # an observation window: nothing is expected to happen
        # None, or a stray one; a relay polling what it cannot move gets
        # tens of thousands a second.
        self.assertLess(events[0], 10)

    # -- which transports qualify ------------------------------------------

    @defer.inlineCallbacks
    def test_canSpliceOnlyPlainSockets(self) -> Any:
        backend = self.raw_backend(lambda conn: conn.recv(OPENING))
        seen: dict[str, bool] = {}

        def check(front: Front, peer: Any) -> None:
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
            yield in_thread(backend.finished.wait, 10)
            got = yield in_thread(traffic.recv_all, client)
        self.assertEqual(got, b"")
        yield front.done
        self.assertFalse(can_splice(front.transport, front.peer))  # closed now

    # -- integrity, counts, fds --------------------------------------------

    @defer.inlineCallbacks
    def test_integrityUnderConcurrency(self) -> Any:
        """Twenty checked transfers of megabytes both ways at once, counted exactly."""
        harness, port = yield self.listen(self.digest_backend())
        yield later(0)  # the running reactor has all of its own fds (its SIGCHLD waker)
        before = fd_count()
        sizes = [(1_000_000 + 97_003 * i, 3_500_000 - 101_009 * i) for i in range(20)]
        seen = yield defer.gatherResults([
            in_thread(traffic.exchange, port, send, receive, i)
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
        server = UnixDigestServer(path, traffic._DigestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            os.unlink(path)
            os.rmdir(directory)

        self.addCleanup(stop)
        harness, port = yield self.listen(UNIXClientEndpoint(reactor, path))
        seen = yield in_thread(traffic.exchange, port, 3_000_000, 4_000_000, 9)
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
        def before_start(front: Front, peer: Any) -> Any:
            front.transport.write(banner)
            # Twisted sends what the kernel takes (its buffers fill: nobody
            # reads yet), and keeps the rest.
            yield until(lambda: peer.offset > 0 and front.transport.offset > 0,
                        "Twisted to have written to both sockets")
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

        got_d = in_thread(client)
        yield harness.next_start()
        go.set()
        got = yield got_d
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
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
        seen = yield in_thread(traffic.exchange, port, 0, 300_000, 3)
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
            recv_exact(conn, OPENING)
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

        first, after = yield in_thread(client)
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
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
            recv_exact(conn, OPENING)
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
        stalled = yield in_thread(steady, lambda: sent[0], "the backend's sending", 1.0)
        # Kernel buffers on both legs (and the relay's pipe) hold the rest.
        self.assertLess(stalled, bound)
        relay = front.relay
        assert relay is not None
        self.assertFalse(relay.peer.reading)
        self.assertTrue(relay.client.writing)
        self.assertLessEqual(relay.peer.outgoing.pending, PIPE_SIZE)
        # Stalled means waiting on the reactor, not polling a full pipe.
        yield self.assertNoRelayEvents()
        got = yield in_thread(count_until_eof, client)
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
            return count_until_eof(conn)

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

        got_d = in_thread(client)
        front = yield harness.next_start()
        stalled = yield in_thread(steady, lambda: sent[0], "the client's sending", 1.0)
        self.assertLess(stalled, 24 * 1024 * 1024)
        relay = front.relay
        assert relay is not None
        self.assertFalse(relay.client.reading)
        self.assertTrue(relay.peer.writing)
        yield self.assertNoRelayEvents()
        reading.set()
        got = yield got_d
        self.assertEqual(got, b"")
        [front] = yield self.all_done(harness, 1)
        yield in_thread(backend.finished.wait, 30)
        self.assertEqual(backend.result, OPENING + total)
        self.assertEqual(front.books.bytes_in, OPENING + total)
        self.assertEqual(front.books.reason, "normal")
