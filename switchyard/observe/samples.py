"""Unmatched samples: openings no route wanted, saved to a folder for C{switchyard explain}.

A listener with ``samples_dir`` keeps the opening of each connection that
ended in ``no_route`` or ``sniff_timeout``, that went to ``on_timeout``, or
that only the catch-all (``match = "any"``) took: at most
``max_sniff_bytes`` each, at most ``samples_per_minute`` (a token bucket,
per process), at most ``samples_max_files`` files and ``samples_max_bytes``
bytes in the folder, the oldest removed first. Each is one file of raw
bytes named for its time, listener and outcome::

    20260301T101500.123456Z-main-no_route-4242-1.bin

Saving never fails a connection: a folder that cannot be written is logged,
at most once a minute.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from switchyard.interfaces import OptionError
from switchyard.options import Options

SAMPLE_KEYS = ("samples_dir", "samples_max_files", "samples_max_bytes", "samples_per_minute")
DEFAULT_MAX_FILES = 1000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_PER_MINUTE = 60
# Outcomes of the end of sniffing that make a sample; a route taking the
# connection makes one only if it is the catch-all (or on_timeout's).
KEPT_REASONS = frozenset({"no_route", "sniff_timeout"})
KEPT_MATCHERS = {"any": "any", "on_timeout": "on_timeout"}
# One warning a minute at most, whatever goes wrong how often.
COMPLAIN_INTERVAL = 60.0
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

log = Logger(namespace="switchyard.samples")


def sample_name(when: float, listener: str, outcome: str, serial: int) -> str:
    """The file name of a sample: sortable by time, then the listener and the outcome."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    micros = int(round((when % 1) * 1_000_000)) % 1_000_000
    return (f"{stamp}.{micros:06d}Z-{_NAME_UNSAFE.sub('_', listener)}-{outcome}"
            f"-{os.getpid()}-{serial}.bin")


def _is_sample(name: str) -> bool:
    return name.endswith(".bin") and name[:8].isdigit()


class SampleStore:
    """
    The samples of one listener: the ``openings`` observer of its
    L{switchyard.config.Listener}, told by the connection when sniffing ends.
    """

    def __init__(self, folder: str, listener: str, reactor: Any, *, max_sniff_bytes: int,
                 max_files: int = DEFAULT_MAX_FILES, max_bytes: int = DEFAULT_MAX_BYTES,
                 per_minute: int = DEFAULT_PER_MINUTE) -> None:
        self.folder = folder
        self.listener = listener
        self.reactor = reactor
        self.max_sample = min(max_sniff_bytes, max_bytes)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.per_minute = per_minute
        self.tokens = float(per_minute)
        self._filled_at: float | None = None
        self.saved = 0
        self.dropped = 0  # refused by the rate limit
        self.failed = 0  # the folder could not be written
        self._serial = 0
        self._complained_at = -COMPLAIN_INTERVAL
        self._unsaid = 0  # drops not logged yet

    @classmethod
    def compile(cls, table: Mapping[str, Any], listener: str, reactor: Any,
                max_sniff_bytes: int) -> SampleStore | None:
        """A store from a listener's table (its L{SAMPLE_KEYS}), or None when
        it has no ``samples_dir``; raise L{OptionError}. Creates nothing."""
        options = Options({k: v for k, v in table.items() if k in SAMPLE_KEYS}, SAMPLE_KEYS)
        folder = options.text("samples_dir")
        if folder is None:
            for key in SAMPLE_KEYS[1:]:
                if key in options:
                    raise OptionError(key, "has no effect without samples_dir")
            return None
        problem = cls.check(folder)
        if problem:
            raise OptionError("samples_dir", problem)
        return cls(
            os.path.abspath(folder), listener, reactor, max_sniff_bytes=max_sniff_bytes,
            max_files=options.integer("samples_max_files", DEFAULT_MAX_FILES, minimum=1,
                                      maximum=1_000_000),
            max_bytes=options.integer("samples_max_bytes", DEFAULT_MAX_BYTES, minimum=1,
                                      maximum=1 << 40),
            per_minute=options.integer("samples_per_minute", DEFAULT_PER_MINUTE, minimum=1,
                                       maximum=1_000_000))

    @staticmethod
    def check(folder: str) -> str | None:
        """Why ``folder`` cannot hold samples, or None; creates nothing."""
        if not folder:
            return "must not be empty"
        if os.path.exists(folder):
            return None if os.path.isdir(folder) else f"{folder!r} is not a folder"
        parent = os.path.dirname(os.path.abspath(folder))
        if not os.path.isdir(parent):
            return f"cannot create {folder!r}: the folder {parent!r} does not exist"
        return None

    # -- the hook ----------------------------------------------------------

    def sniffed(self, connection: Any, route: Any, reason: str) -> None:
        """Sniffing ended: ``route`` took the connection, or (None) it is closing
        for ``reason``. Keeps the opening if nothing but a fallback wanted it."""
        if route is None:
            if reason not in KEPT_REASONS:
                return
            outcome = reason
        else:
            kept = KEPT_MATCHERS.get(route.match)
            if kept is None:
                return
            outcome = kept
        self.save(connection.buffered, outcome)

    def save(self, data: bytes, outcome: str) -> str | None:
        """Save ``data`` (cut to the sample size) unless the rate limit says
        no; the file's path, or None."""
        if not data:
            return None  # a silent client: nothing to explain
        now = self.reactor.seconds()
        if not self._take_token(now):
            self.dropped += 1
            self._unsaid += 1
            self._complain(now, "samples: {n} openings of listener {listener} not saved "
                                "(samples_per_minute = {rate})", n=self._unsaid,
                           listener=self.listener, rate=self.per_minute)
            return None
        self._serial += 1
        path = os.path.join(self.folder, sample_name(time.time(), self.listener, outcome,
                                                     self._serial))
        try:
            if self.saved == 0 and self.failed == 0:
                log.info("samples: saving the unmatched openings of listener {listener} "
                         "in {folder}", listener=self.listener, folder=self.folder)
            os.makedirs(self.folder, exist_ok=True)
            with open(path, "xb") as f:
                f.write(data[:self.max_sample])
            self._prune(os.path.basename(path))
        except OSError as e:
            self.failed += 1
            self._complain(now, "samples: cannot save in {folder}: {error}",
                           folder=self.folder, error=e.strerror or str(e))
            return None
        self.saved += 1
        return path

    def _take_token(self, now: float) -> bool:
        if self._filled_at is not None:
            elapsed = max(0.0, now - self._filled_at)
            self.tokens = min(float(self.per_minute),
                              self.tokens + elapsed * self.per_minute / 60.0)
        self._filled_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def _prune(self, newest: str) -> None:
        """Remove the oldest samples until the folder is within its limits
        (every process sharing the folder counts what is there)."""
        with os.scandir(self.folder) as entries:
            found = sorted((entry.name, entry.stat().st_size) for entry in entries
                           if _is_sample(entry.name) and entry.is_file())
        count, total = len(found), sum(size for _, size in found)
        for name, size in found:
            if count <= self.max_files and total <= self.max_bytes:
                break
            if name == newest:
                continue
            try:
                os.unlink(os.path.join(self.folder, name))
            except FileNotFoundError:
                pass  # another worker removed it first
            count, total = count - 1, total - size

    def _complain(self, now: float, message: str, **fields: Any) -> None:
        if now - self._complained_at < COMPLAIN_INTERVAL:
            return
        self._complained_at = now
        log.warn(message, **fields)
        self._unsaid = 0
