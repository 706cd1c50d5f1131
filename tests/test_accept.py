"""switchyard's own accept (switchyard/relay/accept.py): a listener's plain TCP port
read by switchyard's reactor, clients started as bare sockets, a Twisted
transport made only for targets that need one; and Twisted's port everywhere
else. Run on trial's default reactor (Twisted's port: the fallback) and, from
scripts/test, on SwitchyardReactor (the accept path)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from switchyard.app.service import ListenerService
from switchyard.config import compile_config
from switchyard.relay import internals
from switchyard.relay.accept import Acceptor
from tests import traffic
from tests.fakes import CapturedEvents
from tests.helpers import LOCALHOST, in_thread, recv_all, send_and_read, until

ON_SWITCHYARDS_REACTOR = hasattr(reactor, "adopt")


class AcceptTests(unittest.TestCase):
    def serve(self, routes: list[dict[str, Any]], listen: str = f"tcp:0:interface={LOCALHOST}",
              **listener: Any) -> ListenerService:
        backend = traffic.DigestServer()
        self.addCleanup(backend.stop)
        config = compile_config({
            "listener": {"t": {"listen": listen, "route": routes, **listener}},
            "backend": {"b": {"servers": [f"{LOCALHOST}:{backend.port}"]}}}, reactor)
        served = ListenerService(config.listeners[0], reactor)
        served.open()
        self.addCleanup(served.close_now)
        return served

    def port(self, served: ListenerService) -> int:
        return int(served.port.getHost().port)

    @defer.inlineCallbacks
    def test_plainPortAcceptsOnSwitchyardsReactorElseTwisteds(self) -> None:
        """On switchyard's reactor the port's socket is switchyard's to read;
        on any other, Twisted's port accepts as before. Either way every
        byte arrives and the access line says the kernel relayed it."""
        served = self.serve([{"match": "any", "to": "b"}])
        self.assertEqual(isinstance(served.acceptor, Acceptor), ON_SWITCHYARDS_REACTOR)
        access = CapturedEvents(self)
        for seed, size in enumerate((10, 300_000)):
            yield in_thread(traffic.exchange, self.port(served), size, size, seed)
        yield until(lambda: len(access.events) >= 2, "both access lines")
        self.assertEqual([(e["relay"], e["reason"]) for e in access.events],
                         [("splice", "normal")] * 2)
        self.assertFalse(served.factory.connections)

    @defer.inlineCallbacks
    def test_ipv6ClientIsNamedAsTwistedWouldName(self) -> None:
        """An IPv6 listener: the client's address and facts are the same as
        Twisted's port gives (host ::1, its port), through either accept."""
        served = self.serve([{"match": "any", "to": "b"}], listen="tcp6:0:interface=\\:\\:1")
        self.assertEqual(isinstance(served.acceptor, Acceptor), ON_SWITCHYARDS_REACTOR)
        access = CapturedEvents(self)

        def exchange_from_v6() -> int:
            with socket.create_connection(("::1", self.port(served)), timeout=30) as s:
                mine = s.getsockname()[1]
                s.sendall(traffic.MAGIC + b"\x00\x00\x00\x01\x00\x00\x00\x05")
                s.shutdown(socket.SHUT_WR)
                recv_all(s)
            return int(mine)

        port = yield in_thread(exchange_from_v6)
        yield until(lambda: access.events, "the access line")
        [event] = access.events
        self.assertEqual(event["client"], f"[::1]:{port}")
        self.assertEqual(event["reason"], "normal")

    @defer.inlineCallbacks
    def test_fastPathOffAcceptsThroughTwisted(self) -> None:
        served = self.serve([{"match": "any", "to": "b"}], fast_path=False)
        self.assertIsNone(served.acceptor)
        access = CapturedEvents(self)
        yield in_thread(traffic.exchange, self.port(served), 1000, 1000)
        yield until(lambda: access.events, "the access line")
        self.assertEqual(access.events[0]["relay"], "twisted")

    @defer.inlineCallbacks
    def test_targetThatNeedsATransportGetsOne(self) -> None:
        """The echo target relays through the client's Twisted transport: one
        is made for the bare socket, and the bytes come back in order."""
        served = self.serve([{"match": "any", "to": "echo"}])
        data = bytes(range(256)) * 400
        got = yield in_thread(send_and_read_half_closed, self.port(served), data)
        self.assertEqual(got, data)

    @defer.inlineCallbacks
    def test_clientLeavingBeforeItsOpeningIsClientClosed(self) -> None:
        served = self.serve([{"match": "regex", "pattern": "^never", "to": "b"}])
        access = CapturedEvents(self)

        def connect_and_leave() -> None:
            socket.create_connection((LOCALHOST, self.port(served)), timeout=10).close()

        yield in_thread(connect_and_leave)
        yield until(lambda: access.events, "the access line")
        self.assertEqual(access.events[0]["reason"], "client_closed")
        yield until(lambda: not served.factory.connections, "the books released")

    @defer.inlineCallbacks
    def test_noRouteClosesTheBareSocketAndReleasesTheBooks(self) -> None:
        served = self.serve([{"match": "regex", "pattern": "^never", "to": "b"}])
        access = CapturedEvents(self)
        got = yield in_thread(send_and_read, self.port(served), b"something else\n")
        self.assertEqual(got, b"")
        yield until(lambda: access.events, "the access line")
        self.assertEqual(access.events[0]["reason"], "no_route")
        yield until(lambda: not served.factory.connections, "the books released")

    @defer.inlineCallbacks
    def test_overTheLimitIsRefusedOnTheBareSocket(self) -> None:
        served = self.serve([{"match": "regex", "pattern": "^never", "to": "b"}],
                            max_connections=1)
        access = CapturedEvents(self)
        holder = socket.create_connection((LOCALHOST, self.port(served)), timeout=10)
        self.addCleanup(holder.close)
        yield until(lambda: served.factory.connections, "the first connection counted")
        got = yield in_thread(send_and_read, self.port(served), b"x")
        self.assertEqual(got, b"")
        yield until(lambda: access.events, "the refused connection's access line")
        self.assertEqual(access.events[0]["reason"], "over_limit")

    @defer.inlineCallbacks
    def test_stoppedListenerAcceptsNoMore(self) -> None:
        served = self.serve([{"match": "any", "to": "b"}])
        port = self.port(served)
        yield in_thread(traffic.exchange, port, 10, 10)
        yield served.stopService()
        self.assertIsNone(served.acceptor)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((LOCALHOST, port), timeout=10).close()

    def test_fenceSwitchesTheAcceptOffAlone(self) -> None:
        """A CPython without the accept(2) this path calls: Twisted's port
        accepts, and the splice relay stays on."""
        self.patch(internals, "ACCEPT_NAMES", (("_socket.socket", "_acceptRenamed"),))
        internals.check.cache_clear()
        self.addCleanup(internals.check.cache_clear)
        available = internals.check()
        self.assertFalse(available.accept)
        self.assertTrue(available.fast_path)
        served = self.serve([{"match": "any", "to": "b"}])
        self.assertIsNone(served.acceptor)


def send_and_read_half_closed(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, read to the end (the echo target's whole answer)."""
    with socket.create_connection((LOCALHOST, port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)
