"""The relay over real loopback sockets: integrity, half-close, flow control, failures."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest

from switchyard.config import compile_config
from switchyard.interfaces import Match
from switchyard.listener import ListenerBooks
from tests import traffic
from tests.fakes import CapturedEvents, ScriptedFactory
from tests.peers import free_port


def matches_anything(data: bytes) -> Match:
    return Match({})


class _Capturing(ListenerBooks):
    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        self.last = p
        return p


class RelayTests(unittest.TestCase):
    """With the splice(2) fast path (the default on Linux)."""

    timeout = 120
    fast_path = True

    def setUp(self) -> None:
        self.log = CapturedEvents(self)

    @defer.inlineCallbacks
    def start(self, to: str, backends: dict[str, Any] | None = None,
              responders: dict[str, Any] | None = None, **listener: Any) -> Any:
        raw = {
            "listener": {"t": {"listen": "tcp:0", "fast_path": self.fast_path, "route": [
                {"match": "scripted", "decide": matches_anything, "to": to}], **listener}},
            "backend": backends or {},
            "responder": responders or {},
        }
        config = compile_config(raw, reactor, factories={"scripted": ScriptedFactory()})
        self.factory = _Capturing(config.listeners[0], reactor)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def wait_for_log(self, n: int = 1) -> Any:
        for _ in range(200):
            if len(self.log.events) >= n:
                return self.log.events
            yield _sleep(0.05)
        self.fail(f"expected {n} access events, got {self.log.events}")

    @defer.inlineCallbacks
    def test_echoSendsEverythingBackThenHalfCloses(self) -> None:
        port = yield self.start("echo")
        data = traffic.payload(7, 3 * 1024 * 1024)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
                t.start()
                got = traffic.recv_all(s)
                t.join()
                return got

        got = yield threads.deferToThread(client)
        self.assertEqual(got, data)
        [event] = yield self.wait_for_log()
        self.assertEqual((event["reason"], event["bytes_in"], event["bytes_out"]),
                         ("normal", len(data), len(data)))

    @defer.inlineCallbacks
    def test_backendTransferBothWaysSurvivesHalfClose(self) -> None:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{backend.port}"]}})
        seen = yield threads.deferToThread(traffic.exchange, port, 2_000_000, 5_000_000)
        [event] = yield self.wait_for_log()
        self.assertEqual(event["bytes_in"], seen["sent"])
        self.assertEqual(event["bytes_out"], seen["received"])
        self.assertEqual(event["server"], f"127.0.0.1:{backend.port}")
        self.assertEqual(event["reason"], "normal")

    @defer.inlineCallbacks
    def test_rejectResponderRepliesThenCloses(self) -> None:
        port = yield self.start("deny", responders={"deny": {"kind": "reject",
                                                             "reply": "go away\n"}})
        got = yield threads.deferToThread(_send_and_read, port, b"hello")
        self.assertEqual(got, b"go away\n")
        [event] = yield self.wait_for_log()
        self.assertEqual((event["reason"], event["server"], event["bytes_out"]),
                         ("rejected", "deny", 8))

    @defer.inlineCallbacks
    def test_silentClientClosedAtInspectTimeout(self) -> None:
        port = yield self.start("echo", inspect_timeout=0.5)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            got = yield threads.deferToThread(traffic.recv_all, s)
        self.assertEqual(got, b"")
        self.assertLess(time.monotonic() - started, 5)
        [event] = yield self.wait_for_log()
        self.assertEqual(event["reason"], "sniff_timeout")

    @defer.inlineCallbacks
    def test_refusedBackendClosesClientAndSaysWhy(self) -> None:
        dead = free_port()
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{dead}"]}})
        got = yield threads.deferToThread(_send_and_read, port, b"hello")
        self.assertEqual(got, b"")
        [event] = yield self.wait_for_log()
        self.assertEqual(event["reason"], "backend_refused")
        self.assertIn(str(dead), event["detail"])

    @defer.inlineCallbacks
    def test_nextServerTriedWhenFirstRefuses(self) -> None:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        dead = free_port()
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{dead}",
                                                        f"tcp:host=127.0.0.1:port={backend.port}"]}})
        yield threads.deferToThread(traffic.exchange, port, 1000, 1000)
        [event] = yield self.wait_for_log()
        self.assertEqual(event["server"], f"tcp:host=127.0.0.1:port={backend.port}")

    @defer.inlineCallbacks
    def test_backendThatNeverAcceptsTimesOut(self) -> None:
        # A listening socket whose accept queue is full drops new SYNs, so
        # connecting to it hangs: the connect timeout must end it.
        jammed = socket.socket()
        jammed.bind(("127.0.0.1", 0))
        jammed.listen(0)
        self.addCleanup(jammed.close)
        fillers = []
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(jammed.getsockname())
            fillers.append(f)
        self.addCleanup(lambda: [f.close() for f in fillers])
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{jammed.getsockname()[1]}"],
                                            "connect_timeout": 0.5}})
        started = time.monotonic()
        got = yield threads.deferToThread(_send_and_read, port, b"hello")
        self.assertEqual(got, b"")
        self.assertLess(time.monotonic() - started, 10)
        [event] = yield self.wait_for_log()
        self.assertEqual(event["reason"], "backend_timeout")

    @defer.inlineCallbacks
    def test_slowClientPausesBackend(self) -> None:
        """A client that does not read must stop the backend, not fill memory."""
        # The kernel's buffers on both legs may hold this much: beyond it
        # the switch would be swallowing the stream itself.
        bound = traffic.kernel_buffering()
        total = traffic.whole_chunks(bound + 32 * 1024 * 1024, 65536)
        sent = [0]
        listening = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listening.close)

        def backend() -> None:
            conn, _ = listening.accept()
            conn.recv(2)  # unread bytes would make close() send a reset
            chunk = b"x" * 65536
            try:
                while sent[0] < total:
                    conn.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass
            finally:
                conn.close()

        threading.Thread(target=backend, daemon=True).start()
        backend_address = f"127.0.0.1:{listening.getsockname()[1]}"
        port = yield self.start("b", {"b": {"servers": [backend_address]}})
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.sendall(b"go")
        yield _sleep(2)
        # Without flow control the switch would have swallowed it all.
        self.assertLess(sent[0], bound)
        transport = self.factory.last.transport
        self.assertLess(len(transport.dataBuffer) + transport._tempDataLen, 2 * 1024 * 1024)
        got = yield threads.deferToThread(_read_count, client)
        self.assertEqual(got, total)

    @defer.inlineCallbacks
    def test_relayedSocketsSendSmallWritesAtOnce(self) -> None:
        """Both relayed TCP sockets have TCP_NODELAY, as HAProxy's and nginx's do."""
        listening = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listening.close)
        port = yield self.start("b", {"b": {"servers": [
            f"127.0.0.1:{listening.getsockname()[1]}"]}})
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        client.sendall(b"hello")
        for _ in range(200):
            connection = getattr(self.factory, "last", None)
            if connection is not None and connection.state.value == "relaying":
                break
            yield _sleep(0.05)
        relay = connection.relay
        self.assertEqual(connection.relay_kind, "splice" if self.fast_path else "twisted")
        if self.fast_path:
            sockets = [relay.client.sock, relay.peer.sock]
        else:
            sockets = [relay.client.getHandle(), relay.peer.getHandle()]
        for sock in sockets:
            self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), sock)


def _send_and_read(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        return traffic.recv_all(s)


def _read_count(sock: socket.socket) -> int:
    n = 0
    sock.settimeout(60)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return n
        n += len(chunk)


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class TwistedRelayTests(RelayTests):
    """The same behaviour through Twisted's own relay (fast_path = false)."""

    fast_path = False
