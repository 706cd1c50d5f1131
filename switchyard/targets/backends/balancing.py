"""Balancing policies: which of the eligible servers gets the next connection."""

from __future__ import annotations

import hashlib
import math
import random
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """What a policy reads of a server: its share, its load and a stable name."""

    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def active(self) -> int: ...


S = TypeVar("S", bound=Candidate)


class RoundRobin:
    """Smooth weighted round robin (nginx's): each server gets its weight's share
    of every ``sum(weights)`` connections, interleaved rather than in bursts."""

    def __init__(self) -> None:
        # Weak keys: servers that DNS discovery dropped disappear from here too.
        self._current: weakref.WeakKeyDictionary[Candidate, int] = weakref.WeakKeyDictionary()

    def pick(self, servers: Sequence[S], client: str) -> S:
        total = 0
        best: S | None = None
        best_weight = 0
        for server in servers:
            weight = self._current.get(server, 0) + server.weight
            self._current[server] = weight
            total += server.weight
            if best is None or weight > best_weight:
                best, best_weight = server, weight
        assert best is not None
        self._current[best] = best_weight - total
        return best


def _lighter(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` carries less load per unit of weight than ``b`` (exact, no floats)."""
    return a.active * b.weight < b.active * a.weight


class LeastConnections:
    """The server with the fewest connections per unit of weight; ties go round robin
    (HAProxy's ``leastconn``), so an idle pool still spreads its connections."""

    def __init__(self) -> None:
        self._ties = RoundRobin()

    def pick(self, servers: Sequence[S], client: str) -> S:
        lightest = servers[0]
        for server in servers[1:]:
            if _lighter(server, lightest):
                lightest = server
        ties = [s for s in servers if not _lighter(lightest, s)]
        return ties[0] if len(ties) == 1 else self._ties.pick(ties, client)


class PowerOfTwoChoices:
    """Two servers drawn at random (by weight), the less loaded one wins: close to
    ``leastconn`` without every connection going to the same momentarily idle
    server (Envoy's ``RANDOM``/``LEAST_REQUEST`` with two choices)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def _draw(self, servers: Sequence[S]) -> S:
        return self._rng.choices(servers, weights=[s.weight for s in servers])[0]

    def pick(self, servers: Sequence[S], client: str) -> S:
        if len(servers) == 1:
            return servers[0]
        first = self._draw(servers)
        second = self._draw([s for s in servers if s is not first])
        return second if _lighter(second, first) else first


def rendezvous_score(client: str, server: str, weight: int) -> float:
    """Weighted rendezvous (highest random weight) score of a server for a client."""
    digest = hashlib.blake2b(f"{client}\0{server}".encode(), digest_size=8).digest()
    # 53 bits: a float strictly inside (0, 1), so the logarithm is finite and negative.
    unit = ((int.from_bytes(digest, "big") >> 11) + 0.5) / (1 << 53)
    return -weight / math.log(unit)


class SourceHash:
    """Each client address always gets the same server while that server is up.

    Rendezvous hashing: a server going down moves only its own clients, and
    coming back takes back exactly those; the others never move.
    """

    def pick(self, servers: Sequence[S], client: str) -> S:
        return max(servers, key=lambda s: rendezvous_score(client, s.key, s.weight))


class First:
    """The first eligible server in the order written (HAProxy's ``first``): with
    ``max_connections``, fills one server before using the next."""

    def pick(self, servers: Sequence[S], client: str) -> S:
        return servers[0]


class Balancer(Protocol):
    def pick(self, servers: Sequence[S], client: str) -> S: ...


BALANCERS: dict[str, Callable[[], Balancer]] = {
    "roundrobin": RoundRobin,
    "leastconn": LeastConnections,
    "random": PowerOfTwoChoices,
    "source": SourceHash,
    "first": First,
}
"""Policy names as the ``balance`` option spells them."""
