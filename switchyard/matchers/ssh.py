"""The ``ssh`` matcher: an SSH identification string (RFC 4253 section 4.2).

A client must send ``SSH-protoversion-softwareversion`` as its very first
line, so four bytes ``SSH-`` decide the protocol. The matcher still waits
for the end of that line (LF), or for 255 bytes (the RFC's maximum line
length) if no LF comes, before matching, so that the ``banner`` fact is
complete: clients send the line in one segment and then wait for the
server's, so the wait costs nothing in practice, and a client that never
finishes its line is cut off by the switch's inspect timeout like any other
undecided opening. While the bytes so far are a prefix of ``SSH-`` the
answer is NEED_MORE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import implementer

from switchyard.interfaces import (
    NEED_MORE,
    NO,
    IExplainingMatcher,
    IMatcherFactory,
    Match,
    MatchResult,
)
from switchyard.matchers.reasons import preview, quote
from switchyard.options import Options
from switchyard.wire.text import printable

SSH_PREFIX = b"SSH-"
MAX_IDENTIFICATION = 255


@implementer(IExplainingMatcher)
class SSHMatcher:
    """Matches an SSH client's identification line."""

    def match(self, data: bytes, facts: Mapping[str, Any]) -> MatchResult:
        if not data.startswith(SSH_PREFIX):
            return NEED_MORE if SSH_PREFIX.startswith(data) else NO
        line_end = data.find(b"\n", 0, MAX_IDENTIFICATION)
        if line_end < 0:
            if len(data) < MAX_IDENTIFICATION:
                return NEED_MORE
            line = data[:MAX_IDENTIFICATION]
        else:
            line = data[:line_end]
        # The RFC wants CR LF but allows a bare LF from old software.
        banner = printable(line.removesuffix(b"\r"))
        return Match(facts={"banner": banner})

    def explain(self, data: bytes, facts: Mapping[str, Any]) -> str:
        result = self.match(data, facts)
        if isinstance(result, Match):
            return f"identification line {quote(result.facts['banner'])}"
        if result is NO:
            return f"does not start with 'SSH-': starts with {preview(data)}"
        if not data.startswith(SSH_PREFIX):
            return f"{preview(data)} may still become 'SSH-'"
        return (f"identification line incomplete: no line end in {len(data)} bytes (waiting "
                f"for one, or for {MAX_IDENTIFICATION} bytes)")


@implementer(IMatcherFactory)
class SSHMatcherFactory:
    """Builds the L{SSHMatcher}; it takes no options."""

    name = "ssh"
    description = "SSH client identification line (SSH-2.0-...)"

    def build(self, options: Mapping[str, Any]) -> SSHMatcher:
        Options(options, ())
        return SSHMatcher()
