"""TLS server settings: certificates and keys checked at load, and the SSL contexts
(one per certificate, chosen by SNI) built from them."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import attr
from OpenSSL import SSL

from switchyard.interfaces import OptionError
from switchyard.options import Options

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


def load_certificate(key: str, cert_path: str, key_path: str) -> Certificate:
    from cryptography import x509  # (imported when a certificate is read)

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
                               f"or cannot be read: {ssl_reason(e)}")
    return Certificate(cert_path=cert_path, key_path=key_path, names=tuple(names))


def ssl_reason(e: Exception) -> str:
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
        certificates.append(load_certificate(key, cert_path, key_path))
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
            raise OptionError("client_ca", f"cannot load {client_ca!r}: {ssl_reason(e)}")
    ciphers = options.text("ciphers") or DEFAULT_CIPHERS
    try:
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise OptionError("ciphers", f"no usable cipher in {ciphers!r}")
    return ServerSettings(certificates=tuple(certificates), alpn=alpn,
                          min_version=_VERSIONS[version], ciphers=ciphers,
                          client_ca=client_ca, client_cert=client_cert)
