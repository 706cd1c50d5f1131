"""The strict --check: each route's conditions, unreachable routes, and every error in words."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.trial import unittest

from tests.daemon import REPO, env, run_twistd, write_config
from tests.peers import free_port, make_ca

SWITCHYARD = [sys.executable, "-m", "switchyard"]

BASE = """
[backend.web]
servers = ["127.0.0.1:8080"]

[listener.main]
listen = "127.0.0.1:{port}"
"""


def routes(*tables: str) -> str:
    return BASE.format(port=free_port()) + "".join(
        f"\n[[listener.main.route]]\n{table.strip()}\n" for table in tables)


def switchyard(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``switchyard`` command, as installed, from this checkout."""
    return subprocess.run([*SWITCHYARD, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env()}, cwd=REPO, stdin=subprocess.DEVNULL)


class CheckTests(unittest.TestCase):
    timeout = 120

    def check(self, text: str) -> subprocess.CompletedProcess[str]:
        return run_twistd("switchyard", "--check", "--config", write_config(self, text))

    def assertRefused(self, text: str, message: str) -> None:
        out = self.check(text)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn(message, out.stderr)
        self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
        self.assertNotIn("Traceback", out.stdout + out.stderr)

    def assertWarned(self, text: str, warning: str) -> None:
        out = self.check(text)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"  warning: {warning}\n", out.stdout)
        self.assertIn("config OK", out.stdout)

    # -- what each route takes ------------------------------------------------

    def test_eachRouteSaysItsConditions(self) -> None:
        out = self.check(routes('name = "https"\nmatch = "tls"\nsni = ["a.test", "b.test"]\n'
                                'no_sni = true\nto = "web"',
                                'name = "plain"\nmatch = "http"\nhost = "*.a.test"\n'
                                'allow = "10.0.0.0/8"\nidle_timeout = 30\nto = "web"',
                                'match = "ssh"\nto = "web"'))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("  route https: match tls -> web\n"
                      "    when tls sni=[a.test, b.test] no_sni\n"
                      "  route plain: match http -> web\n"
                      "    when http host=*.a.test allow=10.0.0.0/8\n"
                      "  route ssh: match ssh -> web\n", out.stdout)
        self.assertNotIn("warning", out.stdout)

    # -- routes that can never be chosen ---------------------------------------

    def test_routeAfterACatchAll(self) -> None:
        self.assertWarned(routes('name = "all"\nmatch = "any"\nto = "web"',
                                 'name = "late"\nmatch = "ssh"\nto = "web"'),
                          "route late can never be chosen: route all before it is a catch-all "
                          "(match any)")

    def test_routeWithTheSameConditions(self) -> None:
        self.assertWarned(routes('name = "one"\nmatch = "tls"\nsni = "a.test"\nto = "web"',
                                 'name = "two"\nmatch = "tls"\nsni = "a.test"\nto = "echo"'),
                          "route two can never be chosen: route one before it has the same "
                          "conditions")

    def test_routeShadowedByWiderConditions(self) -> None:
        wider = "takes every opening it would (its conditions are wider)"
        self.assertWarned(routes('name = "names"\nmatch = "tls"\nsni = ["a.test", "*.b.test"]\n'
                                 'to = "web"',
                                 'name = "one"\nmatch = "tls"\nsni = "x.b.test"\nalpn = "h2"\n'
                                 'to = "web"'),
                          f"route one can never be chosen: route names before it {wider}")
        self.assertWarned(routes('name = "web"\nmatch = "http"\nto = "web"',
                                 'name = "ws"\nmatch = "websocket"\npath = "/ws"\nto = "web"'),
                          f"route ws can never be chosen: route web before it {wider}")
        self.assertWarned(routes('name = "tls"\nmatch = "tls"\nto = "web"',
                                 'name = "obfs"\nmatch = "obfs-tls"\nto = "web"'),
                          f"route obfs can never be chosen: route tls before it {wider}")

    def test_narrowerFirstIsFine(self) -> None:
        out = self.check(routes('match = "tls"\nsni = "a.test"\nto = "web"',
                                'match = "tls"\nsni = "a.test"\nno_sni = true\nto = "web"',
                                'match = "tls"\nto = "web"',
                                'match = "http"\nmethod = "POST"\nto = "web"',
                                'match = "websocket"\nto = "web"',
                                'match = "any"\nto = "web"'))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("warning", out.stdout)

    # -- errors in words ---------------------------------------------------------

    def test_twoListenersOnOneAddress(self) -> None:
        port = free_port()
        text = BASE.format(port=port) + f"""
[[listener.main.route]]
match = "any"
to = "web"

[listener.again]
listen = "tcp:{port}"

[[listener.again.route]]
match = "any"
to = "web"
"""
        self.assertRefused(text, f"listener.again.listen: listener main already listens on "
                                 f"127.0.0.1:{port}: one address takes one listener")

    def test_serverWithoutAPort(self) -> None:
        self.assertRefused(routes('match = "any"\nto = "web"').replace('"127.0.0.1:8080"',
                                                                       '"127.0.0.1"'),
                           "backend.web.servers[0]: bad endpoint '127.0.0.1': '127.0.0.1' has "
                           "no port: write '127.0.0.1:PORT'")

    def test_misspeltKeyIsNamedNotTheOneItReplaced(self) -> None:
        self.assertRefused(routes('match = "any"\ntoo = "web"'),
                           "listener.main.route[0].too: unknown key: did you mean 'to'?")
        self.assertRefused(routes('match = "tls"\nsnl = "a.test"\nto = "web"'),
                           "listener.main.route[0].snl: unknown option (accepted options: "
                           "alpn, min_version, no_sni, sni)")

    def test_listenPortThatIsNotANumber(self) -> None:
        self.assertRefused(routes('match = "any"\nto = "web"').replace(
            'listen = "127.0.0.1:', 'listen = "tcp:abc" # '),
            "listener.main.listen: bad listen endpoint 'tcp:abc': port 'abc' is not a number")

    def test_otherEndpointMistakes(self) -> None:
        base = routes('match = "any"\nto = "web"')
        listen = base.split('listen = "', 1)[1].split('"', 1)[0]
        for wrong, message in [
            ("localhost:8443", "'localhost' is not an IP address"),
            ("127.0.0.1:70000", "port 70000 is out of range (1 to 65535)"),
            ("tcp:80:interfce=127.0.0.1", "unknown parameter 'interfce' (tcp takes port, "
                                          "interface, backlog)"),
            ("tcp:80:interface=here", "interface 'here' is not an IP address"),
            ("carrier-pigeon:9", "unknown endpoint type 'carrier-pigeon'"),
        ]:
            self.assertRefused(base.replace(listen, wrong), message)

    def test_keyThatDoesNotBelongToTheCertificate(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        ca = make_ca(folder)
        cert, _ = ca.issue(["a.test"], os.path.join(folder, "a"))
        _, other_key = ca.issue(["b.test"], os.path.join(folder, "b"))
        text = routes('match = "any"\nto = "web"')
        listen = text.split('listen = "', 1)[1].split('"', 1)[0]
        text = text.replace(listen, f"ssl:{free_port()}:interface=127.0.0.1:"
                                    f"privateKey={other_key}:certKey={cert}")
        self.assertRefused(text, f"the private key '{other_key}' does not belong to the "
                                 f"certificate '{cert}' (they are not a pair)")

    def test_portInUseIsOneLineAndAFailure(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            config = write_config(self, BASE.format(port=port) + '\n[[listener.main.route]]\n'
                                                                 'match = "any"\nto = "web"\n')
            for out in (run_twistd("-n", "--pidfile=", "--logfile", os.path.abspath(
                            self.mktemp()), "switchyard", "--config", config, timeout=30),
                        switchyard("run", "--config", config, "--logfile",
                                   os.path.abspath(self.mktemp()))):
                self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
                self.assertEqual(out.stderr, f"switchyard: cannot listen on 127.0.0.1:{port}: "
                                             "Address already in use\n")
                self.assertNotIn("Traceback", out.stdout)
