"""What the gateway answers a client, in each dialect: status codes as data.

``huangkunbin`` (huangkunbin/proxy, after funny/gateway): three ASCII bytes,
no newline, ``200`` once the backend is connected. ``frontd``
(xindong/frontd): nothing on success, four ASCII bytes on error; its two
HTTP-only errors are written as frontd writes them, as a status line.

Every failure that depends on the secret (wrong secret, bad padding, not an
address, an address outside the allow-list) has one reply, so a client
cannot tell them apart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Union

from switchyard.wire.gateway import FRONTD_LINE_LIMIT, HUANGKUNBIN_LINE_LIMIT, Fault, Mode


class Dialect(enum.Enum):
    """Which gateway's replies a listener speaks."""

    HUANGKUNBIN = "huangkunbin"
    FRONTD = "frontd"


class Outcome(enum.Enum):
    """How a handshake ended, once the opening was complete."""

    CONNECTED = "connected"
    """The backend accepted the connection."""

    UNDECRYPTABLE = "undecryptable"
    """Not base64, not a salted blob, no secret fits, or not an address."""

    NOT_ALLOWED = "not_allowed"
    """A good address outside the allow-list (answered as UNDECRYPTABLE)."""

    CONNECT_FAILED = "connect_failed"
    """The backend refused, or an attempt failed other than by timing out."""

    CONNECT_TIMEOUT = "connect_timeout"
    """Every attempt timed out."""


Reason = Union[Outcome, Fault]


def _frontd_http(code: bytes) -> bytes:
    # frontd's writeErrCode(..., true): a bare LF and no empty line, as sent.
    return b"HTTP/1.1 " + code + b" Error\nConnection: Close"


REPLIES: Mapping[Dialect, Mapping[Reason, bytes]] = MappingProxyType({
    Dialect.HUANGKUNBIN: MappingProxyType({
        Outcome.CONNECTED: b"200",
        Fault.LINE_TOO_LONG: b"400",
        Fault.LINE_UNFINISHED: b"400",
        Fault.BINARY_SHORT: b"400",
        Fault.HTTP_LINE_TOO_LONG: b"400",
        Fault.HTTP_UNFINISHED: b"400",
        Fault.HTTP_HEADER_TOO_LARGE: b"400",
        Fault.HTTP_BAD_CIPHER_HEADER: b"401",
        Outcome.UNDECRYPTABLE: b"401",
        Outcome.NOT_ALLOWED: b"401",
        Outcome.CONNECT_FAILED: b"502",
        Outcome.CONNECT_TIMEOUT: b"504",
    }),
    Dialect.FRONTD: MappingProxyType({
        Outcome.CONNECTED: b"",
        Fault.LINE_TOO_LONG: b"4104",
        Fault.LINE_UNFINISHED: b"4104",
        Fault.BINARY_SHORT: b"4109",
        Fault.HTTP_LINE_TOO_LONG: _frontd_http(b"4107"),
        Fault.HTTP_UNFINISHED: _frontd_http(b"4107"),
        Fault.HTTP_HEADER_TOO_LARGE: _frontd_http(b"4108"),
        Fault.HTTP_BAD_CIPHER_HEADER: _frontd_http(b"4108"),
        Outcome.UNDECRYPTABLE: b"4106",
        Outcome.NOT_ALLOWED: b"4106",
        Outcome.CONNECT_FAILED: b"4102",
        Outcome.CONNECT_TIMEOUT: b"4101",
    }),
})

DEFAULT_LINE_LIMITS: Mapping[Dialect, int] = MappingProxyType({
    Dialect.HUANGKUNBIN: HUANGKUNBIN_LINE_LIMIT,
    Dialect.FRONTD: FRONTD_LINE_LIMIT,
})

# frontd puts the address it saw first in X-Forwarded-For; funny/gateway
# (huangkunbin's parent, which had the HTTP mode) appends it.
FORWARDED_CLIENT_FIRST: Mapping[Dialect, bool] = MappingProxyType({
    Dialect.HUANGKUNBIN: False,
    Dialect.FRONTD: True,
})


def reply(dialect: Dialect, reason: Reason, mode: Mode) -> bytes:
    """
    The bytes to write to the client for C{reason}: before relaying on
    success, before closing otherwise. In HTTP mode success is silent in
    both dialects: the backend's HTTP response is the answer.
    """
    if reason is Outcome.CONNECTED and mode is Mode.HTTP:
        return b""
    return REPLIES[dialect][reason]
