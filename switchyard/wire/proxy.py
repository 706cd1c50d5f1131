"""PROXY protocol headers, version 1 and 2: built for backends, read from trusted fronts.

When switchyard hands a connection to a backend that expects the PROXY
protocol (haproxy ``accept-proxy``, nginx ``proxy_protocol``, ...), it first
writes one of these headers so the backend learns the real client address
instead of switchyard's.  The wire formats follow haproxy's
``proxy-protocol.txt``:

* version 1 is one text line, ``PROXY TCP4 src dst sport dport\\r\\n`` (or
  ``TCP6``), or ``PROXY UNKNOWN\\r\\n`` when the addresses cannot be told;
* version 2 is a binary header: a 12-byte signature, a version/command byte,
  a family/transport byte, a big-endian length, the address block, then
  optional type-length-value records (TLVs) such as ALPN and AUTHORITY.

Reading lives here too (L{read_header}), for listeners behind a trusted
front: every field is checked against the spec's limits, and anything else
is a L{BadProxyHeader} naming the field.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

__all__ = [
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "V2_SIGNATURE",
    "build_header",
    "build_v1",
    "build_v2",
    "BadProxyHeader",
    "read_header",
]

PP2_TYPE_ALPN = 0x01
"""TLV type of the application protocol (ALPN) the client negotiated."""

PP2_TYPE_AUTHORITY = 0x02
"""TLV type of the host name the client asked for (SNI or Host)."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes every version 2 header starts with."""

_V2_VERSION_PROXY = 0x21  # version 2 (high nibble), command PROXY (low nibble)
_V2_VERSION_LOCAL = 0x20  # version 2, command LOCAL: "use the real addresses"
_V2_UNSPEC = 0x00
_V2_FAMILY = {4: 0x10, 6: 0x20}
_V2_TRANSPORT = {"TCP": 0x01, "UDP": 0x02}
_MAX_U16 = 0xFFFF

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_Endpoint = tuple[str, _IP, int]  # (transport, ip, port)


def _endpoint(addr: IAddress | None) -> _Endpoint | None:
    """Return ``(transport, ip, port)`` for an IP address object, else None.

    Anything without an IP literal ``host`` and an integer ``port`` (UNIX
    addresses, None, host names) is "not IP".  An IPv6 zone (``%eth0``) is
    dropped: the PROXY protocol has no room for it.
    """
    if addr is None:
        return None
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    transport = getattr(addr, "type", "TCP")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    if isinstance(port, bool) or not 0 <= port <= _MAX_U16:
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return (transport if isinstance(transport, str) else "TCP", ip, port)


def _unmap(endpoint: _Endpoint) -> _Endpoint:
    """Turn an IPv4-mapped IPv6 endpoint (``::ffff:1.2.3.4``) into IPv4."""
    transport, ip, port = endpoint
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return (transport, ip.ipv4_mapped, port)
    return endpoint


def _pair(
    source: IAddress | None, destination: IAddress | None
) -> tuple[_Endpoint, _Endpoint] | None:
    """Both endpoints, IPv4-mapped ones unmapped; None if either is not IP."""
    src = _endpoint(source)
    dst = _endpoint(destination)
    if src is None or dst is None:
        return None
    return (_unmap(src), _unmap(dst))


def build_v1(
    source: IAddress | None, destination: IAddress | None
) -> bytes:
    """Build a PROXY protocol version 1 line.

    @param source: the client's address (the peer switchyard accepted).
    @param destination: the address the client connected to.
    @return: ``PROXY TCP4 ...\\r\\n`` or ``PROXY TCP6 ...\\r\\n`` for TCP over
        IP (IPv4-mapped IPv6 addresses are sent as IPv4), otherwise
        ``PROXY UNKNOWN\\r\\n`` (non-IP addresses, UDP, or a source and
        destination of different families).
    """
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (s_transport, s_ip, s_port), (d_transport, d_ip, d_port) = pair
    if (
        s_transport != "TCP"
        or d_transport != "TCP"
        or s_ip.version != d_ip.version
    ):
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if s_ip.version == 4 else "TCP6"
    # str() gives dotted-quad for IPv4 and the RFC 5952 compressed form for
    # IPv6, which is what haproxy sends.
    line = f"PROXY {proto} {s_ip} {d_ip} {s_port} {d_port}\r\n"
    return line.encode("ascii")


def _encode_tlvs(tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    """Serialise TLVs, checking each type fits a byte and value 65535 bytes."""
    out = []
    for tlv_type, value in tlvs:
        if isinstance(tlv_type, bool) or not isinstance(tlv_type, int):
            raise TypeError(f"TLV type must be an int, not {tlv_type!r}")
        if not 0 <= tlv_type <= 0xFF:
            raise ValueError(f"TLV type {tlv_type:#x} does not fit a byte")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"TLV {tlv_type:#04x} value must be bytes")
        value = bytes(value)
        if len(value) > _MAX_U16:
            raise ValueError(
                f"TLV {tlv_type:#04x} value is {len(value)} bytes;"
                f" at most {_MAX_U16} fit"
            )
        out.append(struct.pack("!BH", tlv_type, len(value)) + value)
    return b"".join(out)


def build_v2(
    source: IAddress | None,
    destination: IAddress | None,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """Build a PROXY protocol version 2 header.

    @param source: the client's address.
    @param destination: the address the client connected to.
    @param tlvs: ``(type, value)`` records appended after the addresses, in
        order.
    @return: the header.  IPv4 pairs use command PROXY (0x21) and family
        0x1 (12-byte address block), IPv6 pairs family 0x2 (36 bytes);
        IPv4-mapped addresses are unmapped first, and a pair that still mixes
        families is sent as IPv6 with the IPv4 side mapped.  Non-IP
        addresses give family/transport 0x00 (UNSPEC) with no address block
        and command LOCAL (0x20), which the spec obliges every receiver to
        accept (using the real connection's addresses), as haproxy and curl
        send it; haproxy 2.6 resets connections that combine PROXY with
        UNSPEC.  The TLVs are still sent (receivers may ignore them).
    @raise ValueError: a TLV type or value, or the whole header, is too big.
    """
    tlv_bytes = _encode_tlvs(tlvs)
    pair = _pair(source, destination)
    command = _V2_VERSION_LOCAL
    fam_proto = _V2_UNSPEC
    block = b""
    if pair is not None:
        (s_transport, s_ip, s_port), (d_transport, d_ip, d_port) = pair
        transport = _V2_TRANSPORT.get(s_transport)
        if transport is not None and s_transport == d_transport:
            if s_ip.version != d_ip.version:
                s_ip = _as_ipv6(s_ip)
                d_ip = _as_ipv6(d_ip)
            fam_proto = _V2_FAMILY[s_ip.version] | transport
            command = _V2_VERSION_PROXY
            ports = struct.pack("!HH", s_port, d_port)
            block = s_ip.packed + d_ip.packed + ports
    length = len(block) + len(tlv_bytes)
    if length > _MAX_U16:
        raise ValueError(
            f"PROXY v2 header body is {length} bytes; at most {_MAX_U16} fit"
        )
    return (
        V2_SIGNATURE
        + struct.pack("!BBH", command, fam_proto, length)
        + block
        + tlv_bytes
    )


def _as_ipv6(ip: _IP) -> ipaddress.IPv6Address:
    """Return ip as IPv6, mapping an IPv4 address to ``::ffff:a.b.c.d``."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
    return ip


def _encode_name(value: Any) -> bytes:
    """Encode an authority (SNI/Host) value: IDNA A-labels, else UTF-8."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    text = str(value)
    if text.isascii():
        return text.encode("ascii")
    try:
        return text.encode("idna")
    except UnicodeError:
        return text.encode("utf-8")


def _encode_alpn(value: Any) -> bytes:
    """Encode an ALPN fact: a protocol name, or a list whose first is used."""
    if isinstance(value, (list, tuple)):
        if not value:
            return b""
        value = value[0]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("utf-8")


def build_header(
    version: str,
    source: IAddress | None,
    destination: IAddress | None,
    facts: Mapping[str, Any],
) -> bytes:
    """Build the header a route asks for, from a matcher's facts.

    @param version: ``"v1"`` or ``"v2"``.
    @param source: the client's address.
    @param destination: the address the client connected to.
    @param facts: the matcher's facts.  For v2, ``sni`` (or, failing that,
        ``host``) becomes an AUTHORITY TLV (0x02) and ``alpn`` (a string, or
        the list of offered protocols, of which the first is used) an ALPN
        TLV (0x01); empty values are skipped, other facts are ignored.  v1
        carries no facts.
    @raise ValueError: unknown version, or a TLV too long.
    """
    if version == "v1":
        return build_v1(source, destination)
    if version != "v2":
        raise ValueError(f"unknown PROXY protocol version {version!r}")
    tlvs = []
    alpn = facts.get("alpn")
    if alpn:
        encoded = _encode_alpn(alpn)
        if encoded:
            tlvs.append((PP2_TYPE_ALPN, encoded))
    authority = facts.get("sni") or facts.get("host")
    if authority:
        tlvs.append((PP2_TYPE_AUTHORITY, _encode_name(authority)))
    if facts.get("tls_terminated"):
        tlvs.append((PP2_TYPE_SSL, _encode_ssl(facts)))
    return build_v2(source, destination, tlvs)


PP2_TYPE_SSL = 0x20
PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN = 0x01, 0x02
PP2_SUBTYPE_SSL_VERSION, PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_CIPHER = 0x21, 0x22, 0x23


def _encode_ssl(facts: Mapping[str, Any]) -> bytes:
    """The SSL TLV: the client spoke TLS to switchyard (version, cipher, client CN)."""
    client = PP2_CLIENT_SSL
    subs = []
    if facts.get("tls_version"):
        subs.append((PP2_SUBTYPE_SSL_VERSION, str(facts["tls_version"]).encode("ascii")))
    if facts.get("client_cn"):
        client |= PP2_CLIENT_CERT_CONN
        subs.append((PP2_SUBTYPE_SSL_CN, str(facts["client_cn"]).encode("utf-8")))
    if facts.get("tls_cipher"):
        subs.append((PP2_SUBTYPE_SSL_CIPHER, str(facts["tls_cipher"]).encode("ascii")))
    # verify = 0: a client certificate, when there is one, was verified
    # (switchyard refuses the handshake otherwise).
    return struct.pack("!BI", client, 0) + _encode_tlvs(subs)


# -- reading an inbound header (from a trusted load balancer) ----------------

_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the longest v1 line the spec allows, CRLF included
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_IPV4 = re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_V1_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
_V2_HEADER = 16
# family nibble -> (address block length, address class); UNSPEC carries none
_V2_BLOCKS = {0x1: 12, 0x2: 36, 0x3: 216}
_V2_KINDS = {0x1: "TCP", 0x2: "UDP"}


class BadProxyHeader(ValueError):
    """The bytes from a trusted front are not a PROXY v1/v2 header; the
    message says which field is wrong."""


def read_header(data: bytes) -> tuple[IAddress | None, IAddress | None, int] | None:
    """
    Read a PROXY v1 or v2 header at the start of ``data``, checking every
    field against the limits of haproxy's proxy-protocol.txt.

    @return: None while ``data`` is a valid prefix of a header (need more),
        else C{(source, destination, length)}: the addresses it carries
        (None, None for v1 UNKNOWN, v2 LOCAL and v2 UNSPEC: "use the real
        ones") and how many bytes of ``data`` the header took.
    @raise BadProxyHeader: ``data`` cannot start a valid header. Nothing
        else is raised, whatever the input.
    """
    head = data[:len(V2_SIGNATURE)]
    if head and V2_SIGNATURE.startswith(head):
        return _read_v2(data)
    if _V1_PREFIX.startswith(data[:len(_V1_PREFIX)]):
        return _read_v1(data)
    raise BadProxyHeader("no PROXY v1 or v2 header from a trusted front")


def _read_v1(data: bytes) -> tuple[IAddress | None, IAddress | None, int] | None:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise BadProxyHeader("PROXY v1 line longer than 107 bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise BadProxyHeader("PROXY v1 line not ended by CRLF")
        return None
    length = end + 2
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return None, None, length  # the rest of the line is to be ignored
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise BadProxyHeader("PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if fields[1] == b"TCP4" else 6
    source = _v1_address("source address", fields[2], version)
    destination = _v1_address("destination address", fields[3], version)
    source_port = _v1_port("source port", fields[4])
    destination_port = _v1_port("destination port", fields[5])
    return (_address(source, source_port, "TCP"),
            _address(destination, destination_port, "TCP"), length)


def _v1_address(what: str, raw: bytes, version: int) -> _IP:
    shape = _V1_IPV4 if version == 4 else _V1_IPV6
    if not shape.fullmatch(raw):
        raise BadProxyHeader(f"PROXY v1 {what} is not an IPv{version} address")
    try:
        ip = ipaddress.ip_address(raw.decode("ascii"))
    except ValueError:
        raise BadProxyHeader(f"PROXY v1 {what} is not an IPv{version} address")
    if ip.version != version:
        raise BadProxyHeader(f"PROXY v1 {what} is not an IPv{version} address")
    return ip


def _v1_port(what: str, raw: bytes) -> int:
    if not _V1_PORT.fullmatch(raw) or int(raw) > _MAX_U16:
        raise BadProxyHeader(f"PROXY v1 {what} is not a port from 0 to 65535")
    return int(raw)


def _read_v2(data: bytes) -> tuple[IAddress | None, IAddress | None, int] | None:
    if len(data) < _V2_HEADER:
        return None
    if data[:len(V2_SIGNATURE)] != V2_SIGNATURE:
        raise BadProxyHeader("PROXY v2 signature is wrong")
    version_command, family_transport = data[12], data[13]
    if version_command >> 4 != 2:
        raise BadProxyHeader(f"PROXY v2 version {version_command >> 4} is not 2")
    command = version_command & 0xF
    if command > 1:
        raise BadProxyHeader(f"PROXY v2 command {command:#x} is neither LOCAL nor PROXY")
    family, transport = family_transport >> 4, family_transport & 0xF
    if family > 3 or transport > 2:
        raise BadProxyHeader(f"PROXY v2 family/transport {family_transport:#04x} is unknown")
    length = _V2_HEADER + struct.unpack_from("!H", data, 14)[0]
    if len(data) < length:
        return None
    block = _V2_BLOCKS.get(family, 0)
    if length - _V2_HEADER < block:
        raise BadProxyHeader(f"PROXY v2 length {length - _V2_HEADER} is too short "
                             f"for its {block}-byte address block")
    _check_tlvs(data, _V2_HEADER + block, length)
    if command == 0 or family == 0 or transport == 0:
        return None, None, length  # LOCAL, or addresses not told: use the real ones
    body = data[_V2_HEADER:_V2_HEADER + block]
    kind = _V2_KINDS[transport]
    if family == 3:
        return _unix(body[:108]), _unix(body[108:]), length
    size = 4 if family == 1 else 16
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size:2 * size])
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
    return (_address(source, source_port, kind),
            _address(destination, destination_port, kind), length)


def _check_tlvs(data: bytes, start: int, end: int) -> None:
    """The TLVs after the address block must exactly fill the header."""
    pos = start
    while pos < end:
        if end - pos < 3:
            raise BadProxyHeader("PROXY v2 TLV truncated")
        pos += 3 + struct.unpack_from("!H", data, pos + 1)[0]
    if pos != end:
        raise BadProxyHeader("PROXY v2 TLV longer than the header")


def _address(ip: _IP, port: int, kind: str) -> IAddress:
    """Twisted's address for ``ip``, IPv4-mapped IPv6 unmapped as the accept side does."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return IPv4Address(kind, str(ip), port)  # type: ignore[arg-type]
    return IPv6Address(kind, str(ip), port)  # type: ignore[arg-type]


def _unix(raw: bytes) -> IAddress:
    return UNIXAddress(raw.split(b"\0", 1)[0] or None)
