"""Read a TOML config and compile it, once, into immutable route tables.

The config knows listeners and routes. Targets come from target kind
plugins (L{ITargetKind}: ``[backend.NAME]``, ``[responder.NAME]``,
``[tls.NAME]`` and any third party's), matchers from matcher plugins: each
reads its own tables, so this module imports none of them.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import attr
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.plugin import getPlugins
from zope.interface import implementer

from switchyard.endpoints import listen_address, server_endpoint
from switchyard.interfaces import (
    NO,
    ICompileContext,
    IMatcher,
    IMatcherFactory,
    ITarget,
    ITargetKind,
    OptionError,
)
from switchyard.networks import Network, access_rule, parse_networks
from switchyard.observe.accesslog import AccessLogFile
from switchyard.observe.samples import SAMPLE_KEYS, SampleStore
from switchyard.options import Options

DEFAULT_INSPECT_TIMEOUT = 5.0
DEFAULT_MAX_SNIFF_BYTES = 16 * 1024
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_GRACE_PERIOD = 30.0
MAX_WORKERS = 256
TOP_LEVEL_KEYS = ("listener", "workers", "access_log", "access_log_format", "metrics")

ROUTE_KEYS = ("name", "match", "to", "allow", "deny", "idle_timeout", "total_timeout")

T = TypeVar("T")


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
    admits: Callable[[str | None], bool] | None = None  # client-network rule
    idle_timeout: float | None = None  # overrides the listener's
    total_timeout: float | None = None  # a relay's whole life, however busy


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Listener:
    name: str
    listen: str  # "" for a nested table (inside a TLS termination)
    endpoint: IStreamServerEndpoint | None
    routes: tuple[Route, ...]
    inspect_timeout: float
    max_sniff_bytes: int
    on_timeout: Route | None
    idle_timeout: float
    accept_proxy: tuple[Network, ...] = ()  # trusted fronts that must send PROXY
    max_connections: int | None = None
    max_connections_per_client: int | None = None
    grace_period: float = DEFAULT_GRACE_PERIOD  # on SIGTERM: how long open ones may finish
    fast_path: bool = True  # splice(2) between plain sockets, where the system has it
    # Told of every opening when sniffing ends (the connection calls
    # openings.sniffed(connection, route, reason)): samples_dir's store, or
    # explain --listen; None (the default) costs one attribute check.
    openings: Any = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Config:
    path: str
    listeners: tuple[Listener, ...]
    targets: Mapping[str, ITarget]  # every target by name, built-in ones included
    access_log: str | None = None  # a file for the access lines, else the twistd log
    access_log_format: str = "text"  # or "json": one object per connection
    workers: int = 1  # processes sharing the listening sockets (switchyard.app.supervisor)
    metrics: str | None = None  # where /metrics is served (switchyard.observe.metrics)
    metrics_endpoint: IStreamServerEndpoint | None = None
    source: bytes = b""  # the file's bytes, which workers compile in turn


def matcher_factories() -> dict[str, IMatcherFactory]:
    """Every matcher plugin installed, built-in or third party, by name."""
    import twisted.plugins

    return {f.name: f for f in getPlugins(IMatcherFactory, twisted.plugins)}


def target_kinds() -> dict[str, ITargetKind]:
    """Every target kind plugin installed, built-in or third party, by section."""
    import twisted.plugins

    kinds = sorted(getPlugins(ITargetKind, twisted.plugins), key=lambda k: (k.order, k.section))
    return {k.section: k for k in kinds}


@implementer(ICompileContext)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Context:
    reactor: Any
    base_dir: str
    targets: Mapping[str, ITarget]
    factories: Mapping[str, IMatcherFactory]

    def compile_routes(self, key: str, name: str, table: Mapping[str, Any]) -> Listener:
        return _compile_listener(key, name, table, targets=self.targets,
                                 factories=self.factories, reactor=self.reactor)


def load(path: str, reactor: Any) -> Config:
    """Read and compile the config at ``path``; raise L{ConfigError}."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except FileNotFoundError:
        raise ConfigError("", f"config file {path!r} does not exist")
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path!r}: {e.strerror}")
    return compile_source(source, reactor, path)


def compile_source(source: bytes, reactor: Any, path: str = "<config>") -> Config:
    """Compile the bytes of a config file (``path`` names it, and relative
    file names are relative to its folder); raise L{ConfigError}."""
    try:
        raw = tomllib.loads(source.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path} is not UTF-8 text: {e.reason} at byte {e.start}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path} is not valid TOML: {e}")
    return attr.evolve(compile_config(raw, reactor, path=path), source=source)


def _within(key: str, compile_part: Callable[[], T]) -> T:
    """Run ``compile_part``, turning its OptionError into a ConfigError under ``key``."""
    try:
        return compile_part()
    except OptionError as e:
        raise ConfigError(f"{key}.{e.key}" if key else e.key, e.problem)


def compile_config(
    raw: Mapping[str, Any],
    reactor: Any,
    path: str = "<config>",
    factories: Mapping[str, IMatcherFactory] | None = None,
    kinds: Mapping[str, ITargetKind] | None = None,
) -> Config:
    if factories is None:
        factories = matcher_factories()
    if kinds is None:
        kinds = target_kinds()
    top = _within("", lambda: Options(raw, (*TOP_LEVEL_KEYS, *kinds)))
    access_log = _within("", lambda: top.text("access_log"))
    if access_log is not None:
        problem = AccessLogFile.check(access_log) if access_log else "must not be empty"
        if problem:
            raise ConfigError("access_log", problem)
    access_log_format = _within("", lambda: top.choice("access_log_format", "text",
                                                       ("text", "json")))
    if "access_log_format" in raw and access_log is None:
        raise ConfigError("access_log_format", "has no effect without access_log")
    workers = _within("", lambda: top.integer("workers", 1, minimum=1, maximum=MAX_WORKERS))
    metrics = _within("", lambda: top.text("metrics"))
    metrics_endpoint = None
    if metrics is not None:
        metrics_endpoint = _within("", partial(server_endpoint, "metrics", metrics, reactor))
    targets: dict[str, ITarget] = {}
    builtin: set[str] = set()
    for kind in kinds.values():
        targets.update(kind.builtins)
        builtin.update(kind.builtins)
    base_dir = os.path.dirname(os.path.abspath(path)) if path != "<config>" else "."
    for section, kind in sorted(kinds.items(), key=lambda item: (item[1].order, item[0])):
        # Each kind sees the targets of the kinds before it (a TLS
        # termination's inner routes may use any backend, not another
        # termination).
        context = _Context(reactor=reactor, base_dir=base_dir, targets=dict(targets),
                           factories=factories)
        for name, table in _tables(section, raw.get(section, {})).items():
            key = f"{section}.{name}"
            if name in targets:
                what = "a built-in target" if name in builtin else "already a target"
                raise ConfigError(key, f"{name!r} is {what}")
            targets[name] = _within(key, partial(kind.compile, name, table, context))
    # A host whose only work is a target that works without routes (a
    # tunnel agent, ``standalone``) needs no listener; anything else does.
    alone = any(getattr(t, "standalone", False) for t in targets.values())
    listeners_raw = _tables("listener", raw.get("listener", {} if alone else None),
                            required=not alone)
    listeners = tuple(
        _compile_listener(f"listener.{name}", name, table, targets=targets,
                          factories=factories, reactor=reactor, nested=False)
        for name, table in listeners_raw.items()
    )
    _one_listener_per_address(listeners)
    return Config(path=path, listeners=listeners, targets=targets, access_log=access_log,
                  access_log_format=access_log_format, workers=workers, metrics=metrics,
                  metrics_endpoint=metrics_endpoint)


def _one_listener_per_address(listeners: tuple[Listener, ...]) -> None:
    """Two listeners cannot bind one address: say so now, not as a bind error."""
    seen: list[tuple[str, Any]] = []
    for listener in listeners:
        address = listen_address(listener.listen)
        if address is None:
            continue
        for name, other in seen:
            if address.overlaps(other):
                raise ConfigError(f"listener.{listener.name}.listen",
                                  f"listener {name} already listens on {other}: one "
                                  "address takes one listener (put both route tables in one)")
        seen.append((listener.name, address))


_NESTED_KEYS = ("route", "inspect_timeout", "max_sniff_bytes", "on_timeout", "idle_timeout")
_LISTENER_KEYS = ("listen", "accept_proxy", "max_connections", "max_connections_per_client",
                  "grace_period", "fast_path", *SAMPLE_KEYS, *_NESTED_KEYS)


def _compile_listener(key: str, name: str, raw: Mapping[str, Any], *,
                      targets: Mapping[str, ITarget],
                      factories: Mapping[str, IMatcherFactory], reactor: Any,
                      nested: bool = True) -> Listener:
    """A listener's route table; ``nested`` ones (inside TLS) have no port."""
    options = _within(key, lambda: Options(raw, _NESTED_KEYS if nested else _LISTENER_KEYS))
    listen, endpoint = "", None
    if not nested:
        listen = _within(key, lambda: options.text("listen", required=True)) or ""
        endpoint = _within(key, lambda: server_endpoint("listen", listen, reactor))
    routes_raw = raw.get("route")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise ConfigError(f"{key}.route", f"at least one [[{key}.route]] is required")
    routes: list[Route] = []
    for i, r in enumerate(routes_raw):
        routes.append(_compile_route(f"{key}.route[{i}]", r, targets, factories,
                                     {r.name for r in routes}))
    on_timeout = None
    timeout_target = _within(key, lambda: options.text("on_timeout"))
    if timeout_target is not None:
        on_timeout = Route(name="on_timeout", matcher=_NEVER, match="on_timeout",
                           target=_target(f"{key}.on_timeout", timeout_target, targets))
    max_sniff_bytes = _within(key, lambda: options.integer(
        "max_sniff_bytes", DEFAULT_MAX_SNIFF_BYTES, minimum=1, maximum=1 << 24))
    return Listener(
        name=name, listen=listen, endpoint=endpoint, routes=tuple(routes),
        inspect_timeout=_within(key, lambda: options.number(
            "inspect_timeout", DEFAULT_INSPECT_TIMEOUT)),
        max_sniff_bytes=max_sniff_bytes,
        on_timeout=on_timeout,
        idle_timeout=_within(key, lambda: options.number("idle_timeout", DEFAULT_IDLE_TIMEOUT)),
        accept_proxy=_within(key, lambda: parse_networks("accept_proxy", raw["accept_proxy"]))
        if "accept_proxy" in raw else (),
        max_connections=_within(key, partial(_count, options, "max_connections")),
        max_connections_per_client=_within(key, partial(_count, options,
                                                        "max_connections_per_client")),
        grace_period=_within(key, lambda: options.number(
            "grace_period", DEFAULT_GRACE_PERIOD, exclusive=False)),
        fast_path=_within(key, lambda: options.flag("fast_path", True)),
        openings=None if nested else _within(key, partial(SampleStore.compile, raw, name,
                                                          reactor, max_sniff_bytes)),
    )


def _count(options: Options, key: str) -> int | None:
    if key not in options:
        return None
    return options.integer(key, 0, minimum=1, maximum=10_000_000)


def _compile_route(key: str, raw: Any, targets: Mapping[str, ITarget],
                   factories: Mapping[str, IMatcherFactory], seen: set[str]) -> Route:
    if not isinstance(raw, dict):
        raise ConfigError(key, "a route must be a table")
    # The route's own keys; the rest are the matcher's, which checks them.
    options = Options({k: v for k, v in raw.items() if k in ROUTE_KEYS}, ROUTE_KEYS)
    for required in ("match", "to"):
        if required not in raw:
            # A misspelt key would otherwise go to the matcher, and the error
            # would name the key it replaced, not the one written.
            typo = difflib.get_close_matches(required, [str(k) for k in raw
                                                        if k not in ROUTE_KEYS], n=1)
            if typo:
                raise ConfigError(f"{key}.{typo[0]}", f"unknown key: did you mean "
                                                      f"{required!r}? (a route needs one)")
    match = _within(key, lambda: options.text("match", required=True))
    assert match is not None
    factory = factories.get(match)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none installed"
        raise ConfigError(f"{key}.match", f"unknown matcher {match!r} (known: {known})")
    to = _within(key, lambda: options.text("to", required=True))
    assert to is not None
    target = _target(f"{key}.to", to, targets)
    name = _within(key, lambda: options.text("name"))
    if name is None:
        name, n = match, 2
        while name in seen:
            name, n = f"{match}-{n}", n + 1
    elif not name:
        raise ConfigError(f"{key}.name", "must not be empty")
    elif name in seen:
        raise ConfigError(f"{key}.name", f"route name {name!r} is used twice")
    matcher_options = {k: v for k, v in raw.items() if k not in ROUTE_KEYS}
    try:
        matcher = factory.build(matcher_options)
    except OptionError as e:
        raise ConfigError(f"{key}.{e.key}", e.problem)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, f"matcher {match!r}: {e}")
    networks = {k: _within(key, partial(parse_networks, k, raw[k]))
                for k in ("allow", "deny") if k in raw}
    timeouts = {k: _within(key, partial(options.number, k, 0.0))
                for k in ("idle_timeout", "total_timeout") if k in raw}
    return Route(name=name, matcher=matcher, match=match, target=target,
                 admits=access_rule(networks.get("allow"), networks.get("deny")),
                 idle_timeout=timeouts.get("idle_timeout"),
                 total_timeout=timeouts.get("total_timeout"))


def _target(key: str, name: str, targets: Mapping[str, ITarget]) -> ITarget:
    if name in targets:
        return targets[name]
    known = ", ".join(sorted(targets))
    raise ConfigError(key, f"unknown backend {name!r} (known: {known})")


@implementer(IMatcher)
class _Never:
    """The matcher of the synthetic on_timeout route: chosen by the clock, not by bytes."""

    def match(self, data: bytes, facts: Mapping[str, Any]) -> Any:
        return NO


_NEVER = _Never()


def _tables(key: str, value: Any, required: bool = False) -> Mapping[str, Mapping[str, Any]]:
    if value is None and required:
        raise ConfigError(key, f"missing: add a [{key}.NAME] table")
    if not isinstance(value, dict) or (required and not value):
        raise ConfigError(key, f"must be tables like [{key}.NAME]")
    for name, table in value.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{key}.{name}", "must be a table")
    return value
