"""Real openings for the fuzzer, by kind, and the mutations it makes of them.

Openings come from three places, all real bytes: the captures in
``tests/vectors`` (haproxy and curl PROXY headers, simple-obfs, websockets);
programs run against a throwaway listener on 127.0.0.1 when they are
installed (curl, openssl s_client, ssh: their first bytes as sent); and
Python's own TLS client (OpenSSL ClientHellos with SNI and ALPN). Hand-written
ones fill in what neither sends (HTTP forms curl does not use, other SSH
banners, SSH tunnel request payloads).

``Mutator`` damages them the ways a fuzzer should: bit flips, truncation,
insertion, deletion, duplication, splicing two openings, edits of binary
length fields and of decimal numbers in text.
"""

from __future__ import annotations

import base64
import random
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parent / "tests" / "vectors"
KINDS = ("tls", "http", "ssh", "proxy", "gateway", "tunnel", "other")

# Which kind each capture in tests/vectors is (its first bytes).
VECTOR_KINDS = {
    "obfs_http_client_to_server.bin": "http",
    "obfs_tls_client_to_server.bin": "tls",
    "websockets17_genuine_handshake.bin": "http",
    "pp_v1_curl.bin": "proxy",
    "pp_v1_tcp4_haproxy.bin": "proxy",
    "pp_v1_tcp6_haproxy.bin": "proxy",
    "pp_v2_local_healthcheck_haproxy.bin": "proxy",
    "pp_v2_tcp4_haproxy.bin": "proxy",
    "pp_v2_tcp4_tlv_haproxy.bin": "proxy",
    "pp_v2_tcp6_haproxy.bin": "proxy",
    "obfs_http_server_to_client.bin": "other",
    "obfs_tls_server_to_client.bin": "other",
}


def corpus(record: bool = True) -> dict[str, list[bytes]]:
    """Openings by kind (see KINDS). ``record``: also run the real programs."""
    found: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
    for path in sorted(VECTORS.glob("*.bin")):
        data = path.read_bytes()
        if path.name == "frontd_vector_salted.bin":
            # The capture is the decoded line: the client sends it base64'd, then \n.
            found["gateway"].append(base64.b64encode(data) + b"\n")
        elif path.name in VECTOR_KINDS:
            found[VECTOR_KINDS[path.name]].append(data)
    # The huangkunbin/proxy README's own example line.
    found["gateway"].append(b"U2FsdGVkX19KIJ9OQJKT/yHGMrS+5SsBAAjetomptQ0=\n")
    found["gateway"] += _openssl_enc_lines()
    found["tls"] += _python_hellos()
    found["http"] += HTTP_OPENINGS
    found["ssh"] += SSH_BANNERS
    found["proxy"] += _built_proxy_headers(found["http"][:3] + found["tls"][:1])
    found["tunnel"] += _tunnel_requests()
    if record:
        for kind, opening in _recorded():
            found[kind].append(opening)
    return {kind: [o for o in openings if o] for kind, openings in found.items()}


HTTP_OPENINGS = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n",
    b"GET http://example.com:8080/a?b=c HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n",
    b"POST /api/v1 HTTP/1.0\r\nHost: api.example.org\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /stream HTTP/1.1\r\nHost: live.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
]

SSH_BANNERS = [
    b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    b"SSH-2.0-dropbear_2022.83\r\n",
    b"SSH-2.0-PuTTY_Release_0.78\r\n",
    b"SSH-1.99-Cisco-1.25\r\n",
    b"SSH-2.0-Go\r\n\x00\x00\x05\xdc\x06\x14",
]


def _python_hellos() -> list[bytes]:
    """OpenSSL ClientHellos made by Python's ssl module, with various settings."""
    import ssl

    hellos = []
    for sni, alpn, top in (("www.example.com", ["h2", "http/1.1"], None),
                           ("soak.example", None, ssl.TLSVersion.TLSv1_2),
                           (None, ["http/1.1"], None),
                           ("a" * 60 + ".example.net", ["h2"], ssl.TLSVersion.TLSv1_3)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if top:
            ctx.maximum_version = top
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass  # the hello is written
        hellos.append(outgoing.read())
    return hellos


def _built_proxy_headers(payloads: Sequence[bytes]) -> list[bytes]:
    """PROXY v1/v2 headers in every family, followed by a real opening."""
    lines = [b"PROXY UNKNOWN\r\n", b"PROXY TCP6 2001:db8::1 ::1 51234 443\r\n",
             b"PROXY TCP4 192.0.2.1 198.51.100.2 65535 1\r\n"]
    from twisted.internet.address import IPv4Address, IPv6Address

    from switchyard.wire.proxy import build_v2

    v4 = (IPv4Address("TCP", "192.0.2.7", 40000), IPv4Address("TCP", "10.0.0.1", 443))
    v6 = (IPv6Address("TCP", "2001:db8::7", 40000), IPv6Address("TCP", "::1", 8443))
    lines += [build_v2(*v4), build_v2(*v6, tlvs=[(0x01, b"h2"), (0x02, b"example.com")]),
              build_v2(None, None)]
    return [line + payload for line in lines for payload in payloads]


def _tunnel_requests() -> list[bytes]:
    """SSH payloads a tunnel server reads (RFC 4254 7.1, 7.2): tcpip-forward
    (string address, uint32 port) and forwarded-tcpip (address, port,
    originator address, originator port)."""

    def string(text: bytes) -> bytes:
        return struct.pack("!I", len(text)) + text

    out = []
    for name in (str(uuid.UUID(int=7)).encode(), b"tunnel.test", b"", b"0.0.0.0"):
        for port in (80, 0, 65535):
            out.append(string(b"tcpip-forward") + b"\x01" + string(name) + struct.pack("!I", port))
            out.append(string(name) + struct.pack("!I", port) + string(b"127.0.0.1")
                       + struct.pack("!I", 40000))
    return out


def _openssl_enc_lines() -> list[bytes]:
    """Gateway lines as frontd clients make them: `openssl enc -aes-256-cbc -md md5 -a -A`."""
    if shutil.which("openssl") is None:
        return []
    lines = []
    for address in (b"127.0.0.1:18080", b"[::1]:443", b"backend.internal:8080"):
        out = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-md", "md5", "-salt", "-a",
                              "-A", "-pass", "pass:fuzz-secret"], input=address,
                             capture_output=True, check=False)
        if out.returncode == 0:
            lines.append(out.stdout.strip() + b"\n")
    return lines


# -- openings recorded from real programs --------------------------------------

def _recorded() -> list[tuple[str, bytes]]:
    """(kind, first bytes) of each installed client program, as it sent them."""
    from tests.recording import http_head_complete as _head_done
    from tests.recording import record_opening
    from tests.recording import tls_record_complete as _record_done

    programs: list[tuple[str, Callable[[int], list[str]], Callable[[bytes], bool]]] = [
        ("http", lambda p: ["curl", "-s", "-m", "2", f"http://127.0.0.1:{p}/index.html"],
         _head_done),
        ("http", lambda p: ["curl", "-s", "-m", "2", "-d", "a=1&b=2", "-H", "Host: example.com",
                            f"http://127.0.0.1:{p}/form"], _head_done),
        ("http", lambda p: ["curl", "-s", "-m", "2", "--http2-prior-knowledge",
                            f"http://127.0.0.1:{p}/"], lambda d: len(d) >= 24),
        ("tls", lambda p: ["curl", "-s", "-m", "2", "-k", f"https://localhost:{p}/"],
         _record_done),
        ("tls", lambda p: ["openssl", "s_client", "-connect", f"127.0.0.1:{p}",
                           "-servername", "example.com", "-alpn", "h2,http/1.1"], _record_done),
        ("tls", lambda p: ["openssl", "s_client", "-connect", f"127.0.0.1:{p}", "-tls1_2",
                           "-noservername"], _record_done),
        ("ssh", lambda p: ["ssh", "-p", str(p), "-o", "BatchMode=yes", "-o",
                           "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "ConnectTimeout=2", "127.0.0.1"], lambda d: b"\n" in d),
        ("proxy", lambda p: ["curl", "-s", "-m", "2", "--haproxy-protocol",
                             f"http://127.0.0.1:{p}/"], _head_done),
    ]
    out = []
    for kind, argv, done in programs:
        try:
            data = record_opening(argv, done, timeout=3.0).data
        except RuntimeError:  # not installed: the fuzzer does without it
            continue
        if data:
            out.append((kind, data))
    return out


# -- mutations -----------------------------------------------------------------

INTERESTING_BYTES = b"\x00\x01\x7f\x80\xff\r\n :/.\t"
NUMBERS = [b"0", b"1", b"-1", b"255", b"256", b"65535", b"65536", b"99999", b"4294967296",
           b"00001", b"1" * 40, b"127.0.1", b"1.2.3.4.5", b"::1", b"::ffff:1.2.3.4", b"1e3",
           b"+1", b" 1", b""]
TOKENS = [b"\r\n", b"\n", b"\r\n\r\n", b" ", b"  ", b"\t", b":", b"PROXY ", b"TCP4 ", b"TCP6 ",
          b"UNKNOWN", b"HTTP/1.1", b"Host: ", b"Upgrade: websocket\r\n", b"\x16\x03\x01",
          b"SSH-2.0-", b"\r\n\r\n\x00\r\nQUIT\n", b"\xff" * 4, b"\x00" * 4, b"%", b"[", b"]",
          b"Salted__", b"=", b"/"]


class Mutator:
    """Mutated openings: one to four damages each, drawn from ``rng``."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes],
                 others: Sequence[bytes]) -> None:
        self.rng = rng
        self.seeds = list(seeds)  # the parser's own kind
        self.others = list(others) or self.seeds  # everything: splice partners, strays
        self.ops: list[Callable[[bytearray], None]] = [
            self.flip_bit, self.flip_bit, self.set_byte, self.insert, self.delete,
            self.truncate, self.truncate, self.duplicate, self.splice, self.length_field,
            self.length_field, self.number, self.token,
        ]

    def next(self) -> bytes:
        rng = self.rng
        source = self.seeds if rng.random() < 0.9 else self.others
        data = bytearray(rng.choice(source))
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            rng.choice(self.ops)(data)
        return bytes(data)

    def _where(self, data: bytearray) -> int:
        # Openings' decisions are mostly in their first bytes: favour them.
        if not data:
            return 0
        if self.rng.random() < 0.5:
            return self.rng.randrange(min(len(data), 64))
        return self.rng.randrange(len(data))

    def flip_bit(self, data: bytearray) -> None:
        if data:
            data[self._where(data)] ^= 1 << self.rng.randrange(8)

    def set_byte(self, data: bytearray) -> None:
        if data:
            value = (self.rng.choice(INTERESTING_BYTES) if self.rng.random() < 0.5
                     else self.rng.randrange(256))
            data[self._where(data)] = value

    def insert(self, data: bytearray) -> None:
        where = self._where(data) if data else 0
        if self.rng.random() < 0.5:
            data[where:where] = self.rng.choice(TOKENS)
        else:
            data[where:where] = self.rng.randbytes(self.rng.randint(1, 16))

    def delete(self, data: bytearray) -> None:
        if data:
            where = self._where(data)
            del data[where:where + self.rng.randint(1, 16)]

    def truncate(self, data: bytearray) -> None:
        if data:
            del data[self.rng.randrange(len(data)):]

    def duplicate(self, data: bytearray) -> None:
        if data:
            start = self._where(data)
            chunk = data[start:start + self.rng.randint(1, 64)]
            where = self.rng.randrange(len(data) + 1)
            data[where:where] = chunk * self.rng.choice((1, 1, 2, 16))

    def splice(self, data: bytearray) -> None:
        other = self.rng.choice(self.others)
        cut = self.rng.randrange(len(data) + 1)
        data[cut:] = other[self.rng.randrange(len(other) + 1):]

    def length_field(self, data: bytearray) -> None:
        """A 1-, 2- or 3-byte big-endian number nudged or set to an edge (TLS,
        PROXY v2 and SSH lengths are all big-endian)."""
        width = self.rng.choice((1, 2, 2, 3))
        if len(data) < width:
            return
        where = self.rng.randrange(len(data) - width + 1)
        old = int.from_bytes(data[where:where + width], "big")
        top = (1 << (8 * width)) - 1
        new = self.rng.choice((old + 1, old - 1, old + self.rng.randint(2, 64),
                               old - self.rng.randint(2, 64), 0, top, len(data),
                               len(data) - where, top // 2 + 1))
        data[where:where + width] = (new & top).to_bytes(width, "big")

    def number(self, data: bytearray) -> None:
        """A run of digits (a port, an address part, a Content-Length) replaced."""
        digits = [i for i in range(min(len(data), 256)) if 48 <= data[i] <= 57]
        if not digits:
            return self.token(data)
        start = end = self.rng.choice(digits)
        while start > 0 and 48 <= data[start - 1] <= 57:
            start -= 1
        while end < len(data) and 48 <= data[end] <= 57:
            end += 1
        data[start:end] = self.rng.choice(NUMBERS)

    def token(self, data: bytearray) -> None:
        """A separator or keyword swapped for another, or dropped."""
        separators = [i for i in range(min(len(data), 256)) if data[i] in b" \r\n:/."]
        if not separators:
            return self.insert(data)
        where = self.rng.choice(separators)
        data[where:where + 1] = self.rng.choice(TOKENS) if self.rng.random() < 0.7 else b""


def main() -> int:
    """Print the corpus: ``python benchmarks/fuzz_corpus.py``."""
    sys.path.insert(0, str(HERE.parent))
    for kind, openings in corpus().items():
        print(f"{kind}: {len(openings)}")
        for opening in openings:
            print(f"  {len(opening):5d} {opening[:70]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
