"""What both ends of a tunnel's SSH connection share: windows, congestion, keepalives, clean ends.

The tunnel server (L{switchyard.targets.tunnels.server}) and the built-in
agent (L{switchyard.targets.tunnels.agent}) each run conch on one side of
the same SSH connection, and relay channels the same way:

* a channel's window is given back by the channel itself, only while
  whatever it delivers to keeps up (conch refills it at once);
* when the SSH connection's own transport cannot take more, every channel
  pauses what feeds it (the TCP link is congested);
* keepalives (``keepalive@openssh.com``, want-reply) go out every interval,
  and a peer that leaves too many unanswered is dropped;
* a malformed message is a protocol error that disconnects, never a
  traceback, and how the connection ended is kept for the log line.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import connection, transport
from twisted.internet import error, task
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.targets.tunnels.channel import QUIET, TunnelChannel
from switchyard.wire.text import printable

log = Logger(namespace="switchyard.tunnel")

KEEPALIVE_REQUEST = b"keepalive@openssh.com"
# What an agent's TCP connection may hold unsent before every channel on it
# pauses its visitor. Twisted's default (64 KiB, two SSH packets) paused and
# resumed each visitor's socket every other packet: an epoll change each time.
LINK_BUFFER = 512 * 1024


def widen_buffer(tcp: Any) -> None:
    """Give an agent link's TCP transport room for several packets (see L{LINK_BUFFER})."""
    if isinstance(getattr(tcp, "bufferSize", None), int) and tcp.bufferSize < LINK_BUFFER:
        tcp.bufferSize = LINK_BUFFER
_MAX_TEXT = 100  # of peer-chosen text (user names, channel types) in log lines


def text(raw: bytes) -> str:
    """Peer-chosen bytes for a log line: printable, bounded."""
    shown = printable(raw[:_MAX_TEXT])
    return shown + "..." if len(raw) > _MAX_TEXT else shown


def address_text(address: IAddress) -> str:
    """``host:port`` (``[v6]:port``) of an address, or what it says of itself."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IPushProducer)
class TunnelLink(connection.SSHConnection):
    """The ssh-connection service of either end, as the channels' link.

    Subclasses call L{start_link} once the service runs and L{stop_link}
    when it stops, and say in L{keepalives_unanswered} who stopped answering.
    """

    _log = QUIET
    transport: Any  # a LinkTransport, once the service runs

    def __init__(self) -> None:
        super().__init__()
        self.lost = False  # the connection is gone (channels end as lost, not done)
        self.congested = False  # the TCP link is not keeping up
        self.unanswered = 0  # keepalives sent since the last answer
        self.answered = 0
        self.clock: Any = None
        self.description = ""
        self._keepalive: task.LoopingCall | None = None
        self._keepalive_count_max = 0
        self._producing = False

    def start_link(self, clock: Any, interval: float, count_max: int) -> None:
        """Watch the TCP link's congestion and start the keepalives."""
        self.clock = clock
        self._keepalive_count_max = count_max
        outer = self.transport.transport
        if hasattr(outer, "registerProducer") and getattr(outer, "producer", None) is None:
            # The link's send buffer full: every channel feeding it waits.
            outer.registerProducer(self, True)
            self._producing = True
        self._keepalive = task.LoopingCall(self._send_keepalive)
        self._keepalive.clock = clock
        self._keepalive.start(interval, now=False)

    def stop_link(self) -> None:
        self.lost = True
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None

    def release_producer(self) -> None:
        """Before the TCP connection is closed: a paused producer would hold its end."""
        if self._producing:
            self._producing = False
            outer = self.transport.transport
            if getattr(outer, "producer", None) is self:
                outer.unregisterProducer()

    # -- channel data: the window is the channel's to give back ----------

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        local, length = struct.unpack(">2L", packet[:8])
        self._deliver(local, length, packet[8:8 + length], None)

    def ssh_CHANNEL_EXTENDED_DATA(self, packet: bytes) -> None:
        local, kind, length = struct.unpack(">3L", packet[:12])
        self._deliver(local, length, packet[12:12 + length], kind)

    def _deliver(self, local: int, length: int, data: bytes, kind: int | None) -> None:
        channel = self.channels.get(local)
        if channel is None or len(data) != length:
            self.transport.protocol_error(f"data for unknown channel {local}")
            return
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            self.transport.protocol_error(f"{length} bytes on channel {local}, beyond its window")
            return
        channel.localWindowLeft -= length
        if kind is None:
            channel.dataReceived(data)
        else:
            channel.extReceived(kind, data)

    # -- the TCP link as a consumer ----------------------------------------

    def _congestion(self, congested: bool) -> None:
        self.congested = congested
        for channel in list(self.channels.values()):
            if isinstance(channel, TunnelChannel):
                channel.update_producer()

    def pauseProducing(self) -> None:
        self._congestion(True)

    def resumeProducing(self) -> None:
        self._congestion(False)

    def stopProducing(self) -> None:
        self._producing = False

    # -- keepalives ---------------------------------------------------------

    def _send_keepalive(self) -> None:
        if self.unanswered >= self._keepalive_count_max:
            if self._keepalive is not None and self._keepalive.running:
                self._keepalive.stop()
            self.keepalives_unanswered(self.unanswered)
            self.transport.abort("no answer to keepalives")
            return
        self.unanswered += 1
        d = self.sendGlobalRequest(KEEPALIVE_REQUEST, b"", wantReply=1)
        # Success or failure, any answer shows the peer is alive.
        d.addBoth(self._keepalive_answered)

    def _keepalive_answered(self, _: Any) -> None:
        self.unanswered = 0
        self.answered += 1

    def keepalives_unanswered(self, count: int) -> None:
        """Log that the peer left ``count`` keepalives unanswered (it is dropped next)."""


class LinkTransport:
    """Mixed into either end's SSH transport: clean ends, bounded errors, why it ended."""

    transport: Any  # TCP, or whatever carries the connection
    service: Any
    buf: bytes  # conch's: what was received and not read yet
    own_role = "server"  # how log lines name this end ...
    peer_role = "agent"  # ... and the other

    def start_transport(self) -> None:
        """From connectionMade, before conch's own."""
        self.peer_text = address_text(self.transport.getPeer())
        self.ended_by: str | None = None
        self._offset = 0  # of the next packet in conch's buf
        self._first: bytes | None = None  # its first block, decrypted (the length)

    def getPacket(self) -> bytes | None:
        """The next packet's payload from the received bytes, or None for more.

        Conch's, reading at an offset into its buffer rather than slicing the
        rest off after each packet: one read of the link can hold dozens of
        32 KiB packets, and conch would copy what follows each of them.
        """
        buf = self.buf
        offset = self._offset
        ciphers = self.currentEncryptions  # type: ignore[attr-defined]
        bs = ciphers.decBlockSize
        ms = ciphers.verifyDigestSize
        available = len(buf) - offset
        if available < bs:
            self._compact()
            return None
        first = self._first
        if first is None:
            # Decrypted once: the cipher is a stream.
            first = self._first = ciphers.decrypt(buf[offset:offset + bs])
        length, padding = struct.unpack("!LB", first[:5])
        if length > 1048576 or (length + 4) % bs or padding < 4 or padding > length - 1:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                                f"bad packet length {length}".encode())
            return None
        if available < length + 4 + ms:
            self._compact()
            return None
        end = offset + 4 + length
        packet = first + ciphers.decrypt(memoryview(buf)[offset + bs:end])
        self._first = None
        if ms and not ciphers.verify(self.incomingPacketSequence,  # type: ignore[attr-defined]
                                     packet, buf[end:end + ms]):
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        self._offset = end + ms
        payload = packet[5:-padding]
        incoming = self.incomingCompression  # type: ignore[attr-defined]
        if incoming:
            try:
                payload = incoming.decompress(payload)
            except Exception:
                self.sendDisconnect(transport.DISCONNECT_COMPRESSION_ERROR,
                                    b"compression error")
                return None
        self.incomingPacketSequence += 1  # type: ignore[attr-defined]
        return payload

    def _compact(self) -> None:
        """Drop the packets read: the buffer starts at the next one."""
        if self._offset:
            self.buf = self.buf[self._offset:]
            self._offset = 0

    def log_prefix(self) -> str:
        """Who this connection is, at the head of its log lines."""
        return self.peer_text

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        try:
            super().dispatchMessage(messageNum, payload)  # type: ignore[misc]
        except (struct.error, KeyError, IndexError, ValueError, UnicodeError) as e:
            self.protocol_error(f"malformed message {messageNum} ({type(e).__name__})")
        except Exception:
            log.failure("{who}: error handling message {n}", who=self.log_prefix(),
                        n=messageNum)
            self.abort("error (logged)")

    def protocol_error(self, what: str) -> None:
        log.warn("{who}: the {peer} broke the protocol: {what}; disconnecting",
                 who=self.log_prefix(), peer=self.peer_role, what=what)
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, what.encode("utf-8"))

    def _release(self) -> None:
        if isinstance(self.service, TunnelLink):
            self.service.release_producer()

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self._release()
        if self.ended_by is None:
            said = printable(desc if isinstance(desc, bytes) else b"")
            self.ended_by = f"{self.own_role}: {said}"
        super().sendDisconnect(reason, desc)  # type: ignore[misc]

    def ssh_DISCONNECT(self, packet: bytes) -> None:
        self._release()
        super().ssh_DISCONNECT(packet)  # type: ignore[misc]

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # The peer's goodbye (ssh exiting says "disconnected by user"): an
        # ordinary end, recorded for the log line, not an error.
        if self.ended_by is None:
            self.ended_by = f"{self.peer_role}: {text(description)}"

    def abort(self, why: str) -> None:
        """Drop the TCP connection now: a dead peer would never take a goodbye."""
        if self.ended_by is None:
            self.ended_by = why
        self._release()
        outer = self.transport
        if hasattr(outer, "abortConnection"):
            outer.abortConnection()
        else:
            outer.loseConnection()

    def note_lost(self, reason: Failure | None) -> None:
        """From connectionLost: how it ended, if nothing said so before."""
        if self.ended_by is None and reason is not None and not reason.check(
                error.ConnectionDone):
            self.ended_by = reason.getErrorMessage()
