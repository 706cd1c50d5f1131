"""switchyard explain: golden explanations of real openings, agreement with the switch.

Each golden case explains a recorded opening (tests/vectors) on the config in
tests/explain_golden/switchyard.toml and compares the text with
tests/explain_golden/CASE.txt exactly. To remake them after a deliberate
change of wording, run ``python -m tests.test_explain`` from the checkout
and read the diff before committing it.

The agreement tests drive a real L{Connection} with the same bytes (in one
piece and byte by byte) and check that the switch takes the route, or ends
the way, the explanation says.
"""

from __future__ import annotations

import functools
import os
import sys

import attr
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from switchyard.config import Config, Listener, compile_source
from switchyard.connection import CONNECTING, PROXY_HEADER, SNIFFING
from switchyard.listener import ListenerBooks
from switchyard.observe.explain import (
    EXAMPLE_CLIENT,
    explain_opening,
    explanation_text,
    local_address,
    parse_client,
)
from tests.fakes import HalfCloseableTransport, RecordingTarget, connect
from tests.openings import vector

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "explain_golden")
CONFIG = os.path.join(GOLDEN, "switchyard.toml")


@attr.s(frozen=True, auto_attribs=True)
class Case:
    """One golden explanation: an opening, on which listener, told what."""

    name: str
    vector: str
    listener: str | None = "main"
    client: str | None = None
    closed: bool = False
    cut: int | None = None  # only the first bytes of the vector

    def opening(self) -> bytes:
        data = vector(self.vector)
        return data if self.cut is None else data[:self.cut]

    def source(self) -> str:
        where = f"tests/vectors/{self.vector}"
        return where if self.cut is None else f"{where} (its first {self.cut} bytes)"


CASES = {case.name: case for case in [
    Case("tls_sni", "explain/tls_sni_openssl.bin"),
    Case("tls_no_sni", "explain/tls_nosni_openssl.bin"),
    Case("tls_post_quantum", "explain/tls_pq_tlslite.bin"),
    Case("ssh", "explain/ssh_openssh.bin"),
    Case("curl", "explain/http_curl.bin", client="127.0.0.1:50000"),
    Case("curl_denied", "explain/http_curl.bin", client="10.9.9.9:50000"),
    Case("curl_incomplete", "explain/http_curl.bin", cut=14),
    Case("curl_incomplete_closed", "explain/http_curl.bin", cut=14, closed=True),
    Case("websocket", "websockets17_genuine_handshake.bin"),
    Case("obfs_http", "obfs_http_client_to_server.bin"),
    Case("obfs_tls", "obfs_tls_client_to_server.bin"),
    Case("proxy_v1_from_front", "pp_v1_curl.bin", listener="front", client="127.0.0.1:41000"),
    Case("proxy_v2_assumed_front", "pp_v2_tcp4_tlv_haproxy.bin", listener="front"),
    Case("proxy_v1_without_accept_proxy", "pp_v1_curl.bin"),
    Case("garbage_on_every_listener", "explain/garbage.bin", listener=None),
    Case("garbage_from_a_trusted_front", "explain/garbage.bin", listener="front",
         client="127.0.0.1:41000"),
    Case("incomplete_goes_to_on_timeout", "explain/http_curl.bin", listener="front", cut=14,
         client="10.0.0.5:1000"),
]}


@functools.cache
def config() -> Config:
    with open(CONFIG, "rb") as f:
        return compile_source(f.read(), reactor, CONFIG)


def listener(name: str) -> Listener:
    return next(each for each in config().listeners if each.name == name)


def explained(case: Case) -> str:
    client = parse_client(case.client) if case.client is not None else None
    return explanation_text(config(), case.opening(), case.source(), listener=case.listener,
                            client=client, closed=case.closed)


def golden_path(case: Case) -> str:
    return os.path.join(GOLDEN, f"{case.name}.txt")


class GoldenTests(TestCase):
    """Each recorded opening explained, word for word."""

    def assertGolden(self, name: str) -> None:
        case = CASES[name]
        with open(golden_path(case), encoding="utf-8") as f:
            expected = f.read()
        self.assertEqual(explained(case), expected)

    def test_tlsWithSniTakesTheRouteListingIt(self) -> None:
        self.assertGolden("tls_sni")

    def test_tlsWithoutSniTakesTheNoSniRoute(self) -> None:
        self.assertGolden("tls_no_sni")

    def test_postQuantumHelloIsReadWhole(self) -> None:
        self.assertGolden("tls_post_quantum")

    def test_sshTakesTheFirstRoute(self) -> None:
        self.assertGolden("ssh")

    def test_curlWithTheBackendsProxyHeader(self) -> None:
        self.assertGolden("curl")

    def test_curlFromAClientTheRouteDenies(self) -> None:
        self.assertGolden("curl_denied")

    def test_incompleteRequestLineWaits(self) -> None:
        self.assertGolden("curl_incomplete")

    def test_incompleteRequestLineOfAClosedClientIsPassedOver(self) -> None:
        self.assertGolden("curl_incomplete_closed")

    def test_genuineWebsocket(self) -> None:
        self.assertGolden("websocket")

    def test_simpleObfsHttp(self) -> None:
        self.assertGolden("obfs_http")

    def test_simpleObfsTls(self) -> None:
        self.assertGolden("obfs_tls")

    def test_proxyV1HeaderFromATrustedFront(self) -> None:
        self.assertGolden("proxy_v1_from_front")

    def test_proxyV2HeaderWithTlvsFromAnAssumedFront(self) -> None:
        self.assertGolden("proxy_v2_assumed_front")

    def test_proxyHeaderOnAListenerWithoutAcceptProxy(self) -> None:
        self.assertGolden("proxy_v1_without_accept_proxy")

    def test_garbageOnEveryListener(self) -> None:
        self.assertGolden("garbage_on_every_listener")

    def test_garbageFromATrustedFrontIsABadProxyHeader(self) -> None:
        self.assertGolden("garbage_from_a_trusted_front")

    def test_incompleteOpeningGoesToOnTimeout(self) -> None:
        self.assertGolden("incomplete_goes_to_on_timeout")

    def test_everyCaseHasAGoldenFileAndNoMore(self) -> None:
        files = {name[:-4] for name in os.listdir(GOLDEN) if name.endswith(".txt")}
        self.assertEqual(files, set(CASES))


def switch_outcome(served: Listener, data: bytes, client: IAddress, closed: bool,
                   pieces: list[bytes]) -> str:
    """What a real Connection on ``served``'s routes does with ``pieces``:
    ``route NAME``, ``on_timeout``, or the reason it closed."""
    def recording(route: object) -> object:
        return attr.evolve(route, target=RecordingTarget(route.target.name,  # type: ignore
                                                         splice=False))

    table = attr.evolve(served, routes=tuple(recording(r) for r in served.routes),
                        on_timeout=None if served.on_timeout is None
                        else recording(served.on_timeout))
    clock = MemoryReactorClock()
    transport = HalfCloseableTransport(peerAddress=client, hostAddress=local_address(served))
    connection, _ = connect(ListenerBooks(table, clock), clock, transport)
    for piece in pieces:
        if connection.state not in (SNIFFING, PROXY_HEADER):
            break
        connection.dataReceived(piece)
    if closed and connection.state in (SNIFFING, PROXY_HEADER):
        connection.readConnectionLost()
    if connection.state in (SNIFFING, PROXY_HEADER):
        clock.advance(served.inspect_timeout + 1)
    if connection.state is CONNECTING:
        assert connection.route is not None
        return ("on_timeout" if connection.route.match == "on_timeout"
                else f"route {connection.route.name}")
    return str(connection.reason)


def explained_outcome(served: Listener, data: bytes, client: IAddress, closed: bool) -> str:
    explanation = explain_opening(served, data, client=client, closed=closed)
    if explanation.outcome == "route":
        assert explanation.route is not None
        return f"route {explanation.route.name}"
    return explanation.outcome


class SwitchAgreesTests(TestCase):
    """The explanation's decision is the switch's, for every case."""

    def assertAgree(self, case: Case, pieces: list[bytes]) -> None:
        data = case.opening()
        front = "127.0.0.1:41000" if case.listener == "front" else None
        client = parse_client(case.client or front or "192.0.2.1:40000")
        for served in config().listeners:
            if case.listener is not None and served.name != case.listener:
                continue
            said = explained_outcome(served, data, client, case.closed)
            did = switch_outcome(served, data, client, case.closed, pieces)
            self.assertEqual(said, did, f"{case.name} on listener {served.name}")

    def test_openingInOnePiece(self) -> None:
        for case in CASES.values():
            self.assertAgree(case, [case.opening()])

    def test_openingByteByByte(self) -> None:
        for case in CASES.values():
            data = case.opening()
            self.assertAgree(case, [data[i:i + 1] for i in range(len(data))])

    def test_outcomesCoverEveryEnding(self) -> None:
        # The cases exercise each way sniffing can end, so agreement means something.
        seen = set()
        for case in CASES.values():
            client = parse_client(case.client) if case.client else None
            for served in config().listeners:
                if case.listener in (None, served.name):
                    seen.add(explain_opening(served, case.opening(), client=client,
                                             closed=case.closed).outcome)
        self.assertEqual(seen, {"route", "denied", "no_route", "sniff_timeout", "on_timeout",
                                "bad_proxy_header"})


class ExampleClientTests(TestCase):
    def test_exampleClientIsADocumentationAddress(self) -> None:
        self.assertEqual((EXAMPLE_CLIENT.host, EXAMPLE_CLIENT.port), ("192.0.2.1", 40000))

    def test_parseClientForms(self) -> None:
        self.assertEqual(parse_client("10.0.0.1"), IPv4Address("TCP", "10.0.0.1", 40000))
        self.assertEqual(parse_client("10.0.0.1:5"), IPv4Address("TCP", "10.0.0.1", 5))
        self.assertEqual(parse_client("[::1]:7").host, "::1")
        self.assertEqual(parse_client("::1").port, 40000)
        for bad in ("example.com", "10.0.0.1:x", "10.0.0.1:70000"):
            self.assertRaises(ValueError, parse_client, bad)


def write_golden() -> None:
    """Remake every golden file (then read the diff before committing)."""
    for case in CASES.values():
        with open(golden_path(case), "w", encoding="utf-8") as f:
            f.write(explained(case))
        sys.stdout.write(f"wrote {golden_path(case)}\n")


if __name__ == "__main__":
    write_golden()
