"""The relay between Twisted transports: flow control by producers, half-close
passed on, and a reset passed on as a reset.

Used where the fast path cannot be (TLS on either side, a responder's peer,
a tunnel channel, systems without splice(2), ``fast_path = false``). The
connection feeds it the client's bytes and the peer's events; this object
holds which direction has ended and how each side is closed.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.python.failure import Failure

_LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {on, 0 s}: close() resets


def _no_delay(transport: Any) -> None:
    """TCP_NODELAY on a relayed Twisted transport (see L{switchyard.relay.splice.no_delay}):
    TCP and TLS over TCP; others have no such option."""
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, NotImplementedError, OSError):
        pass


def _close(transport: Any, abort: bool) -> None:
    """Close a side: a reset when ``abort`` (the other side's stream was cut,
    and a FIN would pass it off as complete), else a clean close after what
    is buffered."""
    if not abort:
        transport.loseConnection()
        return
    # Twisted's abortConnection closes without shutdown(2), which still
    # sends a FIN: SO_LINGER 0 makes the close a reset.
    try:
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except (AttributeError, OSError):
        pass  # not a socket (a TLS layer's side): its abort is a reset of its own
    transport.abortConnection()


class TransportRelay:
    """Relay between the client's transport and a peer (see
    L{switchyard.interfaces.IConnection.splice} for what a peer offers)."""

    __slots__ = ("client", "peer", "client_done", "peer_done", "asked_tls_close")

    def __init__(self, client: Any, peer: Any) -> None:
        self.client = client
        self.peer = peer
        self.client_done = False  # the client's end of stream was passed on
        self.peer_done = False  # the peer's end of stream was passed on
        self.asked_tls_close = False  # we sent the TLS peer close_notify

    def start(self, client_ended: bool) -> None:
        """Wire the producers both ways; pass on a client end that came early."""
        client, peer = self.client, self.peer
        _no_delay(client)
        _no_delay(peer)
        peer.registerProducer(client, True)
        if IPushProducer.providedBy(peer):
            client.registerProducer(peer, True)
        if client_ended:
            self.client_ended()
        else:
            client.resumeProducing()

    @property
    def finished(self) -> bool:
        """Both directions have ended."""
        return self.client_done and self.peer_done

    def client_ended(self) -> None:
        if self.client_done:
            return
        self.client_done = True
        self._half_close(self.peer, producer_was_pushing=True)

    def peer_ended(self) -> None:
        if self.peer_done:
            return
        self.peer_done = True
        self._half_close(self.client,
                         producer_was_pushing=IPushProducer.providedBy(self.peer))

    def clean_end(self, reason: Failure) -> bool:
        """After our close_notify many TLS servers (nginx among them) close
        without answering theirs: that is the end we asked for, not a reset."""
        return self.asked_tls_close and isinstance(reason.value, error.ConnectionLost)

    def close_peer(self, abort: bool) -> None:
        _close(self.peer, abort)

    def close_client(self, abort: bool) -> None:
        _close(self.client, abort)

    def _half_close(self, sink: Any, producer_was_pushing: bool) -> None:
        """Pass an end of stream on to ``sink``, once its buffer is flushed."""
        # A paused producer left registered would stop the transport from
        # ever sending its FIN (FileDescriptor.doWrite resumes it instead).
        if producer_was_pushing:
            sink.unregisterProducer()
        if ISSLTransport.providedBy(sink):
            # Twisted's TLS transport cannot half-close: a bare FIN under TLS
            # reads as truncation. close_notify is TLS's half-close, and the
            # transport still delivers what the server sends after it.
            self.asked_tls_close = sink is self.peer
            sink.loseConnection()
        else:
            sink.loseWriteConnection()
