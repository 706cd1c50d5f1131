"""The gateway's secrets and ciphers: ``openssl enc -aes-256-cbc`` blobs and the address inside.

A blob is ``Salted__``, an 8-byte salt, then AES-256-CBC blocks of the
PKCS#7-padded plaintext. Key and IV (48 bytes) come from the secret and the
salt by one of three derivations (L{Kdf}). The plaintext is the backend's
``host:port``.

Decryption is built so that a client learns nothing from how it fails
(no padding oracle): for a blob of valid shape, every configured secret is
tried, every block decrypted, the padding checked without an early exit and
the address parsed, whichever secret or step fails; a failure at any step is
the same ``None``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import ipaddress
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import attr
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from switchyard.wire.gateway import MIN_BLOB, SALTED

SALT_SIZE = 8
BLOCK_SIZE = 16
KEY_SIZE = 32
PBKDF2_ITERATIONS = 10000
"""What ``openssl enc -pbkdf2`` uses without ``-iter``."""

MAX_SECRET_FILE = 4096
# A host name (253) or a bracketed IPv6 address with its port: anything
# longer cannot be an address, so a longer blob is not worth decrypting.
MAX_ADDRESS = 253 + len(":65535")
MAX_BLOB = len(SALTED) + SALT_SIZE + (MAX_ADDRESS // BLOCK_SIZE + 1) * BLOCK_SIZE
DEFAULT_CACHE_SIZE = 4096


class Kdf(enum.Enum):
    """How key and IV are derived from the secret and the salt."""

    MD5 = "md5"
    """EVP_BytesToKey with MD5, one iteration: ``openssl enc -md md5``, and
    what the Go gateways (frontd, huangkunbin/proxy) and their clients use."""

    SHA256 = "sha256"
    """EVP_BytesToKey with SHA-256, one iteration: what ``openssl enc``
    without ``-md`` does since OpenSSL 1.1.0."""

    PBKDF2 = "pbkdf2"
    """PBKDF2-HMAC-SHA256: ``openssl enc -pbkdf2`` (10000 iterations unless
    ``-iter`` says otherwise)."""


class SecretError(Exception):
    """A secret cannot be loaded. The message names its source, never its value."""


class Secret:
    """
    One gateway secret (a passphrase), with where it came from.

    Its text and representation show only the source, so a secret can be
    logged, printed or put in an exception by mistake without leaking.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: bytes, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> bytes:
        """The passphrase itself: for key derivation only."""
        return self._value

    def __repr__(self) -> str:
        return f"<Secret from {self.source}>"

    __str__ = __repr__


def secret_from_file(path: str) -> Secret:
    """
    Read a secret from a file: its one line, without the final newline
    (so a file made by ``echo`` and one made by ``printf %s`` give the same
    secret, as with ``openssl enc -pass file:PATH``).

    @raise SecretError: the file cannot be read, is empty, is larger than
        L{MAX_SECRET_FILE} bytes or holds more than one line.
    """
    source = f"file {path}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as e:
        raise SecretError(f"secret {source}: cannot read it: {e.strerror or e}")
    if len(data) > MAX_SECRET_FILE:
        raise SecretError(f"secret {source}: larger than {MAX_SECRET_FILE} bytes")
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    if b"\n" in data:
        raise SecretError(f"secret {source}: holds more than one line (one secret per file)")
    if not data:
        raise SecretError(f"secret {source}: is empty")
    return Secret(data, source)


def secret_from_env(name: str, environ: Mapping[str, str] | None = None) -> Secret:
    """
    Read a secret from an environment variable (its value as is).

    @raise SecretError: the variable is not set or is empty.
    """
    source = f"environment variable {name}"
    value = (os.environ if environ is None else environ).get(name)
    if value is None:
        raise SecretError(f"secret {source}: is not set")
    if not value:
        raise SecretError(f"secret {source}: is empty")
    return Secret(os.fsencode(value), source)


def derive(passphrase: bytes, salt: bytes, kdf: Kdf, iterations: int = PBKDF2_ITERATIONS
           ) -> tuple[bytes, bytes]:
    """The AES-256 key and the CBC IV for C{passphrase} and C{salt}, as OpenSSL derives them."""
    if kdf is Kdf.PBKDF2:
        material = hashlib.pbkdf2_hmac(
            "sha256", passphrase, salt, iterations, KEY_SIZE + BLOCK_SIZE
        )
    else:
        # EVP_BytesToKey: D_i = HASH(D_(i-1) || passphrase || salt).
        name = "md5" if kdf is Kdf.MD5 else "sha256"
        material = b""
        block = b""
        while len(material) < KEY_SIZE + BLOCK_SIZE:
            block = hashlib.new(name, block + passphrase + salt).digest()
            material += block
    return material[:KEY_SIZE], material[KEY_SIZE : KEY_SIZE + BLOCK_SIZE]


def encrypt(plaintext: bytes, secret: Secret, kdf: Kdf = Kdf.MD5,
            iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> bytes:
    """
    Encrypt as ``openssl enc -aes-256-cbc -salt`` does: ``Salted__``, the salt
    (random unless given), the ciphertext.
    """
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    if len(salt) != SALT_SIZE:
        raise ValueError(f"the salt must be {SALT_SIZE} bytes")
    key, iv = derive(secret.reveal(), salt, kdf, iterations)
    padder = padding.PKCS7(BLOCK_SIZE * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return SALTED + salt + encryptor.update(padded) + encryptor.finalize()


def encrypt_line(plaintext: bytes, secret: Secret, kdf: Kdf = Kdf.MD5,
                 iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> bytes:
    """L{encrypt}, as one base64 line without its newline (``openssl enc -a -A``)."""
    return base64.b64encode(encrypt(plaintext, secret, kdf, iterations, salt))


def decode_line(line: bytes) -> bytes | None:
    """The blob in a base64 line (standard alphabet, padded), or C{None}."""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return None


def split_blob(blob: bytes) -> tuple[bytes, bytes] | None:
    """
    The salt and ciphertext of a blob that has the shape of a salted
    AES-CBC ciphertext of an address, or C{None}. The shape is the client's
    own knowledge, so refusing it early tells nothing about the secret.
    """
    if (
        len(blob) < MIN_BLOB
        or len(blob) > MAX_BLOB
        or len(blob) % BLOCK_SIZE
        or not blob.startswith(SALTED)
    ):
        return None
    header = len(SALTED) + SALT_SIZE
    return blob[len(SALTED) : header], blob[header:]


def _unpadded_length(padded: bytes) -> int:
    """
    The length of C{padded} without its PKCS#7 padding, or -1 if the
    padding is wrong. The last block is always read whole, without an
    early exit, whatever the padding byte says.
    """
    last = padded[-BLOCK_SIZE:]
    pad = last[-1]
    # Negative (so non-zero after the shift) iff pad is 0 or above 16.
    bad = ((pad - 1) | (BLOCK_SIZE - pad)) >> 8
    for i in range(BLOCK_SIZE):
        in_padding = ((i - pad) >> 8) & 1
        bad |= in_padding * (last[BLOCK_SIZE - 1 - i] ^ pad)
    return len(padded) - pad if bad == 0 else -1


def _attempt(passphrase: bytes, salt: bytes, ciphertext: bytes, kdf: Kdf, iterations: int
             ) -> tuple[bool, bytes]:
    """Decrypt with one passphrase: (padding right, plaintext or the whole padded text)."""
    key, iv = derive(passphrase, salt, kdf, iterations)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    length = _unpadded_length(padded)
    return length >= 0, padded[: length if length >= 0 else len(padded)]


def decrypt(blob: bytes, secret: Secret, kdf: Kdf = Kdf.MD5,
            iterations: int = PBKDF2_ITERATIONS) -> bytes | None:
    """
    The plaintext of C{blob} under one secret, or C{None} when the blob is
    misshapen or the padding is wrong. For tools and tests: the gateway
    uses L{Keyring.open}.
    """
    parts = split_blob(blob)
    if parts is None:
        return None
    good, plaintext = _attempt(secret.reveal(), *parts, kdf, iterations)
    return plaintext if good else None


_PORT = re.compile(rb"[1-9][0-9]{0,4}")
_DOTTED = re.compile(rb"[0-9.]+")
_IPV6_TEXT = re.compile(rb"[0-9A-Fa-f:.]+")
# Letters, digits, hyphen (RFC 1123), and underscore, which internal names
# (containers, compose services) do use; no hyphen at either end.
_LABEL = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# A last label that inet_aton would read as a number (decimal, octal, hex):
# a "name" like 0x7f000001 or 127.1 must not reach getaddrinfo as one.
_NUMERIC_LABEL = re.compile(rb"[0-9]+|0[xX][0-9A-Fa-f]*")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Address:
    """
    A backend address from a decrypted blob.

    @ivar host: a lowercase host name, or an IP address in its standard
        form (IPv6 without brackets).
    @ivar family: C{"name"}, C{"ipv4"} or C{"ipv6"}.
    """

    host: str
    port: int
    family: str

    def __str__(self) -> str:
        if self.family == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(plaintext: bytes) -> Address | None:
    """
    Parse a decrypted ``host:port`` strictly, or return C{None}.

    The host is a DNS name (labels of letters, digits, ``-`` and ``_``, at
    most 253 bytes, not ending in a numeric label), a dotted-quad IPv4
    address (no leading zeros), or a bracketed IPv6 address without a zone;
    the port is 1 to 65535 without leading zeros. Nothing else: no spaces,
    no trailing newline, no trailing dot.
    """
    if len(plaintext) > MAX_ADDRESS:
        return None
    host, colon, port_text = plaintext.rpartition(b":")
    if not colon or not _PORT.fullmatch(port_text):
        return None
    port = int(port_text)
    if port > 65535:
        return None
    if host.startswith(b"[") and host.endswith(b"]"):
        inner = host[1:-1]
        if not _IPV6_TEXT.fullmatch(inner):
            return None
        try:
            v6 = ipaddress.IPv6Address(inner.decode("ascii"))
        except ValueError:
            return None
        return Address(str(v6), port, "ipv6")
    if _DOTTED.fullmatch(host):
        try:
            v4 = ipaddress.IPv4Address(host.decode("ascii"))
        except ValueError:
            return None
        return Address(str(v4), port, "ipv4")
    if len(host) > 253:
        return None
    labels = host.split(b".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return Address(host.decode("ascii").lower(), port, "name")


class Keyring:
    """
    The secrets a gateway accepts (several during a rotation) and its key
    derivation: opens blobs into addresses.

    Successful opens are remembered in a bounded LRU cache keyed by the
    blob (the same line comes back with every connection of a client, and
    a PBKDF2 derivation costs milliseconds); failures are never cached, so
    every failure costs the full work and random blobs cannot push good
    entries out. L{open} does it all in one call; the gateway target calls
    L{cached}, L{unlock} (in a thread for PBKDF2) and L{remember} apart, so
    that the cache is only ever touched from the reactor thread.
    """

    def __init__(self, secrets: Iterable[Secret], kdf: Kdf = Kdf.MD5,
                 iterations: int = PBKDF2_ITERATIONS,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.secrets: tuple[Secret, ...] = tuple(secrets)
        if not self.secrets:
            raise ValueError("a keyring needs at least one secret")
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        self.kdf = kdf
        self.iterations = iterations
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, Address] = OrderedDict()

    def __repr__(self) -> str:
        sources = ", ".join(secret.source for secret in self.secrets)
        return f"<Keyring kdf={self.kdf.value} secrets=[{sources}]>"

    __str__ = __repr__

    def open(self, blob: bytes) -> Address | None:
        """
        The address in C{blob}, or C{None} whatever went wrong (shape, key,
        padding or address): one answer for every failure, after the same
        work for every blob of valid shape. L{cached}, then L{unlock} and
        L{remember} in one call.
        """
        found = self.cached(blob)
        if found is None:
            found = self.unlock(blob)
            self.remember(blob, found)
        return found

    def cached(self, blob: bytes) -> Address | None:
        """The address a blob opened to before, if the cache still holds it."""
        cached = self._cache.get(blob)
        if cached is not None:
            self._cache.move_to_end(blob)
        return cached

    def unlock(self, blob: bytes) -> Address | None:
        """
        Decrypt C{blob} with every secret, without the cache: the expensive
        part, which touches nothing mutable, so it may run in a thread.
        """
        parts = split_blob(blob)
        if parts is None:
            return None
        salt, ciphertext = parts
        found: Address | None = None
        for secret in self.secrets:
            good, plaintext = _attempt(secret.reveal(), salt, ciphertext, self.kdf,
                                       self.iterations)
            # Parsed even when the padding is wrong, so that a wrong key, wrong
            # padding and a wrong address all take the same steps.
            address = parse_address(plaintext)
            if found is None and good and address is not None:
                found = address
        return found

    def remember(self, blob: bytes, address: Address | None) -> None:
        """Cache a success (never a failure); the oldest entry makes room."""
        if address is None or self.cache_size <= 0:
            return
        self._cache[blob] = address
        self._cache.move_to_end(blob)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def open_line(self, line: bytes) -> Address | None:
        """L{open} for a base64 line (line and HTTP openings)."""
        blob = decode_line(line)
        return None if blob is None else self.open(blob)


def load_keyring(secret_files: Sequence[str] = (), secret_envs: Sequence[str] = (),
                 kdf: Kdf = Kdf.MD5, iterations: int = PBKDF2_ITERATIONS,
                 environ: Mapping[str, str] | None = None,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> Keyring:
    """
    A keyring from secret files and environment variables, files first.

    @raise SecretError: a secret cannot be loaded, or none is named.
    """
    secrets = [secret_from_file(path) for path in secret_files]
    secrets += [secret_from_env(name, environ) for name in secret_envs]
    if not secrets:
        raise SecretError("no secret: name a secret file or an environment variable")
    return Keyring(secrets, kdf, iterations, cache_size)
