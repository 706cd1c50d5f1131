"""The soak's crowds: many connections at once, each doing little.

- ``burst``: exactly N connections held open together, each making one small
  transfer: all N are served only if the listener counts no connection that
  is gone (with ``max_connections = N``);
- ``SlowReaders``: clients that read one byte a second of a long answer;
- ``slowloris``: clients dribbling an HTTP opening a byte a second,
  reconnecting when switchyard closes them (run in a process of its own);
- ``Flood``: connections that send a request head and never its body, so
  switchyard and the backend hold them, until closed all at once.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from soak_client import HOST, SNI, Client, Spec, classify_answer, request_head

# -- burst: the listener's open count, seen from outside ---------------------


@dataclass
class Burst:
    """How a burst of exactly ``size`` held connections went."""

    size: int
    served: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0


def burst(port: int, size: int, cafile: str | None, label: str, timeout: float = 30) -> Burst:
    """Hold ``size`` connections at once, each making one small transfer."""
    return asyncio.run(_burst(port, size, cafile, label, timeout))


async def _burst(port: int, size: int, cafile: str | None, label: str,
                 timeout: float) -> Burst:
    """Every connection sends its request but the last byte (the sentinel: the
    backend answers only once it is there), waits until all have, then
    sends it and reads the answer: so all ``size`` are open in switchyard at
    once, whatever the client library does after an end of stream."""
    result = Burst(size)
    client = Client(seed=size)
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    connecting = asyncio.Semaphore(200)  # a burst, not a SYN flood
    asked = 0
    everyone_asked = asyncio.Event()
    started = time.monotonic()

    def count_asked() -> None:
        nonlocal asked
        asked += 1
        if asked == size:
            everyone_asked.set()

    async def one(i: int) -> str:
        writer = None
        counted = False
        try:
            async with connecting:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    HOST, port, ssl=context, server_hostname=SNI if context else None), timeout)
                request = client.request(Spec(f"burst-{label}-{i}", 64, 16))
                writer.write(request[:-1])
                await writer.drain()
            count_asked()
            counted = True
            await asyncio.wait_for(everyone_asked.wait(), timeout)
            writer.write(request[-1:])
            return classify_answer(await asyncio.wait_for(reader.read(), timeout))[0]
        except TimeoutError:
            return "hung"
        except ConnectionRefusedError:
            return "refused"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except (ssl.SSLError, OSError) as e:
            return type(e).__name__
        finally:
            if not counted:
                count_asked()
            if writer is not None:
                writer.close()

    for outcome in await asyncio.gather(*(one(i) for i in range(size))):
        if outcome == "ok":
            result.served += 1
        else:
            result.failed[outcome] += 1
    result.seconds = time.monotonic() - started
    await asyncio.sleep(0.2)  # let the TLS transports finish closing
    return result


# -- slow readers ------------------------------------------------------------


class SlowReaders:
    """``count`` clients, each asking for a long answer and reading a byte a second."""

    def __init__(self, port: int, count: int, cafile: str | None, label: str,
                 answer_size: int = 1 << 30) -> None:
        self.port = port
        self.count = count
        self.context = ssl.create_default_context(cafile=cafile) if cafile else None
        self.label = label
        self.answer_size = answer_size
        self.socks: list[socket.socket] = []
        self.received = 0
        self.closed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read_slowly, daemon=True)

    def start(self) -> None:
        client = Client(seed=1)
        for i in range(self.count):
            sock = socket.socket()
            # A small window: the backend's answer piles up in switchyard, not here.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect((HOST, self.port))
            conn = sock
            if self.context is not None:
                conn = self.context.wrap_socket(sock, server_hostname=SNI)
            spec = Spec(f"slow-{self.label}-{i}", 16, self.answer_size, "slow")
            conn.sendall(client.request(spec))
            conn.settimeout(0.5)
            self.socks.append(conn)
        self.thread.start()

    def _read_slowly(self) -> None:
        while not self.stopping.wait(1.0):
            for sock in list(self.socks):
                try:
                    got = sock.recv(1)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    got = b""
                if got:
                    self.received += 1
                else:
                    self.closed += 1
                    self.socks.remove(sock)
                    sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        for sock in self.socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            sock.close()


# -- slowloris ---------------------------------------------------------------


def slowloris(port: int, clients: int, seconds: float, out: Any) -> None:
    """In a process of its own: dribble openings for ``seconds``, put the counts on ``out``."""
    out.put(dict(asyncio.run(_slowloris(port, clients, seconds))))


async def _slowloris(port: int, clients: int, seconds: float) -> collections.Counter[str]:
    stats: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + seconds
    # A valid prefix of an HTTP request line that the soak route would take:
    # the http matcher must wait for more (NEED_MORE) on every byte.
    opening = b"GET /soak/slowloris-"

    async def one(i: int) -> None:
        await asyncio.sleep(i / clients)  # spread the first connects over a second
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                stats["connect_failed"] += 1
                await asyncio.sleep(1)
                continue
            stats["connections"] += 1
            writer.write(opening)
            closed = asyncio.ensure_future(reader.read(1))
            while time.monotonic() < deadline:
                done, _ = await asyncio.wait([closed], timeout=1.0)
                if done:
                    stats["closed_by_switchyard"] += 1
                    break
                writer.write(b"a")
                stats["bytes_dribbled"] += 1
            if not closed.done():
                closed.cancel()
            writer.transport.abort()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return stats


def start_slowloris(port: int, clients: int, seconds: float) -> tuple[Any, Any]:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=slowloris, args=(port, clients, seconds, out), daemon=True)
    proc.start()
    return proc, out


# -- flood -------------------------------------------------------------------


class Flood:
    """Connections that ask and never send the body: held at both ends until closed."""

    def __init__(self, port: int, label: str) -> None:
        self.port = port
        self.label = label
        self.socks: list[socket.socket] = []
        self.failed: collections.Counter[str] = collections.Counter()

    def open(self, count: int, connect_timeout: float = 1.0) -> None:
        failed_in_a_row = 0
        for i in range(count):
            sock = socket.socket()
            sock.settimeout(connect_timeout)
            try:
                sock.connect((HOST, self.port))
                # The head promises a body that never comes.
                sock.sendall(request_head(Spec(f"flood-{self.label}-{i}", 1 << 20, 16), "0" * 64))
            except OSError as e:
                self.failed[type(e).__name__] += 1
                sock.close()
                failed_in_a_row += 1
                if failed_in_a_row == 3:
                    break  # the accept queue is full: the flood is as big as it gets
                continue
            failed_in_a_row = 0
            self.socks.append(sock)

    def close(self) -> float:
        """Close every connection (a FIN each); the monotonic time when done."""
        for sock in self.socks:
            sock.close()
        self.socks = []
        return time.monotonic()


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
