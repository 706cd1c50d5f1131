"""The relay through a listener over real loopback sockets, with splice(2) and with
Twisted's transports: integrity, half-close, flow control, idle timeouts, failures.

Every access event says which relay carried the connection (``relay``): these
tests check it, so a fast path that quietly stopped running fails them."""

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
from tests.helpers import (
    count_until_eof,
    free_port,
    in_thread,
    recv_exact,
    send_and_read,
    steady,
    until,
)


def matches_anything(data: bytes) -> Match:
    return Match({})


# One-way traffic against the idle timeout: a message every PACE seconds for
# twice IDLE. Only bytes that count as activity keep the connection open; a
# relay that missed one direction would cut it at IDLE, halfway through.
IDLE = 2.0
PACE = 0.2
MESSAGES = 20
MESSAGE = b"m" * 100


class _OneWayBackend:
    """A backend on 127.0.0.1 for one connection: ``download`` sends MESSAGES
    paced messages then closes; ``upload`` reads to the end, then answers how
    many bytes it got."""

    def __init__(self, testcase: unittest.TestCase, mode: str) -> None:
        self.listening = socket.create_server(("127.0.0.1", 0))
        testcase.addCleanup(self.listening.close)
        self.port = self.listening.getsockname()[1]
        self.mode = mode
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.listening.accept()
        with conn:
            conn.settimeout(60)
            recv_exact(conn, 4)  # the opening: the route is decided
            if self.mode == "download":
                for _ in range(MESSAGES):
                    conn.sendall(MESSAGE)
                    time.sleep(PACE)  # pacing the peer, not waiting on the switch
            else:
                conn.sendall(b"got %d" % (4 + count_until_eof(conn)))


def _upload(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"UPLD")
        for _ in range(MESSAGES):
            time.sleep(PACE)
            s.sendall(MESSAGE)
        s.shutdown(socket.SHUT_WR)
        return traffic.recv_all(s)


class _Capturing(ListenerBooks):
    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        self.last = p
        return p


class RelayTests(unittest.TestCase):
    """With the splice(2) fast path (the default on Linux)."""

    timeout = 120
    fast_path = True
    relay_kind = "splice"  # what a backend's connections are relayed with

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
        yield until(lambda: len(self.log.events) >= n, f"{n} access events")
        return self.log.events

    @defer.inlineCallbacks
    def relayed_event(self) -> Any:
        """The one access event, of a connection this class's relay carried."""
        [event] = yield self.wait_for_log()
        self.assertEqual(event["relay"], self.relay_kind, event["access_line"])
        return event

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
        # The echo responder's peer is no socket: never spliced.
        self.assertEqual(event["relay"], "twisted")

    @defer.inlineCallbacks
    def test_backendTransferBothWaysSurvivesHalfClose(self) -> None:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{backend.port}"]}})
        seen = yield threads.deferToThread(traffic.exchange, port, 2_000_000, 5_000_000)
        event = yield self.relayed_event()
        self.assertEqual(event["bytes_in"], seen["sent"])
        self.assertEqual(event["bytes_out"], seen["received"])
        self.assertEqual(event["server"], f"127.0.0.1:{backend.port}")
        self.assertEqual(event["reason"], "normal")

    @defer.inlineCallbacks
    def test_downloadAloneIsNotIdle(self) -> None:
        """Bytes only from the server, for twice the idle timeout: all arrive."""
        backend = _OneWayBackend(self, "download")
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{backend.port}"]}},
                                idle_timeout=IDLE)
        got = yield in_thread(send_and_read, port, b"DOWN")
        self.assertEqual(len(got), len(MESSAGE) * MESSAGES)
        event = yield self.relayed_event()
        self.assertEqual((event["reason"], event["bytes_out"]), ("normal", len(got)))

    @defer.inlineCallbacks
    def test_uploadAloneIsNotIdle(self) -> None:
        """Bytes only from the client, for twice the idle timeout: all arrive."""
        backend = _OneWayBackend(self, "upload")
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{backend.port}"]}},
                                idle_timeout=IDLE)
        got = yield in_thread(_upload, port)
        sent = 4 + len(MESSAGE) * MESSAGES
        self.assertEqual(got, b"got %d" % sent)
        event = yield self.relayed_event()
        self.assertEqual((event["reason"], event["bytes_in"]), ("normal", sent))

    @defer.inlineCallbacks
    def test_silenceBothWaysEndsAtTheIdleTimeout(self) -> None:
        """The same relay, quiet after the opening: closed by the idle timeout."""
        listening = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listening.close)
        held: list[socket.socket] = []
        threading.Thread(target=lambda: held.append(listening.accept()[0]), daemon=True).start()
        self.addCleanup(lambda: [s.close() for s in held])
        port = yield self.start("b", {"b": {"servers": [
            f"127.0.0.1:{listening.getsockname()[1]}"]}}, idle_timeout=IDLE)
        got = yield in_thread(send_and_read, port, b"QUIET")
        self.assertEqual(got, b"")
        event = yield self.relayed_event()
        self.assertEqual(event["reason"], "idle_timeout")

    @defer.inlineCallbacks
    def test_rejectResponderRepliesThenCloses(self) -> None:
        port = yield self.start("deny", responders={"deny": {"kind": "reject",
                                                             "reply": "go away\n"}})
        got = yield threads.deferToThread(send_and_read, port, b"hello")
        self.assertEqual(got, b"go away\n")
        [event] = yield self.wait_for_log()
        self.assertEqual((event["reason"], event["server"], event["bytes_out"], event["relay"]),
                         ("rejected", "deny", 8, "-"))

    @defer.inlineCallbacks
    def test_silentClientClosedAtInspectTimeout(self) -> None:
        port = yield self.start("echo", inspect_timeout=0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            got = yield threads.deferToThread(traffic.recv_all, s)
        self.assertEqual(got, b"")
        [event] = yield self.wait_for_log()
        self.assertEqual((event["reason"], event["detail"], event["relay"]),
                         ("sniff_timeout", "no decision after 0.5s (0 bytes read)", "-"))

    @defer.inlineCallbacks
    def test_refusedBackendClosesClientAndSaysWhy(self) -> None:
        dead = free_port()
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{dead}"]}})
        got = yield threads.deferToThread(send_and_read, port, b"hello")
        self.assertEqual(got, b"")
        [event] = yield self.wait_for_log()
        self.assertEqual((event["reason"], event["relay"]), ("backend_refused", "-"))
        self.assertIn(str(dead), event["detail"])

    @defer.inlineCallbacks
    def test_nextServerTriedWhenFirstRefuses(self) -> None:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        dead = free_port()
        port = yield self.start("b", {"b": {"servers": [f"127.0.0.1:{dead}",
                                                        f"tcp:host=127.0.0.1:port={backend.port}"]}})
        yield threads.deferToThread(traffic.exchange, port, 1000, 1000)
        event = yield self.relayed_event()
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
        got = yield threads.deferToThread(send_and_read, port, b"hello")
        self.assertEqual(got, b"")
        [event] = yield self.wait_for_log()
        self.assertEqual(event["reason"], "backend_timeout")
        # The route's 0.5 s, not a default, ended it.
        self.assertIn("timed out after 0.5s", event["detail"])

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
        # The backend stops once the kernel's buffers and the switch's are full.
        stalled = yield in_thread(steady, lambda: sent[0], "the backend's sending", 1.0)
        # Without flow control the switch would have swallowed it all.
        self.assertLess(stalled, bound)
        connection = self.factory.last
        self.assertEqual(connection.relay_kind, self.relay_kind)
        transport = connection.transport
        self.assertLess(len(transport.dataBuffer) + transport._tempDataLen, 2 * 1024 * 1024)
        client.settimeout(60)
        got = yield in_thread(count_until_eof, client)
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

        def relaying() -> Any:
            connection = getattr(self.factory, "last", None)
            return connection if connection is not None and connection.state.value == \
                "relaying" else None

        connection = yield until(relaying, "the connection to relay")
        relay = connection.relay
        self.assertEqual(connection.relay_kind, self.relay_kind)
        if self.fast_path:
            sockets = [relay.client.sock, relay.peer.sock]
        else:
            sockets = [relay.client.getHandle(), relay.peer.getHandle()]
        for sock in sockets:
            self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), sock)


class TwistedRelayTests(RelayTests):
    """The same behaviour through Twisted's own relay (fast_path = false)."""

    fast_path = False
    relay_kind = "twisted"
