"""The twistd command line: options, config checking, and the service tree."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from switchyard.config import Config, ConfigError, load
from switchyard.tlsterm import CertificateWatcher, TerminateTarget

log = Logger(namespace="switchyard")


class Options(usage.Options):
    synopsis = "[--check] --config FILE"
    longdesc = (
        "Listen on the ports a TOML config names, read the first bytes of every "
        "connection, and relay it to the target of the first route whose matcher "
        "recognises them (TLS by SNI/ALPN, SSH, HTTP by host/path, or any matcher "
        "plugin). See docs/config.md for the config format."
    )
    optParameters = [
        ["config", "c", None, "Path of the TOML config file (required)."],
    ]
    optFlags = [
        ["check", None, "Validate the config, print a summary and exit: "
                        "0 if it is usable, 1 (naming the key and problem) if not."],
    ]

    compiled: Config

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        from twisted.internet import reactor

        try:
            self.compiled = load(self["config"], reactor)
        except ConfigError as e:
            # Fail before anything listens, naming the key and the problem.
            sys.stderr.write(f"switchyard: config error in {self['config']}: {e}\n")
            raise SystemExit(1)
        if self["check"]:
            sys.stdout.write(describe(self.compiled) + "\nconfig OK\n")
            raise SystemExit(0)


def describe(config: Config) -> str:
    """A readable summary of the compiled route tables."""
    lines = []
    for listener in config.listeners:
        lines.append(f"listener {listener.name} on {listener.listen} "
                     f"(inspect_timeout={listener.inspect_timeout:g}s, "
                     f"max_sniff_bytes={listener.max_sniff_bytes})")
        for route in listener.routes:
            lines.append(f"  route {route.name}: match {route.match} -> {route.target.name}")
            if isinstance(route.target, TerminateTarget):
                for inner in route.target.listener.routes:
                    lines.append(f"    after TLS: route {inner.name}: match {inner.match} "
                                 f"-> {inner.target.name}")
        if listener.on_timeout is not None:
            lines.append(f"  on timeout -> {listener.on_timeout.target.name}")
    return "\n".join(lines)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from switchyard.service import ListenerService

    config = options.compiled
    top = service.MultiService()
    _StopOnSignals(reactor).setServiceParent(top)
    for listener in config.listeners:
        ListenerService(listener, reactor).setServiceParent(top)
    tls_targets = [t for t in config.targets.values() if isinstance(t, TerminateTarget)]
    if tls_targets:
        _CertificateService(CertificateWatcher(tls_targets, reactor)).setServiceParent(top)
    log.info("switchyard: {config} compiled:\n{summary}", config=config.path,
             summary=describe(config))
    return top


class _StopOnSignals(service.Service):
    """SIGTERM and SIGINT stop switchyard gracefully, and that is a success: exit 0.

    (twistd's own handlers make the process die of the signal afterwards.)
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        # After the reactor's own handlers are installed, to replace them.
        self.reactor.addSystemEventTrigger("after", "startup", self._install)

    def _install(self) -> None:
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        import signal

        log.info("switchyard: {signal} received, stopping",
                 signal=signal.Signals(signum).name)
        self.reactor.callFromThread(self.reactor.stop)


class _CertificateService(service.Service):
    """Watch certificate files while running; SIGHUP reloads them at once."""

    def __init__(self, watcher: CertificateWatcher) -> None:
        self.watcher = watcher

    def startService(self) -> None:
        import signal

        super().startService()
        self.watcher.start()
        reactor = self.watcher.reactor
        signal.signal(signal.SIGHUP,
                      lambda *_: reactor.callFromThread(self.watcher.reload_all))

    def stopService(self) -> None:
        self.watcher.stop()
        return super().stopService()


__all__ = ["Options", "makeService"]


