"""The websocket, obfs-http and obfs-tls matchers, on captures and on real clients' openings."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.interfaces import NEED_MORE, NO, Match, MatcherConfigError, MatchResult
from switchyard.matchers.http import HTTPMatcherFactory
from switchyard.matchers.obfs import ObfsHTTPMatcherFactory, ObfsTLSMatcherFactory
from switchyard.matchers.tls import TLSMatcherFactory
from switchyard.matchers.websocket import WebSocketMatcherFactory
from switchyard.wire.tls import ClientHello, parse_client_hello
from tests.obfs_peers import start_ss_local
from tests.openings import (
    Opening,
    all_vectors,
    cuts_at,
    feed,
    http_head_complete,
    mutated_openings,
    openssl_hello,
    record_opening,
    tls_record_complete,
    vector,
)
from tests.peers import free_port, make_ca, start_process
from tests.test_matcher_tls import ext, handshake, hello_body, records, sni_ext

GENUINE = vector("websockets17_genuine_handshake.bin")
OBFS_HTTP = vector("obfs_http_client_to_server.bin")
OBFS_TLS = vector("obfs_tls_client_to_server.bin")
OBFS_HOST = "live.example.com"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key


def websocket(**options: Any) -> Any:
    return WebSocketMatcherFactory().build(options)


def obfs_http(**options: Any) -> Any:
    return ObfsHTTPMatcherFactory().build(options)


def obfs_tls(**options: Any) -> Any:
    return ObfsTLSMatcherFactory().build(options)


def request(*headers: str, target: str = "/stream", method: str = "GET",
            version: str = "1.1", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def upgrade(*extra: str, **kw: Any) -> bytes:
    """A genuine-looking upgrade to live.example.com, plus C{extra} fields."""
    return request(f"Host: {OBFS_HOST}", "Upgrade: websocket", "Connection: Upgrade",
                   f"Sec-WebSocket-Key: {KEY}", *extra, **kw)


def obfs_layout(extensions: bytes, **fields: Any) -> bytes:
    """A hello body with simple-obfs's fixed part: 32-byte session id, 28 suites."""
    fields = {"session_id": b"\x11" * 32, "suites": b"\xc0\x2c" * 28, **fields}
    return hello_body(extensions, **fields)


def assert_verdict_whole_and_byte_by_byte(case: TestCase, matcher: Any, data: bytes,
                                          expected: MatchResult) -> None:
    """The whole opening gets C{expected}; fed 1 byte at a time, every answer
    before the decisive one is NEED_MORE and the decisive one is C{expected}."""
    case.assertEqual(matcher.match(data, {}), expected)
    answers = feed(matcher, data, range(1, len(data) + 1))
    case.assertEqual(answers[-1][1], expected)
    case.assertEqual({a for _, a in answers[:-1]} - {NEED_MORE}, set())


# -- openings recorded from real clients, once per run ----------------------

_WEBSOCKETS_CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect

async def main():
    async with connect(sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]), proxy=None):
        pass

asyncio.run(main())
"""


@functools.cache
def websockets_client(path: str) -> Opening:
    """The python websockets client's handshake to live.example.com."""
    return record_opening(
        lambda port: [sys.executable, "-c", _WEBSOCKETS_CLIENT,
                      f"ws://{OBFS_HOST}:{port}{path}", str(port)],
        http_head_complete)


@functools.cache
def curl(*headers: str) -> Opening:
    """curl sending a request to live.example.com/stream with C{headers} added."""

    def argv(port: int) -> list[str]:
        extra = [arg for header in headers for arg in ("-H", header)]
        return ["curl", "-sS", "-m", "3", "--http1.1", *extra,
                "--resolve", f"{OBFS_HOST}:{port}:127.0.0.1", f"http://{OBFS_HOST}:{port}/stream"]

    return record_opening(argv, http_head_complete)


CURL_WEBSOCKET = ("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                  f"Sec-WebSocket-Key: {KEY}")
# What Firefox sends: Upgrade is one of several Connection tokens.
CURL_FIREFOX_STYLE = ("Connection: keep-alive, Upgrade", "Upgrade: websocket",
                      "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {KEY}")


def obfs_local(testcase: TestCase, mode: str) -> Opening:
    """What the real obfs-local (run by ss-local) sends first in mode C{mode}."""

    def argv(port: int) -> list[str]:
        socks = start_ss_local(testcase, port, mode, OBFS_HOST).port
        return ["curl", "-sS", "-m", "3", "--socks5-hostname", f"127.0.0.1:{socks}",
                "http://127.0.0.1:9/"]

    complete = http_head_complete if mode == "http" else tls_record_complete
    opening = record_opening(argv, complete, timeout=5)
    testcase.assertTrue(opening.data, "obfs-local sent nothing")
    return opening


class VectorTests(TestCase):
    """The stored captures get the right verdicts, whole and one byte at a time."""

    def test_genuineHandshake(self) -> None:
        facts = {"host": "127.0.0.1", "path": "/stream", "ws_version": "13"}
        assert_verdict_whole_and_byte_by_byte(self, websocket(), GENUINE, Match(facts=facts))
        assert_verdict_whole_and_byte_by_byte(self, obfs_http(), GENUINE, NO)
        assert_verdict_whole_and_byte_by_byte(self, obfs_tls(), GENUINE, NO)

    def test_obfsHttp(self) -> None:
        facts = {"host": "www.bing.com", "path": "/", "obfs": ["body", "no_version"]}
        assert_verdict_whole_and_byte_by_byte(self, obfs_http(), OBFS_HTTP, Match(facts=facts))
        assert_verdict_whole_and_byte_by_byte(
            self, obfs_http(host="www.bing.com"), OBFS_HTTP, Match(facts=facts))
        assert_verdict_whole_and_byte_by_byte(self, websocket(), OBFS_HTTP, NO)
        assert_verdict_whole_and_byte_by_byte(self, obfs_tls(), OBFS_HTTP, NO)

    def test_obfsHttpDecidedWhenTheHeadEndsNotTheBody(self) -> None:
        head_end = OBFS_HTTP.index(b"\r\n\r\n") + 4
        answers = feed(obfs_http(), OBFS_HTTP, range(1, len(OBFS_HTTP) + 1))
        self.assertEqual(answers[-1][0], head_end)
        self.assertIsInstance(answers[-1][1], Match)

    def test_obfsTls(self) -> None:
        facts = {"sni": "www.bing.com", "ticket_length": 196}
        assert_verdict_whole_and_byte_by_byte(self, obfs_tls(), OBFS_TLS, Match(facts=facts))
        assert_verdict_whole_and_byte_by_byte(
            self, obfs_tls(sni="*.bing.com"), OBFS_TLS, Match(facts=facts))
        assert_verdict_whole_and_byte_by_byte(self, obfs_tls(sni=OBFS_HOST), OBFS_TLS, NO)
        assert_verdict_whole_and_byte_by_byte(self, websocket(), OBFS_TLS, NO)
        assert_verdict_whole_and_byte_by_byte(self, obfs_http(), OBFS_TLS, NO)

    def test_nonHttpCapturesAreNoAtTheFirstByte(self) -> None:
        for name, data in all_vectors().items():
            if data[:1].isalpha():
                continue  # HTTP, PROXY v1: decided later
            for matcher in (websocket(), obfs_http()):
                self.assertIs(matcher.match(data[:1], {}), NO, name)

    def test_everyOtherCaptureIsNo(self) -> None:
        for name, data in all_vectors().items():
            if data in (GENUINE, OBFS_HTTP, OBFS_TLS):
                continue
            for matcher in (websocket(), obfs_http(), obfs_tls()):
                self.assertIs(matcher.match(data, {}), NO, name)


class LiveClientTests(TestCase):
    """Openings recorded from real clients in this run."""

    timeout = 60

    def test_websocketsClient(self) -> None:
        opening = websockets_client("/stream")
        result = websocket(host=OBFS_HOST, path="/stream").match(opening.data, {})
        assert isinstance(result, Match), (result, opening.data)
        self.assertEqual(result.facts, {"host": OBFS_HOST, "path": "/stream", "ws_version": "13"})
        self.assertIs(obfs_http().match(opening.data, {}), NO)
        assert_verdict_whole_and_byte_by_byte(self, websocket(), opening.data, result)

    def test_websocketsClientAsReceived(self) -> None:
        opening = websockets_client("/")
        cuts = cuts_at([len(b"".join(opening.segments[:i])) for i in range(1, 99)],
                       len(opening.data))
        self.assertIsInstance(feed(websocket(path="/"), opening.data, cuts)[-1][1], Match)

    def test_curlWithWebsocketHeaders(self) -> None:
        for headers in (CURL_WEBSOCKET, CURL_FIREFOX_STYLE):
            data = curl(*headers).data
            result = websocket(host=OBFS_HOST, path_prefix="/").match(data, {})
            self.assertEqual(result, Match(facts={"host": OBFS_HOST, "path": "/stream",
                                                  "ws_version": "13"}), data)
            assert_verdict_whole_and_byte_by_byte(self, obfs_http(), data, NO)

    def test_curlWithoutTheVersionLooksLikeObfs(self) -> None:
        # The rule is about the bytes: a client that leaves the mandatory
        # version out is not a genuine WebSocket client.
        data = curl("Connection: Upgrade", "Upgrade: websocket").data
        self.assertIs(websocket().match(data, {}), NO)
        facts = {"host": OBFS_HOST, "path": "/stream", "obfs": ["no_version"]}
        self.assertEqual(obfs_http(host=OBFS_HOST).match(data, {}), Match(facts=facts))

    def test_plainCurlIsNeither(self) -> None:
        data = curl().data
        for matcher in (websocket(), obfs_http(), obfs_tls()):
            self.assertIs(matcher.match(data, {}), NO)
        self.assertIsInstance(HTTPMatcherFactory().build({}).match(data, {}), Match)

    def test_obfsLocalHttp(self) -> None:
        data = obfs_local(self, "http").data
        result = obfs_http(host=OBFS_HOST).match(data, {})
        assert isinstance(result, Match), data
        self.assertEqual((result.facts["host"], result.facts["path"]), (OBFS_HOST, "/"))
        self.assertIn("body", result.facts["obfs"])
        assert_verdict_whole_and_byte_by_byte(self, websocket(), data, NO)
        assert_verdict_whole_and_byte_by_byte(self, obfs_http(), data, result)

    def test_obfsLocalTls(self) -> None:
        data = obfs_local(self, "tls").data
        result = obfs_tls(sni=OBFS_HOST).match(data, {})
        assert isinstance(result, Match), data
        self.assertEqual(result.facts["sni"], OBFS_HOST)
        self.assertGreater(result.facts["ticket_length"], 0)
        assert_verdict_whole_and_byte_by_byte(self, obfs_tls(), data, result)

    def test_opensslToTheObfsHostIsNotObfs(self) -> None:
        for args in (["-servername", OBFS_HOST], ["-servername", OBFS_HOST, "-tls1_2"],
                     ["-servername", OBFS_HOST, "-alpn", "h2,http/1.1"]):
            data = openssl_hello(*args).data
            self.assertIsInstance(TLSMatcherFactory().build({"sni": OBFS_HOST}).match(data, {}),
                                  Match, args)
            self.assertIs(obfs_tls(sni=OBFS_HOST).match(data, {}), NO, args)
            self.assertIs(obfs_tls().match(data, {}), NO, args)

    def test_curlAndPythonTlsToTheObfsHostAreNotObfs(self) -> None:
        python_tls = (
            "import socket, ssl, sys\n"
            "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            f"ssl.create_default_context().wrap_socket(s, server_hostname={OBFS_HOST!r})\n"
        )
        clients = {
            "curl": lambda port: ["curl", "-sS", "-m", "3", "--resolve",
                                  f"{OBFS_HOST}:{port}:127.0.0.1", f"https://{OBFS_HOST}:{port}/"],
            "python": lambda port: [sys.executable, "-c", python_tls, str(port)],
        }
        for name, argv in clients.items():
            data = record_opening(argv, tls_record_complete).data
            hello = parse_client_hello(data)
            assert isinstance(hello, ClientHello), (name, data)
            self.assertEqual(hello.sni, OBFS_HOST, name)
            self.assertIs(obfs_tls().match(data, {}), NO, name)

    def test_resumingClientsCarryATicketButNotFirst(self) -> None:
        # The one way a real client sends session_ticket with data:
        # resuming a TLS 1.2 session. openssl s_client and python's ssl do it
        # against a real openssl s_server; the ticket is never first.
        folder = os.path.abspath(self.mktemp())
        ca = make_ca(folder)
        cert, key = ca.issue([OBFS_HOST], "server")
        port = free_port()
        start_process(self, ["openssl", "s_server", "-accept", str(port), "-cert", cert,
                             "-key", key, "-tls1_2", "-quiet"], port, os.path.join(folder, "srv"))
        session = os.path.join(folder, "session.pem")
        subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
                        "-servername", OBFS_HOST, "-sess_out", session], input=b"",
                       capture_output=True, timeout=30, check=True)
        openssl = openssl_hello("-tls1_2", "-servername", OBFS_HOST, "-sess_in", session).data

        python_resume = (
            "import socket, ssl, sys\n"
            "ctx = ssl.create_default_context(cafile=sys.argv[3])\n"
            "ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n"
            "def connect(port, session=None):\n"
            "    s = socket.create_connection(('127.0.0.1', port))\n"
            f"    return ctx.wrap_socket(s, server_hostname={OBFS_HOST!r}, session=session)\n"
            # TLS 1.2 sends the ticket within the handshake.
            "first = connect(int(sys.argv[1]))\n"
            "connect(int(sys.argv[2]), first.session)\n"
        )
        python = record_opening(
            lambda rec: [sys.executable, "-c", python_resume, str(port), str(rec), ca.cert_path],
            tls_record_complete, timeout=5).data
        for name, data in (("openssl", openssl), ("python", python)):
            hello = parse_client_hello(data)
            assert isinstance(hello, ClientHello), (name, data)
            tickets = [body for kind, body in hello.extensions if kind == 0x0023]
            self.assertTrue(tickets and tickets[0], f"{name} offered no ticket")
            self.assertNotEqual(hello.extensions[0][0], 0x0023, name)
            self.assertIs(obfs_tls(sni=OBFS_HOST).match(data, {}), NO, name)


class WebSocketRuleTests(TestCase):
    """Each part of the websocket rule, on hand-written heads."""

    def test_genuineUpgradeMatches(self) -> None:
        self.assertEqual(websocket().match(upgrade("Sec-WebSocket-Version: 13"), {}),
                         Match(facts={"host": OBFS_HOST, "path": "/stream", "ws_version": "13"}))

    def test_tokensCompareCaseInsensitivelyAndMaySpanFields(self) -> None:
        for fields in (["Upgrade: WebSocket", "Connection: keep-alive, UPGRADE"],
                       ["Upgrade: h2c", "Upgrade: websocket", "Connection: close",
                        "Connection: upgrade"],
                       ["Upgrade: foo/1 ,websocket", "Connection: Upgrade,keep-alive"]):
            data = request(f"Host: {OBFS_HOST}", *fields, "Sec-WebSocket-Version: 13")
            self.assertIsInstance(websocket().match(data, {}), Match, fields)

    def test_eachMissingPartIsNo(self) -> None:
        for data in [
            request(f"Host: {OBFS_HOST}", "Connection: Upgrade", "Sec-WebSocket-Version: 13"),
            request(f"Host: {OBFS_HOST}", "Upgrade: websocket", "Sec-WebSocket-Version: 13"),
            request(f"Host: {OBFS_HOST}", "Upgrade: h2c", "Connection: Upgrade",
                    "Sec-WebSocket-Version: 13"),
            request(f"Host: {OBFS_HOST}", "Upgrade: websockets", "Connection: Upgrade",
                    "Sec-WebSocket-Version: 13"),
            request(f"Host: {OBFS_HOST}", "Upgrade: websocket", "Connection: Upgraded",
                    "Sec-WebSocket-Version: 13"),
            upgrade(),  # no version
            upgrade("Sec-WebSocket-Version: 13", method="POST"),
            upgrade("Sec-WebSocket-Version: 13", version="1.0"),
        ]:
            self.assertIs(websocket().match(data, {}), NO, data)

    def test_aBodyIsNeverGenuine(self) -> None:
        for fields in (["Content-Length: 5"], ["Transfer-Encoding: chunked"],
                       ["Content-Length: x"]):
            data = upgrade("Sec-WebSocket-Version: 13", *fields)
            self.assertIs(websocket().match(data, {}), NO, fields)
            self.assertEqual(obfs_http().match(data, {}).facts["obfs"], ["body"])
        data = upgrade("Sec-WebSocket-Version: 13", "Content-Length: 0")
        self.assertIsInstance(websocket().match(data, {}), Match)
        self.assertIs(obfs_http().match(data, {}), NO)

    def test_waitsForTheWholeHeaderBlock(self) -> None:
        data = upgrade("Sec-WebSocket-Version: 13")
        for cut in range(len(data)):
            self.assertIs(websocket().match(data[:cut], {}), NEED_MORE, data[:cut])
            self.assertIs(obfs_http().match(data[:cut], {}), NEED_MORE, data[:cut])

    def test_wrongMethodOrPathIsNoOnTheRequestLine(self) -> None:
        self.assertIs(websocket().match(b"POST /stream HTTP/1.1\r\n", {}), NO)
        self.assertIs(websocket().match(b"GET /stream HTTP/1.0\r\n", {}), NO)
        self.assertIs(websocket(path="/live").match(b"GET /stream HTTP/1.1\r\n", {}), NO)
        self.assertIs(websocket(path="/stream").match(b"GET /stream HTTP/1.1\r\n", {}),
                      NEED_MORE)
        self.assertIs(obfs_http().match(b"PUT / HTTP/1.1\r\n", {}), NO)

    def test_pathExactAndPrefix(self) -> None:
        cases = {"/stream": True, "/stream?token=1": True, "/stream/": False,
                 "/streams": False, "/live/a": True, "/live": False, "/": False}
        matcher = websocket(path=["/stream", "/other"], path_prefix="/live/")
        for target, expected in cases.items():
            result = matcher.match(upgrade("Sec-WebSocket-Version: 13", target=target), {})
            self.assertEqual(isinstance(result, Match), expected, target)

    def test_hostCondition(self) -> None:
        data = upgrade("Sec-WebSocket-Version: 13")
        self.assertIsInstance(websocket(host="*.example.com").match(data, {}), Match)
        self.assertIs(websocket(host="other.example.com").match(data, {}), NO)
        two_hosts = request("Host: a", "Host: b", "Upgrade: websocket", "Connection: Upgrade",
                            "Sec-WebSocket-Version: 13")
        self.assertIs(websocket(host="a").match(two_hosts, {}), NO)
        self.assertEqual(websocket().match(two_hosts, {}),
                         Match(facts={"path": "/stream", "ws_version": "13"}))

    def test_badOptions(self) -> None:
        for options, key in [({"path": "stream"}, "path"), ({"path_prefix": "live/"},
                             "path_prefix"), ({"path": []}, "path"), ({"host": "~("}, "host"),
                             ({"sec_version": "13"}, "sec_version")]:
            e = self.assertRaises(MatcherConfigError, WebSocketMatcherFactory().build, options)
            self.assertEqual(e.key, key)


class ObfsRuleTests(TestCase):
    def test_obfsHttpHostCondition(self) -> None:
        self.assertIs(obfs_http(host=OBFS_HOST).match(OBFS_HTTP, {}), NO)
        self.assertIsInstance(obfs_http(host="WWW.bing.com").match(OBFS_HTTP, {}), Match)

    def test_obfsHttpNeedsAnUpgradeToWebsocket(self) -> None:
        without = OBFS_HTTP.replace(b"Upgrade: websocket\r\n", b"")
        self.assertIs(obfs_http().match(without, {}), NO)

    def test_obfsTlsNeedsItsLayoutAndTicketFirstWithData(self) -> None:
        name = sni_ext(OBFS_HOST.encode())
        ticket = ext(0x0023, b"\x99" * 40)
        hellos = {
            "ticket first": (obfs_layout(ticket + name), True),
            "empty ticket first": (obfs_layout(ext(0x0023, b"") + name), False),
            "name first": (obfs_layout(name + ticket), False),
            "no extensions": (obfs_layout(b""), False),
            # A shuffling client without GREASE (rustls) resuming by ticket.
            "9 suites": (hello_body(ticket + name, suites=b"\x13\x01" * 9), False),
            "short session id": (obfs_layout(ticket + name, session_id=b"\x11" * 16), False),
            "two compression methods": (obfs_layout(ticket + name, compression=b"\x01\x00"),
                                        False),
        }
        for label, (body, expected) in hellos.items():
            data = records(handshake(body))
            self.assertEqual(isinstance(obfs_tls(sni=OBFS_HOST).match(data, {}), Match),
                             expected, label)

    def test_obfsTlsTicketStartsAtByte138(self) -> None:
        data = records(handshake(obfs_layout(ext(0x0023, b"\x01") + sni_ext(b"a"))))
        self.assertEqual(data[138:140], b"\x00\x23")
        self.assertEqual(OBFS_TLS[138:140], b"\x00\x23")

    def test_obfsTlsSniCondition(self) -> None:
        nameless = records(handshake(obfs_layout(ext(0x0023, b"\x01"))))
        self.assertIsInstance(obfs_tls().match(nameless, {}), Match)
        self.assertIs(obfs_tls(sni=OBFS_HOST).match(nameless, {}), NO)
        self.assertEqual(obfs_tls().match(nameless, {}).facts,
                         {"sni": None, "ticket_length": 1})

    def test_obfsTlsWaitsForTheWholeHello(self) -> None:
        for cut in range(len(OBFS_TLS)):
            self.assertIs(obfs_tls().match(OBFS_TLS[:cut], {}), NEED_MORE)

    def test_badOptions(self) -> None:
        for factory, key in [(ObfsHTTPMatcherFactory(), "path"), (ObfsTLSMatcherFactory(),
                                                                 "host")]:
            e = self.assertRaises(MatcherConfigError, factory.build, {key: "/"})
            self.assertEqual(e.key, key)
        e = self.assertRaises(MatcherConfigError, ObfsTLSMatcherFactory().build, {"sni": "a*"})
        self.assertEqual(e.key, "sni")


_MATCHERS = [websocket(), websocket(host="~.*", path="/", path_prefix="/s"), obfs_http(),
             obfs_http(host="*.bing.com"), obfs_tls(), obfs_tls(sni=OBFS_HOST)]
_OPENINGS = [GENUINE, OBFS_HTTP, OBFS_TLS, upgrade("Sec-WebSocket-Version: 13"),
             upgrade("Content-Length: 3", body=b"abc")]


class PropertyTests(TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=400),
                     mutated_openings(_OPENINGS + list(all_vectors().values()))))
    def test_noInputMakesMatchRaise(self, data: bytes) -> None:
        for matcher in _MATCHERS:
            self.assertIn(type(matcher.match(data, {})).__name__, {"Match", "Verdict"})

    @settings(max_examples=300, deadline=None)
    @given(mutated_openings(_OPENINGS))
    def test_websocketAndObfsHttpNeverBothMatch(self, data: bytes) -> None:
        # So their order in a config cannot change where a connection goes.
        both = [isinstance(m.match(data, {}), Match) for m in (websocket(), obfs_http())]
        self.assertNotEqual(both, [True, True], data)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_OPENINGS).flatmap(
        lambda d: st.tuples(st.just(d), st.integers(0, len(d)))))
    def test_aCutOpeningIsNeverNoWhereTheWholeOneMatches(self, case: tuple[bytes, int]) -> None:
        data, cut = case
        for matcher in _MATCHERS:
            if isinstance(matcher.match(data, {}), Match):
                self.assertIsNot(matcher.match(data[:cut], {}), NO)
