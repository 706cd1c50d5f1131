"""Wire bytes shown as text for facts and logs."""

from __future__ import annotations

# Facts go to logs: keep Latin-1 text readable, escape what a terminal or a
# log parser would act on (C0/C1 controls, DEL, invisible spaces).
_ESCAPES = {i: f"\\x{i:02x}" for i in range(256) if not chr(i).isprintable()}


def printable(raw: bytes) -> str:
    """Bytes as fact text: Latin-1, non-printable characters as C{\\xNN}."""
    return raw.decode("latin-1").translate(_ESCAPES)
