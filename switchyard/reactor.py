"""The reactor switchyard runs on: Twisted's epoll reactor, with the relay's
events handed to it directly.

Twisted runs each I/O event's handler inside a logging context
(``callWithLogger``, then ``_doReadOrWrite``): about 1.6 µs per event on
this machine, which is most of the Python cost of relaying one small
message (two events per request and answer). Descriptors whose class is in
L{DIRECT} handle their own errors and get plain read and write events by a
method call; hang-ups and errors, and every other descriptor, take
Twisted's usual path.

``twistd switchyard`` installs it unless another reactor was chosen
(``twistd --reactor=...``) or is already installed; on systems without
epoll the default reactor is used, and everything works the same, slower.
"""

from __future__ import annotations

import select
import sys
from typing import Any

from twisted.python import log

# Descriptor classes with ``on_event(event)``: filled by switchyard.splice.
DIRECT: set[type] = set()

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
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue  # unregistered by an earlier event of this batch
                if type(selectable) in direct and not event & ~_FAST:
                    selectable.on_event(event)
                else:
                    log.callWithLogger(selectable, usual, selectable, fd, event)

        doIteration = doPoll


def install() -> Any:
    """Install L{SwitchyardReactor} if no reactor is installed yet and this
    system has epoll; return the reactor in use either way."""
    if "twisted.internet.reactor" not in sys.modules and EPollReactor is not None:
        from twisted.internet.main import installReactor

        installReactor(SwitchyardReactor())
    from twisted.internet import reactor

    return reactor
