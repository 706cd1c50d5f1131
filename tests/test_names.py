"""Name patterns (tls sni, http host) and matcher option checking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.interfaces import MatcherConfigError
from switchyard.names import compile_name_patterns, normalize_name
from switchyard.options import Options

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


class ExactNameTests(TestCase):
    def test_exactNameMatchesItself(self) -> None:
        self.assertTrue(compile_name_patterns("sni", "example.com")("example.com"))

    def test_exactNameIsCaseInsensitive(self) -> None:
        matches = compile_name_patterns("sni", "Example.COM")
        self.assertTrue(matches("EXAMPLE.com"))

    def test_exactNameIgnoresTrailingDotOnEitherSide(self) -> None:
        self.assertTrue(compile_name_patterns("sni", "example.com")("example.com."))
        self.assertTrue(compile_name_patterns("sni", "example.com.")("example.com"))

    def test_exactNameDoesNotMatchSubdomainOrSuffix(self) -> None:
        matches = compile_name_patterns("sni", "example.com")
        self.assertFalse(matches("www.example.com"))
        self.assertFalse(matches("badexample.com"))
        self.assertFalse(matches("example.co"))

    def test_ipv6PatternMatchesWithOrWithoutBrackets(self) -> None:
        self.assertTrue(compile_name_patterns("host", "[::1]")("::1"))
        self.assertTrue(compile_name_patterns("host", "::1")("[::1]"))

    def test_unicodePatternMatchesItsALabel(self) -> None:
        matches = compile_name_patterns("sni", "bücher.example")
        self.assertTrue(matches("xn--bcher-kva.example"))


class WildcardTests(TestCase):
    def setUp(self) -> None:
        self.matches = compile_name_patterns("sni", "*.example.com")

    def test_sniWildcardMatchesOneLabel(self) -> None:
        self.assertTrue(self.matches("www.example.com"))

    def test_sniWildcardMatchesSeveralLabels(self) -> None:
        self.assertTrue(self.matches("a.b.example.com"))

    def test_sniWildcardDoesNotMatchApex(self) -> None:
        self.assertFalse(self.matches("example.com"))
        self.assertFalse(self.matches("example.com."))

    def test_sniWildcardDoesNotMatchEmptyLabels(self) -> None:
        self.assertFalse(self.matches(".example.com"))
        self.assertFalse(self.matches("a..example.com"))

    def test_sniWildcardNeedsADotBeforeTheSuffix(self) -> None:
        self.assertFalse(self.matches("badexample.com"))

    def test_sniWildcardIsCaseInsensitiveAndIgnoresTrailingDot(self) -> None:
        self.assertTrue(self.matches("WWW.Example.Com."))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(_label, min_size=1, max_size=4), st.lists(_label, min_size=1, max_size=3))
    def test_wildcardMatchesExactlyNamesWithLabelsBeforeTheSuffix(
        self, prefix: list[str], suffix: list[str]
    ) -> None:
        domain = ".".join(suffix)
        matches = compile_name_patterns("sni", "*." + domain)
        self.assertTrue(matches(".".join(prefix + suffix)))
        self.assertFalse(matches(domain))


class RegexPatternTests(TestCase):
    def test_regexMustMatchTheWholeName(self) -> None:
        matches = compile_name_patterns("sni", r"~api[0-9]+\.example\.net")
        self.assertTrue(matches("api12.example.net"))
        self.assertFalse(matches("xapi12.example.net"))
        self.assertFalse(matches("api12.example.net.evil"))

    def test_regexIsCaseInsensitive(self) -> None:
        self.assertTrue(
            compile_name_patterns("sni", "~api[0-9]+\\.example\\.net")("API7.Example.NET")
        )

    def test_regexDoesNotSeeTrailingDot(self) -> None:
        self.assertTrue(compile_name_patterns("sni", r"~^api\.example\.net$")("api.example.net."))

    def test_badRegexNamesOptionAndProblem(self) -> None:
        e = self.assertRaises(MatcherConfigError, compile_name_patterns, "sni", "~(")
        self.assertEqual(e.key, "sni")
        self.assertEqual(
            str(e), "sni: bad regex '~(': missing ), unterminated subpattern at position 0"
        )


class PatternListTests(TestCase):
    def test_listMatchesWhenAnyPatternMatches(self) -> None:
        matches = compile_name_patterns(
            "sni", ["example.com", "*.example.com", r"~^api[0-9]+\.example\.net$"]
        )
        for name in ["example.com", "www.example.com", "api3.example.net"]:
            self.assertTrue(matches(name), name)
        self.assertFalse(matches("example.net"))

    def test_emptyListIsRefused(self) -> None:
        e = self.assertRaises(MatcherConfigError, compile_name_patterns, "host", [])
        self.assertEqual(e.key, "host")

    def test_nonStringsAreRefused(self) -> None:
        for bad in [5, ["example.com", 5], {"a": 1}, None]:
            e = self.assertRaises(MatcherConfigError, compile_name_patterns, "host", bad)
            self.assertEqual(e.key, "host")
            self.assertIn("expected a string or a list of strings", e.problem)

    def test_starOutsideFirstLabelIsRefused(self) -> None:
        for bad in ["*", "a*.example.com", "www.*.example.com", "*example.com", "*.*.com"]:
            e = self.assertRaises(MatcherConfigError, compile_name_patterns, "sni", bad)
            self.assertEqual(e.key, "sni")
            self.assertIn(repr(bad), e.problem)

    def test_malformedNamesAreRefused(self) -> None:
        for bad in ["", "exa mple.com", "example.com/x", "*.", "*.a..b"]:
            e = self.assertRaises(MatcherConfigError, compile_name_patterns, "sni", bad)
            self.assertEqual(e.key, "sni")

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_predicatesNeverRaise(self, name: str) -> None:
        matches = compile_name_patterns("sni", ["example.com", "*.example.com", "~.*x.*"])
        self.assertIsInstance(matches(name), bool)
        self.assertIsInstance(normalize_name(name), str)


class OptionsTests(TestCase):
    def test_unknownOptionIsNamedWithTheAcceptedOnes(self) -> None:
        e = self.assertRaises(MatcherConfigError, Options, {"snl": "x"}, ("sni", "alpn"))
        self.assertEqual(e.key, "snl")
        self.assertEqual(e.problem, "unknown option (accepted options: alpn, sni)")

    def test_matcherWithoutOptionsSaysSo(self) -> None:
        e = self.assertRaises(MatcherConfigError, Options, {"x": 1}, ())
        self.assertEqual(e.problem, "unknown option (this matcher takes no options)")

    def test_flagMustBeABoolean(self) -> None:
        opts = Options({"no_sni": "yes"}, ("no_sni",))
        e = self.assertRaises(MatcherConfigError, opts.flag, "no_sni")
        self.assertEqual(e.key, "no_sni")
        self.assertEqual(e.problem, "expected true or false, got string 'yes'")

    def test_flagDefaultsToFalse(self) -> None:
        self.assertFalse(Options({}, ("no_sni",)).flag("no_sni"))

    def test_integerRefusesBooleansAndOutOfRange(self) -> None:
        for bad, problem in [(True, "expected an integer"), (0, "must be between 1 and 9")]:
            opts = Options({"n": bad}, ("n",))
            e = self.assertRaises(MatcherConfigError, opts.integer, "n", 1, minimum=1, maximum=9)
            self.assertIn(problem, e.problem)

    def test_requiredTextMissing(self) -> None:
        e = self.assertRaises(
            MatcherConfigError, Options({}, ("pattern",)).text, "pattern", required=True
        )
        self.assertEqual(e.key, "pattern")
        self.assertEqual(e.problem, "required option is missing")

    def test_textMustBeAString(self) -> None:
        e = self.assertRaises(MatcherConfigError, Options({"p": 1.5}, ("p",)).text, "p")
        self.assertEqual(e.problem, "expected a string, got float 1.5")

    def test_textsAcceptsOneStringOrAList(self) -> None:
        opts = Options({"a": "h2", "b": ["h2", "http/1.1"]}, ("a", "b"))
        self.assertEqual(opts.texts("a"), ("h2",))
        self.assertEqual(opts.texts("b"), ("h2", "http/1.1"))
        self.assertIsNone(opts.texts("c"))
