"""Reading PROXY v1/v2 headers from a trusted front (switchyard.wire.proxy.read_header):
real captures, every field against the spec's limits, and no exception but BadProxyHeader."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import globalLogPublisher
from twisted.test.proto_helpers import StringTransportWithDisconnection
from twisted.trial import unittest

from switchyard.config import compile_config
from switchyard.listener import ListenerBooks
from switchyard.wire.proxy import V2_SIGNATURE, BadProxyHeader, build_v1, build_v2, read_header
from tests.fakes import CapturedEvents
from tests.openings import vector


def v2(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack(
        "!H", len(body)) + body


def addresses(result: Any) -> tuple[Any, Any]:
    source, destination, _ = result
    return (None if source is None else (source.host, source.port),
            None if destination is None else (destination.host, destination.port))


class CapturedHeadersTests(unittest.TestCase):
    """What haproxy and curl really send."""

    def test_haproxyV1(self) -> None:
        data = vector("pp_v1_tcp4_haproxy.bin")
        result = read_header(data)
        self.assertIsNotNone(result)
        self.assertEqual(data[:result[2]], data.split(b"\r\n", 1)[0] + b"\r\n")
        self.assertIsInstance(result[0], IPv4Address)

    def test_haproxyV1Ipv6AndCurl(self) -> None:
        for name, kind in (("pp_v1_tcp6_haproxy.bin", IPv6Address),
                           ("pp_v1_curl.bin", IPv4Address)):
            result = read_header(vector(name))
            self.assertIsInstance(result[0], kind, name)

    def test_haproxyV2WithAndWithoutTlvs(self) -> None:
        for name in ("pp_v2_tcp4_haproxy.bin", "pp_v2_tcp6_haproxy.bin",
                     "pp_v2_tcp4_tlv_haproxy.bin"):
            data = vector(name)
            result = read_header(data)
            self.assertIsNotNone(result, name)
            self.assertEqual(result[2], 16 + struct.unpack("!H", data[14:16])[0], name)

    def test_haproxyHealthCheckIsLocal(self) -> None:
        data = vector("pp_v2_local_healthcheck_haproxy.bin")
        self.assertEqual(read_header(data), (None, None, 16))

    def test_everyPrefixOfARealHeaderNeedsMore(self) -> None:
        for name in ("pp_v1_tcp4_haproxy.bin", "pp_v2_tcp4_tlv_haproxy.bin"):
            data = vector(name)
            length = read_header(data)[2]
            for cut in range(length):
                self.assertIsNone(read_header(data[:cut]), (name, cut))


class RoundTripTests(unittest.TestCase):
    def test_ourHeadersReadBack(self) -> None:
        pairs = [(IPv4Address("TCP", "192.0.2.1", 0), IPv4Address("TCP", "198.51.100.2", 65535)),
                 (IPv6Address("TCP", "2001:db8::1", 40000), IPv6Address("TCP", "::1", 443))]
        for source, destination in pairs:
            for header in (build_v1(source, destination), build_v2(source, destination,
                                                                   [(2, b"a.example")])):
                result = read_header(header + b"rest")
                self.assertEqual(addresses(result), ((source.host, source.port),
                                                     (destination.host, destination.port)))
                self.assertEqual(result[2], len(header))

    def test_unknownAndUnspecUseTheRealAddresses(self) -> None:
        for header in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
                       build_v2(None, None)):
            self.assertEqual(read_header(header)[:2], (None, None))


class MalformedTests(unittest.TestCase):
    """Each field out of the spec's limits is a BadProxyHeader naming it."""

    def assertBad(self, data: bytes, says: str) -> None:
        e = self.assertRaises(BadProxyHeader, read_header, data)
        self.assertIn(says, str(e))

    def test_v1Addresses(self) -> None:
        self.assertBad(b"PROXY TCP4 127.0.1 127.0.0.1 1 2\r\n", "source address")
        self.assertBad(b"PROXY TCP4 127.0.0.1 127.0.0.256 1 2\r\n", "destination address")
        self.assertBad(b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n", "source address")
        self.assertBad(b"PROXY TCP6 ::1 127.0.0.1 1 2\r\n", "destination address")
        self.assertBad(b"PROXY TCP6 ::1 ::g 1 2\r\n", "destination address")
        self.assertBad(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "source address")
        self.assertBad(b"PROXY TCP4 010.0.0.1 10.0.0.1 1 2\r\n", "source address")

    def test_v1Ports(self) -> None:
        self.assertBad(b"PROXY TCP4 127.0.0.1 127.0.0.1 99999 2\r\n", "source port")
        self.assertBad(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 65536\r\n", "destination port")
        self.assertBad(b"PROXY TCP4 127.0.0.1 127.0.0.1 01 2\r\n", "source port")
        self.assertBad(b"PROXY TCP4 127.0.0.1 127.0.0.1 -1 2\r\n", "source port")
        self.assertEqual(addresses(read_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n")),
                         (("1.2.3.4", 0), ("5.6.7.8", 65535)))

    def test_v1Shape(self) -> None:
        self.assertBad(b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n", "is not 'PROXY")
        self.assertBad(b"PROXY UDP4 127.0.0.1 127.0.0.1 1 2\r\n", "is not 'PROXY")
        self.assertBad(b"PROXY TCP4  127.0.0.1 127.0.0.1 1 2\r\n", "is not 'PROXY")
        self.assertBad(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\n", "CRLF")
        self.assertBad(b"PROXY " + b"A" * 120, "longer than 107")
        self.assertBad(b"GET / HTTP/1.1\r\n", "no PROXY v1 or v2 header")

    def test_v2Fields(self) -> None:
        good_v4 = bytes(4) + bytes(4) + struct.pack("!HH", 1, 2)
        self.assertBad(v2(1, 0x11, good_v4, version=1), "version 1 is not 2")
        self.assertBad(v2(2, 0x11, good_v4), "command 0x2")
        self.assertBad(v2(1, 0x41, good_v4), "family/transport 0x41")
        self.assertBad(v2(1, 0x13, good_v4), "family/transport 0x13")
        self.assertBad(v2(1, 0x21, good_v4), "too short for its 36-byte")
        self.assertBad(v2(1, 0x11, good_v4[:11]), "too short for its 12-byte")
        self.assertBad(v2(1, 0x11, good_v4 + b"\x02\x00"), "TLV truncated")
        self.assertBad(v2(1, 0x11, good_v4 + b"\x02\x00\x05ab"), "TLV longer")
        self.assertEqual(addresses(read_header(v2(1, 0x11, good_v4 + b"\x02\x00\x01a"))),
                         (("0.0.0.0", 1), ("0.0.0.0", 2)))

    @settings(max_examples=3000, deadline=None)
    @given(st.one_of(
        st.binary(max_size=300),
        st.builds(lambda tail: b"PROXY " + tail, st.binary(max_size=120)),
        st.builds(lambda fields: b"PROXY " + b" ".join(fields) + b"\r\n",
                  st.lists(st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"::1",
                                            b"65535", b"99999", b"0", b"", b"1.2.3"]),
                           max_size=7)),
        st.builds(lambda head, body: V2_SIGNATURE + head + struct.pack("!H", len(body)) + body,
                  st.binary(min_size=2, max_size=2), st.binary(max_size=260))))
    def test_nothingButBadProxyHeaderEverEscapes(self, data: bytes) -> None:
        try:
            result = read_header(data)
        except BadProxyHeader:
            return
        if result is not None:
            self.assertLessEqual(result[2], len(data))


class TrustedFrontTests(unittest.TestCase):
    """A malformed header from a trusted front ends as bad_proxy_header, logged,
    with no traceback."""

    def test_malformedHeadersAreClosedAsBadProxyHeader(self) -> None:
        config = compile_config({"listener": {"t": {
            "listen": "tcp:0", "accept_proxy": ["127.0.0.0/8"],
            "route": [{"match": "any", "to": "echo"}]}}}, reactor)
        access = CapturedEvents(self)
        failures: list[dict[str, Any]] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_failure"):
                failures.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for header in (b"PROXY TCP4 127.0.1 127.0.0.1 1 2\r\n",
                       b"PROXY TCP6 ::1 ::1 1 99999\r\n",
                       b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n"):
            books = ListenerBooks(config.listeners[0], reactor)
            connection = books.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
            transport = StringTransportWithDisconnection()
            transport.protocol = connection
            connection.makeConnection(transport)
            connection.dataReceived(header + b"hello")
            self.assertFalse(transport.connected, header)
        self.assertEqual([e["reason"] for e in access.events], ["bad_proxy_header"] * 3)
        self.assertEqual(failures, [])
