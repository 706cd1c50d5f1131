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

import re
from typing import Union, cast

import attr

from switchyard.interfaces import NEED_MORE, NO, Verdict
from switchyard.wire.last import LastBuffer

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

_REQUEST_LINE_PREFIX = re.compile(
    rb"%s{0,%d}|%s{1,%d} %s*|%s{1,%d} %s+ (?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?"
    % (TCHAR, MAX_METHOD, TCHAR, MAX_METHOD, _TARGET_CHAR, TCHAR, MAX_METHOD, _TARGET_CHAR)
)
# The request line and every complete, valid header line after it, in one
# match: what the match leaves unread decides whether the block is complete.
_HEAD = re.compile(
    rb"(%s{1,%d}) (%s+) HTTP/1\.([0-9])\r\n((?:%s+:%s*\r\n)*)"
    % (TCHAR, MAX_METHOD, _TARGET_CHAR, TCHAR, _VALUE_CHAR)
)
_HEADER_LINE_PREFIX = re.compile(rb"\r|%s*|%s+:%s*\r?" % (TCHAR, TCHAR, _VALUE_CHAR))
# The bytes a request can start with (a method's): a set, as the one check
# every non-HTTP opening goes through.
_FIRST_BYTES = frozenset(i for i in range(256) if re.fullmatch(TCHAR, bytes([i])))

_ABSOLUTE_FORM = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(?:[?#].*)?")
_PORT = re.compile(r"[0-9]*")
_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%\-]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
# The usual authority, a reg-name with an optional port (and userinfo), in
# one match; split_authority's steps decide everything else.
_NAME_AUTHORITY = re.compile(r"(?:.*@)?([A-Za-z0-9._~!$&'()*+,;=%\-]+)(?::[0-9]*)?", re.DOTALL)


def split_authority(authority: str) -> str | None:
    """
    The host of an RFC 3986 authority (C{Host} header or absolute-form
    target): userinfo and port dropped, IPv6 brackets removed.

    @return: the host, or C{None} if the authority is empty or malformed.
    """
    usual = _NAME_AUTHORITY.fullmatch(authority)
    if usual is not None:
        return usual.group(1)
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
        # A loop: a comprehension costs twice as much for a few fields.
        values = []
        for key, value in self.headers:
            if key == name:
                values.append(value)
        return values

    @property
    def host(self) -> str | None:
        """
        The host the request is for, without port: from an absolute-form
        target if there is one (RFC 9112 3.2.2), else from the one C{Host}
        field. C{None} when absent, empty, malformed or repeated (a request
        with two Host fields must be refused, RFC 9112 3.2).
        """
        return _request_host(self.target, self.header_values("host"))


Offer = tuple[str, str, str, Union[str, None], bool]
"""What an http route decides on: (method, path, version, host,
header_complete) as in L{RequestHead}, host C{None} until the header block
is complete. L{request_offer} gives it without building the rest."""


def _request_host(target: str, hosts: list[str]) -> str | None:
    # RequestHead.host, from the target and the values of the Host fields.
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute:
        return split_authority(absolute.group(2))
    if len(hosts) != 1:
        return None
    return split_authority(hosts[0])


def _target_path(target: str) -> str:
    if target.startswith("/"):
        # Up to the first '?' or '#'.
        return target.partition("?")[0].partition("#")[0]
    if target == "*":
        return target
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute:
        return absolute.group(3) or "/"
    return ""


def _parse(data: bytes, whole: bool) -> Union[RequestHead, Offer, Verdict]:
    # Every check runs whether or not the whole head is wanted (C{whole}),
    # so both answer NO and NEED_MORE alike; an Offer only skips building
    # what an http route never reads (the fields other than Host).
    head = _HEAD.match(data)
    if head is None or head.end(3) + 2 > MAX_REQUEST_LINE:
        # No whole request line within the limit: too early, or never.
        line_end = data.find(b"\r\n", 0, MAX_REQUEST_LINE)
        if line_end < 0 and len(data) < MAX_REQUEST_LINE and _REQUEST_LINE_PREFIX.fullmatch(data):
            return NEED_MORE
        return NO
    pos = head.end()
    body_offset: int | None = None
    if data.startswith(b"\r\n", pos):
        body_offset = pos + 2
    elif data.find(b"\r\n", pos) >= 0 or not _HEADER_LINE_PREFIX.fullmatch(data, pos):
        # A complete line _HEAD did not take is malformed; so is a partial
        # one that cannot become a header line.
        return NO
    method, target_bytes, digit, block = head.groups()
    target = target_bytes.decode("latin-1")
    # _HEAD checked every line: "name:value" CRLF, the name without ':', no
    # CR or LF inside. So the block's text splits without a second match.
    lines = block.decode("latin-1").split("\r\n")
    lines.pop()  # after the last CRLF
    if not whole:
        host = None
        if body_offset is not None:
            hosts = []
            for line in lines:
                name, _, value = line.partition(":")
                if name.lower() == "host":
                    hosts.append(value.strip(" \t"))
            host = _request_host(target, hosts)
        return (method.decode("ascii"), _target_path(target), "1." + digit.decode("ascii"),
                host, body_offset is not None)
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.lower(), value.strip(" \t")))
    # Positional, in field order: keywords cost a third of the call.
    return RequestHead(
        method.decode("ascii"),  # method
        target,  # target
        _target_path(target),  # path
        "1." + digit.decode("ascii"),  # version
        tuple(headers),  # headers
        body_offset is not None,  # header_complete
        body_offset,  # body_offset
    )


_remembered: LastBuffer[Union[RequestHead, Offer, Verdict]] = LastBuffer(_parse, NEED_MORE)


def _parse_cached(data: bytes | bytearray | memoryview,
                  whole: bool) -> Union[RequestHead, Offer, Verdict]:
    if not data:
        return NEED_MORE
    if data[0] not in _FIRST_BYTES:
        # Most non-HTTP openings (TLS, SSH binary, PROXY v2) end here,
        # without replacing what is remembered.
        return NO
    return _remembered(data, whole)


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
    # Asked for the whole head, _parse_cached never gives an Offer.
    return cast(Union[RequestHead, Verdict], _parse_cached(data, True))


def request_offer(data: bytes | bytearray | memoryview) -> Union[Offer, Verdict]:
    """
    The L{Offer} of the HTTP/1.x request head at the start of C{data}: the
    same answer as L{parse_request_head} (same NEED_MORE and NO), with only
    what a route decides on, for less work.
    """
    result = _parse_cached(data, False)
    if isinstance(result, RequestHead):  # the cache's, for another route
        host = result.host if result.header_complete else None
        return result.method, result.path, result.version, host, result.header_complete
    return result


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
