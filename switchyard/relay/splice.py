"""The zero-copy relay: splice(2) through a pipe per direction, driven by the reactor."""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import os
import select
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import error, tcp
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.deadlines import Deadlines
from switchyard.interfaces import IRelayBooks
from switchyard.relay import internals
from switchyard.relay import reactor as _reactor_module

SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "splice") and hasattr(os, "pipe2")

# A bigger pipe moves more per syscall; it is also the most one direction
# holds in memory (pages are only pinned while bytes sit in the pipe).
PIPE_SIZE = 1 << 20
# Bytes one direction may move per reactor event, so that one busy
# connection does not starve the others sharing the reactor.
_BUDGET = 4 * PIPE_SIZE
# Reads are copied through this process-wide buffer until one fills it;
# then that direction splices, until a splice moves less than this again.
COPY_SIZE = 16 * 1024
_COPY_BUFFER = bytearray(COPY_SIZE)
_COPY_VIEW = memoryview(_COPY_BUFFER)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_EMPTY = memoryview(b"")
_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {1, 0}: close() resets
_DONE = Failure(error.ConnectionDone())
_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)
# A hang-up or an error: handled by the descriptor itself on switchyard's reactor.
_BROKEN = getattr(select, "EPOLLHUP", 16) | getattr(select, "EPOLLERR", 8)
_LOST = Failure(error.ConnectionLost())
log = Logger(namespace="switchyard.relay.splice")
_ABORTED = Failure(error.ConnectionAborted())


def _plain(transport: Any) -> bool:
    """A bare, open TCP or UNIX stream socket transport with nothing of Twisted's pending."""
    # tcp.Connection covers tcp.Server/Client and unix.Server/Client; TLS
    # wrappers, ProtocolWrapper and the echo loopback are other classes.
    return (isinstance(transport, tcp.Connection)
            and not getattr(transport, "TLS", False)
            and bool(transport.connected)
            and not transport.disconnecting
            and not transport.disconnected
            and internals.writes_open(transport)
            and transport.producer is None
            # (Always a stream socket: Twisted's datagram ports are other
            # classes. socket.type would cost an enum conversion per call.)
            and getattr(transport, "socket", None) is not None)


def can_splice(client_transport: Any, peer_transport: Any = None) -> bool:
    """True when both ends are plain sockets this platform can splice between
    (without ``peer_transport``: when the client is, for a bare peer socket),
    and this Twisted has what the fast path needs (L{internals.check})."""
    return (SUPPORTED and _plain(client_transport)
            and (peer_transport is None or _plain(peer_transport))
            and internals.check().fast_path)


def no_delay(sock: socket.socket) -> None:
    """Send each write at once (TCP_NODELAY), as HAProxy and nginx do.

    With Nagle's algorithm a relay holds a small write back until the
    previous one is acknowledged: the second part of a message the peer is
    waiting for then waits for its delayed ACK (40 ms on Linux). A unix
    socket has no such option: nothing to do.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class _SideError(Exception):
    """An I/O error on one socket: the relay ends as that side's reset."""

    def __init__(self, side: _Socket, error: OSError) -> None:
        super().__init__(side.role, error)
        self.side = side
        self.error = error


@implementer(IReadDescriptor, IWriteDescriptor)
class _Socket:
    """One spliced socket, registered with the reactor in its transport's place.

    The epoll reactor keeps one selectable per fd, so this one object is
    both the reader (the socket is the source of ``outgoing``) and the
    writer (the destination of ``incoming``).
    """

    __slots__ = ("relay", "role", "transport", "sock", "fd", "reading", "writing",
                 "outgoing", "incoming", "closed")
    outgoing: _Direction
    incoming: _Direction

    def __init__(self, relay: SpliceRelay, role: str, transport: Any,
                 sock: socket.socket | None = None,
                 closed: Callable[[Failure], None] | None = None) -> None:
        self.relay = relay
        self.role = role  # "client" or "backend": names the reset in the access log
        # A Twisted transport whose socket the relay borrows, or None for a
        # bare socket the relay owns (closed() is then told of its end).
        self.transport = transport
        self.sock: socket.socket = transport.socket if sock is None else sock
        self.closed = closed
        self.fd = self.sock.fileno()
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"SpliceRelay,{self.role}"

    def doRead(self) -> None:
        self.relay._pump(self.outgoing)

    def doWrite(self) -> None:
        self.relay._pump(self.incoming)

    def on_event(self, event: int) -> None:
        """An event from L{switchyard.relay.reactor} (no Twisted wrapping):
        readable and/or writable is the same as doRead then doWrite; a
        hang-up or an error is read or written into, which tells how the
        side ended (an end of stream, or the socket's error)."""
        try:
            if event == _EPOLLIN:
                d = self.outgoing
                if not (d.bulk or d.head or d.pending or d.eof):
                    # The common case, a small message to copy across, done
                    # here in one frame: what _pump would do, call by call.
                    self.relay._copy_message(d)
                    return
            elif event & _BROKEN:
                event = (_EPOLLIN if self.reading else 0) | (_EPOLLOUT if self.writing else 0)
                if not event:
                    self.relay._lost(self, _LOST)
                    return
            if event & _EPOLLIN:
                self.relay._pump(self.outgoing)
            if event & _EPOLLOUT:
                self.relay._pump(self.incoming)
        except Exception:
            # _pump turns socket errors into the relay's end; anything else
            # is a bug, which must not leave the sockets half-handled.
            log.failure("splice relay: unexpected error")
            self.relay._fail("error", "splice relay: unexpected error (logged)")

    def connectionLost(self, reason: Failure) -> None:
        # The reactor only calls this for a hang-up or error seen while the
        # socket was registered for writing alone, or at shutdown; it has
        # already dropped the registrations.
        self.reading = self.writing = False
        self.relay._lost(self, reason)

    def close(self, abort: bool) -> None:
        """Close the socket (a reset if ``abort``) and tell its owner, at once."""
        reason = _ABORTED if abort else _DONE
        if self.transport is not None:
            # What the reactor itself calls on a transport whose connection
            # ended: it closes the socket (a reset for ConnectionAborted) and
            # calls the protocol's connectionLost. The transport is not
            # registered with the reactor, so nothing else can reach it.
            self.transport.connectionLost(reason)
            return
        if abort:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.sock.close()
        if self.closed is not None:
            self.closed(reason)


# Empty pipes shared by every relay of the process, reused before new ones.
_SPARE_PIPES: list[tuple[int, int, int]] = []
_MAX_SPARE_PIPES = 64


class _Direction:
    """Bytes from ``src`` to ``dst``: first ``head`` (Twisted's unsent buffer), then the pipe."""

    __slots__ = ("src", "dst", "inbound", "head", "pipe_r", "pipe_w", "capacity", "pending",
                 "eof", "shut", "bulk")

    def __init__(self, src: _Socket, dst: _Socket, inbound: bool, head: bytes) -> None:
        self.src = src
        self.dst = dst
        self.inbound = inbound  # client -> peer: counted as bytes_in
        self.head = memoryview(head) if head else _EMPTY
        self.pipe_r = -1
        self.pipe_w = -1
        self.capacity = 0
        self.pending = 0  # bytes in the pipe
        self.eof = False  # src sent its end of stream
        self.shut = False  # and dst's write side was shut down after the last byte
        self.bulk = False  # splicing (big reads) rather than copying (small ones)

    @property
    def backlog(self) -> bool:
        return bool(self.head) or self.pending > 0

    def open_pipe(self) -> None:
        if _SPARE_PIPES:
            self.pipe_r, self.pipe_w, self.capacity = _SPARE_PIPES.pop()
            return
        # Made on first use, so held idle connections cost no pipes.
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            # Over pipe-max-size or the user's pipe quota: the default will do.
            self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)

    def recycle_pipe(self) -> None:
        """At the end of a relay: keep the pipe for the next one if it is empty."""
        self.release_pipe()
        self.close_pipe()  # what release_pipe kept (bytes left, or the pool is full)

    def release_pipe(self) -> None:
        """Give back an empty pipe: only directions with bytes in flight hold one,
        so thousands of quiet connections do not hold two pipes (4 fds) each."""
        if self.pipe_r < 0 or self.pending:
            return
        if len(_SPARE_PIPES) < _MAX_SPARE_PIPES:
            _SPARE_PIPES.append((self.pipe_r, self.pipe_w, self.capacity))
            self.pipe_r = self.pipe_w = -1
        else:
            self.close_pipe()

    def close_pipe(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1
        self.pending = 0


class SpliceRelay:
    """Relay a client and a peer socket both ways, owning both until the end.

    The peer is a Twisted transport, or a bare connected socket (from
    L{DirectConnect}). L{start} takes the sockets over: what the transports
    had not sent yet, and ``peer_head`` (PROXY header and opening), go first.
    Small reads are copied, big ones spliced through a pipe. When both
    directions have ended (half-close passed on each way) both sockets are
    closed at once, a reset if bytes were lost; the transports' protocols
    get C{connectionLost} as usual, a bare peer's owner ``peer_closed``,
    after C{connection.relay_ended} said why.
    """

    __slots__ = ("reactor", "connection", "client", "peer", "_peer_head", "done", "_tuned",
                 "_now")

    def __init__(self, reactor: Any, connection: IRelayBooks, client_transport: Any,
                 peer_transport: Any = None, *, peer_socket: socket.socket | None = None,
                 peer_head: bytes = b"",
                 peer_closed: Callable[[Failure], None] | None = None,
                 client_socket: Any = None,
                 client_closed: Callable[[Failure], None] | None = None) -> None:
        """The peer is a transport, or a bare connected ``peer_socket`` that
        the relay owns: ``peer_head`` is sent to it first, and
        ``peer_closed`` is called once the relay has closed it. Likewise the
        client: a transport, or (``client_transport`` None) a bare
        ``client_socket`` from switchyard's accept (TCP_NODELAY already
        set, inherited from the listening socket), ``client_closed`` told of
        its end."""
        self.reactor = reactor
        self.connection = connection
        self.client = _Socket(self, "client", client_transport, client_socket, client_closed)
        self.peer = _Socket(self, "backend", peer_transport, peer_socket, peer_closed)
        self._peer_head = peer_head
        self.done = False
        # switchyard's reactor hands registrations over by fd, changes them
        # with one epoll_ctl, and forgets them when the socket is closed.
        self._tuned = hasattr(reactor, "set_interest")
        self._now = reactor.seconds

    def start(self) -> SpliceRelay:
        """Take both sockets over from their transports and begin relaying."""
        for side in (self.client, self.peer):
            if self._tuned:
                # Whatever is registered on the fd (the transport, or the
                # connect of a bare socket) is now this side, as it is.
                side.reading, side.writing = self.reactor.adopt(side.fd, side)
            elif side.transport is not None:
                # Unregister Twisted's selectables before registering ours:
                # the reactor keys registrations by fd.
                side.transport.stopReading()
                side.transport.stopWriting()
        if self.client.transport is not None:
            no_delay(self.client.sock)
        no_delay(self.peer.sock)
        to_peer = self._peer_head
        self._peer_head = b""
        if self.peer.transport is not None:
            to_peer = internals.take_unsent(self.peer.transport) + to_peer
        to_client = (b"" if self.client.transport is None
                     else internals.take_unsent(self.client.transport))
        self.client.outgoing = self.peer.incoming = _Direction(self.client, self.peer, True,
                                                               to_peer)
        self.peer.outgoing = self.client.incoming = _Direction(self.peer, self.client, False,
                                                               to_client)
        # The heads usually fit the socket buffers at once: sending them now
        # saves registering for writability, and a poll round.
        for d in (self.client.outgoing, self.peer.outgoing):
            if d.head:
                try:
                    self._drain(d)
                except _SideError as e:
                    self._fail(f"{e.side.role}_reset", e.error.strerror or str(e.error))
                    return self
        self._sync()
        return self

    def stop(self, reason: str | None = None, detail: str = "") -> None:
        """End the relay now (idle timeout, shutdown): close both sockets."""
        if self.done:
            return
        if reason is not None:
            self.connection.relay_ended(reason, detail)
        # Bytes still in flight would be lost: a reset then tells each end
        # the stream is truncated, where a FIN would pass it off as complete.
        truncated = self.client.incoming.backlog or self.peer.incoming.backlog
        self._teardown()
        self._hand_back(abort=truncated)

    # -- the pump ---------------------------------------------------------

    def _copy_message(self, d: _Direction) -> None:
        """``d.src`` is readable and ``d`` holds nothing (copy mode): copy one
        read across. A read that leaves nothing to wait for (the usual
        message: read, sent whole) changes no registration; anything else
        goes on in L{_pump}."""
        if self.done:
            return
        try:
            n = self._copy(d)
        except _SideError as e:
            self._fail(f"{e.side.role}_reset", e.error.strerror or str(e.error))
            return
        if n is None or (0 < n < COPY_SIZE and not d.head):
            return  # nothing read now; or read, sent whole, src empty: nothing to change
        if n == COPY_SIZE:
            d.bulk = True  # a full buffer: more may follow, splice it
        self._pump(d)  # an end of stream to pass on, or bytes dst could not take yet

    def _pump(self, d: _Direction) -> None:
        if self.done:
            return  # a stale event from the batch that ended the relay
        try:
            self._move(d)
        except _SideError as e:
            self._fail(f"{e.side.role}_reset", e.error.strerror or str(e.error))
            return
        except OSError as e:  # no pipe to be had (EMFILE, ENFILE, ENOMEM)
            self._fail("error", f"splice relay: {e.strerror or e}")
            return
        if self.client.outgoing.shut and self.peer.outgoing.shut:
            self._finish()
        else:
            self._sync()

    def _move(self, d: _Direction) -> None:
        moved = 0
        while self._drain(d):
            if d.eof:
                if not d.shut:
                    # The last end of stream needs no shutdown(2): the relay
                    # is over, and closing the socket sends the FIN.
                    if not d.dst.outgoing.shut:
                        try:
                            d.dst.sock.shutdown(socket.SHUT_WR)
                        except OSError as e:
                            raise _SideError(d.dst, e)
                    d.shut = True
                return
            if moved >= _BUDGET:
                return  # the source stays registered: the reactor comes back
            if not d.bulk:
                n = self._copy(d)
                if n is None:
                    return  # src has nothing more for now
                if n == 0:
                    continue  # end of stream: passed on once dst has it all
                if n < COPY_SIZE:
                    # Less than the buffer: src is empty now, and the reactor
                    # says when it has more (a failing read saved).
                    return
                d.bulk = True  # a full buffer: more may follow, splice it
                moved += n
                continue
            n = self._fill(d)
            if n is None:
                d.release_pipe()  # drained, and src has nothing more for now
                return
            moved += n
            if 0 < n < d.capacity:
                # src had less than a pipeful: it is empty now, and the
                # reactor says when it has more (one failing splice saved).
                d.bulk = n >= COPY_SIZE
                if self._drain(d):
                    d.release_pipe()
                return
        # dst is full: _sync stops reading src until dst is writable.

    def _copy(self, d: _Direction) -> int | None:
        """Small reads are copied (recv + send, the bytes never leave C): for a
        few hundred bytes that is cheaper than two splices and a pipe."""
        try:
            n = d.src.sock.recv_into(_COPY_BUFFER)
        except BlockingIOError:
            return None
        except OSError as e:
            raise _SideError(d.src, e)
        if n == 0:
            d.eof = True
            return 0
        self._count(d, n)
        try:
            sent = d.dst.sock.send(_COPY_VIEW[:n])
        except BlockingIOError:
            sent = 0
        except OSError as e:
            raise _SideError(d.dst, e)
        if sent < n:
            d.head = memoryview(_COPY_BUFFER[sent:n])  # a copy: the buffer is shared
        return n

    def _fill(self, d: _Direction) -> int | None:
        """Splice what src has into the (empty) pipe; None when it has nothing now."""
        if d.pipe_w < 0:
            d.open_pipe()
        try:
            n = os.splice(d.src.fd, d.pipe_w, d.capacity, flags=_FLAGS)
        except BlockingIOError:
            return None
        except OSError as e:
            raise _SideError(d.src, e)
        if n == 0:
            d.eof = True
            return 0
        d.pending += n
        self._count(d, n)
        return n

    def _count(self, d: _Direction, n: int) -> None:
        """``n`` bytes read from d.src: the access log's counts, the idle timer's clock."""
        books = self.connection
        if d.inbound:
            books.bytes_in += n
        else:
            books.bytes_out += n
        books.last_activity = self._now()

    def _drain(self, d: _Direction) -> bool:
        """Send the head, then the pipe, to dst; False when dst cannot take more now."""
        dst = d.dst
        try:
            while d.head:
                n = dst.sock.send(d.head)
                d.head = d.head[n:] if n < len(d.head) else _EMPTY
            while d.pending:
                n = os.splice(d.pipe_r, dst.fd, d.pending, flags=_FLAGS)
                if n == 0:
                    # Cannot happen while we hold the pipe's write end; an
                    # error beats polling a writable socket forever.
                    raise OSError(errno.EIO, "splice to the socket made no progress")
                d.pending -= n
        except BlockingIOError:
            return False
        except OSError as e:
            raise _SideError(dst, e)
        return True

    def _sync(self) -> None:
        """Register each socket for exactly what it is waiting for."""
        for side in (self.client, self.peer):
            out = side.outgoing
            incoming = side.incoming
            # (Direction.backlog, inline: this runs at every change.)
            want_read = not (out.eof or out.head or out.pending)
            want_write = bool(incoming.head or incoming.pending)
            if self._tuned:
                if want_read != side.reading or want_write != side.writing:
                    side.reading, side.writing = want_read, want_write
                    self.reactor.set_interest(side, side.fd, want_read, want_write)
                continue
            if want_read != side.reading:
                side.reading = want_read
                if want_read:
                    self.reactor.addReader(side)
                else:
                    self.reactor.removeReader(side)
            if want_write != side.writing:
                side.writing = want_write
                if want_write:
                    self.reactor.addWriter(side)
                else:
                    self.reactor.removeWriter(side)

    # -- the end ----------------------------------------------------------

    def _finish(self) -> None:
        for side in (self.client, self.peer):
            if side.transport is not None:
                # Both directions were shut down already: Twisted's
                # shutdown(2) before close would be a wasted system call.
                internals.close_without_shutdown(side.transport)
        self._teardown()
        self.connection.relay_ended("normal")
        self._hand_back(abort=False)

    def _fail(self, reason: str, detail: str) -> None:
        if self.done:
            return
        self._teardown()
        self.connection.relay_ended(reason, detail)
        self._hand_back(abort=True)

    def _lost(self, side: _Socket, reason: Failure) -> None:
        if self.done:
            return
        try:
            code = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            code = 0
        if code:
            self._fail(f"{side.role}_reset", os.strerror(code))
        else:
            # No socket error: the reactor itself is letting go of its
            # descriptors (disconnectAll at shutdown).
            self._fail("shutdown", reason.getErrorMessage())

    def _teardown(self) -> None:
        self.done = True
        for side in (self.client, self.peer):
            if self._tuned:
                # _hand_back closes the socket next: that ends its epoll
                # registration without an epoll_ctl.
                self.reactor.forget(side.fd)
            else:
                if side.reading:
                    self.reactor.removeReader(side)
                if side.writing:
                    self.reactor.removeWriter(side)
            side.reading = side.writing = False
            if side.outgoing.pipe_r >= 0:  # most relays never needed one
                side.outgoing.recycle_pipe()

    def _hand_back(self, abort: bool) -> None:
        # Both directions are over (or given up): close the sockets now, the
        # peer first, so the connection hears of the client's end last.
        try:
            self.peer.close(abort)
        finally:
            try:
                self.client.close(abort)
            finally:
                self._unlink()

    def _unlink(self) -> None:
        """Cut the relay's reference cycles (relay and sides, sides and
        directions): then all of it is freed at once by reference counting,
        and thousands of relays a second leave the garbage collector nothing
        to do (it took a tenth of the process's time). A stale call on a
        side still finds its relay, which is done and ignores it."""
        for side in (self.client, self.peer):
            side.closed = None
            # (Each direction is one side's outgoing and the other's incoming.)
            d = getattr(side, "outgoing", None)  # none if start() failed early
            if d is not None:
                d.src = d.dst = None  # type: ignore[assignment]
        self.client = self.peer = None  # type: ignore[assignment]


# connect(2)'s answers for "not yet": the first call's, and a repeated call's.
_IN_PROGRESS = frozenset((errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN))


@functools.lru_cache(maxsize=256)
def _loopback(host: str) -> bool:
    """Whether ``host`` (an IP address) is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@implementer(IWriteDescriptor)
class DirectConnect:
    """A non-blocking connect(2) to an IP address, for a relay that will splice.

    No Twisted transport, connector, factory or Deferred is made for the
    peer: the relay takes the bare socket. ``done`` is called exactly once:
    with the connected socket and ``None``, or with ``None`` and the
    failure: a ``ConnectError`` subclass as Twisted's TCP connect gives,
    ``TimeoutError`` when ``deadlines`` (whose expire() calls L{expired})
    says time is up, or ``CancelledError`` (L{cancel}).

    On switchyard's reactor a socket that waited for its connect is handed
    over still registered for writing: the relay adopts that registration
    (one connected within the call, on loopback, is not registered yet).
    A socket no relay takes must be closed with L{close_socket}.
    """

    __slots__ = ("reactor", "sock", "address", "done", "timer", "registered")

    def __init__(self, reactor: Any, family: int, address: tuple[Any, ...],
                 deadlines: Deadlines,
                 done: Callable[[socket.socket | None, Failure | None], None]) -> None:
        self.reactor = reactor
        self.address = address
        self.done: Callable[[socket.socket | None, Failure | None], None] | None = done
        self.timer: Any = None
        self.registered = False
        try:
            self.sock = internals.raw_socket(family, None, socket.SOCK_NONBLOCK
                                             | socket.SOCK_CLOEXEC)
        except OSError as e:  # EMFILE, ENFILE, ENOBUFS: a failed connect like any other
            self.sock = None  # type: ignore[assignment]
            self._end(False, error.ConnectError(e.errno, f"no socket: {e.strerror or e}"))
            return
        code = self.sock.connect_ex(address)
        if code in _IN_PROGRESS and _loopback(address[0]):
            # On loopback the handshake is done within connect(2) itself:
            # asked again at once, rather than a poll round later.
            code = self.sock.connect_ex(address)
            if code == errno.EISCONN:
                code = 0
        if code == 0:
            self._end(True)
        elif code in _IN_PROGRESS:
            self.registered = True
            reactor.addWriter(self)
            self.timer = deadlines.add(self)  # expired() after deadlines.length
        else:
            self._end(False, error.getConnectError((code, os.strerror(code))))

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "DirectConnect"

    def on_event(self, event: int) -> None:
        """Writable, from L{switchyard.relay.reactor}."""
        try:
            self.doWrite()
        except Exception:
            log.failure("direct connect: unexpected error")
            self._end(False, error.ConnectError(string="unexpected error (logged)"))

    def doWrite(self) -> None:
        # Asked again, as Twisted's TCP client does: a writable event may be
        # a stale one meant for an earlier socket with the same fd number.
        code = self.sock.connect_ex(self.address)
        if code in (0, errno.EISCONN):
            self._end(True)
        elif code not in _IN_PROGRESS:
            self._end(False, error.getConnectError((code, os.strerror(code))))

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw a hang-up or an error (a refused connect), or is
        # shutting down; it dropped the registration. Never a success.
        self.registered = False
        try:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            code = e.errno or errno.EIO
        if code:
            self._end(False, error.getConnectError((code, os.strerror(code))))
        else:
            self._end(False, error.ConnectError(string=reason.getErrorMessage()))

    def cancel(self) -> None:
        """Give up (the client left): closes the socket; ``done`` hears CancelledError."""
        self._end(False, CancelledError())

    def expired(self) -> None:
        """The connect timeout: give up."""
        self.timer = None
        self._end(False, error.TimeoutError(string="connect timed out"))

    def _end(self, ok: bool, failure: Any = None) -> None:
        done, self.done = self.done, None
        if done is None:
            return
        if self.registered:
            self.registered = False
            if not (ok and hasattr(self.reactor, "adopt")):
                self.reactor.removeWriter(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not ok:
            if self.sock is not None:
                self.sock.close()
            done(None, failure if isinstance(failure, Failure) else Failure(failure))
            return
        try:
            done(self.sock, None)
        except Exception:
            log.failure("direct connect: the connected socket's taker failed")
            # Unless a relay took it over, the socket is nobody's now: it
            # must not stay registered (a connected socket is always
            # writable) nor open.
            fd = self.sock.fileno()
            owned = any(d is not self and d.fileno() == fd
                        for d in [*self.reactor.getReaders(), *self.reactor.getWriters()])
            if self in self.reactor.getWriters():
                self.reactor.removeWriter(self)
            if not owned:
                self.sock.close()


def close_socket(reactor: Any, sock: socket.socket) -> None:
    """Close a socket from L{DirectConnect} that no relay took."""
    forget = getattr(reactor, "forget", None)
    if forget is not None:
        forget(sock.fileno())
    sock.close()


# Their plain events skip Twisted's per-event logging context (switchyard.relay.reactor).
_reactor_module.DIRECT.update((_Socket, DirectConnect))
