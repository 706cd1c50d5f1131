"""The TLS ClientHello: a pure parser shared by matchers (tls, obfs-tls) and explain.

The opening must be TLS handshake records (content type 22, record version
3.0 to 3.4, 1 to 2^14 bytes each) whose reassembled payload starts with a
ClientHello (RFC 8446 section 4.1.2, RFC 5246 section 7.4.1.2) of at most
16 KiB. The hello may span any number of records and TCP segments. Every
length field is checked against its enclosing one, so a buffer is either a
valid prefix of a hello (NEED_MORE), a complete hello (parsed), or cannot
become one (NO).
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Literal, Union, cast, overload

import attr

from switchyard.interfaces import NEED_MORE, NO, Verdict
from switchyard.wire.last import LastBuffer
from switchyard.wire.text import printable

CONTENT_TYPE_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43

MAX_RECORD_LENGTH = 2**14
MAX_HELLO_LENGTH = 16 * 1024
# version(2) random(32) session_id(1+0) cipher_suites(2+2) compression(1+1)
_MIN_HELLO_LENGTH = 41
_NAME_TYPE_HOST_NAME = 0

VERSIONS = {"1.0": 0x0301, "1.1": 0x0302, "1.2": 0x0303, "1.3": 0x0304}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ClientHello:
    """
    What a ClientHello offers.

    @ivar legacy_version: the hello's own version field (0x0303 in TLS 1.3).
    @ivar versions: protocol versions offered, in the client's order: the
        supported_versions list without GREASE values when the extension is
        present, else just C{legacy_version}.
    @ivar sni: the first host_name in server_name, as sent; C{None} if none.
    @ivar alpn: ALPN protocol names in the client's order, as Latin-1 text
        with non-printable bytes shown as C{\\xNN} (see
        L{switchyard.wire.text.printable}); empty if the extension is
        absent.
    @ivar extensions: every extension as C{(type, data)}, in order.
    @ivar length: how many bytes of the opening the records carrying the
        hello take, so a caller can find what follows.
    """

    legacy_version: int
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[tuple[int, bytes], ...]
    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    length: int

    @property
    def highest_version(self) -> int:
        """The highest TLS version offered (e.g. 0x0304)."""
        return _highest_version(self.versions, self.legacy_version)


Offer = tuple[str | None, tuple[str, ...], int]
"""What a tls route decides on: (sni, alpn, highest_version) as in
L{ClientHello}. L{hello_offer} gives it without building the rest."""


def _highest_version(versions: tuple[int, ...], legacy_version: int) -> int:
    # A plain loop: a comprehension and max() cost three times as much, and
    # every tls route match asks.
    highest = -1
    for version in versions:
        if version >> 8 == 3 and version > highest:
            highest = version
    return highest if highest >= 0 else legacy_version


@functools.lru_cache(maxsize=16)  # every tls match names its version: a few distinct ones
def version_name(version: int) -> str:
    """Name a wire version the way people do: 0x0303 is "1.2", 0x0300 "ssl3"."""
    major, minor = version >> 8, version & 0xFF
    if major != 3:
        return f"0x{version:04x}"
    if minor == 0:
        return "ssl3"
    return f"1.{minor - 1}"


class _Invalid(Exception):
    """The bytes cannot become a valid ClientHello."""


class _Short(Exception):
    """The bytes are a valid prefix: more are needed to decide."""


def _check_record_header(header: bytes) -> None:
    """Reject a (possibly partial) record header that is not TLS handshake."""
    if len(header) >= 1 and header[0] != CONTENT_TYPE_HANDSHAKE:
        raise _Invalid()
    # Major 3 excludes SSLv2-framed hellos, whose first byte is never 0x16
    # anyway, and minor 0..4 covers SSL 3.0 to TLS 1.3.
    if len(header) >= 2 and header[1] != 3:
        raise _Invalid()
    if len(header) >= 3 and header[2] > 4:
        raise _Invalid()
    if len(header) >= 5:
        length = int.from_bytes(header[3:5], "big")
        # Zero-length handshake fragments are forbidden (RFC 8446 5.1).
        if length == 0 or length > MAX_RECORD_LENGTH:
            raise _Invalid()


def _reassemble(data: bytes) -> tuple[bytes, int]:
    """
    Join the handshake records' payloads until they hold the whole hello.

    @return: the handshake bytes available (possibly fewer than needed) and
        the offset in C{data} just past the last record used.
    """
    # Nearly every client sends its hello in one record: take that payload
    # as it is, without the joining loop. The checks are the loop's own.
    if len(data) >= 9 and data[0] == CONTENT_TYPE_HANDSHAKE and data[1] == 3 and data[2] <= 4:
        length = (data[3] << 8) | data[4]
        hello_end = 9 + int.from_bytes(data[6:9], "big")
        if length <= MAX_RECORD_LENGTH and hello_end <= 5 + length and hello_end <= len(data):
            return data[5 : 5 + length], min(5 + length, len(data))
    pos = 0
    # A bytearray keeps joining linear when a client sends tiny records.
    handshake = bytearray()
    while True:
        header = data[pos : pos + 5]
        _check_record_header(header)
        if len(header) < 5:
            break
        length = int.from_bytes(header[3:5], "big")
        handshake += data[pos + 5 : pos + 5 + length]
        pos = min(pos + 5 + length, len(data))
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            break
        if pos == len(data):
            break
    return bytes(handshake), pos


# The extensions' bodies are complete (the extension block is), so these
# read them with plain indexes: anything that does not fit is malformed.


def _parse_server_name(data: bytes) -> str | None:
    """RFC 6066 ServerNameList: uint16 length (at least 1) filling the
    extension, then (type, uint16-length name of at least 1 byte) entries."""
    end = len(data)
    if end < 2 or not 1 <= ((data[0] << 8) | data[1]) == end - 2:
        raise _Invalid()
    pos = 2
    host_name: str | None = None
    while pos < end:
        if pos + 3 > end:
            raise _Invalid()
        name_type = data[pos]
        start = pos + 3
        pos = start + ((data[pos + 1] << 8) | data[pos + 2])
        if pos == start or pos > end:
            raise _Invalid()
        if name_type == _NAME_TYPE_HOST_NAME and host_name is None:
            name = data[start:pos]
            # RFC 6066: ASCII, and a NUL would let "a.com\0.b.com" fool a
            # suffix check somewhere downstream.
            if not name.isascii() or b"\0" in name:
                raise _Invalid()
            host_name = name.decode("ascii")
    return host_name


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    """RFC 7301 ProtocolNameList: uint16 length (at least 2) filling the
    extension, then uint8-length names of at least 1 byte."""
    end = len(data)
    if end < 2 or not 2 <= ((data[0] << 8) | data[1]) == end - 2:
        raise _Invalid()
    pos = 2
    protocols = []
    while pos < end:
        start = pos + 1
        pos = start + data[pos]
        if pos == start or pos > end:
            raise _Invalid()
        name = data[start:pos].decode("latin-1")
        # printable() would leave a printable name as it is, and real names
        # ("h2", "http/1.1") all are: skip its per-character translation.
        protocols.append(name if name.isprintable() else printable(data[start:pos]))
    return tuple(protocols)


def _parse_supported_versions(data: bytes) -> tuple[int, ...]:
    """RFC 8446 4.2.1 (client): uint8 length (at least 2, even) filling the
    extension, then uint16 versions."""
    end = len(data)
    if end < 1 or data[0] < 2 or data[0] % 2 or data[0] != end - 1:
        raise _Invalid()
    # GREASE values (RFC 8701) are 0x?A?A and mean nothing.
    return tuple([version for (version,) in _UINT16.iter_unpack(data[1:])
                  if version & 0x0F0F != 0x0A0A])


_READ_EXTENSIONS = frozenset((EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS))
_UINT16 = struct.Struct("!H")
_EXTENSION_HEADER = struct.Struct("!HH").unpack_from
# Cipher suite lists come in a handful of lengths: their Structs, made once.
_cipher_structs: dict[int, struct.Struct] = {}


@overload
def _parse_hello(handshake: bytes, length: int, whole: Literal[True]) -> ClientHello: ...
@overload
def _parse_hello(handshake: bytes, length: int, whole: Literal[False]) -> Offer: ...
def _parse_hello(handshake: bytes, length: int, whole: bool) -> Union[ClientHello, Offer]:
    # Every check runs whether or not the whole hello is wanted (C{whole}),
    # so both answer NO and NEED_MORE alike; an Offer only skips building
    # the parts a tls route never reads (cipher suites, extension bodies).
    # Read with plain indexes (a cursor object cost a third of the parse).
    # Each field: past the hello's own length is malformed (_Invalid),
    # past the bytes so far merely early (_Short), checked in that order.
    have = len(handshake)
    if have < 1:
        raise _Short()
    if handshake[0] != HANDSHAKE_CLIENT_HELLO:
        raise _Invalid()
    if have < 4:
        raise _Short()
    hello_length = int.from_bytes(handshake[1:4], "big")
    if not _MIN_HELLO_LENGTH <= hello_length <= MAX_HELLO_LENGTH:
        raise _Invalid()
    limit = 4 + hello_length  # legacy_version, random and session_id's length fit
    if have < 6:
        raise _Short()
    legacy_version = (handshake[4] << 8) | handshake[5]
    if legacy_version >> 8 != 3:
        raise _Invalid()
    if have < 39:  # random (32 bytes), session_id's length
        raise _Short()
    pos = 39 + handshake[38]
    if pos > limit:
        raise _Invalid()
    if pos > have:
        raise _Short()
    session_id = handshake[39:pos]
    if len(session_id) > 32:
        raise _Invalid()

    # cipher_suites<2..2^16-2>
    if pos + 2 > limit:
        raise _Invalid()
    if pos + 2 > have:
        raise _Short()
    n = (handshake[pos] << 8) | handshake[pos + 1]
    start = pos + 2
    pos = start + n
    if n < 2 or pos > limit or n % 2:
        raise _Invalid()
    if pos > have:
        raise _Short()
    if whole:
        suites = _cipher_structs.get(n)
        if suites is None:
            suites = struct.Struct(f"!{n // 2}H")
            if len(_cipher_structs) < 64:  # bounded: lengths are the client's choice
                _cipher_structs[n] = suites
        cipher_suites = suites.unpack_from(handshake, start)

    # compression_methods<1..2^8-1>
    if pos + 1 > limit:
        raise _Invalid()
    if pos + 1 > have:
        raise _Short()
    start = pos + 1
    pos = start + handshake[pos]
    if pos == start or pos > limit:
        raise _Invalid()
    if pos > have:
        raise _Short()
    compression_methods = handshake[start:pos]

    found: list[Any] = []  # (type, body) of each extension, or just the types
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = (legacy_version,)
    # Hellos without extensions (SSL 3.0 era) simply end here.
    if pos < limit:
        # extensions<8..2^16-1>, filling the rest of the hello exactly
        if pos + 2 > limit:
            raise _Invalid()
        if pos + 2 > have:
            raise _Short()
        start = pos + 2
        end = start + ((handshake[pos] << 8) | handshake[pos + 1])
        if end != limit:
            raise _Invalid()
        if end > have:
            raise _Short()
        # The block is all here, so from now on anything amiss is _Invalid,
        # whichever check finds it first.
        pos = start
        add = found.append
        while pos + 4 <= end:
            ext_type, ext_length = _EXTENSION_HEADER(handshake, pos)
            start = pos + 4
            pos = start + ext_length
            # An extension overrunning the block is caught below (pos != end);
            # whatever its parser makes of the overrun is thrown away then.
            add((ext_type, handshake[start:pos]) if whole else ext_type)
            if ext_type in _READ_EXTENSIONS:
                ext_data = handshake[start:pos]
                if ext_type == EXT_SERVER_NAME:
                    sni = _parse_server_name(ext_data)
                elif ext_type == EXT_ALPN:
                    alpn = _parse_alpn(ext_data)
                else:
                    versions = _parse_supported_versions(ext_data) or versions
        if pos != end:
            raise _Invalid()  # a partial extension header, or an overrun
        if len(dict(found) if whole else set(found)) != len(found):
            raise _Invalid()  # RFC 8446 4.2: at most one of each type

    if not whole:
        return sni, alpn, _highest_version(versions, legacy_version)
    # Positional, in field order: keywords cost a third of the call.
    return ClientHello(
        legacy_version,  # legacy_version
        session_id,  # session_id
        cipher_suites,  # cipher_suites
        compression_methods,  # compression_methods
        tuple(found),  # extensions
        sni,  # sni
        alpn,  # alpn
        versions,  # versions
        length,  # length
    )


def _parse(data: bytes, whole: bool) -> Union[ClientHello, Offer, Verdict]:
    try:
        handshake, length = _reassemble(data)
        if whole:
            return _parse_hello(handshake, length, True)
        return _parse_hello(handshake, length, False)
    except _Short:
        return NEED_MORE
    except _Invalid:
        return NO


# The callers answer the common non-TLS case (first byte not 0x16)
# themselves, one call sooner and without touching it, so HTTP or SSH
# openings do not replace a hello other routes still want.
_parse_cached: LastBuffer[Union[ClientHello, Offer, Verdict]] = LastBuffer(_parse, NEED_MORE)


def parse_client_hello(data: bytes | bytearray | memoryview) -> Union[ClientHello, Verdict]:
    """
    Parse the TLS ClientHello at the start of C{data}.

    @param data: every byte the client sent so far.
    @return: a L{ClientHello} once complete; L{NEED_MORE} while C{data} is
        a valid prefix of one; L{NO} when it cannot become one. Bytes after
        the hello are ignored. Never raises.
    """
    if data[:1] != b"\x16":
        return NEED_MORE if not data else NO
    # Asked for the whole hello, _parse_cached never gives an Offer.
    return cast(Union[ClientHello, Verdict], _parse_cached(data, True))


def hello_offer(data: bytes | bytearray | memoryview) -> Union[Offer, Verdict]:
    """
    The L{Offer} of the TLS ClientHello at the start of C{data}: the same
    answer as L{parse_client_hello} (same NEED_MORE and NO), with only
    what a route decides on, for less work.
    """
    if data[:1] != b"\x16":  # as in parse_client_hello
        return NEED_MORE if not data else NO
    result = _parse_cached(data, False)
    if isinstance(result, ClientHello):  # the cache's, for another route
        return result.sni, result.alpn, result.highest_version
    return result
