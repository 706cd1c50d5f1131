"""Explain: which route takes an opening and why, in words; and what ``--check`` says of routes.

L{explain_opening} walks a listener's compiled routes the way the switch
does (L{switchyard.connection.Connection._sniff}): the same matchers in the
same order; a route that needs more bytes holds the rest back unless the
opening is final (the client closed, or ``max_sniff_bytes`` are in), when it
is passed over; a trusted front's PROXY header first; the winner's
allow/deny on the client. So its verdict is the switch's. Each verdict
comes with a reason from the matcher (L{IExplainingMatcher}), or one made
from the verdict for a matcher that gives none.

L{route_conditions} and L{unreachable_routes} read a route table as
written: what ``--check`` prints of each route, and the routes an earlier
one always takes first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attr
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from switchyard.config import Config, Listener, Route
from switchyard.connection import _address_facts
from switchyard.endpoints import listen_address
from switchyard.interfaces import NEED_MORE, NO, IConnection, ITarget, Match, MatchResult
from switchyard.matchers.reasons import preview
from switchyard.names import normalize_name
from switchyard.networks import contains
from switchyard.observe.accesslog import format_address, format_facts
from switchyard.wire.proxy import V2_SIGNATURE, BadProxyHeader, build_header, read_header
from switchyard.wire.tls import VERSIONS

# The client explain assumes when not told one (TEST-NET-1, RFC 5737).
EXAMPLE_CLIENT = IPv4Address("TCP", "192.0.2.1", 40000)
# As Connection: a v2 header may carry up to 64 KiB of TLVs.
_MAX_PROXY_HEADER = 16 + 65535


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Step:
    """One route asked about the opening."""

    route: Route
    verdict: str  # "match", "no", "need more", or "error" (counted as no)
    reason: str
    facts: Mapping[str, Any]
    asked: bool  # False: the switch decided (or waits) before this route
    passed_over: bool = False  # need more, but the opening is final


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Explanation:
    """What the switch does with one opening on one listener, and why."""

    listener: Listener
    opening: bytes  # as given
    routed: bytes  # what the routes saw (after a trusted front's PROXY header)
    final: bool
    client: IAddress
    client_assumed: bool  # no client given: EXAMPLE_CLIENT stands in
    local: IAddress | None
    notes: tuple[str, ...]
    steps: tuple[Step, ...]
    route: Route | None  # the route that takes the connection (on_timeout's too)
    facts: Mapping[str, Any]  # the connection's facts once routed
    outcome: str  # "route", "on_timeout", "denied", "no_route", "sniff_timeout", ...
    detail: str


def reason_for(matcher: Any, data: bytes, facts: Mapping[str, Any],
               result: MatchResult) -> str:
    """The matcher's reason for ``result`` (its C{explain}), or one made from
    the verdict when it gives none."""
    explain = getattr(matcher, "explain", None)
    if callable(explain):
        try:
            text = explain(data, facts)
        except Exception as e:
            return f"{default_reason(result)}; its explain raised {type(e).__name__}"
        if isinstance(text, str) and text:
            return text
    return default_reason(result)


def default_reason(result: MatchResult) -> str:
    """The reason of a matcher that gives none: its verdict in words."""
    if isinstance(result, Match):
        return "matched (this matcher gives no reasons)"
    if result is NEED_MORE:
        return "cannot tell yet (this matcher gives no reasons)"
    return "not this protocol, or not this route's conditions (this matcher gives no reasons)"


def _verdict(result: Any) -> str:
    if isinstance(result, Match):
        return "match"
    if result is NO:
        return "no"
    if result is NEED_MORE:
        return "need more"
    return "error"


def walk(routes: Sequence[Route], data: bytes, facts: Mapping[str, Any],
         final: bool) -> tuple[tuple[Step, ...], Route | None, Mapping[str, Any], Route | None]:
    """
    Ask ``routes`` about ``data`` as L{Connection._sniff} does.

    @return: the steps (every route: those after the decision with
        C{asked=False}), the route that matched (or None), its facts, and
        the route whose NEED_MORE holds the decision back (or None).
    """
    steps: list[Step] = []
    chosen: Route | None = None
    chosen_facts: Mapping[str, Any] = {}
    waiting: Route | None = None
    for route in routes:
        asked = chosen is None and waiting is None
        try:
            result = route.matcher.match(data, facts)
        except Exception as e:
            steps.append(Step(route, "error", f"the matcher raised {type(e).__name__}: {e} "
                                              "(the switch counts that as no)", {}, asked))
            continue
        verdict = _verdict(result)
        reason = reason_for(route.matcher, data, facts, result)
        if verdict == "error":
            reason = f"the matcher returned {result!r} (the switch counts that as no)"
        found = result.facts if isinstance(result, Match) else {}
        steps.append(Step(route, verdict, reason, found, asked,
                          passed_over=asked and verdict == "need more" and final))
        if not asked:
            continue
        if verdict == "match":
            chosen, chosen_facts = route, found
        elif verdict == "need more" and not final:
            waiting = route
    return tuple(steps), chosen, chosen_facts, waiting


def explain_opening(listener: Listener, data: bytes, *, client: IAddress | None = None,
                    local: IAddress | None = None, closed: bool = False) -> Explanation:
    """
    What ``listener`` does with a connection that opened with ``data``.

    @param client: the client's address (allow/deny, trusted fronts, the
        PROXY header sent on); L{EXAMPLE_CLIENT} when not given.
    @param local: the address it connected to; from C{listen} when not given.
    @param closed: the client sent C{data} and closed (the opening is
        final); else it waits for an answer, as clients usually do.
    """
    notes: list[str] = []
    assumed = client is None
    who: IAddress = EXAMPLE_CLIENT if client is None else client
    if local is None:
        local = local_address(listener)
    routed = data

    def ended(outcome: str, detail: str, steps: tuple[Step, ...] = (),
              route: Route | None = None, facts: Mapping[str, Any] | None = None,
              final: bool = False) -> Explanation:
        return Explanation(listener=listener, opening=data, routed=routed, final=final,
                           client=who, client_assumed=assumed, local=local,
                           notes=tuple(notes), steps=steps, route=route,
                           facts=facts if facts is not None else listener_facts(listener, who),
                           outcome=outcome, detail=detail)

    proxy_like = _proxy_header_kind(data)
    if listener.accept_proxy:
        front = proxy_like is not None if assumed else contains(
            listener.accept_proxy, getattr(who, "host", None))
        if front:
            if assumed:
                notes.append("taken as sent by a trusted front (accept_proxy), since it "
                             "starts with a PROXY header")
            else:
                notes.append(f"{format_address(who)} is a trusted front (accept_proxy): it "
                             "must send a PROXY header first")
            try:
                header = read_header(data)
            except BadProxyHeader as e:
                return ended("bad_proxy_header", f"the trusted front's PROXY header is bad: {e}")
            if header is None:
                if closed or len(data) > _MAX_PROXY_HEADER:
                    return ended("bad_proxy_header", "no complete PROXY header")
                return ended("sniff_timeout", "no complete PROXY header yet: after "
                             f"inspect_timeout ({listener.inspect_timeout:g}s) the switch "
                             "closes the connection")
            source, destination, length = header
            sender = "the front" if assumed else f"the front {format_address(who)}"
            notes.append(f"PROXY header ({proxy_like}, {length} bytes) from {sender}: " + (
                             f"the client is {format_address(source)}" if source is not None
                             else "no address (LOCAL): the front's own connection"))
            if source is not None:
                who, local, assumed = source, destination, False
            routed = data[length:]
    elif proxy_like is not None:
        notes.append(f"it starts with a PROXY {proxy_like} header, but listener "
                     f"{listener.name} has no accept_proxy: the routes read the header "
                     "as part of the opening")
    facts = listener_facts(listener, who)
    if not routed:
        if closed:
            return ended("client_closed", "the client closed before sending anything")
        return _timed_out(listener, ended, "nothing sent yet")
    final = closed or len(routed) >= listener.max_sniff_bytes
    steps, chosen, found, waiting = walk(listener.routes, routed, facts, final)
    if chosen is not None:
        facts = {**facts, **found}
        if chosen.admits is not None:
            host = getattr(who, "host", None)
            if assumed:
                notes.append(f"route {chosen.name} has allow/deny: not checked (give the "
                             "client's address)")
            elif not chosen.admits(host):
                return ended("denied", f"client {host} is not allowed on route {chosen.name}",
                             steps, chosen, facts, final)
        return ended("route", "", steps, chosen, facts, final)
    if waiting is not None:
        return _timed_out(listener, ended, f"route {waiting.name} waits for more bytes",
                          steps, final)
    limit = " (sniff limit)" if final and len(routed) >= listener.max_sniff_bytes else ""
    return ended("no_route", f"no route matched the first {len(routed)} bytes{limit}",
                 steps, None, facts, final)


def _timed_out(listener: Listener, ended: Callable[..., Explanation], why: str,
               steps: tuple[Step, ...] = (), final: bool = False) -> Explanation:
    """If the client sends nothing more: inspect_timeout, then on_timeout or the end."""
    after = f"after inspect_timeout ({listener.inspect_timeout:g}s)"
    if listener.on_timeout is not None:
        return ended("on_timeout", f"{why}; if no more come, {after} on_timeout sends the "
                     f"connection to {listener.on_timeout.target.name}", steps,
                     listener.on_timeout, None, final)
    return ended("sniff_timeout", f"{why}; if no more come, {after} the switch closes the "
                 "connection", steps, None, None, final)


def listener_facts(listener: Listener, client: IAddress) -> dict[str, Any]:
    """The facts every route is given, as the connection makes them."""
    return {"listener": listener.name, **_address_facts(client)}


def local_address(listener: Listener) -> IAddress | None:
    """The address a client reaches ``listener`` at, as far as ``listen`` tells:
    loopback for a listener on every address."""
    where = listen_address(listener.listen)
    if where is None:
        return None
    if where.kind == "unix":
        return UNIXAddress(where.host)
    if where.kind != "tcp":
        return None
    host = where.host
    if host in ("", "0.0.0.0"):
        return IPv4Address("TCP", "127.0.0.1", where.port)
    if host == "::":
        return IPv6Address("TCP", "::1", where.port)
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, where.port)


def _proxy_header_kind(data: bytes) -> str | None:
    if data.startswith(b"PROXY "):
        return "v1"
    if len(data) >= 12 and data.startswith(V2_SIGNATURE):
        return "v2"
    return None


def proxy_header(route: Route, client: IAddress, local: IAddress | None,
                 facts: Mapping[str, Any]) -> tuple[str, bytes] | None:
    """The PROXY header ``route``'s target writes first (its version and
    bytes), or None when it sends none."""
    version = getattr(route.target, "proxy_protocol", None)
    if version not in ("v1", "v2"):
        return None
    try:
        return version, build_header(version, client, local, facts)
    except ValueError:
        return None


# -- the words --------------------------------------------------------------


def render(explanation: Explanation) -> list[str]:
    """The explanation as lines for a terminal."""
    e = explanation
    listener = e.listener
    lines = [f"listener {listener.name} on {listener.listen or '(nested)'} "
             f"(max_sniff_bytes={listener.max_sniff_bytes}, "
             f"inspect_timeout={listener.inspect_timeout:g}s)"]
    client = format_address(e.client) + (
        " (an example address: give the client's with --client)" if e.client_assumed else "")
    lines.append(f"  client {client}" + (f" to {format_address(e.local)}" if e.local else ""))
    lines.extend(f"  note: {note}" for note in e.notes)
    if e.routed != e.opening:
        lines.append(f"  the routes see {len(e.routed)} bytes: {preview(e.routed)}")
    decided_by: Route | None = None
    for step in e.steps:
        head = f"  route {step.route.name}: {step.route.match}: "
        if step.asked:
            lines.append(head + f"{step.verdict}: {step.reason}" + (
                " (passed over: the opening is final)" if step.passed_over else ""))
            if step.facts:
                lines.append(f"    facts: {format_facts(dict(step.facts))}")
            if step.verdict in ("match", "need more") and not step.passed_over:
                decided_by = step.route
        else:
            why = (f"route {decided_by.name} took it" if e.route is decided_by
                   and decided_by is not None else
                   f"the switch waits on route {decided_by.name}" if decided_by is not None
                   else "the switch decided before it")
            lines.append(head + f"not asked ({why}); it would say {step.verdict}: "
                         f"{step.reason}")
    lines.append("  decision: " + _decision(e))
    if e.route is not None and e.outcome in ("route", "on_timeout"):
        lines.extend(_target_lines(e))
    return lines


def _decision(e: Explanation) -> str:
    before = [s for s in e.steps if s.asked and s.route is not e.route]
    refused = ", ".join(f"{s.route.name} said {s.verdict}"
                        + (" (passed over)" if s.passed_over else "") for s in before)
    if e.outcome == "route":
        assert e.route is not None
        return f"route {e.route.name}" + (f", after {refused}" if refused else
                                          ", the first route")
    if e.outcome == "denied":
        return f"closed (denied): {e.detail}"
    if e.outcome == "no_route":
        return f"closed (no_route): {e.detail}" + (f": {refused}" if refused else "")
    if e.outcome == "on_timeout":
        return f"none yet: {e.detail}"
    if e.outcome == "sniff_timeout":
        return f"none yet: {e.detail} (sniff_timeout)"
    return f"closed ({e.outcome}): {e.detail}"


def _target_lines(e: Explanation) -> list[str]:
    assert e.route is not None
    target = e.route.target
    lines = [f"  target: {target.name}"]
    servers = getattr(target, "servers", None)
    if servers:
        lines.append("    servers: " + ", ".join(str(getattr(server, "description", server))
                                                  for server in servers))
    lines.extend(f"    {line}" for line in target.describe())
    header = proxy_header(e.route, e.client, e.local, e.facts)
    if header is None:
        lines.append("  PROXY header: none")
    else:
        version, raw = header
        shown = repr(raw.decode("ascii")) if version == "v1" else raw.hex(" ")
        lines.append(f"  PROXY header {version} ({len(raw)} bytes): {shown}")
    return lines


def explain_config(config: Config, data: bytes, *, listener: str | None = None,
                   client: IAddress | None = None, closed: bool = False) -> list[Explanation]:
    """Explain ``data`` on each listener of ``config`` (or the one named)."""
    chosen = [each for each in config.listeners if listener is None or each.name == listener]
    if not chosen:
        known = ", ".join(each.name for each in config.listeners)
        raise KeyError(f"no listener {listener!r} (the config has {known})")
    return [explain_opening(each, data, client=client, closed=closed) for each in chosen]


def render_opening(data: bytes, source: str) -> str:
    """The line that introduces an opening."""
    return f"opening: {len(data)} bytes from {source}: {preview(data, 16)}"


def explanation_text(config: Config, data: bytes, source: str, *, listener: str | None = None,
                     client: IAddress | None = None, closed: bool = False) -> str:
    """What C{switchyard explain} prints for one opening: the opening, then
    its explanation on each listener (or the one named)."""
    lines = [render_opening(data, source)]
    for explanation in explain_config(config, data, listener=listener, client=client,
                                      closed=closed):
        lines.extend(render(explanation))
    return "\n".join(lines) + "\n"


def read_opening(path: str, hex_text: bool = False) -> bytes:
    """The bytes of an opening file (``-``: standard input); with ``hex_text``,
    the file holds hex digits (spaces, newlines and ``0x`` are ignored).

    @raise ValueError: the file cannot be read, or is not hex text.
    """
    import sys

    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}")
    if not hex_text:
        return raw
    digits = re.sub(rb"0x|\\x|\s|:", b"", raw)
    try:
        return bytes.fromhex(digits.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path!r} is not hex text (pairs of hex digits, spaces allowed)")


def parse_client(text: str) -> IAddress:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or ``IPv6`` as a client address.

    @raise ValueError: it is none of those.
    """
    import ipaddress

    host, port = text, EXAMPLE_CLIENT.port
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if bracketed:
        host, port = bracketed.group(1), int(bracketed.group(2) or port)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise ValueError(f"{text!r}: the port must be a number")
        port = int(number)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (IP, IP:PORT or [IPv6]:PORT)")
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return (IPv4Address if ip.version == 4 else IPv6Address)("TCP", str(ip), port)


# -- explain --listen: the real switch, telling what it does ------------------


class ExplainingObserver:
    """
    The ``openings`` observer of explain --listen's listener: when the
    switch has decided about a real connection, print the explanation of
    its opening (and save the opening), and say whether the switch agrees.
    """

    def __init__(self, listener: Listener, write: Callable[[str], None],
                 save: Callable[[bytes, str], str | None] | None = None,
                 relaying: bool = False, done: Callable[[int], None] | None = None) -> None:
        self.listener = listener  # as configured: the routes' real targets
        self.write = write
        self.save = save
        self.relaying = relaying
        self.done = done
        self.count = 0

    def sniffed(self, connection: Any, route: Route | None, reason: str) -> None:
        self.count += 1
        try:
            text = "\n".join(self.lines(connection, route, reason))
        except Exception as e:  # a diagnostic must never break the connection
            text = f"connection {self.count}: cannot explain it: {type(e).__name__}: {e}"
        try:
            self.write(text + "\n")
        finally:
            if self.done is not None:
                self.done(self.count)

    def lines(self, connection: Any, route: Route | None, reason: str) -> list[str]:
        data = bytes(connection.buffered)
        listener = self.listener
        lines = [f"connection {self.count} from {format_address(connection.client_address)}"
                 f" to {format_address(connection.local_address)}"]
        if connection.front_address is not None:
            # The switch has read the front's header: explain what followed.
            lines.append(f"  (through the trusted front {format_address(connection.front_address)}"
                         ", whose PROXY header named the client)")
            listener = attr.evolve(listener, accept_proxy=())
        lines.append(render_opening(data, "the client"))
        explanation = explain_opening(listener, data, client=connection.client_address,
                                      local=connection.local_address,
                                      closed=connection.client_ended)
        lines.extend(render(explanation))
        switch = (("route " + route.name) if route is not None and route.match != "on_timeout"
                  else "on_timeout" if route is not None else reason)
        said = (("route " + explanation.route.name)
                if explanation.outcome == "route" and explanation.route is not None
                else explanation.outcome)
        if switch == said:
            what = ("relays it" if self.relaying else "closes it (explain --listen relays with "
                    "--relay)") if route is not None else "closes it"
            lines.append(f"  the switch: {switch}, and {what}")
        else:
            lines.append(f"  the switch: {switch} ({connection.detail or 'see above'})")
        if self.save is not None and data:
            path = self.save(data, switch.replace(" ", "-"))
            if path is not None:
                lines.append(f"  saved: {path}")
        return lines


@implementer(ITarget)
class ClosingTarget:
    """Stands in for a route's target under explain --listen: closes instead."""

    def __init__(self, name: str) -> None:
        self.name = name

    def attach(self, connection: IConnection) -> None:
        connection.set_server("explain")
        connection.close("explained", "explain --listen closes instead of relaying")

    def describe(self) -> list[str]:
        return []


def closing_routes(listener: Listener) -> Listener:
    """``listener`` with each route's target replaced by a L{ClosingTarget}."""
    def closing(route: Route) -> Route:
        return attr.evolve(route, target=ClosingTarget(route.target.name))

    return attr.evolve(listener, routes=tuple(closing(route) for route in listener.routes),
                       on_timeout=None if listener.on_timeout is None
                       else closing(listener.on_timeout))


# -- what --check says of a route table ---------------------------------------

_NOT_CONDITIONS = frozenset({"name", "match", "to", "idle_timeout", "total_timeout"})
_PLAIN = re.compile(r"[\w.*~/:@+-]+")


def route_conditions(raw: Mapping[str, Any]) -> str:
    """A route's conditions as written: ``tls sni=[a.test, b.test] no_sni``."""
    parts = [str(raw.get("match"))]
    for key, value in raw.items():
        if key in _NOT_CONDITIONS:
            continue
        if value is True:
            parts.append(str(key))
        elif isinstance(value, list):
            parts.append(f"{key}=[{', '.join(_shown(v) for v in value)}]")
        else:
            parts.append(f"{key}={_shown(value)}")
    return " ".join(parts)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    return repr(value)


def unreachable_routes(routes: Sequence[Route], raws: Sequence[Mapping[str, Any]]) -> list[str]:
    """Warnings for the routes that can never be chosen: an earlier route takes
    every opening they would (a catch-all, the same conditions, or wider)."""
    warnings = []
    for i, later in enumerate(raws):
        for j in range(i):
            why = _takes_first(raws[j], later)
            if why:
                warnings.append(f"route {routes[i].name} can never be chosen: route "
                                f"{routes[j].name} before it {why}")
                break
    return warnings


def _matcher_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in _NOT_CONDITIONS | {"allow", "deny"}}


def _takes_first(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> str | None:
    """Why ``earlier`` takes every opening ``later`` would match, or None.
    Its allow/deny does not matter: a route that matched refuses a client
    itself, it does not pass the connection on."""
    wide, narrow = earlier.get("match"), later.get("match")
    if wide == "any":
        return "is a catch-all (match any)"
    e, n = _matcher_options(earlier), _matcher_options(later)
    if wide == narrow and e == n:
        return "has the same conditions"
    rule = _WIDER.get((str(wide), str(narrow)))
    if rule is not None and rule(e, n):
        return "takes every opening it would (its conditions are wider)"
    return None


def _texts(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _pattern_covers(wide: str, narrow: str) -> bool:
    wide, narrow = normalize_name(wide), normalize_name(narrow)
    if wide == narrow:
        return True
    if not wide.startswith("*.") or narrow.startswith("~"):
        return False
    suffix = wide[1:]  # ".example.com"
    base = narrow[2:] if narrow.startswith("*.") else narrow
    return base.endswith(suffix) and len(base) > len(suffix)


def _names_cover(wide: Any, narrow: Any) -> bool:
    """Every name ``narrow`` accepts, ``wide`` accepts (None: any name)."""
    wide_list, narrow_list = _texts(wide), _texts(narrow)
    if wide_list is None:
        return True
    if narrow_list is None:
        return False
    return all(any(_pattern_covers(w, n) for w in wide_list) for n in narrow_list)


def _subset(wide: Any, narrow: Any) -> bool:
    """A list condition: None (absent) accepts everything."""
    wide_list, narrow_list = _texts(wide), _texts(narrow)
    return wide_list is None or (narrow_list is not None and set(narrow_list) <= set(wide_list))


def _tls_names(options: Mapping[str, Any]) -> tuple[Any, bool]:
    """The SNI names a tls route accepts (None: any) and whether it takes none."""
    sni, no_sni = options.get("sni"), options.get("no_sni") is True
    return (sni if sni is not None else ([] if no_sni else None)), no_sni or sni is None


def _tls_wider(e: Mapping[str, Any], n: Mapping[str, Any]) -> bool:
    (wide, wide_nameless), (narrow, narrow_nameless) = _tls_names(e), _tls_names(n)
    return (_names_cover(wide, narrow) and (wide_nameless or not narrow_nameless)
            and _subset(e.get("alpn"), n.get("alpn"))
            and VERSIONS.get(n.get("min_version", ""), 0) >= VERSIONS.get(
                e.get("min_version", ""), 0))


def _tls_over_obfs(e: Mapping[str, Any], n: Mapping[str, Any]) -> bool:
    # simple-obfs's hello: the obfs host as SNI, no ALPN, TLS 1.2.
    wide, _ = _tls_names(e)
    return (_names_cover(wide, n.get("sni")) and e.get("alpn") is None
            and VERSIONS.get(e.get("min_version", ""), 0) <= VERSIONS["1.2"])


def _paths_cover(e_exact: Any, e_prefixes: Any, n_exact: Any, n_prefixes: Any) -> bool:
    if e_exact is None and e_prefixes is None:
        return True
    if n_exact is None and n_prefixes is None:
        return False
    exact, prefixes = set(_texts(e_exact) or ()), tuple(_texts(e_prefixes) or ())
    return (all(p in exact or p.startswith(prefixes) for p in _texts(n_exact) or ())
            and all(p.startswith(prefixes) for p in _texts(n_prefixes) or ()))


def _http_wider(e: Mapping[str, Any], n: Mapping[str, Any]) -> bool:
    # http's path is a list of prefixes.
    return (_subset(e.get("method"), n.get("method")) and _names_cover(e.get("host"), n.get("host"))
            and _paths_cover(None, e.get("path"), None, n.get("path")))


def _http_over_upgrade(e: Mapping[str, Any], n: Mapping[str, Any]) -> bool:
    # Every WebSocket upgrade (genuine or simple-obfs's) is an HTTP/1.1 GET.
    methods = _texts(e.get("method"))
    return ((methods is None or "GET" in methods)
            and _names_cover(e.get("host"), n.get("host"))
            and _paths_cover(None, e.get("path"), n.get("path"), n.get("path_prefix")))


def _websocket_wider(e: Mapping[str, Any], n: Mapping[str, Any]) -> bool:
    return (_names_cover(e.get("host"), n.get("host"))
            and _paths_cover(e.get("path"), e.get("path_prefix"), n.get("path"),
                             n.get("path_prefix")))


_WIDER: dict[tuple[str, str], Callable[[Mapping[str, Any], Mapping[str, Any]], bool]] = {
    ("tls", "tls"): _tls_wider,
    ("tls", "obfs-tls"): _tls_over_obfs,
    ("obfs-tls", "obfs-tls"): lambda e, n: _names_cover(e.get("sni"), n.get("sni")),
    ("http", "http"): _http_wider,
    ("http", "websocket"): _http_over_upgrade,
    ("http", "obfs-http"): _http_over_upgrade,
    ("websocket", "websocket"): _websocket_wider,
    ("obfs-http", "obfs-http"): lambda e, n: _names_cover(e.get("host"), n.get("host")),
}
