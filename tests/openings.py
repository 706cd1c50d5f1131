"""Real connection openings for matcher tests: stored captures and live clients.

``vector(name)`` reads a capture from ``tests/vectors`` (see its README in
the team's shared folder). ``record_opening(argv, complete)`` starts a
blocking listener on 127.0.0.1, runs a real client program against it and
returns the bytes the client sent first, as received. ``feed`` replays an
opening into a matcher in pieces the way the switch would, and
``mutated_openings`` is a Hypothesis strategy of damaged openings.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import attr
from hypothesis import strategies as st

from switchyard.interfaces import NEED_MORE, IMatcher, MatchResult

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


def vector(name: str) -> bytes:
    """The bytes of a stored capture, e.g. C{vector("obfs_tls_client_to_server.bin")}."""
    with open(os.path.join(VECTORS, name), "rb") as f:
        return f.read()


def all_vectors() -> dict[str, bytes]:
    """Every stored capture by file name."""
    return {name: vector(name) for name in sorted(os.listdir(VECTORS)) if name.endswith(".bin")}


@attr.s(frozen=True, auto_attribs=True)
class Opening:
    """What a client sent first: all of it, and the reads it arrived in."""

    data: bytes
    segments: tuple[bytes, ...]


def tls_record_complete(data: bytes) -> bool:
    """Whether C{data} holds at least one whole TLS record (header says how long)."""
    return len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big")


def http_head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data


def line_complete(data: bytes) -> bool:
    return b"\n" in data


def record_opening(
    argv: Callable[[int], Sequence[str]],
    complete: Callable[[bytes], bool],
    timeout: float = 2.0,
) -> Opening:
    """
    Run a real client against a throwaway listener and record its opening.

    @param argv: the client's command line, given the listener's port.
    @param complete: says when enough has arrived; recording also stops at
        end of stream or after C{timeout} seconds.
    @raise RuntimeError: the client program is not installed (scripts/test
        installs it: a missing client is a failure, not a skip).
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    command = list(argv(port))
    if shutil.which(command[0]) is None:
        server.close()
        raise RuntimeError(f"{command[0]} is not installed")
    segments: list[bytes] = []

    def serve() -> None:
        server.settimeout(timeout + 3)
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            deadline = time.monotonic() + timeout
            while not complete(b"".join(segments)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                conn.settimeout(remaining)
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                segments.append(chunk)

    listener = threading.Thread(target=serve, daemon=True)
    listener.start()
    # stdin stays open (a pipe we never write) so clients such as
    # openssl s_client do not quit on end of input before sending.
    client = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listener.join(timeout + 5)
    finally:
        client.kill()
        client.wait(10)
        if client.stdin is not None:
            client.stdin.close()
        server.close()
    return Opening(b"".join(segments), tuple(segments))


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
