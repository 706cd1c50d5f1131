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
    IExplainingMatcher,
    IMatcherFactory,
    Match,
    MatcherConfigError,
    MatchResult,
    Verdict,
)
from switchyard.matchers.reasons import name_refused, one_of, quote, request_problem
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


def upgrade_problem(data: bytes, path: PathPredicate | None = None,
                    paths: str = "") -> RequestHead | str:
    """
    Why L{upgrade_request} does not (yet) give a request head, in words; the
    head when it does. C{paths} says in words what C{path} wants.
    """
    head = parse_request_head(data)
    if not isinstance(head, RequestHead):
        return request_problem(data, head)
    if head.method != "GET":
        return f"method {head.method!r}: a WebSocket upgrade is a GET"
    if head.version == "1.0":
        return "HTTP/1.0: a WebSocket upgrade needs HTTP/1.1"
    if path is not None and not path(head.path):
        return f"path {quote(head.path)} is not {paths}"
    if not head.header_complete:
        return f"header block incomplete after {len(data)} bytes"
    upgrade = header_tokens(head, "upgrade")
    if "websocket" not in upgrade:
        return ("no Upgrade field: a plain request" if not upgrade else
                f"Upgrade asks for {one_of(sorted(upgrade))}, not websocket")
    return head


def host_problem(head: RequestHead, host: NamePredicate | None,
                 patterns: tuple[str, ...]) -> str | None:
    """Why L{match_host} says no, in words; None when it does not."""
    name = head.host
    if host is None or (name is not None and host(name)):
        return None
    return name_refused("Host", name, patterns)


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


@implementer(IExplainingMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class WebSocketMatcher:
    """A compiled C{websocket} route condition."""

    host: NamePredicate | None = None
    path: PathPredicate | None = None
    # As written, for reasons.
    host_patterns: tuple[str, ...] = attr.ib(default=(), eq=False)
    paths: str = attr.ib(default="", eq=False)

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        head = upgrade_request(data, self.path)
        if not isinstance(head, RequestHead):
            return head
        version = head.header("sec-websocket-version")
        if not version or has_body(head) or "upgrade" not in header_tokens(head, "connection"):
            return NO
        return match_host(head, self.host, {"path": head.path, "ws_version": version})

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        head = upgrade_problem(data, self.path, self.paths)
        if not isinstance(head, RequestHead):
            return head
        version = head.header("sec-websocket-version")
        if not version:
            return ("no Sec-WebSocket-Version: not a genuine client (simple-obfs's imitation "
                    "sends none)")
        if has_body(head):
            return "announces a body: a genuine client sends none (simple-obfs's imitation does)"
        if "upgrade" not in header_tokens(head, "connection"):
            return "the Connection field does not list Upgrade"
        problem = host_problem(head, self.host, self.host_patterns)
        if problem is not None:
            return problem
        host = f", Host {head.host!r}" if head.host is not None else ""
        return f"WebSocket upgrade of {quote(head.path)}, version {quote(version)}{host}"


@implementer(IMatcherFactory)
class WebSocketMatcherFactory:
    """Builds L{WebSocketMatcher}s from route options."""

    name = "websocket"
    description = "Genuine WebSocket upgrade (RFC 6455); conditions on host and path"

    def build(self, options: Mapping[str, Any]) -> WebSocketMatcher:
        opts = Options(options, ("host", "path", "path_prefix"))
        exact, prefixes = opts.texts("path"), opts.texts("path_prefix")
        wanted = [*(exact or ()), *(f"{prefix}..." for prefix in prefixes or ())]
        return WebSocketMatcher(
            host=opts.names("host"),
            path=compile_path_condition(exact, prefixes),
            host_patterns=opts.texts("host") or (),
            paths=wanted[0] if len(wanted) == 1 else "one of " + one_of(wanted),
        )
