"""Backend options (switchyard/targets/backends/compile.py): defaults, every key, errors naming the
key."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from switchyard.config import compile_config
from switchyard.interfaces import OptionError
from switchyard.targets.backends import BackendTarget, compile_backend
from switchyard.targets.backends.balancing import (
    RoundRobin,
)


class CompileTests(unittest.TestCase):
    def compile(self, **raw: Any) -> BackendTarget:
        raw.setdefault("servers", ["127.0.0.1:1"])
        return compile_backend("b", raw, Clock())

    def assertOptionError(self, key: str, problem: str, **raw: Any) -> None:
        with self.assertRaises(OptionError) as caught:
            self.compile(**raw)
        self.assertEqual(caught.exception.key, key)
        self.assertIn(problem, caught.exception.problem)

    def test_defaults(self) -> None:
        target = self.compile()
        [server] = target.servers
        self.assertEqual((target.connect_timeout, target.retries, target.max_queue,
                          target.queue_timeout, target.proxy_protocol),
                         (5.0, 3, 256, 5.0, None))
        self.assertEqual((server.weight, server.backup, server.max_connections, server.checked),
                         (1, False, 0, False))
        self.assertIsInstance(target.pool.balancer, RoundRobin)
        self.assertIsNone(target.checker)
        self.assertIsNone(target.discovery)

    def test_everyOption(self) -> None:
        target = self.compile(
            servers=["127.0.0.1:1", {"address": "127.0.0.1:2", "weight": 3,
                                     "max_connections": 9, "check_port": 8080},
                     {"address": "127.0.0.1:3", "backup": True, "check": False}],
            balance="leastconn", proxy_protocol="v2", connect_timeout=0.25, retries=1,
            max_connections=5, max_queue=10, queue_timeout=2, all_backups=True,
            check=True, check_interval=1, check_timeout=0.5, check_rise=1, check_fall=2,
            check_send="PING\r\n", check_expect="^\\+PONG", passive_failures=0,
            passive_down_time=4, resolvers=["127.0.0.1:5353"], dns_refresh=1,
            dns_family="v4")
        first, second, backup = target.servers
        self.assertEqual([s.max_connections for s in target.servers], [5, 9, 5])
        self.assertEqual((second.weight, backup.backup, backup.checked, first.checked),
                         (3, True, False, True))
        self.assertIsNot(second.check_endpoint, second.endpoint)
        assert target.checker is not None
        spec = target.checker.spec
        self.assertEqual((spec.interval, spec.timeout, spec.rise, spec.fall, spec.send),
                         (1.0, 0.5, 1, 2, b"PING\r\n"))
        assert spec.expect is not None
        self.assertTrue(spec.expect.search(b"+PONG\r\n"))
        self.assertEqual((target.pool.all_backups, target.pool.passive_failures,
                          target.pool.passive_down_time), (True, 0, 4.0))
        self.assertEqual((target.connect_timeout, target.retries, target.max_queue,
                          target.queue_timeout, target.proxy_protocol),
                         (0.25, 1, 10, 2.0, "v2"))

    def test_checkTimeoutDefaultsToIntervalOrConnectTimeout(self) -> None:
        target = self.compile(check=True, check_interval=10, connect_timeout=3)
        assert target.checker is not None
        self.assertEqual(target.checker.spec.timeout, 3.0)

    def test_discoveryEntriesStartEmpty(self) -> None:
        target = self.compile(servers=[{"address": "web.example:8080", "discovery": "dns"},
                                       {"address": "_http._tcp.example", "discovery": "srv"},
                                       "127.0.0.1:1"])
        self.assertEqual([s.description for s in target.servers], ["127.0.0.1:1"])
        assert target.discovery is not None
        self.assertEqual([(e.mode, e.name, e.port) for e in target.discovery.entries],
                         [("dns", "web.example", 8080), ("srv", "_http._tcp.example", 0)])

    def test_errorsNameTheKey(self) -> None:
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("colour", "unknown option", {"colour": "red"}),
            ("balance", "'roundrobin'", {"balance": "static-rr"}),
            ("retries", "between 0 and 100", {"retries": -1}),
            ("connect_timeout", "greater than 0", {"connect_timeout": 0}),
            ("max_connections", "expected an integer", {"max_connections": "10"}),
            ("max_queue", "between", {"max_queue": -5}),
            ("queue_timeout", "expected a number", {"queue_timeout": "1s"}),
            ("all_backups", "true or false", {"all_backups": 1}),
            ("check", "true or false", {"check": "tcp"}),
            ("check_interval", "without check = true", {"check_interval": 1}),
            ("check_expect", "bad regular expression", {"check": True, "check_expect": "("}),
            ("check_send", "one byte each", {"check": True, "check_send": "\u20ac"}),
            ("check_rise", "between 1", {"check": True, "check_rise": 0}),
            ("passive_failures", "between 0", {"passive_failures": -1}),
            ("resolvers", "is not \"IP\"", {"resolvers": ["dns.example"]}),
            ("dns_family", "'v4'", {"dns_family": "ipv4"}),
            ("dns_refresh", "greater than 0", {"dns_refresh": 0}),
            ("servers", "non-empty list", {"servers": []}),
            ("servers[0]", "expected \"host:port\"", {"servers": [7]}),
            ("servers[0]", "bad endpoint", {"servers": ["nonsense:x=y"]}),
            ("servers[1].address", "bad endpoint", {"servers": ["127.0.0.1:1",
                                                                {"address": "nope:a=b"}]}),
            ("servers[0].address", "required", {"servers": [{"weight": 2}]}),
            ("servers[0].wieght", "unknown option", {"servers": [{"address": "a:1",
                                                                  "wieght": 2}]}),
            ("servers[0].weight", "between 0 and 256", {"servers": [{"address": "a:1",
                                                                     "weight": 1000}]}),
            ("servers[0].backup", "true or false", {"servers": [{"address": "a:1",
                                                                 "backup": "yes"}]}),
            ("servers[0].discovery", "'dns'", {"servers": [{"address": "a:1",
                                                            "discovery": "consul"}]}),
            ("servers[0].address", "needs \"name:port\"", {"servers": [
                {"address": "web.example", "discovery": "dns"}]}),
            ("servers[0].address", "bare SRV name", {"servers": [
                {"address": "_x._tcp.example:80", "discovery": "srv"}]}),
            ("servers[0].check_port", "needs a \"host:port\"", {"servers": [
                {"address": "unix:path=/run/x.sock", "check_port": 80}]}),
        ]
        for key, problem, raw in cases:
            with self.subTest(key=key):
                self.assertOptionError(key, problem, **raw)

    def test_configNamesTheDottedKey(self) -> None:
        raw = {"listener": {"l": {"listen": "tcp:0", "route": [{"match": "any", "to": "b"}]}},
               "backend": {"b": {"servers": [{"address": "a:1", "weight": -1}]}}}
        from switchyard.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            compile_config(raw, Clock())
        self.assertEqual(caught.exception.key, "backend.b.servers[0].weight")
