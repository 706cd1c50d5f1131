"""Read a TOML config and compile it, once, into immutable route tables."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attr
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.plugin import getPlugins
from zope.interface import implementer

from switchyard.interfaces import IMatcher, IMatcherFactory, ITarget, MatcherConfigError
from switchyard.targets import BackendTarget, EchoTarget, RejectTarget, Server

DEFAULT_INSPECT_TIMEOUT = 5.0
DEFAULT_MAX_SNIFF_BYTES = 16 * 1024
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_CONNECT_TIMEOUT = 5.0

ROUTE_KEYS = ("name", "match", "to")
BUILTIN_TARGETS = ("echo", "reject")
_BUILTIN_TARGETS: dict[str, ITarget] = {"echo": EchoTarget(), "reject": RejectTarget()}


class ConfigError(Exception):
    """The config is unusable: ``key`` is the dotted path of the culprit."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Route:
    name: str
    matcher: IMatcher
    match: str
    target: ITarget


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Listener:
    name: str
    listen: str
    endpoint: IStreamServerEndpoint
    routes: tuple[Route, ...]
    inspect_timeout: float
    max_sniff_bytes: int
    on_timeout: Route | None
    idle_timeout: float


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Config:
    path: str
    listeners: tuple[Listener, ...]
    backends: Mapping[str, BackendTarget]


def matcher_factories() -> dict[str, IMatcherFactory]:
    """Every matcher plugin installed, built-in or third party, by name."""
    import twisted.plugins

    return {f.name: f for f in getPlugins(IMatcherFactory, twisted.plugins)}


def load(path: str, reactor: Any) -> Config:
    """Read and compile the config at ``path``; raise L{ConfigError}."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"config file {path!r} does not exist")
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path!r}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path} is not valid TOML: {e}")
    return compile_config(raw, reactor, path=path)


def compile_config(
    raw: Mapping[str, Any],
    reactor: Any,
    path: str = "<config>",
    factories: Mapping[str, IMatcherFactory] | None = None,
) -> Config:
    if factories is None:
        factories = matcher_factories()
    _check_keys("", raw, ("listener", "backend"))
    backends_raw = _table("backend", raw.get("backend", {}))
    backends = {
        name: _compile_backend(f"backend.{name}", name, _table(f"backend.{name}", b), reactor)
        for name, b in backends_raw.items()
    }
    for name in backends:
        if name in BUILTIN_TARGETS:
            raise ConfigError(f"backend.{name}", f"{name!r} is the name of a built-in target")
    listeners_raw = _table("listener", raw.get("listener"), required=True)
    if not listeners_raw:
        raise ConfigError("listener", "at least one listener is required")
    listeners = tuple(
        _compile_listener(f"listener.{name}", name, _table(f"listener.{name}", lst),
                          backends, factories, reactor)
        for name, lst in listeners_raw.items()
    )
    return Config(path=path, listeners=listeners, backends=backends)


_LISTENER_KEYS = ("listen", "route", "inspect_timeout", "max_sniff_bytes",
                  "on_timeout", "idle_timeout")


def _compile_listener(key: str, name: str, raw: Mapping[str, Any],
                      backends: Mapping[str, BackendTarget],
                      factories: Mapping[str, IMatcherFactory], reactor: Any) -> Listener:
    _check_keys(key, raw, _LISTENER_KEYS)
    listen = _get(key, raw, "listen", str, required=True)
    endpoint = _server_endpoint(f"{key}.listen", listen, reactor)
    routes_raw = raw.get("route")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise ConfigError(f"{key}.route", "at least one [[" + key + ".route]] is required")
    routes: list[Route] = []
    seen: set[str] = set()
    for i, r in enumerate(routes_raw):
        route = _compile_route(f"{key}.route[{i}]", r, backends, factories, seen)
        seen.add(route.name)
        routes.append(route)
    on_timeout = None
    if "on_timeout" in raw:
        target_name = _get(key, raw, "on_timeout", str)
        on_timeout = Route(name="on_timeout", matcher=_NEVER, match="on_timeout",
                           target=_target(f"{key}.on_timeout", target_name, backends))
    return Listener(
        name=name, listen=listen, endpoint=endpoint, routes=tuple(routes),
        inspect_timeout=_positive(key, raw, "inspect_timeout", DEFAULT_INSPECT_TIMEOUT),
        max_sniff_bytes=int(_positive(key, raw, "max_sniff_bytes", DEFAULT_MAX_SNIFF_BYTES,
                                      kind=int)),
        on_timeout=on_timeout,
        idle_timeout=_positive(key, raw, "idle_timeout", DEFAULT_IDLE_TIMEOUT),
    )


def _compile_route(key: str, raw: Any, backends: Mapping[str, BackendTarget],
                   factories: Mapping[str, IMatcherFactory], seen: set[str]) -> Route:
    if not isinstance(raw, dict):
        raise ConfigError(key, "a route must be a table")
    match = _get(key, raw, "match", str, required=True)
    factory = factories.get(match)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none installed"
        raise ConfigError(f"{key}.match", f"unknown matcher {match!r} (known: {known})")
    to = _get(key, raw, "to", str, required=True)
    target = _target(f"{key}.to", to, backends)
    name = raw.get("name")
    if name is None:
        name = match
        n = 2
        while name in seen:
            name, n = f"{match}-{n}", n + 1
    elif not isinstance(name, str) or not name:
        raise ConfigError(f"{key}.name", "must be a non-empty string")
    elif name in seen:
        raise ConfigError(f"{key}.name", f"route name {name!r} is used twice")
    options = {k: v for k, v in raw.items() if k not in ROUTE_KEYS}
    try:
        matcher = factory.build(options)
    except MatcherConfigError as e:
        raise ConfigError(f"{key}.{e.key}", e.problem)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, f"matcher {match!r}: {e}")
    return Route(name=name, matcher=matcher, match=match, target=target)


def _target(key: str, name: str, backends: Mapping[str, BackendTarget]) -> ITarget:
    if name in backends:
        return backends[name]
    if name in BUILTIN_TARGETS:
        return _BUILTIN_TARGETS[name]
    known = ", ".join(sorted(backends) + list(BUILTIN_TARGETS))
    raise ConfigError(key, f"unknown backend {name!r} (known: {known})")


_BACKEND_KEYS = ("servers", "proxy_protocol", "connect_timeout")


def _compile_backend(key: str, name: str, raw: Mapping[str, Any], reactor: Any) -> BackendTarget:
    _check_keys(key, raw, _BACKEND_KEYS)
    servers_raw = raw.get("servers")
    if isinstance(servers_raw, str):
        servers_raw = [servers_raw]
    if not isinstance(servers_raw, list) or not servers_raw:
        raise ConfigError(f"{key}.servers", "a non-empty list of servers is required")
    connect_timeout = _positive(key, raw, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    servers = tuple(
        Server(description=s, endpoint=_client_endpoint(f"{key}.servers[{i}]", s, reactor,
                                                        connect_timeout))
        for i, s in enumerate(servers_raw)
    )
    pp = raw.get("proxy_protocol", "none")
    if pp not in ("none", "v1", "v2"):
        raise ConfigError(f"{key}.proxy_protocol", f"must be 'none', 'v1' or 'v2', not {pp!r}")
    return BackendTarget(name=name, servers=servers,
                   proxy_protocol=None if pp == "none" else pp,
                   connect_timeout=connect_timeout)


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


_ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "unix", "ssl", "tls", "systemd", "tor", "onion"})


def _split_host_port(value: str) -> tuple[str, int] | None:
    """``host:port`` / ``[v6]:port`` shorthand, or None for an endpoint string."""
    m = _HOST_PORT.match(value)
    if m is None:
        return None
    host = m.group("v6") or m.group("host") or ""
    port = int(m.group("port"))
    if host.lower() in _ENDPOINT_TYPES or not 0 < port < 65536:
        return None
    return host, port


def _client_endpoint(key: str, value: Any, reactor: Any, timeout: float) -> IStreamClientEndpoint:
    from twisted.internet.endpoints import HostnameEndpoint, clientFromString

    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be 'host:port' or an endpoint string like 'tcp:host=H:port=P'")
    hp = _split_host_port(value)
    if hp is not None:
        host, port = hp
        if not host:
            raise ConfigError(key, f"{value!r} has no host")
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    try:
        return clientFromString(reactor, value)
    except Exception as e:
        raise ConfigError(key, f"bad endpoint {value!r}: {e}")


def _server_endpoint(key: str, value: str, reactor: Any) -> IStreamServerEndpoint:
    from twisted.internet.endpoints import serverFromString

    hp = _split_host_port(value)
    if hp is not None:
        host, port = hp
        if not host:
            value = f"tcp:{port}"
        else:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = None  # not an address: let the endpoint parser judge it
            if ip is not None:
                iface = str(ip).replace(":", "\\:")
                value = f"tcp{'6' if ip.version == 6 else ''}:{port}:interface={iface}"
    elif value.isdigit():
        value = f"tcp:{value}"
    try:
        return serverFromString(reactor, value)
    except Exception as e:
        raise ConfigError(key, f"bad listen endpoint {value!r}: {e}")


@implementer(IMatcher)
class _Never:
    """The matcher of the synthetic on_timeout route: chosen by the clock, not by bytes."""

    def match(self, data: bytes, facts: Mapping[str, Any]) -> Any:
        from switchyard.interfaces import NO

        return NO


_NEVER = _Never()


def _table(key: str, value: Any, required: bool = False) -> Mapping[str, Any]:
    if value is None and required:
        raise ConfigError(key, f"missing: add a [{key}.NAME] table")
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def _check_keys(key: str, raw: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for k in raw:
        if k not in allowed:
            where = f"{key}.{k}" if key else k
            raise ConfigError(where, f"unknown key (allowed here: {', '.join(allowed)})")


def _get(key: str, raw: Mapping[str, Any], name: str, kind: type,
         required: bool = False) -> Any:
    if name not in raw:
        if required:
            raise ConfigError(f"{key}.{name}", "missing")
        return None
    value = raw[name]
    if not isinstance(value, kind) or (kind is str and not value):
        raise ConfigError(f"{key}.{name}", f"must be a non-empty {kind.__name__}, not {value!r}")
    return value


def _positive(key: str, raw: Mapping[str, Any], name: str, default: float,
              kind: Callable[[Any], Any] = float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}.{name}", f"must be a positive number, not {value!r}")
    if kind is int and value != int(value):
        raise ConfigError(f"{key}.{name}", f"must be a whole number, not {value!r}")
    return float(value) if kind is float else int(value)
