"""The bare-socket connect of the fast path (L{DirectConnect} in
switchyard/relay/splice.py), against real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.trial import unittest

from switchyard.deadlines import Deadlines
from switchyard.relay.splice import SUPPORTED, DirectConnect, _loopback, close_socket
from tests.helpers import until
from tests.splice_harness import reactor


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
        yield until(lambda: outcomes, "the connect's outcome", interval=0.01)
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
            else:
                # A busy kernel finished the handshake later: then the
                # attempt waits for writability, registered, and decides there.
                self.assertIsNotNone(attempt.done)
                self.assertIn(attempt, reactor.getWriters())
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
        yield until(lambda: handed, "the socket to be handed over", interval=0.01)
        [sock] = handed
        self.assertEqual(sock.fileno(), -1)  # closed
        self.assertNotIn(attempt, reactor.getWriters())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_loopbackAddresses(self) -> None:
        for host, expected in [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                               ("10.0.0.1", False), ("2001:db8::1", False),
                               ("localhost", False)]:
            self.assertEqual(_loopback(host), expected, host)
