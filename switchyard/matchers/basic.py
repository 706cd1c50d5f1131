"""The ``any`` and ``regex`` matchers: a catch-all and a raw bytes pattern."""

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
from switchyard.matchers.reasons import quote
from switchyard.options import Options
from switchyard.wire.text import printable

MAX_FACT_LENGTH = 64
# Matching needs the bytes in the switch's buffer, whose cap is configurable;
# this bound only catches typos such as an extra zero or two.
MAX_MIN_LENGTH = 1024 * 1024


@implementer(IExplainingMatcher)
class AnyMatcher:
    """Matches every opening, even an empty one: the catch-all route."""

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        return Match(facts={})

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        return "the catch-all: it takes every opening"


@implementer(IMatcherFactory)
class AnyMatcherFactory:
    """Builds the L{AnyMatcher}; it takes no options."""

    name = "any"
    description = "Matches every connection (put it last)"

    def build(self, options: Mapping[str, Any]) -> AnyMatcher:
        Options(options, ())
        return AnyMatcher()


@implementer(IExplainingMatcher)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class RegexMatcher:
    """
    Searches the opening for a bytes regex once C{min_length} bytes are in;
    before that the answer is NEED_MORE, after it Match or NO.
    """

    pattern: re.Pattern[bytes]
    min_length: int = 1

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        if len(data) < self.min_length:
            return NEED_MORE
        found = self.pattern.search(data)
        if found is None:
            return NO
        # Cut before escaping so the limit counts bytes of the opening.
        return Match(facts={"regex": printable(found.group(0)[:MAX_FACT_LENGTH])})

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        pattern = quote(printable(self.pattern.pattern))
        if len(data) < self.min_length:
            return f"{len(data)} bytes so far, min_length is {self.min_length}"
        found = self.pattern.search(data)
        if found is None:
            return f"pattern {pattern} is not in the {len(data)} bytes"
        return f"pattern {pattern} found at byte {found.start()}: " + quote(
            printable(found.group(0)))


@implementer(IMatcherFactory)
class RegexMatcherFactory:
    """Builds L{RegexMatcher}s from route options."""

    name = "regex"
    description = "Python bytes regex searched in the first bytes"

    def build(self, options: Mapping[str, Any]) -> RegexMatcher:
        opts = Options(options, ("pattern", "min_length"))
        source = opts.text("pattern", required=True)
        assert source is not None
        try:
            # TOML strings are text; Latin-1 maps "\u00ff" to byte 0xff, so
            # any byte value can be written.
            raw = source.encode("latin-1")
        except UnicodeEncodeError as e:
            raise MatcherConfigError(
                "pattern",
                f"{source!r} has a character above \\u00ff at position {e.start}; "
                "write bytes as \\xNN regex escapes",
            ) from None
        try:
            pattern = re.compile(raw)
        except re.error as e:
            raise MatcherConfigError("pattern", f"bad regex {source!r}: {e}") from None
        min_length = opts.integer("min_length", 1, minimum=1, maximum=MAX_MIN_LENGTH)
        return RegexMatcher(pattern=pattern, min_length=min_length)
