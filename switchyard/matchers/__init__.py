"""The built-in matchers, and what third-party matchers need: the verdicts, the
option helpers, and L{simple_matcher} to make a plugin from one function."""

from switchyard.interfaces import NEED_MORE, NO, Match, MatcherConfigError, MatchResult
from switchyard.matchers.plugin import (
    choice,
    flag,
    integer,
    names,
    number,
    simple_matcher,
    text,
    texts,
)
from switchyard.names import compile_name_patterns
from switchyard.options import Options
from switchyard.wire.text import printable

__all__ = ["NEED_MORE", "NO", "Match", "MatchResult", "MatcherConfigError", "Options", "choice",
           "compile_name_patterns", "flag", "integer", "names", "number", "printable",
           "simple_matcher", "text", "texts"]
