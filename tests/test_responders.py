"""The redirect responder and reject's HTTP status: responses built, options checked."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from switchyard.config import compile_config
from switchyard.interfaces import OptionError
from switchyard.listener import ListenerBooks
from switchyard.targets.responders import (
    BUILTIN_RESPONDERS,
    MAX_REQUEST_HEAD,
    RedirectTarget,
    compile_responder,
    http_response,
)
from switchyard.wire.http import RequestHead, parse_request_head
from tests.fakes import CapturedEvents, FakeConnection, connect


def head_of(data: bytes) -> RequestHead:
    head = parse_request_head(data)
    assert isinstance(head, RequestHead), head
    return head


def get(target: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def compiled(name: str, table: dict[str, Any]) -> Any:
    """compile_responder's target, typed loosely: tests read its attributes."""
    return compile_responder(name, table)


def answer(target: RedirectTarget, data: bytes) -> tuple[str, str, bytes]:
    connection = FakeConnection(buffered=data)
    target.attach(connection)
    assert connection.closed is not None, "no answer"
    return (*connection.closed, connection.reply)


class LocationTests(unittest.TestCase):
    """Where the redirect points, for the request heads clients send."""

    def location(self, data: bytes, **options: Any) -> str | None:
        return RedirectTarget(**options).location(head_of(data))

    def test_hostAndPathKept(self) -> None:
        self.assertEqual(self.location(get("/a/b.html", "Host: example.com")),
                         "https://example.com/a/b.html")

    def test_queryKeptByteForByte(self) -> None:
        self.assertEqual(self.location(get("/s?q=a%20b&x=1&y", "Host: example.com")),
                         "https://example.com/s?q=a%20b&x=1&y")

    def test_requestPortDropped(self) -> None:
        # The port the client used was the plain-HTTP one: keeping it would
        # send TLS to the HTTP port.
        self.assertEqual(self.location(get("/", "Host: example.com:8080")),
                         "https://example.com/")

    def test_configuredPortAdded(self) -> None:
        self.assertEqual(self.location(get("/p", "Host: example.com:8080"), port=8443),
                         "https://example.com:8443/p")

    def test_defaultPortOfSchemeLeftOut(self) -> None:
        self.assertEqual(self.location(get("/p", "Host: example.com"), port=443),
                         "https://example.com/p")
        self.assertEqual(self.location(get("/p", "Host: example.com"), scheme="http", port=80),
                         "http://example.com/p")
        self.assertEqual(self.location(get("/p", "Host: example.com"), scheme="http", port=443),
                         "http://example.com:443/p")

    def test_ipv6HostKeepsItsBrackets(self) -> None:
        self.assertEqual(self.location(get("/p?x", "Host: [::1]:8080")), "https://[::1]/p?x")
        self.assertEqual(self.location(get("/p", "Host: [2001:db8::7]"), port=8443),
                         "https://[2001:db8::7]:8443/p")

    def test_configuredHostReplacesTheRequests(self) -> None:
        # Envoy's host_redirect, as in the seed article's config.
        self.assertEqual(self.location(get("/p?q", "Host: live.example.com"),
                                       host="www.example.com"), "https://www.example.com/p?q")
        self.assertEqual(self.location(get("/", "Host: a"), host="::1", port=8443),
                         "https://[::1]:8443/")
        self.assertEqual(self.location(get("/", version="1.0"), host="www.example.com"),
                         "https://www.example.com/")

    def test_ipv4Host(self) -> None:
        self.assertEqual(self.location(get("/", "Host: 192.0.2.1:80")), "https://192.0.2.1/")

    def test_absoluteFormTargetWinsOverHostHeader(self) -> None:
        # RFC 9112 3.2.2: the target's authority is the host.
        self.assertEqual(
            self.location(get("http://a.example.com:81/p/q?x=1", "Host: b.example.com")),
            "https://a.example.com/p/q?x=1")
        self.assertEqual(self.location(get("http://a.example.com", "Host: a.example.com")),
                         "https://a.example.com/")

    def test_rawUtf8PathGoesBackUnchanged(self) -> None:
        data = "GET /caf\u00e9 HTTP/1.1\r\nHost: example.com\r\n\r\n".encode()
        reason, _, reply = answer(RedirectTarget(), data)
        self.assertEqual(reason, "redirected")
        self.assertIn(b"Location: https://example.com/caf\xc3\xa9\r\n", reply)

    def test_noUsableHostIsNone(self) -> None:
        for data in [get("/", version="1.0"), get("/", "Host: a", "Host: b"),
                     get("/", "Host: "), get("/", "Host: bad host")]:
            self.assertIsNone(self.location(data), data)

    def test_targetsThatAreNotPathsAreNone(self) -> None:
        self.assertIsNone(self.location(get("a.example.com:443", "Host: a.example.com",
                                            method="CONNECT")))
        self.assertIsNone(self.location(get("*", "Host: a.example.com", method="OPTIONS")))


class RedirectAnswerTests(unittest.TestCase):
    """The bytes written and the reason logged, given the buffered opening."""

    def test_movedPermanentlyByDefault(self) -> None:
        reason, detail, reply = answer(RedirectTarget(), get("/a?b=1", "Host: example.com"))
        self.assertEqual(reply, b"HTTP/1.1 301 Moved Permanently\r\n"
                                b"Location: https://example.com/a?b=1\r\n"
                                b"Connection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((reason, detail), ("redirected", "301 https://example.com/a?b=1"))

    def test_permanentRedirectKeepsTheMethod(self) -> None:
        _, _, reply = answer(RedirectTarget(status=308), get("/f", "Host: e.com", method="POST"))
        self.assertTrue(reply.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n"), reply)

    def test_missingHostIsBadRequest(self) -> None:
        reason, detail, reply = answer(RedirectTarget(), get("/", version="1.0"))
        self.assertEqual(reason, "bad_request")
        self.assertIn("host", detail)
        self.assertEqual(reply, b"HTTP/1.1 400 Bad Request\r\n"
                                b"Connection: close\r\nContent-Length: 0\r\n\r\n")

    def test_notHttpIsBadRequest(self) -> None:
        for data in [b"\x16\x03\x01\x00\x05hello", b"SSH-2.0-x\r\n", b"GET / HTTP/2.0\r\n\r\n"]:
            reason, _, reply = answer(RedirectTarget(), data)
            self.assertEqual(reason, "bad_request", data)
            self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), data)

    def test_bodyAfterTheHeadIsIgnored(self) -> None:
        data = get("/form", "Host: e.com", "Content-Length: 3", method="POST") + b"a=1"
        self.assertEqual(answer(RedirectTarget(), data)[0], "redirected")

    def test_longTargetIsCutInTheLogNotInTheLocation(self) -> None:
        target = "/" + "x" * 1000
        _, detail, reply = answer(RedirectTarget(), get(target, "Host: e.com"))
        self.assertLessEqual(len(detail), 200)
        self.assertIn(f"Location: https://e.com{target}\r\n".encode(), reply)

    def test_incompleteHeadWaitsForTheRest(self) -> None:
        connection = FakeConnection(buffered=b"GET /a HTTP/1.1\r\nHost: e.c")
        RedirectTarget().attach(connection)
        self.assertIsNone(connection.closed)
        [(peer, prefix)] = connection.spliced
        self.assertEqual(prefix, b"")
        # The switch writes the opening and then everything that follows.
        peer.write(connection.buffered)
        self.assertIsNone(connection.closed)
        peer.write(b"om\r\n\r\n")
        assert connection.closed is not None
        self.assertEqual(connection.closed[1], "301 https://e.com/a")

    def test_oversizedHeadIsBadRequestAtOnce(self) -> None:
        data = get("/", "Host: e.com", "X: " + "y" * MAX_REQUEST_HEAD)[:-2]
        reason, _, _ = answer(RedirectTarget(), data)
        self.assertEqual(reason, "bad_request")


class HttpResponseTests(unittest.TestCase):
    def test_unregisteredStatusHasAnEmptyReasonPhrase(self) -> None:
        self.assertTrue(http_response(499).startswith(b"HTTP/1.1 499 \r\n"))

    def test_extraHeadersComeBeforeConnectionClose(self) -> None:
        self.assertEqual(http_response(302, [("Location", "/x")]),
                         b"HTTP/1.1 302 Found\r\nLocation: /x\r\n"
                         b"Connection: close\r\nContent-Length: 0\r\n\r\n")


class ResponderOptionTests(unittest.TestCase):
    """[responder.NAME] tables of kind redirect, and reject's status."""

    def test_rejectStatusIsAMinimalResponse(self) -> None:
        target = compiled("deny", {"kind": "reject", "status": 403})
        self.assertEqual(target.reply, b"HTTP/1.1 403 Forbidden\r\n"
                                       b"Connection: close\r\nContent-Length: 0\r\n\r\n")

    def test_rejectStatusAndReplyExcludeEachOther(self) -> None:
        e = self.assertRaises(OptionError, compile_responder, "deny",
                              {"kind": "reject", "status": 403, "reply": "x"})
        self.assertEqual(e.key, "status")

    def test_rejectStatusMustBeAnErrorStatus(self) -> None:
        for bad in [200, 302, 600, "403", True]:
            e = self.assertRaises(OptionError, compile_responder, "deny",
                                  {"kind": "reject", "status": bad})
            self.assertEqual(e.key, "status")

    def test_rejectReplyStillWorks(self) -> None:
        target = compiled("deny", {"kind": "reject", "reply": "no\n"})
        self.assertEqual(target.reply, b"no\n")

    def test_redirectDefaults(self) -> None:
        target = compiled("to_https", {"kind": "redirect"})
        self.assertEqual(target, RedirectTarget(name="to_https", status=301, scheme="https"))

    def test_redirectOptions(self) -> None:
        target = compiled("r", {"kind": "redirect", "status": 308, "scheme": "wss", "port": 8443})
        self.assertEqual((target.status, target.scheme, target.port), (308, "wss", 8443))

    def test_redirectHostOption(self) -> None:
        for value, stored in [("www.example.com", "www.example.com"), ("192.0.2.1", "192.0.2.1"),
                              ("[2001:db8::1]", "2001:db8::1")]:
            target = compiled("r", {"kind": "redirect", "host": value})
            self.assertEqual(target.host, stored)
        for bad in ["www.example.com:443", "2001:db8::1", "[www.example.com]", "a b", "",
                    "https://x", "[::1]:443"]:
            e = self.assertRaises(OptionError, compile_responder, "r",
                                  {"kind": "redirect", "host": bad})
            self.assertEqual(e.key, "host")

    def test_redirectBadOptionsNameTheKey(self) -> None:
        for key, value, problem in [("status", 200, "301, 302, 303, 307, 308"),
                                    ("status", "301", "integer"),
                                    ("scheme", "HTTPS", "lowercase URI scheme"),
                                    ("scheme", "https://", "URI scheme"),
                                    ("port", 0, "between 1 and 65535"),
                                    ("port", "443", "integer"),
                                    ("location", "x", "unknown option")]:
            e = self.assertRaises(OptionError, compile_responder, "r",
                                  {"kind": "redirect", key: value})
            self.assertEqual(e.key, key)
            self.assertIn(problem, e.problem)

    def test_unknownKindListsRedirect(self) -> None:
        e = self.assertRaises(OptionError, compile_responder, "x", {"kind": "teapot"})
        self.assertIn("redirect", e.problem)

    def test_redirectIsABuiltInTarget(self) -> None:
        self.assertEqual(BUILTIN_RESPONDERS["redirect"], RedirectTarget())


class ThroughTheSwitchTests(unittest.TestCase):
    """The redirect behind the real switch and http matcher, over a memory transport."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = CapturedEvents(self)
        config = compile_config({
            "listener": {"public": {"listen": "tcp:0", "route": [
                {"name": "web", "match": "http", "to": "to_https"}]}},
            "responder": {"to_https": {"kind": "redirect", "status": 308, "port": 8443}},
        }, self.reactor)
        self.factory = ListenerBooks(config.listeners[0], self.reactor)

    def finish(self, proto: Any) -> dict[str, Any]:
        proto.connectionLost(Failure(error.ConnectionDone()))
        [event] = self.log.events
        return event

    def test_requestInOneSegment(self) -> None:
        proto, transport = connect(self.factory)
        proto.dataReceived(get("/a?b", "Host: example.com"))
        self.assertIn(b"\r\nLocation: https://example.com:8443/a?b\r\n", transport.value())
        self.assertTrue(transport.disconnecting)
        event = self.finish(proto)
        self.assertEqual((event["route"], event["server"], event["reason"]),
                         ("web", "to_https", "redirected"))
        self.assertEqual(event["bytes_out"], len(transport.value()))

    def test_headArrivingAfterTheRequestLineMatched(self) -> None:
        # http without a host condition matches on the request line alone.
        proto, transport = connect(self.factory)
        proto.dataReceived(b"GET /slow HTTP/1.1\r\n")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"Host: exa")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"mple.com\r\nAccept: */*\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 308 "), transport.value())
        self.assertIn(b"Location: https://example.com:8443/slow\r\n", transport.value())
        self.assertEqual(self.finish(proto)["reason"], "redirected")

    def test_clientHalfClosesBeforeTheHeadEnds(self) -> None:
        proto, transport = connect(self.factory)
        proto.dataReceived(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n")
        proto.readConnectionLost()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertEqual(self.finish(proto)["reason"], "bad_request")

    def test_endlessHeadIsCutAtTheLimit(self) -> None:
        proto, transport = connect(self.factory)
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(MAX_REQUEST_HEAD // 1000 + 1):
            proto.dataReceived(b"X-Pad: " + b"y" * 991 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.finish(proto)["reason"], "bad_request")
