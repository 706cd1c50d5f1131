"""Reading the tunnel server's, each tunnel's and the agent's tables: clear errors, no keys."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from switchyard.interfaces import OptionError
from switchyard.targets.tunnels.settings import (
    DEFAULT_KEEPALIVE_INTERVAL,
    AgentSettings,
    compile_agent_settings,
    compile_server_settings,
    compile_tunnel,
)
from tests.peers import _keygen


def keygen(path: str, *args: str) -> str:
    """ssh-keygen a key at ``path`` (ed25519, no passphrase unless ``args`` say)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", *args,
                    "-f", path], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    with open(path + ".pub", encoding="ascii") as f:
        return f.read().strip()


class ServerSettingsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def problem(self, raw: dict[str, Any]) -> OptionError:
        return self.assertRaises(OptionError, compile_server_settings, raw, self.dir)

    def test_hostKeyRelativeToTheConfigFolder(self) -> None:
        _keygen(os.path.join(self.dir, "host_key"))
        settings = compile_server_settings({"host_key": "host_key"}, self.dir)
        self.assertEqual(settings.host_key_path, os.path.join(self.dir, "host_key"))
        self.assertFalse(settings.host_key.isPublic())
        self.assertEqual(settings.keepalive_interval, DEFAULT_KEEPALIVE_INTERVAL)

    def test_missingHostKeySaysHowToMakeOne(self) -> None:
        e = self.problem({"host_key": "nowhere"})
        path = os.path.join(self.dir, "nowhere")
        self.assertEqual(e.key, "host_key")
        self.assertIn(f"host key file {path!r} does not exist", e.problem)
        self.assertIn(f"ssh-keygen -t ed25519 -f {path} -N ''", e.problem)

    def test_hostKeyIsRequired(self) -> None:
        self.assertEqual(self.problem({}).key, "host_key")

    def test_hostKeyOthersCanReadIsAWarning(self) -> None:
        """sshd would ignore such a key; switchyard says so (--check, start-up log) and
        runs, so that a demo key checked out of a repository (0644) still works."""
        path = os.path.join(self.dir, "host_key")
        _keygen(path)
        self.assertEqual(compile_server_settings({"host_key": path}).warnings, ())
        os.chmod(path, 0o644)
        [warning] = compile_server_settings({"host_key": path}).warnings
        self.assertIn("readable by other users (mode 0644)", warning)
        self.assertIn(f"chmod 600 {path}", warning)

    def test_hostKeyWithAPassphraseIsRefused(self) -> None:
        path = os.path.join(self.dir, "host_key")
        keygen(path, "-N", "a passphrase")
        self.assertIn("protected by a passphrase", self.problem({"host_key": path}).problem)

    def test_publicKeyAsHostKeyIsRefused(self) -> None:
        path = os.path.join(self.dir, "host_key")
        _keygen(path)
        os.chmod(path + ".pub", 0o600)
        e = self.problem({"host_key": path + ".pub"})
        self.assertIn("is a public key: give the private key file", e.problem)

    def test_notAKeyIsRefused(self) -> None:
        path = os.path.join(self.dir, "host_key")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("certainly not a key\n")
        self.assertIn("is not an OpenSSH private key", self.problem({"host_key": path}).problem)

    def test_unknownOptionIsRefused(self) -> None:
        self.assertEqual(self.problem({"host_key": "k", "keepalive": 5}).key, "keepalive")

    def test_windowBelowOnePacketIsRefused(self) -> None:
        _keygen(os.path.join(self.dir, "host_key"))
        self.assertEqual(self.problem({"host_key": "host_key", "window": 1024}).key, "window")


class TunnelTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.line = keygen(os.path.join(self.dir, "agent"))

    def problem(self, raw: dict[str, Any]) -> OptionError:
        return self.assertRaises(OptionError, compile_tunnel, "office", raw, self.dir)

    def test_keysAndNames(self) -> None:
        spec = compile_tunnel("office", {"keys": [self.line], "names": ["srv-0.local"]})
        self.assertEqual(len(spec.keys), 1)
        self.assertTrue(spec.owns("SRV-0.local."))
        self.assertFalse(spec.owns("srv-1.local"))
        self.assertEqual((spec.balance, spec.proxy_protocol, spec.port), ("roundrobin", None,
                                                                          None))

    def test_keysFileIsAnAuthorizedKeysFile(self) -> None:
        other = keygen(os.path.join(self.dir, "other"))
        with open(os.path.join(self.dir, "agents.pub"), "w") as f:
            f.write(f"# the office gateways\n\n{self.line}\n  {other}  \n")
        spec = compile_tunnel("office", {"keys_file": "agents.pub", "names": "srv-0.local"},
                              self.dir)
        self.assertEqual(len(spec.keys), 2)

    def test_keysAreRequired(self) -> None:
        e = self.problem({"names": ["srv-0.local"]})
        self.assertEqual(e.key, "keys")
        self.assertIn("at least one public key is required", e.problem)

    def test_namesAreRequired(self) -> None:
        self.assertEqual(self.problem({"keys": [self.line]}).key, "names")

    def test_badKeyLineIsNamedNotQuoted(self) -> None:
        bad = "ssh-ed25519 AAAAnot-base64-at-all"
        e = self.problem({"keys": [self.line, bad], "names": ["srv-0.local"]})
        self.assertEqual(e.key, "keys[1]")
        self.assertNotIn("AAAAnot", str(e))

    def test_privateKeyInsteadOfPublicIsRefusedUnquoted(self) -> None:
        with open(os.path.join(self.dir, "agent"), encoding="ascii") as f:
            private = f.read()
        e = self.problem({"keys": [private], "names": ["srv-0.local"]})
        self.assertIn("this is a private key: give the public key line", e.problem)
        body = private.splitlines()[1]
        self.assertNotIn(body[:20], str(e))

    def test_authorizedKeysOptionsAreRefused(self) -> None:
        e = self.problem({"keys": [f"restrict {self.line}"], "names": ["srv-0.local"]})
        self.assertIn("options (restrict, command=...) are not supported", e.problem)

    def test_badLineInKeysFileIsNamedByLine(self) -> None:
        with open(os.path.join(self.dir, "agents.pub"), "w") as f:
            f.write(f"{self.line}\nnonsense\n")
        e = self.problem({"keys_file": "agents.pub", "names": ["srv-0.local"]})
        self.assertIn("agents.pub line 2", e.key)

    def test_missingKeysFile(self) -> None:
        e = self.problem({"keys_file": "absent.pub", "names": ["srv-0.local"]})
        self.assertEqual(e.key, "keys_file")
        self.assertIn("does not exist", e.problem)

    def test_badNamePattern(self) -> None:
        e = self.problem({"keys": [self.line], "names": ["srv-*.local"]})
        self.assertEqual(e.key, "names")

    def test_limitsAndChoices(self) -> None:
        base = {"keys": [self.line], "names": ["srv-0.local"]}
        self.assertEqual(self.problem({**base, "port": 0}).key, "port")
        self.assertEqual(self.problem({**base, "balance": "fastest"}).key, "balance")
        self.assertEqual(self.problem({**base, "max_agents": 0}).key, "max_agents")
        self.assertEqual(self.problem({**base, "proxy_protocol": "v3"}).key, "proxy_protocol")
        self.assertEqual(self.problem({**base, "ingress": "x"}).key, "ingress")
        e = self.problem({**base, "default_name": "db.local"})
        self.assertEqual(e.key, "default_name")
        self.assertIn("'db.local' is not one of the tunnel's names (srv-0.local)", e.problem)
        spec = compile_tunnel("office", {**base, "default_name": "SRV-0.local."})
        self.assertEqual(spec.default_name, "srv-0.local")
        spec = compile_tunnel("office", {**base, "port": 80, "proxy_protocol": "v2",
                                         "balance": "leastconn"})
        self.assertEqual((spec.port, spec.proxy_protocol, spec.balance), (80, "v2", "leastconn"))


class AgentSettingsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.host_line = keygen(os.path.join(self.dir, "host"))
        keygen(os.path.join(self.dir, "agent"))
        self.base: dict[str, Any] = {"server": "switch.example.com:2222",
                                     "server_key": self.host_line, "key": "agent",
                                     "publish": ["srv-0.local:80"]}

    def compile(self, **changes: Any) -> AgentSettings:
        raw = {k: v for k, v in {**self.base, **changes}.items() if v is not None}
        return compile_agent_settings(raw, self.dir, reactor)

    def problem(self, **changes: Any) -> OptionError:
        raw = {k: v for k, v in {**self.base, **changes}.items() if v is not None}
        return self.assertRaises(OptionError, compile_agent_settings, raw, self.dir, reactor)

    def test_defaults(self) -> None:
        settings = self.compile()
        self.assertEqual((settings.user, settings.connections, settings.publish,
                          settings.tls_server_name, settings.warnings),
                         ("tunnel", 1, (("srv-0.local", 80),), None, ()))
        self.assertFalse(settings.key.isPublic())
        self.assertEqual(settings.key_path, os.path.join(self.dir, "agent"))

    def test_publishWithoutPortIsEveryPort(self) -> None:
        settings = self.compile(publish=["srv-0.local", "srv-1.local:443", "srv-0.local"])
        self.assertEqual(settings.publish, (("srv-0.local", 0), ("srv-1.local", 443)))

    def test_badPublishEntries(self) -> None:
        for entry in ("srv-0.local:70000", ":80", "[::1]:80", "two words:80"):
            e = self.problem(publish=["srv-1.local", entry])
            self.assertEqual(e.key, "publish[1]", entry)
        self.assertIn("required", self.problem(publish=None).problem)

    def test_serverKeyIsRequiredAndSaysWhereToFindIt(self) -> None:
        e = self.problem(server_key=None)
        self.assertEqual(e.key, "server_key")
        self.assertIn("cat HOST_KEY.pub", e.problem)

    def test_serverKeyFileMayBeKnownHosts(self) -> None:
        path = os.path.join(self.dir, "known_hosts")
        with open(path, "w") as f:
            f.write(f"# pinned\n[switch.example.com]:2222 {self.host_line}\n")
        settings = self.compile(server_key=None, server_key_file="known_hosts")
        self.assertEqual([k.toString("openssh").decode() for k in settings.server_keys],
                         [" ".join(self.host_line.split()[:2])])
        with open(path, "w") as f:
            f.write(f"@revoked switch.example.com {self.host_line}\n")
        e = self.problem(server_key=None, server_key_file="known_hosts")
        self.assertIn("markers (@revoked) are not supported", e.problem)

    def test_missingKeySaysHowToMakeOneAndWhereItGoes(self) -> None:
        e = self.problem(key="absent")
        path = os.path.join(self.dir, "absent")
        self.assertEqual(e.key, "key")
        self.assertIn(f"ssh-keygen -t ed25519 -f {path} -N ''", e.problem)
        self.assertIn(f"add {path}.pub to the tunnel's keys on the server", e.problem)

    def test_keyOthersCanReadIsAWarning(self) -> None:
        os.chmod(os.path.join(self.dir, "agent"), 0o640)
        [warning] = self.compile().warnings
        self.assertIn("agent key file", warning)
        self.assertIn("(mode 0640)", warning)

    def test_tlsOptions(self) -> None:
        self.assertEqual(self.compile(tls=True).tls_server_name, "switch.example.com")
        self.assertEqual(self.compile(tls=True, tls_server_name="tunnel.example.com",
                                      tls_verify=False).tls_server_name, "tunnel.example.com")
        self.assertEqual(self.problem(server="192.0.2.1:443", tls=True).key, "tls_server_name")
        self.assertEqual(self.problem(tls_server_name="tunnel.example.com").key,
                         "tls_server_name")
        e = self.problem(tls=True, tls_ca="absent.pem")
        self.assertEqual(e.key, "tls_ca")
        self.assertIn("does not exist", e.problem)

    def test_limits(self) -> None:
        self.assertEqual(self.problem(connections=0).key, "connections")
        self.assertEqual(self.problem(reconnect_min=5, reconnect_max=1).key, "reconnect_max")
        self.assertEqual(self.problem(window=100).key, "window")
        self.assertEqual(self.problem(sever="x").key, "sever")
        self.assertEqual(self.problem(server="nonsense").key, "server")
