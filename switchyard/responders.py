"""Built-in targets answered by switchyard itself: echo, reject."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr
from twisted.internet import error
from twisted.python.failure import Failure
from zope.interface import implementer

from switchyard.interfaces import IConnection, ITarget, OptionError
from switchyard.options import Options


class _Loopback:
    """The echo target's peer: what the client sends comes straight back."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.client = connection.transport
        self.lost = False

    def write(self, data: bytes) -> None:
        self.connection.peer_data(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.connection.peer_data(b"".join(data))

    def loseWriteConnection(self) -> None:
        self.connection.peer_eof()

    def loseConnection(self) -> None:
        if not self.lost:
            self.lost = True
            self.connection.peer_lost(Failure(error.ConnectionDone()))

    abortConnection = loseConnection

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # The client's transport feeds itself: its own write buffer
        # pauses its reading.
        self.client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.client.unregisterProducer()


@implementer(ITarget)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class EchoTarget:
    """Send every byte back to the client: a smoke test for the whole path."""

    name: str = "echo"

    def attach(self, connection: IConnection) -> None:
        connection.set_server(self.name)
        connection.splice(_Loopback(connection))


@implementer(ITarget)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class RejectTarget:
    """Close the connection at once, after an optional fixed reply."""

    name: str = "reject"
    reply: bytes = b""

    def attach(self, connection: IConnection) -> None:
        connection.set_server(self.name)
        connection.close("rejected", reply=self.reply)


def _compile_echo(name: str, options: Options) -> ITarget:
    return EchoTarget(name=name)


def _compile_reject(name: str, options: Options) -> ITarget:
    reply = options.text("reply") or ""
    return RejectTarget(name=name, reply=reply.encode("utf-8"))


# kind -> (accepted options besides "kind", compiler)
RESPONDER_KINDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "echo": ((), _compile_echo),
    "reject": (("reply",), _compile_reject),
}

# Usable as `to = "echo"` / `to = "reject"` without any [responder] table.
BUILTIN_RESPONDERS: dict[str, ITarget] = {"echo": EchoTarget(), "reject": RejectTarget()}


def compile_responder(name: str, raw: Mapping[str, Any]) -> ITarget:
    """A [responder.NAME] table (``kind = "..."`` and its options) as a target."""
    kind = raw.get("kind")
    if kind not in RESPONDER_KINDS:
        known = ", ".join(sorted(RESPONDER_KINDS))
        raise OptionError("kind", f"must be one of {known}, got {kind!r}")
    accepted, compile_kind = RESPONDER_KINDS[kind]
    options = Options({k: v for k, v in raw.items() if k != "kind"}, accepted)
    return compile_kind(name, options)
