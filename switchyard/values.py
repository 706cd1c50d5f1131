"""Config values: a TOML value's type named for error messages, lists of strings checked."""

from __future__ import annotations

from collections.abc import Mapping

from switchyard.interfaces import OptionError


def describe_value(value: object) -> str:
    """Name a value's type the way a TOML author thinks of it."""
    kinds = [
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (Mapping, "table"),
        (list, "list"),
        (tuple, "list"),
    ]
    for kind, name in kinds:
        if isinstance(value, kind):
            return f"{name} {value!r}"
    return f"{type(value).__name__} {value!r}"


def require_texts(key: str, value: object) -> tuple[str, ...]:
    """
    Check that an option is a non-empty string or a non-empty list of
    non-empty strings, and return it as a tuple.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise OptionError(
            key, f"expected a string or a list of strings, got {describe_value(value)}"
        )
    if not items:
        raise OptionError(key, "expected at least one value, got an empty list")
    for item in items:
        if not isinstance(item, str):
            raise OptionError(
                key,
                f"expected a string or a list of strings, got {describe_value(item)} in the list",
            )
        if not item:
            raise OptionError(key, "empty string not allowed")
    return tuple(items)
