"""The ``switchyard`` command: run, check, explain, version (one subcommand each).

``switchyard run`` is ``twistd -n switchyard`` with a service's defaults (no
``twistd.pid`` unless ``--pidfile`` asks for one); ``check`` is ``--check``;
``explain`` says which route takes an opening and why, for opening files or
for real clients (``--listen``). A subcommand is a function adding its
arguments and a function running it, listed in L{COMMANDS}: adding one
touches nothing else.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attr
from zope.interface import implementer

import switchyard
from switchyard.interfaces import IRuntime

Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def version_text() -> str:
    """switchyard's version, and Twisted's and Python's."""
    import twisted

    return (f"switchyard {switchyard.__version__} (Twisted {twisted.__version__}, "
            f"Python {platform.python_version()})")


# -- run ----------------------------------------------------------------------


def _setup_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the TOML config file")
    parser.add_argument("--workers", type=int, help="worker processes (overrides the config's)")
    parser.add_argument("--pidfile", default="",
                        help="write the process id to this file (default: none)")
    parser.add_argument("--logfile", help="log to this file (default: standard output)")
    parser.add_argument("--logger", help="a log observer factory, e.g. "
                                         "switchyard.observe.logs.json_stdout")
    parser.add_argument("--uid", help="switch to this user after listening")
    parser.add_argument("--gid", help="switch to this group after listening")
    parser.add_argument("--reactor", help="the Twisted reactor (default: switchyard's)")
    parser.add_argument("twistd", nargs=argparse.REMAINDER,
                        help="after --: more twistd options, as they are")


def twistd_argv(args: argparse.Namespace) -> list[str]:
    """The ``twistd`` command line that ``switchyard run`` amounts to."""
    argv = ["-n", f"--pidfile={args.pidfile}"]
    for option in ("logfile", "logger", "uid", "gid", "reactor"):
        value = getattr(args, option)
        if value is not None:
            argv.append(f"--{option}={value}")
    extra = list(args.twistd)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    argv.extend(extra)
    argv += ["switchyard", "--config", args.config]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return argv


def _twistd(argv: list[str]) -> int:
    """Run twistd with ``argv``; its exit status."""
    from twisted.scripts import twistd

    sys.argv = ["switchyard", *argv]
    try:
        twistd.run()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _run(args: argparse.Namespace) -> int:
    return _twistd(twistd_argv(args))


# -- check --------------------------------------------------------------------


def _setup_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the TOML config file")
    parser.add_argument("--workers", type=int, help="worker processes (overrides the config's)")


def _check(args: argparse.Namespace) -> int:
    argv = ["switchyard", "--check", "--config", args.config]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return _twistd(argv)


# -- explain ------------------------------------------------------------------


def _setup_explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the TOML config file")
    parser.add_argument("openings", nargs="*", metavar="OPENING",
                        help="a file holding a client's first bytes (- for standard input)")
    parser.add_argument("--hex", action="store_true", help="the files hold hex text")
    parser.add_argument("--listener", help="explain on this listener only (default: each)")
    parser.add_argument("--client", metavar="IP[:PORT]",
                        help="the client's address: allow/deny, trusted fronts, PROXY headers")
    parser.add_argument("--closed", action="store_true",
                        help="the client closed after sending the opening (it is final)")
    parser.add_argument("--listen", metavar="ADDR",
                        help="accept real clients on ADDR (like listen: '127.0.0.1:8443') and "
                             "explain each one's opening")
    parser.add_argument("--relay", action="store_true",
                        help="with --listen: relay each connection to its route's target "
                             "(default: close it once explained)")
    parser.add_argument("--save", metavar="DIR",
                        help="with --listen: save each opening in DIR")
    parser.add_argument("--count", type=int, metavar="N",
                        help="with --listen: stop after N connections")


def _explain(args: argparse.Namespace) -> int:
    if bool(args.openings) == bool(args.listen):
        sys.stderr.write("switchyard: explain: give OPENING files, or --listen ADDR\n")
        return 2
    if args.listen:
        return _explain_listen(args)
    argv = ["switchyard", "--config", args.config]
    for path in args.openings:
        argv += ["--explain", path]
    for flag in ("hex", "closed"):
        if getattr(args, flag):
            argv.append(f"--{flag}")
    for option in ("client", "listener"):
        if getattr(args, option) is not None:
            argv += [f"--{option}", getattr(args, option)]
    return _twistd(argv)


@implementer(IRuntime)
@attr.s(auto_attribs=True)
class _Runtime:
    """What explain --listen --relay hands the running targets: the reactor only."""

    reactor: Any
    access_log: Any = None
    metrics: Any = None


def _explain_listen(args: argparse.Namespace) -> int:
    """Serve one listener's routes on ``--listen``, explaining each connection."""
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from switchyard.config import ConfigError, load
    from switchyard.endpoints import server_endpoint
    from switchyard.interfaces import IRunningTarget, OptionError
    from switchyard.listener import ListenerBooks
    from switchyard.observe.explain import ExplainingObserver, closing_routes
    from switchyard.observe.samples import SampleStore

    try:
        config = load(args.config, reactor)
    except ConfigError as e:
        sys.stderr.write(f"switchyard: config error in {args.config}: {e}\n")
        return 1

    chosen = [each for each in config.listeners
              if args.listener is None or each.name == args.listener]
    if not chosen:
        sys.stderr.write(f"switchyard: explain: no listener {args.listener!r}\n")
        return 1
    listener = chosen[0]
    try:
        endpoint = server_endpoint("--listen", args.listen, reactor)
    except OptionError as e:
        sys.stderr.write(f"switchyard: explain: {e}\n")
        return 2
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    save = None
    if args.save:
        store = SampleStore(args.save, listener.name, reactor,
                            max_sniff_bytes=listener.max_sniff_bytes, max_files=1_000_000,
                            max_bytes=1 << 40, per_minute=1_000_000)
        save = store.save

    def done(count: int) -> None:
        if args.count is not None and count >= args.count:
            # After this connection has gone its way (closed or relayed).
            reactor.callLater(0.5 if args.relay else 0, reactor.stop)

    # Explained as the listener it is, at the address it is tried on.
    observer = ExplainingObserver(attr.evolve(listener, listen=args.listen), write, save,
                                  relaying=args.relay, done=done)
    served = listener if args.relay else closing_routes(listener)
    served = attr.evolve(served, listen=args.listen, endpoint=endpoint, openings=observer,
                         accept_proxy=listener.accept_proxy)
    running = [target for target in config.targets.values()
               if args.relay and IRunningTarget.providedBy(target)]
    failed: list[str] = []

    def start() -> None:
        for target in running:
            target.start(_Runtime(reactor))  # health checks, certificate watchers
        d = endpoint.listen(ListenerBooks(served, reactor))

        def listening(port: Any) -> None:
            host = port.getHost()
            write(f"explain: listening on {getattr(host, 'host', host)}:"
                  f"{getattr(host, 'port', '')} with the routes of listener {listener.name}; "
                  + ("relaying" if args.relay else "closing") + " each connection once "
                  "explained\n")

        def cannot(failure: Any) -> None:
            failed.append(failure.getErrorMessage())
            reactor.stop()

        d.addCallbacks(listening, cannot)

    reactor.callWhenRunning(start)
    reactor.run()
    for target in running:
        target.stop()
    if failed:
        sys.stderr.write(f"switchyard: explain: cannot listen on {args.listen}: {failed[0]}\n")
        return 1
    return 0


# -- version ------------------------------------------------------------------


def _version(args: argparse.Namespace) -> int:
    sys.stdout.write(version_text() + "\n")
    return 0


COMMANDS: dict[str, tuple[str, Setup, Run]] = {
    "run": ("run switchyard (twistd -n switchyard, without a pid file)", _setup_run, _run),
    "check": ("check a config, print its routes and warnings", _setup_check, _check),
    "explain": ("say which route takes an opening, and why", _setup_explain, _explain),
    "version": ("print switchyard's version and Twisted's", lambda parser: None, _version),
}
"""Each subcommand: one line of help, the function adding its arguments, and the
function running it (returning the exit status)."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="switchyard",
        description="One TCP port, many protocols: a protocol switch as a Twisted application.")
    top.add_argument("--version", action="store_true", help="print the versions and exit")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, setup, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        setup(sub)
        sub.set_defaults(run=run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if args.version:
        return _version(args)
    if args.command is None:
        top.print_help(sys.stderr)
        return 2
    if args.command == "explain" and args.listen:
        from switchyard.relay.reactor import install

        install()  # switchyard's reactor, before anything imports the default one
    result: int = args.run(args)
    return result


def entry_point() -> None:
    """The console script."""
    raise SystemExit(main())
