"""The ``http`` and ``h2c`` matchers: an HTTP/1.x request head, or the HTTP/2 preface.

``http`` wants a real request line (RFC 9112 section 3): an RFC 9110 token
of at most 32 bytes as method, one space, a request-target of visible bytes,
one space, ``HTTP/1.`` and a digit, CRLF; the whole line at most 8 KiB. While
the bytes so far are a prefix of such a line the answer is NEED_MORE, and NO
as soon as they cannot be. Header lines are checked the same way as they
arrive: ``name: value`` with a token name and no whitespace before the colon
(RFC 9112 section 5.1), no obsolete line folding. The matcher only waits for
the end of the header block when a condition (``host``) needs a header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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
)
from switchyard.matchers.reasons import name_refused, one_of, preview, quote, request_problem
from switchyard.names import NamePredicate
from switchyard.options import Options
from switchyard.wire.http import (
    H2_PREFACE,
    MAX_METHOD,
    TCHAR,
    RequestHead,
    parse_request_head,
    request_offer,
)


@implementer(IExplainingMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class HTTPMatcher:
    """A compiled C{http} route condition."""

    host: NamePredicate | None = None
    paths: tuple[str, ...] | None = None
    methods: frozenset[str] | None = None
    host_patterns: tuple[str, ...] = attr.ib(default=(), eq=False)  # as written, for reasons

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        # Only what the conditions and facts need: not a whole RequestHead.
        offer = request_offer(data)
        if not isinstance(offer, tuple):
            return offer
        method, path, version, host, complete = offer
        if self.methods is not None and method not in self.methods:
            return NO
        if self.paths is not None and not path.startswith(self.paths):
            return NO
        if self.host is not None:
            if not complete:
                return NEED_MORE
            if host is None or not self.host(host):
                return NO
        found: dict[str, Any] = {"method": method, "version": version}
        if path:
            found["path"] = path
        if host is not None:
            found["host"] = host
        return Match(found)

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        head = parse_request_head(data)
        if not isinstance(head, RequestHead):
            return request_problem(data, head)
        line = quote(f"{head.method} {head.target} HTTP/{head.version}")
        if self.methods is not None and head.method not in self.methods:
            return f"method {head.method!r} is not one of {one_of(sorted(self.methods))}"
        if self.paths is not None and not head.path.startswith(self.paths):
            if len(self.paths) == 1:
                return f"path {quote(head.path)} does not start with {self.paths[0]}"
            return f"path {quote(head.path)} starts with none of {one_of(self.paths)}"
        if self.host is not None:
            if not head.header_complete:
                return (f"header block incomplete after {len(data)} bytes (the host condition "
                        "waits for its end)")
            host = head.host
            if host is None or not self.host(host):
                return name_refused("Host", host, self.host_patterns) + (
                    " (it is missing, repeated or malformed)" if host is None else "")
        host = head.host if head.header_complete else None
        return f"request {line}" + (f", Host {host!r}" if host is not None else "")


@implementer(IMatcherFactory)
class HTTPMatcherFactory:
    """Builds L{HTTPMatcher}s from route options."""

    name = "http"
    description = "HTTP/1.x request; conditions on host, path prefix and method"

    def build(self, options: Mapping[str, Any]) -> HTTPMatcher:
        opts = Options(options, ("host", "path", "method"))
        paths = opts.texts("path")
        for path in paths or ():
            if not path.startswith("/"):
                raise MatcherConfigError("path", f"{path!r} must start with '/'")
        methods = opts.texts("method")
        for method in methods or ():
            # Methods are case-sensitive, so a lowercase one could never
            # match a real client: refuse it rather than never route.
            token = re.fullmatch(TCHAR + rb"{1,%d}" % MAX_METHOD, method.encode("utf-8"))
            if token is None or method != method.upper():
                raise MatcherConfigError(
                    "method", f"{method!r} is not an uppercase method name such as 'GET'"
                )
        return HTTPMatcher(
            host=opts.names("host"),
            host_patterns=opts.texts("host") or (),
            paths=paths,
            methods=frozenset(methods) if methods is not None else None,
        )


@implementer(IExplainingMatcher)
class H2CMatcher:
    """Matches the HTTP/2 prior-knowledge connection preface."""

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        if data.startswith(H2_PREFACE):
            return Match(facts={"version": "2"})
        if H2_PREFACE.startswith(data):
            return NEED_MORE
        return NO

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        if data.startswith(H2_PREFACE):
            return "the HTTP/2 prior-knowledge preface"
        if H2_PREFACE.startswith(data):
            return f"{len(data)} of the {len(H2_PREFACE)} bytes of the HTTP/2 preface so far"
        return f"not the HTTP/2 preface 'PRI * HTTP/2.0...': starts with {preview(data)}"


@implementer(IMatcherFactory)
class H2CMatcherFactory:
    """Builds the L{H2CMatcher}; it takes no options."""

    name = "h2c"
    description = "HTTP/2 over cleartext with prior knowledge (the PRI * preface)"

    def build(self, options: Mapping[str, Any]) -> H2CMatcher:
        Options(options, ())
        return H2CMatcher()
