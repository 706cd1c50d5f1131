"""Words for the built-in matchers' reasons (L{IExplainingMatcher.explain}): the
phrases they share. Only C{explain} calls these, never the hot C{match}."""

from __future__ import annotations

import re
from collections.abc import Iterable

from switchyard.interfaces import NEED_MORE, Verdict
from switchyard.wire.http import MAX_METHOD, MAX_REQUEST_LINE, TCHAR
from switchyard.wire.text import printable
from switchyard.wire.tls import CONTENT_TYPE_HANDSHAKE, HANDSHAKE_CLIENT_HELLO, MAX_RECORD_LENGTH

PREVIEW_BYTES = 12
QUOTE_LENGTH = 60
# The request and header line rules of switchyard.wire.http, to name the
# line that broke them.
_REQUEST_LINE = re.compile(rb"%s{1,%d} [\x21-\x7e\x80-\xff]+ HTTP/1\.[0-9]" % (TCHAR, MAX_METHOD))
_TOKEN_CHAR = re.compile(TCHAR)
_HEADER_LINE = re.compile(rb"%s+:[\t\x20-\x7e\x80-\xff]*" % TCHAR)


def preview(data: bytes, count: int = PREVIEW_BYTES) -> str:
    """The first ``count`` bytes the way a person recognises them: quoted
    text when they are printable ASCII, else hex."""
    head = data[:count]
    more = "..." if len(data) > count else ""
    if not head:
        return "nothing"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return repr(head.decode("ascii")) + more
    return " ".join(f"{b:02x}" for b in head) + more


def quote(text: str, limit: int = QUOTE_LENGTH) -> str:
    """``text`` (already printable) quoted, cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def one_of(values: Iterable[str]) -> str:
    """``a.test, b.test``: a route's list of patterns or values, as written."""
    return ", ".join(values)


def names_wanted(patterns: tuple[str, ...]) -> str:
    """What a name condition wants: ``a.test``, ``a name matching *.a.test``,
    or ``one of a.test, b.test``."""
    if len(patterns) == 1:
        pattern = patterns[0]
        return pattern if not pattern.startswith(("*.", "~")) else f"a name matching {pattern}"
    return "one of " + one_of(patterns)


def name_refused(what: str, name: str | None, patterns: tuple[str, ...]) -> str:
    """Why a name condition says no: ``SNI 'c.test' is not one of a.test, b.test``."""
    if name is None:
        return f"no {what}, and the route wants {names_wanted(patterns)}"
    if len(patterns) == 1 and not patterns[0].startswith(("*.", "~")):
        return f"{what} {name!r} is not {patterns[0]}"
    if len(patterns) == 1:
        return f"{what} {name!r} does not match {patterns[0]}"
    return f"{what} {name!r} is not one of {one_of(patterns)}"


def hello_problem(data: bytes, verdict: Verdict) -> str:
    """Why these bytes are not (yet) a TLS ClientHello: the reason beside the
    NO or NEED_MORE of L{switchyard.wire.tls.parse_client_hello}."""
    if verdict is NEED_MORE:
        if not data:
            return "no bytes yet"
        if len(data) < 5:
            return f"TLS record header incomplete ({len(data)} of 5 bytes)"
        if len(data) < 9:
            return f"ClientHello header incomplete after {len(data)} bytes"
        announced = int.from_bytes(data[6:9], "big")
        return (f"ClientHello incomplete after {len(data)} bytes "
                f"(it announces {announced} bytes of handshake)")
    if data[0] != CONTENT_TYPE_HANDSHAKE:
        return ("not TLS: a TLS client starts with a handshake record (16), this with "
                + preview(data))
    if len(data) >= 3 and (data[1] != 3 or data[2] > 4):
        return f"record version {data[1]:02x} {data[2]:02x} is not SSL 3.0 to TLS 1.3"
    if len(data) >= 5:
        length = int.from_bytes(data[3:5], "big")
        if length == 0 or length > MAX_RECORD_LENGTH:
            return f"record length {length} is not 1 to {MAX_RECORD_LENGTH}"
    if len(data) >= 6 and data[5] != HANDSHAKE_CLIENT_HELLO:
        return f"handshake message type {data[5]} is not a ClientHello (1)"
    return "a malformed ClientHello: a length or field does not fit (RFC 8446 section 4.1.2)"


def request_problem(data: bytes, verdict: Verdict) -> str:
    """Why these bytes are not (yet) an HTTP/1.x request head: the reason beside
    the NO or NEED_MORE of L{switchyard.wire.http.parse_request_head}."""
    if verdict is NEED_MORE:
        if not data:
            return "no bytes yet"
        return f"request line incomplete after {len(data)} bytes"
    if not _TOKEN_CHAR.fullmatch(data, 0, 1):
        return f"not HTTP: a request starts with a method name, this with {preview(data)}"
    line_end = data.find(b"\r\n", 0, MAX_REQUEST_LINE)
    if line_end < 0:
        if len(data) >= MAX_REQUEST_LINE:
            return f"no request line in the first {MAX_REQUEST_LINE} bytes"
        return f"not HTTP: {preview(data)} cannot start 'METHOD TARGET HTTP/1.x'"
    line = printable(data[:line_end])
    if not _REQUEST_LINE.fullmatch(data, 0, line_end):
        return f"not HTTP/1.x: the request line {quote(line)} is not 'METHOD TARGET HTTP/1.x'"
    # The line is fine, so a header line is not: the first that fails.
    pos = line_end + 2
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            end = len(data)
        if end == pos or not _HEADER_LINE.fullmatch(data, pos, end):
            break
        pos = end + 2
    bad = printable(data[pos:end])
    return (f"request line {quote(line)} is fine, but the header line {quote(bad)} is not "
            "'name: value' (RFC 9112 section 5)")
