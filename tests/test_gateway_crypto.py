"""The gateway's secrets, ciphers and address parsing, checked against the real ``openssl enc``."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Sequence

from cryptography.hazmat.primitives import padding
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from switchyard.targets.gateway.crypto import (
    MAX_BLOB,
    Address,
    Kdf,
    Keyring,
    Secret,
    SecretError,
    _unpadded_length,
    decode_line,
    decrypt,
    derive,
    encrypt,
    encrypt_line,
    load_keyring,
    parse_address,
    secret_from_env,
    secret_from_file,
)
from tests.openings import vector

README_SECRET = b"p0S8rX680*48"
README_LINE = b"U2FsdGVkX19KIJ9OQJKT/yHGMrS+5SsBAAjetomptQ0="
VECTOR_SALT = bytes.fromhex("0102030405060708")
SECRET = Secret(README_SECRET, "test secret")
OTHER = Secret(b"another secret", "other secret")

_OPENSSL_DIGEST = {Kdf.MD5: ["-md", "md5"], Kdf.SHA256: ["-md", "sha256"], Kdf.PBKDF2: ["-pbkdf2"]}


def openssl_enc(args: Sequence[str], data: bytes) -> bytes:
    """Run the real ``openssl enc -aes-256-cbc ARGS`` on C{data}."""
    done = subprocess.run(["openssl", "enc", "-aes-256-cbc", *args], input=data,
                          capture_output=True, timeout=30)
    if done.returncode:
        raise AssertionError(f"openssl enc {args} failed: {done.stderr!r}")
    return done.stdout


def openssl_line(plaintext: bytes, passphrase: bytes, kdf: Kdf = Kdf.MD5,
                 *extra: str) -> bytes:
    """A cipher line as ``printf %s ADDRESS | openssl enc ... -salt -a -A`` makes it."""
    args = [*_OPENSSL_DIGEST[kdf], *extra, "-salt", "-a", "-A",
            "-pass", f"pass:{passphrase.decode()}"]
    return openssl_enc(args, plaintext).strip()


def openssl_decrypt_line(line: bytes, passphrase: bytes, kdf: Kdf = Kdf.MD5,
                         *extra: str) -> bytes:
    args = ["-d", *_OPENSSL_DIGEST[kdf], *extra, "-a", "-A",
            "-pass", f"pass:{passphrase.decode()}"]
    return openssl_enc(args, line + b"\n")


def openssl_key_iv(passphrase: bytes, salt: bytes, kdf: Kdf) -> tuple[bytes, bytes]:
    """Key and IV as ``openssl enc -P`` prints them."""
    out = openssl_enc([*_OPENSSL_DIGEST[kdf], "-S", salt.hex(), "-pass",
                       f"pass:{passphrase.decode()}", "-P"], b"").decode()
    key = re.search(r"key=([0-9A-F]+)", out)
    iv = re.search(r"iv\s*=([0-9A-F]+)", out)
    assert key is not None and iv is not None, out
    return bytes.fromhex(key.group(1)), bytes.fromhex(iv.group(1))


class DerivationTests(TestCase):
    def test_md5MatchesTheCapturedVector(self) -> None:
        key, iv = derive(README_SECRET, VECTOR_SALT, Kdf.MD5)
        self.assertEqual(
            key.hex(), "fe0aebd493edb1f8d5fbf398fe42a5df13e5a55ddbd78759bece68596040f591"
        )
        self.assertEqual(iv.hex(), "3ed06075a46e784c4d949d80d9b08081")

    def test_everyKdfMatchesOpenssl(self) -> None:
        for kdf in Kdf:
            for salt in (VECTOR_SALT, os.urandom(8)):
                self.assertEqual(derive(README_SECRET, salt, kdf),
                                 openssl_key_iv(README_SECRET, salt, kdf), kdf)

    def test_pbkdf2IterationsMatchOpensslIter(self) -> None:
        salt = os.urandom(8)
        args = ["-pbkdf2", "-iter", "1000", "-S", salt.hex(), "-pass", "pass:x", "-P"]
        out = openssl_enc(args, b"").decode()
        self.assertIn(derive(b"x", salt, Kdf.PBKDF2, 1000)[0].hex().upper(), out)
        self.assertNotIn(derive(b"x", salt, Kdf.PBKDF2)[0].hex().upper(), out)


class DecryptTests(TestCase):
    keyring = Keyring([SECRET])

    def test_readmeLine(self) -> None:
        self.assertEqual(self.keyring.open_line(README_LINE), Address("127.0.0.1", 62863, "ipv4"))

    def test_readmeBinaryFormIsTheSameBlob(self) -> None:
        blob = bytes.fromhex("53616c7465645f5f4a209f4e409293ff21c632b4bee52b010008deb689a9b50d")
        self.assertEqual(decode_line(README_LINE), blob)
        self.assertEqual(self.keyring.open(blob), Address("127.0.0.1", 62863, "ipv4"))

    def test_capturedVector(self) -> None:
        self.assertEqual(str(self.keyring.open(vector("frontd_vector_salted.bin"))),
                         "127.0.0.1:18080")

    def test_realOpensslLinesForEveryKdf(self) -> None:
        for kdf in Kdf:
            keyring = Keyring([SECRET], kdf)
            port = 1 + int.from_bytes(os.urandom(2), "big") % 65535
            for address in (b"127.0.0.1:%d" % port,
                            b"[2001:db8::7]:443", b"game-7.internal:7001"):
                line = openssl_line(address, README_SECRET, kdf)
                self.assertEqual(str(keyring.open_line(line)).encode(), address, (kdf, line))

    def test_pbkdf2WithOtherIterations(self) -> None:
        line = openssl_line(b"10.0.0.5:7000", README_SECRET, Kdf.PBKDF2, "-iter", "2000")
        self.assertEqual(str(Keyring([SECRET], Kdf.PBKDF2, 2000).open_line(line)),
                         "10.0.0.5:7000")
        self.assertIsNone(Keyring([SECRET], Kdf.PBKDF2).open_line(line))

    def test_ourLinesDecryptWithOpenssl(self) -> None:
        for kdf in Kdf:
            line = encrypt_line(b"10.0.0.5:7000", SECRET, kdf)
            self.assertEqual(openssl_decrypt_line(line, README_SECRET, kdf), b"10.0.0.5:7000")
        line = encrypt_line(b"10.0.0.5:7000", SECRET, Kdf.PBKDF2, 1234)
        self.assertEqual(
            openssl_decrypt_line(line, README_SECRET, Kdf.PBKDF2, "-iter", "1234"),
            b"10.0.0.5:7000",
        )

    def test_givenSaltGivesOpensslsBytes(self) -> None:
        self.assertEqual(encrypt(b"127.0.0.1:18080", SECRET, salt=VECTOR_SALT),
                         vector("frontd_vector_salted.bin"))

    def test_wrongKdfFails(self) -> None:
        line = openssl_line(b"10.0.0.5:7000", README_SECRET, Kdf.SHA256)
        self.assertIsNone(self.keyring.open_line(line))

    def test_wrongSecretFails(self) -> None:
        self.assertIsNone(Keyring([OTHER]).open_line(README_LINE))
        self.assertIsNone(decrypt(decode_line(README_LINE) or b"", OTHER))

    def test_truncatedBase64Fails(self) -> None:
        for cut in range(len(README_LINE)):
            self.assertIsNone(self.keyring.open_line(README_LINE[:cut]), cut)

    def test_badPaddingFails(self) -> None:
        blob = encrypt(b"10.0.0.5:7000", SECRET)
        # Flipping a bit of the next-to-last ciphertext block flips the same
        # bit of the last plaintext block: the padding byte 0x03 becomes 0x02.
        damaged = bytearray(blob)
        damaged[-17] ^= 0x01
        self.assertIsNone(self.keyring.open(bytes(damaged)))
        self.assertIsNone(decrypt(bytes(damaged), SECRET))
        self.assertIsNotNone(decrypt(blob, SECRET))

    def test_truncatedBlobFails(self) -> None:
        blob = encrypt(b"backend-with-a-long-name.example:7000", SECRET)
        for cut in range(len(blob)):
            self.assertIsNone(self.keyring.open(blob[:cut]), cut)

    def test_misshapenBlobsFail(self) -> None:
        blob = encrypt(b"10.0.0.5:7000", SECRET)
        self.assertIsNone(self.keyring.open(b"Peppered" + blob[8:]))
        self.assertIsNone(self.keyring.open(blob + b"x"))
        self.assertIsNone(self.keyring.open(encrypt(b"a" * 250 + b".example:1", SECRET)))

    def test_plaintextThatIsNotAnAddressFails(self) -> None:
        for plaintext in (b"10.0.0.5:7000\n", b"10.0.0.5", b"", b"hello world:80"):
            self.assertIsNotNone(decrypt(encrypt(plaintext, SECRET), SECRET))
            self.assertIsNone(self.keyring.open(encrypt(plaintext, SECRET)), plaintext)

    def test_echoWithoutDashNIsRefused(self) -> None:
        line = openssl_line(b"127.0.0.1:62863\n", README_SECRET)
        self.assertIsNone(self.keyring.open_line(line))

    def test_longestAddressesFit(self) -> None:
        name = ".".join(["a" * 63] * 3 + ["b" * 61]).encode()
        self.assertEqual(len(name), 253)
        blob = encrypt(name + b":65535", SECRET)
        self.assertEqual(len(blob), MAX_BLOB)
        self.assertEqual(self.keyring.open(blob), Address(name.decode(), 65535, "name"))


class CountingSecret(Secret):
    """A secret that counts how often its value is used (for logic tests)."""

    __slots__ = ("uses",)

    def __init__(self, value: bytes, source: str) -> None:
        super().__init__(value, source)
        self.uses = 0

    def reveal(self) -> bytes:
        self.uses += 1
        return super().reveal()


class KeyringTests(TestCase):
    def test_severalSecretsForRotation(self) -> None:
        keyring = Keyring([OTHER, SECRET])
        self.assertEqual(str(keyring.open_line(README_LINE)), "127.0.0.1:62863")
        other_line = encrypt_line(b"10.0.0.9:22", OTHER)
        self.assertEqual(str(keyring.open_line(other_line)), "10.0.0.9:22")

    def test_everySecretIsTriedEveryTime(self) -> None:
        first, second = CountingSecret(README_SECRET, "a"), CountingSecret(b"b", "b")
        keyring = Keyring([first, second], cache_size=0)
        self.assertIsNotNone(keyring.open_line(README_LINE))
        self.assertEqual((first.uses, second.uses), (1, 1))
        self.assertIsNone(keyring.open_line(encrypt_line(b"x:1", OTHER)))
        self.assertEqual((first.uses, second.uses), (2, 2))
        blob = bytearray(decode_line(README_LINE) or b"")
        blob[-17] ^= 1
        self.assertIsNone(keyring.open(bytes(blob)))
        self.assertEqual((first.uses, second.uses), (3, 3))

    def test_successesAreCachedFailuresAreNot(self) -> None:
        secret = CountingSecret(README_SECRET, "a")
        keyring = Keyring([secret])
        first = keyring.open_line(README_LINE)
        self.assertIs(keyring.open_line(README_LINE), first)
        self.assertEqual(secret.uses, 1)
        wrong = encrypt_line(b"x:1", OTHER)
        keyring.open_line(wrong)
        keyring.open_line(wrong)
        self.assertEqual(secret.uses, 3)

    def test_cacheIsBounded(self) -> None:
        secret = CountingSecret(README_SECRET, "a")
        keyring = Keyring([secret], cache_size=2)
        lines = [encrypt_line(b"10.0.0.%d:1" % i, SECRET) for i in range(3)]
        for line in lines:
            keyring.open_line(line)
        self.assertEqual(secret.uses, 3)
        keyring.open_line(lines[2])
        keyring.open_line(lines[1])
        self.assertEqual(secret.uses, 3)
        self.assertEqual(str(keyring.open_line(lines[0])), "10.0.0.0:1")
        self.assertEqual(secret.uses, 4)

    def test_cacheCanBeOff(self) -> None:
        secret = CountingSecret(README_SECRET, "a")
        keyring = Keyring([secret], cache_size=0)
        keyring.open_line(README_LINE)
        keyring.open_line(README_LINE)
        self.assertEqual(secret.uses, 2)

    def test_emptyKeyringIsRefused(self) -> None:
        self.assertRaises(ValueError, Keyring, [])
        self.assertRaises(ValueError, Keyring, [SECRET], Kdf.PBKDF2, 0)


class AddressTests(TestCase):
    def test_accepted(self) -> None:
        cases = {
            b"127.0.0.1:62863": Address("127.0.0.1", 62863, "ipv4"),
            b"10.0.0.5:1": Address("10.0.0.5", 1, "ipv4"),
            b"[::1]:65535": Address("::1", 65535, "ipv6"),
            b"[2001:DB8:0:0::7]:443": Address("2001:db8::7", 443, "ipv6"),
            b"Game-7.Internal:7000": Address("game-7.internal", 7000, "name"),
            b"compose_service:80": Address("compose_service", 80, "name"),
            b"localhost:22": Address("localhost", 22, "name"),
            b"x1.example.c0m:22": Address("x1.example.c0m", 22, "name"),
        }
        for text, address in cases.items():
            self.assertEqual(parse_address(text), address, text)

    def test_refused(self) -> None:
        for text in (
            b"", b"127.0.0.1", b"127.0.0.1:", b":80", b"127.0.0.1:0", b"127.0.0.1:65536",
            b"127.0.0.1:080", b"127.0.0.1:+80", b"127.0.0.1: 80", b" 127.0.0.1:80",
            b"127.0.0.1:80\n", b"127.0.0.1:80\x00", b"010.0.0.1:80", b"127.1:80",
            b"1.2.3.4.5:80", b"0x7f000001:80", b"0x7f.0.0.1:80", b"example.0x1f:80",
            b"example.123:80", b"::1:80", b"[::1:80", b"[fe80::1%eth0]:80",
            b"[1.2.3.4]:80", b"[gggg::1]:80", b"-bad.example:80", b"bad-.example:80",
            b"a..b:80", b".a:80", b"a.:80", b"a b:80", b"h\xc3\xa9:80",
            b"a" * 64 + b".example:80", b".".join([b"a" * 63] * 4) + b":80",
        ):
            self.assertIsNone(parse_address(text), text)

    def test_strRoundTrips(self) -> None:
        for text in (b"127.0.0.1:62863", b"[2001:db8::7]:443", b"game.internal:7000"):
            address = parse_address(text)
            assert address is not None
            self.assertEqual(str(address).encode(), text)
            self.assertEqual(parse_address(str(address).encode()), address)


class SecretTests(TestCase):
    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_fileWithOrWithoutNewline(self) -> None:
        for data in (b"p0S8rX680*48", b"p0S8rX680*48\n", b"p0S8rX680*48\r\n"):
            self.assertEqual(secret_from_file(self.write(data)).reveal(), README_SECRET)

    def test_fileSecretIsWhatOpensslPassFileReads(self) -> None:
        path = self.write(b"  spaces kept \n")
        secret = secret_from_file(path)
        line = encrypt_line(b"10.0.0.5:7000", secret)
        out = openssl_enc(["-d", "-md", "md5", "-a", "-A", "-pass", f"file:{path}"], line + b"\n")
        self.assertEqual(out, b"10.0.0.5:7000")

    def test_badFilesAreClearErrorsWithoutTheSecret(self) -> None:
        cases = {
            self.write(b"hunter2\nhunter3\n"): "more than one line",
            self.write(b""): "is empty",
            self.write(b"\n"): "is empty",
            self.write(b"hunter2" * 1000): "larger than 4096 bytes",
            os.path.join(self.mktemp(), "missing"): "cannot read it: No such file",
        }
        for path, problem in cases.items():
            with self.assertRaises(SecretError) as caught:
                secret_from_file(path)
            message = str(caught.exception)
            self.assertIn(f"file {path}", message)
            self.assertIn(problem, message)
            self.assertNotIn("hunter", message)

    def test_environment(self) -> None:
        environ = {"GW_SECRET": "p0S8rX680*48", "EMPTY": ""}
        secret = secret_from_env("GW_SECRET", environ)
        self.assertEqual(secret.reveal(), README_SECRET)
        self.assertEqual(secret.source, "environment variable GW_SECRET")
        for name, problem in (("EMPTY", "is empty"), ("UNSET", "is not set")):
            with self.assertRaises(SecretError) as caught:
                secret_from_env(name, environ)
            self.assertIn(f"environment variable {name}: {problem}", str(caught.exception))

    def test_loadKeyringFromFilesAndEnvironment(self) -> None:
        path = self.write(b"first\n")
        keyring = load_keyring([path], ["SECOND"], Kdf.PBKDF2, 1000, environ={"SECOND": "two"})
        self.assertEqual([s.reveal() for s in keyring.secrets], [b"first", b"two"])
        self.assertEqual((keyring.kdf, keyring.iterations), (Kdf.PBKDF2, 1000))
        self.assertRaises(SecretError, load_keyring, [], [])

    def test_secretNeverInReprStrOrFormat(self) -> None:
        secret = secret_from_env("GW", {"GW": "hunter2"})
        keyring = Keyring([secret, OTHER])
        for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret]),
                      repr(keyring), str(keyring), repr({"s": secret})):
            self.assertNotIn("hunter2", shown)
            self.assertNotIn("another secret", shown)
        self.assertIn("environment variable GW", repr(secret))
        self.assertIn("other secret", repr(keyring))

    def test_secretHasNoDictToDump(self) -> None:
        self.assertFalse(hasattr(SECRET, "__dict__"))


_BLOCKS = st.integers(1, 4).flatmap(lambda n: st.binary(min_size=16 * n, max_size=16 * n))


class PropertyTests(TestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.one_of(_BLOCKS, _BLOCKS.map(lambda b: b[:-1] + bytes([b[-1] % 17]))))
    def test_paddingCheckAgreesWithCryptography(self, padded: bytes) -> None:
        unpadder = padding.PKCS7(128).unpadder()
        try:
            expected = len(unpadder.update(padded) + unpadder.finalize())
        except ValueError:
            expected = -1
        self.assertEqual(_unpadded_length(padded), expected)

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=400),
            st.binary(max_size=300).map(lambda b: b"Salted__" + b),
            st.integers(1, 17).flatmap(
                lambda n: st.binary(min_size=8 + 16 * n, max_size=8 + 16 * n)
            ).map(lambda b: b"Salted__" + b),
        )
    )
    def test_noBlobMakesOpenRaise(self, blob: bytes) -> None:
        keyring = Keyring([SECRET, OTHER], cache_size=0)
        result = keyring.open(blob)
        self.assertTrue(result is None or isinstance(result, Address))
        as_line = keyring.open_line(blob)
        self.assertTrue(as_line is None or isinstance(as_line, Address))
        line_result = keyring.open_line(base64.b64encode(blob))
        self.assertEqual(line_result, result)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_noPlaintextMakesParseRaise(self, plaintext: bytes) -> None:
        address = parse_address(plaintext)
        if address is not None:
            self.assertEqual(parse_address(str(address).encode()), address)

    @settings(max_examples=100, deadline=None)
    @given(
        st.one_of(
            st.ip_addresses(v=4).map(str),
            st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
            st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}\Z")
            .filter(lambda h: not any(label.endswith("-") for label in h.split("."))),
        ),
        st.integers(1, 65535),
        st.sampled_from([Kdf.MD5, Kdf.SHA256]),
    )
    def test_encryptedAddressesOpen(self, host: str, port: int, kdf: Kdf) -> None:
        text = f"{host}:{port}".encode()
        expected = parse_address(text)
        self.assertIsNotNone(expected)
        keyring = Keyring([OTHER, SECRET], kdf)
        self.assertEqual(keyring.open_line(encrypt_line(text, SECRET, kdf)), expected)

