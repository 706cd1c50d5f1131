"""A ``[backend.NAME]`` table, checked key by key, compiled into a BackendTarget."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import attr
from twisted.logger import Logger

from switchyard.endpoints import (
    client_endpoint,
    ip_socket_address,
    split_host_port,
    tls_client_endpoint,
)
from switchyard.interfaces import OptionError
from switchyard.options import Options
from switchyard.targets.backends.balancing import BALANCERS
from switchyard.targets.backends.discovery import (
    FAMILIES,
    Discovered,
    Discovery,
    Found,
    make_resolver,
)
from switchyard.targets.backends.health import CheckSpec, HealthChecker
from switchyard.targets.backends.pool import Pool, Server
from switchyard.targets.backends.target import BackendTarget
from switchyard.values import describe_value

log = Logger(namespace="switchyard.backend")

DEFAULT_CONNECT_TIMEOUT = 5.0

BACKEND_KEYS = (
    "servers", "balance", "proxy_protocol", "connect_timeout", "retries",
    "max_connections", "max_queue", "queue_timeout", "all_backups",
    "check", "check_interval", "check_timeout", "check_rise", "check_fall",
    "check_send", "check_expect", "passive_failures", "passive_down_time",
    "resolvers", "dns_refresh", "dns_family",
    "tls", "tls_verify", "tls_ca", "tls_server_name",
)
SERVER_KEYS = ("address", "weight", "backup", "max_connections", "check", "check_port",
               "discovery")
_CHECK_DETAILS = ("check_interval", "check_timeout", "check_rise", "check_fall",
                  "check_send", "check_expect")
MAX_WEIGHT = 256  # HAProxy's range; SRV weights may go higher
_DNS_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerEntry:
    """One item of ``servers``: a server, or a name standing for several."""

    address: str
    weight: int = 1
    backup: bool = False
    max_connections: int = 0
    check: bool = True
    check_port: int | None = None
    discovery: str = "none"  # "dns" (every A/AAAA record) or "srv"


def _within(prefix: str, compile_part: Any) -> Any:
    try:
        return compile_part()
    except OptionError as e:
        raise OptionError(f"{prefix}.{e.key}", e.problem)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_key(key: str, raw: Any) -> str:
    """Where an entry's address is: ``servers[0]``, or ``servers[0].address`` in a table."""
    return f"{key}.address" if isinstance(raw, Mapping) else key


def _server_entry(key: str, raw: Any, defaults: ServerEntry) -> ServerEntry:
    table = {"address": raw} if isinstance(raw, str) else raw
    if not isinstance(table, Mapping):
        raise OptionError(key, "expected \"host:port\", an endpoint string or a table like "
                               "{ address = \"host:port\", weight = 2 }, "
                               f"got {describe_value(raw)}")
    options = _within(key, lambda: Options(table, SERVER_KEYS))

    def read() -> ServerEntry:
        return ServerEntry(
            address=options.text("address", required=True) or "",
            weight=options.integer("weight", 1, minimum=0, maximum=MAX_WEIGHT),
            backup=options.flag("backup"),
            max_connections=options.integer("max_connections", defaults.max_connections,
                                            minimum=0, maximum=1_000_000),
            check=options.flag("check", True),
            check_port=options.integer("check_port", 0, minimum=0, maximum=65535) or None,
            discovery=options.choice("discovery", "none", ("none", "dns", "srv")),
        )

    entry: ServerEntry = _within(key, read)
    hp = split_host_port(entry.address)
    if entry.discovery == "dns" and (hp is None or not hp[0]):
        raise OptionError(address_key(key, raw), "discovery = \"dns\" needs \"name:port\" "
                          f"(each address of the name, on that port), got {entry.address!r}")
    if entry.discovery == "srv" and (hp is not None or not _DNS_NAME.match(entry.address)):
        raise OptionError(address_key(key, raw), "discovery = \"srv\" needs a bare SRV name "
                          "like \"_http._tcp.example.com\" (the records give the ports), "
                          f"got {entry.address!r}")
    if entry.check_port is not None and entry.discovery == "none" and (hp is None or not hp[0]):
        raise OptionError(f"{key}.check_port", "needs a \"host:port\" address")
    return entry


def _latin1(key: str, text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise OptionError(key, "only characters \\u0000 to \\u00ff (one byte each) are allowed")


def _check_spec(options: Options, connect_timeout: float) -> CheckSpec:
    interval = options.number("check_interval", 2.0)
    send = options.text("check_send")
    expect = options.text("check_expect")
    pattern = None
    if expect is not None:
        try:
            pattern = re.compile(_latin1("check_expect", expect))
        except re.error as e:
            raise OptionError("check_expect", f"bad regular expression: {e}")
    return CheckSpec(
        interval=interval,
        timeout=options.number("check_timeout", min(interval, connect_timeout)),
        rise=options.integer("check_rise", 2, minimum=1, maximum=1000),
        fall=options.integer("check_fall", 3, minimum=1, maximum=1000),
        send=_latin1("check_send", send) if send else b"",
        expect=pattern,
    )


def _resolvers(options: Options) -> tuple[tuple[str, int], ...]:
    found = []
    for value in options.texts("resolvers") or ():
        hp = split_host_port(value)
        host, port = hp if hp is not None else (value, 53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise OptionError("resolvers", f"{value!r} is not \"IP\" or \"IP:port\"")
        found.append((host, port))
    return tuple(found)


def _ip_endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    return client_endpoint("address", _join(host, port), reactor, timeout)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Origination:
    """TLS from switchyard to the servers of a backend."""

    verify: bool
    ca_file: str | None
    server_name: str | None

    def wrap(self, key: str, endpoint: Any, address: str, reactor: Any) -> Any:
        name = self.server_name or _host_of(address)
        if not name:
            raise OptionError(key, "cannot tell the server's name for TLS from "
                                   f"{address!r}: set tls_server_name")
        return tls_client_endpoint(reactor, endpoint, server_name=name,
                                   verify=self.verify, ca_file=self.ca_file)


def _host_of(address: str) -> str | None:
    hp = split_host_port(address)
    if hp is not None:
        return hp[0]
    found = re.search(r"(?:^|:)host=([^:]+)", address)
    return found.group(1) if found else None


def _origination(name: str, options: Options) -> _Origination | None:
    if not options.flag("tls"):
        for key in ("tls_verify", "tls_ca", "tls_server_name"):
            if key in options:
                raise OptionError(key, "has no effect without tls = true")
        return None
    verify = options.flag("tls_verify", True)
    ca_file = options.text("tls_ca")
    if ca_file is not None:
        try:
            with open(ca_file, "rb") as f:
                if b"-----BEGIN CERTIFICATE-----" not in f.read():
                    raise OptionError("tls_ca", f"{ca_file!r} holds no PEM certificate")
        except OSError as e:
            raise OptionError("tls_ca", f"cannot read {ca_file!r}: {e.strerror}")
    if not verify:
        log.warn("backend {name}: TLS to its servers is NOT verified (tls_verify = false)",
                 name=name)
    return _Origination(verify=verify, ca_file=ca_file,
                        server_name=options.text("tls_server_name"))


def compile_backend(name: str, raw: Mapping[str, Any], reactor: Any) -> BackendTarget:
    """A [backend.NAME] table as a target; raises OptionError naming the key."""
    options = Options(raw, BACKEND_KEYS)
    connect_timeout = options.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    balance = options.choice("balance", "roundrobin", tuple(BALANCERS))
    proxy_protocol = options.choice("proxy_protocol", "none", ("none", "v1", "v2"))
    defaults = ServerEntry(address="", max_connections=options.integer(
        "max_connections", 0, minimum=0, maximum=1_000_000))
    check = options.flag("check")
    if not check:
        for key in _CHECK_DETAILS:
            if key in raw:
                raise OptionError(key, "has no effect without check = true")
    check_spec = _check_spec(options, connect_timeout) if check else None
    tls = _origination(name, options)

    servers_raw = raw.get("servers")
    if isinstance(servers_raw, (str, Mapping)):
        servers_raw = [servers_raw]
    if not isinstance(servers_raw, list) or not servers_raw:
        raise OptionError("servers", "a non-empty list of servers is required")
    entries = [_server_entry(f"servers[{i}]", item, defaults)
               for i, item in enumerate(servers_raw)]

    def checked(entry: ServerEntry) -> bool:
        return check and entry.check

    def static_server(key: str, raw_entry: Any, entry: ServerEntry) -> Server:
        check_endpoint = None
        hp = split_host_port(entry.address)
        if entry.check_port is not None and hp is not None:
            check_endpoint = client_endpoint(f"{key}.check_port", _join(hp[0], entry.check_port),
                                       reactor, connect_timeout)
        endpoint = client_endpoint(address_key(key, raw_entry), entry.address, reactor,
                             connect_timeout)
        if tls is not None:
            endpoint = tls.wrap(address_key(key, raw_entry), endpoint, entry.address, reactor)
        return Server(entry.address, endpoint,
                      weight=entry.weight, backup=entry.backup,
                      max_connections=entry.max_connections,
                      check_endpoint=check_endpoint, checked=checked(entry),
                      direct=ip_socket_address(entry.address) if tls is None else None)

    def discovered_server(found_entry: Discovered, found: Found) -> Server:
        entry = entries[found_entry.index]
        check_endpoint = None
        if entry.check_port is not None:
            check_endpoint = _ip_endpoint(reactor, found.host, entry.check_port,
                                          connect_timeout)
        endpoint = _ip_endpoint(reactor, found.host, found.port, connect_timeout)
        if tls is not None:
            # Discovered by name: the certificate must carry that name.
            endpoint = tls.wrap("servers", endpoint, entry.address, reactor)
        return Server(found.description, endpoint,
                      weight=entry.weight if found.weight is None else found.weight,
                      backup=entry.backup, priority=found.priority,
                      max_connections=entry.max_connections,
                      check_endpoint=check_endpoint, checked=checked(entry),
                      direct=(ip_socket_address(_join(found.host, found.port))
                              if tls is None else None))

    pool_entries: list[list[Server]] = []
    discovered: list[Discovered] = []
    for i, entry in enumerate(entries):
        if entry.discovery == "none":
            pool_entries.append([static_server(f"servers[{i}]", servers_raw[i], entry)])
            continue
        pool_entries.append([])  # filled by the first lookup, once started
        if entry.discovery == "srv":
            discovered.append(Discovered(i, "srv", entry.address.rstrip(".")))
        else:
            host, port = split_host_port(entry.address) or ("", 0)
            discovered.append(Discovered(i, "dns", host, port))

    pool = Pool(name, pool_entries, BALANCERS[balance](), reactor,
                all_backups=options.flag("all_backups"),
                passive_failures=options.integer("passive_failures", 3, minimum=0,
                                                 maximum=1000),
                passive_down_time=options.number("passive_down_time", 30.0))
    resolvers = _resolvers(options)
    dns_refresh = options.number("dns_refresh", 5.0)
    dns_family = options.choice("dns_family", "all", FAMILIES)
    discovery = None
    if discovered:
        discovery = Discovery(pool, discovered, discovered_server,
                              partial(make_resolver, resolvers, reactor), dns_refresh,
                              dns_family, reactor)
    return BackendTarget(
        name, pool, reactor=reactor,
        proxy_protocol=None if proxy_protocol == "none" else proxy_protocol,
        connect_timeout=connect_timeout,
        retries=options.integer("retries", 3, minimum=0, maximum=100),
        max_queue=options.integer("max_queue", 256, minimum=0, maximum=100_000),
        queue_timeout=options.number("queue_timeout", connect_timeout),
        checker=HealthChecker(pool, check_spec, reactor) if check_spec else None,
        discovery=discovery,
    )
