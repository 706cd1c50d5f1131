"""The gateway matcher: the three frontd openings, recognised early, and nothing else."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.config import matcher_factories, target_kinds
from switchyard.interfaces import NEED_MORE, NO, Match, MatchResult, OptionError
from switchyard.matchers.gateway import GatewayMatcherFactory
from switchyard.targets.gateway.crypto import Kdf
from switchyard.testing import check_opening, check_refuses
from switchyard.wire.gateway import (
    FRONTD_LINE_LIMIT,
    BinaryOpening,
    HttpOpening,
    LineOpening,
    Malformed,
    Pending,
    parse_opening,
)
from tests.openings import (
    Opening,
    all_vectors,
    feed,
    http_head_complete,
    mutated_openings,
    record_opening,
)
from tests.test_gateway_crypto import openssl_line
from tests.test_gateway_wire import README_BINARY, README_LINE, VECTOR_BLOB, http_request

gateway = GatewayMatcherFactory().build({})


def mode_of(result: MatchResult) -> str | None:
    return result.facts["gateway_mode"] if isinstance(result, Match) else None


@functools.cache
def curl_opening() -> Opening:
    """What the real curl sends with an X-Cipher-Origin header, recorded once."""
    return record_opening(
        lambda port: ["curl", "-s", "-m", "3", "-H", "X-Cipher-Origin: " + README_LINE.decode(),
                      f"http://127.0.0.1:{port}/game?x=1"],
        http_head_complete,
    )


class PluginTests(TestCase):
    def test_registeredAsAMatcherAndATargetKind(self) -> None:
        self.assertIsInstance(matcher_factories()["gateway"], GatewayMatcherFactory)
        kind = target_kinds()["gateway"]
        self.assertEqual(kind.section, "gateway")
        # Between responders (20) and TLS termination (100).
        self.assertTrue(20 < kind.order < 100)


class RecognitionTests(TestCase):
    def test_lineMatchesOnceRecognisedNotOnceComplete(self) -> None:
        data = README_LINE + b"\n"
        answers = feed(gateway, data, range(1, len(data) + 1))
        # "U2FsdGVkX1" and the 11th character that only a salted blob has.
        self.assertEqual([cut for cut, answer in answers if answer is NEED_MORE],
                         list(range(1, 11)))
        self.assertEqual(answers[-1], (11, Match(facts={"gateway_mode": "line"})))

    def test_realOpensslLinesMatch(self) -> None:
        for kdf in (Kdf.MD5, Kdf.PBKDF2):
            line = openssl_line(b"10.0.0.5:7000", b"some secret", kdf)
            self.assertEqual(mode_of(gateway.match(line + b"\n", {})), "line", kdf)

    def test_binaryMatchesAfterLengthAndSalted(self) -> None:
        answers = feed(gateway, README_BINARY, range(1, len(README_BINARY) + 1))
        self.assertEqual(answers[-1], (10, Match(facts={"gateway_mode": "binary"})))
        framed = b"\x00" + bytes([len(VECTOR_BLOB)]) + VECTOR_BLOB
        self.assertEqual(mode_of(gateway.match(framed, {})), "binary")

    def test_httpMatchesOnceTheCipherHeaderIsSeen(self) -> None:
        head = b"GET / HTTP/1.1\r\nHost: game\r\nX-Cipher-Origin: " + README_LINE + b"\r\n"
        self.assertIs(gateway.match(head[:30], {}), NEED_MORE)
        self.assertEqual(mode_of(gateway.match(head, {})), "http")

    def test_realCurlRequestMatches(self) -> None:
        data = curl_opening().data
        self.assertIn(b"X-Cipher-Origin", data)
        self.assertEqual(mode_of(gateway.match(data, {})), "http")

    def test_overlongAndBrokenOpeningsStillMatchForTheTargetToAnswer(self) -> None:
        # The target replies 400/4104 to these: a later route must not take them.
        self.assertEqual(mode_of(gateway.match(b"U2FsdGVkX1+" + b"A" * 4989 + b"\n", {})),
                         "line")
        empty = http_request(b"X-Cipher-Origin: ")
        self.assertEqual(mode_of(gateway.match(empty, {})), "http")

    def test_factsNeverCarryTheLine(self) -> None:
        result = gateway.match(README_LINE + b"\nrest", {})
        assert isinstance(result, Match)
        self.assertEqual(dict(result.facts), {"gateway_mode": "line"})


class OtherProtocolTests(TestCase):
    def test_capturedOpeningsOfOtherProtocolsAreNo(self) -> None:
        others = [data for name, data in all_vectors().items() if not name.startswith("frontd")]
        check_refuses(gateway, others)  # at every prefix, never a Match
        for data in others:
            self.assertIs(gateway.match(data, {}), NO)

    def test_readmeLineIsAwaitedThenMatched(self) -> None:
        self.assertEqual(check_opening(gateway, README_LINE[:11]).facts,
                         {"gateway_mode": "line"})

    def test_sshTlsAndPlainHttpAreNo(self) -> None:
        self.assertIs(gateway.match(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", {}), NO)
        self.assertIs(gateway.match(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", {}), NO)
        self.assertIs(gateway.match(http_request(b"Host: example.com"), {}), NO)
        self.assertIs(gateway.match(b"U2FsdGVkX1AAAA\n", {}), NO)  # no salted blob starts so
        self.assertIs(gateway.match(b"\x00\x21Salted__", {}), NO)  # not whole AES blocks

    def test_plainHttpWaitsForTheEndOfItsHead(self) -> None:
        # The header could still come: a route after this one decides then.
        self.assertIs(gateway.match(b"GET / HTTP/1.1\r\nHost: example.com\r\n", {}), NEED_MORE)


class OptionTests(TestCase):
    def test_modesNarrowWhatIsRecognised(self) -> None:
        line_only = GatewayMatcherFactory().build({"modes": ["line"]})
        self.assertEqual(mode_of(line_only.match(README_LINE + b"\n", {})), "line")
        self.assertIs(line_only.match(README_BINARY, {}), NO)
        self.assertIs(line_only.match(http_request(b"X-Cipher-Origin: " + README_LINE), {}), NO)
        http_only = GatewayMatcherFactory().build({"modes": "http"})
        self.assertIs(http_only.match(README_LINE + b"\n", {}), NO)

    def test_badOptionsAreNamed(self) -> None:
        with self.assertRaises(OptionError) as e:
            GatewayMatcherFactory().build({"modes": ["line", "udp"]})
        self.assertEqual(e.exception.key, "modes")
        self.assertIn("'udp'", e.exception.problem)
        with self.assertRaises(OptionError) as e:
            GatewayMatcherFactory().build({"secret_file": "/x"})
        self.assertEqual(e.exception.key, "secret_file")
        with self.assertRaises(OptionError):
            GatewayMatcherFactory().build({"modes": []})


_VALID = [
    README_LINE + b"\nrest",
    README_BINARY + b"rest",
    http_request(b"Host: h", b"X-Cipher-Origin: " + README_LINE) + b"body",
]
_RECOGNISED = (LineOpening, BinaryOpening, HttpOpening, Pending, Malformed)


class PropertyTests(TestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=300).map(lambda b: b"U2FsdGVkX1+" + b),
        st.binary(max_size=300).map(lambda b: b"\x00\x30Salted__" + b),
        st.binary(max_size=300).map(lambda b: b"GET / HTTP/1.1\r\nX-Cipher-Origin: " + b),
        mutated_openings(_VALID),
    ))
    def test_matchesExactlyWhatTheParserRecognises(self, data: bytes) -> None:
        result = gateway.match(data, {})
        parsed = parse_opening(data, line_limit=FRONTD_LINE_LIMIT, header_limit=64 * 1024)
        if isinstance(parsed, _RECOGNISED):
            self.assertEqual(result, Match(facts={"gateway_mode": parsed.mode.value}))
        else:
            self.assertIs(result, parsed)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_VALID), st.data())
    def test_validOpeningsNeverNoAndStayMatched(self, data: bytes, draw: st.DataObject) -> None:
        cut = draw.draw(st.integers(1, len(data)))
        answers = [gateway.match(data[:n], {}) for n in range(1, len(data) + 1)]
        self.assertNotIn(NO, answers)
        first = next(i for i, a in enumerate(answers) if isinstance(a, Match))
        if cut - 1 >= first:
            self.assertIsInstance(answers[cut - 1], Match)
