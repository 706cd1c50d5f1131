"""Tests for switchyard.wire.proxy: PROXY protocol v1/v2 header building.

Three layers of evidence:

* byte-for-byte comparison with headers real haproxy 2.6 sent
  (``tests/vectors/pp_*_haproxy.bin``, see ``/work/shared/vectors/README.md``);
* round trips through Twisted's own PROXY parsers;
* real consumers: haproxy with ``accept-proxy`` and nginx with
  ``proxy_protocol`` report the addresses (and AUTHORITY) we sent.
"""

from __future__ import annotations

import os
import socket
import struct

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.trial import unittest

from switchyard.wire.proxy import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    build_header,
    build_v1,
    build_v2,
)
from tests import peers

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_ADDRESS_BLOCK = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216,
                  0x32: 216}


def vector(name: str) -> bytes:
    with open(os.path.join(VECTORS, name), "rb") as handle:
        return handle.read()


def v4(host: str, port: int) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def v6(host: str, port: int) -> IPv6Address:
    return IPv6Address("TCP", host, port)


def split_v2(data: bytes) -> tuple[bytes, list[tuple[int, bytes]], bytes]:
    """Split a v2 stream into (header, decoded TLVs, payload after it)."""
    assert data[:12] == SIGNATURE, data[:16]
    fam = data[13]
    (length,) = struct.unpack("!H", data[14:16])
    header, rest = data[: 16 + length], data[16 + length:]
    tlv_bytes = header[16 + _ADDRESS_BLOCK[fam]:]
    tlvs = []
    while tlv_bytes:
        tlv_type, tlv_len = struct.unpack("!BH", tlv_bytes[:3])
        value = tlv_bytes[3: 3 + tlv_len]
        if len(value) != tlv_len:
            raise ValueError("truncated TLV")
        tlvs.append((tlv_type, value))
        tlv_bytes = tlv_bytes[3 + tlv_len:]
    return header, tlvs, rest


def canonical(addr) -> tuple[str, str, int] | None:
    """(class name, normalised host, port) for comparing parsed addresses."""
    import ipaddress

    if addr is None:
        return None
    return (type(addr).__name__, str(ipaddress.ip_address(addr.host)),
            addr.port)


class CaptureTests(unittest.TestCase):
    """Our bytes equal what haproxy put on the wire for the same addresses."""

    def _v1_capture(self, name: str) -> None:
        data = vector(name)
        info, rest = V1Parser().feed(data)
        header = data[: len(data) - len(rest)]
        self.assertEqual(build_v1(info.source, info.destination), header)
        self.assertTrue(rest)

    def test_v1_tcp4(self) -> None:
        self._v1_capture("pp_v1_tcp4_haproxy.bin")

    def test_v1_tcp6(self) -> None:
        self._v1_capture("pp_v1_tcp6_haproxy.bin")

    def test_v1_curl(self) -> None:
        self._v1_capture("pp_v1_curl.bin")

    def _v2_capture(self, name: str) -> None:
        data = vector(name)
        info, rest = V2Parser().feed(data)
        header = data[: len(data) - len(rest)]
        self.assertEqual(build_v2(info.source, info.destination), header)

    def test_v2_tcp4(self) -> None:
        self._v2_capture("pp_v2_tcp4_haproxy.bin")

    def test_v2_tcp6(self) -> None:
        self._v2_capture("pp_v2_tcp6_haproxy.bin")

    def test_v2_tlvs_rebuilt(self) -> None:
        """Re-encoding haproxy's TLV list reproduces its header exactly."""
        data = vector("pp_v2_tcp4_tlv_haproxy.bin")
        header, tlvs, rest = split_v2(data)
        self.assertEqual(rest, b"hello-v2-tls\n")
        self.assertEqual([t for t, _ in tlvs], [0x03, 0x01, 0x02, 0x05, 0x20])
        info = V2Parser.parse(header)
        self.assertEqual(build_v2(info.source, info.destination, tlvs), header)

    def test_v2_facts_match_haproxy_tlvs(self) -> None:
        """ALPN/AUTHORITY from facts are encoded as haproxy encodes them."""
        header, tlvs, _ = split_v2(vector("pp_v2_tcp4_tlv_haproxy.bin"))
        info = V2Parser.parse(header)
        theirs = [(t, v) for t, v in tlvs if t in (PP2_TYPE_ALPN,
                                                   PP2_TYPE_AUTHORITY)]
        ours = build_header("v2", info.source, info.destination,
                            {"alpn": ["h2", "http/1.1"],
                             "sni": "app.switchyard.test"})
        self.assertEqual(split_v2(ours)[1], theirs)


class V1Tests(unittest.TestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(
            build_v1(v4("192.0.2.1", 1234), v4("198.51.100.2", 443)),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1234 443\r\n",
        )

    def test_ipv6_compressed(self) -> None:
        self.assertEqual(
            build_v1(v6("2001:0db8:0:0:0:0:0:0010", 1), v6("::1", 65535)),
            b"PROXY TCP6 2001:db8::10 ::1 1 65535\r\n",
        )

    def test_ipv6_scope_dropped(self) -> None:
        self.assertEqual(
            build_v1(v6("fe80::1%eth0", 5), v6("fe80::2%eth0", 6)),
            b"PROXY TCP6 fe80::1 fe80::2 5 6\r\n",
        )

    def test_mapped_both(self) -> None:
        self.assertEqual(
            build_v1(v6("::ffff:1.2.3.4", 5555), v6("::ffff:127.0.0.1", 80)),
            b"PROXY TCP4 1.2.3.4 127.0.0.1 5555 80\r\n",
        )

    def test_mapped_source_ipv4_destination(self) -> None:
        self.assertEqual(
            build_v1(v6("::ffff:1.2.3.4", 5555), v4("10.0.0.1", 80)),
            b"PROXY TCP4 1.2.3.4 10.0.0.1 5555 80\r\n",
        )

    def test_mixed_families_unknown(self) -> None:
        self.assertEqual(build_v1(v6("::ffff:1.2.3.4", 1), v6("::1", 2)),
                         b"PROXY UNKNOWN\r\n")
        self.assertEqual(build_v1(v4("1.2.3.4", 1), v6("::1", 2)),
                         b"PROXY UNKNOWN\r\n")

    def test_not_ip_unknown(self) -> None:
        for src, dst in [
            (None, None),
            (UNIXAddress(b"/tmp/a"), UNIXAddress(b"/tmp/b")),
            (v4("1.2.3.4", 1), None),
            (None, v4("1.2.3.4", 1)),
            (v4("not-an-ip", 1), v4("1.2.3.4", 2)),
            (IPv4Address("UDP", "1.2.3.4", 1),
             IPv4Address("UDP", "1.2.3.5", 2)),
        ]:
            self.assertEqual(build_v1(src, dst), b"PROXY UNKNOWN\r\n",
                             (src, dst))

    def test_longest_line_fits_spec(self) -> None:
        """The spec's 107-byte limit holds for the longest TCP6 line."""
        full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        line = build_v1(v6(full, 65535), v6(full, 65535))
        self.assertLessEqual(len(line), 107)


class V2Tests(unittest.TestCase):
    def test_ipv4(self) -> None:
        header = build_v2(v4("192.0.2.1", 1234), v4("198.51.100.2", 443))
        self.assertEqual(
            header,
            SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1])
            + bytes([198, 51, 100, 2]) + b"\x04\xd2\x01\xbb",
        )

    def test_ipv6(self) -> None:
        header = build_v2(v6("2001:db8::10", 1), v6("::1", 2))
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")
        self.assertEqual(
            header[16:],
            bytes.fromhex("20010db8000000000000000000000010")
            + bytes.fromhex("00000000000000000000000000000001")
            + b"\x00\x01\x00\x02",
        )

    def test_mapped_is_ipv4(self) -> None:
        self.assertEqual(
            build_v2(v6("::ffff:1.2.3.4", 7), v6("::ffff:5.6.7.8", 8)),
            build_v2(v4("1.2.3.4", 7), v4("5.6.7.8", 8)),
        )
        self.assertEqual(
            build_v2(v6("::ffff:1.2.3.4", 7), v4("5.6.7.8", 8)),
            build_v2(v4("1.2.3.4", 7), v4("5.6.7.8", 8)),
        )

    def test_mixed_families_sent_as_ipv6(self) -> None:
        header = build_v2(v4("1.2.3.4", 7), v6("2001:db8::1", 8))
        self.assertEqual(header[13], 0x21)
        info = V2Parser.parse(header)
        self.assertEqual(canonical(info.source),
                         ("IPv6Address", "::ffff:102:304", 7))

    def test_udp(self) -> None:
        header = build_v2(IPv4Address("UDP", "1.2.3.4", 1),
                          IPv4Address("UDP", "1.2.3.5", 2))
        self.assertEqual(header[13], 0x12)

    def test_unspec(self) -> None:
        for src, dst in [(None, None),
                         (UNIXAddress(b"/a"), UNIXAddress(b"/b")),
                         (v4("1.2.3.4", 1), None)]:
            self.assertEqual(build_v2(src, dst),
                             SIGNATURE + b"\x20\x00\x00\x00")

    def test_unspec_keeps_tlvs(self) -> None:
        header = build_v2(None, None, [(PP2_TYPE_AUTHORITY, b"example.org")])
        self.assertEqual(header,
                         SIGNATURE + b"\x20\x00\x00\x0e"
                         + b"\x02\x00\x0bexample.org")

    def test_tlvs_in_order(self) -> None:
        tlvs = [(0x01, b"h2"), (0x02, b"a.example"), (0xE0, b""),
                (0x04, b"\x00" * 300)]
        header = build_v2(v4("1.2.3.4", 1), v4("5.6.7.8", 2), tlvs)
        parsed, decoded, rest = split_v2(header + b"payload")
        self.assertEqual(decoded, tlvs)
        self.assertEqual(rest, b"payload")
        self.assertEqual(len(header), 16 + 12 + 5 + 12 + 3 + 303)

    def test_tlv_too_long(self) -> None:
        src, dst = v4("1.2.3.4", 1), v4("5.6.7.8", 2)
        biggest = 0xFFFF - 12 - 3
        header = build_v2(src, dst, [(0xE0, b"x" * biggest)])
        self.assertEqual(header[14:16], b"\xff\xff")
        self.assertRaises(ValueError, build_v2, src, dst,
                          [(0xE0, b"x" * (biggest + 1))])
        self.assertRaises(ValueError, build_v2, None, None,
                          [(0xE0, b"x" * 0x10000)])
        self.assertRaises(ValueError, build_v2, None, None,
                          [(0xE0, b"x" * 40000), (0xE1, b"y" * 40000)])

    def test_bad_tlv_type(self) -> None:
        self.assertRaises(ValueError, build_v2, None, None, [(256, b"")])
        self.assertRaises(ValueError, build_v2, None, None, [(-1, b"")])
        self.assertRaises(TypeError, build_v2, None, None, [(1, "text")])


class BuildHeaderTests(unittest.TestCase):
    src = v4("192.0.2.1", 1234)
    dst = v4("198.51.100.2", 443)

    def test_v1_ignores_facts(self) -> None:
        self.assertEqual(
            build_header("v1", self.src, self.dst,
                         {"sni": "a.example", "alpn": "h2"}),
            build_v1(self.src, self.dst),
        )

    def test_v2_no_facts(self) -> None:
        self.assertEqual(build_header("v2", self.src, self.dst, {}),
                         build_v2(self.src, self.dst))

    def test_sni_preferred_over_host(self) -> None:
        header = build_header("v2", self.src, self.dst,
                              {"sni": "sni.example", "host": "host.example",
                               "path": "/ignored", "tls_version": "1.3"})
        self.assertEqual(split_v2(header)[1],
                         [(PP2_TYPE_AUTHORITY, b"sni.example")])

    def test_host_when_no_sni(self) -> None:
        header = build_header("v2", self.src, self.dst,
                              {"sni": "", "host": "host.example"})
        self.assertEqual(split_v2(header)[1],
                         [(PP2_TYPE_AUTHORITY, b"host.example")])

    def test_idna_authority(self) -> None:
        header = build_header("v2", self.src, self.dst,
                              {"host": "bücher.example"})
        self.assertEqual(split_v2(header)[1],
                         [(PP2_TYPE_AUTHORITY, b"xn--bcher-kva.example")])

    def test_unencodable_authority_utf8(self) -> None:
        name = "not a valid idna label \u00e9" + "x" * 70
        header = build_header("v2", self.src, self.dst, {"host": name})
        self.assertEqual(split_v2(header)[1],
                         [(PP2_TYPE_AUTHORITY, name.encode("utf-8"))])

    def test_alpn_string_and_list(self) -> None:
        for alpn in ("h2", ["h2", "http/1.1"], ("h2",)):
            header = build_header("v2", self.src, self.dst, {"alpn": alpn})
            self.assertEqual(split_v2(header)[1], [(PP2_TYPE_ALPN, b"h2")])
        header = build_header("v2", self.src, self.dst, {"alpn": []})
        self.assertEqual(split_v2(header)[1], [])

    def test_alpn_then_authority(self) -> None:
        """Same order as haproxy (ALPN 0x01 before AUTHORITY 0x02)."""
        header = build_header("v2", self.src, self.dst,
                              {"host": "h.example", "alpn": "http/1.1"})
        self.assertEqual(split_v2(header)[1],
                         [(PP2_TYPE_ALPN, b"http/1.1"),
                          (PP2_TYPE_AUTHORITY, b"h.example")])

    def test_unknown_version(self) -> None:
        self.assertRaises(ValueError, build_header, "v3", self.src, self.dst,
                          {})

    def test_constants(self) -> None:
        self.assertEqual((PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY), (0x01, 0x02))


# Address pairs for round trips and real consumers:
# (name, source, destination, (expected source host, port) or None)
PAIRS = [
    ("ipv4", v4("192.0.2.10", 40001), v4("198.51.100.7", 443),
     ("192.0.2.10", 40001), ("198.51.100.7", 443)),
    ("ipv6", v6("2001:db8::10", 40002), v6("2001:db8::1", 8443),
     ("2001:db8::10", 40002), ("2001:db8::1", 8443)),
    ("mapped", v6("::ffff:203.0.113.9", 40003), v6("::ffff:127.0.0.1", 80),
     ("203.0.113.9", 40003), ("127.0.0.1", 80)),
    ("ports-0-65535", v4("10.1.2.3", 65535), v4("10.3.2.1", 1),
     ("10.1.2.3", 65535), ("10.3.2.1", 1)),
]


class TwistedRoundTripTests(unittest.TestCase):
    """Twisted's parsers read back what we built."""

    def test_v1(self) -> None:
        for name, src, dst, want_src, want_dst in PAIRS:
            header = build_v1(src, dst)
            info, rest = V1Parser().feed(header + b"after")
            self.assertEqual(rest, b"after", name)
            self.assertEqual((info.source.host, info.source.port), want_src,
                             name)
            self.assertEqual(
                (info.destination.host, info.destination.port), want_dst, name)
            self.assertEqual(V1Parser.parse(header[:-2]).source, info.source)

    def test_v2(self) -> None:
        tlvs = [(PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_AUTHORITY, b"x.example")]
        for name, src, dst, want_src, want_dst in PAIRS:
            for extra in ([], tlvs):
                header = build_v2(src, dst, extra)
                info, rest = V2Parser().feed(header + b"after")
                self.assertEqual(rest, b"after", name)
                self.assertEqual(canonical(info.source)[1:], want_src, name)
                self.assertEqual(canonical(info.destination)[1:], want_dst,
                                 name)
                self.assertEqual(split_v2(header)[1], extra, name)

    def test_v2_unspec(self) -> None:
        header = build_v2(None, None, [(PP2_TYPE_AUTHORITY, b"x.example")])
        info, rest = V2Parser().feed(header + b"after")
        self.assertEqual((info.source, info.destination, rest),
                         (None, None, b"after"))

    def test_v1_unknown_twisted_quirk(self) -> None:
        """Twisted (26.10) rejects the spec's short C{PROXY UNKNOWN\\r\\n}.

        proxy-protocol.txt lets the sender omit everything after UNKNOWN and
        we do (as haproxy does); haproxy and nginx accept it (see the real
        consumer tests).  Twisted's V1Parser needs a space after UNKNOWN.
        If this starts failing, Twisted got fixed: assert the parse instead.
        """
        header = build_v1(None, None)
        self.assertEqual(header, b"PROXY UNKNOWN\r\n")
        self.assertRaises(InvalidProxyHeader, V1Parser().feed, header)


def exchange(port: int, data: bytes) -> bytes:
    """Send data to 127.0.0.1:port, half-close, return all that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def http_body(response: bytes) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0]
    if not status.startswith(b"HTTP/1.") or b" 200 " not in status:
        raise AssertionError(f"not a 200 response: {response!r}")
    return body.decode("utf-8")


REQUEST = b"GET / HTTP/1.0\r\n\r\n"


class HAProxyConsumerTests(unittest.TestCase):
    """haproxy 2.6 with accept-proxy reports what our headers carry."""

    def setUp(self) -> None:
        port = peers.free_port()
        with open(os.path.join(VECTORS, "haproxy_receiver.cfg")) as handle:
            config = handle.read()
        self.assertIn("19500", config)
        self.haproxy = peers.start_haproxy(
            self, config.replace("19500", str(port)), port)

    def ask(self, header: bytes) -> dict[str, str]:
        try:
            body = http_body(exchange(self.haproxy.port, header + REQUEST))
        except Exception as error:
            raise AssertionError(
                f"{error}\nheader {header!r}\n{self.haproxy.log_text()}")
        fields = dict(item.split("=", 1) for item in body.split())
        return fields

    def test_v1(self) -> None:
        for name, src, dst, want_src, want_dst in PAIRS:
            got = self.ask(build_v1(src, dst))
            self.assertEqual(
                (got["src"], int(got["sport"]), got["dst"], int(got["dport"])),
                want_src + want_dst, name)

    def test_v1_unknown_uses_real_connection(self) -> None:
        got = self.ask(build_v1(None, None))
        self.assertEqual((got["src"], got["dst"], int(got["dport"])),
                         ("127.0.0.1", "127.0.0.1", self.haproxy.port))

    def test_v2_with_authority(self) -> None:
        for name, src, dst, want_src, want_dst in PAIRS:
            authority = f"{name}.switchyard.test"
            header = build_header("v2", src, dst,
                                  {"sni": authority, "alpn": ["h2"]})
            got = self.ask(header)
            self.assertEqual(
                (got["src"], int(got["sport"]), got["dst"], int(got["dport"]),
                 got.get("authority")),
                want_src + want_dst + (authority,), name)

    def test_v2_host_fact_and_no_tlvs(self) -> None:
        src, dst = v6("2001:db8::77", 1077), v6("2001:db8::1", 443)
        got = self.ask(build_header("v2", src, dst, {"host": "www.example"}))
        self.assertEqual((got["src"], got["sport"], got.get("authority")),
                         ("2001:db8::77", "1077", "www.example"))
        got = self.ask(build_v2(src, dst))
        self.assertEqual((got["src"], got["authority"]), ("2001:db8::77", ""))

    def test_v2_unspec_uses_real_connection(self) -> None:
        """Non-IP v2 (LOCAL, UNSPEC) is accepted, even with TLVs.

        haproxy 2.6 resets the connection for command PROXY with family
        UNSPEC, which is why build_v2 sends LOCAL there.
        """
        for header in (build_v2(None, None),
                       build_header("v2", None, None, {"sni": "u.example"})):
            got = self.ask(header)
            self.assertEqual((got["src"], got["dst"], int(got["dport"])),
                             ("127.0.0.1", "127.0.0.1", self.haproxy.port))


NGINX_CONFIG = """
http {
    server {
        listen 127.0.0.1:{port} proxy_protocol;
        location / {
            return 200 "$proxy_protocol_addr $proxy_protocol_port\\n";
        }
        location /server {
            return 200
                "${proxy_protocol_server_addr} $proxy_protocol_server_port\\n";
        }
    }
}
"""


class NginxConsumerTests(unittest.TestCase):
    """nginx with 'listen ... proxy_protocol' reports our addresses."""

    def setUp(self) -> None:
        self.nginx = peers.start_nginx(self, NGINX_CONFIG)

    def ask(self, header: bytes, path: str = "/") -> str:
        request = f"GET {path} HTTP/1.0\r\n\r\n".encode("ascii")
        try:
            return http_body(exchange(self.nginx.port, header + request))
        except Exception as error:
            raise AssertionError(
                f"{error}\nheader {header!r}\n{self.nginx.log_text()}")

    def test_v1(self) -> None:
        for name, src, dst, want_src, want_dst in PAIRS:
            header = build_v1(src, dst)
            self.assertEqual(self.ask(header), "{} {}\n".format(*want_src), name)
            self.assertEqual(self.ask(header, "/server"), "{} {}\n".format(*want_dst),
                             name)

    def test_v2(self) -> None:
        for name, src, dst, want_src, want_dst in PAIRS:
            header = build_header("v2", src, dst,
                                  {"sni": "n.example", "alpn": "http/1.1"})
            self.assertEqual(self.ask(header), "{} {}\n".format(*want_src), name)
            self.assertEqual(self.ask(header, "/server"), "{} {}\n".format(*want_dst),
                             name)

    def test_unknown_accepted(self) -> None:
        """Non-IP headers are accepted; nginx then knows no PROXY address."""
        self.assertEqual(self.ask(build_v1(None, None)).strip(), "")
        self.assertEqual(self.ask(build_v2(None, None)).strip(), "")


class SslTlvTests(unittest.TestCase):
    """Terminated TLS is told to the backend in the SSL TLV (0x20)."""

    def test_terminatedConnectionCarriesVersionCipherAndClientCn(self) -> None:
        facts = {"tls_terminated": True, "tls_version": "TLSv1.3",
                 "tls_cipher": "TLS_AES_128_GCM_SHA256", "client_cn": "alice",
                 "sni": "a.example.com"}
        header = build_header("v2", v4("192.0.2.1", 1000), v4("192.0.2.2", 443), facts)
        _, tlvs, _ = split_v2(header)
        ssl_value = dict(tlvs)[0x20]
        client, verify = struct.unpack("!BI", ssl_value[:5])
        self.assertEqual((client, verify), (0x01 | 0x02, 0))
        subs, rest = {}, ssl_value[5:]
        while rest:
            kind, length = struct.unpack("!BH", rest[:3])
            subs[kind] = rest[3:3 + length]
            rest = rest[3 + length:]
        self.assertEqual(subs, {0x21: b"TLSv1.3", 0x22: b"alice",
                                0x23: b"TLS_AES_128_GCM_SHA256"})
        self.assertEqual(dict(tlvs)[0x02], b"a.example.com")
        # Twisted's parser still reads the addresses past the TLVs.
        self.assertEqual(V2Parser.parse(header).source.host, "192.0.2.1")

    def test_passthroughHasNoSslTlv(self) -> None:
        header = build_header("v2", v4("192.0.2.1", 1), v4("192.0.2.2", 2), {"sni": "x"})
        self.assertNotIn(0x20, dict(split_v2(header)[1]))
