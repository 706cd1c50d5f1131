"""Backends under stress through the real ``twistd -n switchyard``: a primary killed
mid-run, a slow reader of a fast backend, and a slowloris crowd.

Many clients are driven by one asyncio loop (not thousands of threads). Run as
``python -m tests.test_backends_daemon digest PORT`` this module is also the
digest backend those tests kill.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.trial import unittest

from tests import helpers, traffic
from tests.daemon import env, start_switchyard
from tests.peers import Running, free_port, start_process

ACCESS_LINE = re.compile(r"(?P<client>127\.0\.0\.1:\d+) (?P<listener>\w+)/(?P<route>\S+) -> "
                         r"(?P<server>\S+) facts\[.*\] in=\d+ out=\d+ [\d.]+s "
                         r"relay=(?P<relay>[\w-]+) close=(?P<reason>\w+)")
SETTLE = 60.0  # seconds anything may take on a shared, loaded machine


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def raise_file_limit(wanted: int) -> None:
    """Room for thousands of sockets here and in twistd (which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            hard = wanted  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def access_lines(log: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in ACCESS_LINE.finditer(log)]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = SETTLE) -> Any:
    return helpers.wait_for(condition, what, timeout)


def settled_rss_kib(pid: int) -> int:
    """The process's RSS once it has stopped changing (within 256 KiB) for a second."""
    return helpers.steady(lambda: rss_kib(pid) // 256 * 256, f"the RSS of {pid}", 1.0,
                          SETTLE)


# -- the digest backend, as a process that can be killed ----------------------


async def _digest_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        header = await reader.readexactly(len(traffic.MAGIC) + 8)
        seed, n = struct.unpack("!II", header[len(traffic.MAGIC):])
        writer.write(traffic.payload(seed, n))
        digest = hashlib.sha256(header)
        while chunk := await reader.read(65536):
            digest.update(chunk)
        writer.write(digest.digest())
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _serve_digest(port: int) -> None:
    server = await asyncio.start_server(_digest_connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def start_digest_process(testcase: unittest.TestCase) -> Running:
    port = free_port()
    workdir = os.path.abspath(testcase.mktemp())
    return start_process(testcase, [sys.executable, "-m", "tests.test_backends_daemon",
                                    "digest", str(port)], port, workdir, env=env())


# -- many clients, one loop ------------------------------------------------------


async def digest_client(port: int, seed: int, send: int = 500,
                        receive: int = 2000) -> tuple[int, str]:
    """One checked exchange (see L{traffic.exchange}); returns (local port, error or "")."""
    local = 0
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), 30)
        local = writer.get_extra_info("sockname")[1]
        mine = traffic.MAGIC + struct.pack("!II", seed, receive) + traffic.payload(seed + 1, send)
        writer.write(mine)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        if got != traffic.payload(seed, receive) + hashlib.sha256(mine).digest():
            return local, f"bad answer ({len(got)} bytes)"
        return local, ""
    except (TimeoutError, OSError) as e:
        return local, f"{type(e).__name__}: {e}"


class DaemonCase(unittest.TestCase):
    timeout = 600

    def switchyard(self, config: str, **values: Any) -> Running:
        self.port = free_port()
        running = start_switchyard(self, config.format(port=self.port, **values), self.port)
        self.log_path = running.log_files[-1]
        return running

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


# -- a primary killed during 2,000 connections -------------------------------------

KILL_CONFIG = """
[listener.public]
listen = "tcp:{port}:interface=127.0.0.1:backlog=1024"

[[listener.public.route]]
name = "digest"
match = "regex"
pattern = "^DGST"
min_length = 4
to = "pool"

[backend.pool]
servers = ["127.0.0.1:{a}", "127.0.0.1:{b}", {{ address = "127.0.0.1:{c}", backup = true }}]
connect_timeout = 2
retries = 3
passive_failures = 2
check = true
check_interval = 0.5
check_timeout = 2
"""


class PrimaryKilledTests(DaemonCase):
    CONNECTIONS = 2000
    CONCURRENCY = 16

    def test_killedPrimariesFailOverToTheOthersThenTheBackup(self) -> None:
        a, b, c = (start_digest_process(self) for _ in range(3))
        address = {name: f"127.0.0.1:{p.port}" for name, p in zip("abc", (a, b, c),
                                                                 strict=True)}
        running = self.switchyard(KILL_CONFIG, a=a.port, b=b.port, c=c.port)
        kills: dict[str, float] = {}
        results: list[tuple[float, int, str]] = []  # started, local port, error

        def kill(name: str, process: Running) -> None:
            process.process.send_signal(signal.SIGKILL)
            process.process.wait()  # its sockets are gone once it is reaped
            kills[name] = time.monotonic()

        async def run() -> None:
            todo = iter(range(self.CONNECTIONS))

            async def worker() -> None:
                for i in todo:
                    if i == 600 and "a" not in kills:
                        kill("a", a)
                    if i == 1300 and "b" not in kills:
                        kill("b", b)
                    started = time.monotonic()
                    local, err = await digest_client(self.port, i)
                    results.append((started, local, err))

            await asyncio.gather(*(worker() for _ in range(self.CONCURRENCY)))

        asyncio.run(run())
        self.assertEqual(len(results), self.CONNECTIONS)
        # Each connection's line comes a moment after its client saw the
        # end, and the start-up probe has a line too: wait for every port,
        # not for a count.
        ports = {local for _, local, _ in results if local}

        def every_port_logged() -> bool:
            logged = {int(line["client"].rsplit(":", 1)[1]) for line in access_lines(self.log())}
            return ports <= logged

        wait_for(every_port_logged, "an access line for every client connection")
        log = self.log()
        by_port: dict[int, list[dict[str, str]]] = {}
        for line in access_lines(log):
            by_port.setdefault(int(line["client"].rsplit(":", 1)[1]), []).append(line)

        failed = [(started, local, err) for started, local, err in results if err]
        # Only connections in flight on a killed server may fail, and the
        # access log says which server and how.
        killed = {address[name]: kills[name] for name in kills}
        self.assertLessEqual(len(failed), 2 * self.CONCURRENCY, failed)
        for started, local, err in failed:
            lines = [line for line in by_port.get(local, []) if line["server"] in killed]
            self.assertTrue(lines, f"client {local} failed ({err}) but not on a killed server")
            self.assertLess(started, killed[lines[-1]["server"]], err)
            self.assertNotEqual(lines[-1]["reason"], "backend_refused")
        # Every connection started after a kill went elsewhere; served ones logged so.
        self.assertGreater(len([r for r in results if r[0] > kills["b"]]), 500)
        for started, local, err in results:
            last = by_port[local][-1]
            for name, killed_at in kills.items():
                if started > killed_at:
                    self.assertNotEqual(last["server"], address[name], last)
            if started > kills["b"]:
                self.assertEqual(last["server"], address["c"], last)
            if not err:
                self.assertEqual(last["reason"], "normal", last)
        self.assertIn(f"server {address['a']} is DOWN", log)
        self.assertIn(f"server {address['b']} is DOWN", log)
        self.assertIn("backend pool: no primary server is up: using backup servers", log)
        self.assertEqual(log.count(f"server {address['a']} is DOWN"), 1)
        self.assertIsNone(running.process.poll())
        name_of = {v: k for k, v in address.items()}
        served = Counter(name_of.get(lines[-1]["server"], lines[-1]["server"])
                         for lines in by_port.values())
        self.report = (f"{len(failed)} of {self.CONNECTIONS} clients failed, all in flight "
                       f"on a killed server ({sorted({e for _, _, e in failed})}); "
                       f"last server per client port (a, b killed; c backup): {dict(served)}")
        print("\n" + self.report)


# -- a slow reader of a fast backend -------------------------------------------------

BULK_CONFIG = """
[listener.public]
listen = "127.0.0.1:{port}"

[[listener.public.route]]
match = "any"
to = "bulk"

[backend.bulk]
servers = ["127.0.0.1:{bulk}"]
"""


class FloodingBackend:
    """Sends up to ``total`` bytes to each client as fast as it can take them."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.per_connection: list[int] = []  # bytes sent, by connection in accept order
        self.listening = socket.create_server(("127.0.0.1", 0))
        self.port = self.listening.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listening.accept()
            except OSError:
                return
            self.per_connection.append(0)
            threading.Thread(target=self._flood, args=(conn, len(self.per_connection) - 1),
                             daemon=True).start()

    def _flood(self, conn: socket.socket, index: int) -> None:
        chunk = b"x" * 65536
        try:
            conn.recv(3)
            sent = 0
            while sent < self.total:
                conn.sendall(chunk)
                sent += len(chunk)
                self.sent += len(chunk)
                self.per_connection[index] = sent
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.listening.close()


class SlowReaderTests(DaemonCase):
    def test_slowReaderKeepsMemoryFlat(self) -> None:
        bulk = FloodingBackend(200 * 1024 * 1024)
        self.addCleanup(bulk.stop)
        running = self.switchyard(BULK_CONFIG, bulk=bulk.port)
        pid = running.process.pid
        # Warm up the path once (imports, buffers) so "idle" is the steady state.
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as warm:
            warm.sendall(b"GO\n")
            got = 0
            while got < 4 * 1024 * 1024:
                got += len(warm.recv(1 << 20))
        idle = settled_rss_kib(pid)
        samples = []
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.connect(("127.0.0.1", self.port))
        self.addCleanup(client.close)
        client.sendall(b"GO\n")
        client.settimeout(30)
        read = 0
        started = time.monotonic()
        while time.monotonic() - started < 10:  # 10 KB/s: 1 KB every 0.1 s
            read += len(client.recv(1024))
            time.sleep(0.1)
            if len(samples) < (time.monotonic() - started):
                samples.append(rss_kib(pid))
        samples.append(rss_kib(pid))
        peak = max(samples)
        client.close()
        # The slow client's connection alone (the warm-up one filled its own
        # buffers before it closed).
        sent = bulk.per_connection[-1]
        self.report = (f"idle {idle} KiB, peak {peak} KiB (+{peak - idle} KiB) while the client "
                       f"read {read} bytes and the backend got {sent} bytes out")
        print("\n" + self.report)
        self.assertGreater(read, 50 * 1024)
        self.assertLess(sent, 32 * 1024 * 1024)  # kernel buffers only: flow control held
        self.assertLess(peak - idle, 4 * 1024, self.report)


# -- 2,000 slowloris clients --------------------------------------------------------

ATTACK_CONFIG = """
[listener.public]
listen = "tcp:{port}:interface=127.0.0.1:backlog=4096"
inspect_timeout = 2

[[listener.public.route]]
name = "tls"
match = "tls"
to = "nowhere"

[[listener.public.route]]
name = "digest"
match = "regex"
pattern = "^DGST"
min_length = 4
to = "digest"

[backend.nowhere]
servers = ["127.0.0.1:{dead}"]

[backend.digest]
servers = ["127.0.0.1:{digest}"]
"""

# A TLS record header announcing a big ClientHello: the tls route waits for more.
DRIBBLE = b"\x16\x03\x01\x3f\xff\x01\x00\x3f\xfb\x03\x03" + b"\x00" * 32


class SlowlorisTests(DaemonCase):
    SILENT = 1000
    DRIBBLING = 1000
    TIMEOUT = 2.0

    def attack(self, pid: int) -> dict[str, Any]:
        """One crowd of silent and dribbling clients while real clients are served."""
        lifetimes: list[float] = []
        errors: list[str] = []
        served: list[str] = []
        samples: list[int] = []

        async def attacker(dribble: bool) -> None:
            # Timed from before the connect: switchyard's timer starts later, at
            # accept, so no client can truthfully see less than the timeout.
            opened = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 30)
            except (TimeoutError, OSError) as e:
                errors.append(f"connect: {e!r}")
                return
            sender = None
            if dribble:
                async def drip() -> None:
                    for byte in DRIBBLE:
                        writer.write(bytes([byte]))
                        await asyncio.sleep(1)
                sender = asyncio.create_task(drip())
            try:
                rest = await asyncio.wait_for(reader.read(), 30)
                if rest:
                    errors.append(f"unexpected answer {rest[:20]!r}")
                lifetimes.append(time.monotonic() - opened)
            except (TimeoutError, OSError) as e:
                errors.append(f"not closed: {e!r}")
            finally:
                if sender is not None:
                    sender.cancel()
                writer.close()

        async def real_clients(stop: asyncio.Event) -> None:
            seed = 1000
            while not stop.is_set():
                _, err = await digest_client(self.port, seed)
                served.append(err)
                seed += 1
                await asyncio.sleep(0.1)

        async def sampler(stop: asyncio.Event) -> None:
            while not stop.is_set():
                samples.append(rss_kib(pid))
                await asyncio.sleep(0.25)

        async def run() -> None:
            stop = asyncio.Event()
            background = [asyncio.create_task(real_clients(stop)),
                          asyncio.create_task(sampler(stop))]
            crowd = []
            kinds = [False] * self.SILENT + [True] * self.DRIBBLING
            for start in range(0, len(kinds), 200):  # a fast ramp, not one SYN burst
                crowd += [asyncio.create_task(attacker(k)) for k in kinds[start:start + 200]]
                await asyncio.sleep(0.05)
            await asyncio.gather(*crowd)
            stop.set()
            await asyncio.gather(*background)

        asyncio.run(run())
        self.assertEqual(errors, [])
        self.assertEqual(len(lifetimes), self.SILENT + self.DRIBBLING)
        # Closed by the inspect timeout: not before it, and not long after.
        self.assertGreaterEqual(min(lifetimes), self.TIMEOUT - 0.01)
        self.assertLess(max(lifetimes), self.TIMEOUT + 20)
        # Real clients were served all along (how many fit in depends on the machine).
        self.assertGreaterEqual(len(served), 1)
        self.assertEqual([e for e in served if e], [])
        return {"peak": max(samples), "served": len(served),
                "lifetimes": f"{min(lifetimes):.2f}-{max(lifetimes):.2f}s"}

    def settled_rss(self, pid: int, closed: int) -> int:
        wait_for(lambda: self.log().count("close=sniff_timeout") >= closed,
                 "every attacker's access line")
        return settled_rss_kib(pid)

    def test_silentAndDribblingClientsClosedAtInspectTimeout(self) -> None:
        raise_file_limit(16384)
        digest = start_digest_process(self)
        running = self.switchyard(ATTACK_CONFIG, dead=free_port(), digest=digest.port)
        pid = running.process.pid
        for seed in range(20):  # warm up the served path
            traffic.exchange(self.port, 500, 2000, seed=seed)
        idle = settled_rss_kib(pid)
        crowd = self.SILENT + self.DRIBBLING
        first = self.attack(pid)
        after_first = self.settled_rss(pid, crowd)
        second = self.attack(pid)
        after_second = self.settled_rss(pid, 2 * crowd)
        self.report = (f"idle {idle} KiB; first crowd: peak +{first['peak'] - idle}, after "
                       f"+{after_first - idle}, closed after {first['lifetimes']}, "
                       f"{first['served']} real exchanges; second crowd: peak "
                       f"+{second['peak'] - idle}, after +{after_second - idle} KiB")
        print("\n" + self.report)
        # Python keeps some freed memory for reuse (a high-water mark), so
        # "near idle" is: a few MB above it, and no higher after a second crowd.
        self.assertLess(after_first - idle, 12 * 1024, self.report)
        self.assertLess(after_second - after_first, 3 * 1024, self.report)


if __name__ == "__main__" and sys.argv[1:2] == ["digest"]:
    asyncio.run(_serve_digest(int(sys.argv[2])))
