"""Record what a real client program sends first, to a throwaway listener on 127.0.0.1.

Shared by the matcher tests (through L{tests.openings}) and by the fuzzer's
corpus (benchmarks/fuzz_corpus.py), which runs without the test tools: no
imports beyond the standard library and attrs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

import attr


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
