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

    A target either answers the client itself, or gives the switch a peer
    to relay with (L{splice}), or closes the connection with a reason.
    """

    reactor = Attribute("The reactor this connection runs on (timers, connects).")
    facts = Attribute("Mapping: the listener's and the winning matcher's facts.")
    client_address = Attribute("The client's IAddress (after a trusted PROXY header).")
    local_address = Attribute("The IAddress the client connected to.")
    buffered = Attribute("The bytes read while sniffing, not yet delivered.")

    def set_server(description: str) -> None:
        """Name the server this connection is being sent to, for the access log."""

    def splice(peer: Any, prefix: bytes = b"") -> None:
        """
        Relay between the client and C{peer} (an ITransport that also has
        C{loseWriteConnection}, C{registerProducer} and, if it produces
        data of its own, IPushProducer): write C{prefix} then the buffered
        opening to C{peer}, then relay both ways with flow control and
        half-close until either side ends. Data the peer produces must be
        given to L{peer_data}, its end of stream to L{peer_eof}, its loss
        to L{peer_lost}.
        """

    def takes_socket() -> bool:
        """
        Whether L{splice_socket} may be used now: the client is a plain
        socket on a system with splice(2) and the listener's fast path is on.
        """

    def splice_socket(sock: Any, prefix: bytes, release: Any) -> None:
        """
        Like L{splice}, for a peer that is a bare connected socket (no
        Twisted transport): the switch owns C{sock} from here on, relays
        with splice(2), and calls C{release()} once C{sock} is closed.
        """

    def peer_data(data: bytes) -> None:
        """Bytes from the peer, for the client."""

    def peer_eof() -> None:
        """The peer will send no more (half-close)."""

    def peer_lost(reason: Any) -> None:
        """The peer's connection is gone."""

    def close(reason: str, detail: str = "", reply: bytes = b"") -> None:
        """
        End the connection, both sides, recording why for the access log;
        C{reply} is written to the client first.
        """


class ITarget(Interface):
    """Where a route sends its connections: a backend or a built-in responder."""

    name = Attribute("The name routes use in their C{to} key.")

    def attach(connection: IConnection) -> None:
        """Take over a connection whose route chose this target."""
