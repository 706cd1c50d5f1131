"""The ssh matcher: the client's identification line."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.interfaces import NEED_MORE, NO, Match, MatcherConfigError
from switchyard.matchers.ssh import MAX_IDENTIFICATION, SSHMatcherFactory
from tests.openings import (
    Opening,
    all_vectors,
    feed,
    line_complete,
    mutated_openings,
    record_opening,
)

ssh = SSHMatcherFactory().build({})


@functools.cache
def openssh() -> Opening:
    """The opening of the real OpenSSH client, recorded once per test run."""
    options = "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no"
    options += " -o UserKnownHostsFile=/dev/null -o ConnectTimeout=3"
    return record_opening(
        lambda port: ["ssh", *options.split(), "-p", str(port), "x@127.0.0.1"],
        line_complete,
    )


class RealClientTests(TestCase):
    def test_opensshBanner(self) -> None:
        data = openssh().data
        result = ssh.match(data, {})
        assert isinstance(result, Match)
        self.assertTrue(result.facts["banner"].startswith("SSH-2.0-OpenSSH_"))
        self.assertFalse(result.facts["banner"].endswith(("\r", "\n")))

    def test_opensshFedOneByteAtATime(self) -> None:
        data = openssh().data
        answers = feed(ssh, data, range(1, len(data) + 1))
        self.assertEqual(answers[-1], (len(data), ssh.match(data, {})))


class IdentificationTests(TestCase):
    def test_prefixesOfSshDashNeedMore(self) -> None:
        for data in [b"", b"S", b"SS", b"SSH", b"SSH-", b"SSH-2.0-OpenSSH_9.2"]:
            self.assertIs(ssh.match(data, {}), NEED_MORE, data)

    def test_otherOpeningsAreNo(self) -> None:
        for data in [b"ssh-", b"SSH2", b"SSH_", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01"]:
            self.assertIs(ssh.match(data, {}), NO, data)

    def test_capturesOfOtherProtocolsAreNo(self) -> None:
        for name, data in all_vectors().items():
            self.assertIs(ssh.match(data, {}), NO, name)

    def test_bannerWithoutLineEnd(self) -> None:
        result = ssh.match(b"SSH-2.0-PuTTY_Release_0.78\r\n\x00\x00\x01", {})
        self.assertEqual(result, Match(facts={"banner": "SSH-2.0-PuTTY_Release_0.78"}))

    def test_bareLineFeedEndsTheLine(self) -> None:
        self.assertEqual(ssh.match(b"SSH-1.99-old\n", {}), Match(facts={"banner": "SSH-1.99-old"}))

    def test_matchesAfter255BytesWithoutLineEnd(self) -> None:
        data = b"SSH-2.0-" + b"x" * 400
        self.assertIs(ssh.match(data[: MAX_IDENTIFICATION - 1], {}), NEED_MORE)
        result = ssh.match(data, {})
        self.assertEqual(result, Match(facts={"banner": data[:MAX_IDENTIFICATION].decode()}))

    def test_lineEndBeyond255BytesIsNotWaitedFor(self) -> None:
        data = b"SSH-2.0-" + b"x" * 300 + b"\r\n"
        result = ssh.match(data, {})
        assert isinstance(result, Match)
        self.assertEqual(len(result.facts["banner"]), MAX_IDENTIFICATION)

    def test_controlBytesInBannerAreEscaped(self) -> None:
        result = ssh.match(b"SSH-2.0-\x1b[2Jevil\r\n", {})
        self.assertEqual(result, Match(facts={"banner": "SSH-2.0-\\x1b[2Jevil"}))

    def test_takesNoOptions(self) -> None:
        e = self.assertRaises(MatcherConfigError, SSHMatcherFactory().build, {"banner": "x"})
        self.assertEqual(e.key, "banner")
        self.assertIn("takes no options", e.problem)


class PropertyTests(TestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=400),
            st.binary(max_size=400).map(lambda b: b"SSH-" + b),
            mutated_openings(
                [b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", *all_vectors().values()]
            ),
        )
    )
    def test_noInputMakesMatchRaise(self, data: bytes) -> None:
        self.assertIn(type(ssh.match(data, {})).__name__, {"Match", "Verdict"})

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300).filter(lambda b: b"\n" not in b))
    def test_anySshOpeningIsDecidedByTheLineOrByLength(self, rest: bytes) -> None:
        data = b"SSH-" + rest
        result = ssh.match(data, {})
        if len(data) < MAX_IDENTIFICATION:
            self.assertIs(result, NEED_MORE)
        else:
            self.assertIsInstance(result, Match)
        self.assertIsInstance(ssh.match(data + b"\n", {}), Match)
