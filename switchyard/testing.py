"""Helpers for testing matchers, switchyard's own and third parties': feed an
opening the way TCP may deliver it, and check the verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from switchyard.interfaces import NEED_MORE, NO, IMatcher, IMatcherFactory, Match, MatchResult


def build(factory: IMatcherFactory, **options: Any) -> IMatcher:
    """A route's matcher, as the config would compile it with these options."""
    return factory.build(options)


def verdicts(matcher: IMatcher, opening: bytes,
             facts: Mapping[str, Any] | None = None) -> list[MatchResult]:
    """The verdict for every prefix of ``opening``, the empty one first and the
    whole last: what the switch would see if the bytes came one at a time."""
    facts = facts if facts is not None else {}
    return [matcher.match(opening[:cut], facts) for cut in range(len(opening) + 1)]


def decided_at(matcher: IMatcher, opening: bytes,
               facts: Mapping[str, Any] | None = None) -> tuple[int, MatchResult]:
    """The first prefix length at which ``matcher`` decides (anything but
    NEED_MORE), and its verdict; (len(opening), NEED_MORE) if it never does."""
    for cut, verdict in enumerate(verdicts(matcher, opening, facts)):
        if verdict is not NEED_MORE:
            return cut, verdict
    return len(opening), NEED_MORE


def check_opening(matcher: IMatcher, opening: bytes,
                  facts: Mapping[str, Any] | None = None) -> Match:
    """
    Check what a matcher must do with a real opening of its protocol: wait
    (NEED_MORE) on every strict prefix, then match the whole. Returns the
    Match; raises AssertionError naming the first prefix that went wrong.
    """
    found = verdicts(matcher, opening, facts)
    for cut, verdict in enumerate(found[:-1]):
        if verdict is not NEED_MORE:
            raise AssertionError(f"the first {cut} bytes gave {verdict!r}, not NEED_MORE")
    if not isinstance(found[-1], Match):
        raise AssertionError(f"the whole opening gave {found[-1]!r}, not a Match")
    return found[-1]


def check_refuses(matcher: IMatcher, openings: Iterable[bytes],
                  facts: Mapping[str, Any] | None = None) -> None:
    """Check that each of ``openings`` (other protocols' real openings) is
    refused: NO as soon as it is decided, never a Match."""
    for opening in openings:
        cut, verdict = decided_at(matcher, opening, facts)
        if verdict is not NO and not (verdict is NEED_MORE and cut == len(opening)):
            raise AssertionError(f"{opening[:40]!r}... gave {verdict!r} after {cut} bytes")
