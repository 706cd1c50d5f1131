"""A ``forwarded-tcpip`` channel to an agent, as the relay peer of one visitor's connection.

The switch relays a visitor with a peer that is a transport, a consumer of
the visitor's bytes and a producer of the agent's (see
L{switchyard.interfaces.IConnection.splice}). This channel is that peer,
with both directions of flow control mapped onto SSH channel windows:

* visitor to agent: bytes go out within the agent's window; when it is
  used up (or the agent's whole SSH connection is congested) the visitor's
  transport, registered as our producer, is paused until the agent adds
  window again;
* agent to visitor: we give the agent more window only while the visitor
  keeps up; when the visitor's transport pauses us the agent must stop
  after at most one window.

A visitor's half-close is the channel's EOF (sent once buffered bytes are
out); the agent's EOF is C{peer_eof}; the channel's end is C{peer_lost}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from switchyard.targets.tunnels.registry import ChannelRefused

if TYPE_CHECKING:
    from switchyard.targets.tunnels.link import TunnelLink

# How long a closing channel may wait for the agent's window to send what
# is still buffered before it is cut (a stuck agent-side service).
CLOSE_DRAIN_TIMEOUT = 30.0

_LOUD = (LogLevel.warn, LogLevel.error, LogLevel.critical)


@provider(ILogObserver)
def _warnings_only(event: dict[str, Any]) -> None:
    if event.get("log_level") in _LOUD:
        globalLogPublisher(event)


QUIET = Logger(observer=_warnings_only)
"""For conch's classes we subclass: their per-channel and per-packet info and
debug lines are dropped (our own lines say what happened), warnings and
errors still reach the log."""

OPENING, OPEN, CLOSED = "opening", "open", "closed"


@implementer(IPushProducer)
class TunnelChannel(SSHChannel):
    """A channel we open on an agent's connection for one visitor."""

    name = b"forwarded-tcpip"
    _log = QUIET

    def __init__(self, link: TunnelLink, connection: Any, release: Callable[[], None],
                 window: int, max_packet: int) -> None:
        super().__init__(localWindow=window, localMaxPacket=max_packet, conn=link)
        self.link = link
        self.connection: Any = connection  # None once the visitor no longer wants it
        self._release = release
        self.opened: defer.Deferred[TunnelChannel] = defer.Deferred(self._cancel_open)
        self.state = OPENING
        self.producer: Any = None  # the visitor's transport
        self._producer_paused = False
        self.paused = False  # the visitor cannot take more: no window for the agent
        self._eof_wanted = False  # the visitor's EOF, waiting for the buffer to go out
        self._eof_sent = False
        self._eof_received = False
        self._ended_by_us = False
        self._aborted = False
        self._drain_call: IDelayedCall | None = None

    def __repr__(self) -> str:
        return (f"<TunnelChannel {self.id} {self.state} on {self.link.description} "
                f"window {self.localWindowLeft}/{self.remoteWindowLeft} buffered {len(self.buf)}>")

    @property
    def buffered(self) -> int:
        """Bytes from the visitor waiting for the agent's window."""
        return len(self.buf)

    # -- the agent's side (conch calls these) -----------------------------

    def channelOpen(self, specificData: bytes) -> None:
        if self.connection is None:  # the visitor left while we waited
            self.state = OPEN
            self.abortConnection()
            return
        self.state = OPEN
        if self.buf:  # written before the agent answered
            pending, self.buf = self.buf, b""
            SSHChannel.write(self, pending)
        if self._eof_wanted and not self.buf:
            self._send_eof()
        self.opened.callback(self)

    def openFailed(self, reason: Any) -> None:
        self.state = CLOSED
        self._release()
        if self.connection is None:
            return
        self.connection = None
        if isinstance(reason, error.ConnectionLost) or self.link.lost:
            failure = Failure(error.ConnectionLost("the agent's connection was lost"))
        else:
            description, code = _refusal(reason)
            failure = Failure(ChannelRefused(f"refused ({code}): {description}", code))
        self.opened.errback(failure)

    def dataReceived(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.peer_data(data)
        self._give_window()

    def extReceived(self, dataType: int, data: bytes) -> None:
        # TCP channels carry no extended data; counted against the window
        # all the same, and given back.
        self._give_window()

    def eofReceived(self) -> None:
        self._eof_received = True
        if self.connection is not None:
            self.connection.peer_eof()

    def closeReceived(self) -> None:
        # The agent is done with the channel: nothing buffered can go now.
        self.buf = b""
        self.closing = 1
        self.link.sendClose(self)

    def closed(self) -> None:
        self.state = CLOSED
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        self.producer = None
        self._release()
        connection, self.connection = self.connection, None
        if connection is None:
            return
        if self._aborted:
            reason: Exception = error.ConnectionLost("the channel was aborted")
        elif self._eof_received and (self._eof_sent or self._ended_by_us):
            reason = error.ConnectionDone()
        elif self.link.lost:
            reason = error.ConnectionLost("the agent's connection was lost")
        elif self._eof_received or self._ended_by_us:
            reason = error.ConnectionDone()
        else:
            reason = error.ConnectionLost("the agent closed the channel without an end of "
                                          "stream")
        connection.peer_lost(Failure(reason))

    def addWindowBytes(self, data: int) -> None:
        # conch's, with the buffer sent past our own write (which takes
        # nothing more once the visitor's EOF is pending), then that EOF.
        self.remoteWindowLeft += data
        if not self.areWriting and not self.closing:
            self.areWriting = True
            self.startWriting()
        if self.buf:
            pending, self.buf = self.buf, b""
            SSHChannel.write(self, pending)
        if self._eof_wanted and not self.buf:
            self._send_eof()

    def stopWriting(self) -> None:
        self.update_producer()

    def startWriting(self) -> None:
        self.update_producer()

    def update_producer(self) -> None:
        """Pause the visitor while the agent's window is used up or its link congested."""
        producer = self.producer
        if producer is None:
            return
        pause = not self.areWriting or self.link.congested
        if pause != self._producer_paused:
            self._producer_paused = pause
            if pause:
                producer.pauseProducing()
            else:
                producer.resumeProducing()

    def _give_window(self) -> None:
        """Tell the agent it may send more, unless the visitor is not keeping up."""
        if self.paused or self.localClosed:
            return
        left = self.localWindowLeft
        if left < self.localWindowSize // 2:
            self.link.adjustWindow(self, self.localWindowSize - left)

    # -- the visitor's side: the relay peer -------------------------------

    def write(self, data: bytes) -> None:
        if self._eof_sent or self._eof_wanted or self.closing or self.state == CLOSED:
            return  # after our end of stream nothing more may go
        if self.state == OPENING:
            self.buf += data
            return
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """The visitor's half-close: the channel's EOF, after what is buffered."""
        if self._eof_sent or self._eof_wanted or self.state == CLOSED:
            return
        if self.buf or self.state == OPENING:
            self._eof_wanted = True
            return
        self._send_eof()

    def _send_eof(self) -> None:
        self._eof_wanted = False
        self._eof_sent = True
        self.link.sendEOF(self)

    def loseConnection(self) -> None:
        """End the channel once what is buffered is out (bounded by a timer): its end
        of stream, then the close, as a TCP connection's clean close is a FIN (a
        close alone reads as a cut stream at the other end)."""
        self._ended_by_us = True
        if self.state == OPENING:
            self._cancel_open(self.opened)
            return
        if self.state == CLOSED:
            return
        if not self.buf and not self._eof_sent and not self.localClosed:
            self._send_eof()
        super().loseConnection()
        if self.buf and self._drain_call is None:
            self._drain_call = self.link.clock.callLater(CLOSE_DRAIN_TIMEOUT, self._drain_expired)

    def _drain_expired(self) -> None:
        self._drain_call = None
        self.abortConnection()

    def abortConnection(self) -> None:
        """End the channel now, dropping what is buffered."""
        self._aborted = self._aborted or self.connection is not None
        self.buf = b""
        self.extBuf = []
        self.closing = 1
        self._eof_wanted = False
        if self.state == OPENING:
            self._cancel_open(self.opened)
            return
        if self.state == OPEN:
            self.link.sendClose(self)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self._producer_paused = False
        self.update_producer()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._give_window()

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- opening ----------------------------------------------------------

    def _cancel_open(self, _: defer.Deferred[TunnelChannel]) -> None:
        """The visitor left (or the open timed out) before the agent answered:
        the channel is closed as soon as it opens."""
        self.connection = None


def _refusal(reason: Any) -> tuple[str, int]:
    """(description, code) of conch's ConchError(description, code) for an open failure."""
    description, code = (tuple(getattr(reason, "args", ())) + (b"", 0))[:2]
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    # Agent-chosen text goes to logs: keep it short and printable.
    text = "".join(c if c.isprintable() else "?" for c in str(description).strip()[:200])
    return text or "no reason given", code if isinstance(code, int) else 0
