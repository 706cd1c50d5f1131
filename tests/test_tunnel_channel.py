"""The tunnel channel as a relay peer: windows, pauses, half-close, how it ends."""

from __future__ import annotations

from typing import Any

from twisted.conch.error import ConchError
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from switchyard.targets.tunnels.channel import CLOSE_DRAIN_TIMEOUT, TunnelChannel
from switchyard.targets.tunnels.registry import ChannelRefused


class FakeLink:
    """The agent's connection as the channel sees it: records what it is asked to send."""

    description = "198.51.100.9:2200 (key SHA256:test)"

    def __init__(self) -> None:
        self.clock = Clock()
        self.lost = False
        self.congested = False
        self.sent: list[Any] = []

    def sendData(self, channel: TunnelChannel, data: bytes) -> None:
        self.sent.append(data)

    def sendEOF(self, channel: TunnelChannel) -> None:
        self.sent.append("EOF")

    def sendClose(self, channel: TunnelChannel) -> None:
        if not channel.localClosed:
            channel.localClosed = True
            self.sent.append("CLOSE")

    def adjustWindow(self, channel: TunnelChannel, n: int) -> None:
        channel.localWindowLeft += n
        self.sent.append(("WINDOW", n))

    def logPrefix(self) -> str:
        return "fake"


class Recorder:
    """The switch's connection and the visitor's transport (as producer), recorded."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def peer_data(self, data: bytes) -> None:
        self.events.append(data)

    def peer_eof(self) -> None:
        self.events.append("eof")

    def peer_lost(self, reason: Failure) -> None:
        self.events.append(reason)

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")


class ChannelTests(unittest.TestCase):
    def setUp(self) -> None:
        self.link = FakeLink()
        self.visitor = Recorder()
        self.releases = 0
        self.channel = TunnelChannel(self.link, self.visitor, self.release, window=1000,
                                     max_packet=100)

    def release(self) -> None:
        self.releases += 1

    def open(self, window: int = 1000, packet: int = 100) -> TunnelChannel:
        # What conch does on the agent's confirmation.
        self.channel.remoteWindowLeft = window
        self.channel.remoteMaxPacket = packet
        self.channel.channelOpen(b"")
        return self.successResultOf(self.channel.opened)

    def lost_reason(self) -> Failure:
        [reason] = [e for e in self.visitor.events if isinstance(e, Failure)]
        return reason

    def test_bytesWrittenBeforeTheOpenGoOutWhenItOpens(self) -> None:
        self.channel.write(b"opening")
        self.channel.loseWriteConnection()
        self.assertEqual(self.link.sent, [])
        self.open()
        self.assertEqual(self.link.sent, [b"opening", "EOF"])

    def test_writesSplitIntoPacketsWithinTheWindow(self) -> None:
        self.open(window=1000, packet=100)
        self.channel.write(b"x" * 250)
        self.assertEqual([len(d) for d in self.link.sent], [100, 100, 50])

    def test_usedUpWindowPausesTheVisitorUntilTheAgentGivesMore(self) -> None:
        self.open(window=100)
        self.channel.registerProducer(self.visitor, True)
        self.channel.write(b"a" * 150)
        self.assertEqual((self.channel.buffered, self.visitor.events), (50, ["pause"]))
        self.channel.addWindowBytes(100)
        self.assertEqual(self.visitor.events, ["pause", "resume"])
        self.assertEqual(b"".join(self.link.sent), b"a" * 150)
        self.assertEqual(self.channel.buffered, 0)

    def test_producerRegisteredOnAFullWindowIsPausedAtOnce(self) -> None:
        self.open(window=10)
        self.channel.write(b"b" * 20)
        self.channel.registerProducer(self.visitor, True)
        self.assertEqual(self.visitor.events, ["pause"])

    def test_congestedAgentConnectionPausesTheVisitor(self) -> None:
        self.open()
        self.channel.registerProducer(self.visitor, True)
        self.link.congested = True
        self.channel.update_producer()
        self.link.congested = False
        self.channel.update_producer()
        self.assertEqual(self.visitor.events, ["pause", "resume"])

    def test_eofWaitsForTheBufferedBytes(self) -> None:
        self.open(window=100)
        self.channel.write(b"c" * 150)
        self.channel.loseWriteConnection()
        self.assertNotIn("EOF", self.link.sent)
        self.channel.write(b"late")  # after the visitor's EOF: nothing may follow
        self.channel.addWindowBytes(1000)
        self.assertEqual(self.link.sent[-1], "EOF")
        self.assertEqual(b"".join(d for d in self.link.sent if isinstance(d, bytes)),
                         b"c" * 150)

    def test_windowIsGivenBackOnlyWhileTheVisitorKeepsUp(self) -> None:
        self.open()
        self.receive(b"d" * 600)
        self.assertEqual(self.link.sent, [("WINDOW", 600)])
        self.channel.pauseProducing()
        self.receive(b"e" * 600)
        self.assertEqual(self.link.sent, [("WINDOW", 600)])
        self.channel.resumeProducing()
        self.assertEqual(self.link.sent, [("WINDOW", 600), ("WINDOW", 600)])
        self.assertEqual(self.visitor.events, [b"d" * 600, b"e" * 600])

    def receive(self, data: bytes) -> None:
        # What the agent's connection does with CHANNEL_DATA.
        self.channel.localWindowLeft -= len(data)
        self.channel.dataReceived(data)

    def test_cleanEndIsConnectionDone(self) -> None:
        self.open()
        self.channel.eofReceived()
        self.channel.loseWriteConnection()
        self.channel.loseConnection()
        self.assertEqual(self.link.sent, ["EOF", "CLOSE"])
        self.channel.closed()
        self.assertEqual(self.visitor.events[0], "eof")
        self.lost_reason().trap(error.ConnectionDone)
        self.assertEqual(self.releases, 1)

    def test_closeIsAnEndOfStreamThenTheClose(self) -> None:
        """A clean close is a FIN: the other end reads an end of stream, not a cut."""
        self.open()
        self.channel.write(b"answer")
        self.channel.loseConnection()
        self.assertEqual(self.link.sent, [b"answer", "EOF", "CLOSE"])

    def test_closeWaitsForTheBufferThenEndsTheStream(self) -> None:
        self.open(window=10)
        self.channel.write(b"h" * 50)
        self.channel.loseConnection()
        self.assertNotIn("EOF", self.link.sent)
        self.channel.addWindowBytes(100)
        self.assertEqual(b"".join(x for x in self.link.sent if isinstance(x, bytes)), b"h" * 50)
        self.assertEqual(self.link.sent[-2:], ["EOF", "CLOSE"])

    def test_agentClosingWithoutEofIsLost(self) -> None:
        self.open()
        self.channel.closeReceived()
        self.assertEqual(self.link.sent, ["CLOSE"])
        self.channel.closed()
        self.lost_reason().trap(error.ConnectionLost)

    def test_agentConnectionLostIsLost(self) -> None:
        self.open()
        self.channel.eofReceived()
        self.link.lost = True
        self.channel.closed()
        self.lost_reason().trap(error.ConnectionLost)

    def test_closeWithBytesTheAgentWillNotTakeIsCutAfterAWhile(self) -> None:
        self.open(window=10)
        self.channel.write(b"f" * 50)
        self.channel.loseConnection()
        self.assertNotIn("CLOSE", self.link.sent)
        self.link.clock.advance(CLOSE_DRAIN_TIMEOUT)
        self.assertEqual(self.link.sent[-1], "CLOSE")
        self.channel.closed()
        self.lost_reason().trap(error.ConnectionLost)

    def test_refusedOpenFailsWithTheAgentsReason(self) -> None:
        self.channel.openFailed(ConchError(b"open failed: \x1b[31mConnection refused", 2))
        failure = self.failureResultOf(self.channel.opened, ChannelRefused)
        self.assertEqual(str(failure.value), "refused (2): open failed: ?[31mConnection refused")
        self.assertEqual(failure.value.code, 2)
        self.assertEqual(self.releases, 1)

    def test_openFailingBecauseTheAgentLeftIsLost(self) -> None:
        self.channel.openFailed(error.ConnectionLost())
        self.failureResultOf(self.channel.opened, error.ConnectionLost)

    def test_cancelledOpenIsClosedOnceItOpens(self) -> None:
        self.channel.opened.cancel()
        self.failureResultOf(self.channel.opened, defer.CancelledError)
        self.channel.remoteWindowLeft, self.channel.remoteMaxPacket = 1000, 100
        self.channel.channelOpen(b"")
        self.assertEqual(self.link.sent, ["CLOSE"])
        self.channel.closed()
        self.assertEqual(self.visitor.events, [])  # the visitor has moved on
        self.assertEqual(self.releases, 1)

    def test_stopProducingAbortsAndDropsWhatIsBuffered(self) -> None:
        self.open(window=10)
        self.channel.write(b"g" * 50)
        self.channel.stopProducing()
        self.assertEqual((self.channel.buffered, self.link.sent[-1]), (0, "CLOSE"))
