"""switchyard.wire.last: a parser's last answer, remembered by identity."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from switchyard.interfaces import NEED_MORE
from switchyard.wire.last import LastBuffer


class LastBufferTests(TestCase):
    def setUp(self) -> None:
        self.calls: list[tuple[bytes, bool]] = []

        def parse(data: bytes, whole: bool) -> object:
            self.calls.append((data, whole))
            return ("offer",) if not whole else {"whole": data}

        self.remembered: LastBuffer[object] = LastBuffer(parse, NEED_MORE)

    def test_theSameObjectAgainIsNotParsedAgain(self) -> None:
        data = b"opening"
        first = self.remembered(data, True)
        self.assertIs(self.remembered(data, True), first)
        self.assertIs(self.remembered(data, False), first)  # the whole answer serves an offer
        self.assertEqual(len(self.calls), 1)

    def test_equalBytesOfAnotherObjectAreParsed(self) -> None:
        self.remembered(b"opening", True)
        self.remembered(bytes(bytearray(b"opening")), True)
        self.assertEqual(len(self.calls), 2)

    def test_anOfferIsNotEnoughForTheWholeAnswer(self) -> None:
        data = b"opening"
        self.assertEqual(self.remembered(data, False), ("offer",))
        self.assertEqual(self.remembered(data, True), {"whole": data})
        self.assertEqual(self.calls, [(data, False), (data, True)])

    def test_mutableBuffersAreCopiedAndNeverRemembered(self) -> None:
        data = bytearray(b"opening")
        self.remembered(data, True)
        data[:] = b"changed"
        self.assertEqual(self.remembered(data, True), {"whole": b"changed"})
        self.assertEqual([type(d) for d, _ in self.calls], [bytes, bytes])
