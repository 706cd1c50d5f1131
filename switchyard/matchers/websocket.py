"""The ``websocket`` matcher: a genuine WebSocket opening handshake (RFC 6455 section 4.1).

A genuine client sends an HTTP/1.1 ``GET`` whose ``Upgrade`` field names
``websocket``, whose ``Connection`` field lists ``Upgrade`` (among others:
Firefox sends ``keep-alive, Upgrade``), with ``Sec-WebSocket-Version``
(mandatory) and no body, then waits for ``101 Switching Protocols``.
simple-obfs's ``obfs=http`` imitation breaks the last two rules (it sends a
body and no version): those openings are left to ``obfs-http``
(L{switchyard.matchers.obfs}), so the two matchers never claim the same
connection, whatever their order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import attr
from zope.interface import implementer

from switchyard.interfaces import (
    NEED_MORE,
    NO,
    IMatcher,
    IMatcherFactory,
    Match,
    MatcherConfigError,
    MatchResult,
    Verdict,
)
from switchyard.names import NamePredicate
from switchyard.options import Options
from switchyard.wire.http import RequestHead, has_body, header_tokens, parse_request_head

PathPredicate = Callable[[str], bool]


def upgrade_request(
    data: bytes, path: PathPredicate | None = None
) -> Union[RequestHead, Verdict]:
    """
    The request head of a C{GET} asking to upgrade to C{websocket}.

    @param data: every byte the client sent so far.
    @param path: a condition on the request's path, checked as soon as the
        request line is in, so a wrong path is L{NO} without waiting for the
        headers.
    @return: the L{RequestHead}, complete, when the method is C{GET}, the
        version HTTP/1.1 or later (RFC 6455 4.1) and C{websocket} is among
        the C{Upgrade} tokens; L{NEED_MORE} until the header block has
        ended; L{NO} as soon as any of that fails. Never raises.
    """
    head = parse_request_head(data)
    if not isinstance(head, RequestHead):
        return head
    if head.method != "GET" or head.version == "1.0":
        return NO
    if path is not None and not path(head.path):
        return NO
    if not head.header_complete:
        # A later field may still add an Upgrade token or announce a body.
        return NEED_MORE
    if "websocket" not in header_tokens(head, "upgrade"):
        return NO
    return head


def match_host(head: RequestHead, host: NamePredicate | None,
               facts: dict[str, Any]) -> MatchResult:
    """Apply a route's host condition; a Match with the host (if any) first in its facts."""
    name = head.host
    if host is not None and (name is None or not host(name)):
        return NO
    return Match(facts=facts if name is None else {"host": name, **facts})


def compile_path_condition(
    exact: tuple[str, ...] | None, prefixes: tuple[str, ...] | None
) -> PathPredicate | None:
    """
    A predicate on paths from the C{path} (exact) and C{path_prefix} options;
    a path passes when it equals one of C{exact} or starts with one of
    C{prefixes}. C{None} when neither option is given.

    @raise MatcherConfigError: a path does not start with C{/}.
    """
    for key, paths in (("path", exact), ("path_prefix", prefixes)):
        for path in paths or ():
            if not path.startswith("/"):
                raise MatcherConfigError(key, f"{path!r} must start with '/'")
    if exact is None and prefixes is None:
        return None
    exact_set = frozenset(exact or ())
    starts = prefixes or ()
    return lambda path: path in exact_set or path.startswith(starts)


@implementer(IMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class WebSocketMatcher:
    """A compiled C{websocket} route condition."""

    host: NamePredicate | None = None
    path: PathPredicate | None = None

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        head = upgrade_request(data, self.path)
        if not isinstance(head, RequestHead):
            return head
        version = head.header("sec-websocket-version")
        if not version or has_body(head) or "upgrade" not in header_tokens(head, "connection"):
            return NO
        return match_host(head, self.host, {"path": head.path, "ws_version": version})


@implementer(IMatcherFactory)
class WebSocketMatcherFactory:
    """Builds L{WebSocketMatcher}s from route options."""

    name = "websocket"
    description = "Genuine WebSocket upgrade (RFC 6455); conditions on host and path"

    def build(self, options: Mapping[str, Any]) -> WebSocketMatcher:
        opts = Options(options, ("host", "path", "path_prefix"))
        return WebSocketMatcher(
            host=opts.names("host"),
            path=compile_path_condition(opts.texts("path"), opts.texts("path_prefix")),
        )
