"""Client-network rules: trusted PROXY fronts and per-route allow/deny lists."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from switchyard.interfaces import OptionError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(key: str, value: Any) -> tuple[Network, ...]:
    """A CIDR string or list of them (``10.0.0.0/8``, ``::1``, ``192.0.2.7``)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise OptionError(key, "expected a network like '10.0.0.0/8' or a list of them")
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise OptionError(key, f"{item!r} is not an IP network (like '10.0.0.0/8')")
    return tuple(networks)


def client_ip(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as rules see it (``::ffff:a.b.c.d`` counts as IPv4)."""
    if host is None:
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def contains(networks: Sequence[Network], host: str | None) -> bool:
    ip = client_ip(host)
    return ip is not None and any(ip in n for n in networks)


def access_rule(allow: Sequence[Network] | None,
                deny: Sequence[Network] | None) -> Callable[[str | None], bool] | None:
    """A predicate on the client host: denied networks first, then, if an
    allow list is given, only those. None when the route has no rule."""
    if allow is None and deny is None:
        return None

    def admits(host: str | None) -> bool:
        if deny is not None and contains(deny, host):
            return False
        return allow is None or contains(allow, host)

    return admits
