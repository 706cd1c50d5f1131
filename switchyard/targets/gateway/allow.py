"""The gateway's allow-list: which networks and ports a decrypted address may point to.

Each entry is ``NETWORK:PORTS``: NETWORK an IPv4 address or CIDR block, or
an IPv6 one in brackets (``[2001:db8::/48]``); PORTS a port, a range
``A-B``, a comma-separated list of those, or ``*`` for every port (said on
purpose, never implied). An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``)
is checked, and dialled, as the IPv4 address it carries
(L{switchyard.networks.client_ip} reads addresses that way).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

import attr

from switchyard.interfaces import OptionError
from switchyard.networks import Network

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

EXAMPLE = '["10.0.0.0/8:7000-7999", "192.0.2.10:22", "[2001:db8::/48]:443"]'


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Rule:
    """One entry: a network and the port ranges allowed in it."""

    network: Network
    ports: tuple[tuple[int, int], ...]
    text: str

    def permits(self, ip: IP, port: int) -> bool:
        return ip in self.network and any(low <= port <= high for low, high in self.ports)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AllowList:
    """The rules of one gateway: an address is allowed if any rule permits it."""

    rules: tuple[Rule, ...]

    def permits(self, ip: IP, port: int) -> bool:
        return any(rule.permits(ip, port) for rule in self.rules)

    def allowed(self, ips: Iterable[IP], port: int) -> list[IP]:
        """Those of C{ips} allowed on C{port}, in order, each once."""
        return [ip for ip in dict.fromkeys(ips) if self.permits(ip, port)]

    def __str__(self) -> str:
        return ", ".join(rule.text for rule in self.rules)


def _ports(key: str, item: str, text: str) -> tuple[tuple[int, int], ...]:
    if text == "*":
        return ((1, 65535),)
    ranges = []
    for part in text.split(","):
        low_text, dash, high_text = part.strip().partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            low = high = 0
        if not (1 <= low <= high <= 65535):
            raise OptionError(key, f"{item!r}: {part.strip()!r} is not a port (1-65535) or a "
                                   f"range A-B; write '*' for every port")
        ranges.append((low, high))
    return tuple(ranges)


def parse_rule(key: str, item: Any) -> Rule:
    """One ``NETWORK:PORTS`` entry; OptionError says what is wrong with it."""
    if not isinstance(item, str) or not item:
        raise OptionError(key, f"expected entries like {EXAMPLE}, got {item!r}")
    if item.startswith("["):
        network_text, bracket, rest = item[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise OptionError(key, f"{item!r}: expected '[IPV6NETWORK]:PORTS'")
        ports_text = rest[1:]
        if ":" not in network_text:
            raise OptionError(key, f"{item!r}: brackets are for IPv6 networks only")
    else:
        network_text, colon, ports_text = item.partition(":")
        if not colon:
            raise OptionError(key, f"{item!r}: the ports are missing: write "
                                   f"'{item}:PORTS' (a port, a range A-B, or '*' for every "
                                   f"port)")
        if ":" in ports_text:
            raise OptionError(key, f"{item!r}: put an IPv6 network in brackets, like "
                                   f"'[2001:db8::/48]:443'")
    try:
        network = ipaddress.ip_network(network_text, strict=False)
    except ValueError:
        raise OptionError(key, f"{item!r}: {network_text!r} is not an IP network "
                               f"(like 10.0.0.0/8 or 192.0.2.10)")
    return Rule(network, _ports(key, item, ports_text), item)


def parse_allow(key: str, value: Any) -> AllowList:
    """The ``allow`` option: a string or a non-empty list of ``NETWORK:PORTS`` entries."""
    items: Sequence[Any] = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise OptionError(key, f"expected a list like {EXAMPLE}")
    return AllowList(tuple(parse_rule(key, item) for item in items))
