"""The gateway openings parser (switchyard.wire.gateway) and the gateway's reply tables."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.interfaces import NEED_MORE, NO, Verdict
from switchyard.targets.gateway.crypto import Kdf
from switchyard.targets.gateway.replies import (
    DEFAULT_LINE_LIMITS,
    REPLIES,
    Dialect,
    Outcome,
    Reason,
    reply,
)
from switchyard.wire.gateway import (
    FRONTD_LINE_LIMIT,
    HTTP_HEADER_LIMIT,
    HTTP_LINE_LIMIT,
    BinaryOpening,
    Fault,
    HttpOpening,
    LineOpening,
    Malformed,
    Mode,
    Pending,
    parse_opening,
    rewrite_http_head,
)
from switchyard.wire.http import RequestHead, parse_request_head
from tests.openings import all_vectors, http_head_complete, mutated_openings, record_opening, vector
from tests.test_gateway_crypto import openssl_line

# The huangkunbin/proxy and frontd READMEs' example line, and the binary
# opening frontd's README gives for the same ciphertext (0x00, length, blob).
README_LINE = b"U2FsdGVkX19KIJ9OQJKT/yHGMrS+5SsBAAjetomptQ0="
README_BINARY = bytes.fromhex(
    "0020"
    "53616c7465645f5f4a209f4e409293ff21c632b4bee52b010008deb689a9b50d"
)
VECTOR_BLOB = vector("frontd_vector_salted.bin")
VECTOR_LINE = b"U2FsdGVkX18BAgMEBQYHCI/PBBO12Cic7GbyXJX+KRE="


def http_request(*headers: bytes, target: bytes = b"/") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


class LineOpeningTests(TestCase):
    def test_readmeLineIsALineOpening(self) -> None:
        self.assertEqual(
            parse_opening(README_LINE + b"\n"), LineOpening(line=README_LINE, end=45)
        )

    def test_bytesAfterTheNewlineAreTheClientsOwn(self) -> None:
        data = README_LINE + b"\nHELLO backend"
        opening = parse_opening(data)
        assert isinstance(opening, LineOpening)
        self.assertEqual(data[opening.end :], b"HELLO backend")
        self.assertEqual(opening.mode, Mode.LINE)

    def test_crlfIsAcceptedAndStripped(self) -> None:
        self.assertEqual(
            parse_opening(README_LINE + b"\r\nx"), LineOpening(line=README_LINE, end=46)
        )

    def test_realOpensslLinesAreRecognised(self) -> None:
        for port in (1, 80, 62863, 65535):
            line = openssl_line(b"127.0.0.1:%d" % port, b"s3cret")
            self.assertEqual(parse_opening(line + b"\n"), LineOpening(line, len(line) + 1))
            pbkdf2 = openssl_line(b"10.0.0.1:%d" % port, b"s3cret", Kdf.PBKDF2)
            self.assertEqual(parse_opening(pbkdf2 + b"\n"), LineOpening(pbkdf2, len(pbkdf2) + 1))

    def test_everyPrefixIsNeedMoreThenPending(self) -> None:
        data = README_LINE + b"\n"
        for cut in range(len(data)):
            expected = NEED_MORE if cut <= 10 else Pending(Mode.LINE)
            self.assertEqual(parse_opening(data[:cut]), expected, cut)

    def test_eleventhCharacterMustComeFromTheSaltedHeader(self) -> None:
        for char in b"89+/":
            self.assertEqual(parse_opening(b"U2FsdGVkX1" + bytes([char])), Pending(Mode.LINE))
        for char in b"ABCabc01=\n":
            self.assertIs(parse_opening(b"U2FsdGVkX1" + bytes([char]) + b"xx\n"), NO)

    def test_otherLinesAreNo(self) -> None:
        for data in (b"hello\n", b"U2FsdGVkX2\n", b"Salted__\n", b"u2FsdGVkX19K\n"):
            self.assertIs(parse_opening(data), NO, data)

    def test_huangkunbinLimitIs64CharactersAndTheNewline(self) -> None:
        line = README_LINE + b"A" * (64 - len(README_LINE))
        self.assertEqual(parse_opening(line + b"\n"), LineOpening(line, 65))
        self.assertEqual(
            parse_opening(line + b"A\n"), Malformed(Mode.LINE, Fault.LINE_TOO_LONG)
        )
        self.assertEqual(parse_opening(line + b"A"), Malformed(Mode.LINE, Fault.LINE_TOO_LONG))
        self.assertEqual(parse_opening(line), Pending(Mode.LINE))

    def test_lineLimitIsConfigurable(self) -> None:
        line = README_LINE + b"A" * (FRONTD_LINE_LIMIT - 1 - len(README_LINE))
        self.assertEqual(
            parse_opening(line + b"\n", line_limit=FRONTD_LINE_LIMIT),
            LineOpening(line, FRONTD_LINE_LIMIT),
        )
        self.assertEqual(
            parse_opening(line + b"A", line_limit=FRONTD_LINE_LIMIT),
            Malformed(Mode.LINE, Fault.LINE_TOO_LONG),
        )
        self.assertEqual(
            parse_opening(README_LINE + b"\n", line_limit=20),
            Malformed(Mode.LINE, Fault.LINE_TOO_LONG),
        )

    def test_endOfStreamBeforeTheNewlineIsUnfinished(self) -> None:
        self.assertEqual(
            parse_opening(README_LINE, eof=True), Malformed(Mode.LINE, Fault.LINE_UNFINISHED)
        )
        self.assertIs(parse_opening(b"U2FsdG", eof=True), NO)
        self.assertEqual(
            parse_opening(README_LINE + b"\n", eof=True), LineOpening(README_LINE, 45)
        )


class BinaryOpeningTests(TestCase):
    def test_frontdReadmeBinaryExample(self) -> None:
        opening = parse_opening(README_BINARY + b"after")
        self.assertEqual(opening, BinaryOpening(blob=README_BINARY[2:], end=34))
        assert isinstance(opening, BinaryOpening)
        self.assertEqual(opening.mode, Mode.BINARY)

    def test_capturedVectorFramed(self) -> None:
        data = b"\x00" + bytes([len(VECTOR_BLOB)]) + VECTOR_BLOB
        self.assertEqual(parse_opening(data), BinaryOpening(VECTOR_BLOB, len(data)))

    def test_prefixesAreNeedMoreUntilSaltedThenPending(self) -> None:
        data = README_BINARY
        for cut in range(len(data)):
            expected = NEED_MORE if cut < 10 else Pending(Mode.BINARY)
            self.assertEqual(parse_opening(data[:cut]), expected, cut)

    def test_lengthsNoSaltedCiphertextCanHaveAreNo(self) -> None:
        for length in (0, 1, 16, 31, 33, 47, 241, 255):
            data = b"\x00" + bytes([length]) + VECTOR_BLOB
            self.assertIs(parse_opening(data), NO, length)
        for length in range(32, 241, 16):
            data = b"\x00" + bytes([length]) + VECTOR_BLOB
            self.assertIsInstance(parse_opening(data), (Pending, BinaryOpening))

    def test_blobMustStartWithSalted(self) -> None:
        self.assertIs(parse_opening(b"\x00\x20Salty"), NO)
        self.assertIs(parse_opening(b"\x00\x20" + bytes(32)), NO)

    def test_endOfStreamInsideTheBlobIsShort(self) -> None:
        data = README_BINARY
        self.assertEqual(
            parse_opening(data[:-1], eof=True), Malformed(Mode.BINARY, Fault.BINARY_SHORT)
        )
        self.assertIs(parse_opening(data[:5], eof=True), NO)


class HttpOpeningTests(TestCase):
    def test_requestWithCipherHeader(self) -> None:
        data = http_request(b"Host: game101.xd.com", b"X-Cipher-Origin: " + README_LINE,
                            b"Accept: */*") + b"body"
        opening = parse_opening(data)
        assert isinstance(opening, HttpOpening)
        self.assertEqual(opening.cipher, README_LINE)
        self.assertEqual(data[opening.end :], b"body")
        self.assertEqual(opening.head.method, "GET")
        self.assertEqual(opening.mode, Mode.HTTP)

    def test_realCurlRequest(self) -> None:
        recorded = record_opening(
            lambda port: ["curl", "-s", "-m", "3", "-H", f"X-Cipher-Origin: {VECTOR_LINE.decode()}",
                          f"http://127.0.0.1:{port}/play?x=1"],
            http_head_complete,
        )
        opening = parse_opening(recorded.data)
        assert isinstance(opening, HttpOpening), opening
        self.assertEqual(opening.cipher, VECTOR_LINE)
        self.assertEqual(opening.end, len(recorded.data))
        for cut in range(len(recorded.data)):
            self.assertIn(parse_opening(recorded.data[:cut]), (NEED_MORE, Pending(Mode.HTTP)))

    def test_headerNameIsCaseInsensitive(self) -> None:
        opening = parse_opening(http_request(b"x-CIPHER-origin:\t" + README_LINE + b" "))
        assert isinstance(opening, HttpOpening)
        self.assertEqual(opening.cipher, README_LINE)

    def test_plainHttpIsNotTheGateway(self) -> None:
        self.assertIs(parse_opening(http_request(b"Host: example.com")), NO)
        self.assertIs(parse_opening(b"GET / HTTP/1.1\r\nHost: example.com\r\n"), NEED_MORE)
        self.assertIs(parse_opening(b"GET / HTTP/1.1\r\nHost: example.com\r\n", eof=True), NO)

    def test_pendingOnceTheCipherHeaderIsSeen(self) -> None:
        self.assertEqual(
            parse_opening(b"GET / HTTP/1.1\r\nX-Cipher-Origin: " + README_LINE + b"\r\nHo"),
            Pending(Mode.HTTP),
        )

    def test_emptyOrRepeatedCipherHeaderIsBad(self) -> None:
        for headers in ((b"X-Cipher-Origin:",), (b"X-Cipher-Origin:   ",),
                        (b"X-Cipher-Origin: " + README_LINE, b"X-Cipher-Origin: " + VECTOR_LINE)):
            self.assertEqual(
                parse_opening(http_request(*headers)),
                Malformed(Mode.HTTP, Fault.HTTP_BAD_CIPHER_HEADER),
            )

    def test_headerBlockLimit(self) -> None:
        cipher = b"X-Cipher-Origin: " + README_LINE
        filler = b"X-Filler: " + b"a" * 1000
        data = http_request(cipher, *[filler] * 8)
        self.assertLess(len(data), HTTP_HEADER_LIMIT)
        self.assertIsInstance(parse_opening(data), HttpOpening)
        self.assertEqual(
            parse_opening(data, header_limit=len(data) - 1),
            Malformed(Mode.HTTP, Fault.HTTP_HEADER_TOO_LARGE),
        )
        self.assertIsInstance(parse_opening(data, header_limit=len(data)), HttpOpening)
        unfinished = data[:-2] + filler * 10
        self.assertEqual(
            parse_opening(unfinished), Malformed(Mode.HTTP, Fault.HTTP_HEADER_TOO_LARGE)
        )

    def test_headerLineLimit(self) -> None:
        cipher = b"X-Cipher-Origin: " + README_LINE
        fits = b"X-Long: " + b"a" * (HTTP_LINE_LIMIT - 10)
        self.assertIsInstance(parse_opening(http_request(cipher, fits)), HttpOpening)
        self.assertEqual(
            parse_opening(http_request(cipher, fits + b"a")),
            Malformed(Mode.HTTP, Fault.HTTP_LINE_TOO_LONG),
        )
        self.assertEqual(
            parse_opening(http_request(cipher)[:-2] + fits + b"aa"),
            Malformed(Mode.HTTP, Fault.HTTP_LINE_TOO_LONG),
        )

    def test_endOfStreamInsideTheHeadIsUnfinished(self) -> None:
        data = http_request(b"X-Cipher-Origin: " + README_LINE)
        self.assertEqual(
            parse_opening(data[:-2], eof=True), Malformed(Mode.HTTP, Fault.HTTP_UNFINISHED)
        )


class RewriteTests(TestCase):
    def rewrite(self, data: bytes, client_first: bool, client: str = "192.0.2.7") -> bytes:
        opening = parse_opening(data)
        assert isinstance(opening, HttpOpening)
        return rewrite_http_head(data, opening, client, client_first=client_first)

    def test_cipherHeaderRemovedAndForwardedForAdded(self) -> None:
        data = http_request(b"Host: game", b"X-Cipher-Origin: " + README_LINE, b"Accept: */*")
        self.assertEqual(
            self.rewrite(data, client_first=True),
            http_request(b"Host: game", b"Accept: */*", b"X-Forwarded-For: 192.0.2.7"),
        )

    def test_forwardedForOrderFollowsTheDialect(self) -> None:
        data = http_request(b"X-Forwarded-For: 10.1.1.1", b"X-Cipher-Origin: " + README_LINE,
                            b"x-forwarded-for:  10.2.2.2 ", b"Host: game")
        self.assertEqual(
            self.rewrite(data, client_first=True),
            http_request(b"Host: game", b"X-Forwarded-For: 192.0.2.7, 10.1.1.1, 10.2.2.2"),
        )
        self.assertEqual(
            self.rewrite(data, client_first=False),
            http_request(b"Host: game", b"X-Forwarded-For: 10.1.1.1, 10.2.2.2, 192.0.2.7"),
        )

    def test_ipv6ClientWithoutBrackets(self) -> None:
        data = http_request(b"X-Cipher-Origin: " + README_LINE)
        self.assertEqual(
            self.rewrite(data, client_first=False, client="2001:db8::1"),
            http_request(b"X-Forwarded-For: 2001:db8::1"),
        )

    def test_otherLinesKeptByteForByte(self) -> None:
        data = http_request(b"Cookie: a=\xe9;  b", b"X-Cipher-Origin: " + README_LINE,
                            target=b"/p?q=%20")
        rewritten = self.rewrite(data, client_first=True)
        self.assertTrue(rewritten.startswith(b"GET /p?q=%20 HTTP/1.1\r\nCookie: a=\xe9;  b\r\n"))
        head = parse_request_head(rewritten)
        assert isinstance(head, RequestHead)
        self.assertTrue(head.header_complete)
        self.assertEqual(head.body_offset, len(rewritten))
        self.assertIsNone(head.header("x-cipher-origin"))


class OtherProtocolTests(TestCase):
    def test_capturedOpeningsOfOtherProtocolsAreNo(self) -> None:
        for name, data in all_vectors().items():
            if name.startswith("frontd"):
                continue
            self.assertIn(parse_opening(data), (NO,), name)

    def test_sshBannerAndTlsAreNo(self) -> None:
        self.assertIs(parse_opening(b"SSH-2.0-OpenSSH_9.2\r\n"), NO)
        self.assertIs(parse_opening(b"\x16\x03\x01\x02\x00\x01"), NO)
        self.assertIs(parse_opening(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), NO)

    def test_capturedVectorIsBinaryNotALine(self) -> None:
        # The raw blob starts with "Salted__", which is neither form.
        self.assertIs(parse_opening(VECTOR_BLOB), NO)
        self.assertEqual(parse_opening(VECTOR_LINE + b"\n"), LineOpening(VECTOR_LINE, 45))


_VALID = [
    README_LINE + b"\nrest",
    README_BINARY,
    http_request(b"Host: h", b"X-Cipher-Origin: " + README_LINE),
]
_KINDS = (LineOpening, BinaryOpening, HttpOpening, Pending, Malformed, Verdict)


class PropertyTests(TestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=600),
            st.binary(max_size=300).map(lambda b: b"U2FsdGVkX19" + b),
            st.binary(max_size=300).map(lambda b: b"\x00\x30Salted__" + b),
            st.binary(max_size=300).map(lambda b: b"GET / HTTP/1.1\r\nX-Cipher-Origin: " + b),
            mutated_openings(_VALID),
        ),
        st.integers(-5, 5000),
        st.integers(-5, 10000),
        st.booleans(),
    )
    def test_noInputMakesParseRaise(self, data: bytes, line_limit: int, header_limit: int,
                                    eof: bool) -> None:
        result = parse_opening(data, line_limit=line_limit, header_limit=header_limit, eof=eof)
        self.assertIsInstance(result, _KINDS)
        if isinstance(result, (LineOpening, BinaryOpening, HttpOpening)):
            self.assertLessEqual(result.end, len(data))
        if eof:
            self.assertNotIsInstance(result, Pending)
            self.assertIsNot(result, NEED_MORE)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_VALID).flatmap(lambda d: st.tuples(st.just(d), st.integers(0, 60))))
    def test_validOpeningsAreNeverNoOnTheWay(self, case: tuple[bytes, int]) -> None:
        data, cut = case
        self.assertIsNot(parse_opening(data[:cut]), NO)

    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from(_VALID), st.binary(max_size=200))
    def test_trailingBytesDoNotChangeTheOpening(self, data: bytes, extra: bytes) -> None:
        opening = parse_opening(data)
        self.assertEqual(parse_opening(data + extra), opening)


class ReplyTests(TestCase):
    def test_everyReasonHasAReplyInBothDialects(self) -> None:
        for dialect in Dialect:
            self.assertEqual(set(REPLIES[dialect]), set(Outcome) | set(Fault))

    def test_huangkunbinRepliesAreThreeDigits(self) -> None:
        for reason, code in REPLIES[Dialect.HUANGKUNBIN].items():
            self.assertRegex(code.decode(), r"\A[245]0[0-9]\Z", reason)
        self.assertEqual(reply(Dialect.HUANGKUNBIN, Outcome.CONNECTED, Mode.LINE), b"200")
        self.assertEqual(reply(Dialect.HUANGKUNBIN, Fault.LINE_TOO_LONG, Mode.LINE), b"400")
        self.assertEqual(reply(Dialect.HUANGKUNBIN, Outcome.UNDECRYPTABLE, Mode.LINE), b"401")
        self.assertEqual(reply(Dialect.HUANGKUNBIN, Outcome.CONNECT_FAILED, Mode.LINE), b"502")
        self.assertEqual(reply(Dialect.HUANGKUNBIN, Outcome.CONNECT_TIMEOUT, Mode.LINE), b"504")

    def test_frontdIsSilentOnSuccessAndFourDigitsOnError(self) -> None:
        self.assertEqual(reply(Dialect.FRONTD, Outcome.CONNECTED, Mode.LINE), b"")
        expected: dict[Reason, str] = {
            Outcome.CONNECT_TIMEOUT: "4101",
            Outcome.CONNECT_FAILED: "4102",
            Fault.LINE_TOO_LONG: "4104",
            Fault.LINE_UNFINISHED: "4104",
            Outcome.UNDECRYPTABLE: "4106",
            Fault.HTTP_UNFINISHED: "4107",
            Fault.HTTP_HEADER_TOO_LARGE: "4108",
            Fault.BINARY_SHORT: "4109",
        }
        for reason, code in expected.items():
            sent = reply(Dialect.FRONTD, reason, Mode.LINE)
            self.assertEqual(re.findall(rb"41[0-9][0-9]", sent), [code.encode()], reason)

    def test_frontdHttpErrorsAreStatusLines(self) -> None:
        self.assertEqual(reply(Dialect.FRONTD, Fault.HTTP_BAD_CIPHER_HEADER, Mode.HTTP),
                         b"HTTP/1.1 4108 Error\nConnection: Close")

    def test_httpSuccessIsSilentInBothDialects(self) -> None:
        for dialect in Dialect:
            self.assertEqual(reply(dialect, Outcome.CONNECTED, Mode.HTTP), b"")

    def test_secretDependentFailuresShareOneReply(self) -> None:
        for dialect in Dialect:
            self.assertEqual(REPLIES[dialect][Outcome.NOT_ALLOWED],
                             REPLIES[dialect][Outcome.UNDECRYPTABLE])

    def test_defaultLineLimits(self) -> None:
        self.assertEqual(DEFAULT_LINE_LIMITS[Dialect.HUANGKUNBIN], 65)
        self.assertEqual(DEFAULT_LINE_LIMITS[Dialect.FRONTD], 4096)
