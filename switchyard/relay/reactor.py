"""The reactor switchyard runs on: Twisted's epoll reactor, with the relay's
events handed to it directly.

Twisted runs each I/O event's handler inside a logging context
(``callWithLogger``): most of the Python cost of relaying one small message
(two events per request and answer; benchmarks/README.md has the figures).
Descriptors whose class is in L{DIRECT} handle their own errors and get
plain read and write events by a method call; hang-ups and errors, and every other descriptor, take
Twisted's usual path. Twisted's own TCP ports and accepted connections
(L{QUIET}) take the usual path without the logging context: Twisted's
legacy error lines from inside them then show ``[-]`` rather than the
connection's log prefix.

``twistd switchyard`` installs it unless another reactor was chosen
(``twistd --reactor=...``) or is already installed; on systems without
epoll the default reactor is used, and everything works the same, slower.
"""

from __future__ import annotations

import select
import sys
from typing import Any

from twisted.internet import tcp
from twisted.python import log

from switchyard.relay import internals

# Descriptor classes with ``on_event(event)``: filled by switchyard.relay.splice.
DIRECT: set[type] = set()
# Twisted classes whose events take Twisted's usual handling without the
# logging context around it: their own log lines are namespaced, so the
# context's "system" prefix adds nothing (listening ports and accepted
# connections, whose first read is each connection's sniff).
QUIET: set[type] = {tcp.Port, tcp.Server}

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll on this system
    EPollReactor = None  # type: ignore[assignment,misc]

_FAST = select.EPOLLIN | select.EPOLLOUT if hasattr(select, "EPOLLIN") else 0


if EPollReactor is not None:

    class SwitchyardReactor(EPollReactor):  # type: ignore[misc,valid-type]
        """EPollReactor, delivering plain events to L{DIRECT} descriptors directly."""

        def __init__(self) -> None:
            super().__init__()
            # Twisted's books, through the one module that touches them.
            parts = internals.epoll_parts(self)
            self._epoll = parts.poller
            self._by_fd = parts.selectables
            self._reading = parts.reads
            self._writing = parts.writes
            self._usual = parts.dispatch

        def doPoll(self, timeout: float | None) -> None:
            selectables = self._by_fd
            try:
                events = self._epoll.poll(-1 if timeout is None else timeout,
                                          len(selectables))
            except InterruptedError:
                return
            usual = self._usual
            direct = DIRECT
            quiet = QUIET
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue  # unregistered by an earlier event of this batch
                kind = type(selectable)
                if kind in direct and not event & ~_FAST:
                    selectable.on_event(event)
                elif kind in quiet:
                    try:
                        usual(selectable, fd, event)
                    except KeyboardInterrupt:
                        raise
                    except BaseException:
                        # What callWithLogger would do: log, and go on with
                        # the rest of the batch.
                        log.err(None, f"error handling an event of {selectable!r}")
                else:
                    log.callWithLogger(selectable, usual, selectable, fd, event)

        doIteration = doPoll

        # -- registrations by fd, with the fewest epoll_ctl calls ----------
        # (used by the splice relay)

        def adopt(self, fd: int, selectable: Any) -> tuple[bool, bool]:
            """``selectable`` takes over whatever is registered on ``fd``, as
            it is (no system call); returns (reading, writing)."""
            reading, writing = fd in self._reading, fd in self._writing
            if reading or writing:
                self._by_fd[fd] = selectable
            return reading, writing

        def set_interest(self, selectable: Any, fd: int, read: bool, write: bool) -> None:
            """Register ``selectable`` for exactly ``read``/``write``: one
            epoll_ctl (where add/remove pairs would need two)."""
            was = fd in self._reading or fd in self._writing
            flags = (select.EPOLLIN if read else 0) | (select.EPOLLOUT if write else 0)
            if not flags:
                if was:
                    self._epoll.unregister(fd)
                    del self._by_fd[fd]
            elif was:
                self._epoll.modify(fd, flags)
                self._by_fd[fd] = selectable
            else:
                self._epoll.register(fd, flags)
                self._by_fd[fd] = selectable
            for wanted, books in ((read, self._reading), (write, self._writing)):
                if wanted:
                    books.add(fd)
                else:
                    books.discard(fd)

        def forget(self, fd: int) -> None:
            """Drop ``fd`` from the books without a system call: the caller
            closes it right away, which removes it from the epoll set (it
            is never duplicated). A later event for it in this batch finds
            nothing registered and is skipped."""
            self._reading.discard(fd)
            self._writing.discard(fd)
            self._by_fd.pop(fd, None)


def install() -> Any:
    """Install L{SwitchyardReactor} if no reactor is installed yet, this
    system has epoll and this Twisted has what it needs (L{internals.check});
    return the reactor in use either way."""
    if ("twisted.internet.reactor" not in sys.modules and EPollReactor is not None
            and internals.check().reactor):
        from twisted.internet.main import installReactor

        installReactor(SwitchyardReactor())
    from twisted.internet import reactor

    return reactor
