"""The twistd command line: options, config checking, and the service tree."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Mapping
from typing import Any

import attr
from twisted.application import service
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from switchyard.config import Config, ConfigError, load
from switchyard.tlsterm import CertificateWatcher, TerminateTarget

log = Logger(namespace="switchyard")


class Options(usage.Options):
    synopsis = "[--check] [--workers N] --config FILE"
    longdesc = (
        "Listen on the ports a TOML config names, read the first bytes of every "
        "connection, and relay it to the target of the first route whose matcher "
        "recognises them (TLS by SNI/ALPN, SSH, HTTP by host/path, or any matcher "
        "plugin). See docs/config.md for the config format."
    )
    optParameters = [
        ["config", "c", None, "Path of the TOML config file (required)."],
        ["workers", None, None, "Worker processes sharing the listening sockets, overriding "
                                "the config's top-level workers (default 1: one process; "
                                "see docs/workers.md).", int],
    ]
    optFlags = [
        ["check", None, "Validate the config, print a summary and exit: "
                        "0 if it is usable, 1 (naming the key and problem) if not."],
    ]

    compiled: Config
    workers: int = 1
    config_text: bytes = b""  # what every worker compiles, read once

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        from switchyard.reactor import install

        reactor = install()  # ours, unless twistd --reactor chose one

        from switchyard.workers import shareable, worker_count

        if self["workers"] is not None:
            try:
                worker_count({"workers": self["workers"]})
            except ConfigError as e:
                raise usage.UsageError(f"--workers: {e.problem}")
        try:
            self.compiled = load(self["config"], reactor)
            self.config_text, raw = _read_again(self["config"])
            self.workers = (self["workers"] if self["workers"] is not None
                            else worker_count(raw))
            if self.workers > 1:
                shareable(self.compiled)
        except ConfigError as e:
            # Fail before anything listens, naming the key and the problem.
            sys.stderr.write(f"switchyard: config error in {self['config']}: {e}\n")
            raise SystemExit(1)
        if self["check"]:
            summary = describe(self.compiled)
            if self.workers > 1:
                summary += f"\nworkers: {self.workers}"
            sys.stdout.write(summary + "\nconfig OK\n")
            raise SystemExit(0)


def _read_again(path: str) -> tuple[bytes, Mapping[str, Any]]:
    """The config's bytes and TOML (load() has just checked them) for the workers."""
    try:
        with open(path, "rb") as f:
            text = f.read()
        return text, tomllib.loads(text.decode("utf-8"))
    except (OSError, ValueError) as e:
        # Only if the file changed in between.
        raise ConfigError("", f"cannot read {path} again: {e}")


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

    config = options.compiled
    if options.workers > 1:
        from switchyard.workers import WorkerSupervisor

        top = service.MultiService()
        _StopOnSignals(reactor).setServiceParent(top)
        WorkerSupervisor(config, options.config_text, options.workers,
                         reactor).setServiceParent(top)
    else:
        top = switch_service(config, reactor)
    log.info("switchyard: {config} compiled:\n{summary}\nreactor: {reactor}",
             config=config.path,
             summary=describe(config) + (f"\nworkers: {options.workers}"
                                         if options.workers > 1 else ""),
             reactor=type(reactor).__name__)
    return top


def switch_service(config: Config, reactor: Any,
                   endpoints: Mapping[str, IStreamServerEndpoint] | None = None,
                   worker: bool = False) -> service.MultiService:
    """The listeners, graceful stop and certificate reload of one switching process.

    A worker passes the ``endpoints`` of the sockets it inherited, by
    listener name, and always handles SIGHUP (its parent forwards it).
    """
    from switchyard.accesslog import AccessLogFile
    from switchyard.backends import backends_service
    from switchyard.service import AccessLogService, ListenerService

    top = service.MultiService()
    _StopOnSignals(reactor).setServiceParent(top)
    access_log = None
    if config.access_log is not None:
        access_log = AccessLogFile(config.access_log, reactor)
        AccessLogService(access_log).setServiceParent(top)
    # Health checks and DNS discovery run before the listeners accept.
    backends_service(config).setServiceParent(top)
    for listener in config.listeners:
        if endpoints is not None:
            listener = attr.evolve(listener, endpoint=endpoints[listener.name])
        ListenerService(listener, reactor, access_log).setServiceParent(top)
    tls_targets = [t for t in config.targets.values() if isinstance(t, TerminateTarget)]
    if tls_targets or worker or access_log is not None:
        _HangupService(CertificateWatcher(tls_targets, reactor),
                       access_log).setServiceParent(top)
    return top


class _StopOnSignals(service.Service):
    """SIGTERM and SIGINT stop switchyard gracefully, and that is a success: exit 0.

    (twistd's own handlers make the process die of the signal afterwards.)
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

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

        name = signal.Signals(signum).name
        if self.stopping:
            # e.g. Ctrl-C reaches workers directly and through their parent.
            log.info("switchyard: {signal} received, already stopping", signal=name)
            return
        self.stopping = True
        log.info("switchyard: {signal} received, stopping", signal=name)
        self.reactor.callFromThread(self.reactor.stop)


class _HangupService(service.Service):
    """Watch certificate files while running; SIGHUP reloads them at once and
    reopens the access log file (after logrotate).

    (A worker has one even without either, so a forwarded SIGHUP is logged
    rather than fatal.)
    """

    def __init__(self, watcher: CertificateWatcher, access_log: Any = None) -> None:
        self.watcher = watcher
        self.access_log = access_log

    def startService(self) -> None:
        import signal

        super().startService()
        if self.watcher.targets:
            self.watcher.start()
        reactor = self.watcher.reactor
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(self._hangup))

    def _hangup(self) -> None:
        if self.access_log is not None:
            log.info("switchyard: SIGHUP received: reopening the access log {path}",
                     path=self.access_log.path)
            self.access_log.reopen()
        if not self.watcher.targets:
            if self.access_log is None:
                log.info("switchyard: SIGHUP received: no TLS certificates to reload")
            return
        log.info("switchyard: SIGHUP received: reloading the certificates of {targets}",
                 targets=", ".join(t.name for t in self.watcher.targets))
        self.watcher.reload_all()

    def stopService(self) -> None:
        self.watcher.stop()
        return super().stopService()


__all__ = ["Options", "makeService", "switch_service"]


