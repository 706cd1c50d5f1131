"""The any and regex matchers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.interfaces import NEED_MORE, NO, Match, MatcherConfigError
from switchyard.matchers.basic import AnyMatcherFactory, RegexMatcherFactory
from tests.openings import all_vectors, mutated_openings, vector


def regex(**options: Any) -> Any:
    return RegexMatcherFactory().build(options)


class AnyTests(TestCase):
    def test_matchesEverythingEvenNothing(self) -> None:
        matcher = AnyMatcherFactory().build({})
        for data in [b"", b"\x00", *all_vectors().values()]:
            self.assertEqual(matcher.match(data, {}), Match(facts={}))

    def test_takesNoOptions(self) -> None:
        e = self.assertRaises(MatcherConfigError, AnyMatcherFactory().build, {"pattern": "x"})
        self.assertEqual(e.key, "pattern")
        self.assertEqual(e.problem, "unknown option (this matcher takes no options)")


class RegexTests(TestCase):
    def test_searchesAnywhere(self) -> None:
        self.assertEqual(
            regex(pattern="bing").match(vector("obfs_tls_client_to_server.bin"), {}),
            Match(facts={"regex": "bing"}),
        )

    def test_caretAnchorsAtTheStart(self) -> None:
        self.assertIsInstance(regex(pattern="^DGST").match(b"DGST\x00\x00", {}), Match)
        self.assertIs(regex(pattern="^DGST").match(b"xDGST", {}), NO)

    def test_needsMoreUntilMinLength(self) -> None:
        matcher = regex(pattern="^AB", min_length=4)
        self.assertIs(matcher.match(b"", {}), NEED_MORE)
        self.assertIs(matcher.match(b"ABC", {}), NEED_MORE)
        self.assertIsInstance(matcher.match(b"ABCD", {}), Match)

    def test_noWhenAbsentOnceMinLengthIsThere(self) -> None:
        self.assertIs(regex(pattern="^AB", min_length=2).match(b"AC", {}), NO)

    def test_defaultMinLengthIsOneByte(self) -> None:
        self.assertIs(regex(pattern="x*").match(b"", {}), NEED_MORE)
        self.assertEqual(regex(pattern="x*").match(b"y", {}), Match(facts={"regex": ""}))

    def test_patternIsLatin1SoAnyByteCanBeWritten(self) -> None:
        self.assertIsInstance(regex(pattern="^\xff\x00").match(b"\xff\x00", {}), Match)
        self.assertIsInstance(regex(pattern=r"^\xff\x00").match(b"\xff\x00", {}), Match)

    def test_factIsTruncatedTo64BytesAndEscaped(self) -> None:
        result = regex(pattern=".+").match(b"\x01" + b"a" * 100, {})
        self.assertEqual(result, Match(facts={"regex": "\\x01" + "a" * 63}))

    def test_badRegexNamesPatternAndProblem(self) -> None:
        e = self.assertRaises(MatcherConfigError, regex, pattern="(")
        self.assertEqual(
            str(e), "pattern: bad regex '(': missing ), unterminated subpattern at position 0"
        )

    def test_characterAboveLatin1IsRefused(self) -> None:
        e = self.assertRaises(MatcherConfigError, regex, pattern="caf\u20ac")
        self.assertEqual(e.key, "pattern")
        self.assertIn("above \\u00ff at position 3", e.problem)

    def test_patternIsRequired(self) -> None:
        e = self.assertRaises(MatcherConfigError, regex, min_length=3)
        self.assertEqual((e.key, e.problem), ("pattern", "required option is missing"))

    def test_patternMustBeAString(self) -> None:
        e = self.assertRaises(MatcherConfigError, regex, pattern=["a"])
        self.assertEqual(e.key, "pattern")

    def test_minLengthMustBeAPositiveInteger(self) -> None:
        for bad in [0, -1, True, "4", 2.0]:
            e = self.assertRaises(MatcherConfigError, regex, pattern="a", min_length=bad)
            self.assertEqual(e.key, "min_length", bad)

    def test_unknownOption(self) -> None:
        e = self.assertRaises(MatcherConfigError, regex, pattern="a", flags="i")
        self.assertEqual(e.key, "flags")
        self.assertIn("accepted options: min_length, pattern", e.problem)


class PropertyTests(TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.one_of(st.binary(max_size=300), mutated_openings(list(all_vectors().values()))))
    def test_noInputMakesMatchRaise(self, data: bytes) -> None:
        for matcher in [
            AnyMatcherFactory().build({}),
            regex(pattern="^(GET|\x16\x03)"),
            regex(pattern="[\x80-\xff]{3}", min_length=8),
        ]:
            self.assertIn(type(matcher.match(data, {})).__name__, {"Match", "Verdict"})
