"""The plugin surface of switchyard: matchers, their verdicts, and targets."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Union

import attr
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class Verdict(enum.Enum):
    """A matcher's answer when it does not match."""

    NO = "no"
    """These bytes are not this protocol (or fail the route's conditions)."""

    NEED_MORE = "need-more"
    """Not decidable yet: wait for more bytes (within the inspect timeout)."""


NO = Verdict.NO
NEED_MORE = Verdict.NEED_MORE


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Match:
    """A matcher's positive answer, with the facts it read from the opening.

    Facts are short, printable values (``sni``, ``alpn``, ``tls_version``,
    ``host``, ``path``, ``method``, ``banner``...). They go to the access log,
    and ``sni``/``host`` and ``alpn`` into PROXY v2 TLVs.
    """

    facts: Mapping[str, Any] = attr.ib(factory=dict)


MatchResult = Union[Match, Verdict]


class OptionError(ValueError):
    """An option is wrong: ``key`` names it, ``problem`` says what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


MatcherConfigError = OptionError
"""What a matcher's C{build} raises for a bad option (the same class)."""


class IMatcher(Interface):
    """A compiled route condition: a pure function of the opening bytes.

    No I/O, no reactor, no clock: the switch calls ``match`` each time more
    bytes arrive, with everything buffered so far, until one route matches.
    """

    def match(data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        """
        Decide whether ``data`` (all bytes the client sent so far) belongs
        to this route.

        @param facts: what is already known about the connection
            (``client_host``, ``client_port``, ``listener``, and facts from
            outer layers); read-only.
        @return: a L{Match} with facts, L{NO}, or L{NEED_MORE}. Must never
            raise on any input.
        """


class IExplainingMatcher(IMatcher):
    """
    A matcher that can also say, in words, why it answers what it answers.

    Optional: C{switchyard explain} and C{twistd switchyard --explain} ask a
    matcher providing it for a reason beside each verdict; a matcher without
    it still works, and gets a reason made from its verdict alone. The
    switch itself never calls C{explain}: C{match} stays the only hot path.
    """

    def explain(data: bytes, facts: Mapping[str, Any]) -> str:
        """
        Why L{IMatcher.match} answers what it does for these bytes, in a
        few words an operator reads after the verdict, e.g. C{"SNI 'c.test'
        is not one of a.test, b.test"} or C{"request line incomplete after
        14 bytes"}. Called only after C{match(data, facts)}, with the same
        arguments; must not raise (if it does, the default reason is used).
        """


class IMatcherFactory(IPlugin):
    """
    A matcher plugin: drop a module providing one into any installed
    C{twisted/plugins/} folder and name it in a route's C{match} key.
    It extends IPlugin, so implementing it is all Twisted's plugin finder needs.
    """

    name = Attribute("The name routes use in their C{match} key, e.g. 'tls'.")
    description = Attribute("One line for C{--help} and the docs.")

    def build(options: Mapping[str, Any]) -> IMatcher:
        """
        Compile a route's matcher options (every route key except C{name},
        C{match} and C{to}) into a matcher.

        @raise MatcherConfigError: an option is unknown or has a bad value.
        """


class IConnection(Interface):
    """What a target is handed: one sniffed client connection.

    A target either answers the client itself, or gives the connection a
    peer to relay with (L{splice}, L{splice_socket}), or closes it with a
    reason. Everything a target may use is declared here.
    """

    reactor = Attribute("The reactor this connection runs on (timers, connects).")
    facts = Attribute("Mapping: the listener's and the winning matcher's facts.")
    client_address = Attribute("The client's IAddress (after a trusted PROXY header).")
    local_address = Attribute("The IAddress the client connected to.")
    buffered = Attribute(
        "The bytes read from the client and not delivered yet: the opening, then "
        "what arrived while the target got ready.")
    closing = Attribute(
        "True once the connection is ending: a target still getting ready for it "
        "stops (its L{pending} work was cancelled).")
    client_ended = Attribute("True once the client has sent its end of stream.")
    pending = Attribute(
        "Settable: something with C{cancel()} the target is waiting on (a connect, a "
        "queue slot); cancelled if the connection ends first. The target sets it "
        "back to None when the wait is over.")

    def set_server(description: str) -> None:
        """Name the server this connection is being sent to, for the access log."""

    def consume(count: int) -> bytes:
        """Take the first C{count} buffered bytes out and return them: a handshake
        the target read itself, which must not reach the peer."""

    def send(data: bytes) -> None:
        """Write C{data} to the client before the relay starts (a handshake reply)."""

    def watch(callback: Any) -> None:
        """
        Keep reading the client while the target gets ready, and call
        C{callback()} whenever L{buffered} grew or the client ended its
        stream (L{client_ended}); reading pauses past the listener's
        C{max_sniff_bytes}. C{watch(None)} stops. For targets with a
        handshake of their own; the relay starts with whatever is buffered.
        """

    def splice(peer: Any, prefix: bytes = b"") -> None:
        """
        Relay between the client and C{peer}: write C{prefix} then the
        buffered bytes to C{peer}, then relay both ways with flow control and
        half-close until either side ends.

        C{peer} has C{write}, C{writeSequence}, C{loseWriteConnection} (half-
        close), C{loseConnection}, C{abortConnection} (a reset: the stream
        was cut), C{registerProducer}/C{unregisterProducer} and, if it
        produces data of its own, IPushProducer. What the peer produces
        goes to L{peer_data}, its end of stream to L{peer_eof}, its loss to
        L{peer_lost}.
        """

    def takes_socket() -> bool:
        """
        Whether L{splice_socket} may be used now: the client is a plain
        socket on a system with splice(2), the fast path is available and
        the listener's C{fast_path} is on.
        """

    def splice_socket(sock: Any, prefix: bytes, release: Any) -> None:
        """
        Like L{splice}, for a peer that is a bare connected socket (no
        Twisted transport): the connection owns C{sock} from here on, and
        calls C{release()} once C{sock} is closed.
        """

    def peer_data(data: bytes) -> None:
        """Bytes from the peer, for the client."""

    def peer_eof() -> None:
        """The peer will send no more (half-close)."""

    def peer_lost(reason: Any, why: str | None = None) -> None:
        """
        The peer's connection is gone: C{reason} is a Failure, ConnectionDone
        for a clean close. C{why} names the close reason for the access log
        when the peer knows better than "backend_reset" (e.g.
        C{backend_tls_failed}).
        """

    def close(reason: str, detail: str = "", reply: bytes = b"") -> None:
        """
        End the connection, both sides, recording why for the access log;
        C{reply} is written to the client first.
        """

    def nest(listener: Any, transport: Any) -> IConnection:
        """
        Start a connection nested in this one, on C{transport} (e.g. the
        plaintext of a TLS session this connection carries), routed by
        C{listener}'s route table. The nested connection writes the one
        access-log line for both; this one writes none.
        """


class IRelayBooks(Interface):
    """What a relay keeps up to date on its connection, and nothing more."""

    bytes_in = Attribute("Bytes from the client so far.")
    bytes_out = Attribute("Bytes to the client so far.")
    last_activity = Attribute("reactor.seconds() of the last byte either way: "
                              "the idle timeout's clock.")

    def relay_ended(reason: str, detail: str = "") -> None:
        """Record why the relay ended (the first reason given wins)."""


class ITarget(Interface):
    """Where a route sends its connections: a backend, a responder, a TLS
    termination, or anything a target kind plugin builds."""

    name = Attribute("The name routes use in their C{to} key.")
    # Optional, read with getattr (so not Attributes here): a target whose
    # parts must all run in one process sets ``single_process`` to a short
    # reason, and ``workers > 1`` is then a config error saying it; one that
    # does its work without any route (a tunnel agent) sets ``standalone``,
    # and a config holding one needs no listener.

    def attach(connection: IConnection) -> None:
        """Take over a connection whose route chose this target."""

    def describe() -> list[str]:
        """
        Lines for C{--check} and the start-up log beyond the target's name
        (e.g. the routes after a TLS termination); usually empty.
        """


class IRuntime(Interface):
    """What a running target is handed when it starts: the process's shared sinks."""

    reactor = Attribute("The reactor.")
    access_log = Attribute("The access log file (L{switchyard.observe.accesslog."
                           "AccessLogFile}) for connections the target starts itself, "
                           "or None: those lines go to the twistd log.")
    metrics = Attribute("The metrics registry (L{switchyard.observe.metrics_export.Metrics}: "
                        "counter, gauge, histogram, register), or None when metrics are off.")


class IRunningTarget(ITarget):
    """A target with parts that run while switchyard does (health checks,
    certificate watchers, tunnel keep-alives)."""

    def start(runtime: IRuntime) -> None:
        """Start them (timers on the reactor), before listeners accept. Called
        again on the new targets after each reload."""

    def stop() -> Any:
        """Stop them; may return a Deferred that fires once they are over."""

    def hangup() -> None:
        """SIGHUP: re-read the files this target holds (certificates, keys)."""


class ICompileContext(Interface):
    """What a target kind is given to compile its tables."""

    reactor = Attribute("The reactor the compiled targets will run on.")
    base_dir = Attribute("The config file's folder: relative file names are relative to it.")
    targets = Attribute("Mapping: the targets compiled so far, by name (kinds of a lower "
                        "C{order} come first).")

    def compile_routes(key: str, name: str, table: Mapping[str, Any]) -> Any:
        """Compile a nested route table called C{name} (the keys of a listener
        without a port, found at C{key}), for a target that routes again
        inside (TLS termination)."""


class ITargetKind(IPlugin):
    """
    A target kind plugin: reads every C{[SECTION.NAME]} table of the config
    into a target. Built-in kinds (backend, responder, tls) are registered
    this way too (twisted/plugins/switchyard_targets.py).
    """

    section = Attribute("The config section this kind reads, e.g. 'backend'.")
    description = Attribute("One line for the docs.")
    order = Attribute("Kinds compile in ascending order; later ones may refer to "
                      "the targets of earlier ones.")
    builtins = Attribute("Mapping: targets usable by name without a table "
                         "(e.g. 'echo'); usually empty.")

    def compile(name: str, table: Mapping[str, Any], context: ICompileContext) -> ITarget:
        """
        Compile one C{[SECTION.NAME]} table.

        @raise OptionError: an option is unknown or has a bad value.
        """
