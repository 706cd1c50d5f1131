"""Configs: examples stay valid; every mistake is named before anything listens."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import tomllib
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from switchyard.config import ConfigError, compile_config, load
from tests.daemon import REPO, run_twistd, write_config
from tests.peers import free_port

GOOD = """
[listener.main]
listen = "127.0.0.1:{port}"

[[listener.main.route]]
match = "tls"
sni = "*.example.com"
to = "web"

[[listener.main.route]]
match = "any"
to = "echo"

[backend.web]
servers = ["127.0.0.1:8443"]
"""


def compile_text(text: str) -> Any:
    return compile_config(tomllib.loads(text), reactor)


class ExampleConfigTests(unittest.TestCase):
    def test_everyExampleCompiles(self) -> None:
        paths = sorted(glob.glob(os.path.join(REPO, "examples", "*.toml")))
        self.assertGreaterEqual(len(paths), 2)
        for path in paths:
            config = load(path, reactor)
            # Every example does some work: a listener, or a target that
            # works without one (a tunnel agent).
            self.assertTrue(config.listeners or any(
                getattr(t, "standalone", False) for t in config.targets.values()), path)

    def test_onlyAStandaloneTargetMakesAListenerOptional(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            compile_config({"backend": {"b": {"servers": ["127.0.0.1:1"], "check": True}}},
                           reactor)
        self.assertEqual(caught.exception.key, "listener")

    def test_shareExampleHasTheRoutesItPromises(self) -> None:
        config = load(os.path.join(REPO, "examples", "share-443.toml"), reactor)
        [public] = config.listeners
        self.assertEqual([r.name for r in public.routes],
                         ["https", "https-no-sni", "ssh", "api", "web", "default"])
        self.assertEqual(public.on_timeout.target.name, "sshd")
        self.assertEqual(config.targets["nginx_https"].proxy_protocol, "v2")


class ConfigErrorTests(unittest.TestCase):
    """Each bad config raises ConfigError naming the key and the problem."""

    def assertConfigError(self, text: str, key: str, problem: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            compile_text(text)
        self.assertEqual(caught.exception.key, key)
        self.assertIn(problem, caught.exception.problem)

    def test_defaultsApplied(self) -> None:
        [listener] = compile_text(GOOD.format(port=1)).listeners
        self.assertEqual((listener.inspect_timeout, listener.max_sniff_bytes), (5.0, 16384))
        self.assertEqual([r.name for r in listener.routes], ["tls", "any"])

    def test_unknownTopLevelKey(self) -> None:
        self.assertConfigError(GOOD.format(port=1) + "\n[listeners.x]\n", "listeners",
                               "unknown option")

    def test_unknownListenerKey(self) -> None:
        text = GOOD.format(port=1).replace('listen = ', 'inspect_delay = 3\nlisten = ')
        self.assertConfigError(text, "listener.main.inspect_delay", "unknown option")

    def test_unknownMatcherOption(self) -> None:
        text = GOOD.format(port=1).replace('sni = ', 'snii = ')
        self.assertConfigError(text, "listener.main.route[0].snii", "unknown")

    def test_unknownMatcherName(self) -> None:
        text = GOOD.format(port=1).replace('match = "any"', 'match = "telnet"')
        self.assertConfigError(text, "listener.main.route[1].match", "unknown matcher 'telnet'")

    def test_unknownBackendName(self) -> None:
        text = GOOD.format(port=1).replace('to = "web"', 'to = "webb"')
        self.assertConfigError(text, "listener.main.route[0].to", "unknown backend 'webb'")

    def test_badServerEndpointString(self) -> None:
        text = GOOD.format(port=1).replace('"127.0.0.1:8443"', '"tcp:host=x:port=notaport"')
        self.assertConfigError(text, "backend.web.servers[0]", "bad endpoint")

    def test_badListenEndpointString(self) -> None:
        text = GOOD.format(port=1).replace('"127.0.0.1:1"', '"carrier-pigeon:9"')
        self.assertConfigError(text, "listener.main.listen", "bad listen endpoint")

    def test_badRegex(self) -> None:
        text = GOOD.format(port=1).replace('sni = "*.example.com"', 'sni = "~(unclosed"')
        self.assertConfigError(text, "listener.main.route[0].sni", "regex")

    def test_badRegexMatcherPattern(self) -> None:
        text = GOOD.format(port=1).replace('match = "any"', 'match = "regex"\npattern = "[z-a]"')
        self.assertConfigError(text, "listener.main.route[1].pattern", "")

    def test_badProxyProtocolVersion(self) -> None:
        text = GOOD.format(port=1) + 'proxy_protocol = "v3"\n'
        self.assertConfigError(text, "backend.web.proxy_protocol", "'none', 'v1', 'v2'")

    def test_nonPositiveTimeout(self) -> None:
        text = GOOD.format(port=1).replace('listen = ', 'inspect_timeout = 0\nlisten = ')
        self.assertConfigError(text, "listener.main.inspect_timeout", "greater than 0")

    def test_duplicateRouteName(self) -> None:
        text = GOOD.format(port=1).replace('match = "any"', 'name = "x"\nmatch = "any"')
        text = text.replace('match = "tls"', 'name = "x"\nmatch = "tls"')
        self.assertConfigError(text, "listener.main.route[1].name", "used twice")

    def test_listenerWithoutRoutes(self) -> None:
        self.assertConfigError('[listener.a]\nlisten = "tcp:1"\n', "listener.a.route",
                               "at least one")

    def test_unknownOnTimeoutTarget(self) -> None:
        text = GOOD.format(port=1).replace('listen = ', 'on_timeout = "smtp"\nlisten = ')
        self.assertConfigError(text, "listener.main.on_timeout", "unknown backend 'smtp'")

    def test_backendNamedLikeBuiltin(self) -> None:
        text = GOOD.format(port=1) + '[backend.echo]\nservers = ["127.0.0.1:7"]\n'
        self.assertConfigError(text, "backend.echo", "built-in")

    def test_responderTableNeedsAKnownKind(self) -> None:
        text = GOOD.format(port=1) + '[responder.deny]\nkind = "teapot"\n'
        self.assertConfigError(text, "responder.deny.kind", "must be one of echo, reject")

    def test_responderOptionsAreChecked(self) -> None:
        text = GOOD.format(port=1) + '[responder.deny]\nkind = "reject"\nreplay = "x"\n'
        self.assertConfigError(text, "responder.deny.replay", "unknown option")

    def test_responderTableIsATarget(self) -> None:
        text = GOOD.format(port=1).replace('to = "echo"', 'to = "deny"')
        config = compile_text(text + '[responder.deny]\nkind = "reject"\nreply = "no\\n"\n')
        target = config.listeners[0].routes[1].target
        self.assertEqual((target.name, target.reply), ("deny", b"no\n"))

    def test_missingFile(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load("/nonexistent/switchyard.toml", reactor)
        self.assertIn("does not exist", str(caught.exception))

    def test_invalidToml(self) -> None:
        path = write_config(self, "[listener.a\n")
        with self.assertRaises(ConfigError) as caught:
            load(path, reactor)
        self.assertIn("not valid TOML", str(caught.exception))


class AccessRuleConfigTests(unittest.TestCase):
    """A route's ``allow`` and ``deny`` keys, compiled into the rule the connection asks."""

    def route(self, rules: str) -> Any:
        text = GOOD.format(port=1).replace('match = "any"', f'match = "any"\n{rules}')
        return compile_text(text).listeners[0].routes[1]

    def test_denyRefusesItsNetworksOnly(self) -> None:
        admits = self.route('deny = ["127.0.0.2", "10.0.0.0/8"]').admits
        self.assertEqual([admits(h) for h in ("127.0.0.2", "10.9.8.7", "::ffff:127.0.0.2")],
                         [False, False, False])
        self.assertEqual([admits(h) for h in ("127.0.0.1", "127.0.0.3", "::1")],
                         [True, True, True])

    def test_denyWinsOverAllow(self) -> None:
        admits = self.route('allow = ["127.0.0.0/8"]\ndeny = ["127.0.0.2"]').admits
        self.assertEqual([admits(h) for h in ("127.0.0.1", "127.0.0.2", "10.0.0.1")],
                         [True, False, False])

    def test_noRuleAdmitsEveryone(self) -> None:
        self.assertIsNone(self.route("").admits)

    def test_badNetworkNamesTheKey(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.route('deny = ["127.0.0.2", "nope"]')
        self.assertEqual(caught.exception.key, "listener.main.route[1].deny")
        self.assertIn("'nope' is not an IP network", caught.exception.problem)


class CommandLineTests(unittest.TestCase):
    """What a user sees from twistd itself."""

    timeout = 120

    def test_twistdListsSwitchyard(self) -> None:
        out = run_twistd("--help")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"switchyard\s+One TCP port, many protocols")

    def test_switchyardHelpDocumentsEveryOption(self) -> None:
        out = run_twistd("switchyard", "--help")
        self.assertEqual(out.returncode, 0, out.stderr)
        for option in ("--config=", "--check", "Validate the config"):
            self.assertIn(option, out.stdout)

    def test_checkAcceptsGoodConfigAndSummarises(self) -> None:
        path = write_config(self, GOOD.format(port=free_port()))
        out = run_twistd("switchyard", "--check", "--config", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("route tls: match tls -> web", out.stdout)
        self.assertIn("config OK", out.stdout)

    def test_checkRejectsBadConfigNamingKey(self) -> None:
        path = write_config(self, GOOD.format(port=1).replace('to = "web"', 'to = "nope"'))
        out = run_twistd("switchyard", "--check", "--config", path)
        self.assertEqual(out.returncode, 1)
        self.assertIn("listener.main.route[0].to: unknown backend 'nope'", out.stderr)
        self.assertNotIn("Traceback", out.stderr + out.stdout)

    def test_badConfigExitsBeforeListening(self) -> None:
        port = free_port()
        text = GOOD.format(port=port).replace('sni = "*.example.com"', 'sni = "~("')
        path = write_config(self, text)
        out = run_twistd("-n", "--pidfile=", "switchyard", "--config", path)
        self.assertEqual(out.returncode, 1)
        self.assertIn("listener.main.route[0].sni", out.stderr)
        self.assertNotIn("Traceback", out.stderr + out.stdout)
        # Nothing was left listening on the port.
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", port)), 0)

    def test_missingConfigFileIsNamed(self) -> None:
        out = run_twistd("switchyard", "--check", "--config", "/nonexistent/x.toml")
        self.assertEqual(out.returncode, 1)
        self.assertIn("/nonexistent/x.toml", out.stderr)
        self.assertIn("does not exist", out.stderr)

    def test_portInUseExitsNonZero(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            path = write_config(self, GOOD.format(port=busy.getsockname()[1]))
            out = run_twistd("-n", "--pidfile=", "switchyard", "--config", path, timeout=30)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("Address already in use", out.stdout + out.stderr)


class ListenBacklogTests(unittest.TestCase):
    """The short ``listen`` forms get a deep accept queue, not Twisted's 50."""

    async def _listen_and_read_backlog(self, listen: str, port: int) -> int:
        from twisted.internet.protocol import Factory

        config = compile_text(GOOD.format(port=port).replace(f'"127.0.0.1:{port}"',
                                                             f'"{listen}"'))
        listening = await config.listeners[0].endpoint.listen(Factory())
        try:
            # ss shows a listening socket's accept-queue limit as Send-Q.
            out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                                 text=True, check=True).stdout.split()
            return int(out[2])
        finally:
            await listening.stopListening()

    def test_shortFormsListenWithTheDefaultBacklog(self) -> Any:
        from twisted.internet.defer import Deferred

        from switchyard.endpoints import BACKLOG

        with open("/proc/sys/net/core/somaxconn") as f:
            expected = min(BACKLOG, int(f.read()))

        async def check() -> None:
            for form in ("127.0.0.1:{port}", "{port}"):
                port = free_port()
                got = await self._listen_and_read_backlog(form.format(port=port), port)
                self.assertEqual(got, expected, form)
            # An endpoint string written out is taken as it is.
            port = free_port()
            got = await self._listen_and_read_backlog(
                f"tcp:{port}:interface=127.0.0.1:backlog=7", port)
            self.assertEqual(got, 7)

        return Deferred.fromCoroutine(check())
