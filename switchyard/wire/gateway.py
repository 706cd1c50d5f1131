"""The frontd gateway openings: a cipher line, a binary blob, or HTTP with X-Cipher-Origin.

A client of xindong/frontd or huangkunbin/proxy starts its connection with
the backend address, encrypted by ``openssl enc -aes-256-cbc`` (so the
ciphertext starts with ``Salted__`` and an 8-byte salt), in one of three
forms:

- line: the base64 of the ciphertext and ``\\n`` (``\\r\\n`` is accepted).
  Every such line starts with ``U2FsdGVkX1`` (the base64 of ``Salted__``),
  and its 11th character is one of ``8 9 + /`` (the last 4 bits of ``_`` and
  the first 2 of the salt). The line, newline included, must fit in
  ``line_limit`` bytes: huangkunbin reads 65 (64 characters and the
  newline), frontd 4096 (its bufio buffer).
- binary: ``0x00``, one length byte ``LEN``, then ``LEN`` bytes of
  ciphertext. Only lengths a salted AES-CBC ciphertext can have (32 to 240,
  multiples of 16) whose blob starts with ``Salted__`` are recognised.
- http: an HTTP/1.x request (as L{parse_request_head} accepts it) with one
  ``X-Cipher-Origin`` header holding the base64 line. The request is
  forwarded without that header and with an ``X-Forwarded-For``
  (L{rewrite_http_head}). The header block must fit in ``header_limit``
  bytes (frontd's ``MAX_HTTP_HEADER_SIZE``, 8192 by default) and each of
  its lines in 4096 (frontd's bufio buffer).

L{parse_opening} is pure and never raises. It says NO as soon as the bytes
cannot be one of these openings, NEED_MORE while they could be but are not
recognised yet, L{Pending} once recognised but incomplete, L{Malformed} when
recognised but unable to complete (too long, or ended early when ``eof``),
and the parsed opening when complete.
"""

from __future__ import annotations

import enum
from typing import Union

import attr

from switchyard.interfaces import NEED_MORE, NO, Verdict
from switchyard.wire.http import RequestHead, parse_request_head

SALTED = b"Salted__"
SALTED_BASE64 = b"U2FsdGVkX1"
# The 11th base64 character carries the low 4 bits of "_" (1111) and the
# top 2 bits of the first salt byte: index 60 to 63.
_SALTED_BASE64_11TH = b"89+/"
CIPHER_HEADER = "x-cipher-origin"
FORWARDED_FOR_HEADER = "x-forwarded-for"

HUANGKUNBIN_LINE_LIMIT = 65
FRONTD_LINE_LIMIT = 4096
HTTP_HEADER_LIMIT = 8192
HTTP_LINE_LIMIT = 4096

# Salt header (16) plus at least one AES block, and at most what one length
# byte can carry, rounded down to whole blocks.
MIN_BLOB = 32
MAX_BLOB = 240
_BLOCK = 16


class Mode(enum.Enum):
    """Which of the three openings the client used."""

    LINE = "line"
    BINARY = "binary"
    HTTP = "http"


class Fault(enum.Enum):
    """Why a recognised opening cannot be completed."""

    LINE_TOO_LONG = "line_too_long"
    """No newline within ``line_limit`` bytes."""

    LINE_UNFINISHED = "line_unfinished"
    """The client stopped sending before the newline."""

    BINARY_SHORT = "binary_short"
    """The client stopped sending before ``LEN`` bytes of ciphertext."""

    HTTP_LINE_TOO_LONG = "http_line_too_long"
    """A line of the request head is longer than 4096 bytes."""

    HTTP_UNFINISHED = "http_unfinished"
    """The client stopped sending before the end of the header block."""

    HTTP_HEADER_TOO_LARGE = "http_header_too_large"
    """The header block is longer than ``header_limit`` bytes."""

    HTTP_BAD_CIPHER_HEADER = "http_bad_cipher_header"
    """``X-Cipher-Origin`` is empty or repeated."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class LineOpening:
    """
    A complete cipher line.

    @ivar line: the line without its ``\\n`` (or ``\\r\\n``): base64 text,
        still to be decoded (it may not be valid base64).
    @ivar end: the offset of the first byte after the newline: what follows
        is the client's own data, for the backend.
    """

    line: bytes
    end: int

    @property
    def mode(self) -> Mode:
        return Mode.LINE


@attr.s(frozen=True, slots=True, auto_attribs=True)
class BinaryOpening:
    """
    A complete binary opening.

    @ivar blob: the ciphertext (``Salted__``, salt, AES-CBC blocks).
    @ivar end: the offset of the first byte after it (2 + its length).
    """

    blob: bytes
    end: int

    @property
    def mode(self) -> Mode:
        return Mode.BINARY


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HttpOpening:
    """
    A complete HTTP request head carrying ``X-Cipher-Origin``.

    @ivar head: the parsed request head (complete).
    @ivar cipher: the header's value: base64 text, still to be decoded.
    @ivar end: the offset of the first byte after the header block (after
        its empty line): the request body or the next request follows.
    """

    head: RequestHead
    cipher: bytes
    end: int

    @property
    def mode(self) -> Mode:
        return Mode.HTTP


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Pending:
    """Recognised as a gateway opening in ``mode``, but not complete yet."""

    mode: Mode


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Malformed:
    """Recognised as a gateway opening in ``mode``, but it cannot complete."""

    mode: Mode
    fault: Fault


Opening = Union[LineOpening, BinaryOpening, HttpOpening]
ParseResult = Union[Opening, Pending, Malformed, Verdict]


def parse_opening(
    data: bytes | bytearray | memoryview,
    *,
    line_limit: int = HUANGKUNBIN_LINE_LIMIT,
    header_limit: int = HTTP_HEADER_LIMIT,
    eof: bool = False,
) -> ParseResult:
    """
    Recognise and parse a gateway opening at the start of C{data}.

    @param data: every byte the client sent so far.
    @param line_limit: the longest cipher line accepted, newline included.
    @param header_limit: the longest HTTP header block accepted, request
        line and final empty line included.
    @param eof: the client will send nothing more: what would be NEED_MORE
        is NO, and what would be L{Pending} is L{Malformed}.
    @return: an L{Opening} when complete; L{Pending} or L{Malformed} once
        recognised; L{NEED_MORE} or L{NO} before. Never raises.
    """
    data = bytes(data)
    if not data:
        return _undecided(eof)
    if data[0] == 0:
        return _binary(data, eof)
    if data[0] == SALTED_BASE64[0]:
        line = _line(data, line_limit, eof)
        if line is not NO:
            return line
    return _http(data, header_limit, eof)


def _undecided(eof: bool) -> Verdict:
    return NO if eof else NEED_MORE


def _line(data: bytes, line_limit: int, eof: bool) -> ParseResult:
    if len(data) <= len(SALTED_BASE64):
        return _undecided(eof) if SALTED_BASE64.startswith(data) else NO
    if not data.startswith(SALTED_BASE64) or data[10] not in _SALTED_BASE64_11TH:
        return NO
    newline = data.find(b"\n", 0, max(line_limit, 0))
    if newline >= 0:
        line = data[:newline]
        if line.endswith(b"\r"):
            line = line[:-1]
        return LineOpening(line=line, end=newline + 1)
    if len(data) >= line_limit:
        return Malformed(Mode.LINE, Fault.LINE_TOO_LONG)
    if eof:
        return Malformed(Mode.LINE, Fault.LINE_UNFINISHED)
    return Pending(Mode.LINE)


def _binary(data: bytes, eof: bool) -> ParseResult:
    if len(data) < 2:
        return _undecided(eof)
    length = data[1]
    if length < MIN_BLOB or length % _BLOCK:
        return NO
    salted = data[2 : 2 + len(SALTED)]
    if not SALTED.startswith(salted):
        return NO
    if len(salted) < len(SALTED):
        return _undecided(eof)
    end = 2 + length
    if len(data) >= end:
        return BinaryOpening(blob=data[2:end], end=end)
    if eof:
        return Malformed(Mode.BINARY, Fault.BINARY_SHORT)
    return Pending(Mode.BINARY)


def _longest_line(data: bytes, end: int) -> int:
    """
    The length of the longest line in C{data[:end]}, line end included; an
    unfinished last line counts one more byte, the least its end will take.
    """
    longest = 0
    pos = 0
    while pos < end:
        found = data.find(b"\r\n", pos, end)
        length = end - pos + 1 if found < 0 else found + 2 - pos
        longest = max(longest, length)
        pos += length
    return longest


def _http(data: bytes, header_limit: int, eof: bool) -> ParseResult:
    # One byte past the limit is enough to tell "too large" from "fits",
    # and keeps the parse bounded whatever the caller has buffered.
    window = data[: max(header_limit, 0) + 1]
    head = parse_request_head(window)
    if not isinstance(head, RequestHead):
        return NO if eof else head
    ciphers = head.header_values(CIPHER_HEADER)
    if not ciphers:
        if head.header_complete or len(window) > header_limit:
            return NO
        return _undecided(eof)
    if head.body_offset is not None:
        end = head.body_offset
        if end > header_limit:
            return Malformed(Mode.HTTP, Fault.HTTP_HEADER_TOO_LARGE)
        if _longest_line(window, end) > HTTP_LINE_LIMIT:
            return Malformed(Mode.HTTP, Fault.HTTP_LINE_TOO_LONG)
        if len(ciphers) != 1 or not ciphers[0]:
            return Malformed(Mode.HTTP, Fault.HTTP_BAD_CIPHER_HEADER)
        return HttpOpening(head=head, cipher=ciphers[0].encode("latin-1"), end=end)
    if len(window) > header_limit:
        return Malformed(Mode.HTTP, Fault.HTTP_HEADER_TOO_LARGE)
    if _longest_line(window, len(window)) > HTTP_LINE_LIMIT:
        return Malformed(Mode.HTTP, Fault.HTTP_LINE_TOO_LONG)
    if eof:
        return Malformed(Mode.HTTP, Fault.HTTP_UNFINISHED)
    return Pending(Mode.HTTP)


def rewrite_http_head(
    data: bytes, opening: HttpOpening, client_ip: str, *, client_first: bool
) -> bytes:
    """
    The request head to send to the backend in place of C{data[:opening.end]}.

    ``X-Cipher-Origin`` is removed (the backend has no use for it, and the
    line must not travel further). Every ``X-Forwarded-For`` field is folded
    into one, added last in the header block, with C{client_ip} (without
    brackets) either first (frontd's order: what the gateway saw, then what
    the client claimed) or last (the usual order, and funny/gateway's).
    Other lines are kept byte for byte, in order.

    @param data: the opening the client sent (at least C{opening.end} bytes).
    @param opening: what L{parse_opening} returned for C{data}.
    @param client_ip: the client's address as text (IPv4 or IPv6).
    """
    lines = data[: opening.end].split(b"\r\n")
    # The head ends with CRLF CRLF: the split leaves two empty items.
    request_line, fields = lines[0], lines[1:-2]
    kept = []
    forwarded = []
    for field in fields:
        name, _, value = field.partition(b":")
        lowered = name.lower()
        if lowered == CIPHER_HEADER.encode("ascii"):
            continue
        if lowered == FORWARDED_FOR_HEADER.encode("ascii"):
            forwarded.append(value.strip(b" \t"))
            continue
        kept.append(field)
    client = client_ip.encode("ascii", "replace")
    chain = [client, *forwarded] if client_first else [*forwarded, client]
    kept.append(b"X-Forwarded-For: " + b", ".join(v for v in chain if v))
    return b"\r\n".join([request_line, *kept]) + b"\r\n\r\n"
