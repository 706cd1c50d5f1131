"""Built-in targets answered by switchyard itself: echo, reject, redirect."""

from __future__ import annotations

import http
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attr
from twisted.internet import error
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.interfaces import (
    NEED_MORE,
    ICompileContext,
    IConnection,
    ITarget,
    ITargetKind,
    OptionError,
)
from switchyard.options import Options
from switchyard.wire.http import RequestHead, parse_request_head, split_authority

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# The request head the redirect waits for, at most: the http matcher's own
# request-line limit plus room for headers.
MAX_REQUEST_HEAD = 16 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
# Long request targets would make long access-log lines; the Location sent
# to the client is never cut.
_MAX_DETAIL = 200


def http_response(status: int, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """
    A complete bodiless HTTP/1.1 response that announces the connection's
    end: status line, C{headers}, C{Connection: close}, C{Content-Length: 0}.
    Header values are written as Latin-1, so a request target decoded that
    way goes back byte for byte.
    """
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""  # RFC 9112 4: the reason phrase may be empty
    lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in headers),
             "Connection: close", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode("latin-1")


BAD_REQUEST = http_response(400)


class _Loopback:
    """The echo target's peer: what the client sends comes straight back."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.client = connection.transport
        self.lost = False

    def write(self, data: bytes) -> None:
        self.connection.peer_data(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.connection.peer_data(b"".join(data))

    def loseWriteConnection(self) -> None:
        self.connection.peer_eof()

    def loseConnection(self) -> None:
        if not self.lost:
            self.lost = True
            self.connection.peer_lost(Failure(error.ConnectionDone()))

    abortConnection = loseConnection

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # The client's transport feeds itself: its own write buffer
        # pauses its reading.
        self.client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.client.unregisterProducer()


@implementer(ITarget)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class EchoTarget:
    """Send every byte back to the client: a smoke test for the whole path."""

    name: str = "echo"

    def describe(self) -> list[str]:
        return []

    def attach(self, connection: IConnection) -> None:
        connection.set_server(self.name)
        connection.splice(_Loopback(connection))


class _RequestHeadReader:
    """
    The redirect target's peer while the request head is still arriving: it
    keeps what the switch relays and answers once the head is complete, the
    client stops sending, or L{MAX_REQUEST_HEAD} bytes are in.
    """

    def __init__(self, connection: IConnection, target: RedirectTarget) -> None:
        self.connection = connection
        self.target = target
        self.data = b""
        self.answered = False
        self.lost = False

    def write(self, data: bytes) -> None:
        if self.answered:
            return
        self.data += data
        if not _head_incomplete(self.data) or len(self.data) >= MAX_REQUEST_HEAD:
            self._answer()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        # The client half-closed: what is here is all there will be.
        self._answer()

    def loseConnection(self) -> None:
        if not self.lost:
            self.lost = True
            self.connection.peer_lost(Failure(error.ConnectionDone()))

    abortConnection = loseConnection

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # At most MAX_REQUEST_HEAD bytes are kept, then the connection ends:
        # nothing to push back on.
        pass

    def unregisterProducer(self) -> None:
        pass

    def _answer(self) -> None:
        if not self.answered:
            self.answered = True
            self.target.answer(self.connection, self.data)


def _head_incomplete(data: bytes) -> bool:
    """Whether C{data} is a valid beginning of a request head that has not ended yet."""
    head = parse_request_head(data)
    return head is NEED_MORE or (isinstance(head, RequestHead) and not head.header_complete)


@implementer(ITarget)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class RedirectTarget:
    """
    Answer an HTTP request with a redirect to the same host and target under
    another scheme (C{https} by default), like Envoy's C{https_redirect}.
    The request's port is dropped; C{port} sets the Location's, C{host}
    replaces the request's host (Envoy's C{host_redirect}).
    """

    name: str = "redirect"
    status: int = 301
    scheme: str = "https"
    port: int | None = None
    host: str | None = None

    def describe(self) -> list[str]:
        return []

    def attach(self, connection: IConnection) -> None:
        connection.set_server(self.name)
        data = connection.buffered
        if _head_incomplete(data) and len(data) < MAX_REQUEST_HEAD:
            # The route matched on the request line (http without a host
            # condition): the rest of the head is still on its way.
            connection.splice(_RequestHeadReader(connection, self))
        else:
            self.answer(connection, data)

    def answer(self, connection: IConnection, data: bytes) -> None:
        """Answer the request whose head starts C{data}, and close."""
        head = parse_request_head(data)
        if not isinstance(head, RequestHead) or not head.header_complete:
            connection.close("bad_request", "not a complete HTTP request head",
                             reply=BAD_REQUEST)
            return
        location = self.location(head)
        if location is None:
            connection.close("bad_request", "no valid host or path to redirect to",
                             reply=BAD_REQUEST)
            return
        connection.close("redirected", f"{self.status} {location}"[:_MAX_DETAIL],
                         reply=http_response(self.status, [("Location", location)]))

    def location(self, head: RequestHead) -> str | None:
        """
        Where to send the client: this target's scheme and port, the
        configured host or else the request's (from an absolute-form target,
        else C{Host}), the request's path and query. C{None} without a valid
        host, or for a target that is not a path (C{CONNECT host:port},
        C{OPTIONS *}).
        """
        host = self.host or head.host
        if host is None:
            return None
        if ":" in host:
            host = f"[{host}]"  # IPv6 literal
        if head.target.startswith("/"):
            path = head.target.partition("#")[0]
        elif head.path.startswith("/"):
            # Absolute form, "http://host/p?q": the path and query parts.
            query = urlsplit(head.target).query
            path = head.path + (f"?{query}" if query else "")
        else:
            return None
        port = ""
        if self.port is not None and self.port != _DEFAULT_PORTS.get(self.scheme):
            port = f":{self.port}"
        return f"{self.scheme}://{host}{port}{path}"


@implementer(ITarget)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class RejectTarget:
    """Close the connection at once, after an optional fixed reply."""

    name: str = "reject"
    reply: bytes = b""

    def describe(self) -> list[str]:
        return []

    def attach(self, connection: IConnection) -> None:
        connection.set_server(self.name)
        connection.close("rejected", reply=self.reply)


def _compile_echo(name: str, options: Options, given: frozenset[str]) -> ITarget:
    return EchoTarget(name=name)


def _compile_reject(name: str, options: Options, given: frozenset[str]) -> ITarget:
    reply = options.text("reply")
    if "status" not in given:
        return RejectTarget(name=name, reply=(reply or "").encode("utf-8"))
    if reply is not None:
        raise OptionError("status", "give either status or reply, not both")
    status = options.integer("status", 403, minimum=400, maximum=599)
    return RejectTarget(name=name, reply=http_response(status))


def _compile_redirect(name: str, options: Options, given: frozenset[str]) -> ITarget:
    status = options.integer("status", 301, minimum=100, maximum=599)
    if status not in REDIRECT_STATUSES:
        listed = ", ".join(map(str, REDIRECT_STATUSES))
        raise OptionError("status", f"must be one of {listed}, got {status}")
    scheme = options.text("scheme") or "https"
    if not _SCHEME.fullmatch(scheme):
        raise OptionError("scheme", f"{scheme!r} is not a lowercase URI scheme such as 'https'")
    port = None
    if "port" in given:
        port = options.integer("port", 443, minimum=1, maximum=65535)
    host = options.text("host")
    if host is not None:
        # A host alone: a name, an IPv4 address or a bracketed IPv6 one.
        bare = split_authority(host)
        if bare is None or host not in (bare, f"[{bare}]") or ("[" in host) != (":" in bare):
            raise OptionError("host", f"{host!r} is not a host name or [IPv6] address "
                                      "(set the port with the port option)")
        host = bare
    return RedirectTarget(name=name, status=status, scheme=scheme, port=port, host=host)


# kind -> (accepted options besides "kind", compiler(name, options, keys
# given)), in the order the kinds were added: error messages list them so.
RESPONDER_KINDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "echo": ((), _compile_echo),
    "reject": (("reply", "status"), _compile_reject),
    "redirect": (("status", "scheme", "port", "host"), _compile_redirect),
}

# Usable as `to = "echo"`, `to = "reject"`, `to = "redirect"` without any
# [responder] table.
BUILTIN_RESPONDERS: dict[str, ITarget] = {
    "echo": EchoTarget(), "reject": RejectTarget(), "redirect": RedirectTarget()}


def compile_responder(name: str, raw: Mapping[str, Any]) -> ITarget:
    """A [responder.NAME] table (``kind = "..."`` and its options) as a target."""
    kind = raw.get("kind")
    if kind not in RESPONDER_KINDS:
        known = ", ".join(RESPONDER_KINDS)
        raise OptionError("kind", f"must be one of {known}, got {kind!r}")
    accepted, compile_kind = RESPONDER_KINDS[kind]
    table = {k: v for k, v in raw.items() if k != "kind"}
    return compile_kind(name, Options(table, accepted), frozenset(table))


@implementer(ITargetKind)
class ResponderKind:
    """``[responder.NAME]``: a built-in responder with options of its own."""

    section = "responder"
    description = "answered by switchyard itself: echo, reject, redirect"
    order = 20
    builtins: Mapping[str, ITarget] = BUILTIN_RESPONDERS

    def compile(self, name: str, table: Mapping[str, Any], context: ICompileContext) -> ITarget:
        return compile_responder(name, table)
