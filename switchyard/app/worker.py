"""One worker of ``workers = N``: it adopts the listening sockets its parent
opened, compiles the config text the parent sends, and serves until told to
stop (or until the parent is gone). Run as ``python -m switchyard.app.worker``."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventAsJSON,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.relay import internals

# The worker's end of its pipes: its structured log, then one fd per listener.
LOG_FD = 3
FIRST_LISTENER_FD = 4
# A worker's info and debug log lines reach the parent at most this late.
LOG_BATCH_DELAY = 0.1

log = Logger(namespace="switchyard.workers")
_BATCHED = frozenset({LogLevel.debug, LogLevel.info})

@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """A listening socket the parent opened, inherited as file descriptor ``fd``."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        probe = socket.socket(fileno=os.dup(self.fd))
        family = probe.family
        probe.close()
        # The endpoint closes our copy of the fd once adopted, so stopping
        # this worker's port really stops it accepting.
        listening = AdoptedStreamServerEndpoint(self.reactor, self.fd, family).listen(factory)
        if family == socket.AF_UNIX:
            listening.addCallback(internals.leave_unix_socket_file)
        return listening


@implementer(IReadDescriptor)
class _ParentWatch:
    """End of file on stdin: the parent died without stopping us, so stop."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False
        reactor.addSystemEventTrigger("before", "shutdown", self._stopping)

    def _stopping(self) -> None:
        self.stopping = True

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "parent"

    def doRead(self) -> Any:
        try:
            if os.read(0, 4096):
                return None
        except BlockingIOError:
            return None
        except OSError:
            pass
        return error.ConnectionDone()

    def connectionLost(self, reason: Failure) -> None:
        # (epoll reports the closed pipe as a hang-up, without a read.) The
        # reactor also disconnects every reader when it shuts down: that is
        # not the parent leaving.
        if self.stopping:
            return
        log.warn("the parent process is gone: stopping")
        self.reactor.stop()


@implementer(ILogObserver)
class _JSONLines:
    """The worker's log observer: one JSON event a line, to the parent.

    While the reactor runs, lines are written in batches at most
    LOG_BATCH_DELAY late: one write (and one read in the parent) carries
    many access-log lines, where a write per line made the logs cost more
    than the connections. Warnings, errors and the ready event go at once.
    """

    def __init__(self, out: Any) -> None:
        self.out = out  # a buffered text file
        self.reactor: Any = None
        self._pending: Any = None

    def batch(self, reactor: Any) -> None:
        self.reactor = reactor

    def stop_batching(self) -> None:
        self.reactor = None
        self.flush()

    def __call__(self, event: dict[str, Any]) -> None:
        _write_event(self.out, event)
        if (self.reactor is None or event.get("log_level") not in _BATCHED
                or event.get("switchyard_worker_ready")):
            self.flush()
        elif self._pending is None:
            self._pending = self.reactor.callLater(LOG_BATCH_DELAY, self.flush)

    def flush(self) -> None:
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass  # the parent is gone; _ParentWatch stops this worker


def _write_event(out: Any, event: dict[str, Any]) -> None:
    # The text is formatted here, where the values are live: Twisted's own
    # flattening for JSON drops format specs ({duration:.3f}). The fields
    # travel as they are, for the parent's structured observers.
    shipped = {k: v for k, v in event.items() if k not in ("log_format", "log_flattened")}
    shipped["worker_text"] = formatEvent(event)
    try:
        line = eventAsJSON(shipped)
    except Exception:
        # A field that cannot be serialised: keep the text and the basics.
        line = eventAsJSON({k: v for k, v in shipped.items()
                            if k.startswith("log_") and k != "log_failure"}
                           | {"worker_text": shipped["worker_text"]})
    try:
        out.write(line + "\n")
    except (OSError, ValueError):
        pass  # the parent is gone (see _JSONLines.flush)


def _read_config(fd: int) -> bytes:
    """The config text the parent writes first on stdin: ``LENGTH\\n`` then the bytes."""
    header = b""
    while not header.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError("stdin closed before the config arrived")
        header += chunk
    size = int(header)
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise RuntimeError(f"stdin closed after {len(data)} of {size} config bytes")
        data += chunk
    return data


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m switchyard.app.worker",
        description="One switchyard worker; started by `twistd switchyard` with workers > 1, "
                    "which writes the config text on its stdin.")
    parser.add_argument("--config", required=True,
                        help="the config's path (for relative paths and logs)")
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--log-fd", type=int, required=True,
                        help="where to write log events, as JSON lines")
    parser.add_argument("--fd", action="append", default=[], metavar="LISTENER=FD",
                        help="a listening socket to adopt for the named listener")
    args = parser.parse_args(argv)
    fds: dict[str, int] = {}
    for item in args.fd:
        name, _, fd = item.rpartition("=")
        fds[name] = int(fd)
    args.fds = fds
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT (or the parent's death); 0 after a graceful stop."""
    args = _arguments(argv)
    out = os.fdopen(args.log_fd, "w", encoding="utf-8", buffering=1 << 16)
    observer = _JSONLines(out)
    globalLogBeginner.beginLoggingTo([observer])
    try:
        from switchyard.config import compile_source
        from switchyard.relay.reactor import install

        reactor = install()
        from switchyard.app.service import switch_service

        text = _read_config(0)
        config = compile_source(text, reactor, path=args.config)
        endpoints = {name: InheritedEndpoint(reactor, fd) for name, fd in args.fds.items()}
        top = switch_service(config, reactor, endpoints=endpoints)
        top.privilegedStartService()
        top.startService()
    except BaseException:
        log.failure("could not start")
        return 3
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    os.set_blocking(0, False)
    reactor.addReader(_ParentWatch(reactor))
    # Ready once the reactor runs and the signal handlers are in place (they
    # are installed after startup): a SIGTERM from then on is a graceful stop.
    reactor.callWhenRunning(
        lambda: log.info("ready (pid {pid}): serving {listeners}", pid=os.getpid(),
                         listeners=", ".join(args.fds), switchyard_worker_ready=True))
    reactor.callWhenRunning(observer.batch, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", observer.stop_batching)
    reactor.run()
    observer.stop_batching()
    # The reactor restores the default handlers when it stops: a late signal
    # (Ctrl-C reaches workers and their parent) must not turn a clean exit
    # into a death by signal.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    return 0


if __name__ == "__main__":
    # Through the package, so the classes here are switchyard.app.worker's, not __main__'s.
    from switchyard.app.worker import main as _main

    sys.exit(_main())
