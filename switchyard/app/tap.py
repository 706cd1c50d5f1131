"""The twistd face of switchyard: command-line options, ``--check``, and makeService."""

from __future__ import annotations

import os
import sys
import tomllib
from typing import Any, NoReturn

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from switchyard.config import MAX_WORKERS, Config, ConfigError, load
from switchyard.interfaces import IRunningTarget
from switchyard.observe.explain import (
    explanation_text,
    parse_client,
    read_opening,
    route_conditions,
    unreachable_routes,
)
from switchyard.observe.samples import SampleStore

log = Logger(namespace="switchyard")


class Options(usage.Options):
    synopsis = ("[--check | --explain FILE [--hex] [--client IP] [--closed] [--listener NAME]] "
                "[--workers N] --config FILE")
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
        ["listener", None, None, "With --explain: explain on this listener only."],
        ["client", None, None, "With --explain: the client's address, IP[:PORT] (allow/deny, "
                               "trusted fronts, the PROXY header sent on)."],
    ]
    optFlags = [
        ["check", None, "Validate the config, print a summary and exit: "
                        "0 if it is usable, 1 (naming the key and problem) if not."],
        ["hex", None, "With --explain: FILE holds hex text, not raw bytes."],
        ["closed", None, "With --explain: the client closed after sending FILE (the opening "
                         "is final: routes that need more bytes are passed over)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["explain"] = []

    def opt_explain(self, path: str) -> None:
        """Print what each listener does with the opening in FILE (the client's
        first bytes, raw; - for standard input), route by route and why, and
        exit (see docs/explain.md). May be given more than once."""
        self["explain"].append(path)

    def opt_version(self) -> NoReturn:
        """Print switchyard's version and Twisted's, and exit."""
        from switchyard.cli import version_text

        sys.stdout.write(version_text() + "\n")
        raise SystemExit(0)

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
        if self["explain"]:
            raise SystemExit(explain_command(self.compiled, self["explain"], hex_text=self["hex"],
                                             client=self["client"], closed=self["closed"],
                                             listener=self["listener"]))
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


def explain_command(config: Config, paths: list[str], *, hex_text: bool = False,
                    client: str | None = None, closed: bool = False,
                    listener: str | None = None) -> int:
    """Print the explanation of each opening file on ``config``'s listeners; the
    exit status (1 if a file or the client address is unusable)."""
    try:
        address = parse_client(client) if client is not None else None
        openings = [(path, read_opening(path, hex_text)) for path in paths]
        for path, data in openings:
            source = "standard input" if path == "-" else path
            sys.stdout.write(explanation_text(config, data, source, listener=listener,
                                              client=address, closed=closed))
    except (ValueError, KeyError) as e:
        sys.stderr.write(f"switchyard: explain: {e.args[0] if e.args else e}\n")
        return 1
    return 0


def _raw_listeners(config: Config) -> dict[str, Any]:
    """The listener tables as written (the compiled ones keep no options)."""
    try:
        raw = tomllib.loads(config.source.decode("utf-8")) if config.source else {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    listeners = raw.get("listener")
    return listeners if isinstance(listeners, dict) else {}


def describe(config: Config) -> str:
    """A readable summary of the compiled route tables, with each route's
    conditions and a warning for each route that can never be chosen."""
    raw_listeners = _raw_listeners(config)
    lines = []
    for listener in config.listeners:
        lines.append(f"listener {listener.name} on {listener.listen} "
                     f"(inspect_timeout={listener.inspect_timeout:g}s, "
                     f"max_sniff_bytes={listener.max_sniff_bytes})")
        raws = raw_listeners.get(listener.name, {}).get("route") or []
        if len(raws) != len(listener.routes) or not all(isinstance(r, dict) for r in raws):
            raws = []
        for i, route in enumerate(listener.routes):
            lines.append(f"  route {route.name}: match {route.match} -> {route.target.name}")
            conditions = route_conditions(raws[i]) if raws else route.match
            if conditions != route.match:
                lines.append(f"    when {conditions}")
            lines.extend(f"    {line}" for line in route.target.describe())
        if listener.on_timeout is not None:
            lines.append(f"  on timeout -> {listener.on_timeout.target.name}")
        samples = listener.openings
        if isinstance(samples, SampleStore):
            lines.append(f"  samples: {samples.folder} (at most {samples.max_files} files, "
                         f"{samples.max_bytes} bytes, {samples.per_minute} a minute)")
        lines.extend(f"  warning: {warning}"
                     for warning in unreachable_routes(listener.routes, raws))
    reached = {id(route.target) for listener in config.listeners for route in listener.routes}
    for name, target in config.targets.items():
        if IRunningTarget.providedBy(target) and id(target) not in reached:
            lines.append(f"running {name} (no route sends to it)")
            lines.extend(f"  {line}" for line in target.describe())
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
    top = _SaysWhyItCannotListen(top, options)
    log.info("switchyard: {config} compiled:\n{summary}\nreactor: {reactor}",
             config=config.path,
             summary=describe(config) + (f"\nworkers: {options.workers}"
                                         if options.workers > 1 else ""),
             reactor=type(reactor).__name__)
    return top


class _SaysWhyItCannotListen(service.MultiService):
    """The service tree, with a port that cannot be opened said in one line
    on standard error and exit status 1, not a traceback in the log."""

    def __init__(self, top: service.IService, options: Options) -> None:
        super().__init__()
        self.options = options
        top.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            parent: Any = getattr(self.options, "parent", None) or {}
            if not parent.get("nodaemon", True):
                raise  # twistd reports it through the daemon's status pipe
            where = f"{e.interface or '*'}:{e.port}" if isinstance(e.port, int) else e.port
            why = getattr(e.socketError, "strerror", None) or str(e.socketError)
            message = f"switchyard: cannot listen on {where}: {why}"
            log.error("{message}", message=message)
            (sys.__stderr__ or sys.stderr).write(message + "\n")
            pidfile = parent.get("pidfile")
            if pidfile and os.path.exists(pidfile):
                os.unlink(pidfile)  # twistd would have removed it on an exception
            raise SystemExit(1)


__all__ = ["Options", "makeService", "describe", "explain_command"]
