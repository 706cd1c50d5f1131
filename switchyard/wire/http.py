"""The HTTP/1.x request head: a pure parser shared by matchers and responders.

A request line (RFC 9112 section 3) is an RFC 9110 token of at most 32 bytes
as method, one space, a request-target of visible bytes, one space,
``HTTP/1.`` and a digit, CRLF; the whole line at most 8 KiB. While the bytes
so far are a prefix of such a line the answer is NEED_MORE, and NO as soon as
they cannot be. Header lines are checked the same way as they arrive:
``name: value`` with a token name and no whitespace before the colon (RFC
9112 section 5.1), no obsolete line folding.
"""

from __future__ import annotations

import functools
import re
from typing import Union

import attr

from switchyard.interfaces import NEED_MORE, NO, Verdict

MAX_REQUEST_LINE = 8 * 1024
# RFC 9110 sets no limit, but the longest registered method has 17 bytes;
# a cap lets the matcher say NO early to a long run of letters and digits
# instead of holding later routes up until 8 KiB have arrived.
MAX_METHOD = 32
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# Visible ASCII plus obs-text: clients do send raw UTF-8 in paths.
_TARGET_CHAR = rb"[\x21-\x7e\x80-\xff]"
_VALUE_CHAR = rb"[\t\x20-\x7e\x80-\xff]"

_REQUEST_LINE = re.compile(
    rb"(%s{1,%d}) (%s+) HTTP/1\.([0-9])\r\n" % (TCHAR, MAX_METHOD, _TARGET_CHAR)
)
_REQUEST_LINE_PREFIX = re.compile(
    rb"%s{0,%d}|%s{1,%d} %s*|%s{1,%d} %s+ (?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?"
    % (TCHAR, MAX_METHOD, TCHAR, MAX_METHOD, _TARGET_CHAR, TCHAR, MAX_METHOD, _TARGET_CHAR)
)
_HEADER_LINE = re.compile(rb"(%s+):(%s*)" % (TCHAR, _VALUE_CHAR))
_HEADER_LINE_PREFIX = re.compile(rb"\r|%s*|%s+:%s*\r?" % (TCHAR, TCHAR, _VALUE_CHAR))
_FIRST_BYTE = re.compile(TCHAR)

_ABSOLUTE_FORM = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(?:[?#].*)?")
_PORT = re.compile(r"[0-9]*")
_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%\-]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")


def split_authority(authority: str) -> str | None:
    """
    The host of an RFC 3986 authority (C{Host} header or absolute-form
    target): userinfo and port dropped, IPv6 brackets removed.

    @return: the host, or C{None} if the authority is empty or malformed.
    """
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or not _IPV6.fullmatch(host):
            return None
        if port and not (port.startswith(":") and _PORT.fullmatch(port[1:])):
            return None
        return host
    host, _, port = authority.partition(":")
    if not _REG_NAME.fullmatch(host) or not _PORT.fullmatch(port):
        return None
    return host


@attr.s(frozen=True, slots=True, auto_attribs=True)
class RequestHead:
    """
    An HTTP/1.x request line and the header fields received so far.

    @ivar method: as sent (case matters, RFC 9110 9.1).
    @ivar target: the request-target, decoded as Latin-1.
    @ivar path: the target's path without query or fragment, not
        percent-decoded; the path of an absolute-form target (C{"/"} if it
        has none); C{"*"} for asterisk-form; C{""} for authority-form.
    @ivar version: C{"1.0"} or C{"1.1"} (any C{"1.d"}).
    @ivar headers: complete header fields in order, as (lowercased name,
        value without surrounding whitespace), values decoded as Latin-1.
    @ivar header_complete: the empty line ending the header block arrived.
    @ivar body_offset: when complete, the offset in the opening of the first
        byte after the header block; else C{None}.
    """

    method: str
    target: str
    path: str
    version: str
    headers: tuple[tuple[str, str], ...]
    header_complete: bool
    body_offset: int | None

    def header(self, name: str) -> str | None:
        """The value of the first field called C{name} (any case), or C{None}."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """The values of every field called C{name} (any case), in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def host(self) -> str | None:
        """
        The host the request is for, without port: from an absolute-form
        target if there is one (RFC 9112 3.2.2), else from the one C{Host}
        field. C{None} when absent, empty, malformed or repeated (a request
        with two Host fields must be refused, RFC 9112 3.2).
        """
        absolute = _ABSOLUTE_FORM.fullmatch(self.target)
        if absolute:
            return split_authority(absolute.group(2))
        hosts = self.header_values("host")
        if len(hosts) != 1:
            return None
        return split_authority(hosts[0])


def _target_path(target: str) -> str:
    if target.startswith("/"):
        return re.split(r"[?#]", target, maxsplit=1)[0]
    if target == "*":
        return target
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute:
        return absolute.group(3) or "/"
    return ""


@functools.lru_cache(maxsize=64)
def _parse_cached(data: bytes) -> Union[RequestHead, Verdict]:
    # Like the TLS parse, shared by every http route asked about a buffer.
    line_end = data.find(b"\r\n", 0, MAX_REQUEST_LINE)
    if line_end < 0:
        if len(data) < MAX_REQUEST_LINE and _REQUEST_LINE_PREFIX.fullmatch(data):
            return NEED_MORE
        return NO
    line = _REQUEST_LINE.fullmatch(data, 0, line_end + 2)
    if line is None:
        return NO

    headers = []
    body_offset: int | None = None
    pos = line_end + 2
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            if not _HEADER_LINE_PREFIX.fullmatch(data, pos):
                return NO
            break
        if end == pos:
            body_offset = end + 2
            break
        field = _HEADER_LINE.fullmatch(data, pos, end)
        if field is None:
            return NO
        headers.append(
            (field.group(1).decode("ascii").lower(), field.group(2).decode("latin-1").strip(" \t"))
        )
        pos = end + 2

    target = line.group(2).decode("latin-1")
    return RequestHead(
        method=line.group(1).decode("ascii"),
        target=target,
        path=_target_path(target),
        version="1." + line.group(3).decode("ascii"),
        headers=tuple(headers),
        header_complete=body_offset is not None,
        body_offset=body_offset,
    )


def parse_request_head(data: bytes | bytearray | memoryview) -> Union[RequestHead, Verdict]:
    """
    Parse the HTTP/1.x request head at the start of C{data}.

    @param data: every byte the client sent so far.
    @return: a L{RequestHead} once the request line is complete (check
        C{header_complete} before trusting C{headers} to be all of them);
        L{NEED_MORE} while C{data} is a valid prefix of a request line;
        L{NO} when the line, or any header line so far, is malformed.
        Never raises.
    """
    if not data:
        return NEED_MORE
    if not _FIRST_BYTE.fullmatch(data, 0, 1):
        # Most non-HTTP openings (TLS, SSH binary, PROXY v2) end here,
        # without a cache entry.
        return NO
    return _parse_cached(bytes(data))


def header_tokens(head: RequestHead, name: str) -> frozenset[str]:
    """
    The comma-separated tokens of every C{name} field, lowercased: RFC 9110
    section 5.3 lets a list be split over several fields, and C{Upgrade} and
    C{Connection} compare case-insensitively.
    """
    return frozenset(
        token.strip(" \t").lower()
        for value in head.header_values(name)
        for token in value.split(",")
    ) - {""}


def has_body(head: RequestHead) -> bool:
    """
    Whether the request announces a body: a C{Transfer-Encoding}, or a
    C{Content-Length} other than C{0} (a malformed one counts as a body: no
    genuine WebSocket client sends any).
    """
    if head.header_values("transfer-encoding"):
        return True
    return any(value != "0" for value in head.header_values("content-length"))
