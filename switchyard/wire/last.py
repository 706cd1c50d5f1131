"""The last buffer a parser was asked about, and its answer, remembered by identity.

Several routes usually ask about the same opening, and the switch hands each
of them the very same bytes object: remembering the last one by identity
makes a repeat free, and a first parse pays nothing for hashing. The entry
holds a reference, so the identity cannot be reused while it is remembered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

Answer = TypeVar("Answer")


class LastBuffer(Generic[Answer]):
    """C{parse(data, whole)} with its last answer remembered.

    C{whole=False} asks for a route's offer (a tuple), which is not enough
    for a later C{whole=True} call: that one parses again.
    """

    __slots__ = ("_parse", "_data", "_answer")

    def __init__(self, parse: Callable[[bytes, bool], Answer], empty: Answer) -> None:
        self._parse = parse
        self._data = b""
        self._answer = empty

    def __call__(self, data: bytes | bytearray | memoryview, whole: bool) -> Answer:
        if data is self._data and not (whole and isinstance(self._answer, tuple)):
            return self._answer
        if type(data) is not bytes:
            data = bytes(data)
        answer = self._parse(data, whole)
        self._data, self._answer = data, answer
        return answer
