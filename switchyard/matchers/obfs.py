"""The ``obfs-http`` and ``obfs-tls`` matchers: simple-obfs's imitations of WebSocket and TLS.

simple-obfs (the shadowsocks plugin ``obfs-local``) hides its first payload
in an opening that looks like something else:

- ``obfs=http``: ``GET / HTTP/1.1`` with ``Upgrade: websocket`` and
  ``Connection: Upgrade``, but with ``Content-Length: N`` and the N payload
  bytes right behind the header block, and no ``Sec-WebSocket-Version``.
  A genuine WebSocket client must send the version and waits for ``101``
  before sending anything else (RFC 6455 section 4.1).
- ``obfs=tls``: a ClientHello from a fixed template (32-byte session id,
  28 cipher suites, one compression method) whose *first* extension is
  session_ticket (0x0023) carrying the payload, then server_name with the
  obfs host. obfs-server does not parse the hello: it reads the ticket at
  byte 138, so every client it can decode has that layout. Browsers and
  TLS libraries offer other suite counts and put GREASE or server_name
  first; a client resuming with a ticket puts it further down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr
from zope.interface import implementer

from switchyard.interfaces import NO, IExplainingMatcher, IMatcherFactory, Match, MatchResult
from switchyard.matchers.reasons import hello_problem, name_refused, quote
from switchyard.matchers.websocket import (
    host_problem,
    match_host,
    upgrade_problem,
    upgrade_request,
)
from switchyard.names import NamePredicate
from switchyard.options import Options
from switchyard.wire.http import RequestHead, has_body
from switchyard.wire.tls import ClientHello, parse_client_hello

EXT_SESSION_TICKET = 0x0023
# The template's fixed part, which puts the first extension at byte 138
# (simple-obfs obfs_tls.c, struct tls_client_hello).
OBFS_SESSION_ID_LENGTH = 32
OBFS_CIPHER_SUITES = 28
OBFS_COMPRESSION_METHODS = 1


@implementer(IExplainingMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class ObfsHTTPMatcher:
    """A compiled C{obfs-http} route condition."""

    host: NamePredicate | None = None
    host_patterns: tuple[str, ...] = attr.ib(default=(), eq=False)  # as written, for reasons

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        head = upgrade_request(data)
        if not isinstance(head, RequestHead):
            return head
        # The reasons this cannot be a genuine client, for the access log.
        signs = []
        if has_body(head):
            signs.append("body")
        if not head.header("sec-websocket-version"):
            signs.append("no_version")
        if not signs:
            return NO
        return match_host(head, self.host, {"path": head.path, "obfs": signs})

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        head = upgrade_problem(data)
        if not isinstance(head, RequestHead):
            return head
        body, version = has_body(head), head.header("sec-websocket-version")
        if not body and version:
            return (f"a genuine WebSocket upgrade (version {quote(version)}, no body): "
                    "not simple-obfs")
        problem = host_problem(head, self.host, self.host_patterns)
        if problem is not None:
            return problem
        signs = [*(["a body"] if body else []), *([] if version else ["no version"])]
        host = f", Host {head.host!r}" if head.host is not None else ""
        return f"simple-obfs's WebSocket imitation: {' and '.join(signs)}{host}"


@implementer(IMatcherFactory)
class ObfsHTTPMatcherFactory:
    """Builds L{ObfsHTTPMatcher}s from route options."""

    name = "obfs-http"
    description = "simple-obfs obfs=http: a WebSocket upgrade with a body or no version"

    def build(self, options: Mapping[str, Any]) -> ObfsHTTPMatcher:
        opts = Options(options, ("host",))
        return ObfsHTTPMatcher(host=opts.names("host"), host_patterns=opts.texts("host") or ())


@implementer(IExplainingMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class ObfsTLSMatcher:
    """A compiled C{obfs-tls} route condition."""

    sni: NamePredicate | None = None
    sni_patterns: tuple[str, ...] = attr.ib(default=(), eq=False)  # as written, for reasons

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        hello = parse_client_hello(data)
        if not isinstance(hello, ClientHello):
            return hello
        if (not hello.extensions
                or len(hello.session_id) != OBFS_SESSION_ID_LENGTH
                or len(hello.cipher_suites) != OBFS_CIPHER_SUITES
                or len(hello.compression_methods) != OBFS_COMPRESSION_METHODS):
            return NO
        first_type, ticket = hello.extensions[0]
        if first_type != EXT_SESSION_TICKET or not ticket:
            return NO
        if self.sni is not None and (hello.sni is None or not self.sni(hello.sni)):
            return NO
        return Match(facts={"sni": hello.sni, "ticket_length": len(ticket)})

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        hello = parse_client_hello(data)
        if not isinstance(hello, ClientHello):
            return hello_problem(data, hello)
        template = "not simple-obfs's fixed ClientHello: "
        if len(hello.session_id) != OBFS_SESSION_ID_LENGTH:
            return template + (f"a session id of {len(hello.session_id)} bytes "
                               f"(it sends {OBFS_SESSION_ID_LENGTH})")
        if len(hello.cipher_suites) != OBFS_CIPHER_SUITES:
            return template + (f"{len(hello.cipher_suites)} cipher suites "
                               f"(it sends {OBFS_CIPHER_SUITES})")
        if len(hello.compression_methods) != OBFS_COMPRESSION_METHODS:
            return template + (f"{len(hello.compression_methods)} compression methods "
                               f"(it sends {OBFS_COMPRESSION_METHODS})")
        if not hello.extensions:
            return template + "no extensions (it leads with a session ticket)"
        first_type, ticket = hello.extensions[0]
        if first_type != EXT_SESSION_TICKET:
            return template + (f"the first extension is 0x{first_type:04x}, not the session "
                               "ticket (0x0023)")
        if not ticket:
            return template + "its leading session ticket is empty"
        name = f"SNI {hello.sni!r}" if hello.sni is not None else "no SNI"
        if self.sni is not None and (hello.sni is None or not self.sni(hello.sni)):
            return name_refused("SNI", hello.sni, self.sni_patterns)
        return f"simple-obfs's fixed ClientHello, a session ticket of {len(ticket)} bytes, {name}"


@implementer(IMatcherFactory)
class ObfsTLSMatcherFactory:
    """Builds L{ObfsTLSMatcher}s from route options."""

    name = "obfs-tls"
    description = "simple-obfs obfs=tls: its fixed ClientHello, led by a session ticket with data"

    def build(self, options: Mapping[str, Any]) -> ObfsTLSMatcher:
        opts = Options(options, ("sni",))
        return ObfsTLSMatcher(sni=opts.names("sni"), sni_patterns=opts.texts("sni") or ())
