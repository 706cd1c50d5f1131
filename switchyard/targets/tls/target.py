"""The ``[tls.NAME]`` target kind: terminate TLS, then route the plaintext again.

A ``[tls.NAME]`` table holds certificates and TLS settings, and its own
ordered routes: the decrypted stream is a nested connection
(L{switchyard.interfaces.IConnection.nest}) sniffed by those routes, so
the same engine and matchers route what is inside (a websocket path, SSH
over TLS, the web server...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr
from twisted.logger import Logger
from zope.interface import implementer

from switchyard.interfaces import (
    ICompileContext,
    IConnection,
    IRunningTarget,
    ITargetKind,
    OptionError,
)
from switchyard.options import Options
from switchyard.targets.tls.engine import TLSLayer
from switchyard.targets.tls.settings import (
    TLS_OPTIONS,
    Contexts,
    ServerSettings,
    compile_server_settings,
    load_certificate,
)
from switchyard.targets.tls.watcher import CertificateWatcher

log = Logger(namespace="switchyard.tls")


@implementer(IRunningTarget)
class TerminateTarget:
    """Decrypt, then route the plaintext with a nested listener's routes."""

    def __init__(self, name: str, settings: ServerSettings, listener: Any,
                 reactor: Any = None) -> None:
        self.name = name
        self.settings = settings
        self.listener = listener  # a switchyard.config.Listener without a port
        self.contexts = Contexts(settings)
        self.watcher: CertificateWatcher | None = None
        self.reactor = reactor

    def describe(self) -> list[str]:
        return [f"after TLS: route {inner.name}: match {inner.match} -> {inner.target.name}"
                for inner in self.listener.routes]

    def reload(self) -> None:
        """Re-read the certificate files (SIGHUP): new connections use them."""
        try:
            certificates = tuple(load_certificate(f"tls.{self.name}", c.cert_path, c.key_path)
                                 for c in self.settings.certificates)
        except OptionError as e:
            log.error("tls {name}: keeping the old certificates: {problem}",
                      name=self.name, problem=str(e))
            return
        self.settings = attr.evolve(self.settings, certificates=certificates)
        self.contexts = Contexts(self.settings)
        log.info("tls {name}: certificates reloaded", name=self.name)

    def attach(self, connection: IConnection) -> None:
        connection.set_server(f"tls:{self.name}")
        layer = TLSLayer(self.contexts, connection)
        layer.inner = connection.nest(self.listener, layer.plaintext)
        connection.splice(layer.ciphertext)

    # -- IRunningTarget: the certificate files are watched while running --

    def start(self, runtime: Any = None) -> None:
        if self.reactor is not None:
            self.watcher = CertificateWatcher([self], self.reactor)
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def hangup(self) -> None:
        log.info("tls {name}: SIGHUP received: reloading the certificates", name=self.name)
        if self.watcher is not None:
            self.watcher.reload_all()
        else:
            self.reload()


@implementer(ITargetKind)
class TLSKind:
    """``[tls.NAME]``: certificates and TLS settings, then nested routes."""

    section = "tls"
    description = "terminate TLS, then route the decrypted stream with the table's own routes"
    # After every other kind: the routes inside may send to any of their
    # targets (a backend, the gateway, the tunnel server), not to another
    # termination.
    order = 100
    builtins: Mapping[str, Any] = {}

    def compile(self, name: str, table: Mapping[str, Any],
                context: ICompileContext) -> TerminateTarget:
        tls_raw = {k: v for k, v in table.items() if k in TLS_OPTIONS}
        settings = compile_server_settings(Options(tls_raw, TLS_OPTIONS), tls_raw,
                                           context.base_dir)
        listener = context.compile_routes(f"tls.{name}", name, {
            k: v for k, v in table.items() if k not in TLS_OPTIONS})
        return TerminateTarget(name, settings, listener, context.reactor)
