"""simple_matcher (a plugin from a function) and switchyard.testing, as plugin authors use them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from switchyard import testing
from switchyard.interfaces import IMatcher, IMatcherFactory, MatchResult
from switchyard.matchers import (
    NEED_MORE,
    NO,
    Match,
    MatcherConfigError,
    choice,
    flag,
    integer,
    names,
    simple_matcher,
    texts,
)
from switchyard.matchers.http import HTTPMatcherFactory
from switchyard.matchers.tls import TLSMatcherFactory
from tests.openings import vector


def _banner(data: bytes, facts: Mapping[str, Any], prefix: bytes, lines: int,
            host: Any, mode: str, strict: bool, tags: Any) -> MatchResult:
    if not (data.startswith(prefix) or prefix.startswith(data)):
        return NO
    if data.count(b"\n") < lines:
        return NEED_MORE
    name = data[len(prefix):].split(b"\n", 1)[0].decode("ascii", "replace")
    if host is not None and not host(name):
        return NO
    return Match(facts={"name": name, "mode": mode, "strict": strict, "tags": tags})


BANNER = simple_matcher("banner", _banner, description="a test protocol",
                        options={"prefix": lambda opts, key: b"HELLO ",
                                 "lines": integer(1, minimum=1, maximum=3),
                                 "host": names(), "mode": choice("a", ("a", "b")),
                                 "strict": flag(), "tags": texts(("x",))})


class SimpleMatcherTests(TestCase):
    def test_isAPluginAndItsMatcherAMatcher(self) -> None:
        verifyObject(IMatcherFactory, BANNER)
        verifyObject(IMatcher, BANNER.build({}))
        self.assertEqual((BANNER.name, BANNER.description), ("banner", "a test protocol"))

    def test_optionsReachTheFunction(self) -> None:
        matcher = BANNER.build({"mode": "b", "strict": True, "host": "*.example.com"})
        self.assertEqual(matcher.match(b"HELLO a.example.com\n", {}),
                         Match(facts={"name": "a.example.com", "mode": "b", "strict": True,
                                      "tags": ("x",)}))
        self.assertIs(matcher.match(b"HELLO other.org\n", {}), NO)
        self.assertIs(matcher.match(b"HEL", {}), NEED_MORE)

    def test_unknownAndBadOptionsNameTheKey(self) -> None:
        for options, key in [({"mdoe": "a"}, "mdoe"), ({"mode": "c"}, "mode"),
                             ({"strict": "yes"}, "strict"), ({"lines": 9}, "lines"),
                             ({"tags": 3}, "tags")]:
            e = self.assertRaises(MatcherConfigError, BANNER.build, options)
            self.assertEqual(e.key, key)

    def test_theDocsExampleIsSmall(self) -> None:
        """The SOCKS5 example of docs/writing-matchers.md stays about 15 lines of code."""
        from tests.test_plugin_example import PLUGIN_FILE

        with open(PLUGIN_FILE, encoding="utf-8") as f:
            text = f.read()
        code = text.split('"""', 2)[2]  # after the module docstring
        lines = [line for line in code.splitlines()
                 if line.strip() and not line.strip().startswith("#")]
        self.assertLessEqual(len(lines), 20, "\n".join(lines))


class TestingHelpersTests(TestCase):
    def test_realOpeningWaitsThenMatches(self) -> None:
        hello = vector("obfs_tls_client_to_server.bin")
        hello = hello[:5 + int.from_bytes(hello[3:5], "big")]  # the ClientHello record
        match = testing.check_opening(testing.build(TLSMatcherFactory()), hello)
        self.assertEqual(match.facts["sni"], "www.bing.com")

    def test_aMatcherThatDecidesTooEarlyIsCaught(self) -> None:
        early = simple_matcher("early", lambda data, facts: Match() if data else NEED_MORE)
        self.assertRaises(AssertionError, testing.check_opening, early.build({}), b"abc")

    def test_otherProtocolsRefused(self) -> None:
        http = testing.build(HTTPMatcherFactory())
        testing.check_refuses(http, [vector("obfs_tls_client_to_server.bin"), b"SSH-2.0-x\r\n"])
        self.assertRaises(AssertionError, testing.check_refuses, http,
                          [b"GET / HTTP/1.1\r\n\r\n"])

    def test_decidedAt(self) -> None:
        http = testing.build(HTTPMatcherFactory())
        self.assertEqual(testing.decided_at(http, b"\x16\x03"), (1, NO))
