"""Unmatched samples (samples_dir): which openings are kept, the limits, and a flood."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import attr
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from switchyard.config import ConfigError, compile_source
from switchyard.observe.explain import explain_opening
from switchyard.observe.samples import SampleStore, sample_name
from tests.daemon import log_after, run_twistd, start_switchyard, write_config
from tests.fakes import CapturedEvents
from tests.peers import free_port


@attr.s(auto_attribs=True)
class Opened:
    """What the store reads of a connection."""

    buffered: bytes


@attr.s(auto_attribs=True)
class Taken:
    """What the store reads of a route."""

    match: str
    name: str = "r"


def files(folder: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(folder) if name.endswith(".bin"))
    except FileNotFoundError:
        return []


def contents(folder: str) -> list[bytes]:
    out = []
    for name in files(folder):
        with open(os.path.join(folder, name), "rb") as f:
            out.append(f.read())
    return out


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.folder = os.path.abspath(self.mktemp())

    def store(self, **kw: Any) -> SampleStore:
        kw.setdefault("max_sniff_bytes", 100)
        return SampleStore(self.folder, "main", self.clock, **kw)

    def test_keepsWhatNoRouteWantedAndWhatOnlyAFallbackTook(self) -> None:
        store = self.store()
        for reason in ("no_route", "sniff_timeout", "client_closed", "denied", "over_limit"):
            store.sniffed(Opened(reason.encode()), None, reason)
        for match in ("any", "on_timeout", "tls", "http"):
            store.sniffed(Opened(match.encode()), Taken(match), "")
        self.assertEqual(sorted(contents(self.folder)),
                         [b"any", b"no_route", b"on_timeout", b"sniff_timeout"])
        outcomes = sorted(name.split("-")[2] for name in files(self.folder))
        self.assertEqual(outcomes, ["any", "no_route", "on_timeout", "sniff_timeout"])

    def test_nameTellsTimeListenerAndOutcome(self) -> None:
        name = sample_name(1_700_000_000.25, "my listener/1", "no_route", 7)
        self.assertRegex(name, r"^20231114T221320\.250000Z-my_listener_1-no_route-\d+-7\.bin$")

    def test_silentClientsAreNotSaved(self) -> None:
        store = self.store()
        store.sniffed(Opened(b""), None, "sniff_timeout")
        self.assertEqual(files(self.folder), [])

    def test_sampleIsCutToMaxSniffBytes(self) -> None:
        store = self.store(max_sniff_bytes=10)
        store.sniffed(Opened(b"x" * 50), None, "no_route")
        self.assertEqual(contents(self.folder), [b"x" * 10])

    def test_oldestRemovedFirstBeyondTheFileCount(self) -> None:
        store = self.store(max_files=3)
        for i in range(7):
            store.save(b"sample %d" % i, "no_route")
        self.assertEqual(contents(self.folder), [b"sample 4", b"sample 5", b"sample 6"])

    def test_oldestRemovedFirstBeyondTheBytes(self) -> None:
        store = self.store(max_bytes=25)
        for i in range(5):
            store.save(b"ten bytes%d" % i, "no_route")
        self.assertEqual(contents(self.folder), [b"ten bytes3", b"ten bytes4"])

    def test_otherFilesInTheFolderAreLeftAlone(self) -> None:
        os.makedirs(self.folder)
        with open(os.path.join(self.folder, "README.txt"), "w") as f:
            f.write("mine")
        store = self.store(max_files=1)
        store.save(b"a", "no_route")
        store.save(b"b", "no_route")
        self.assertIn("README.txt", os.listdir(self.folder))
        self.assertEqual(contents(self.folder), [b"b"])

    def test_rateIsATokenBucketPerMinute(self) -> None:
        store = self.store(per_minute=6, max_files=1000)
        saved = [store.save(b"burst", "no_route") for _ in range(10)]
        self.assertEqual(sum(path is not None for path in saved), 6)
        self.assertEqual(store.dropped, 4)
        self.clock.advance(10)  # one token back (6 a minute)
        self.assertIsNotNone(store.save(b"later", "no_route"))
        self.assertIsNone(store.save(b"too soon", "no_route"))
        self.clock.advance(600)  # never more than a minute's worth
        saved = [store.save(b"again", "no_route") for _ in range(10)]
        self.assertEqual(sum(path is not None for path in saved), 6)

    def test_dropsAreLoggedAtMostOnceAMinute(self) -> None:
        events = CapturedEvents(self, "switchyard.samples")
        store = self.store(per_minute=1)
        for _ in range(50):
            store.save(b"x", "no_route")
        warnings = [e for e in events.events if "not saved" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.clock.advance(61)
        for _ in range(3):
            store.save(b"x", "no_route")
        warnings = [e for e in events.events if "not saved" in e["log_format"]]
        self.assertEqual(len(warnings), 2)

    def test_unwritableFolderIsLoggedAndNeverRaises(self) -> None:
        events = CapturedEvents(self, "switchyard.samples")
        os.makedirs(self.folder)
        blocker = os.path.join(self.folder, "file")
        with open(blocker, "w") as f:
            f.write("not a folder")
        store = SampleStore(os.path.join(blocker, "samples"), "main", self.clock,
                            max_sniff_bytes=10)
        for _ in range(5):
            self.assertIsNone(store.save(b"x", "no_route"))
        self.assertEqual(store.failed, 5)
        self.assertEqual(len([e for e in events.events if "cannot save" in e["log_format"]]), 1)


CONFIG = """
[listener.main]
listen = "127.0.0.1:{port}"
samples_dir = "{folder}"
{extra}

[[listener.main.route]]
match = "tls"
to = "reject"
"""


def compile_text(text: str) -> Any:
    return compile_source(text.encode(), reactor)


class SettingsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())

    def config(self, extra: str = "", folder: str | None = None) -> str:
        return CONFIG.format(port=free_port(), folder=folder or self.folder, extra=extra)

    def test_samplesDirGivesTheListenerAStore(self) -> None:
        listener = compile_text(self.config('samples_max_files = 7\nsamples_per_minute = 3'
                                            '\nsamples_max_bytes = 999')).listeners[0]
        store = listener.openings
        self.assertIsInstance(store, SampleStore)
        self.assertEqual((store.folder, store.max_files, store.per_minute, store.max_bytes),
                         (self.folder, 7, 3, 999))
        self.assertFalse(os.path.exists(self.folder))  # made at the first sample, not before

    def test_offByDefault(self) -> None:
        text = self.config().replace(f'samples_dir = "{self.folder}"', "")
        self.assertIsNone(compile_text(text).listeners[0].openings)

    def test_limitsWithoutFolderAreAnError(self) -> None:
        text = self.config("samples_max_files = 3").replace(f'samples_dir = "{self.folder}"', "")
        with self.assertRaises(ConfigError) as caught:
            compile_text(text)
        self.assertEqual(str(caught.exception),
                         "listener.main.samples_max_files: has no effect without samples_dir")

    def test_folderWhoseParentIsMissing(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            compile_text(self.config(folder="/nonexistent/samples"))
        self.assertEqual(str(caught.exception), "listener.main.samples_dir: cannot create "
                         "'/nonexistent/samples': the folder '/nonexistent' does not exist")

    def test_badLimit(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            compile_text(self.config("samples_per_minute = 0"))
        self.assertIn("listener.main.samples_per_minute: must be between 1", str(caught.exception))

    def test_checkPrintsTheStoreAndCreatesNothing(self) -> None:
        out = run_twistd("switchyard", "--check", "--config", write_config(self, self.config()))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"samples: {self.folder} (at most 1000 files, 16777216 bytes, 60 a "
                      "minute)", out.stdout)
        self.assertFalse(os.path.exists(self.folder))


FLOOD = """
[listener.strict]
listen = "127.0.0.1:{strict}"
max_sniff_bytes = 200
samples_dir = "{strict_dir}"
samples_max_files = 5
samples_max_bytes = 700
samples_per_minute = 100000

[[listener.strict.route]]
match = "tls"
to = "reject"

[listener.open]
listen = "127.0.0.1:{open}"
samples_dir = "{open_dir}"
samples_per_minute = 5

[[listener.open.route]]
match = "ssh"
to = "reject"

[[listener.open.route]]
name = "catch-all"
match = "any"
to = "echo"
"""


def junk(i: int, size: int) -> bytes:
    return (b"junk %04d " % i).ljust(size, b"#")


def send_and_wait_close(port: int, data: bytes) -> None:
    """Send ``data``, end the stream, read until switchyard closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


class FloodTests(unittest.TestCase):
    """A flood of junk connections through the real twistd: the limits hold."""

    timeout = 120

    def test_limitsHoldUnderAFloodOfJunk(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        strict_dir, open_dir = os.path.join(folder, "strict"), os.path.join(folder, "open")
        strict, open_port = free_port(), free_port()
        running = start_switchyard(self, FLOOD.format(strict=strict, strict_dir=strict_dir,
                                                      open=open_port, open_dir=open_dir), strict)
        self.addCleanup(running.stop)
        sent = [junk(i, 300) for i in range(60)]
        for data in sent:
            send_and_wait_close(strict, data)
        started = time.monotonic()
        for i in range(40):
            send_and_wait_close(open_port, junk(i, 50))
        elapsed = time.monotonic() - started
        # Count and bytes: what is left is the newest, cut to max_sniff_bytes.
        kept = contents(strict_dir)
        self.assertTrue(1 <= len(kept) <= 5, files(strict_dir))
        self.assertLessEqual(sum(map(len, kept)), 700)
        self.assertEqual(kept[-1], sent[-1][:200])
        self.assertTrue(all(sample in {s[:200] for s in sent} for sample in kept))
        self.assertTrue(all("-strict-no_route-" in name for name in files(strict_dir)))
        # Rate: a full bucket of 5, then 5 a minute, whatever the flood.
        taken = files(open_dir)
        self.assertGreaterEqual(len(taken), 5)
        self.assertLessEqual(len(taken), 5 + int(elapsed * 5 / 60) + 1)
        self.assertTrue(all("-open-any-" in name for name in taken))
        self.assertIn("not saved (samples_per_minute = 5)",
                      log_after(running, "not saved (samples_per_minute"))

    def test_aSavedSampleIsReadyForExplain(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        strict, open_port = free_port(), free_port()
        text = FLOOD.format(strict=strict, strict_dir=os.path.join(folder, "strict"),
                            open=open_port, open_dir=os.path.join(folder, "open"))
        running = start_switchyard(self, text, strict)
        self.addCleanup(running.stop)
        send_and_wait_close(strict, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (name,) = files(os.path.join(folder, "strict"))
        path = os.path.join(folder, "strict", name)
        config = write_config(self, text)
        out = run_twistd("switchyard", "--config", config, "--explain", path, "--closed")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("decision: closed (no_route): no route matched the first 27 bytes",
                      out.stdout)
        with open(path, "rb") as f:
            data = f.read()
        strict_listener = compile_text(text).listeners[0]
        self.assertEqual(explain_opening(strict_listener, data, closed=True).outcome,
                         "no_route")
