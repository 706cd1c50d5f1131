"""TLS termination: decrypt a sniffed connection and switch it again inside.

A ``[tls.NAME]`` table is a target. Its connection's ciphertext goes through a
pyOpenSSL memory-BIO engine (L{TLSLayer}); the plaintext is handed to a
nested L{switchyard.switch.SwitchProtocol} with the table's own ordered
routes, so the same engine and matchers route what is inside (a websocket
path, SSH over TLS, the web server...).

The engine is ours rather than Twisted's TLSMemoryBIOProtocol so that a
client's close_notify is a half-close: the backend's response still
reaches the client, and switchyard's own close_notify follows the
backend's end of stream.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attr
from OpenSSL import SSL
from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.interfaces import ITarget, OptionError
from switchyard.options import Options

log = Logger(namespace="switchyard.tls")

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
# Mozilla's "intermediate" TLS 1.2 suites; TLS 1.3 suites are OpenSSL's defaults.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
TLS_OPTIONS = ("certificates", "alpn", "min_version", "ciphers", "client_ca", "client_cert")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Certificate:
    """One certificate chain and key, and the names it serves."""

    cert_path: str
    key_path: str
    names: tuple[str, ...]


def _load_certificate(key: str, cert_path: str, key_path: str) -> Certificate:
    from cryptography import x509

    try:
        with open(cert_path, "rb") as f:
            pem = f.read()
        cert = x509.load_pem_x509_certificate(pem)
    except OSError as e:
        raise OptionError(key, f"cannot read certificate {cert_path!r}: {e.strerror}")
    except ValueError as e:
        raise OptionError(key, f"{cert_path!r} is not a PEM certificate: {e}")
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise OptionError(key, f"certificate {cert_path!r} expired on "
                               f"{cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise OptionError(key, f"certificate {cert_path!r} is not valid before "
                               f"{cert.not_valid_before_utc:%Y-%m-%d}")
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        names += [str(a.value).lower() for a in cn]
    # The key must open and match the certificate now, not at the first client.
    try:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(cert_path)
        context.use_privatekey_file(key_path)
        context.check_privatekey()
    except SSL.Error as e:
        raise OptionError(key, f"key {key_path!r} does not fit certificate {cert_path!r} "
                               f"or cannot be read: {_ssl_reason(e)}")
    return Certificate(cert_path=cert_path, key_path=key_path, names=tuple(names))


def _ssl_reason(e: Exception) -> str:
    parts = [str(a[2]) for a in getattr(e, "args", [[]])[0] if isinstance(a, tuple) and len(a) > 2]
    return ", ".join(parts) or str(e) or e.__class__.__name__


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerSettings:
    """Everything needed to build the server contexts, reloadable as a whole."""

    certificates: tuple[Certificate, ...]
    alpn: tuple[bytes, ...]
    min_version: int
    ciphers: str
    client_ca: str | None
    client_cert: str  # "none", "optional", "required"


class Contexts:
    """The SSL contexts of a target: the default one and one per certificate name."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.by_cert = [self._context(c) for c in settings.certificates]
        self.default = self.by_cert[0]
        self.exact: dict[str, SSL.Context] = {}
        self.wildcard: dict[str, SSL.Context] = {}
        for cert, context in zip(settings.certificates, self.by_cert, strict=True):
            for name in cert.names:
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], context)
                else:
                    self.exact.setdefault(name, context)

    def for_name(self, name: str | None) -> SSL.Context:
        if not name:
            return self.default
        name = name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None and "." in name:
            found = self.wildcard.get(name.split(".", 1)[1])
        return found or self.default

    def _context(self, cert: Certificate) -> SSL.Context:
        s = self.settings
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(s.min_version)
        context.set_cipher_list(s.ciphers.encode("ascii"))
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        context.use_certificate_chain_file(cert.cert_path)
        context.use_privatekey_file(cert.key_path)
        context.set_tlsext_servername_callback(self._on_server_name)
        if s.alpn:
            context.set_alpn_select_callback(self._select_alpn)
        if s.client_ca is not None:
            context.load_verify_locations(s.client_ca)
            mode = SSL.VERIFY_PEER
            if s.client_cert == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode, lambda conn, cert, errno, depth, ok: bool(ok))
            # Resumed sessions would skip the client certificate check.
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            context.set_session_id(b"switchyard")
        return context

    def _on_server_name(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        context = self.for_name(name.decode("ascii", "replace") if name else None)
        if context is not connection.get_context():
            connection.set_context(context)

    def _select_alpn(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in self.settings.alpn:  # our preference order
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS


def compile_server_settings(options: Options, raw: Mapping[str, Any],
                            base_dir: str = ".") -> ServerSettings:
    """TLS settings; relative file names are relative to the config file's folder."""
    import os

    def here(path: str) -> str:
        return os.path.normpath(os.path.join(base_dir, path))

    certs_raw = raw.get("certificates")
    if isinstance(certs_raw, (str, dict)):
        certs_raw = [certs_raw]
    if not isinstance(certs_raw, list) or not certs_raw:
        raise OptionError("certificates", "a list of {cert = FILE, key = FILE} tables "
                                          "(or PEM files holding both) is required")
    certificates = []
    for i, c in enumerate(certs_raw):
        key = f"certificates[{i}]"
        if isinstance(c, str):
            cert_path = key_path = here(c)
        elif isinstance(c, dict) and set(c) <= {"cert", "key"} and isinstance(c.get("cert"), str):
            cert_path = here(c["cert"])
            key_path = here(str(c.get("key", c["cert"])))
        else:
            raise OptionError(key, "expected a PEM file name or {cert = FILE, key = FILE}")
        certificates.append(_load_certificate(key, cert_path, key_path))
    alpn = tuple(a.encode("ascii") for a in options.texts("alpn") or ())
    version = options.choice("min_version", "1.2", tuple(_VERSIONS))
    client_ca = options.text("client_ca")
    if client_ca is not None:
        client_ca = here(client_ca)
    client_cert = options.choice("client_cert", "required" if client_ca else "none",
                                 ("none", "optional", "required"))
    if client_cert != "none" and client_ca is None:
        raise OptionError("client_cert", "needs client_ca, the CA file to verify them with")
    if client_ca is not None:
        try:
            SSL.Context(SSL.TLS_SERVER_METHOD).load_verify_locations(client_ca)
        except SSL.Error as e:
            raise OptionError("client_ca", f"cannot load {client_ca!r}: {_ssl_reason(e)}")
    ciphers = options.text("ciphers") or DEFAULT_CIPHERS
    try:
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise OptionError("ciphers", f"no usable cipher in {ciphers!r}")
    return ServerSettings(certificates=tuple(certificates), alpn=alpn,
                          min_version=_VERSIONS[version], ciphers=ciphers,
                          client_ca=client_ca, client_cert=client_cert)


@implementer(ITarget)
class TerminateTarget:
    """Decrypt, then route the plaintext with a nested listener's routes."""

    def __init__(self, name: str, settings: ServerSettings, listener: Any) -> None:
        self.name = name
        self.settings = settings
        self.listener = listener  # a switchyard.config.Listener without a port
        self.contexts = Contexts(settings)

    def reload(self) -> None:
        """Re-read the certificate files (SIGHUP): new connections use them."""
        try:
            certificates = tuple(_load_certificate(f"tls.{self.name}", c.cert_path, c.key_path)
                                 for c in self.settings.certificates)
        except OptionError as e:
            log.error("tls {name}: keeping the old certificates: {problem}",
                      name=self.name, problem=str(e))
            return
        self.settings = attr.evolve(self.settings, certificates=certificates)
        self.contexts = Contexts(self.settings)
        log.info("tls {name}: certificates reloaded", name=self.name)

    def attach(self, connection: Any) -> None:
        from switchyard.switch import SwitchProtocol

        connection.set_server(f"tls:{self.name}")
        inner = SwitchProtocol(self.listener, connection.reactor, parent=connection)
        layer = TLSLayer(self.contexts, connection, inner)
        connection.quiet = True  # the inner connection logs for both
        inner.makeConnection(layer.plaintext)
        connection.splice(layer.ciphertext)


class TLSLayer:
    """A pyOpenSSL server engine between the client's ciphertext and the inner switch."""

    def __init__(self, contexts: Contexts, outer: Any, inner: Any) -> None:
        self.outer = outer
        self.inner = inner
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
                self.inner.close("tls_handshake_failed", _ssl_reason(e))
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
                self.inner.close("tls_error", _ssl_reason(e))
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
                self.inner.close("tls_error", _ssl_reason(e))
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

    def lose_inner(self, reason: Failure) -> None:
        """Tell the inner switch its transport is gone, once."""
        if not self.inner_lost:
            self.inner_lost = True
            self.inner.connectionLost(reason)


class _CiphertextSide:
    """The TLS layer as the outer switch's peer: it receives the client's bytes."""

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
        self.layer.lose_inner(Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:
        self.layer.lose_inner(Failure(error.ConnectionLost()))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # the plaintext side registers the real producers

    def unregisterProducer(self) -> None:
        pass


class _PlaintextSide:
    """The TLS layer as the inner switch's transport."""

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
        self.layer.outer.peer_lost(Failure(error.ConnectionDone()))
        # A transport reports its end later, never from inside loseConnection.
        self.layer.outer.reactor.callLater(
            0, self.layer.lose_inner, Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.layer.outer.peer_lost(Failure(error.ConnectionLost()))
        self.layer.outer.reactor.callLater(
            0, self.layer.lose_inner, Failure(error.ConnectionLost()))

    # Flow control is the client socket's: pausing the plaintext pauses it.
    def pauseProducing(self) -> None:
        self.client.pauseProducing()

    def resumeProducing(self) -> None:
        self.client.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.client.unregisterProducer()


def compile_tls_target(name: str, raw: Mapping[str, Any],
                       compile_listener: Callable[[Mapping[str, Any]], Any],
                       base_dir: str = ".") -> TerminateTarget:
    """A [tls.NAME] table: certificates and TLS settings, then nested routes."""
    tls_raw = {k: v for k, v in raw.items() if k in TLS_OPTIONS}
    settings = compile_server_settings(Options(tls_raw, TLS_OPTIONS), tls_raw, base_dir)
    listener = compile_listener({k: v for k, v in raw.items() if k not in TLS_OPTIONS})
    return TerminateTarget(name, settings, listener)



class CertificateWatcher:
    """Reload a target's certificates when their files change, or on SIGHUP.

    New handshakes use the new certificates; connections already open keep
    theirs, so nothing is dropped.
    """

    def __init__(self, targets: Sequence[TerminateTarget], reactor: Any,
                 interval: float = 2.0) -> None:
        self.targets = list(targets)
        self.reactor = reactor
        self.interval = interval
        self.seen = {id(t): self._stamp(t) for t in self.targets}
        self._loop: Any = None

    @staticmethod
    def _stamp(target: TerminateTarget) -> tuple[float, ...]:
        import os

        stamps = []
        for cert in target.settings.certificates:
            for path in (cert.cert_path, cert.key_path):
                try:
                    stamps.append(os.stat(path).st_mtime)
                except OSError:
                    stamps.append(-1.0)
        return tuple(stamps)

    def check(self) -> None:
        for target in self.targets:
            stamp = self._stamp(target)
            if stamp != self.seen[id(target)]:
                self.seen[id(target)] = stamp
                target.reload()

    def reload_all(self) -> None:
        for target in self.targets:
            self.seen[id(target)] = self._stamp(target)
            target.reload()

    def start(self) -> None:
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
