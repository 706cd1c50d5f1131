"""Blocking traffic over loopback: a digest backend and the client that checks it.

The backend sends ``n`` deterministic pseudo-random bytes, reads until the
client's end of stream, then answers the SHA-256 of everything it read and
closes. The client sends its own bytes, shuts down its write side and reads
to the end. Both directions, the half-close and the integrity of every byte
are checked by one exchange, the way a real transfer would fail.
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import struct
import threading
import time
from typing import Any

from tests.helpers import LOCALHOST, recv_all
from tests.helpers import recv_exact as _recv_exact

__all__ = ["LOCALHOST", "MAGIC", "SLOW_BODY", "SLOW_CHUNK", "DigestServer", "SlowServer",
           "exchange", "kernel_buffering", "payload", "recv_all", "whole_chunks"]
MAGIC = b"DGST"  # the opening, so routes can match this traffic (regex ^DGST)


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class _DigestHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(60)
        # The client says how much it wants back, so each connection moves
        # its own amount.
        header = _recv_exact(sock, len(MAGIC) + 8)
        seed, n = struct.unpack("!II", header[len(MAGIC):])
        writer = threading.Thread(target=sock.sendall, args=(payload(seed, n),))
        writer.start()
        digest = hashlib.sha256(header)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            digest.update(chunk)
        writer.join()
        sock.sendall(digest.digest())
        sock.close()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


class DigestServer:
    """A threaded backend on 127.0.0.1; ``stop`` closes it."""

    handler: type[socketserver.BaseRequestHandler] = _DigestHandler

    def __init__(self) -> None:
        self.server = _Server((LOCALHOST, 0), self.handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# What SlowServer sends to every client: 2 MB over about 2 seconds.
SLOW_CHUNK = payload(3, 100_000)
SLOW_BODY = SLOW_CHUNK * 20


class _SlowHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(100)
        for _ in range(20):
            self.request.sendall(SLOW_CHUNK)
            time.sleep(0.1)
        self.request.close()


class SlowServer(DigestServer):
    """A threaded backend on 127.0.0.1 answering any request with SLOW_BODY, slowly."""

    handler = _SlowHandler


def exchange(port: int, send: int, receive: int, seed: int = 1, host: str = LOCALHOST,
             timeout: float = 60) -> dict[str, Any]:
    """One checked transfer through whatever listens on ``port``.

    Sends a 12-byte request header (``DGST``, seed, size wanted) and
    ``send`` random bytes, half-closes, and reads the ``receive``
    bytes and the digest. Returns what was seen; raises AssertionError on
    any mismatch.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        mine = MAGIC + struct.pack("!II", seed, receive) + payload(seed + 1, send)

        def write() -> None:
            sock.sendall(mine)
            sock.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        writer.start()
        got = recv_all(sock)
        writer.join()
    finally:
        sock.close()
    expected_body = payload(seed, receive)
    if got[:receive] != expected_body:
        raise AssertionError(f"body differs (got {len(got)} bytes, wanted {receive}+32)")
    if got[receive:] != hashlib.sha256(mine).digest():
        raise AssertionError("the backend's digest of what we sent does not match")
    return {"sent": len(mine), "received": len(got)}


def kernel_buffering() -> int:
    """The most the kernel may buffer between a backend and a client that
    does not read (receive buffer 64 KiB), through one switch: the backend's
    send buffer, the switch's receive and send buffers (autotuned up to the
    tcp_rmem and tcp_wmem maxima), a splice pipe, and some slack."""
    def maximum(name: str) -> int:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return int(f.read().split()[2])

    return 2 * maximum("tcp_wmem") + maximum("tcp_rmem") + 4 * 1024 * 1024


def whole_chunks(n: int, chunk: int) -> int:
    """``n`` rounded up to a multiple of ``chunk``."""
    return -(-n // chunk) * chunk
