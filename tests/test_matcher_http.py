"""The http and h2c matchers, and the reusable request head parser."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.interfaces import NEED_MORE, NO, Match, MatcherConfigError
from switchyard.matchers.http import H2CMatcherFactory, HTTPMatcherFactory
from switchyard.wire.http import (
    H2_PREFACE,
    MAX_REQUEST_LINE,
    RequestHead,
    parse_request_head,
    split_authority,
)
from tests.openings import (
    Opening,
    all_vectors,
    cuts_at,
    feed,
    http_head_complete,
    mutated_openings,
    record_opening,
    vector,
)

WEBSOCKET_GET = vector("websockets17_genuine_handshake.bin")
OBFS_GET = vector("obfs_http_client_to_server.bin")


def http(**options: Any) -> Any:
    return HTTPMatcherFactory().build(options)


def head_of(data: bytes) -> RequestHead:
    head = parse_request_head(data)
    assert isinstance(head, RequestHead), head
    return head


@functools.cache
def curl(name: str) -> Opening:
    """Requests from the real curl client, recorded once per test run."""

    def argv(port: int) -> list[str]:
        base = ["curl", "-sS", "-m", "3"]
        if name == "resolve":
            return base + [
                "--resolve",
                f"a.example.com:{port}:127.0.0.1",
                f"http://a.example.com:{port}/some/path?x=1",
            ]
        return base + ["-H", "Host: b.example.org", f"http://127.0.0.1:{port}/"]

    return record_opening(argv, http_head_complete)


class VectorTests(TestCase):
    def test_websocketHandshakeHead(self) -> None:
        head = head_of(WEBSOCKET_GET)
        self.assertEqual(
            (head.method, head.target, head.path, head.version),
            ("GET", "/stream", "/stream", "1.1"),
        )
        self.assertEqual(head.header("Sec-WebSocket-Version"), "13")
        self.assertEqual(head.header("upgrade"), "websocket")
        self.assertEqual(head.header("content-length"), None)
        self.assertTrue(head.header_complete)
        self.assertEqual(head.body_offset, len(WEBSOCKET_GET))

    def test_websocketHandshakeFacts(self) -> None:
        self.assertEqual(
            http().match(WEBSOCKET_GET, {}),
            Match(
                facts={"method": "GET", "path": "/stream", "version": "1.1", "host": "127.0.0.1"}
            ),
        )

    def test_obfsFakeUpgradeBodyFollowsHead(self) -> None:
        head = head_of(OBFS_GET)
        self.assertEqual(head.header("content-length"), "196")
        assert head.body_offset is not None
        self.assertEqual(len(OBFS_GET) - head.body_offset, 196)
        self.assertEqual(head.host, "www.bing.com")

    def test_headersKeepOrderWithLowercasedNames(self) -> None:
        self.assertEqual(
            [name for name, _ in head_of(OBFS_GET).headers],
            ["host", "user-agent", "upgrade", "connection", "sec-websocket-key", "content-length"],
        )

    def test_capturesFedOneByteAtATime(self) -> None:
        for data in [WEBSOCKET_GET, OBFS_GET]:
            matcher = http(host=["127.0.0.1", "www.bing.com"])
            head_end = data.index(b"\r\n\r\n") + 4
            answers = feed(matcher, data, range(1, len(data) + 1))
            self.assertEqual(answers[-1], (head_end, matcher.match(data, {})))
            self.assertIsInstance(answers[-1][1], Match)

    def test_otherProtocolsCapturesAreNo(self) -> None:
        for name, data in all_vectors().items():
            if name not in {"websockets17_genuine_handshake.bin", "obfs_http_client_to_server.bin"}:
                self.assertIs(http().match(data, {}), NO, name)


class RealClientTests(TestCase):
    def test_curlHostFromResolveHasPortStripped(self) -> None:
        result = http(host="a.example.com").match(curl("resolve").data, {})
        self.assertEqual(
            result,
            Match(
                facts={
                    "method": "GET",
                    "path": "/some/path",
                    "version": "1.1",
                    "host": "a.example.com",
                }
            ),
        )

    def test_curlExplicitHostHeader(self) -> None:
        self.assertIsInstance(http(host="*.example.org").match(curl("header").data, {}), Match)
        self.assertIs(http(host="a.example.com").match(curl("header").data, {}), NO)

    def test_curlFedOneByteAtATimeWithHostCondition(self) -> None:
        for name in ["resolve", "header"]:
            data = curl(name).data
            matcher = http(host=["a.example.com", "b.example.org"])
            answers = feed(matcher, data, range(1, len(data) + 1))
            self.assertEqual(answers[-1], (len(data), matcher.match(data, {})))
            self.assertIsInstance(answers[-1][1], Match)

    def test_curlFedOneByteAtATimeWithoutConditions(self) -> None:
        data = curl("resolve").data
        answers = feed(http(), data, range(1, len(data) + 1))
        line_end = data.index(b"\r\n") + 2
        cut, early = answers[-1]
        self.assertEqual(cut, line_end)
        whole = http().match(data, {})
        assert isinstance(early, Match) and isinstance(whole, Match)
        # Facts decided early are a subset: the host arrives with the headers.
        self.assertLessEqual(early.facts.items(), whole.facts.items())

    def test_curlAsReceived(self) -> None:
        opening = curl("resolve")
        ends, total = [], 0
        for segment in opening.segments:
            total += len(segment)
            ends.append(total)
        answers = feed(http(host="a.example.com"), opening.data, cuts_at(ends, len(opening.data)))
        self.assertIsInstance(answers[-1][1], Match)


class RequestLineTests(TestCase):
    def test_validPrefixesNeedMore(self) -> None:
        for prefix in [
            b"G",
            b"GE",
            b"GET",
            b"GET ",
            b"GET /ind",
            b"GET /index ",
            b"GET / HTTP/1.",
            b"GET / HTTP/1.1\r",
        ]:
            self.assertIs(http().match(prefix, {}), NEED_MORE, prefix)

    def test_noAsSoonAsItCannotBeARequestLine(self) -> None:
        for data in [
            b" ",
            b"GET  ",
            b"GET / X",
            b"GET / HTTP/2",
            b"G\x00",
            b"GET / HTTP/1.1\rX",
            b"{",
        ]:
            self.assertIs(http().match(data, {}), NO, data)

    def test_completeLineMatchesWithoutWaitingForHeaders(self) -> None:
        self.assertEqual(
            http().match(b"POST /api/v1?q=2 HTTP/1.0\r\nHost: x", {}),
            Match(facts={"method": "POST", "path": "/api/v1", "version": "1.0"}),
        )

    def test_http2VersionInRequestLineIsNo(self) -> None:
        self.assertIs(http().match(b"GET / HTTP/2.0\r\n\r\n", {}), NO)

    def test_http09RequestIsNo(self) -> None:
        self.assertIs(http().match(b"GET /\r\n", {}), NO)

    def test_bareLineFeedIsNo(self) -> None:
        self.assertIs(http().match(b"GET / HTTP/1.1\n\n", {}), NO)

    def test_methodIsAnyTokenUpTo32Bytes(self) -> None:
        self.assertIsInstance(http().match(b"M-SEARCH * HTTP/1.1\r\n", {}), Match)
        self.assertIs(http().match(b"A" * 32, {}), NEED_MORE)
        self.assertIs(http().match(b"A" * 33, {}), NO)

    def test_requestLineLongerThan8KiBIsNo(self) -> None:
        target = b"/" + b"a" * (MAX_REQUEST_LINE - len(b"GET  HTTP/1.1\r\n") - 1)
        line = b"GET " + target + b" HTTP/1.1\r\n"
        self.assertEqual(len(line), MAX_REQUEST_LINE)
        self.assertIsInstance(http().match(line, {}), Match)
        self.assertIs(http().match(line[:-1], {}), NEED_MORE)
        longer = b"GET /a" + target + b" HTTP/1.1\r\n"
        self.assertIs(http().match(longer, {}), NO)
        self.assertIs(http().match(longer[:MAX_REQUEST_LINE], {}), NO)

    def test_rawUtf8InTargetIsAccepted(self) -> None:
        self.assertEqual(head_of("GET /café HTTP/1.1\r\n".encode()).path, "/cafÃ©")

    def test_proxyProtocolAndH2PrefaceAreNo(self) -> None:
        self.assertIs(http().match(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n", {}), NO)
        self.assertIs(http().match(H2_PREFACE, {}), NO)


class HeaderTests(TestCase):
    def test_hostConditionWaitsForEndOfHeaders(self) -> None:
        matcher = http(host="a.example.com")
        partial = b"GET / HTTP/1.1\r\nHost: a.example.com\r\n"
        self.assertIs(matcher.match(partial, {}), NEED_MORE)
        self.assertIs(matcher.match(partial + b"\r", {}), NEED_MORE)
        self.assertIsInstance(matcher.match(partial + b"\r\n", {}), Match)

    def test_headerNamesAreCaseInsensitive(self) -> None:
        self.assertIsInstance(
            http(host="a.example.com").match(b"GET / HTTP/1.1\r\nHOST:a.example.com\r\n\r\n", {}),
            Match,
        )

    def test_hostWithPortAndTrailingDot(self) -> None:
        data = b"GET / HTTP/1.1\r\nHost: A.Example.com.:8080 \r\n\r\n"
        self.assertIsInstance(http(host="a.example.com").match(data, {}), Match)

    def test_ipv6HostLiteral(self) -> None:
        data = b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"
        result = http(host="[::1]").match(data, {})
        self.assertEqual(
            result, Match(facts={"method": "GET", "path": "/", "version": "1.1", "host": "::1"})
        )

    def test_absoluteFormTargetWinsOverHostHeader(self) -> None:
        data = b"GET http://a.example.com:81/x/y?z HTTP/1.1\r\nHost: b.example.com\r\n\r\n"
        result = http(host="a.example.com", path="/x/").match(data, {})
        self.assertEqual(
            result,
            Match(
                facts={"method": "GET", "path": "/x/y", "version": "1.1", "host": "a.example.com"}
            ),
        )

    def test_absoluteFormWithoutPathHasRootPath(self) -> None:
        self.assertEqual(head_of(b"GET http://a.example.com HTTP/1.1\r\n").path, "/")

    def test_missingHostFailsHostCondition(self) -> None:
        self.assertIs(http(host="~.*").match(b"GET / HTTP/1.0\r\n\r\n", {}), NO)

    def test_repeatedHostFailsHostCondition(self) -> None:
        data = b"GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: a.example.com\r\n\r\n"
        self.assertIs(http(host="a.example.com").match(data, {}), NO)

    def test_malformedHostFailsHostCondition(self) -> None:
        for host in [b"", b"a b", b"a.example.com:80x", b"[::1", b"[zz]"]:
            data = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
            self.assertIs(http(host="~.*").match(data, {}), NO, host)

    def test_whitespaceBeforeColonIsNo(self) -> None:
        self.assertIs(http().match(b"GET / HTTP/1.1\r\nHost : a\r\n", {}), NO)

    def test_obsoleteLineFoldingIsNo(self) -> None:
        self.assertIs(http().match(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", {}), NO)

    def test_headerLineWithoutColonIsNo(self) -> None:
        self.assertIs(http().match(b"GET / HTTP/1.1\r\nHost\r\n", {}), NO)

    def test_bareCarriageReturnInValueIsNo(self) -> None:
        self.assertIs(http().match(b"GET / HTTP/1.1\r\nX: a\rb", {}), NO)

    def test_incompleteHeadersAreReportedAsSuch(self) -> None:
        head = head_of(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Ag")
        self.assertFalse(head.header_complete)
        self.assertIsNone(head.body_offset)
        self.assertEqual(head.headers, (("host", "a"),))

    def test_repeatedHeaderValuesInOrder(self) -> None:
        head = head_of(b"GET / HTTP/1.1\r\nConnection: a\r\nconnection: b\r\n\r\n")
        self.assertEqual(head.header_values("Connection"), ["a", "b"])


class ConditionTests(TestCase):
    def test_pathPrefix(self) -> None:
        matcher = http(path=["/api/", "/static"])
        self.assertIsInstance(matcher.match(b"GET /api/v1 HTTP/1.1\r\n", {}), Match)
        self.assertIsInstance(matcher.match(b"GET /static.css HTTP/1.1\r\n", {}), Match)
        self.assertIs(matcher.match(b"GET /ap HTTP/1.1\r\n", {}), NO)

    def test_pathIgnoresQuery(self) -> None:
        self.assertIs(http(path="/a?b").match(b"GET /a?b HTTP/1.1\r\n", {}), NO)

    def test_pathMismatchIsNoBeforeHeadersEnd(self) -> None:
        self.assertIs(http(path="/x", host="a").match(b"GET /y HTTP/1.1\r\n", {}), NO)

    def test_methodIsCaseSensitive(self) -> None:
        matcher = http(method=["GET", "HEAD"])
        self.assertIsInstance(matcher.match(b"HEAD / HTTP/1.1\r\n", {}), Match)
        self.assertIs(matcher.match(b"get / HTTP/1.1\r\n", {}), NO)
        self.assertIs(matcher.match(b"POST / HTTP/1.1\r\n", {}), NO)

    def test_connectHasNoPathFact(self) -> None:
        result = http(method="CONNECT").match(b"CONNECT a.example.com:443 HTTP/1.1\r\n", {})
        self.assertEqual(result, Match(facts={"method": "CONNECT", "version": "1.1"}))


class AuthorityTests(TestCase):
    def test_splitAuthority(self) -> None:
        cases = {
            "a.example.com": "a.example.com",
            "a.example.com:443": "a.example.com",
            "user:pw@a.example.com:1": "a.example.com",
            "[2001:db8::1]:8080": "2001:db8::1",
            "[::1]": "::1",
            "": None,
            "a:b:c": None,
            "[::1]x": None,
        }
        for authority, host in cases.items():
            self.assertEqual(split_authority(authority), host, authority)


class H2CTests(TestCase):
    def setUp(self) -> None:
        self.matcher = H2CMatcherFactory().build({})

    def test_prefaceMatches(self) -> None:
        self.assertEqual(
            self.matcher.match(H2_PREFACE + b"\x00\x00\x12\x04", {}), Match(facts={"version": "2"})
        )

    def test_everyPrefixOfPrefaceNeedsMore(self) -> None:
        for cut in range(len(H2_PREFACE)):
            self.assertIs(self.matcher.match(H2_PREFACE[:cut], {}), NEED_MORE)

    def test_http1RequestIsNo(self) -> None:
        self.assertIs(self.matcher.match(WEBSOCKET_GET, {}), NO)
        self.assertIs(self.matcher.match(b"PRI * HTTP/1.1\r\n", {}), NO)

    def test_takesNoOptions(self) -> None:
        e = self.assertRaises(MatcherConfigError, H2CMatcherFactory().build, {"host": "x"})
        self.assertEqual(e.key, "host")


class OptionErrorTests(TestCase):
    def assertConfigError(self, key: str, problem: str, **options: Any) -> None:
        e = self.assertRaises(MatcherConfigError, HTTPMatcherFactory().build, options)
        self.assertEqual(e.key, key)
        self.assertIn(problem, str(e))

    def test_unknownOption(self) -> None:
        self.assertConfigError("sni", "accepted options: host, method, path", sni="a")

    def test_badHostRegex(self) -> None:
        self.assertConfigError("host", "bad regex '~[': unterminated character set", host="~[")

    def test_pathMustBeAbsolute(self) -> None:
        self.assertConfigError("path", "'api' must start with '/'", path="api")

    def test_lowercaseMethod(self) -> None:
        self.assertConfigError("method", "'get' is not an uppercase method name", method="get")

    def test_methodWrongType(self) -> None:
        self.assertConfigError("method", "expected a string or a list of strings", method=1)


_OPTION_SETS: list[Mapping[str, Any]] = [
    {},
    {"host": ["a.example.com", "*.bing.com", "~.*1.*"]},
    {"path": "/s", "method": ["GET", "POST"]},
]
_MATCHERS = [HTTPMatcherFactory().build(o) for o in _OPTION_SETS] + [H2CMatcherFactory().build({})]
_VALID = [WEBSOCKET_GET, OBFS_GET, b"GET http://[::1]:80/p?q HTTP/1.0\r\nHost: x\r\n\r\n"]
_token = st.text(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=32,
)
_target = st.binary(min_size=1, max_size=60).map(
    lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F) or b"/"
)


class PropertyTests(TestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(st.binary(max_size=300), mutated_openings(_VALID + list(all_vectors().values())))
    )
    def test_noInputMakesMatchRaise(self, data: bytes) -> None:
        for matcher in _MATCHERS:
            self.assertIn(type(matcher.match(data, {})).__name__, {"Match", "Verdict"})

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_VALID).flatmap(lambda d: st.tuples(st.just(d), st.integers(0, len(d)))))
    def test_truncatedRequestIsNeverNo(self, case: tuple[bytes, int]) -> None:
        data, cut = case
        self.assertIsNot(http().match(data[:cut], {}), NO)
        self.assertIsNot(http(host="~.*").match(data[:cut], {}), NO)

    @settings(max_examples=200, deadline=None)
    @given(_token, _target, st.integers(0, 9))
    def test_anyWellFormedRequestLineMatchesAndItsPrefixesNeedMore(
        self, method: str, target: bytes, minor: int
    ) -> None:
        line = method.encode() + b" " + target + b" HTTP/1.%d\r\n" % minor
        result = http().match(line, {})
        assert isinstance(result, Match)
        self.assertEqual(result.facts["method"], method)
        self.assertEqual(result.facts["version"], f"1.{minor}")
        for cut in range(len(line)):
            self.assertIs(http().match(line[:cut], {}), NEED_MORE)
