"""Reading ``[tunnel_server]`` and ``[tunnel.NAME]``: clear errors, and never a key in them."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from twisted.trial import unittest

from switchyard.interfaces import OptionError
from switchyard.targets.tunnels.settings import (
    DEFAULT_KEEPALIVE_INTERVAL,
    check_tunnels,
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

    def test_hostKeyOthersCanReadIsRefused(self) -> None:
        path = os.path.join(self.dir, "host_key")
        _keygen(path)
        os.chmod(path, 0o644)
        e = self.problem({"host_key": path})
        self.assertIn("readable by other users (mode 0644)", e.problem)
        self.assertIn(f"chmod 600 {path}", e.problem)

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
        spec = compile_tunnel("office", {**base, "port": 80, "proxy_protocol": "v2",
                                         "balance": "leastconn"})
        self.assertEqual((spec.port, spec.proxy_protocol, spec.balance), (80, "v2", "leastconn"))

    def test_keyOfTwoTunnelsIsRefused(self) -> None:
        a = compile_tunnel("office", {"keys": [self.line], "names": ["srv-0.local"]})
        b = compile_tunnel("lab", {"keys": [self.line], "names": ["lab.local"]})
        e = self.assertRaises(OptionError, check_tunnels, {"office": a, "lab": b})
        self.assertEqual(e.key, "lab.keys")
        self.assertIn("is also a key of tunnel 'office'", e.problem)
        self.assertIn("SHA256:", e.problem)
        self.assertNotIn(self.line.split()[1], str(e))
