"""The ``tls`` matcher: a TLS ClientHello (L{switchyard.wire.tls}), with SNI, ALPN
and version conditions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr
from zope.interface import implementer

from switchyard.interfaces import (
    NO,
    IExplainingMatcher,
    IMatcherFactory,
    Match,
    MatcherConfigError,
    MatchResult,
)
from switchyard.matchers.reasons import hello_problem, name_refused, one_of
from switchyard.names import NamePredicate
from switchyard.options import Options
from switchyard.wire.tls import (
    VERSIONS,
    ClientHello,
    hello_offer,
    parse_client_hello,
    version_name,
)


@implementer(IExplainingMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class TLSMatcher:
    """A compiled C{tls} route condition."""

    sni: NamePredicate | None = None
    no_sni: bool = False
    alpn: frozenset[str] | None = None
    min_version: int = 0
    sni_patterns: tuple[str, ...] = attr.ib(default=(), eq=False)  # as written, for reasons

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        # Only what the conditions and facts need: not a whole ClientHello.
        offer = hello_offer(data)
        if not isinstance(offer, tuple):
            return offer
        sni, alpn, highest = offer
        if not self._name_ok(sni):
            return NO
        if self.alpn is not None and self.alpn.isdisjoint(alpn):
            return NO
        if highest < self.min_version:
            return NO
        # sni is always there, None when the client sent no name: the
        # access log then says "sni=none", the answer to the classic
        # "why did this old client get the default certificate?".
        found: dict[str, Any] = {"sni": sni, "tls_version": version_name(highest)}
        if alpn:
            found["alpn"] = list(alpn)
        return Match(found)

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        hello = parse_client_hello(data)
        if not isinstance(hello, ClientHello):
            return hello_problem(data, hello)
        sni, version = hello.sni, version_name(hello.highest_version)
        if not self._name_ok(sni):
            if sni is not None and self.sni is None:
                return f"SNI {sni!r}, and the route takes only hellos without one (no_sni)"
            return name_refused("SNI", sni, self.sni_patterns) + (
                " (no_sni is not set)" if sni is None else "")
        offered = "ALPN " + one_of(hello.alpn) if hello.alpn else "no ALPN"
        if self.alpn is not None and self.alpn.isdisjoint(hello.alpn):
            return f"{offered} offered, the route wants {one_of(sorted(self.alpn))}"
        if hello.highest_version < self.min_version:
            return f"TLS {version} is below min_version {version_name(self.min_version)}"
        if sni is None:
            name = "no SNI" + (" (no_sni)" if self.sni is not None else "")
        else:
            name = f"SNI {sni!r}" + (f" (the route takes {one_of(self.sni_patterns)})"
                                     if self.sni is not None else "")
        return f"ClientHello with {name}, TLS {version}, {offered}"

    def _name_ok(self, sni: str | None) -> bool:
        if sni is None:
            # Without an sni condition a nameless hello is fine; with one it
            # needs no_sni to be let through.
            return self.no_sni or self.sni is None
        if self.sni is None:
            return not self.no_sni
        return self.sni(sni)


@implementer(IMatcherFactory)
class TLSMatcherFactory:
    """Builds L{TLSMatcher}s from route options."""

    name = "tls"
    description = "TLS ClientHello; conditions on SNI, ALPN and version"

    def build(self, options: Mapping[str, Any]) -> TLSMatcher:
        opts = Options(options, ("sni", "no_sni", "alpn", "min_version"))
        alpn = opts.texts("alpn")
        if alpn is not None:
            for protocol in alpn:
                if len(protocol.encode("utf-8")) > 255:
                    raise MatcherConfigError("alpn", f"{protocol!r} is longer than 255 bytes")
        min_version = opts.text("min_version")
        if min_version is not None and min_version not in VERSIONS:
            raise MatcherConfigError(
                "min_version",
                f"unknown version {min_version!r}; expected one of "
                + ", ".join(repr(v) for v in VERSIONS),
            )
        return TLSMatcher(
            sni=opts.names("sni"),
            sni_patterns=opts.texts("sni") or (),
            no_sni=opts.flag("no_sni"),
            alpn=frozenset(alpn) if alpn is not None else None,
            min_version=VERSIONS[min_version] if min_version else 0,
        )
