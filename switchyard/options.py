"""Checked, typed reading of config tables: one way to say what is wrong with a key."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from switchyard.interfaces import OptionError
from switchyard.names import compile_name_patterns
from switchyard.values import describe_value, require_texts


class Options:
    """
    Checked, typed access to one table of options (a route's matcher
    options, a listener, a backend).

    Construction rejects option names the matcher does not know, so a typo
    such as C{snl = "example.com"} fails at start-up instead of silently
    widening the route.
    """

    def __init__(self, options: Mapping[str, Any], accepted: Collection[str]) -> None:
        for key in options:
            if key not in accepted:
                if accepted:
                    known = "accepted options: " + ", ".join(sorted(accepted))
                else:
                    known = "this matcher takes no options"
                raise OptionError(str(key), f"unknown option ({known})")
        self._options = options

    def __contains__(self, key: str) -> bool:
        return key in self._options

    def texts(self, key: str) -> tuple[str, ...] | None:
        """A string or list of strings, as a tuple; C{None} when absent."""
        if key not in self._options:
            return None
        return require_texts(key, self._options[key])

    def text(self, key: str, *, required: bool = False) -> str | None:
        """A single string; C{None} when absent and not required."""
        if key not in self._options:
            if required:
                raise OptionError(key, "required option is missing")
            return None
        value = self._options[key]
        if not isinstance(value, str):
            raise OptionError(key, f"expected a string, got {describe_value(value)}")
        return value

    def names(self, key: str) -> Callable[[str], bool] | None:
        """Name patterns (see L{compile_name_patterns}); C{None} when absent."""
        patterns = self.texts(key)
        if patterns is None:
            return None
        return compile_name_patterns(key, patterns)

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean (TOML C{true}/C{false}, not a string or a number)."""
        value = self._options.get(key, default)
        if not isinstance(value, bool):
            raise OptionError(key, f"expected true or false, got {describe_value(value)}")
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        """An integer within [minimum, maximum]."""
        value = self._options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(key, f"expected an integer, got {describe_value(value)}")
        if not minimum <= value <= maximum:
            raise OptionError(key, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0,
               exclusive: bool = True) -> float:
        """A number (integer or float) above C{minimum}: seconds, sizes."""
        value = self._options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(key, f"expected a number, got {describe_value(value)}")
        if value < minimum or (exclusive and value == minimum):
            bound = "greater than" if exclusive else "at least"
            raise OptionError(key, f"must be {bound} {minimum:g}, got {value!r}")
        return float(value)

    def choice(self, key: str, default: str, choices: Collection[str]) -> str:
        """One of a few strings."""
        value = self._options.get(key, default)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise OptionError(key, f"must be one of {listed}, got {describe_value(value)}")
        return str(value)
