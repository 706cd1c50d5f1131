"""A third-party switchyard matcher plugin: SOCKS5 clients (RFC 1928).

A SOCKS5 client opens with VER (5), NMETHODS (1..255), METHODS, then waits
for the server. Put this file in a twisted/plugins/ folder (never add an
__init__.py there) and name it in a route:  match = "socks5".
"""

from collections.abc import Mapping
from typing import Any

from switchyard.matchers import NEED_MORE, NO, Match, MatchResult, flag, simple_matcher


def greeting(data: bytes, facts: Mapping[str, Any], require_no_auth: bool) -> MatchResult:
    if data[:1] not in (b"", b"\x05"):
        return NO  # not version 5
    if len(data) < 2 or len(data) < 2 + data[1]:
        return NEED_MORE  # the greeting is not complete yet
    methods = list(data[2:])
    if not methods or len(methods) != data[1]:
        return NO  # no method, or extra bytes: a SOCKS5 client waits for us
    if require_no_auth and 0 not in methods:
        return NO
    return Match(facts={"socks_methods": methods})


socks5 = simple_matcher("socks5", greeting, description="SOCKS5 client greeting (RFC 1928)",
                        options={"require_no_auth": flag()})
