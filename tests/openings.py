"""Real connection openings for matcher tests: stored captures and live clients.

``vector(name)`` reads a capture from ``tests/vectors`` (see its README in
the team's shared folder). ``record_opening(argv, complete)`` (from L{tests.recording}) starts a
blocking listener on 127.0.0.1, runs a real client program against it and
returns the bytes the client sent first, as received. ``feed`` replays an
opening into a matcher in pieces the way the switch would, and
``mutated_openings`` is a Hypothesis strategy of damaged openings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from hypothesis import strategies as st

from switchyard.interfaces import NEED_MORE, IMatcher, MatchResult
from tests.recording import (  # noqa: F401 (the matcher tests' one import)
    Opening,
    http_head_complete,
    line_complete,
    record_opening,
    tls_record_complete,
)

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


def vector(name: str) -> bytes:
    """The bytes of a stored capture, e.g. C{vector("obfs_tls_client_to_server.bin")}."""
    with open(os.path.join(VECTORS, name), "rb") as f:
        return f.read()


def all_vectors() -> dict[str, bytes]:
    """Every stored capture by file name."""
    return {name: vector(name) for name in sorted(os.listdir(VECTORS)) if name.endswith(".bin")}


def openssl_hello(*args: str) -> Opening:
    """The ClientHello of C{openssl s_client} with extra C{args}."""
    return record_opening(
        lambda port: ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        tls_record_complete,
    )


def feed(matcher: IMatcher, data: bytes, cuts: Iterable[int]) -> list[tuple[int, MatchResult]]:
    """
    Offer C{data} to C{matcher} as the switch would, growing the buffer to
    each cut in turn, and stop at the first answer other than NEED_MORE.

    @return: every C{(buffer length, answer)} asked, in order.
    """
    answers = []
    for cut in cuts:
        answer = matcher.match(data[:cut], {})
        answers.append((cut, answer))
        if answer is not NEED_MORE:
            break
    return answers


def cuts_at(boundaries: Iterable[int], total: int) -> list[int]:
    """Cut points: each boundary within (0, total), then C{total}."""
    return sorted({b for b in boundaries if 0 < b < total} | {total})


@st.composite
def mutated_openings(draw: st.DrawFn, openings: Sequence[bytes]) -> bytes:
    """One of C{openings} with a few bytes changed, inserted, deleted or cut off."""
    data = bytearray(draw(st.sampled_from(openings)))
    for _ in range(draw(st.integers(0, 4))):
        operation = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        where = draw(st.integers(0, len(data)))
        if operation == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif not data:
            continue
        elif operation == "set":
            data[min(where, len(data) - 1)] = draw(st.integers(0, 255))
        elif operation == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        else:
            del data[where:]
    return bytes(data)
