"""Start shadowsocks-libev with simple-obfs, and a websockets echo server, as test peers.

Built on L{tests.peers.start_process}: each program runs in its own process
group, so stopping ss-server or ss-local also stops the obfs plugin it
started as a child. ss-* print the plugin's log lines too, which is how
readiness is seen: the plugin listens on a port ss-* choose.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from tests.peers import PeerStartError, Running, free_port, start_process

PASSWORD = "switchyard-test"
METHOD = "aes-256-gcm"
READY_TIMEOUT = 10.0

# Replies "echo:" + each text message, so a test knows this server answered.
ECHO_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send("echo:" + message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1])):
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""


def wait_for_log(running: Running, text: str, timeout: float = READY_TIMEOUT) -> None:
    """Block until C{text} appears in the program's logs."""
    deadline = time.monotonic() + timeout
    while text not in running.log_text():
        if running.process.poll() is not None or time.monotonic() > deadline:
            raise PeerStartError(f"{text!r} never logged\n{running.log_text()}")
        time.sleep(0.05)


def _workdir(testcase: Any, name: str) -> str:
    path = os.path.abspath(os.path.join(testcase.mktemp(), name))
    os.makedirs(path)
    return path


def start_ss_server(testcase: Any, obfs: str) -> Running:
    """
    ss-server behind C{obfs-server} in mode C{obfs} (C{"http"} or C{"tls"}).
    The returned port is obfs-server's: the one clients (and switchyard)
    connect to.
    """
    port = free_port()
    argv = ["ss-server", "-s", "127.0.0.1", "-p", str(port), "-k", PASSWORD, "-m", METHOD,
            "-v", "--plugin", "obfs-server", "--plugin-opts", f"obfs={obfs}"]
    server = start_process(testcase, argv, port, _workdir(testcase, f"ss-server-{obfs}"))
    # obfs-server listening is not enough: it relays to ss-server's own port.
    wait_for_log(server, "tcp server listening at")
    return server


def start_ss_local(testcase: Any, server_port: int, obfs: str, host: str) -> Running:
    """
    ss-local (a SOCKS5 server on the returned port) whose C{obfs-local}
    plugin connects to 127.0.0.1:C{server_port} with C{obfs=MODE;obfs-host=HOST}.
    """
    socks = free_port()
    argv = ["ss-local", "-s", "127.0.0.1", "-p", str(server_port), "-l", str(socks),
            "-k", PASSWORD, "-m", METHOD, "-v", "--plugin", "obfs-local",
            "--plugin-opts", f"obfs={obfs};obfs-host={host}"]
    local = start_process(testcase, argv, socks, _workdir(testcase, f"ss-local-{obfs}"))
    # ss-local accepts SOCKS clients before its plugin listens.
    wait_for_log(local, "[simple-obfs] INFO: listening at")
    return local


def plugin_pids(running: Running) -> list[int]:
    """The process ids of a program's children (ss-*'s obfs plugin)."""
    pid = running.process.pid
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def process_gone(pid: int) -> bool:
    """Whether C{pid} has exited (a zombie waiting to be reaped counts)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def start_websocket_echo(testcase: Any) -> Running:
    """A real websockets server on a free port that answers "echo:" + each message."""
    port = free_port()
    return start_process(testcase, [sys.executable, "-c", ECHO_SERVER, str(port)], port,
                         _workdir(testcase, "websocket-echo"))


def websocket_exchange(uri: str, port: int, message: str, timeout: float = 10) -> str:
    """
    Connect a genuine websockets client to C{uri} (its host goes into the
    Host header) over 127.0.0.1:C{port}, send C{message}, return the reply.
    Blocking: it runs its own asyncio loop, so call it from a worker thread.
    """
    from websockets.asyncio.client import connect

    async def exchange() -> str:
        # proxy=None: websockets would otherwise honour *_proxy variables.
        async with connect(uri, host="127.0.0.1", port=port, proxy=None,
                           open_timeout=timeout) as ws:
            await ws.send(message)
            reply = await asyncio.wait_for(ws.recv(), timeout)
            return str(reply)

    return asyncio.run(exchange())
