"""The reactor switchyard runs on: Twisted's epoll reactor, with the relay's
events handed to it directly.

Twisted runs each I/O event's handler inside a logging context
(``callWithLogger``, then ``_doReadOrWrite``): about 1.6 µs per event on
this machine, which is most of the Python cost of relaying one small
message (two events per request and answer). Descriptors whose class is in
L{DIRECT} handle their own errors and get plain read and write events by a
method call; hang-ups and errors, and every other descriptor, take
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

# Descriptor classes with ``on_event(event)``: filled by switchyard.splice.
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

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._poller.poll(-1 if timeout is None else timeout,
                                           len(self._selectables))
            except InterruptedError:
                return
            selectables = self._selectables
            usual = self._doReadOrWrite
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
        # (used by the splice relay through the functions below)

        def adopt(self, fd: int, selectable: Any) -> tuple[bool, bool]:
            """``selectable`` takes over whatever is registered on ``fd``, as
            it is (no system call); returns (reading, writing)."""
            reading, writing = fd in self._reads, fd in self._writes
            if reading or writing:
                self._selectables[fd] = selectable
            return reading, writing

        def set_interest(self, selectable: Any, fd: int, read: bool, write: bool) -> None:
            """Register ``selectable`` for exactly ``read``/``write``: one
            epoll_ctl (where add/remove pairs would need two)."""
            was = fd in self._reads or fd in self._writes
            flags = (select.EPOLLIN if read else 0) | (select.EPOLLOUT if write else 0)
            if not flags:
                if was:
                    self._poller.unregister(fd)
                    del self._selectables[fd]
            elif was:
                self._poller.modify(fd, flags)
                self._selectables[fd] = selectable
            else:
                self._poller.register(fd, flags)
                self._selectables[fd] = selectable
            for wanted, books in ((read, self._reads), (write, self._writes)):
                if wanted:
                    books.add(fd)
                else:
                    books.discard(fd)

        def forget(self, fd: int) -> None:
            """Drop ``fd`` from the books without a system call: the caller
            closes it right away, which removes it from the epoll set (it
            is never duplicated). A later event for it in this batch finds
            nothing registered and is skipped."""
            self._reads.discard(fd)
            self._writes.discard(fd)
            self._selectables.pop(fd, None)


def install() -> Any:
    """Install L{SwitchyardReactor} if no reactor is installed yet and this
    system has epoll; return the reactor in use either way."""
    if "twisted.internet.reactor" not in sys.modules and EPollReactor is not None:
        from twisted.internet.main import installReactor

        installReactor(SwitchyardReactor())
    from twisted.internet import reactor

    return reactor

