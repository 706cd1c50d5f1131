"""Many timeouts of one length on one reactor timer (sniffing, connecting)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="switchyard")


class Deadline:
    """One pending timeout; L{cancel} it when what it guards is over."""

    __slots__ = ("when", "item", "owner")

    def __init__(self, when: float, item: Any, owner: Deadlines) -> None:
        self.when = when
        self.item = item
        self.owner = owner

    def cancel(self) -> None:
        if self.item is not None:
            self.item = None  # dropped when it reaches the front
            self.owner._ended()


class Deadlines:
    """Timeouts that all last ``length`` seconds: ``expire(item)`` is called
    for each one not cancelled when its time comes, exactly then.

    A timer per connection costs a DelayedCall made, pushed on the reactor's
    heap and cancelled, a few microseconds each time. With one length,
    deadlines come due in the order they were added: a deque holds them and
    one reactor timer waits for the front one.
    """

    def __init__(self, reactor: Any, length: float, expire: Callable[[Any], None]) -> None:
        self.reactor = reactor
        self.length = length
        self.expire = expire
        self._queue: deque[Deadline] = deque()
        self._timer: Any = None
        self._live = 0  # added, and neither cancelled nor expired

    def add(self, item: Any) -> Deadline:
        deadline = Deadline(self.reactor.seconds() + self.length, item, self)
        self._queue.append(deadline)
        self._live += 1
        if self._timer is None:
            self._timer = self.reactor.callLater(self.length, self._fire)
        return deadline

    def _ended(self) -> None:
        self._live -= 1
        if not self._live:
            # Nothing left to time: no timer outlives what it guarded.
            self.stop()

    def _fire(self) -> None:
        self._timer = None
        queue = self._queue
        now = self.reactor.seconds()
        while queue and (queue[0].item is None or queue[0].when <= now):
            deadline = queue.popleft()
            item, deadline.item = deadline.item, None
            if item is not None:
                self._live -= 1
                try:
                    self.expire(item)
                except Exception:
                    # One failure must not stop the timeouts after it.
                    log.failure("a timeout's handler failed")
        # Cancelled ones at the front would only wake the timer for nothing.
        while queue and queue[0].item is None:
            queue.popleft()
        if self._timer is not None:
            # An expire() added one and started a timer for its own deadline:
            # the front one is due sooner.
            self._timer.cancel()
            self._timer = None
        if queue:
            self._timer = self.reactor.callLater(max(0.0, queue[0].when - now), self._fire)

    def stop(self) -> None:
        """Forget every pending timeout."""
        for deadline in self._queue:
            deadline.item = None
        self._live = 0
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
