"""The reasons matchers give beside their verdicts (IExplainingMatcher), and the default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from switchyard.config import Route, matcher_factories
from switchyard.interfaces import NEED_MORE, NO, IExplainingMatcher, IMatcher, Match, MatchResult
from switchyard.matchers import simple_matcher, text
from switchyard.observe.explain import default_reason, reason_for, walk
from tests.fakes import RecordingTarget, ScriptedMatcher
from tests.openings import VECTORS, all_vectors, mutated_openings, vector

TLS_SNI = vector("explain/tls_sni_openssl.bin")  # SNI a.test, ALPN h2 and http/1.1, TLS 1.3
TLS_NO_SNI = vector("explain/tls_nosni_openssl.bin")
OBFS_TLS = vector("obfs_tls_client_to_server.bin")  # TLS 1.2, SNI www.bing.com
OBFS_HTTP = vector("obfs_http_client_to_server.bin")
CURL = vector("explain/http_curl.bin")  # GET /hello?x=1, Host a.test
WEBSOCKET = vector("websockets17_genuine_handshake.bin")  # GET /stream


def built(name: str, **options: Any) -> IMatcher:
    return matcher_factories()[name].build(options)


def said(name: str, data: bytes, **options: Any) -> tuple[str, str]:
    """(verdict, reason) as explain shows them."""
    matcher = built(name, **options)
    result = matcher.match(data, {})
    verdict = ("match" if isinstance(result, Match) else
               "no" if result is NO else "need more")
    return verdict, reason_for(matcher, data, {}, result)


class TLSReasonTests(TestCase):
    def test_sniNotInTheList(self) -> None:
        self.assertEqual(said("tls", TLS_SNI, sni=["b.test", "c.test"]),
                         ("no", "SNI 'a.test' is not one of b.test, c.test"))

    def test_sniNotMatchingOnePattern(self) -> None:
        self.assertEqual(said("tls", TLS_SNI, sni="*.example.com"),
                         ("no", "SNI 'a.test' does not match *.example.com"))

    def test_namelessHelloWithoutNoSni(self) -> None:
        self.assertEqual(said("tls", TLS_NO_SNI, sni="b.test"),
                         ("no", "no SNI, and the route wants b.test (no_sni is not set)"))

    def test_namedHelloOnANoSniRoute(self) -> None:
        self.assertEqual(said("tls", TLS_SNI, no_sni=True),
                         ("no", "SNI 'a.test', and the route takes only hellos without one "
                                "(no_sni)"))

    def test_alpnOffersNoneOfTheRoutes(self) -> None:
        self.assertEqual(said("tls", TLS_SNI, alpn="imap"),
                         ("no", "ALPN h2, http/1.1 offered, the route wants imap"))

    def test_versionBelowMinimum(self) -> None:
        self.assertEqual(said("tls", OBFS_TLS, min_version="1.3"),
                         ("no", "TLS 1.2 is below min_version 1.3"))

    def test_matchSaysWhatWasRead(self) -> None:
        self.assertEqual(said("tls", TLS_SNI, sni="*.test"),
                         ("match", "ClientHello with SNI 'a.test' (the route takes *.test), "
                                   "TLS 1.3, ALPN h2, http/1.1"))

    def test_incompleteHelloSaysHowBig(self) -> None:
        self.assertEqual(said("tls", TLS_SNI[:100]),
                         ("need more", "ClientHello incomplete after 100 bytes (it announces "
                                       "321 bytes of handshake)"))
        self.assertEqual(said("tls", TLS_SNI[:3]),
                         ("need more", "TLS record header incomplete (3 of 5 bytes)"))

    def test_notTlsSaysHowItStarts(self) -> None:
        self.assertEqual(said("tls", b"GET / HTTP/1.1\r\n"),
                         ("no", "not TLS: a TLS client starts with a handshake record (16), "
                                "this with 'GET / HTTP/1'..."))
        self.assertEqual(said("tls", b"\x16\x02\x00\x00\x10")[1],
                         "record version 02 00 is not SSL 3.0 to TLS 1.3")
        self.assertEqual(said("tls", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")[1],
                         "handshake message type 2 is not a ClientHello (1)")


class HTTPReasonTests(TestCase):
    def test_incompleteRequestLine(self) -> None:
        self.assertEqual(said("http", b"GET /hello?x=1"),
                         ("need more", "request line incomplete after 14 bytes"))

    def test_methodPathAndHost(self) -> None:
        self.assertEqual(said("http", CURL, method=["POST", "PUT"]),
                         ("no", "method 'GET' is not one of POST, PUT"))
        self.assertEqual(said("http", CURL, path="/api"),
                         ("no", "path '/hello' does not start with /api"))
        self.assertEqual(said("http", CURL, host="b.test"), ("no", "Host 'a.test' is not b.test"))
        self.assertEqual(said("http", b"GET / HTTP/1.1\r\nHost: a.test\r\n", host="a.test"),
                         ("need more", "header block incomplete after 30 bytes (the host "
                                       "condition waits for its end)"))
        self.assertEqual(said("http", b"GET / HTTP/1.1\r\n\r\n", host="a.test"),
                         ("no", "no Host, and the route wants a.test (it is missing, repeated "
                                "or malformed)"))

    def test_matchSaysTheRequest(self) -> None:
        self.assertEqual(said("http", CURL, host="a.test"),
                         ("match", "request 'GET /hello?x=1 HTTP/1.1', Host 'a.test'"))

    def test_malformedLinesAreQuoted(self) -> None:
        self.assertEqual(said("http", b"GET / HTTP/2.0\r\n"),
                         ("no", "not HTTP/1.x: the request line 'GET / HTTP/2.0' is not "
                                "'METHOD TARGET HTTP/1.x'"))
        self.assertEqual(said("http", b"GET / HTTP/1.1\r\nbad header\r\n"),
                         ("no", "request line 'GET / HTTP/1.1' is fine, but the header line "
                                "'bad header' is not 'name: value' (RFC 9112 section 5)"))
        self.assertEqual(said("http", b"\x16\x03\x01"),
                         ("no", "not HTTP: a request starts with a method name, this with "
                                "16 03 01"))

    def test_h2cPreface(self) -> None:
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        self.assertEqual(said("h2c", preface), ("match", "the HTTP/2 prior-knowledge preface"))
        self.assertEqual(said("h2c", preface[:5]),
                         ("need more", "5 of the 24 bytes of the HTTP/2 preface so far"))
        self.assertEqual(said("h2c", CURL)[0], "no")


class OtherReasonTests(TestCase):
    def test_ssh(self) -> None:
        self.assertEqual(said("ssh", b"SS"), ("need more", "'SS' may still become 'SSH-'"))
        self.assertEqual(said("ssh", b"SSH-2.0-x"),
                         ("need more", "identification line incomplete: no line end in 9 "
                                       "bytes (waiting for one, or for 255 bytes)"))
        self.assertEqual(said("ssh", vector("explain/ssh_openssh.bin")),
                         ("match", "identification line 'SSH-2.0-OpenSSH_9.2p1 "
                                   "Debian-2+deb12u10'"))
        self.assertEqual(said("ssh", CURL),
                         ("no", "does not start with 'SSH-': starts with 'GET /hello?x'..."))

    def test_regex(self) -> None:
        self.assertEqual(said("regex", b"he", pattern="^hello", min_length=3),
                         ("need more", "2 bytes so far, min_length is 3"))
        self.assertEqual(said("regex", b"world", pattern="^hello"),
                         ("no", "pattern '^hello' is not in the 5 bytes"))
        self.assertEqual(said("regex", b"hello!", pattern="^hello"),
                         ("match", "pattern '^hello' found at byte 0: 'hello'"))

    def test_any(self) -> None:
        self.assertEqual(said("any", b"x"), ("match", "the catch-all: it takes every opening"))

    def test_websocket(self) -> None:
        self.assertEqual(said("websocket", WEBSOCKET, path="/other"),
                         ("no", "path '/stream' is not /other"))
        self.assertEqual(said("websocket", WEBSOCKET, host="a.test"),
                         ("no", "Host '127.0.0.1' is not a.test"))
        self.assertEqual(said("websocket", CURL), ("no", "no Upgrade field: a plain request"))
        self.assertEqual(said("websocket", b"POST / HTTP/1.1\r\n"),
                         ("no", "method 'POST': a WebSocket upgrade is a GET"))
        self.assertEqual(said("websocket", OBFS_HTTP),
                         ("no", "no Sec-WebSocket-Version: not a genuine client (simple-obfs's "
                                "imitation sends none)"))
        self.assertEqual(said("websocket", WEBSOCKET, path_prefix="/str"),
                         ("match", "WebSocket upgrade of '/stream', version '13', "
                                   "Host '127.0.0.1'"))

    def test_obfsHttp(self) -> None:
        self.assertEqual(said("obfs-http", WEBSOCKET),
                         ("no", "a genuine WebSocket upgrade (version '13', no body): not "
                                "simple-obfs"))
        self.assertEqual(said("obfs-http", OBFS_HTTP),
                         ("match", "simple-obfs's WebSocket imitation: a body and no version, "
                                   "Host 'www.bing.com'"))

    def test_obfsTls(self) -> None:
        self.assertEqual(said("obfs-tls", TLS_SNI),
                         ("no", "not simple-obfs's fixed ClientHello: 31 cipher suites (it "
                                "sends 28)"))
        self.assertEqual(said("obfs-tls", OBFS_TLS, sni="x.test"),
                         ("no", "SNI 'www.bing.com' is not x.test"))
        self.assertEqual(said("obfs-tls", OBFS_TLS),
                         ("match", "simple-obfs's fixed ClientHello, a session ticket of 196 "
                                   "bytes, SNI 'www.bing.com'"))


OPTIONS: dict[str, list[dict[str, Any]]] = {
    "tls": [{}, {"sni": ["a.test", "*.bing.com"], "no_sni": True, "alpn": "h2"},
            {"min_version": "1.3"}],
    "http": [{}, {"host": "a.test", "path": "/hello", "method": "GET"}],
    "h2c": [{}], "ssh": [{}], "any": [{}],
    "regex": [{"pattern": "^SSH-", "min_length": 4}],
    "websocket": [{}, {"host": "*.test", "path": "/stream", "path_prefix": "/s"}],
    "obfs-http": [{}, {"host": "www.bing.com"}],
    "obfs-tls": [{}, {"sni": "www.bing.com"}],
}


class EveryBuiltinExplainsTests(TestCase):
    def test_everyBuiltinProvidesTheInterface(self) -> None:
        for name, option_sets in OPTIONS.items():
            for options in option_sets:
                self.assertTrue(verifyObject(IExplainingMatcher, built(name, **options)), name)
        self.assertEqual(set(OPTIONS), set(matcher_factories()) & set(OPTIONS))

    @settings(max_examples=300, deadline=None)
    @given(mutated_openings([*all_vectors().values(), *(
        vector(f"explain/{name}") for name in sorted(os.listdir(f"{VECTORS}/explain"))
        if name.endswith(".bin"))]))
    def test_reasonsNeverRaiseAndAreNeverEmpty(self, data: bytes) -> None:
        for name, option_sets in OPTIONS.items():
            for options in option_sets:
                matcher = built(name, **options)
                reason = matcher.explain(data, {})  # type: ignore[attr-defined]
                self.assertIsInstance(reason, str)
                self.assertTrue(reason, f"{name} {options}")


def knock(data: bytes, facts: Mapping[str, Any], word: str) -> MatchResult:
    return Match({}) if data.startswith(word.encode()) else NEED_MORE if word.encode(
    ).startswith(data) else NO


def knock_reason(data: bytes, facts: Mapping[str, Any], word: str) -> str:
    return f"waiting for the word {word!r}"


class DefaultReasonTests(TestCase):
    """A matcher that gives no reason still works: its verdict is said in words."""

    def test_matcherWithoutExplainGetsItsVerdictInWords(self) -> None:
        route = Route(name="plain", matcher=ScriptedMatcher(lambda data: NO), match="plain",
                      target=RecordingTarget())
        steps, chosen, _, _ = walk((route,), b"x", {}, final=False)
        self.assertIsNone(chosen)
        self.assertEqual((steps[0].verdict, steps[0].reason), ("no", default_reason(NO)))
        self.assertIn("gives no reasons", default_reason(NO))
        self.assertIn("gives no reasons", default_reason(NEED_MORE))
        self.assertIn("gives no reasons", default_reason(Match({})))

    def test_simpleMatcherWithoutReason(self) -> None:
        factory = simple_matcher("knock", knock, options={"word": text(required=True)})
        matcher = factory.build({"word": "open"})
        self.assertFalse(IExplainingMatcher.providedBy(matcher))
        self.assertEqual(reason_for(matcher, b"op", {}, NEED_MORE), default_reason(NEED_MORE))

    def test_simpleMatcherWithReasonGetsItsOptions(self) -> None:
        factory = simple_matcher("knock", knock, options={"word": text(required=True)},
                                 reason=knock_reason)
        matcher = factory.build({"word": "open"})
        self.assertTrue(verifyObject(IExplainingMatcher, matcher))
        self.assertIs(matcher.match(b"op", {}), NEED_MORE)
        self.assertEqual(reason_for(matcher, b"op", {}, NEED_MORE),
                         "waiting for the word 'open'")

    def test_explainThatRaisesFallsBackToTheDefault(self) -> None:
        def broken(data: bytes, facts: Mapping[str, Any], word: str) -> str:
            raise ValueError("oops")

        factory = simple_matcher("knock", knock, options={"word": text(required=True)},
                                 reason=broken)
        matcher = factory.build({"word": "open"})
        self.assertEqual(reason_for(matcher, b"x", {}, NO),
                         default_reason(NO) + "; its explain raised ValueError")

    def test_matcherThatRaisesIsCountedAsNo(self) -> None:
        def boom(data: bytes) -> MatchResult:
            raise RuntimeError("bad matcher")

        routes = (Route(name="boom", matcher=ScriptedMatcher(boom), match="boom",
                        target=RecordingTarget()),
                  Route(name="all", matcher=built("any"), match="any", target=RecordingTarget()))
        steps, chosen, _, _ = walk(routes, b"x", {}, final=False)
        self.assertEqual(steps[0].verdict, "error")
        self.assertIn("the switch counts that as no", steps[0].reason)
        self.assertIs(chosen, routes[1])
