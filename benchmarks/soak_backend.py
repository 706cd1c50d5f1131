"""The soak's checking backend: verify each request's sha256, answer random data with its own.

Run by ``benchmarks/soak.py`` as a process of its own (so it can be killed),
``python soak_backend.py PORT EVENTS_FILE``, on 127.0.0.1:PORT. One thread
per connection. The exchange (``soak_client`` is the other side)::

    client:  POST /soak/TAG HTTP/1.1\\r\\n
             Host: soak.example\\r\\n
             X-Soak: SIZE SHA256 ANSWER_SIZE FAULT\\r\\n
             \\r\\n
             SIZE bytes, then one sentinel byte
    backend: SOAK 200 ANSWER_SIZE SHA256\\n, then ANSWER_SIZE bytes, then FIN
             (or SOAK 422 ... when the request's digest is wrong)

The sentinel stays unread in the kernel until the whole answer is sent: a
backend killed mid-answer (SIGKILL) then resets its connections, as the
kernel does for a socket closed with unread data, instead of ending them
with a FIN the relay could not tell from a finished answer. A truncated
answer ending in a clean EOF is so always the relay's doing.

FAULT is ``none``, ``reset:K`` (send the header and K answer bytes, then
reset: SO_LINGER 0), or ``slow`` (a long answer streamed without a digest,
for slow readers). SIGUSR1 resets every open connection and exits
("reset-then-exit"). Anything the backend sees that the relay should never
have let through (a wrong digest, a request cut by a clean EOF) is appended
to EVENTS_FILE, one line each.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable

HOST = "127.0.0.1"
POOL_SIZE = 4 * 1024 * 1024
MAX_HEAD = 8192
LINGER_RESET = struct.pack("ii", 1, 0)


class Backend:
    """One listening socket, a thread per connection, and the reset-then-exit switch."""

    def __init__(self, port: int, events_path: str) -> None:
        self.port = port
        self.events = os.open(events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pool = os.urandom(POOL_SIZE)
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()

    def event(self, kind: str, tag: str, detail: str = "") -> None:
        # One write(2) of one short line on an O_APPEND file: lines never mix.
        os.write(self.events, f"{kind} {self.port} {tag} {detail}\n".encode())

    def serve(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(4096)
        signal.signal(signal.SIGUSR1, self._reset_then_exit)
        threading.stack_size(256 * 1024)
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue  # EMFILE under a flood: the kernel keeps the rest queued
            with self.lock:
                self.open.add(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _reset_then_exit(self, signum: int, frame: object) -> None:
        with self.lock:
            for conn in self.open:
                try:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                except OSError:
                    pass
        os._exit(0)  # the kernel closes every socket: each one a reset

    def _handle(self, conn: socket.socket) -> None:
        try:
            self._exchange(conn)
        except OSError:
            pass  # reset by the relay (a client that gave up, a fault): nothing to check
        finally:
            with self.lock:
                self.open.discard(conn)
            conn.close()

    def _exchange(self, conn: socket.socket) -> None:
        head = self._read_head(conn)
        if head is None:
            return
        try:
            tag, size, digest, answer_size, fault = parse_head(head)
        except ValueError as e:
            self.event("bad_head", "-", f"{e}: {head[:120]!r}")
            return
        # Exactly the body: the sentinel after it stays in the kernel for now.
        hasher = hashlib.sha256()
        got = 0
        view = memoryview(bytearray(65536))
        while got < size:
            n = conn.recv_into(view, min(len(view), size - got))
            if n == 0:
                self.event("short_request_eof", tag, f"{got} of {size} bytes, then a clean EOF")
                return
            hasher.update(view[:n])
            got += n
        if not conn.recv(1, socket.MSG_PEEK):
            self.event("short_request_eof", tag, "no sentinel, then a clean EOF")
            return
        if hasher.hexdigest() != digest:
            self.event("corrupt_request", tag, f"sha256 {hasher.hexdigest()} != {digest}")
            conn.sendall(f"SOAK 422 request-digest-mismatch {tag}\n".encode())
            return
        if fault == "slow":
            self._stream(conn, answer_size)
            return
        answer = self.answer(answer_size)
        header = f"SOAK 200 {answer_size} {hashlib.sha256(answer).hexdigest()}\n".encode()
        if fault.startswith("reset:"):
            conn.sendall(header + answer[:int(fault[6:])])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            return  # closed by _handle: a reset
        conn.sendall(header)
        conn.sendall(answer)
        conn.recv(1)  # the sentinel: now a close is a clean FIN

    def _read_head(self, conn: socket.socket) -> bytes | None:
        """The request head up to its empty line, without reading a byte past it.

        Peeked first, then taken exactly: a short request's body and
        sentinel arrive in the same segment and must stay in the kernel.
        """
        head = b""
        while True:
            peek = conn.recv(MAX_HEAD, socket.MSG_PEEK)
            if not peek:
                if head:
                    self.event("short_head", "-", repr(head[:80]))
                return None  # a health probe, or a client that left before asking
            buf = head + peek
            end = buf.find(b"\r\n\r\n")
            take = len(peek) if end < 0 else end + 4 - len(head)
            head += recv_exactly(conn, take)
            if end >= 0:
                return head[:-4]
            if len(head) > MAX_HEAD:
                self.event("bad_head", "-", repr(head[:80]))
                return None

    def _stream(self, conn: socket.socket, size: int) -> None:
        """A long answer without a digest, for slow readers: the pool, over and over."""
        conn.sendall(f"SOAK 200 {size} -\n".encode())
        view = memoryview(self.pool)
        while size > 0:
            n = min(size, 65536)
            conn.sendall(view[:n])
            size -= n

    def answer(self, size: int) -> bytes:
        """``size`` random bytes: slices of the pool from a random place."""
        start = int.from_bytes(os.urandom(4), "big") % POOL_SIZE
        if start + size <= POOL_SIZE:
            return self.pool[start:start + size]
        out = bytearray()
        while len(out) < size:
            out += self.pool[start:start + size - len(out)]
            start = 0
        return bytes(out)


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    """``size`` bytes already peeked (so present), taken off the socket."""
    out = b""
    while len(out) < size:
        chunk = conn.recv(size - len(out))
        if not chunk:
            raise ConnectionResetError("the peeked bytes vanished")
        out += chunk
    return out


def parse_head(head: bytes) -> tuple[str, int, str, int, str]:
    """(tag, size, sha256, answer size, fault) of a soak request head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1].startswith("/soak/"):
        raise ValueError("not a soak request line")
    tag = parts[1][len("/soak/"):]
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "x-soak":
            size, digest, answer_size, fault = value.split()
            return tag, int(size), digest, int(answer_size), fault
    raise ValueError("no X-Soak header")


def main(argv: list[str], serve: Callable[[Backend], None] = Backend.serve) -> int:
    if len(argv) != 2:
        print("usage: soak_backend.py PORT EVENTS_FILE", file=sys.stderr)
        return 2
    serve(Backend(int(argv[0]), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
