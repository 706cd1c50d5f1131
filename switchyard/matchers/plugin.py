"""A matcher plugin made from one function and an options spec (L{simple_matcher})."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any

import attr
from zope.interface import implementer

from switchyard.interfaces import IExplainingMatcher, IMatcher, IMatcherFactory, MatchResult
from switchyard.options import Options

Option = Callable[[Options, str], Any]
"""Reads one option from a route's table: C{option(opts, key) -> value}."""


def flag(default: bool = False) -> Option:
    """``true`` or ``false``."""
    return lambda opts, key: opts.flag(key, default)


def text(default: str | None = None, required: bool = False) -> Option:
    """One string."""
    return lambda opts, key: (opts.text(key, required=required)
                              if key in opts or required else default)


def texts(default: tuple[str, ...] | None = None) -> Option:
    """A string or a list of strings, as a tuple."""
    return lambda opts, key: opts.texts(key) if key in opts else default


def names() -> Option:
    """Host name patterns (``example.com``, ``*.example.com``, ``~regex``) as a
    predicate ``f(name) -> bool``; None when absent."""
    return lambda opts, key: opts.names(key)


def integer(default: int, minimum: int, maximum: int) -> Option:
    """An integer within [minimum, maximum]."""
    return lambda opts, key: opts.integer(key, default, minimum=minimum, maximum=maximum)


def number(default: float, minimum: float = 0.0) -> Option:
    """A number above ``minimum``."""
    return lambda opts, key: opts.number(key, default, minimum=minimum)


def choice(default: str, choices: Collection[str]) -> Option:
    """One of a few strings."""
    return lambda opts, key: opts.choice(key, default, choices)


@implementer(IMatcher)
@attr.s(frozen=True, slots=True)
class _FunctionMatcher:
    """A route's compiled condition: the function with the route's option values."""

    match: Callable[[bytes, Mapping[str, Any]], MatchResult] = attr.ib()


@implementer(IExplainingMatcher)
@attr.s(frozen=True, slots=True)
class _ExplainingFunctionMatcher:
    """The same, with the plugin's reason function (see L{simple_matcher})."""

    match: Callable[[bytes, Mapping[str, Any]], MatchResult] = attr.ib()
    explain: Callable[[bytes, Mapping[str, Any]], str] = attr.ib()


@implementer(IMatcherFactory)
@attr.s(frozen=True, slots=True)
class _FunctionMatcherFactory:
    name: str = attr.ib()
    description: str = attr.ib()
    function: Callable[..., MatchResult] = attr.ib()
    options: Mapping[str, Option] = attr.ib()
    reason: Callable[..., str] | None = attr.ib(default=None)

    def build(self, options: Mapping[str, Any]) -> IMatcher:
        opts = Options(options, tuple(self.options))
        values = {key: read(opts, key) for key, read in self.options.items()}
        if self.reason is not None:
            return _ExplainingFunctionMatcher(partial(self.function, **values),
                                              partial(self.reason, **values))
        return _FunctionMatcher(partial(self.function, **values))


def simple_matcher(name: str, function: Callable[..., MatchResult], *, description: str = "",
                   options: Mapping[str, Option] | None = None,
                   reason: Callable[..., str] | None = None) -> IMatcherFactory:
    """
    A matcher plugin from a function: ``function(data, facts, **options)``
    returns L{Match}, L{NO} or L{NEED_MORE} (and never raises). ``options``
    maps each option a route may give to how it is read (L{flag}, L{text},
    L{texts}, L{names}, L{integer}, L{number}, L{choice}); unknown keys and
    bad values are config errors naming the key, as for the built-ins.

    ``reason(data, facts, **options)``, if given, says in words why
    ``function`` answers what it does (L{IExplainingMatcher.explain}: what
    C{switchyard explain} prints beside the verdict). Without it the
    explanation gives the verdict alone.

    Bind the result to a module-level name in a ``twisted/plugins/`` file.
    """
    return _FunctionMatcherFactory(name, description or name, function, dict(options or {}),
                                   reason)
