"""A backend's servers, their state (up, load) and which one gets a connection."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from switchyard.targets.backends.balancing import Balancer

log = Logger(namespace="switchyard.backend")


class Server:
    """One server of a backend: where it is, its share, and what the backend knows of it."""

    def __init__(self, description: str, endpoint: IStreamClientEndpoint, *, weight: int = 1,
                 backup: bool = False, priority: int = 0, max_connections: int = 0,
                 check_endpoint: IStreamClientEndpoint | None = None,
                 checked: bool = False, direct: tuple[int, tuple[str, int]] | None = None
                 ) -> None:
        self.description = description
        self.endpoint = endpoint
        # (family, sockaddr) of a plain TCP server at an IP address: the
        # switch may connect to it with a bare socket and splice.
        self.direct = direct
        self.weight = weight
        self.backup = backup
        self.priority = priority  # SRV priority: lower values are used first
        self.max_connections = max_connections  # 0: no limit
        self.check_endpoint = check_endpoint or endpoint
        self.checked = checked  # actively health-checked
        self.up = True
        self.active = 0  # connections connecting or relaying
        self.failures = 0  # consecutive connect failures (passive health)
        self.streak = 0  # consecutive check results that disagree with ``up``
        self.return_call: Any = None  # passive down time, without active checks

    @property
    def key(self) -> str:
        return self.description

    @property
    def tier(self) -> tuple[bool, int]:
        """Servers of the lowest tier that has one up get the connections."""
        return (self.backup, self.priority)

    def has_room(self) -> bool:
        return self.max_connections == 0 or self.active < self.max_connections

    def __repr__(self) -> str:
        return f"<Server {self.description} {'up' if self.up else 'down'} active={self.active}>"


class Full(enum.Enum):
    """Every server that may take the connection is at ``max_connections``."""

    FULL = "full"


FULL = Full.FULL

_SERVING_ALL_DOWN = "no server is up: connections are refused"
_SERVING_BACKUP = "no primary server is up: using backup servers"


class Pool:
    """The servers of one backend, grouped by config entry (a discovered name
    has as many servers as its DNS records), with their health and load."""

    def __init__(self, name: str, entries: Sequence[Sequence[Server]], balancer: Balancer,
                 reactor: Any, *, all_backups: bool = False, passive_failures: int = 3,
                 passive_down_time: float = 30.0) -> None:
        self.name = name
        self.balancer = balancer
        self.reactor = reactor
        self.all_backups = all_backups
        self.passive_failures = passive_failures
        self.passive_down_time = passive_down_time
        self.checks_running = False  # set by the HealthChecker while it runs
        self._entries = [list(servers) for servers in entries]
        self.servers: tuple[Server, ...] = ()
        self._flatten()
        # None: not known yet (discovered names have no servers before their first
        # lookup), so the first state is logged only if it is bad.
        self._serving: str | None = self._serving_state() if self.servers else None
        self.on_capacity: Callable[[], None] = lambda: None
        """Called when a server may take a connection again (the queue's pump)."""

    def _flatten(self) -> None:
        self.servers = tuple(s for servers in self._entries for s in servers)

    # -- choosing -------------------------------------------------------

    def choose(self, client: str, exclude: Any = ()) -> Server | Full | None:
        """The server for a connection from ``client``, FULL, or None if no server
        (not in ``exclude``: those this connection already tried) is up."""
        if len(self.servers) == 1:  # the common case, without the tiers and lists
            only = self.servers[0]
            if not only.up or only.weight <= 0 or only in exclude:
                return None
            return only if only.has_room() else FULL
        eligible = [s for s in self.servers if s.up and s.weight > 0 and s not in exclude]
        if not eligible:
            return None
        tier = min(s.tier for s in eligible)
        candidates = [s for s in eligible if s.tier == tier]
        if tier[0] and not self.all_backups:
            candidates = candidates[:1]  # HAProxy: only the first backup, unless allbackups
        with_room = [s for s in candidates if s.has_room()]
        if not with_room:
            return FULL
        return self.balancer.pick(with_room, client)

    def why_none(self) -> str:
        """Why L{choose} found no server, for the access log."""
        if not self.servers:
            return "no server: DNS discovery found none (yet)"
        down = sum(1 for s in self.servers if not s.up)
        drained = sum(1 for s in self.servers if s.up and s.weight == 0)
        return (f"no server up ({down} of {len(self.servers)} down"
                + (f", {drained} with weight 0)" if drained else ")"))

    def acquire(self, server: Server) -> None:
        server.active += 1

    def release(self, server: Server) -> None:
        server.active -= 1
        self.on_capacity()

    # -- passive health -------------------------------------------------

    def connect_succeeded(self, server: Server) -> None:
        server.failures = 0

    def connect_failed(self, server: Server, why: str) -> None:
        if server not in self.servers:
            return  # dropped by DNS discovery meanwhile: nothing to mark
        server.failures += 1
        if not (self.passive_failures and server.up
                and server.failures >= self.passive_failures):
            return
        self.set_down(server, f"{server.failures} connect failures in a row, last: {why}")

    def set_down(self, server: Server, why: str) -> None:
        """Mark ``server`` down; without active checks to notice it is back,
        it is tried again after passive_down_time."""
        self.mark(server, False, why)
        if not (server.checked and self.checks_running) and server.return_call is None:
            server.return_call = self.reactor.callLater(
                self.passive_down_time, self._passive_return, server)

    def _passive_return(self, server: Server) -> None:
        server.return_call = None
        self.mark(server, True, f"trying again after {self.passive_down_time:g}s down")

    # -- state ----------------------------------------------------------

    def mark(self, server: Server, up: bool, why: str) -> None:
        """Record a server's new state; logged once per change."""
        server.streak = 0
        if server.up == up:
            return
        server.up = up
        server.failures = 0
        if up and server.return_call is not None:
            server.return_call.cancel()
            server.return_call = None
        (log.info if up else log.warn)(
            "backend {backend}: server {server} is {state}: {why} ({summary})",
            backend=self.name, server=server.description, state="UP" if up else "DOWN",
            why=why, summary=self.summary(), backend_state=True)
        self._serving_changed()
        if up:
            self.on_capacity()

    def summary(self) -> str:
        parts = []
        for backup, label in ((False, "primary"), (True, "backup")):
            group = [s for s in self.servers if s.backup == backup]
            if group:
                parts.append(f"{sum(1 for s in group if s.up)}/{len(group)} {label} up")
        return ", ".join(parts) or "no servers"

    def _serving_state(self) -> str:
        up = [s for s in self.servers if s.up and s.weight > 0]
        if not up:
            return _SERVING_ALL_DOWN
        if all(s.backup for s in up) and not all(s.backup for s in self.servers):
            return _SERVING_BACKUP
        return ""

    def _serving_changed(self) -> None:
        """Log when the backend as a whole changes mode (primaries, backups, nothing)."""
        serving = self._serving_state()
        previous, self._serving = self._serving, serving
        if serving == previous or (previous is None and not serving):
            return
        if serving:
            log.error("backend {backend}: {serving}", backend=self.name, serving=serving,
                      backend_state=True)
        else:
            log.info("backend {backend}: primary servers are up again ({summary})",
                     backend=self.name, summary=self.summary(), backend_state=True)

    # -- discovery ------------------------------------------------------

    def entry(self, index: int) -> list[Server]:
        return list(self._entries[index])

    def replace(self, index: int, servers: Sequence[Server]) -> None:
        """Set the servers of a discovered entry; servers already known keep their
        state and connections (callers pass the existing objects)."""
        kept = {id(s) for s in servers}
        for old in self._entries[index]:
            if id(old) not in kept and old.return_call is not None:
                old.return_call.cancel()
                old.return_call = None
        self._entries[index] = list(servers)
        self._flatten()
        self._serving_changed()
        self.on_capacity()

    def stop(self) -> None:
        for server in self.servers:
            if server.return_call is not None:
                server.return_call.cancel()
                server.return_call = None
