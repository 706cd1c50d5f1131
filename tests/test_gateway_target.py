"""The gateway target without sockets: its options, allow-list, handshake, dialing and replies."""

from __future__ import annotations

import base64
import ipaddress
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from switchyard.config import ConfigError, compile_config
from switchyard.interfaces import IConnection, IRunningTarget, OptionError
from switchyard.targets.gateway.allow import parse_allow
from switchyard.targets.gateway.crypto import Kdf, Secret, derive, encrypt, encrypt_line
from switchyard.targets.gateway.settings import compile_gateway
from switchyard.targets.gateway.target import GatewayKind, GatewayTarget
from switchyard.wire.proxy import read_header
from tests.fakes import CapturedEvents, FakeEndpoint
from tests.test_gateway_wire import README_LINE

PASSPHRASE = b"a test secret, not a real one"
SECRET = Secret(PASSPHRASE, "test")
ENV = {"GW_SECRET": PASSPHRASE.decode()}


def line(address: bytes, kdf: Kdf = Kdf.MD5, secret: Secret = SECRET) -> bytes:
    return encrypt_line(address, secret, kdf)


@implementer(IConnection)
class FakeConnection:
    """A sniffed client connection as a target sees it, recording what the target does."""

    def __init__(self, reactor: Any, data: bytes = b"", mode: str | None = "line") -> None:
        self.reactor = reactor
        self.facts: dict[str, Any] = {"gateway_mode": mode} if mode else {}
        self.client_address = IPv4Address("TCP", "192.0.2.7", 40000)
        self.local_address = IPv4Address("TCP", "127.0.0.1", 4043)
        self.buffered = data
        self.closing = False
        self.client_ended = False
        self.pending: Any = None
        self.servers: list[str] = []
        self.sent: list[bytes] = []
        self.spliced: list[tuple[Any, bytes, bytes]] = []  # peer, prefix, buffered then
        self.closed: tuple[str, str, bytes] | None = None
        self.watcher: Callable[[], None] | None = None

    # -- what the client does --

    def receive(self, data: bytes) -> None:
        self.buffered += data
        if self.watcher is not None:
            self.watcher()

    def end(self) -> None:
        self.client_ended = True
        if self.watcher is not None:
            self.watcher()

    def leave(self) -> None:
        """The client resets: the switch closes and cancels what the target waits on."""
        self.closing = True
        self.watcher = None
        if self.pending is not None:
            self.pending.cancel()

    # -- IConnection --

    def set_server(self, description: str) -> None:
        self.servers.append(description)

    def consume(self, count: int) -> bytes:
        taken, self.buffered = self.buffered[:count], self.buffered[count:]
        return taken

    def send(self, data: bytes) -> None:
        assert not self.closing and not self.spliced
        self.sent.append(data)

    def watch(self, callback: Any) -> None:
        self.watcher = callback

    def splice(self, peer: Any, prefix: bytes = b"") -> None:
        self.spliced.append((peer, prefix, self.buffered))

    def takes_socket(self) -> bool:
        return False

    def splice_socket(self, sock: Any, prefix: bytes, release: Any) -> None:
        raise AssertionError("not offered")

    def peer_data(self, data: bytes) -> None:
        pass

    def peer_eof(self) -> None:
        pass

    def peer_lost(self, reason: Any, why: str | None = None) -> None:
        pass

    def close(self, reason: str, detail: str = "", reply: bytes = b"") -> None:
        if self.closing:
            return
        self.closed = (reason, detail, reply)
        self.leave()

    def nest(self, listener: Any, transport: Any) -> Any:
        raise AssertionError("not used")


class Resolver:
    """Host names the test answers, or leaves waiting."""

    def __init__(self, answers: Mapping[str, list[str]] | None = None) -> None:
        self.answers = dict(answers or {})
        self.asked: list[str] = []

    def __call__(self, name: str) -> defer.Deferred[list[str]]:
        self.asked.append(name)
        if name in self.answers:
            return defer.succeed(self.answers[name])
        return defer.Deferred()


class Gateway:
    """A gateway target on a Clock with fake endpoints, one per address dialled."""

    def __init__(self, testcase: unittest.TestCase, resolver: Resolver | None = None,
                 in_thread: Any = None, environ: Mapping[str, str] = ENV,
                 **table: Any) -> None:
        if "secret_file" not in table:
            table.setdefault("secret_env", "GW_SECRET")
        table.setdefault("allow", ["10.0.0.0/8:7000-7999"])
        self.clock = Clock()
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.resolver = resolver or Resolver()
        self.settings = compile_gateway(table, testcase.mktemp(), environ=environ)
        self.target = GatewayTarget("games", self.settings, self.clock, resolve=self.resolver,
                                    in_thread=in_thread, endpoint_for=self.endpoint)

    def endpoint(self, ip: Any, port: int) -> FakeEndpoint:
        return self.endpoints.setdefault(f"{ip}:{port}", FakeEndpoint(f"{ip}:{port}"))

    def attempts(self) -> list[str]:
        return [name for name, ep in self.endpoints.items() for _ in ep.attempts]

    def connect(self, data: bytes, mode: str | None = "line") -> FakeConnection:
        connection = FakeConnection(self.clock, data, mode)
        self.target.attach(connection)
        return connection


class ContractTests(unittest.TestCase):
    def test_fakeConnectionIsAnIConnection(self) -> None:
        self.assertTrue(verifyObject(IConnection, FakeConnection(Clock())))

    def test_targetIsARunningTarget(self) -> None:
        self.assertTrue(verifyObject(IRunningTarget, Gateway(self).target))


# -- options ----------------------------------------------------------------


class OptionTests(unittest.TestCase):
    def compile(self, **table: Any) -> Any:
        if "secret_file" not in table:
            table.setdefault("secret_env", "GW_SECRET")
        table.setdefault("allow", "10.0.0.0/8:7000")
        return compile_gateway(table, self.mktemp(), environ=ENV)

    def assertOptionError(self, key: str, problem: str, **table: Any) -> OptionError:
        with self.assertRaises(OptionError) as caught:
            self.compile(**table)
        self.assertEqual(caught.exception.key, key)
        self.assertIn(problem, caught.exception.problem)
        return caught.exception

    def test_defaultsFollowTheDialect(self) -> None:
        huang = self.compile()
        self.assertEqual((huang.retry, huang.timeout, huang.handshake_timeout, huang.line_limit,
                          huang.header_limit, huang.proxy_protocol, huang.keyring.kdf),
                         (1, 3.0, 10.0, 65, 8192, None, Kdf.MD5))
        frontd = self.compile(dialect="frontd")
        self.assertEqual((frontd.timeout, frontd.handshake_timeout, frontd.line_limit),
                         (5.0, 30.0, 4096))

    def test_everyOption(self) -> None:
        settings = self.compile(dialect="frontd", kdf="pbkdf2", iterations=2000,
                                allow=["10.0.0.0/8:7000-7999", "[2001:db8::/48]:443,8443"],
                                retry=3, timeout=0.5, handshake_timeout=2, line_limit=128,
                                header_limit=4096, proxy_protocol="v2", cache_size=0)
        self.assertEqual((settings.retry, settings.timeout, settings.handshake_timeout,
                          settings.line_limit, settings.header_limit, settings.proxy_protocol),
                         (3, 0.5, 2.0, 128, 4096, "v2"))
        keyring = settings.keyring
        self.assertEqual((keyring.kdf, keyring.iterations, keyring.cache_size),
                         (Kdf.PBKDF2, 2000, 0))

    def test_allowIsRequired(self) -> None:
        with self.assertRaises(OptionError) as caught:
            compile_gateway({"secret_env": "GW_SECRET"}, ".", environ=ENV)
        self.assertEqual(caught.exception.key, "allow")
        self.assertIn("required", caught.exception.problem)

    def test_aSecretIsRequiredAndNeverInTheConfigText(self) -> None:
        with self.assertRaises(OptionError) as caught:
            compile_gateway({"allow": "10.0.0.0/8:1"}, ".", environ=ENV)
        self.assertEqual(caught.exception.key, "secret_file")
        e = self.assertOptionError("secret", "never goes in the config text",
                                   secret="hunter2-in-the-config")
        self.assertNotIn("hunter2", str(e))

    def test_secretsFromFilesRelativeToTheConfigAndFromTheEnvironment(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        for name, value in (("old.secret", b"old one\n"), ("new.secret", b"new one")):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(value)
        settings = compile_gateway({"secret_file": ["new.secret", "old.secret"],
                                    "secret_env": "GW_SECRET", "allow": "10.0.0.0/8:1"},
                                   folder, environ=ENV)
        self.assertEqual([s.reveal() for s in settings.keyring.secrets],
                         [b"new one", b"old one", PASSPHRASE])
        self.assertEqual(settings.sources.files[0], os.path.join(os.path.abspath(folder),
                                                                 "new.secret"))

    def test_secretProblemsNameTheSourceNeverTheSecret(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "two.secret"), "wb") as f:
            f.write(b"first-line-secret\nsecond-line-secret\n")
        e = self.assertOptionError("secret_file", "more than one line",
                                   secret_file=os.path.join(folder, "two.secret"))
        self.assertNotIn("line-secret", str(e))
        self.assertOptionError("secret_file", "cannot read it",
                               secret_file=os.path.join(folder, "missing"))
        self.assertOptionError("secret_env", "GW_OTHER: is not set", secret_env="GW_OTHER")

    def test_badValuesAreNamed(self) -> None:
        self.assertOptionError("dialect", "must be one of", dialect="funny")
        self.assertOptionError("kdf", "must be one of", kdf="sha1")
        self.assertOptionError("iterations", 'without kdf = "pbkdf2"', iterations=5)
        self.assertOptionError("retry", "between 1 and", retry=0)
        self.assertOptionError("timeout", "greater than 0", timeout=0)
        self.assertOptionError("line_limit", "between 45 and", line_limit=44)
        self.assertOptionError("proxy_protocol", "must be one of", proxy_protocol="v3")
        self.assertOptionError("secrets_file", "unknown option", secrets_file="x")

    def test_badAllowEntriesAreNamed(self) -> None:
        for entry, problem in (
            ("10.0.0.0/8", "the ports are missing"),
            ("10.0.0.0/8:0", "not a port"),
            ("10.0.0.0/8:9-2", "not a port"),
            ("10.0.0.0/33:80", "not an IP network"),
            ("example.com:80", "not an IP network"),
            ("2001:db8::/32:443", "brackets"),
            ("[10.0.0.0/8]:80", "IPv6 networks only"),
            ("[2001:db8::/32]443", "expected '[IPV6NETWORK]:PORTS'"),
        ):
            self.assertOptionError("allow", problem, allow=[entry])
        self.assertOptionError("allow", "expected a list", allow=[])


class AllowListTests(unittest.TestCase):
    def test_networksAndPorts(self) -> None:
        allow = parse_allow("allow", ["10.0.0.0/8:7000-7999,22", "192.0.2.10:*",
                                      "[2001:db8::/48]:443"])
        ip = ipaddress.ip_address
        self.assertTrue(allow.permits(ip("10.1.2.3"), 7500))
        self.assertTrue(allow.permits(ip("10.1.2.3"), 22))
        self.assertFalse(allow.permits(ip("10.1.2.3"), 8000))
        self.assertFalse(allow.permits(ip("11.0.0.1"), 7500))
        self.assertTrue(allow.permits(ip("192.0.2.10"), 1))
        self.assertFalse(allow.permits(ip("192.0.2.11"), 1))
        self.assertTrue(allow.permits(ip("2001:db8::5"), 443))
        self.assertFalse(allow.permits(ip("2001:db9::5"), 443))
        self.assertEqual(allow.allowed([ip("11.0.0.1"), ip("10.0.0.1"), ip("10.0.0.1")], 22),
                         [ip("10.0.0.1")])


# -- the handshake ------------------------------------------------------------


class HandshakeTests(unittest.TestCase):
    def test_lineThenBytesAfterItRelayedAfter200(self) -> None:
        gw = Gateway(self)
        connection = gw.connect(line(b"10.0.0.5:7000") + b"\nhello")
        self.assertEqual(gw.attempts(), ["10.0.0.5:7000"])
        self.assertEqual(connection.servers[-1], "gw:10.0.0.5:7000")
        self.assertEqual(connection.sent, [])  # nothing before the backend answers
        gw.endpoints["10.0.0.5:7000"].accept()
        self.assertEqual(connection.sent, [b"200"])
        [(_, prefix, rest)] = connection.spliced
        self.assertEqual((prefix, rest), (b"", b"hello"))
        self.assertIsNone(connection.pending)

    def test_lineInPiecesIsAwaited(self) -> None:
        gw = Gateway(self)
        data = line(b"10.0.0.5:7000") + b"\n"
        connection = gw.connect(data[:12])
        connection.receive(data[12:30])
        self.assertEqual(gw.attempts(), [])
        connection.receive(data[30:] + b"more")
        self.assertEqual(gw.attempts(), ["10.0.0.5:7000"])
        self.assertIsNone(connection.watcher)
        self.assertEqual(connection.buffered, b"more")

    def test_frontdIsSilentOnSuccess(self) -> None:
        gw = Gateway(self, dialect="frontd")
        connection = gw.connect(line(b"10.0.0.5:7000") + b"\n")
        gw.endpoints["10.0.0.5:7000"].accept()
        self.assertEqual((connection.sent, len(connection.spliced)), ([], 1))

    def test_binaryOpening(self) -> None:
        gw = Gateway(self)
        blob = encrypt(b"10.0.0.5:7000", SECRET)
        connection = gw.connect(b"\x00" + bytes([len(blob)]) + blob + b"rest", mode="binary")
        gw.endpoints["10.0.0.5:7000"].accept()
        self.assertEqual(connection.sent, [b"200"])
        self.assertEqual(connection.spliced[0][2], b"rest")

    def test_httpHeadRewrittenAfterTheProxyHeader(self) -> None:
        gw = Gateway(self, proxy_protocol="v1")
        head = (b"POST /x HTTP/1.1\r\nHost: game\r\nX-Cipher-Origin: " + line(b"10.0.0.5:7000")
                + b"\r\nX-Forwarded-For: 10.1.1.1\r\nContent-Length: 4\r\n\r\n")
        connection = gw.connect(head + b"body", mode="http")
        gw.endpoints["10.0.0.5:7000"].accept()
        self.assertEqual(connection.sent, [])  # the backend's response is the answer
        [(_, prefix, rest)] = connection.spliced
        header = read_header(prefix)
        assert header is not None
        source, _, length = header
        self.assertEqual(source.host, "192.0.2.7")
        self.assertEqual(prefix[length:], b"POST /x HTTP/1.1\r\nHost: game\r\n"
                         b"Content-Length: 4\r\nX-Forwarded-For: 10.1.1.1, 192.0.2.7\r\n\r\n")
        self.assertEqual(rest, b"body")

    def test_overlongLineGets400Or4104(self) -> None:
        for dialect, code in (("huangkunbin", b"400"), ("frontd", b"4104")):
            gw = Gateway(self, dialect=dialect)
            connection = gw.connect(b"U2FsdGVkX1+" + b"A" * 4990)
            assert connection.closed is not None
            self.assertEqual(connection.closed[0], "gateway_bad_line")
            self.assertEqual(connection.closed[2], code)
            self.assertIn("no newline within line_limit", connection.closed[1])
        # 4096 bytes with the newline still fit frontd's limit.
        gw = Gateway(self, dialect="frontd")
        connection = gw.connect(b"U2FsdGVkX1+" + b"A" * 4084 + b"\n")
        assert connection.closed is not None
        self.assertEqual(connection.closed[:1], ("gateway_undecryptable",))

    def test_handshakeTimeoutRepliesWithTheModesReadError(self) -> None:
        for dialect, data, mode, code in (
            ("huangkunbin", b"U2FsdGVkX1+abc", "line", b"400"),
            ("frontd", b"U2FsdGVkX1+abc", "line", b"4104"),
            ("frontd", b"\x00\x30Salted__", "binary", b"4109"),
            ("frontd", b"GET / HTTP/1.1\r\nX-Cipher-Origin: x\r\n", "http",
             b"HTTP/1.1 4107 Error\nConnection: Close"),
        ):
            gw = Gateway(self, dialect=dialect, handshake_timeout=2)
            connection = gw.connect(data, mode)
            gw.clock.advance(1.9)
            self.assertIsNone(connection.closed)
            gw.clock.advance(0.1)
            assert connection.closed is not None
            self.assertEqual(connection.closed[0], "gateway_bad_line")
            self.assertEqual(connection.closed[2], code, (dialect, mode))
            self.assertIn("handshake_timeout 2s", connection.closed[1])

    def test_endOfStreamInsideTheLine(self) -> None:
        gw = Gateway(self)
        connection = gw.connect(b"U2FsdGVkX1+abc")
        connection.end()
        assert connection.closed is not None
        self.assertEqual(connection.closed[0::2], ("gateway_bad_line", b"400"))

    def test_clientLeavingStopsTheHandshakeTimer(self) -> None:
        gw = Gateway(self, handshake_timeout=2)
        connection = gw.connect(b"U2FsdGVkX1+abc")
        connection.leave()
        self.assertEqual(gw.clock.getDelayedCalls(), [])
        self.assertIsNone(connection.closed)

    def test_afterAnotherMatcherAnythingElseIsABadLine(self) -> None:
        gw = Gateway(self)
        connection = gw.connect(b"hello\n", mode=None)
        assert connection.closed is not None
        self.assertEqual(connection.closed[0::2], ("gateway_bad_line", b"400"))
        # ... and a head without the header within header_limit, after the gateway matcher.
        gw = Gateway(self, header_limit=256)
        connection = gw.connect(b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * 300 + b"\r\n", "http")
        assert connection.closed is not None
        self.assertEqual(connection.closed[0::2], ("gateway_bad_line", b"400"))


class DecryptionTests(unittest.TestCase):
    def test_wrongSecretTruncatedBadPaddingNotAddressAllGetOneReply(self) -> None:
        key, iv = derive(PASSPHRASE, b"saltsalt", Kdf.MD5)

        def raw(padded: bytes) -> bytes:
            """A line whose padding is what the test says, right or wrong."""
            enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            return base64.b64encode(b"Salted__saltsalt" + enc.update(padded) + enc.finalize())

        cases = {
            "wrong secret": line(b"10.0.0.5:7000", secret=Secret(b"other", "other")),
            "truncated base64": line(b"10.0.0.5:7000")[:-2],
            "bad padding": raw(b"10.0.0.5:7000" + b"\x00\x00\x00"),
            "not an address": raw(b"10.0.0.5:7000\n" + b"\x02\x02"),
            "kdf": line(b"10.0.0.5:7000", Kdf.SHA256),
        }
        for dialect, code in (("huangkunbin", b"401"), ("frontd", b"4106")):
            for what, bad in cases.items():
                gw = Gateway(self, dialect=dialect)
                connection = gw.connect(bad + b"\n")
                assert connection.closed is not None, what
                self.assertEqual(connection.closed[0::2], ("gateway_undecryptable", code), what)
                self.assertEqual(gw.attempts(), [])

    def test_outsideAllowIsAnsweredLikeUndecryptable(self) -> None:
        for dialect, code in (("huangkunbin", b"401"), ("frontd", b"4106")):
            gw = Gateway(self, dialect=dialect)
            connection = gw.connect(line(b"10.0.0.5:22") + b"\n")
            assert connection.closed is not None
            self.assertEqual(connection.closed[0::2], ("gateway_denied", code))
            self.assertIn("10.0.0.5:22 is outside allow", connection.closed[1])
            self.assertEqual(gw.attempts(), [])

    def test_readmeLineOpensWithTheReadmeSecret(self) -> None:
        gw = Gateway(self, secret_env="README", allow="127.0.0.1:62863",
                     environ={"README": "p0S8rX680*48"})
        gw.connect(README_LINE + b"\n")
        self.assertEqual(gw.attempts(), ["127.0.0.1:62863"])

    def test_ipv4MappedAddressIsCheckedAndDialledAsIpv4(self) -> None:
        gw = Gateway(self)
        gw.connect(line(b"[::ffff:10.0.0.5]:7000") + b"\n")
        self.assertEqual(gw.attempts(), ["10.0.0.5:7000"])

    def test_pbkdf2RunsInAThreadAndTheCacheOnTheReactorThread(self) -> None:
        ran: list[int] = []

        def in_thread(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            def work() -> Any:
                ran.append(threading.get_ident())
                return f(*args)

            return threads.deferToThread(work)

        gw = Gateway(self, in_thread=in_thread, kdf="pbkdf2")
        data = line(b"10.0.0.5:7000", Kdf.PBKDF2) + b"\n"
        connection = gw.connect(data)
        self.assertIsInstance(connection.pending, defer.Deferred)
        done = connection.pending

        def check(_: Any) -> None:
            self.assertEqual(len(ran), 1)
            self.assertNotEqual(ran[0], threading.get_ident())
            self.assertEqual(gw.attempts(), ["10.0.0.5:7000"])
            # The same line again: answered from the cache, no thread.
            gw.connect(data)
            self.assertEqual(len(ran), 1)
            self.assertEqual(gw.attempts(), ["10.0.0.5:7000"] * 2)

        return done.addBoth(lambda _: None).addCallback(check)

    def test_clientLeavingDuringTheThreadsWorkIsQuiet(self) -> None:
        waiting: defer.Deferred[Any] = defer.Deferred()
        gw = Gateway(self, in_thread=lambda f, *a: waiting, kdf="pbkdf2")
        connection = gw.connect(line(b"10.0.0.5:7000", Kdf.PBKDF2) + b"\n")
        connection.leave()
        self.assertIsNone(connection.closed)
        self.assertEqual(gw.attempts(), [])


class ResolutionTests(unittest.TestCase):
    def test_onlyAllowedAddressesOfANameAreDialled(self) -> None:
        resolver = Resolver({"game.internal": ["192.0.2.1", "10.0.0.6", "10.0.0.7"]})
        gw = Gateway(self, resolver=resolver)
        connection = gw.connect(line(b"game.internal:7000") + b"\n")
        self.assertEqual(resolver.asked, ["game.internal"])
        self.assertEqual(gw.attempts(), ["10.0.0.6:7000"])
        self.assertEqual(connection.servers[-1], "gw:game.internal:7000(10.0.0.6)")

    def test_nameOutsideAllowIsDenied(self) -> None:
        gw = Gateway(self, resolver=Resolver({"evil.example": ["192.0.2.1"]}))
        connection = gw.connect(line(b"evil.example:7000") + b"\n")
        assert connection.closed is not None
        self.assertEqual(connection.closed[0::2], ("gateway_denied", b"401"))
        self.assertIn("evil.example:7000 (192.0.2.1) is outside allow", connection.closed[1])

    def test_unknownNameIsAConnectFailure(self) -> None:
        gw = Gateway(self, resolver=Resolver({"gone.internal": []}))
        connection = gw.connect(line(b"gone.internal:7000") + b"\n")
        assert connection.closed is not None
        self.assertEqual(connection.closed[0::2], ("gateway_refused", b"502"))

    def test_slowResolutionTimesOut(self) -> None:
        gw = Gateway(self, timeout=1, dialect="frontd")
        connection = gw.connect(line(b"slow.internal:7000") + b"\n")
        gw.clock.advance(1)
        assert connection.closed is not None
        self.assertEqual(connection.closed[0::2], ("gateway_timeout", b"4101"))


class DialTests(unittest.TestCase):
    def test_timeoutsAreRetriedUpToRetryThen504(self) -> None:
        gw = Gateway(self, retry=3, timeout=0.5)
        connection = gw.connect(line(b"10.0.0.5:7000") + b"\n")
        for attempt in (1, 2, 3):
            self.assertEqual(len(gw.attempts()), attempt)
            gw.clock.advance(0.5)
        assert connection.closed is not None
        self.assertEqual(connection.closed[0::2], ("gateway_timeout", b"504"))
        self.assertEqual(connection.closed[1].count("timed out after 0.5s"), 3)

    def test_aTimeoutThenSuccess(self) -> None:
        gw = Gateway(self, retry=2, timeout=0.5)
        connection = gw.connect(line(b"10.0.0.5:7000") + b"\n")
        gw.clock.advance(0.5)
        gw.endpoints["10.0.0.5:7000"].accept()
        self.assertEqual((connection.sent, connection.closed), ([b"200"], None))

    def test_refusalIsAnsweredAtOnce(self) -> None:
        for dialect, code in (("huangkunbin", b"502"), ("frontd", b"4102")):
            gw = Gateway(self, retry=3, dialect=dialect)
            connection = gw.connect(line(b"10.0.0.5:7000") + b"\n")
            gw.endpoints["10.0.0.5:7000"].refuse()
            assert connection.closed is not None
            self.assertEqual(connection.closed[0::2], ("gateway_refused", code))
            self.assertEqual(len(gw.attempts()), 1)

    def test_retriesGoRoundTheAllowedAddresses(self) -> None:
        resolver = Resolver({"game.internal": ["10.0.0.6", "10.0.0.7"]})
        gw = Gateway(self, resolver=resolver, retry=3, timeout=1)
        gw.connect(line(b"game.internal:7000") + b"\n")
        gw.clock.advance(1)
        gw.clock.advance(1)
        self.assertEqual(gw.attempts(), ["10.0.0.6:7000", "10.0.0.6:7000", "10.0.0.7:7000"])

    def test_clientLeavingCancelsTheConnect(self) -> None:
        gw = Gateway(self)
        connection = gw.connect(line(b"10.0.0.5:7000") + b"\n")
        connection.leave()
        [(_, attempt)] = gw.endpoints["10.0.0.5:7000"].attempts
        self.assertTrue(attempt.called)
        self.assertIsNone(connection.closed)


class RunningTests(unittest.TestCase):
    def test_describeNamesSourcesNeverSecrets(self) -> None:
        text = "\n".join(Gateway(self).target.describe())
        self.assertIn("environment variable GW_SECRET", text)
        self.assertIn("allow 10.0.0.0/8:7000-7999", text)
        self.assertNotIn(PASSPHRASE.decode(), text)

    def test_hangupRereadsTheSecretFiles(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "gw.secret")
        with open(path, "w") as f:
            f.write("first secret\n")
        gw = Gateway(self, secret_file=path)
        first = line(b"10.0.0.5:7000", secret=Secret(b"first secret", "f"))
        second = line(b"10.0.0.5:7001", secret=Secret(b"second secret", "s"))
        with open(path, "w") as f:
            f.write("second secret\n")
        gw.connect(first + b"\n")  # not re-read yet
        gw.target.hangup()
        self.assertEqual(gw.connect(first + b"\n").closed,
                         ("gateway_undecryptable",
                          "no secret opens it to an address (wrong secret, kdf or padding); "
                          "replied 401", b"401"))
        gw.connect(second + b"\n")
        self.assertEqual(gw.attempts(), ["10.0.0.5:7000", "10.0.0.5:7001"])

    def test_hangupKeepsTheOldSecretsWhenTheFileIsBad(self) -> None:
        events = CapturedEvents(self, "switchyard.gateway")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "gw.secret")
        with open(path, "w") as f:
            f.write("first secret\n")
        gw = Gateway(self, secret_file=path)
        with open(path, "w") as f:
            f.write("")
        gw.target.hangup()
        gw.connect(line(b"10.0.0.5:7000", secret=Secret(b"first secret", "f")) + b"\n")
        self.assertEqual(gw.attempts(), ["10.0.0.5:7000"])
        [event] = [e for e in events.events if e.get("log_level").name == "error"]
        self.assertEqual(event["problem"], f"secret file {path}: is empty")

    def test_kindCompilesFromTheConfig(self) -> None:
        os.environ["SWITCHYARD_TEST_GW_SECRET"] = "not a real secret"
        self.addCleanup(os.environ.pop, "SWITCHYARD_TEST_GW_SECRET", None)
        games = {"secret_env": "SWITCHYARD_TEST_GW_SECRET", "allow": "10.0.0.0/8:1"}
        raw = {"listener": {"l": {"listen": "tcp:0", "route": [{"match": "gateway",
                                                                "modes": ["line"],
                                                                "to": "games"}]}},
               "gateway": {"games": games}}
        config = compile_config(raw, Clock())
        self.assertIsInstance(config.targets["games"], GatewayTarget)
        self.assertEqual(config.listeners[0].routes[0].target.name, "games")
        del games["allow"]
        with self.assertRaises(ConfigError) as caught:
            compile_config(raw, Clock())
        self.assertEqual(caught.exception.key, "gateway.games.allow")
        self.assertEqual(GatewayKind.section, "gateway")


class MetricsTests(unittest.TestCase):
    def test_repliesAreCountedInTheProcessRegistry(self) -> None:
        from prometheus_client import generate_latest

        from switchyard.app.service import Runtime
        from switchyard.observe.metrics_export import Metrics

        metrics = Metrics(process_collectors=False)
        gw = Gateway(self)
        gw.target.start(Runtime(gw.clock, metrics=metrics))
        for _ in range(2):
            gw.connect(line(b"10.0.0.5:22") + b"\n")  # outside allow: 401
        gw.connect(b"U2FsdGVkX1" + b"A" * 70)  # no newline within the line limit: 400
        text = generate_latest(metrics.registry).decode()
        self.assertIn('switchyard_gateway_replies_total{gateway="games",reply="401"} 2.0', text)
        self.assertIn('switchyard_gateway_replies_total{gateway="games",reply="400"} 1.0', text)
        # A reload compiles a new target: it counts on in the same series.
        again = Gateway(self)
        again.target.start(Runtime(again.clock, metrics=metrics))
        again.connect(line(b"10.0.0.5:22") + b"\n")
        text = generate_latest(metrics.registry).decode()
        self.assertIn('switchyard_gateway_replies_total{gateway="games",reply="401"} 3.0', text)
