"""The third-party plugin example of docs/writing-matchers.md, used the way its readers will:
found by Twisted's plugin finder from a folder on PYTHONPATH, fed what a real SOCKS5 client
(curl) sends, and routing through the real `twistd -n switchyard`."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from switchyard.interfaces import (
    NEED_MORE,
    NO,
    IMatcher,
    IMatcherFactory,
    Match,
    MatcherConfigError,
)
from tests.daemon import REPO, TWISTD, log_after, run_twistd, write_config
from tests.peers import Running, free_port, start_process

DEMO = os.path.join(REPO, "docs", "examples", "plugin-demo")
PLUGIN_DIR = os.path.join(DEMO, "twisted", "plugins")
PLUGIN_FILE = os.path.join(PLUGIN_DIR, "switchyard_socks5.py")
DROPIN_CACHE = os.path.join(PLUGIN_DIR, "dropin.cache")
BUILTINS = {"tls", "http", "h2c", "ssh", "any", "regex"}

CONFIG = """
[listener.public]
listen = "127.0.0.1:{port}"
inspect_timeout = 3

[[listener.public.route]]
match = "socks5"
to = "echo"

[[listener.public.route]]
match = "any"
to = "reject"
"""


def _load_example() -> ModuleType:
    """The example module, loaded by file path: sys.path and twisted.plugins stay untouched."""
    spec = importlib.util.spec_from_file_location("switchyard_socks5_example", PLUGIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


def matcher(**options: object) -> IMatcher:
    return example.socks5.build(options)


def demo_env() -> dict[str, str]:
    """PYTHONPATH with the plugin folder and this checkout, as a user would set it."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([DEMO, REPO] + ([path] if path else []))}


def forget_dropin_cache(testcase: TestCase) -> None:
    """Scans write dropin.cache into the demo folder: keep the checkout clean."""

    def remove() -> None:
        try:
            os.remove(DROPIN_CACHE)
        except FileNotFoundError:
            pass

    remove()
    testcase.addCleanup(remove)


def curl_greeting() -> bytes:
    """What curl sends first to a SOCKS5 proxy, read by a plain blocking listener."""
    received = bytearray()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(10)
        port = server.getsockname()[1]

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                # The greeting is complete at 2 + NMETHODS bytes; curl then waits for us.
                while len(received) < 2 or len(received) < 2 + received[1]:
                    chunk = conn.recv(512)
                    if not chunk:
                        break
                    received.extend(chunk)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        subprocess.run(["curl", "-sS", "--socks5", f"127.0.0.1:{port}",
                        "http://example.invalid/", "--max-time", "3"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        thread.join(10)
    return bytes(received)


# A greeting recorded once per run, from the real client.
_CURL: list[bytes] = []


def real_greeting() -> bytes:
    if not _CURL:
        _CURL.append(curl_greeting())
    return _CURL[0]


greetings = st.lists(st.integers(0, 255), min_size=1, max_size=255).map(
    lambda methods: bytes([5, len(methods), *methods]))


class DiscoveryTests(TestCase):
    """Twisted's plugin finder lists the example next to the built-ins."""

    def setUp(self) -> None:
        forget_dropin_cache(self)

    def test_getPluginsFindsSocks5FromPythonpath(self) -> None:
        script = ("import twisted.plugins\n"
                  "from twisted.plugin import getPlugins\n"
                  "from switchyard.interfaces import IMatcherFactory\n"
                  "for f in getPlugins(IMatcherFactory, twisted.plugins):\n"
                  "    where = getattr(f, 'function', f)  # simple_matcher keeps the function\n"
                  "    print('plugin', f.name, where.__module__ if where is not f\n"
                  "          else type(f).__module__)\n")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, env={**os.environ, **demo_env()}, cwd=DEMO,
                             stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 0, out.stderr)
        found = {}
        for line in out.stdout.splitlines():
            tag, name, module = line.split()
            self.assertEqual(tag, "plugin")
            found[name] = module
        self.assertEqual(found.get("socks5"), "twisted.plugins.switchyard_socks5", out.stdout)
        self.assertLessEqual(BUILTINS, set(found), out.stdout)

    def test_checkWithPluginOnPathIsOK(self) -> None:
        config = write_config(self, CONFIG.replace("{port}", str(free_port())))
        out = subprocess.run([*TWISTD, "switchyard", "--check", "--config", config],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, **demo_env()}, cwd=REPO,
                             stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("route socks5: match socks5 -> echo", out.stdout)
        self.assertIn("config OK", out.stdout)

    def test_checkWithoutPluginNamesTheKey(self) -> None:
        config = write_config(self, CONFIG.replace("{port}", str(free_port())))
        out = run_twistd("switchyard", "--check", "--config", config)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("listener.public.route[0].match", out.stderr)
        self.assertIn("unknown matcher 'socks5'", out.stderr)


class FactoryTests(TestCase):
    def test_providesTheInterfaces(self) -> None:
        self.assertTrue(verifyObject(IMatcherFactory, example.socks5))
        self.assertEqual(example.socks5.name, "socks5")
        self.assertTrue(verifyObject(IMatcher, matcher()))

    def test_unknownOptionIsAConfigError(self) -> None:
        error = self.assertRaises(MatcherConfigError, matcher, require_noauth=True)
        self.assertEqual(error.key, "require_noauth")
        self.assertIn("require_no_auth", error.problem)

    def test_requireNoAuthMustBeABoolean(self) -> None:
        error = self.assertRaises(MatcherConfigError, matcher, require_no_auth="yes")
        self.assertEqual(error.key, "require_no_auth")


class MatcherTests(TestCase):
    """The example against curl's real greeting and hand-made near misses."""

    def test_curlGreetingMatches(self) -> None:
        data = real_greeting()
        self.assertEqual(data[:1], b"\x05", data)
        self.assertEqual(len(data), 2 + data[1], data)
        result = matcher().match(data, {})
        self.assertEqual(result, Match(facts={"socks_methods": list(data[2:])}))
        assert isinstance(result, Match)
        self.assertIn(0, result.facts["socks_methods"])

    def test_curlGreetingOneByteAtATime(self) -> None:
        data = real_greeting()
        for m in (matcher(), matcher(require_no_auth=True)):
            for cut in range(len(data)):
                self.assertIs(m.match(data[:cut], {}), NEED_MORE, data[:cut])
            self.assertIsInstance(m.match(data, {}), Match)

    def test_requireNoAuth(self) -> None:
        strict = matcher(require_no_auth=True)
        self.assertEqual(strict.match(b"\x05\x02\x00\x02", {}),
                         Match(facts={"socks_methods": [0, 2]}))
        self.assertIs(strict.match(b"\x05\x01\x02", {}), NO)
        self.assertEqual(matcher().match(b"\x05\x01\x02", {}),
                         Match(facts={"socks_methods": [2]}))

    def test_notSocks5(self) -> None:
        m = matcher()
        for data in [b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",  # SOCKS4 CONNECT
                     b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01", b"SSH-2.0-x\r\n",
                     b"\x05\x00",  # NMETHODS = 0
                     b"\x05\x01\x00\x05\x01\x00",  # more than the greeting
                     b"\x05\x01\x00extra"]:
            self.assertIs(m.match(data, {}), NO, data)

    def test_emptyAndShortNeedMore(self) -> None:
        m = matcher()
        for data in [b"", b"\x05", b"\x05\x03", b"\x05\x03\x00\x01"]:
            self.assertIs(m.match(data, {}), NEED_MORE, data)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=300), greetings.map(lambda g: g + b"\x00"),
                     greetings.flatmap(lambda g: st.integers(0, len(g)).map(lambda n: g[:n]))),
           st.booleans())
    def test_neverRaises(self, data: bytes, strict: bool) -> None:
        result = matcher(require_no_auth=strict).match(data, {})
        self.assertIn(type(result), (Match, type(NO)))

    @settings(max_examples=200, deadline=None)
    @given(greetings)
    def test_everyGreetingMatchesAndItsPrefixesNeedMore(self, data: bytes) -> None:
        m = matcher()
        self.assertEqual(m.match(data, {}), Match(facts={"socks_methods": list(data[2:])}))
        for cut in range(len(data)):
            self.assertIs(m.match(data[:cut], {}), NEED_MORE)


def start_with_plugin(testcase: TestCase, config_text: str, port: int) -> Running:
    """L{tests.daemon.start_switchyard}, with the demo folder on PYTHONPATH too."""
    config = write_config(testcase, config_text)
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    logfile = os.path.join(workdir, "twistd.log")
    argv = [*TWISTD, "-n", "--pidfile=", "--logfile", logfile, "switchyard", "--config", config]
    return start_process(testcase, argv, port, workdir, env=demo_env(), log_files=[logfile])


class EndToEndTests(TestCase):
    """curl through the real twistd, routed by the plugin found on PYTHONPATH."""

    timeout = 120

    def setUp(self) -> None:
        forget_dropin_cache(self)
        self.port = free_port()
        self.switchyard = start_with_plugin(self, CONFIG.replace("{port}", str(self.port)),
                                            self.port)

    def log_waiting_for(self, text: str) -> str:
        return log_after(self.switchyard, text)

    def test_curlSocks5ReachesTheSocks5Route(self) -> None:
        # echo answers curl's greeting with itself: curl reads "method 0x02"
        # (user/password) it has no password for, and gives up. The route is what counts.
        subprocess.run(["curl", "-sS", "--socks5", f"127.0.0.1:{self.port}",
                        "http://example.invalid/", "--max-time", "3"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        log = self.log_waiting_for("public/socks5")
        self.assertRegex(log, r"public/socks5 -> echo facts\[socks_methods=[0-9,]+\]")
        self.assertIn("socks_methods=", log)

    def test_plainHttpEndsAtTheAnyRoute(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            self.assertEqual(s.recv(100), b"")  # reject closes at once
        log = self.log_waiting_for("public/any")
        self.assertRegex(log, r"public/any -> reject .*close=rejected")
        self.assertNotIn("public/socks5", log)
