"""The ``[gateway.NAME]`` target kind: read the opening, decrypt the address, check it, dial, reply.

A route's matcher (``gateway``) hands over a connection as soon as it
recognised an opening; L{GatewayTarget} reads the rest itself
(C{connection.watch}), within ``handshake_timeout`` and the dialect's
limits. The line (or blob, or ``X-Cipher-Origin`` header) is decrypted by
the target's L{Keyring} (the cache on the reactor thread; PBKDF2 work in a
thread, the other derivations inline: 13 µs is less than a thread hop).
The address must fall inside ``allow``; host names are resolved by the
reactor's resolver and only their allowed addresses are dialled. Each
attempt has ``timeout`` seconds; one that times out is followed by the
next, up to ``retry`` attempts; any other failure is answered at once.
Then the dialect's success reply (``200``, or nothing) and the relay: the
bytes after the opening go on to the backend after an optional PROXY
header and, in HTTP mode, the rewritten request head.

Every failure is answered with the dialect's code (L{replies}) and a
close whose reason the access log shows: ``gateway_bad_line``,
``gateway_undecryptable``, ``gateway_denied`` (outside ``allow``),
``gateway_refused``, ``gateway_timeout``. The server it names is
``gw:HOST:PORT``: the decrypted address, never the line or the secret.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

import attr
from twisted.internet import defer, error, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.deadlines import Deadline, Deadlines
from switchyard.interfaces import (
    NEED_MORE,
    NO,
    ICompileContext,
    IConnection,
    IRunningTarget,
    ITarget,
    ITargetKind,
    OptionError,
)
from switchyard.matchers.gateway import MODE_FACT
from switchyard.networks import client_ip
from switchyard.relay.splice import DirectConnect, close_socket
from switchyard.targets.backends.target import BackendFactory, local_failure
from switchyard.targets.gateway.allow import IP
from switchyard.targets.gateway.crypto import Address, Kdf, Keyring, decode_line
from switchyard.targets.gateway.replies import FORWARDED_CLIENT_FIRST, Outcome, Reason, reply
from switchyard.targets.gateway.settings import GatewaySettings, compile_gateway, load_secrets
from switchyard.wire.gateway import (
    BinaryOpening,
    Fault,
    HttpOpening,
    LineOpening,
    Malformed,
    Mode,
    Opening,
    Pending,
    parse_opening,
    rewrite_http_head,
)
from switchyard.wire.proxy import build_header

log = Logger(namespace="switchyard.gateway")

Resolve = Callable[[str], "defer.Deferred[list[str]]"]
InThread = Callable[..., "defer.Deferred[Any]"]
EndpointFor = Callable[[IP, int], Any]

# Cancelling an endpoint's connect (addTimeout does) fails with
# ConnectingCancelledError rather than CancelledError.
_TIMEOUTS = (defer.TimeoutError, defer.CancelledError, error.TimeoutError,
             error.ConnectingCancelledError)
# At most one log line per gateway this often about local resource failures.
LOCAL_FAILURE_LOG_INTERVAL = 10.0

# What a client that stopped (or stalled) inside an opening of each mode is told.
_UNFINISHED: Mapping[Mode, Fault] = {
    Mode.LINE: Fault.LINE_UNFINISHED,
    Mode.BINARY: Fault.BINARY_SHORT,
    Mode.HTTP: Fault.HTTP_UNFINISHED,
}

_FAULT_TEXT: Mapping[Fault, str] = {
    Fault.LINE_TOO_LONG: "no newline within line_limit ({line_limit} bytes)",
    Fault.LINE_UNFINISHED: "the client ended its stream inside the line",
    Fault.BINARY_SHORT: "the client ended its stream inside the binary opening",
    Fault.HTTP_LINE_TOO_LONG: "a request head line is over 4096 bytes",
    Fault.HTTP_UNFINISHED: "the client ended its stream inside the request head",
    Fault.HTTP_HEADER_TOO_LARGE: "the request head is over header_limit ({header_limit} bytes)",
    Fault.HTTP_BAD_CIPHER_HEADER: "X-Cipher-Origin is empty or repeated",
}

_MODES: Mapping[Any, Mode] = {m.value: m for m in Mode}

_CLOSE_REASONS: Mapping[Outcome, str] = {
    Outcome.UNDECRYPTABLE: "gateway_undecryptable",
    Outcome.NOT_ALLOWED: "gateway_denied",
    Outcome.CONNECT_FAILED: "gateway_refused",
    Outcome.CONNECT_TIMEOUT: "gateway_timeout",
}


def _said(data: bytes) -> str:
    """A reply as the access log shows it: its first line."""
    if not data:
        return "nothing"
    return data.split(b"\n", 1)[0].decode("ascii", "replace")


def _nothing() -> None:
    """A backend connection holds no pool slot to give back."""


@implementer(IResolutionReceiver)
class _Collect:
    """Gathers what the reactor's name resolver finds into a Deferred."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.deferred: defer.Deferred[list[str]] = defer.Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.found.append(address.host)

    def resolutionComplete(self) -> None:
        if not self.deferred.called:  # (a cancelled wait has been called)
            self.deferred.callback(self.found)


class ReactorResolver:
    """
    Host names resolved by the reactor's name resolver
    (C{IReactorPluggableNameResolver}): the system's getaddrinfo in the
    reactor's thread pool, so ``/etc/hosts`` and DNS as the host has them.
    A name that does not exist gives no address.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def __call__(self, name: str) -> defer.Deferred[list[str]]:
        collect = _Collect()
        self.reactor.nameResolver.resolveHostName(collect, name, 0)
        return collect.deferred


@implementer(IRunningTarget)
class GatewayTarget:
    """Connections whose backend address arrives encrypted in their opening."""

    def __init__(self, name: str, settings: GatewaySettings, reactor: Any, *,
                 resolve: Resolve | None = None, in_thread: InThread | None = None,
                 endpoint_for: EndpointFor | None = None) -> None:
        """
        @param resolve: host name to addresses (default L{ReactorResolver}).
        @param in_thread: runs PBKDF2 work off the reactor thread (default
            the reactor's thread pool).
        @param endpoint_for: the client endpoint for an address, when the
            bare-socket fast path is not taken (default TCP endpoints).
        """
        self.name = name
        self.settings = settings
        self.reactor = reactor
        self.resolve = resolve if resolve is not None else ReactorResolver(reactor)
        self.in_thread = in_thread if in_thread is not None else self._in_reactor_pool
        self.endpoint_for = endpoint_for if endpoint_for is not None else self._tcp_endpoint
        self.handshake_deadlines = Deadlines(reactor, settings.handshake_timeout,
                                             _Handshake.expired)
        # The connect timeouts of bare-socket connects, on one timer.
        self.connect_deadlines = Deadlines(reactor, settings.timeout, DirectConnect.expired)
        self._local_failures = 0
        self._local_logged = -LOCAL_FAILURE_LOG_INTERVAL
        self._replies: Any = None  # the metrics counter, when metrics are on
        self._reply_counts: dict[str, Any] = {}

    def count_reply(self, answer: bytes) -> None:
        """One handshake ended with ``answer`` sent (b"": silent success)."""
        if self._replies is None:
            return
        text = answer.decode("ascii", "replace") or "none"
        child = self._reply_counts.get(text)
        if child is None:
            child = self._reply_counts[text] = self._replies.labels(self.name, text)
        child.inc()

    def _in_reactor_pool(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    def _tcp_endpoint(self, ip: IP, port: int) -> Any:
        kind = TCP4ClientEndpoint if ip.version == 4 else TCP6ClientEndpoint
        return kind(self.reactor, str(ip), port, timeout=self.settings.timeout)

    def describe(self) -> list[str]:
        return self.settings.describe()

    def attach(self, connection: IConnection) -> None:
        _Handshake(self, connection).start()

    def local_failure(self, f: Failure) -> None:
        """Log, at most once per LOCAL_FAILURE_LOG_INTERVAL, connects that
        failed for want of local resources: this process's limit."""
        self._local_failures += 1
        now = self.reactor.seconds()
        if now - self._local_logged >= LOCAL_FAILURE_LOG_INTERVAL:
            log.warn("gateway {gateway}: {n} connects failed for want of local resources "
                     "({error}): raise the descriptor limit (ulimit -n, LimitNOFILE) or lower "
                     "max_connections", gateway=self.name, n=self._local_failures,
                     error=f.getErrorMessage())
            self._local_logged = now
            self._local_failures = 0

    # -- IRunningTarget ---------------------------------------------------

    def start(self, runtime: Any = None) -> None:
        # Nothing runs between connections; the replies are counted.
        metrics = getattr(runtime, "metrics", None)
        if metrics is not None:
            self._replies = metrics.counter(
                "switchyard_gateway_replies_total",
                "Gateway handshakes by the reply sent (none: frontd's silent success)",
                ["gateway", "reply"])

    def stop(self) -> None:
        pass  # handshakes in progress keep their timeouts through the grace period

    def hangup(self) -> None:
        """SIGHUP: re-read the secrets (a rotation); new connections use them."""
        settings = self.settings
        old = settings.keyring
        try:
            keyring = load_secrets(settings.sources, old.kdf, old.iterations, old.cache_size)
        except OptionError as e:
            log.error("gateway {gateway}: keeping the old secrets: {key}: {problem}",
                      gateway=self.name, key=e.key, problem=e.problem)
            return
        self.settings = attr.evolve(settings, keyring=keyring)
        log.info("gateway {gateway}: {n} secrets read again from {sources}",
                 gateway=self.name, n=len(keyring.secrets), sources=settings.sources.describe())


class _Handshake:
    """One connection from its recognised opening to its relay or its error reply."""

    __slots__ = ("target", "settings", "connection", "deadline", "mode", "head", "address",
                 "addresses", "attempts", "failures", "server")

    def __init__(self, target: GatewayTarget, connection: IConnection) -> None:
        self.target = target
        self.settings = target.settings  # one handshake, one set of settings (SIGHUP)
        self.connection = connection
        self.deadline: Deadline | None = None  # set while the opening is read
        self.mode = _MODES.get(connection.facts.get(MODE_FACT), Mode.LINE)
        self.head = b""  # the rewritten HTTP request head, for the backend
        self.address: Address | None = None
        self.addresses: list[IP] = []
        self.attempts = 0
        self.failures: list[str] = []
        self.server = ""

    # -- reading the opening ----------------------------------------------

    def start(self) -> None:
        self.deadline = self.target.handshake_deadlines.add(self)
        self.connection.pending = self
        self.connection.watch(self.read)
        self.read()

    def cancel(self) -> None:
        """The connection ends while its opening is read (L{IConnection.pending})."""
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.connection.watch(None)
        if self.connection.pending is self:
            self.connection.pending = None

    def read(self) -> None:
        """The buffered bytes grew, or the client ended its stream."""
        connection = self.connection
        if self.deadline is None or connection.closing:
            return
        settings = self.settings
        result = parse_opening(connection.buffered, line_limit=settings.line_limit,
                               header_limit=settings.header_limit, eof=connection.client_ended)
        if isinstance(result, Pending):
            self.mode = result.mode
        elif isinstance(result, Malformed):
            self.mode = result.mode
            self.fail(result.fault, _FAULT_TEXT[result.fault].format(
                line_limit=settings.line_limit, header_limit=settings.header_limit))
        elif result is NO:
            # After a gateway match only the target's narrower header_limit
            # can say so; after any other matcher, it is not the protocol.
            if self.mode is Mode.HTTP:
                self.fail(Fault.HTTP_HEADER_TOO_LARGE, "no X-Cipher-Origin within header_limit "
                                                       f"({settings.header_limit} bytes)")
            else:
                self.fail(Fault.LINE_UNFINISHED, "not a gateway opening")
        elif result is not NEED_MORE:
            assert isinstance(result, (LineOpening, BinaryOpening, HttpOpening))
            self._stop_reading()
            self.opened(result)

    def expired(self) -> None:
        """handshake_timeout is over (from the target's deadlines)."""
        self.deadline = None
        self.fail(_UNFINISHED[self.mode],
                  f"no complete opening within handshake_timeout "
                  f"{self.settings.handshake_timeout:g}s ({len(self.connection.buffered)} "
                  f"bytes read)")

    def fail(self, fault: Fault, detail: str) -> None:
        self._stop_reading()
        self._close("gateway_bad_line", fault, detail)

    def _close(self, why: str, outcome: Reason, detail: str) -> None:
        answer = reply(self.settings.dialect, outcome, self.mode)
        self.target.count_reply(answer)
        self.connection.close(why, f"{detail}; replied {_said(answer)}", reply=answer)

    # -- decrypting ---------------------------------------------------------

    def opened(self, opening: Opening) -> None:
        """The opening is complete: take it out of the buffer and open it."""
        connection = self.connection
        self.mode = opening.mode
        data = connection.consume(opening.end)
        if isinstance(opening, HttpOpening):
            client = str(getattr(connection.client_address, "host", "") or "unknown")
            self.head = rewrite_http_head(
                data, opening, client,
                client_first=FORWARDED_CLIENT_FIRST[self.settings.dialect])
            blob = decode_line(opening.cipher)
        elif isinstance(opening, LineOpening):
            blob = decode_line(opening.line)
        else:
            blob = opening.blob
        if blob is None:
            self.refuse(Outcome.UNDECRYPTABLE, "not base64")
            return
        keyring = self.settings.keyring
        found = keyring.cached(blob)
        if found is not None:
            self.decrypted(found)
        elif keyring.kdf is Kdf.PBKDF2:
            self._unlock_in_thread(keyring, blob)
        else:
            found = keyring.unlock(blob)
            keyring.remember(blob, found)
            self.decrypted(found)

    def _unlock_in_thread(self, keyring: Keyring, blob: bytes) -> None:
        connection = self.connection
        work = self.target.in_thread(keyring.unlock, blob)
        connection.pending = work

        def done(found: Address | None) -> None:
            connection.pending = None
            keyring.remember(blob, found)  # the cache is the reactor thread's
            if not connection.closing:
                self.decrypted(found)

        def failed(f: Failure) -> None:
            connection.pending = None
            if not connection.closing:
                log.failure("gateway {gateway}: decryption failed", f, gateway=self.target.name)
                connection.close("error", "decryption failed (logged)")

        work.addCallbacks(done, failed)

    def refuse(self, outcome: Outcome, detail: str) -> None:
        self._close(_CLOSE_REASONS[outcome], outcome, detail)

    def decrypted(self, address: Address | None) -> None:
        if address is None:
            self.refuse(Outcome.UNDECRYPTABLE,
                        "no secret opens it to an address (wrong secret, kdf or padding)")
            return
        self.address = address
        self.connection.set_server(f"gw:{address}")
        if address.family == "name":
            self._resolve(address)
            return
        ip = client_ip(address.host)
        assert ip is not None  # parse_address made it
        self._check([ip])

    def _resolve(self, address: Address) -> None:
        connection, settings = self.connection, self.settings
        lookup = self.target.resolve(address.host)
        lookup.addTimeout(settings.timeout, self.target.reactor)
        connection.pending = lookup

        def found(hosts: list[str]) -> None:
            connection.pending = None
            if connection.closing:
                return
            ips = [ip for ip in map(client_ip, hosts) if ip is not None]
            if not ips:
                self.give_up(Outcome.CONNECT_FAILED, f"{address.host} resolves to no address")
            else:
                self._check(ips)

        def failed(f: Failure) -> None:
            connection.pending = None
            if connection.closing:
                return
            if f.check(*_TIMEOUTS):
                self.give_up(Outcome.CONNECT_TIMEOUT, f"resolving {address.host} timed out "
                                                      f"after {settings.timeout:g}s")
            else:
                self.give_up(Outcome.CONNECT_FAILED, f"cannot resolve {address.host}: "
                                                     f"{f.getErrorMessage()}")

        lookup.addCallbacks(found, failed)

    def _check(self, ips: list[IP]) -> None:
        """Keep the addresses inside ``allow``; dial them, or refuse."""
        address = self.address
        assert address is not None
        allowed = self.settings.allow.allowed(ips, address.port)
        if not allowed:
            what = str(address)
            if address.family == "name":
                what += " (" + ", ".join(map(str, ips)) + ")"
            self.refuse(Outcome.NOT_ALLOWED, f"{what} is outside allow")
            return
        self.addresses = allowed
        self.dial()

    # -- dialing --------------------------------------------------------------

    def dial(self) -> None:
        """One attempt, at the next allowed address (round the list on retries)."""
        connection, target, address = self.connection, self.target, self.address
        assert address is not None
        ip = self.addresses[self.attempts % len(self.addresses)]
        self.attempts += 1
        port = address.port
        if address.family == "name":
            self.server = f"gw:{address}({ip})"
        else:
            self.server = f"gw:{address}"
        connection.set_server(self.server)
        if connection.takes_socket():
            # The fast path: a bare socket the switch splices to.
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            attempt = DirectConnect(target.reactor, family, (str(ip), port),
                                    target.connect_deadlines, self._direct_done)
            if attempt.done is not None:  # not decided at once
                connection.pending = attempt
            return
        d = target.endpoint_for(ip, port).connect(BackendFactory(connection, _nothing))
        d.addTimeout(self.settings.timeout, target.reactor)
        connection.pending = d
        d.addCallbacks(self._connected, self._failed)

    def _prefix(self) -> bytes:
        """What the backend gets before the client's bytes."""
        connection, version = self.connection, self.settings.proxy_protocol
        if version is None:
            return self.head
        return build_header(version, connection.client_address, connection.local_address,
                            connection.facts) + self.head

    def _answer_success(self) -> None:
        answer = reply(self.settings.dialect, Outcome.CONNECTED, self.mode)
        self.target.count_reply(answer)
        if answer:
            self.connection.send(answer)

    def _connected(self, protocol: Any) -> None:
        connection = self.connection
        connection.pending = None
        if connection.closing:
            protocol.transport.loseConnection()
            return
        self._answer_success()
        connection.splice(protocol.transport, self._prefix())

    def _direct_done(self, sock: socket.socket | None, failure: Failure | None) -> None:
        connection = self.connection
        if sock is None:
            assert failure is not None
            self._failed(failure)
            return
        connection.pending = None
        try:
            head = self._prefix()
        except Exception:
            log.failure("gateway {gateway}: cannot build the PROXY header",
                        gateway=self.target.name)
            close_socket(self.target.reactor, sock)
            connection.close("error", "cannot build the PROXY header (logged)")
            return
        self._answer_success()
        connection.splice_socket(sock, head, _nothing)

    def _failed(self, f: Failure) -> None:
        connection, settings = self.connection, self.settings
        connection.pending = None
        if connection.closing:
            return  # the client left
        if local_failure(f):
            self.target.local_failure(f)
            self._close("local_resources", Outcome.CONNECT_FAILED,
                        f"cannot connect to {self.server}: {f.getErrorMessage()}")
            return
        timed_out = f.check(*_TIMEOUTS) is not None
        why = f"timed out after {settings.timeout:g}s" if timed_out else f.getErrorMessage()
        self.failures.append(f"{self.server}: {why}")
        if timed_out and self.attempts < settings.retry:
            self.dial()
            return
        self.give_up(Outcome.CONNECT_TIMEOUT if timed_out else Outcome.CONNECT_FAILED,
                     "; ".join(self.failures))

    def give_up(self, outcome: Outcome, detail: str) -> None:
        self._close(_CLOSE_REASONS[outcome], outcome, detail)


@implementer(ITargetKind)
class GatewayKind:
    """``[gateway.NAME]``: the encrypted-address gateway (frontd / huangkunbin protocol)."""

    section = "gateway"
    description = "the encrypted-address gateway: decrypt the backend from the opening, dial it"
    # After backends (10) and responders (20), before TLS termination (100),
    # whose inner routes may then send decrypted traffic to a gateway.
    order = 30
    builtins: Mapping[str, ITarget] = {}

    def compile(self, name: str, table: Mapping[str, Any],
                context: ICompileContext) -> GatewayTarget:
        return GatewayTarget(name, compile_gateway(table, context.base_dir), context.reactor)
