"""Every ending of every kind of connection gives back what it held, and a
reset is passed on as a reset.

Each case runs real loopback sockets through a listener with low limits:
the client or the backend closes first, either resets, or the relay idles
out; then the listener's open and per-client counts must be back to zero
and the connection objects freed (a weak reference), on both relays and
through a TLS termination.
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import struct
import weakref
from typing import Any

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest

from switchyard.config import compile_config
from switchyard.listener import ListenerBooks
from tests.fakes import CapturedEvents
from tests.peers import make_ca

LINGER_RESET = struct.pack("ii", 1, 0)


class _Backend(protocol.Protocol):
    """Answers the first bytes as its factory's ``mode`` says."""

    def dataReceived(self, data: bytes) -> None:
        mode = self.factory.mode  # type: ignore[attr-defined]
        if mode == "silent":
            return
        if mode == "reset":
            self.transport.write(b"partial-")
            # A reset after the bytes: SO_LINGER 0 makes close() send RST.
            reactor.callLater(0.05, self._reset)
            return
        self.transport.write(b"answer:" + data)
        if mode == "answer_close":
            self.transport.loseConnection()

    def _reset(self) -> None:
        # (abortConnection closes without shutdown(2): no FIN before the RST.)
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.transport.abortConnection()


class _Books(ListenerBooks):
    def buildProtocol(self, addr: Any) -> Any:
        connection = super().buildProtocol(addr)
        self.built.append(weakref.ref(connection))
        return connection


def _client(port: int, ending: str, tls: ssl.SSLContext | None) -> dict[str, Any]:
    """One client, ending as ``ending`` says; what it saw."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    # (suppress_ragged_eofs=False: a TLS stream that ends without close_notify
    # is an error, as it is to curl and browsers, never a clean end.)
    sock: Any = (tls.wrap_socket(raw, server_hostname="a.test", suppress_ragged_eofs=False)
                 if tls else raw)
    seen: dict[str, Any] = {"data": b"", "error": None}
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        if ending == "client_reset":
            seen["data"] = sock.recv(100)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            return seen
        if ending == "client_first":
            seen["data"] = sock.recv(100)
            return seen
        while True:  # until the other side ends: a clean end, or a reset
            chunk = sock.recv(65536)
            if not chunk:
                return seen
            seen["data"] += chunk
    except OSError as e:
        seen["error"] = type(e).__name__
        return seen
    finally:
        sock.close()


class EndingsTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.access = CapturedEvents(self)
        folder = os.path.abspath(self.mktemp())
        self.ca = make_ca(folder)
        self.cert, self.key = self.ca.issue(["a.test"], os.path.join(folder, "a"))
        self.tls = ssl.create_default_context(cafile=self.ca.cert_path)

    @defer.inlineCallbacks
    def start(self, target: str, fast_path: bool, mode: str = "answer",
              idle: float = 30.0) -> Any:
        backend = protocol.Factory.forProtocol(_Backend)
        backend.mode = mode  # type: ignore[attr-defined]
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(backend)
        self.addCleanup(listening.stopListening)
        config = compile_config({
            "listener": {"t": {"listen": "tcp:0", "fast_path": fast_path,
                               "max_connections": 3, "max_connections_per_client": 3,
                               "idle_timeout": idle,
                               "route": [{"match": "any", "to": target}]}},
            "backend": {"b": {"servers": [f"127.0.0.1:{listening.getHost().port}"]}},
            "tls": {"s": {"certificates": [{"cert": self.cert, "key": self.key}],
                          "idle_timeout": idle,
                          "route": [{"match": "any", "to": "b"}]}},
        }, reactor)
        self.books = _Books(config.listeners[0], reactor)
        self.books.built = []
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.books)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def settled(self) -> Any:
        """Wait until the listener holds nothing; then every object must be freeable."""
        for _ in range(300):
            if not self.books.connections and not self.books.per_client:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual((len(self.books.connections), dict(self.books.per_client)), (0, {}))
        yield task.deferLater(reactor, 0.05, lambda: None)  # let the transports go
        gc.collect()
        alive = [ref() for ref in self.books.built if ref() is not None]
        self.assertEqual(alive, [])

    @defer.inlineCallbacks
    def through(self, target: str, ending: str, fast_path: bool = True, mode: str = "answer",
            idle: float = 30.0, tls: bool = False, rounds: int = 5) -> Any:
        """``rounds`` clients one after the other (more than max_connections:
        a leak turns into a refused client), then the books are checked."""
        port = yield self.start(target, fast_path, mode, idle)
        seen = []
        for _ in range(rounds):
            seen.append((yield threads.deferToThread(
                _client, port, ending, self.tls if tls else None)))
        yield self.settled()
        reasons = [e["reason"] for e in self.access.events]
        self.assertNotIn("over_limit", reasons)
        return seen, reasons

    # -- backends, both relays ----------------------------------------------

    @defer.inlineCallbacks
    def test_backendClientClosesFirst(self) -> None:
        for fast_path in (True, False):
            seen, reasons = yield self.through("b", "client_first", fast_path)
            self.assertTrue(all(s["data"].startswith(b"answer:") for s in seen), seen)
            self.assertEqual(set(reasons), {"normal"})
            self.access.events.clear()

    @defer.inlineCallbacks
    def test_backendClosesFirst(self) -> None:
        for fast_path in (True, False):
            seen, reasons = yield self.through("b", "wait", fast_path, mode="answer_close")
            self.assertTrue(all(s["error"] is None for s in seen), seen)
            self.assertEqual(set(reasons), {"normal"})
            self.access.events.clear()

    @defer.inlineCallbacks
    def test_backendResetReachesTheClientAsAReset(self) -> None:
        """Never a clean end after a cut answer: the client gets a reset."""
        for fast_path in (True, False):
            seen, reasons = yield self.through("b", "wait", fast_path, mode="reset")
            for s in seen:
                self.assertEqual(s["error"], "ConnectionResetError", (fast_path, s))
                self.assertTrue(b"partial-".startswith(s["data"]), s)
            self.assertEqual(set(reasons), {"backend_reset"}, fast_path)
            self.access.events.clear()

    @defer.inlineCallbacks
    def test_clientReset(self) -> None:
        for fast_path in (True, False):
            _, reasons = yield self.through("b", "client_reset", fast_path)
            self.assertEqual(set(reasons), {"client_reset"}, fast_path)
            self.access.events.clear()

    @defer.inlineCallbacks
    def test_idleTimeout(self) -> None:
        for fast_path in (True, False):
            seen, reasons = yield self.through("b", "wait", fast_path, mode="silent", idle=0.2,
                                           rounds=4)
            self.assertEqual(set(reasons), {"idle_timeout"}, fast_path)
            self.access.events.clear()

    # -- responders -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_echoClientClosesFirst(self) -> None:
        seen, reasons = yield self.through("echo", "client_first")
        self.assertTrue(all(s["data"].startswith(b"GET /") for s in seen))
        self.assertEqual(set(reasons), {"normal"})

    @defer.inlineCallbacks
    def test_echoClientReset(self) -> None:
        _, reasons = yield self.through("echo", "client_reset")
        self.assertEqual(set(reasons), {"client_reset"})

    @defer.inlineCallbacks
    def test_rejectAndRedirectClose(self) -> None:
        for target, reason in (("reject", "rejected"), ("redirect", "redirected")):
            _, reasons = yield self.through(target, "wait")
            self.assertEqual(set(reasons), {reason})
            self.access.events.clear()

    # -- through a TLS termination ------------------------------------------

    @defer.inlineCallbacks
    def test_tlsClientClosesFirst(self) -> None:
        """The ending that leaked: the client leaves while the backend keeps
        its connection open."""
        seen, reasons = yield self.through("s", "client_first", tls=True)
        self.assertTrue(all(s["data"].startswith(b"answer:") for s in seen), seen)
        self.assertNotIn("over_limit", reasons)

    @defer.inlineCallbacks
    def test_tlsBackendClosesFirst(self) -> None:
        seen, reasons = yield self.through("s", "wait", tls=True, mode="answer_close")
        self.assertTrue(all(s["data"].startswith(b"answer:") for s in seen), seen)
        self.assertEqual(set(reasons), {"normal"})

    @defer.inlineCallbacks
    def test_tlsBackendResetReachesTheClientAsAReset(self) -> None:
        seen, reasons = yield self.through("s", "wait", tls=True, mode="reset")
        for s in seen:
            # Python's ssl reports a reset after TLS records as an EOF
            # without close_notify: either way, never a clean end.
            self.assertIn(s["error"], ("ConnectionResetError", "SSLEOFError"), s)
        self.assertEqual(set(reasons), {"backend_reset"})

    @defer.inlineCallbacks
    def test_tlsClientReset(self) -> None:
        _, reasons = yield self.through("s", "client_reset", tls=True)
        self.assertEqual(set(reasons), {"client_reset"})

    @defer.inlineCallbacks
    def test_tlsIdleTimeout(self) -> None:
        _, reasons = yield self.through("s", "wait", tls=True, mode="silent", idle=0.2, rounds=4)
        self.assertEqual(set(reasons), {"idle_timeout"})
