"""switchyard's reactor (epoll, the relay's events delivered directly), and any other."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from twisted.trial import unittest

from tests import traffic
from tests.daemon import log_after, start_switchyard
from tests.helpers import free_port, wait_for

CONFIG = """
[listener.main]
listen = "127.0.0.1:{port}"

[[listener.main.route]]
match = "regex"
pattern = "^DGST"
to = "digest"

[backend.digest]
servers = ["127.0.0.1:{digest}"]
"""

# (sent, received): small messages (copied), bulk (spliced), and both.
SIZES = [(10, 10), (1_000, 200), (3_000_000, 50), (20, 4_000_000), (2_000_000, 2_000_000)]


class ReactorTests(unittest.TestCase):
    def _through(self, twistd_args: tuple[str, ...], reactor_name: str) -> None:
        digest = traffic.DigestServer()
        self.addCleanup(digest.stop)
        port = free_port()
        running = start_switchyard(self, CONFIG.format(port=port, digest=digest.port), port,
                                   twistd_args)
        self.addCleanup(running.stop)
        self.assertIn(f"reactor: {reactor_name}", log_after(running, "reactor: "))
        jobs = SIZES * 4
        with ThreadPoolExecutor(max_workers=10) as pool:
            futures = [pool.submit(traffic.exchange, port, sent, received, seed)
                       for seed, (sent, received) in enumerate(jobs)]
            results = [f.result(timeout=120) for f in futures]
        self.assertEqual([r["received"] for r in results],
                         [received + 32 for _, received in jobs])
        # Every one of them through the fast path, on this reactor too.
        lines = wait_for(lambda: len(found := re.findall(r"main/regex -> .*", running.log_text()))
                         >= len(jobs) and found, f"{len(jobs)} access lines")
        self.assertEqual([line for line in lines if not line.endswith(
            " relay=splice close=normal")], [])
        self.assertNotIn("Traceback", running.log_text())

    def test_switchyardReactorByDefault(self) -> None:
        self._through((), "SwitchyardReactor")

    def test_anotherReactorChosenWithTwistdWorksToo(self) -> None:
        self._through(("--reactor=poll",), "PollReactor")


class DispatchTests(unittest.TestCase):
    """SwitchyardReactor.doPoll, on an instance of its own (not installed)."""

    def test_relayClassesAreDispatchedDirectly(self) -> None:
        from switchyard.relay.reactor import DIRECT
        from switchyard.relay.splice import DirectConnect, _Socket

        self.assertLessEqual({_Socket, DirectConnect}, DIRECT)

    def test_twistedTcpEventsSkipTheLoggingContext(self) -> None:
        """Listening ports and accepted connections take Twisted's usual
        handling without the per-event logging context; an error escaping
        it is logged and the rest of the batch is still handled."""
        import socket

        from twisted.internet import main, tcp
        from twisted.python import context, log

        from switchyard.relay.reactor import QUIET, SwitchyardReactor

        self.assertLessEqual({tcp.Port, tcp.Server}, QUIET)
        seen: list[tuple[str, object]] = []

        class Quiet:
            def __init__(self, sock: socket.socket, name: str) -> None:
                self.sock, self.name = sock, name

            def fileno(self) -> int:
                return self.sock.fileno()

            def logPrefix(self) -> str:
                return self.name

            def doRead(self) -> object:
                seen.append((self.name, context.get(log.ILogContext, {}).get("system")))
                return main.CONNECTION_DONE if self.name == "broken" else None

            def connectionLost(self, reason: object) -> None:
                raise RuntimeError("connectionLost failed")

        QUIET.add(Quiet)
        self.addCleanup(QUIET.discard, Quiet)
        reactor = SwitchyardReactor()
        self.addCleanup(reactor._poller.close)
        pairs = [socket.socketpair() for _ in range(2)]
        for a, b in pairs:
            self.addCleanup(a.close)
            self.addCleanup(b.close)
            b.send(b"x")
        reactor.addReader(Quiet(pairs[0][0], "broken"))
        reactor.addReader(Quiet(pairs[1][0], "fine"))
        reactor.doPoll(1)
        # Not "broken"/"fine": no context named after the descriptor.
        self.assertEqual(sorted(seen), [("broken", "-"), ("fine", "-")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_plainEventsDirectErrorsTheUsualWay(self) -> None:
        import socket

        from switchyard.relay.reactor import DIRECT, SwitchyardReactor

        calls: list[tuple[str, int]] = []

        class Probe:
            def __init__(self, sock: socket.socket) -> None:
                self.sock = sock

            def fileno(self) -> int:
                return self.sock.fileno()

            def logPrefix(self) -> str:
                return "Probe"

            def on_event(self, event: int) -> None:
                calls.append(("direct", event))

            def doRead(self) -> None:
                calls.append(("doRead", 0))

            def connectionLost(self, reason: object) -> None:
                calls.append(("connectionLost", 0))

        DIRECT.add(Probe)
        self.addCleanup(DIRECT.discard, Probe)
        reactor = SwitchyardReactor()
        self.addCleanup(reactor._poller.close)
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        probe = Probe(a)
        reactor.addReader(probe)
        b.send(b"x")
        reactor.doPoll(1)
        self.assertEqual(calls[0][0], "direct")
        b.close()  # the peer hangs up: EPOLLIN|EPOLLHUP, not a plain event
        reactor.doPoll(1)
        self.assertEqual(calls[-1][0], "doRead")  # through Twisted's _doReadOrWrite

        def probes() -> list[object]:
            return [r for r in reactor.getReaders() if isinstance(r, Probe)]

        reactor.set_interest(probe, a.fileno(), False, False)
        self.assertEqual(probes(), [])
        reactor.set_interest(probe, a.fileno(), True, False)
        self.assertEqual(probes(), [probe])
        self.assertEqual(reactor.adopt(a.fileno(), "other"), (True, False))
        reactor.adopt(a.fileno(), probe)
        reactor.forget(a.fileno())
        self.assertEqual(probes(), [])
