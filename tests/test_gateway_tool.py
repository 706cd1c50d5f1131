"""``python -m switchyard.targets.gateway`` run as users run it, checked with the real openssl."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from switchyard.targets.gateway.crypto import Kdf
from tests.daemon import REPO, env
from tests.test_gateway_crypto import (
    README_LINE,
    README_SECRET,
    openssl_decrypt_line,
    openssl_enc,
    openssl_line,
)

SECRET_TEXT = README_SECRET.decode()


class ToolTestCase(TestCase):
    def setUp(self) -> None:
        self.secret_file = self.write_file(README_SECRET + b"\n")

    def write_file(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    def tool(self, *args: str, stdin: bytes = b"",
             environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "switchyard.targets.gateway", *args],
            input=stdin.decode(), capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, **env(), **(environ or {})},
        )
        # Whatever happened, the secret is never shown.
        self.assertNotIn(SECRET_TEXT, done.stdout + done.stderr)
        return done


class EncryptTests(ToolTestCase):
    def test_linesDecryptWithOpenssl(self) -> None:
        done = self.tool("encrypt", "--secret-file", self.secret_file,
                         "10.0.0.5:7000", "[2001:db8::5]:22", "game.internal:7001")
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        lines = done.stdout.splitlines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(all(line.startswith("U2FsdGVkX1") for line in lines))
        self.assertEqual(
            [openssl_decrypt_line(line.encode(), README_SECRET) for line in lines],
            [b"10.0.0.5:7000", b"[2001:db8::5]:22", b"game.internal:7001"],
        )

    def test_saltIsFreshEachTime(self) -> None:
        first = self.tool("encrypt", "--secret-file", self.secret_file, "10.0.0.5:7000")
        second = self.tool("encrypt", "--secret-file", self.secret_file, "10.0.0.5:7000")
        self.assertNotEqual(first.stdout, second.stdout)

    def test_pbkdf2AndIter(self) -> None:
        done = self.tool("encrypt", "--secret-file", self.secret_file, "--kdf", "pbkdf2",
                         "10.0.0.5:7000")
        self.assertEqual(
            openssl_decrypt_line(done.stdout.strip().encode(), README_SECRET, Kdf.PBKDF2),
            b"10.0.0.5:7000",
        )
        done = self.tool("encrypt", "--secret-file", self.secret_file, "--kdf", "pbkdf2",
                         "--iter", "50000", "10.0.0.5:7000")
        self.assertEqual(
            openssl_decrypt_line(done.stdout.strip().encode(), README_SECRET, Kdf.PBKDF2,
                                 "-iter", "50000"),
            b"10.0.0.5:7000",
        )

    def test_secretFromEnvironment(self) -> None:
        done = self.tool("encrypt", "--secret-env", "GW_SECRET", "10.0.0.5:7000",
                         environ={"GW_SECRET": SECRET_TEXT})
        self.assertEqual(done.returncode, 0)
        self.assertEqual(openssl_decrypt_line(done.stdout.strip().encode(), README_SECRET),
                         b"10.0.0.5:7000")

    def test_badAddressIsRefusedAndNothingPrinted(self) -> None:
        for address in ("10.0.0.5:7000 ", "10.0.0.5", "10.0.0.5:0", "bad host:1", "[::1]"):
            done = self.tool("encrypt", "--secret-file", self.secret_file,
                             "10.0.0.6:1", address)
            self.assertEqual((done.returncode, done.stdout), (1, ""), address)
            self.assertIn(f"{address!r} is not an address", done.stderr)

    def test_longLineWarnsAboutTheLineLimit(self) -> None:
        address = "backend-with-a-long-name.internal.example:7000"
        done = self.tool("encrypt", "--secret-file", self.secret_file, address)
        self.assertEqual(done.returncode, 0)
        self.assertIn(f"the line for {address} is 89 bytes with its newline, more than "
                      f"line_limit 65", done.stderr)
        quiet = self.tool("encrypt", "--secret-file", self.secret_file, "--line-limit", "4096",
                          address)
        self.assertEqual(quiet.stderr, "")

    def test_exactlyOneSecret(self) -> None:
        done = self.tool("encrypt", "--secret-file", self.secret_file, "--secret-env", "X",
                         "10.0.0.5:7000", environ={"X": "other"})
        self.assertEqual((done.returncode, done.stdout), (1, ""))
        self.assertIn("encrypt takes exactly one secret", done.stderr)


class DecryptTests(ToolTestCase):
    def test_readmeLineFromArguments(self) -> None:
        done = self.tool("decrypt", "--secret-file", self.secret_file, README_LINE.decode())
        self.assertEqual((done.returncode, done.stdout, done.stderr),
                         (0, "127.0.0.1:62863\n", ""))

    def test_linesFromStdinInOrder(self) -> None:
        lines = [openssl_line(b"10.0.0.%d:7000" % i, README_SECRET) for i in range(1, 4)]
        stdin = b"\n".join(lines[:2]) + b"\r\n\n  " + lines[2] + b"\n"
        done = self.tool("decrypt", "--secret-file", self.secret_file, stdin=stdin)
        self.assertEqual(done.stdout.splitlines(), ["10.0.0.1:7000", "10.0.0.2:7000",
                                                    "10.0.0.3:7000"])
        self.assertEqual(done.returncode, 0)

    def test_rotationSaysWhichSecretOpens(self) -> None:
        old = self.write_file(b"old secret\n")
        old_line = openssl_line(b"10.0.0.9:22", b"old secret")
        done = self.tool("decrypt", "--secret-file", old, "--secret-env", "NEW",
                         old_line.decode(), README_LINE.decode(), environ={"NEW": SECRET_TEXT})
        self.assertEqual(done.stdout.splitlines(), [
            f"10.0.0.9:22\tsecret from file {old}",
            "127.0.0.1:62863\tsecret from environment variable NEW",
        ])

    def test_failuresAreExplained(self) -> None:
        # A fixed salt: with a random one, about one wrong key in 256 ends in
        # valid padding by chance, and the tool rightly explains that instead.
        # openssl leaves the salt out of the line when it is given (-S).
        def salted(plaintext: bytes, passphrase: bytes, kdf: Kdf) -> bytes:
            salt = bytes.fromhex("5a17ed5a17ed5a17")
            line = openssl_line(plaintext, passphrase, kdf, "-S", salt.hex())
            return base64.b64encode(b"Salted__" + salt + base64.b64decode(line))

        cases = {
            "not base64": b"U2FsdGVkX1!!",
            "made with -nosalt": openssl_enc_nosalt(),
            "no secret opens it": salted(b"10.0.0.5:7000", b"wrong", Kdf.MD5),
            "a trailing newline: made with echo without -n": openssl_line(
                b"10.0.0.5:7000\n", README_SECRET),
            'the gateway needs kdf = "sha256"': salted(
                b"10.0.0.5:7000", README_SECRET, Kdf.SHA256),
            'the gateway needs kdf = "pbkdf2"': salted(
                b"10.0.0.5:7000", README_SECRET, Kdf.PBKDF2),
        }
        for explanation, line in cases.items():
            done = self.tool("decrypt", "--secret-file", self.secret_file, line.decode(),
                             README_LINE.decode())
            self.assertEqual(done.returncode, 1, explanation)
            self.assertEqual(done.stdout, "127.0.0.1:62863\n")
            self.assertIn("line 1 (", done.stderr)
            self.assertIn(explanation, done.stderr)

    def test_kdfOption(self) -> None:
        line = openssl_line(b"10.0.0.5:7000", README_SECRET, Kdf.PBKDF2)
        done = self.tool("decrypt", "--secret-file", self.secret_file, "--kdf", "pbkdf2",
                         line.decode())
        self.assertEqual((done.returncode, done.stdout), (0, "10.0.0.5:7000\n"))


class ErrorTests(ToolTestCase):
    def test_missingSecretFileIsNamed(self) -> None:
        missing = os.path.join(os.path.abspath(self.mktemp()), "secret")
        done = self.tool("decrypt", "--secret-file", missing, README_LINE.decode())
        self.assertEqual((done.returncode, done.stdout), (1, ""))
        self.assertIn(f"secret file {missing}: cannot read it", done.stderr)

    def test_unsetVariableIsNamed(self) -> None:
        done = self.tool("encrypt", "--secret-env", "GW_UNSET_FOR_TEST", "10.0.0.5:7000")
        self.assertEqual(done.returncode, 1)
        self.assertIn("environment variable GW_UNSET_FOR_TEST: is not set", done.stderr)

    def test_noSecretGiven(self) -> None:
        done = self.tool("encrypt", "10.0.0.5:7000")
        self.assertEqual(done.returncode, 1)
        self.assertIn("no secret", done.stderr)

    def test_secretOnTheCommandLineIsNotAnOption(self) -> None:
        done = self.tool("encrypt", "--secret", SECRET_TEXT, "10.0.0.5:7000")
        self.assertEqual((done.returncode, done.stdout), (2, ""))

    def test_usageErrors(self) -> None:
        for args in ((), ("frobnicate",), ("encrypt", "--kdf", "sha1", "x:1"),
                     ("decrypt", "--iter", "0")):
            done = self.tool(*args)
            self.assertEqual(done.returncode, 2, args)
            self.assertIn("usage:", done.stderr)

    def test_help(self) -> None:
        done = self.tool("encrypt", "--help")
        self.assertEqual(done.returncode, 0)
        self.assertIn("--secret-file", done.stdout)


def openssl_enc_nosalt() -> bytes:
    return openssl_enc(["-md", "md5", "-nosalt", "-a", "-A", "-pass", "pass:x"],
                       b"10.0.0.5:7000").strip()
