"""The twistd face of switchyard: command-line options, ``--check``, and makeService."""

from __future__ import annotations

import sys
from typing import NoReturn

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from switchyard.config import MAX_WORKERS, Config, ConfigError, load

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

    def postOptions(self) -> None:
        if not self["config"]:
            _usage_error("--config FILE is required")
        workers = self["workers"]
        if workers is not None and not 1 <= workers <= MAX_WORKERS:
            _usage_error(f"--workers: must be between 1 and {MAX_WORKERS}, got {workers}")
        from switchyard.relay import internals
        from switchyard.relay.reactor import install

        reactor = install()  # ours, unless twistd --reactor chose one
        try:
            self.compiled = load(self["config"], reactor)
            self.workers = workers if workers is not None else self.compiled.workers
            if self.workers > 1:
                from switchyard.app.supervisor import shareable

                shareable(self.compiled)
                if not internals.check().sharing:
                    raise ConfigError("workers", "this Twisted cannot share listening sockets "
                                                 "between processes (see the log)")
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


def _usage_error(problem: str) -> NoReturn:
    """A bad command line: one line on stderr and exit status 2, whatever
    Twisted version parses it (twistd before 25 exits 0 on a UsageError)."""
    sys.stderr.write(f"switchyard: {problem} (see twistd switchyard --help)\n")
    raise SystemExit(2)


def describe(config: Config) -> str:
    """A readable summary of the compiled route tables."""
    lines = []
    for listener in config.listeners:
        lines.append(f"listener {listener.name} on {listener.listen} "
                     f"(inspect_timeout={listener.inspect_timeout:g}s, "
                     f"max_sniff_bytes={listener.max_sniff_bytes})")
        for route in listener.routes:
            lines.append(f"  route {route.name}: match {route.match} -> {route.target.name}")
            lines.extend(f"    {line}" for line in route.target.describe())
        if listener.on_timeout is not None:
            lines.append(f"  on timeout -> {listener.on_timeout.target.name}")
    if config.metrics is not None:
        lines.append(f"metrics on {config.metrics} (/metrics)")
    return "\n".join(lines)


def _owner(options: Options) -> tuple[int | None, int | None]:
    """The (uid, gid) twistd will switch to (``--uid``/``--gid``), if any."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return None, None
    return parent.get("uid"), parent.get("gid")


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from switchyard.relay import internals

    config = options.compiled
    internals.check()  # logs a line for each part this Twisted cannot run
    if options.workers > 1:
        from switchyard.app.service import StopOnSignals, start_parent_metrics
        from switchyard.app.supervisor import WorkerSupervisor

        top = service.MultiService()
        StopOnSignals(reactor).setServiceParent(top)
        supervisor = WorkerSupervisor(config, options.workers, reactor)
        # The parent serves /metrics: the sum of its workers' reports.
        supervisor.metrics = start_parent_metrics(config, top, reactor)
        supervisor.setServiceParent(top)
    else:
        from switchyard.app.service import switch_service

        top = switch_service(config, reactor, owner=_owner(options))
    log.info("switchyard: {config} compiled:\n{summary}\nreactor: {reactor}",
             config=config.path,
             summary=describe(config) + (f"\nworkers: {options.workers}"
                                         if options.workers > 1 else ""),
             reactor=type(reactor).__name__)
    return top


__all__ = ["Options", "makeService", "describe"]
