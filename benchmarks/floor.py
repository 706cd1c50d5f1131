"""A featureless Python TCP forwarder: the floor for Python on the per-connection path.

    python benchmarks/floor.py LISTEN_PORT BACKEND_PORT

What every proxy on this path must do, and nothing more: one epoll loop,
accept4 in a batch per event, wait for the client's first bytes (as a
sniffing proxy must), connect to the one backend, send them, then copy
both ways (recv + send through one buffer) with half-close passed on, and
close both sockets at the end. No routes, no limits, no timeouts, no logs,
no error handling beyond dropping the connection. benchmarks/bench.py runs
it as the peer ``python-floor``; benchmarks/percall.py measures it beside
switchyard. It is a yardstick, not a product.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys

HOST = "127.0.0.1"
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_BUFFER = bytearray(65536)
_VIEW = memoryview(_BUFFER)


class Side:
    """One socket of a forwarded pair."""

    __slots__ = ("sock", "fd", "other", "unsent", "eof", "shut")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.other: Side = None  # type: ignore[assignment]
        self.unsent = b""  # for the other side, waiting for it to be writable
        self.eof = False  # this side sent its end of stream
        self.shut = False  # and it was passed on


def serve(listen_port: int, backend_port: int, report: object = None) -> None:
    poll = select.epoll()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, listen_port))
    listener.listen(4096)
    lfd = listener.fileno()
    poll.register(lfd, _IN)
    waiting: dict[int, socket.socket] = {}  # accepted, opening not read yet
    sides: dict[int, Side] = {}
    backend = (HOST, backend_port)

    def close(side: Side) -> None:
        for s in (side, side.other):
            sides.pop(s.fd, None)
            s.sock.close()

    def pump(src: Side) -> None:
        dst = src.other
        while True:
            try:
                n = src.sock.recv_into(_BUFFER)
            except BlockingIOError:
                return
            except OSError:
                close(src)
                return
            if n == 0:
                src.eof = True
                if dst.eof:
                    close(src)
                    return
                try:
                    dst.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    close(src)
                    return
                poll.modify(src.fd, 0)
                return
            try:
                sent = dst.sock.send(_VIEW[:n])
            except BlockingIOError:
                sent = 0
            except OSError:
                close(src)
                return
            if sent < n:
                src.unsent = bytes(_VIEW[sent:n])
                poll.modify(src.fd, 0)
                poll.modify(dst.fd, _OUT | (0 if dst.eof else _IN))
                return
            if n < len(_BUFFER):
                return

    def handle(side: Side, event: int) -> None:
        if event & _OUT:
            # Writable: what the other side had for this one.
            other = side.other
            data = other.unsent
            try:
                sent = side.sock.send(data) if data else 0
            except BlockingIOError:
                sent = 0
            other.unsent = data[sent:]
            if other.unsent:
                return
            poll.modify(side.fd, 0 if side.eof else _IN)
            poll.modify(other.fd, 0 if other.eof else _IN)
            return
        if event & (_IN | select.EPOLLHUP | select.EPOLLERR):
            pump(side)

    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        try:
            events = poll.poll(1)
        except InterruptedError:
            continue
        for fd, event in events:
            if fd == lfd:
                for _ in range(64):
                    try:
                        sock, _addr = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError:
                        break
                    sock.setblocking(False)
                    waiting[sock.fileno()] = sock
                    poll.register(sock.fileno(), _IN)
                continue
            client = waiting.pop(fd, None)
            if client is not None:
                try:
                    opening = client.recv(65536)
                except OSError:
                    opening = b""
                if not opening:
                    client.close()
                    continue
                peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                code = peer.connect_ex(backend)
                if code not in (0, errno.EINPROGRESS):
                    client.close()
                    peer.close()
                    continue
                a, b = Side(client), Side(peer)
                a.other, b.other = b, a
                sides[a.fd], sides[b.fd] = a, b
                b.unsent = b""
                a.unsent = opening  # for the backend, once it is connected
                poll.modify(a.fd, 0)
                poll.register(b.fd, _OUT)
                continue
            side = sides.get(fd)
            if side is None:
                continue
            try:
                handle(side, event)
            except OSError:
                if side.fd in sides:  # this connection failed: drop it, serve the others
                    close(side)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
    os._exit(0)
