"""The tls matcher: ClientHello parsing, reassembly, conditions and facts."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.interfaces import NEED_MORE, NO, Match, MatcherConfigError, MatchResult
from switchyard.matchers.tls import TLSMatcherFactory
from switchyard.wire.tls import ClientHello, parse_client_hello, version_name
from tests.openings import (
    Opening,
    all_vectors,
    cuts_at,
    feed,
    mutated_openings,
    openssl_hello,
    vector,
)

OBFS_HELLO = vector("obfs_tls_client_to_server.bin")


def tls(**options: Any) -> Any:
    return TLSMatcherFactory().build(options)


def hello_of(data: bytes) -> ClientHello:
    hello = parse_client_hello(data)
    assert isinstance(hello, ClientHello), hello
    return hello


# Builders for hand-made hellos: every length field computed, so a test can
# break exactly one of them.


def vec(size: int, body: bytes) -> bytes:
    return len(body).to_bytes(size, "big") + body


def ext(ext_type: int, body: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + vec(2, body)


def sni_ext(name: bytes) -> bytes:
    return ext(0, vec(2, b"\x00" + vec(2, name)))


def alpn_ext(*protocols: bytes) -> bytes:
    return ext(16, vec(2, b"".join(vec(1, p) for p in protocols)))


def versions_ext(*versions: int) -> bytes:
    return ext(43, vec(1, b"".join(v.to_bytes(2, "big") for v in versions)))


def hello_body(
    extensions: bytes | None = b"",
    legacy_version: int = 0x0303,
    session_id: bytes = b"\x11" * 32,
    suites: bytes = b"\x13\x01\x13\x02\xc0\x2f",
    compression: bytes = b"\x00",
) -> bytes:
    body = (
        legacy_version.to_bytes(2, "big")
        + b"\x42" * 32
        + vec(1, session_id)
        + vec(2, suites)
        + vec(1, compression)
    )
    if extensions is not None:
        body += vec(2, extensions)
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + vec(3, body)


def records(payload: bytes, cuts: Iterable[int] = (), version: int = 0x0301) -> bytes:
    """Frame C{payload} as handshake records, split at C{cuts}."""
    points = [0, *sorted(set(cuts)), len(payload)]
    return b"".join(
        b"\x16" + version.to_bytes(2, "big") + vec(2, payload[a:b])
        for a, b in zip(points, points[1:], strict=False)
    )


def record_boundaries(data: bytes) -> list[int]:
    ends, pos = [], 0
    while pos + 5 <= len(data):
        pos += 5 + int.from_bytes(data[pos + 3 : pos + 5], "big")
        ends.append(pos)
    return ends


def reframe(single_record: bytes, cuts: Iterable[int]) -> bytes:
    """Re-split a one-record hello's handshake bytes into several records."""
    return records(single_record[5:], cuts, int.from_bytes(single_record[1:3], "big"))


MODERN_HELLO = records(
    handshake(
        hello_body(
            sni_ext(b"a.example.com")
            + alpn_ext(b"h2", b"http/1.1")
            + versions_ext(0x3A3A, 0x0304, 0x0303)
        )
    )
)


def assert_decided_at_end(case: TestCase, data: bytes, ends: Iterable[int], name: str) -> None:
    """Offered C{data} growing to each of C{ends}, a matcher says NEED_MORE
    until the whole hello is there, then what it says of the whole buffer."""
    matcher = tls(sni=["a.example.com", "*.example.com", "*.bing.com"], no_sni=True)
    whole = matcher.match(data, {})
    case.assertIsInstance(whole, Match, name)
    answers = feed(matcher, data, cuts_at(ends, len(data)))
    case.assertEqual(answers[-1], (len(data), whole), name)
    case.assertEqual({a for _, a in answers[:-1]}, set() if len(answers) == 1 else {NEED_MORE})


@functools.cache
def live(name: str) -> Opening:
    """Openings from the real openssl client, recorded once per test run."""
    big_alpn = ",".join(f"proto{i:02d}-" + "x" * 190 for i in range(8))
    argv = {
        "sni_alpn": ["-servername", "a.example.com", "-alpn", "h2,http/1.1"],
        "no_sni": ["-noservername"],
        "tls12": ["-tls1_2", "-servername", "a.example.com"],
        "big": ["-servername", "big.example.com", "-alpn", big_alpn],
    }[name]
    opening = openssl_hello(*argv)
    if not opening.data:
        raise AssertionError(f"openssl s_client {' '.join(argv)} sent nothing")
    return opening


class VectorTests(TestCase):
    def test_obfsHelloIsParsed(self) -> None:
        hello = hello_of(OBFS_HELLO)
        self.assertEqual(hello.sni, "www.bing.com")
        self.assertEqual(hello.legacy_version, 0x0303)
        self.assertEqual(hello.versions, (0x0303,))
        self.assertEqual(hello.alpn, ())
        self.assertEqual(hello.length, len(OBFS_HELLO))

    def test_obfsHelloFirstExtensionIsSessionTicketWithPayload(self) -> None:
        ext_type, data = hello_of(OBFS_HELLO).extensions[0]
        self.assertEqual(ext_type, 0x0023)
        self.assertEqual(len(data), 196)

    def test_obfsHelloFedOneByteAtATime(self) -> None:
        assert_decided_at_end(self, OBFS_HELLO, range(1, len(OBFS_HELLO) + 1), "obfs")

    def test_obfsHelloReframedAndFedRecordByRecord(self) -> None:
        data = reframe(OBFS_HELLO, [1, 138, 300])
        assert_decided_at_end(self, data, record_boundaries(data), "obfs reframed")

    def test_obfsHelloFacts(self) -> None:
        self.assertEqual(
            tls().match(OBFS_HELLO, {}),
            Match(facts={"sni": "www.bing.com", "tls_version": "1.2"}),
        )

    def test_obfsServerHelloIsNotAClientHello(self) -> None:
        self.assertIs(tls().match(vector("obfs_tls_server_to_client.bin"), {}), NO)

    def test_otherProtocolsCapturesAreNo(self) -> None:
        for name, data in all_vectors().items():
            if name != "obfs_tls_client_to_server.bin":
                self.assertIs(tls().match(data, {}), NO, name)


class RealClientTests(TestCase):
    def test_opensslWithSniAndAlpn(self) -> None:
        result = tls().match(live("sni_alpn").data, {})
        assert isinstance(result, Match)
        self.assertEqual(result.facts["sni"], "a.example.com")
        self.assertEqual(result.facts["alpn"], ["h2", "http/1.1"])
        self.assertEqual(result.facts["tls_version"], "1.3")

    def test_opensslWithoutServerName(self) -> None:
        data = live("no_sni").data
        result = tls().match(data, {})
        assert isinstance(result, Match)
        self.assertIsNone(result.facts["sni"])
        self.assertIsInstance(tls(no_sni=True).match(data, {}), Match)
        self.assertIs(tls(sni="*.example.com").match(data, {}), NO)

    def test_opensslTls12OnlyOffersTls12(self) -> None:
        data = live("tls12").data
        result = tls().match(data, {})
        assert isinstance(result, Match)
        self.assertEqual(result.facts["tls_version"], "1.2")
        self.assertIsInstance(tls(min_version="1.2").match(data, {}), Match)
        self.assertIs(tls(min_version="1.3").match(data, {}), NO)

    def test_largeHelloFromOpenssl(self) -> None:
        data = live("big").data
        self.assertGreater(len(data), 1800)
        hello = hello_of(data)
        self.assertEqual(hello.sni, "big.example.com")
        self.assertEqual(len(hello.alpn), 8)
        self.assertIsInstance(tls(alpn="proto07-" + "x" * 190).match(data, {}), Match)

    def test_everyRealHelloFedOneByteAtATime(self) -> None:
        for name in ["sni_alpn", "no_sni", "tls12", "big"]:
            data = live(name).data
            assert_decided_at_end(self, data, range(1, len(data) + 1), name)

    def test_everyRealHelloAsReceived(self) -> None:
        for name in ["sni_alpn", "no_sni", "tls12", "big"]:
            opening = live(name)
            ends, total = [], 0
            for segment in opening.segments:
                total += len(segment)
                ends.append(total)
            assert_decided_at_end(self, opening.data, ends, name)

    def test_largeHelloSplitIntoEthernetSizedSegments(self) -> None:
        data = live("big").data
        assert_decided_at_end(self, data, range(1448, len(data), 1448), "big")

    def test_largeHelloReframedIntoThreeRecords(self) -> None:
        single = live("big").data
        data = reframe(single, [3, 700, 1400])
        self.assertEqual(len(record_boundaries(data)), 4)
        self.assertEqual(hello_of(data).extensions, hello_of(single).extensions)
        assert_decided_at_end(self, data, record_boundaries(data), "big reframed")
        assert_decided_at_end(self, data, range(1, len(data) + 1), "big reframed")

    def test_everyRealHelloReframedAndFedRecordByRecord(self) -> None:
        for name in ["sni_alpn", "no_sni", "tls12", "big"]:
            single = live(name).data
            data = reframe(single, [2, 60, len(single) // 2])
            self.assertEqual(hello_of(data).extensions, hello_of(single).extensions, name)
            assert_decided_at_end(self, data, record_boundaries(data), name)
            assert_decided_at_end(self, data, range(1, len(data) + 1), name)


class ReassemblyTests(TestCase):
    def test_helloSplitAcrossRecordsAtEveryPoint(self) -> None:
        payload = MODERN_HELLO[5:]
        for cut in range(1, len(payload)):
            self.assertEqual(hello_of(records(payload, [cut])).sni, "a.example.com")

    def test_handshakeHeaderSplitAcrossThreeRecords(self) -> None:
        self.assertEqual(hello_of(records(MODERN_HELLO[5:], [1, 2])).sni, "a.example.com")

    def test_recordBoundaryPrefixesNeedMore(self) -> None:
        data = records(MODERN_HELLO[5:], [10, 50, 90])
        for end in record_boundaries(data)[:-1]:
            self.assertIs(tls().match(data[:end], {}), NEED_MORE)

    def test_bytesAfterTheHelloAreIgnored(self) -> None:
        data = MODERN_HELLO + b"\x17\x03\x03\x00\x05hello"
        self.assertEqual(tls().match(data, {}), tls().match(MODERN_HELLO, {}))
        self.assertEqual(hello_of(data).length, len(MODERN_HELLO))

    def test_ssl30RecordVersionAndTls13RecordVersion(self) -> None:
        for version in [0x0300, 0x0301, 0x0303, 0x0304]:
            self.assertIsInstance(hello_of(records(MODERN_HELLO[5:], version=version)), ClientHello)

    def test_helloWithoutExtensions(self) -> None:
        data = records(handshake(hello_body(extensions=None, legacy_version=0x0300)))
        self.assertEqual(tls().match(data, {}), Match(facts={"sni": None, "tls_version": "ssl3"}))

    def test_parseAcceptsBytearrayAndMemoryview(self) -> None:
        self.assertEqual(parse_client_hello(bytearray(OBFS_HELLO)), hello_of(OBFS_HELLO))
        self.assertEqual(parse_client_hello(memoryview(OBFS_HELLO)), hello_of(OBFS_HELLO))

    def test_routesShareOneParse(self) -> None:
        self.assertIs(parse_client_hello(OBFS_HELLO), parse_client_hello(bytes(OBFS_HELLO)))

    def test_emptyBufferNeedsMore(self) -> None:
        self.assertIs(tls().match(b"", {}), NEED_MORE)


class MalformedTests(TestCase):
    """Whatever cannot become a ClientHello is NO, as early as it shows."""

    def assertNo(self, data: bytes) -> None:
        self.assertIs(parse_client_hello(data), NO)
        self.assertIs(tls().match(data, {}), NO)

    def test_otherContentTypes(self) -> None:
        for content_type in [0x14, 0x15, 0x17, 0x18]:
            self.assertNo(bytes([content_type]) + MODERN_HELLO[1:])

    def test_recordVersion2IsNo(self) -> None:
        self.assertNo(b"\x16\x02\x00")

    def test_recordMinorVersionAbove4IsNo(self) -> None:
        self.assertNo(b"\x16\x03\x05")

    def test_sslv2FramedHelloIsNo(self) -> None:
        self.assertNo(b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10")

    def test_zeroLengthRecordIsNo(self) -> None:
        self.assertNo(b"\x16\x03\x01\x00\x00")

    def test_recordLongerThan16KiBIsNo(self) -> None:
        self.assertNo(b"\x16\x03\x01\x40\x01")

    def test_wrongHandshakeTypeIsNo(self) -> None:
        self.assertNo(b"\x16\x03\x01\x00\x30\x02")

    def test_helloLongerThan16KiBIsNo(self) -> None:
        self.assertNo(b"\x16\x03\x01\x00\x30\x01\x00\x40\x01")

    def test_helloTooShortToHoldItsFieldsIsNo(self) -> None:
        self.assertNo(records(handshake(b"\x03\x03" + b"\x00" * 30)))

    def test_legacyVersionNot3IsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(legacy_version=0x0203))))

    def test_sessionIdLongerThan32IsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(session_id=b"\x01" * 33))))

    def test_oddCipherSuitesLengthIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(suites=b"\x13\x01\x13"))))

    def test_noCipherSuitesIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(suites=b""))))

    def test_noCompressionMethodIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(compression=b""))))

    def test_extensionsLengthLongerThanHelloIsNo(self) -> None:
        body = bytearray(hello_body(sni_ext(b"a.example.com")))
        at = len(body) - len(sni_ext(b"a.example.com")) - 2
        body[at + 1] += 1
        self.assertNo(records(handshake(bytes(body))))

    def test_extensionsLengthShorterThanHelloIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(sni_ext(b"a.example.com")) + b"\x00")))

    def test_lyingLengthIsNoBeforeTheRestArrives(self) -> None:
        body = bytearray(hello_body(sni_ext(b"a.example.com")))
        at = len(body) - len(sni_ext(b"a.example.com")) - 2
        body[at] += 1
        data = records(handshake(bytes(body)))
        self.assertNo(data[: 5 + 4 + at + 2])

    def test_extensionLongerThanBlockIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(b"\x00\x17\x00\x05\x00"))))

    def test_truncatedExtensionHeaderIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(b"\x00\x17\x00"))))

    def test_duplicateExtensionIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(ext(23, b"") + ext(23, b"")))))

    def test_serverNameListLyingIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(ext(0, b"\x00\x10\x00\x00\x03abc")))))

    def test_emptyServerNameExtensionIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(ext(0, b"")))))

    def test_serverNameWithNulOrNonAsciiIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(sni_ext(b"a.com\x00.b.com")))))
        self.assertNo(records(handshake(hello_body(sni_ext("bücher.de".encode())))))

    def test_emptyAlpnNameIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(alpn_ext(b"h2", b"")))))

    def test_supportedVersionsOddLengthIsNo(self) -> None:
        self.assertNo(records(handshake(hello_body(ext(43, b"\x03\x03\x04\x03")))))

    def test_nonHandshakeRecordBeforeHelloEndsIsNo(self) -> None:
        first, rest = MODERN_HELLO[5:30], MODERN_HELLO[30:]
        data = records(first) + b"\x14\x03\x03\x00\x01\x01" + records(rest)
        self.assertNo(data)


class ConditionTests(TestCase):
    def hello(
        self, sni: bytes | None = None, alpn: tuple[bytes, ...] = (), versions: tuple[int, ...] = ()
    ) -> bytes:
        extensions = b""
        if sni is not None:
            extensions += sni_ext(sni)
        if alpn:
            extensions += alpn_ext(*alpn)
        if versions:
            extensions += versions_ext(*versions)
        return records(handshake(hello_body(extensions)))

    def assertMatches(self, result: MatchResult) -> None:
        self.assertIsInstance(result, Match)

    def test_sniExactMatches(self) -> None:
        self.assertMatches(tls(sni="a.example.com").match(self.hello(b"A.Example.com"), {}))

    def test_sniMismatchIsNoNotNeedMore(self) -> None:
        self.assertIs(tls(sni="b.example.com").match(self.hello(b"a.example.com"), {}), NO)

    def test_sniWildcardDoesNotMatchApex(self) -> None:
        self.assertIs(tls(sni="*.example.com").match(self.hello(b"example.com"), {}), NO)
        self.assertMatches(tls(sni="*.example.com").match(self.hello(b"www.example.com"), {}))

    def test_sniRegex(self) -> None:
        matcher = tls(sni=r"~^api[0-9]+\.example\.net$")
        self.assertMatches(matcher.match(self.hello(b"api42.example.net"), {}))
        self.assertIs(matcher.match(self.hello(b"api.example.net"), {}), NO)

    def test_sniConditionRefusesNamelessHello(self) -> None:
        self.assertIs(tls(sni="a.example.com").match(self.hello(), {}), NO)

    def test_noSniAloneMatchesOnlyNamelessHellos(self) -> None:
        self.assertMatches(tls(no_sni=True).match(self.hello(), {}))
        self.assertIs(tls(no_sni=True).match(self.hello(b"a.example.com"), {}), NO)

    def test_noSniWithSniMatchesEither(self) -> None:
        matcher = tls(sni="a.example.com", no_sni=True)
        self.assertMatches(matcher.match(self.hello(), {}))
        self.assertMatches(matcher.match(self.hello(b"a.example.com"), {}))
        self.assertIs(matcher.match(self.hello(b"b.example.com"), {}), NO)

    def test_noSniFalseIsTheDefault(self) -> None:
        self.assertMatches(tls(no_sni=False).match(self.hello(b"a.example.com"), {}))
        self.assertMatches(tls(no_sni=False).match(self.hello(), {}))

    def test_alpnMatchesWhenAnyConfiguredProtocolIsOffered(self) -> None:
        data = self.hello(alpn=(b"h2", b"http/1.1"))
        self.assertMatches(tls(alpn=["acme-tls/1", "http/1.1"]).match(data, {}))
        self.assertMatches(tls(alpn="h2").match(data, {}))
        self.assertIs(tls(alpn="acme-tls/1").match(data, {}), NO)

    def test_alpnConditionRefusesHelloWithoutAlpn(self) -> None:
        self.assertIs(tls(alpn="h2").match(self.hello(), {}), NO)

    def test_minVersionUsesHighestOfferedVersion(self) -> None:
        data = self.hello(versions=(0x0303, 0x0304))
        self.assertMatches(tls(min_version="1.3").match(data, {}))
        self.assertIs(tls(min_version="1.3").match(self.hello(versions=(0x0303,)), {}), NO)

    def test_minVersionFallsBackToLegacyVersion(self) -> None:
        self.assertMatches(tls(min_version="1.2").match(self.hello(), {}))
        self.assertIs(tls(min_version="1.3").match(self.hello(), {}), NO)

    def test_greaseVersionsAreIgnored(self) -> None:
        hello = hello_of(self.hello(versions=(0x7A7A, 0x0304)))
        self.assertEqual(hello.versions, (0x0304,))
        self.assertEqual(hello.highest_version, 0x0304)

    def test_factsListAlpnInClientOrder(self) -> None:
        result = tls().match(self.hello(b"a.example.com", (b"http/1.1", b"h2"), (0x0304,)), {})
        self.assertEqual(
            result,
            Match(
                facts={
                    "sni": "a.example.com",
                    "alpn": ["http/1.1", "h2"],
                    "tls_version": "1.3",
                }
            ),
        )

    def test_alpnControlBytesAreEscapedInFacts(self) -> None:
        result = tls().match(self.hello(alpn=(b"\xe9\x01",)), {})
        assert isinstance(result, Match)
        self.assertEqual(result.facts["alpn"], ["\xe9\\x01"])

    def test_versionNames(self) -> None:
        self.assertEqual(
            [version_name(v) for v in (0x0300, 0x0301, 0x0302, 0x0303, 0x0304)],
            ["ssl3", "1.0", "1.1", "1.2", "1.3"],
        )


class OptionErrorTests(TestCase):
    def assertConfigError(self, key: str, problem: str, **options: Any) -> None:
        e = self.assertRaises(MatcherConfigError, TLSMatcherFactory().build, options)
        self.assertEqual(e.key, key)
        self.assertIn(problem, str(e))

    def test_unknownOption(self) -> None:
        self.assertConfigError(
            "snl", "unknown option (accepted options: alpn, min_version, no_sni, sni)", snl="x"
        )

    def test_badSniRegex(self) -> None:
        self.assertConfigError(
            "sni", "bad regex '~(': missing ), unterminated subpattern", sni="~("
        )

    def test_sniWrongType(self) -> None:
        self.assertConfigError(
            "sni", "expected a string or a list of strings, got integer 5", sni=5
        )

    def test_noSniWrongType(self) -> None:
        self.assertConfigError("no_sni", "expected true or false", no_sni="true")

    def test_alpnEmptyList(self) -> None:
        self.assertConfigError("alpn", "empty list", alpn=[])

    def test_alpnTooLong(self) -> None:
        self.assertConfigError("alpn", "longer than 255 bytes", alpn="x" * 256)

    def test_minVersionUnknown(self) -> None:
        self.assertConfigError("min_version", "unknown version '1.4'", min_version="1.4")

    def test_minVersionAsTomlFloat(self) -> None:
        self.assertConfigError("min_version", "expected a string, got float 1.2", min_version=1.2)


_OPTION_SETS: list[Mapping[str, Any]] = [
    {},
    {"sni": ["a.example.com", "*.bing.com", "~.*x.*"], "no_sni": True},
    {"alpn": ["h2"], "min_version": "1.3"},
    {"no_sni": True},
]
_MATCHERS = [TLSMatcherFactory().build(o) for o in _OPTION_SETS]
_VALID = [OBFS_HELLO, MODERN_HELLO, records(MODERN_HELLO[5:], [1, 40, 100])]


class PropertyTests(TestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b),
            mutated_openings(_VALID + list(all_vectors().values())),
        )
    )
    def test_noInputMakesMatchRaise(self, data: bytes) -> None:
        for matcher in _MATCHERS:
            self.assertIn(type(matcher.match(data, {})).__name__, {"Match", "Verdict"})

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(_VALID).flatmap(lambda d: st.tuples(st.just(d), st.integers(0, len(d) - 1)))
    )
    def test_truncatedHelloIsNeedMore(self, case: tuple[bytes, int]) -> None:
        data, cut = case
        for matcher in _MATCHERS:
            self.assertIs(matcher.match(data[:cut], {}), NEED_MORE)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(1, len(OBFS_HELLO) - 6), max_size=6))
    def test_anyRecordSplitParsesTheSame(self, cuts: list[int]) -> None:
        data = reframe(OBFS_HELLO, cuts)
        expected = hello_of(OBFS_HELLO)
        self.assertEqual(hello_of(data).extensions, expected.extensions)
        self.assertEqual(hello_of(data).sni, expected.sni)
        self.assertIs(parse_client_hello(data[:-1]), NEED_MORE)
