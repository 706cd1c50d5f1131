"""The soak's checking client: one transfer through switchyard, and how it ended.

A transfer sends a request of random size with its sha256 (see
``soak_backend`` for the exchange) and reads the answer, whose header
carries its own size and sha256. Every transfer ends in exactly one outcome:

- ``ok``: the backend verified the request, the answer is whole and its
  digest right, and the stream ended cleanly;
- a **visible** failure, which a program notices: refused, reset
  (ECONNRESET/EPIPE), a TLS error (including a TCP FIN without
  close_notify, which TLS reports as truncation), closed before any
  answer byte, or no progress within the timeout (``hung``);
- a **silent** failure, which looks like success to a program reading until
  EOF: a clean end of stream after part of the answer (``truncated``), a
  wrong digest either way (``corrupt_answer``, ``corrupt_request``), bytes
  past the answer, or a garbled header. These must never happen.
- ``client_gave_up``: the client closed first on purpose (a fault of the
  soak's own: ``cfin``, ``crst``, ``creq``).

``run_load`` runs many transfers on a few processes of threads each.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
SNI = "soak.example"
POOL_SIZE = 4 * 1024 * 1024
SENTINEL = b"S"
LINGER_RESET = struct.pack("ii", 1, 0)

OK = "ok"
GAVE_UP = "client_gave_up"
VISIBLE = ("refused", "reset", "tls_error", "tls_eof_without_close_notify",
           "closed_before_answer", "connect_error", "hung")
SILENT = ("truncated", "corrupt_answer", "corrupt_request", "extra_bytes", "bad_header")


@dataclass(frozen=True)
class Target:
    """Where transfers go: a listener port, plain or TLS (verified against ``cafile``)."""

    port: int
    cafile: str | None = None  # TLS when set
    timeout: float = 30.0

    def context(self) -> ssl.SSLContext | None:
        if self.cafile is None:
            return None
        return ssl.create_default_context(cafile=self.cafile)


@dataclass(frozen=True)
class Spec:
    """One transfer: sizes each way and the faults the soak injects into it."""

    tag: str
    size: int
    answer_size: int
    fault: str = "none"  # the backend's: none, reset:K, slow
    # The client's: none; cfin (close after sending); crst:K (reset after K answer
    # bytes); creq:M (reset after sending the head and M per mille of the body).
    client_fault: str = "none"
    prefix: bytes = b""  # sent before the request: a PROXY header from a "trusted front"


# (tag, outcome, detail, answer bytes received, seconds, client port)
Result = tuple[str, str, str, int, float, int]


def request_head(spec: Spec, digest: str) -> bytes:
    return (f"POST /soak/{spec.tag} HTTP/1.1\r\nHost: {SNI}\r\n"
            f"X-Soak: {spec.size} {digest} {spec.answer_size} {spec.fault}\r\n\r\n").encode()


def classify_answer(answer: bytes | bytearray) -> tuple[str, str]:
    """The outcome of an answer that ended in a clean end of stream."""
    if not answer:
        return "closed_before_answer", ""
    end = answer.find(b"\n", 0, 200)
    if end < 0:
        if b"SOAK 200 ".startswith(bytes(answer[:9])) or bytes(answer).startswith(b"SOAK 200 "):
            return "truncated", f"{len(answer)} bytes of header"
        return "bad_header", repr(bytes(answer[:40]))
    parts = bytes(answer[:end]).split()
    if parts[:2] == [b"SOAK", b"422"]:
        return "corrupt_request", "the backend got a request with the wrong sha256"
    if len(parts) != 4 or parts[:2] != [b"SOAK", b"200"] or not parts[2].isdigit():
        return "bad_header", repr(bytes(answer[:40]))
    size, digest = int(parts[2]), parts[3].decode()
    body = memoryview(answer)[end + 1:]
    if len(body) < size:
        return "truncated", f"{len(body)} of {size} answer bytes"
    if len(body) > size:
        return "extra_bytes", f"{len(body)} bytes for {size}"
    if hashlib.sha256(body).hexdigest() != digest:
        return "corrupt_answer", "wrong sha256"
    return OK, ""


class Client:
    """Makes transfers; holds the random pool request bodies are cut from."""

    def __init__(self, seed: int) -> None:
        self.pool = random.Random(seed).randbytes(POOL_SIZE)

    def body(self, spec: Spec) -> memoryview:
        start = zlib.crc32(spec.tag.encode()) % (POOL_SIZE - spec.size + 1)
        return memoryview(self.pool)[start:start + spec.size]

    def request(self, spec: Spec) -> bytes:
        body = self.body(spec)
        return (spec.prefix + request_head(spec, hashlib.sha256(body).hexdigest()) + body
                + SENTINEL)

    def transfer(self, target: Target, spec: Spec, context: ssl.SSLContext | None) -> Result:
        started = time.monotonic()
        port = 0
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(target.timeout)
        conn: socket.socket = sock
        try:
            try:
                sock.connect((HOST, target.port))
            except ConnectionRefusedError:
                return self._result(spec, "refused", "", 0, started, port)
            except TimeoutError:
                return self._result(spec, "hung", "connect", 0, started, port)
            except OSError as e:
                return self._result(spec, "connect_error", str(e), 0, started, port)
            port = sock.getsockname()[1]
            if context is not None:
                try:
                    conn = context.wrap_socket(sock, server_hostname=SNI,
                                               suppress_ragged_eofs=False)
                except TimeoutError:
                    return self._result(spec, "hung", "TLS handshake", 0, started, port)
                except ssl.SSLEOFError as e:
                    return self._result(spec, "tls_eof_without_close_notify",
                                        f"handshake: {e}", 0, started, port)
                except ssl.SSLError as e:
                    return self._result(spec, "tls_error", f"handshake: {e}", 0, started, port)
                except OSError as e:
                    return self._result(spec, _os_outcome(e), f"handshake: {e}", 0, started, port)
            outcome, detail, got = self._exchange(conn, spec)
            return self._result(spec, outcome, detail, got, started, port)
        finally:
            conn.close()

    def _exchange(self, conn: socket.socket, spec: Spec) -> tuple[str, str, int]:
        sent_error: OSError | None = None
        request = self.request(spec)
        if spec.client_fault.startswith("creq:"):
            cut = len(request) - 1 - spec.size + spec.size * int(spec.client_fault[5:]) // 1000
            try:
                conn.sendall(request[:cut])
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
            return GAVE_UP, "reset while sending", 0
        try:
            conn.sendall(request)
        except TimeoutError:
            return "hung", "sending", 0
        except OSError as e:
            sent_error = e  # read what did come: it tells refused from reset
        if spec.client_fault == "cfin":
            return GAVE_UP, "closed after sending", 0
        cut = int(spec.client_fault[5:]) if spec.client_fault.startswith("crst:") else -1
        answer = bytearray()
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
                if 0 <= cut <= len(answer):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                    return GAVE_UP, "reset after part of the answer", len(answer)
        except TimeoutError:
            return "hung", f"after {len(answer)} answer bytes", len(answer)
        except ssl.SSLEOFError:
            return "tls_eof_without_close_notify", f"after {len(answer)} bytes", len(answer)
        except ssl.SSLError as e:
            return "tls_error", f"{e} after {len(answer)} bytes", len(answer)
        except OSError as e:
            return _os_outcome(e), f"{e} after {len(answer)} bytes", len(answer)
        if sent_error is not None and not answer:
            return _os_outcome(sent_error), f"sending: {sent_error}", 0
        outcome, detail = classify_answer(answer)
        return outcome, detail, len(answer)

    @staticmethod
    def _result(spec: Spec, outcome: str, detail: str, got: int, started: float,
                port: int) -> Result:
        return (spec.tag, outcome, detail, got, time.monotonic() - started, port)


def _os_outcome(e: OSError) -> str:
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return "connect_error"


# -- many transfers ----------------------------------------------------------

# Set in each worker process by the pool's initializer.
_progress: Any = None


def _init_worker(progress: Any) -> None:
    global _progress
    _progress = progress


def _run_chunk(args: tuple[Target, Sequence[Spec], int, int]) -> list[Result]:
    target, specs, threads, seed = args
    client = Client(seed)
    local = threading.local()

    def one(spec: Spec) -> Result:
        if not hasattr(local, "context"):  # one per thread: an SSLContext is not shared
            local.context = target.context()
        result = client.transfer(target, spec, local.context)
        with _progress.get_lock():
            _progress.value += 1
        return result

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, specs))


class Load:
    """Transfers running on ``processes`` processes of ``threads`` threads each."""

    def __init__(self, target: Target, specs: Sequence[Spec], processes: int, threads: int,
                 seed: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.total = len(specs)
        self.progress = ctx.Value("q", 0)
        self.pool = ctx.Pool(processes, initializer=_init_worker, initargs=(self.progress,))
        chunks = [(target, list(specs[i::processes]), threads, seed + i) for i in range(processes)]
        self.pending = self.pool.map_async(_run_chunk, chunks)

    @property
    def done(self) -> int:
        return int(self.progress.value)

    def ready(self) -> bool:
        return self.pending.ready()

    def results(self) -> list[Result]:
        chunks = self.pending.get()
        self.pool.close()
        self.pool.join()
        return [r for chunk in chunks for r in chunk]

    def abort(self) -> None:
        self.pool.terminate()
        self.pool.join()


def make_specs(phase: str, count: int, rng: random.Random, reset_rate: float,
               client_fault_rate: float) -> list[Spec]:
    """Random transfers: most a few KB each way, some up to 1 MiB; some with faults."""
    specs = []
    for i in range(count):
        size, answer_size = random_size(rng), random_size(rng)
        fault = client_fault = "none"
        roll = rng.random()
        if roll < reset_rate and answer_size > 0:
            fault = f"reset:{rng.randrange(answer_size)}"
        elif roll < reset_rate + client_fault_rate / 3:
            client_fault = "cfin"
        elif roll < reset_rate + client_fault_rate * 2 / 3 and answer_size > 0:
            client_fault = f"crst:{rng.randrange(answer_size)}"
        elif roll < reset_rate + client_fault_rate and size > 0:
            # Within the body (per mille of it): the backend has the head.
            client_fault = f"creq:{rng.randrange(1000)}"
        specs.append(Spec(f"{phase}-{i}", size, answer_size, fault, client_fault))
    return specs


def random_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.70:
        return rng.randrange(0, 4096)
    if roll < 0.90:
        return rng.randrange(4096, 65536)
    if roll < 0.99:
        return rng.randrange(65536, 262144)
    return rng.randrange(262144, 1048577)
