"""A third-party switchyard matcher plugin: SOCKS5 clients (RFC 1928).

A SOCKS5 client opens with a greeting and then waits for the server:

    +-----+----------+----------+
    | VER | NMETHODS | METHODS  |
    +-----+----------+----------+
    |  5  |  1..255  | NMETHODS |
    +-----+----------+----------+

Put this file in a twisted/plugins/ folder (never add an __init__.py there)
and name it in a route:  match = "socks5".
"""

from collections.abc import Mapping
from typing import Any

from zope.interface import implementer

from switchyard.interfaces import NEED_MORE, NO, IMatcher, IMatcherFactory, Match, MatchResult
from switchyard.matchers import Options

NO_AUTH = 0x00


@implementer(IMatcher)
class Socks5Matcher:
    def __init__(self, require_no_auth: bool) -> None:
        self.require_no_auth = require_no_auth

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        if data[:1] not in (b"", b"\x05"):
            return NO  # not version 5
        if len(data) < 2:
            return NEED_MORE  # VER, or nothing yet
        end = 2 + data[1]
        if end == 2:
            return NO  # NMETHODS must be at least 1
        if len(data) < end:
            return NEED_MORE  # some METHODS still to come
        if len(data) > end:
            return NO  # a client waits for our reply: extra bytes mean not SOCKS5
        methods = list(data[2:end])
        if self.require_no_auth and NO_AUTH not in methods:
            return NO
        return Match(facts={"socks_methods": methods})


@implementer(IMatcherFactory)
class Socks5MatcherFactory:
    name = "socks5"
    description = "SOCKS5 client greeting (RFC 1928)"

    def build(self, options: Mapping[str, Any]) -> Socks5Matcher:
        # Options rejects unknown keys with MatcherConfigError and checks types.
        opts = Options(options, ("require_no_auth",))
        return Socks5Matcher(require_no_auth=opts.flag("require_no_auth"))


# Twisted's plugin finder picks up module-level objects providing IPlugin.
socks5 = Socks5MatcherFactory()
