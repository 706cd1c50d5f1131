"""Host name patterns (``example.com``, ``*.example.com``, ``~regex``) as compiled predicates."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from switchyard.interfaces import MatcherConfigError
from switchyard.values import require_texts

__all__ = ["NamePredicate", "compile_name_patterns", "normalize_name"]

NamePredicate = Callable[[str], bool]

# Characters an exact pattern may hold once converted to A-labels: the
# reg-name set of RFC 3986 minus percent-encoding, plus ':' for IPv6 literals.
_EXACT_NAME = re.compile(r"[a-z0-9._~!$&'()*+,;=:-]+")


def normalize_name(name: str) -> str:
    """
    Put a host name in the form patterns are compared in: lowercase, without
    one trailing dot, and without the brackets of an IPv6 literal.
    """
    name = name.lower()
    if name.startswith("[") and name.endswith("]"):
        return name[1:-1]
    if name.endswith("."):
        return name[:-1]
    return name


def _to_ascii(key: str, pattern: str, name: str) -> str:
    # SNI and Host carry A-labels (RFC 6066, RFC 9110), so a pattern written
    # in Unicode must be converted or it could never match.
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise MatcherConfigError(
            key, f"bad name {pattern!r}: not a valid internationalized name ({e})"
        ) from None


def _compile_one(key: str, pattern: str) -> NamePredicate:
    if pattern.startswith("~"):
        try:
            regex = re.compile(pattern[1:], re.IGNORECASE)
        except re.error as e:
            raise MatcherConfigError(key, f"bad regex {pattern!r}: {e}") from None
        return lambda name: regex.fullmatch(normalize_name(name)) is not None

    if pattern.startswith("*."):
        suffix = normalize_name(_to_ascii(key, pattern, pattern[2:]))
        if "*" in suffix or not _EXACT_NAME.fullmatch(suffix) or "" in suffix.split("."):
            raise MatcherConfigError(
                key, f"bad wildcard {pattern!r}: expected '*.' followed by a domain name"
            )
        dotted = "." + suffix

        def wildcard(name: str) -> bool:
            name = normalize_name(name)
            if not name.endswith(dotted):
                return False
            # '*' stands for one or more whole labels: never the apex itself,
            # never an empty label as in '.example.com' or 'a..example.com'.
            labels = name[: -len(dotted)]
            return labels != "" and "" not in labels.split(".")

        return wildcard

    if "*" in pattern:
        raise MatcherConfigError(
            key,
            f"bad name {pattern!r}: '*' is only allowed as the whole first label"
            " ('*.example.com'); use '~REGEX' for other shapes",
        )
    exact = normalize_name(_to_ascii(key, pattern, pattern))
    if not _EXACT_NAME.fullmatch(exact):
        raise MatcherConfigError(key, f"bad name {pattern!r}: not a host name")
    return lambda name: normalize_name(name) == exact


def compile_name_patterns(key: str, patterns: str | Sequence[str]) -> NamePredicate:
    """
    Compile a name option into a predicate on host names (SNI, Host).

    Each pattern is one of:
      - an exact name, compared case-insensitively, a trailing dot ignored;
      - C{*.example.com}: any name with one or more labels before
        C{.example.com}, but not C{example.com} itself;
      - C{~REGEX}: a Python regular expression that must match the whole
        name, case-insensitively.
    Names are compared after L{normalize_name}, so the regex never sees a
    trailing dot or IPv6 brackets. The predicate is true when any pattern
    matches.

    @param key: the option name, for error messages.
    @raise MatcherConfigError: a pattern is malformed.
    """
    predicates = [_compile_one(key, p) for p in require_texts(key, patterns)]
    if len(predicates) == 1:
        return predicates[0]
    return lambda name: any(p(name) for p in predicates)

