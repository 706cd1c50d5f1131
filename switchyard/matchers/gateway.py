"""The ``gateway`` matcher: the three frontd openings (cipher line, binary blob, HTTP header).

It matches as soon as an opening is recognised (L{Pending} in
L{switchyard.wire.gateway}), not once it is complete: the gateway target
reads the rest itself, within its own ``handshake_timeout`` and limits,
and answers a slow, overlong or broken opening with its dialect's error
code. The limits here are wide on purpose (the longest line frontd reads,
a 64 KiB header block): they decide what is recognised, the target's
``line_limit`` and ``header_limit`` what is accepted. The one fact is
``gateway_mode`` (``line``, ``binary`` or ``http``): never the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr
from zope.interface import implementer

from switchyard.interfaces import (
    NEED_MORE,
    NO,
    IMatcher,
    IMatcherFactory,
    Match,
    MatchResult,
    OptionError,
)
from switchyard.options import Options
from switchyard.wire.gateway import (
    FRONTD_LINE_LIMIT,
    BinaryOpening,
    HttpOpening,
    LineOpening,
    Malformed,
    Mode,
    Pending,
    parse_opening,
)

# Where an X-Cipher-Origin header is still looked for: beyond it an HTTP
# request is someone else's (the listener's max_sniff_bytes bounds it too).
RECOGNISE_HEADER_LIMIT = 64 * 1024
MODES = tuple(m.value for m in Mode)
MODE_FACT = "gateway_mode"

_RECOGNISED = (LineOpening, BinaryOpening, HttpOpening, Pending, Malformed)


@implementer(IMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class GatewayMatcher:
    """Matches a recognised gateway opening in one of C{modes}."""

    modes: frozenset[Mode] = frozenset(Mode)

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        result = parse_opening(data, line_limit=FRONTD_LINE_LIMIT,
                               header_limit=RECOGNISE_HEADER_LIMIT)
        if isinstance(result, _RECOGNISED):
            if result.mode in self.modes:
                return Match(facts={MODE_FACT: result.mode.value})
            return NO
        return NEED_MORE if result is NEED_MORE else NO


@implementer(IMatcherFactory)
class GatewayMatcherFactory:
    """Builds L{GatewayMatcher}s; option C{modes} narrows the openings recognised."""

    name = "gateway"
    description = ("Encrypted-address gateway openings (frontd/huangkunbin): a cipher line, "
                   "a binary blob, or HTTP with X-Cipher-Origin")

    def build(self, options: Mapping[str, Any]) -> GatewayMatcher:
        opts = Options(options, ("modes",))
        names = opts.texts("modes") or MODES
        unknown = [name for name in names if name not in MODES]
        if unknown:
            listed = ", ".join(repr(m) for m in MODES)
            raise OptionError("modes", f"{unknown[0]!r} is not a mode: use some of {listed}")
        return GatewayMatcher(frozenset(Mode(name) for name in names))
