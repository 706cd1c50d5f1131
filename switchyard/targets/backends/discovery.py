"""DNS discovery: names re-resolved periodically, every A/AAAA or SRV record a server."""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator, Sequence
from typing import Any

import attr
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from switchyard.targets.backends.pool import Pool, Server

log = Logger(namespace="switchyard.backend")

DNS_TIMEOUTS = (1, 3)  # seconds before each try: a lookup gives up after 4 s
FAMILIES = ("all", "v4", "v6")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Found:
    """One address a discovered name resolved to."""

    host: str  # an IP address
    port: int
    weight: int | None = None  # SRV weight; None: the entry's own
    priority: int = 0  # SRV priority

    @property
    def description(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Discovered:
    """A ``servers`` entry whose servers come from DNS."""

    index: int  # its position in the pool's entries
    mode: str  # "dns": A/AAAA records, each on ``port``; "srv": SRV records
    name: str
    port: int = 0

    @property
    def label(self) -> str:
        return f"{self.name}:{self.port}" if self.mode == "dns" else self.name


def _wanted(address: str, family: str) -> bool:
    return family == "all" or (":" in address) == (family == "v6")


def _addresses(records: Any, family: str) -> list[str]:
    """The addresses of the A and AAAA records among ``records`` (CNAMEs are skipped)."""

    found = []
    for rr in records:
        if rr.type == dns.A:
            found.append(rr.payload.dottedQuad())
        elif rr.type == dns.AAAA:
            found.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
    return [a for a in found if _wanted(a, family)]


def lookup_addresses(resolver: Any, name: str, family: str) -> defer.Deferred[list[str]]:
    """The A and/or AAAA addresses of ``name``; none if it does not exist (NXDOMAIN),
    a failure if the resolver could not tell (timeout, SERVFAIL)."""

    def missing(f: Failure) -> list[str]:
        f.trap(DNSNameError)
        return []

    lookups = {"v4": [resolver.lookupAddress], "v6": [resolver.lookupIPV6Address],
               "all": [resolver.lookupAddress, resolver.lookupIPV6Address]}[family]
    queries = [lookup(name, DNS_TIMEOUTS).addCallback(lambda r: _addresses(r[0], family))
               .addErrback(missing) for lookup in lookups]
    gathered = defer.gatherResults(queries, consumeErrors=True)

    def unwrap(f: Failure) -> Failure:
        first = f.value
        assert isinstance(first, defer.FirstError)
        return first.subFailure  # the lookup's own failure

    gathered.addErrback(unwrap)
    return gathered.addCallback(lambda lists: [a for addresses in lists for a in addresses])


@defer.inlineCallbacks
def lookup_service(resolver: Any, name: str,
                   family: str) -> Generator[defer.Deferred[Any], Any, list[Found]]:
    """The servers an SRV name lists, with their priorities and weights."""

    try:
        answers, _, additional = yield resolver.lookupService(name, DNS_TIMEOUTS)
    except DNSNameError:
        return []
    # Registries (Consul) send the targets' addresses along: no second lookup.
    known: dict[str, list[str]] = {}
    for rr in additional:
        for address in _addresses([rr], family):
            known.setdefault(rr.name.name.decode().lower(), []).append(address)
    found: list[Found] = []
    for rr in answers:
        if rr.type != dns.SRV:
            continue
        srv = rr.payload
        target = srv.target.name.decode().lower()
        if not target or target == ".":
            continue  # RFC 2782: "the service is decidedly not available"
        addresses = known.get(target)
        if not addresses:
            addresses = yield lookup_addresses(resolver, target, family)
        # RFC 2782 weight 0 means "rarely"; switchyard has no "rarely", so 1.
        found.extend(Found(a, srv.port, max(1, srv.weight), srv.priority) for a in addresses)
    return found


class Discovery:
    """Re-resolves a backend's discovered entries every ``refresh`` seconds and
    replaces their servers in the pool; a failed lookup keeps the last answer."""

    def __init__(self, pool: Pool, entries: Sequence[Discovered],
                 make_server: Callable[[Discovered, Found], Server],
                 resolver_factory: Callable[[], Any], refresh: float, family: str,
                 reactor: Any) -> None:
        self.pool = pool
        self.entries = tuple(entries)
        self.make_server = make_server
        self.resolver_factory = resolver_factory
        self.refresh = refresh
        self.family = family
        self.reactor = reactor
        self._resolver: Any = None
        self._loop: LoopingCall | None = None
        self._running: dict[Discovered, defer.Deferred[Any]] = {}
        self._failing: set[Discovered] = set()
        self._answered: set[Discovered] = set()

    def start(self) -> None:
        self._resolver = self.resolver_factory()
        self._loop = LoopingCall(self.resolve_all)
        self._loop.clock = self.reactor
        self._loop.start(self.refresh, now=True)

    def stop(self) -> defer.Deferred[None]:
        """Stop resolving; fires once the lookups in progress have ended."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return defer.gatherResults(list(self._running.values())).addCallback(lambda _: None)

    def resolve_all(self) -> None:
        for entry in self.entries:
            if entry not in self._running:  # a slow lookup is not doubled
                self._resolve(entry)

    def _resolve(self, entry: Discovered) -> None:
        d: defer.Deferred[Any]
        if entry.mode == "srv":
            d = lookup_service(self._resolver, entry.name, self.family)
        else:
            d = lookup_addresses(self._resolver, entry.name, self.family).addCallback(
                lambda addresses: [Found(a, entry.port) for a in addresses])
        self._running[entry] = d

        def done(result: Any) -> None:
            del self._running[entry]
            if self._loop is None:
                return  # stopped meanwhile
            if isinstance(result, Failure):
                self._failed(entry, result)
            else:
                self.apply(entry, result)

        d.addBoth(done)

    def _failed(self, entry: Discovered, f: Failure) -> None:
        if entry in self._failing:
            return
        self._failing.add(entry)
        log.warn("backend {backend}: cannot resolve {name} ({error}); keeping its "
                 "{count} servers until it resolves again", backend=self.pool.name,
                 name=entry.label, error=f.getErrorMessage() or repr(f.value),
                 count=len(self.pool.entry(entry.index)), backend_state=True)

    def apply(self, entry: Discovered, found: Sequence[Found]) -> None:
        """Make ``found`` the servers of ``entry``, logging what changed."""
        recovered = entry in self._failing
        self._failing.discard(entry)
        unique: dict[str, Found] = {}
        for f in sorted(found, key=lambda f: (f.priority, f.host, f.port)):
            unique.setdefault(f.description, f)
        old = {s.description: s for s in self.pool.entry(entry.index)}
        servers = []
        for description, f in unique.items():
            server = old.get(description)
            if server is None:
                server = self.make_server(entry, f)
            elif f.weight is not None:
                server.weight, server.priority = f.weight, f.priority
            servers.append(server)
        first = entry not in self._answered
        self._answered.add(entry)
        if list(old) != list(unique) or recovered or first:
            added = [d for d in unique if d not in old]
            removed = [d for d in old if d not in unique]
            log.info("backend {backend}: {name} resolves to {servers}{changes}",
                     backend=self.pool.name, name=entry.label,
                     servers=", ".join(unique) or "nothing",
                     changes=_changes(added, removed), backend_state=True)
        # After the log line, so that a state change it causes reads in order.
        self.pool.replace(entry.index, servers)


def _changes(added: list[str], removed: list[str]) -> str:
    parts = []
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    return f" ({'; '.join(parts)})" if parts else ""


def make_resolver(servers: Sequence[tuple[str, int]], reactor: Any) -> Any:
    """A resolver asking ``servers``, or the system's (/etc/hosts, resolv.conf)."""

    if servers:
        return client.Resolver(servers=list(servers), reactor=reactor, timeout=DNS_TIMEOUTS)
    return client.getResolver()
