"""The TLS engine of a termination: a pyOpenSSL memory BIO between the client's
ciphertext (the outer connection's peer) and a nested connection's plaintext.

The engine is ours rather than Twisted's TLSMemoryBIOProtocol so that a
client's close_notify is a half-close: the backend's response still reaches
the client, and switchyard's own close_notify follows the backend's end of
stream. Every ending reaches both connections exactly once: the outer one
hears its peer is gone (L{TLSLayer.end_outer}), the inner one that its
transport is (L{TLSLayer.end_inner}); a reset on either side is a reset on
the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet import error
from twisted.python.failure import Failure

from switchyard.targets.tls.settings import Contexts, ssl_reason


class TLSLayer:
    """A pyOpenSSL server engine between the client's ciphertext and the inner connection."""

    def __init__(self, contexts: Contexts, outer: Any) -> None:
        self.outer = outer
        self.inner: Any = None  # the nested connection, set once it is made
        self.outer_ended = False
        self.tls = SSL.Connection(contexts.default, None)
        self.tls.set_accept_state()
        self.handshake_done = False
        self.pending: list[bytes] = []  # plaintext written before the handshake ended
        self.sent_close_notify = False
        self.inner_lost = False
        self.ciphertext = _CiphertextSide(self)
        self.plaintext = _PlaintextSide(self)

    # -- ciphertext from the client ---------------------------------------

    def feed(self, data: bytes) -> None:
        self.tls.bio_write(data)
        if not self.handshake_done:
            try:
                self.tls.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error as e:
                self._flush()  # the alert tells the client why
                self.inner.close("tls_handshake_failed", ssl_reason(e))
                return
            self.handshake_done = True
            self.inner.learn(self.session_facts())
            for chunk in self.pending:
                self._send(chunk)
            self.pending = []
        while not self.inner.closing:
            try:
                plaintext = self.tls.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # close_notify: the client has finished sending, and still
                # wants the answer. A half-close, not the end.
                self.inner.readConnectionLost()
                break
            except SSL.Error as e:
                self._flush()
                self.inner.close("tls_error", ssl_reason(e))
                return
            self.inner.dataReceived(plaintext)
        self._flush()

    def session_facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "tls_terminated": True,
            "tls_version": self.tls.get_protocol_version_name(),
            "tls_cipher": self.tls.get_cipher_name(),
        }
        name = self.tls.get_servername()
        facts["sni"] = name.decode("ascii", "replace") if name else None
        alpn = self.tls.get_alpn_proto_negotiated()
        if alpn:
            facts["alpn"] = alpn.decode("ascii", "replace")
        peer = self.tls.get_peer_certificate()
        if peer is not None:
            subject = peer.get_subject()
            facts["client_subject"] = ",".join(
                f"{k.decode()}={v.decode('utf-8', 'replace')}" for k, v in subject.get_components())
            facts["client_cn"] = subject.CN
        return facts

    # -- plaintext from the inner switch ----------------------------------

    def send(self, data: bytes) -> None:
        if not self.handshake_done:
            self.pending.append(data)
            return
        self._send(data)
        self._flush()

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.tls.send(view[:16384])
            except SSL.Error as e:
                self.inner.close("tls_error", ssl_reason(e))
                return
            view = view[n:]

    def close_notify(self) -> None:
        if self.sent_close_notify or not self.handshake_done:
            return
        self.sent_close_notify = True
        try:
            self.tls.shutdown()
        except SSL.Error:
            pass
        self._flush()

    def _flush(self) -> None:
        chunks = []
        while True:
            try:
                chunks.append(self.tls.bio_read(65536))
            except SSL.WantReadError:
                break
        if chunks:
            self.outer.peer_data(b"".join(chunks))

    # -- endings: each reaches its connection once -------------------------

    def end_inner(self, reason: Failure) -> None:
        """The inner connection's transport is gone: told a turn later, as a
        transport reports its end, never from inside the call that ended it."""
        if not self.inner_lost:
            self.inner_lost = True
            self.outer.reactor.callLater(0, self.inner.connectionLost, reason)

    def end_outer(self, reason: Failure) -> None:
        """The outer connection's peer (this layer) is gone."""
        if not self.outer_ended:
            self.outer_ended = True
            self.outer.peer_lost(reason)


class _CiphertextSide:
    """The TLS layer as the outer connection's peer: it receives the client's bytes."""

    def __init__(self, layer: TLSLayer) -> None:
        self.layer = layer

    def write(self, data: bytes) -> None:
        self.layer.feed(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.layer.feed(b"".join(data))

    def loseWriteConnection(self) -> None:
        # The client's TCP FIN. With no close_notify before it, TLS calls it
        # a truncation; the inner stream ends either way.
        if not self.layer.inner.closing:
            self.layer.inner.readConnectionLost()

    def loseConnection(self) -> None:
        # The outer connection is closing (the client left, or a timeout).
        self.layer.end_inner(Failure(error.ConnectionDone()))
        self.layer.end_outer(Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:
        # The client reset: the inner connection resets its backend.
        self.layer.end_inner(Failure(error.ConnectionLost()))
        self.layer.end_outer(Failure(error.ConnectionLost()))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # the plaintext side registers the real producers

    def unregisterProducer(self) -> None:
        pass


class _PlaintextSide:
    """The TLS layer as the inner connection's transport."""

    connected = True
    disconnecting = False

    def __init__(self, layer: TLSLayer) -> None:
        self.layer = layer
        self.client = layer.outer.transport

    def getPeer(self) -> Any:
        return self.layer.outer.client_address

    def getHost(self) -> Any:
        return self.layer.outer.local_address

    def write(self, data: bytes) -> None:
        self.layer.send(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.layer.send(b"".join(data))

    def loseWriteConnection(self) -> None:
        self.layer.close_notify()
        self.layer.outer.peer_eof()

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        self.layer.close_notify()
        self.layer.end_outer(Failure(error.ConnectionDone()))
        self.layer.end_inner(Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:
        # A reset inside (the backend reset): the client gets a reset too,
        # never a close_notify that would pass a cut answer off as whole.
        self.disconnecting = True
        self.layer.end_outer(Failure(error.ConnectionLost()))
        self.layer.end_inner(Failure(error.ConnectionLost()))

    # Flow control is the client socket's: pausing the plaintext pauses it.
    def pauseProducing(self) -> None:
        self.client.pauseProducing()

    def resumeProducing(self) -> None:
        self.client.resumeProducing()

    def stopProducing(self) -> None:
        # A consumer going away (the backend's transport, as it is lost)
        # stops its producer first: the inner connection then hears why
        # (peer_lost) and ends this side cleanly or with a reset. Closing
        # here would turn a backend's reset into a clean close_notify.
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.client.unregisterProducer()
