"""Metrics through the real ``twistd -n switchyard``: real clients (curl, openssl),
nginx behind it, ``promtool check metrics`` on the scrape, and the real
Prometheus server scraping it; with ``workers = 2``, one scrape of the
parent sums both workers, also across a worker's restart."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from tests.daemon import log_after, run_twistd, start_switchyard, write_config
from tests.helpers import wait_for as _wait_for
from tests.peers import Running, free_port, make_ca, start_nginx, start_process, wait_for_port

SETTLE = 60.0  # seconds anything may take on a shared, loaded machine

NGINX = """
http {
  server {
    listen 127.0.0.1:{web};
    location / { return 200 "web $request_uri\\n"; }
  }
}
"""

CONFIG = """
metrics = "127.0.0.1:{metrics}"
workers = {workers}

[listener.main]
listen = "127.0.0.1:{port}"

[[listener.main.route]]
name = "site"
match = "tls"
to = "site"

[[listener.main.route]]
name = "web"
match = "http"
to = "web"

[tls.site]
certificates = [{{ cert = "{certs}/site.crt", key = "{certs}/site.key" }}]

[[tls.site.route]]
name = "web"
match = "http"
to = "web"

[backend.web]
servers = ["127.0.0.1:{web}"]
check = true
check_interval = 1
"""

PROMETHEUS = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: switchyard
    static_configs:
      - targets: ["127.0.0.1:{metrics}"]
"""

WEB_NORMAL = {"listener": "main", "route": "web", "reason": "normal"}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = SETTLE) -> Any:
    """The helpers' poll, with this module's longer default."""
    return _wait_for(condition, what, timeout)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode("utf-8")


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class MetricsDaemonCase(unittest.TestCase):
    timeout = 300

    def start(self, workers: int = 1, twistd_args: tuple[str, ...] = ()) -> Running:
        self.certs = os.path.abspath(self.mktemp())
        os.makedirs(self.certs)
        self.ca = make_ca(self.certs)
        self.ca.issue(["site.test"], os.path.join(self.certs, "site"))
        nginx = start_nginx(self, NGINX)
        self.port, self.metrics_port = free_port(), free_port()
        config = CONFIG.format(port=self.port, metrics=self.metrics_port, workers=workers,
                               certs=self.certs, web=nginx.port)
        self.switchyard = start_switchyard(self, config, self.port, twistd_args)
        wait_for_port(self.metrics_port, SETTLE, self.switchyard.process)
        return self.switchyard

    def scrape(self) -> str:
        return fetch(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def value(self, name: str, **labels: str) -> float | None:
        return parse(self.scrape()).get((name, frozenset(labels.items())))

    def wait_for_value(self, expected: float, name: str, **labels: str) -> None:
        seen: list[float | None] = []

        def reached() -> bool:
            seen.append(self.value(name, **labels))
            return seen[-1] == expected

        try:
            wait_for(reached, f"{name}{labels} == {expected}")
        except AssertionError:
            raise AssertionError(f"{name}{labels} never reached {expected}: last {seen[-1]}\n"
                                 f"{self.scrape()}\n{self.switchyard.log_text()}")

    def curl(self, path: str = "/") -> str:
        done = subprocess.run(["curl", "-sS", "--max-time", "10",
                               f"http://web.test:{self.port}{path}",
                               "--resolve", f"web.test:{self.port}:127.0.0.1"],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def junk(self) -> None:
        """A connection no route takes: it is closed unanswered."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"\x00\x01junk\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(s.recv(100), b"")

    def failed_handshake(self) -> None:
        """TLS 1.1, which the TLS target refuses (its minimum is 1.2)."""
        done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
                               "-servername", "site.test", "-tls1_1",
                               "-cipher", "DEFAULT@SECLEVEL=0"],
                              input=b"", capture_output=True, timeout=30)
        self.assertNotEqual(done.returncode, 0)

    def promtool(self, text: str) -> None:
        checked = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                                 capture_output=True, timeout=30)
        self.assertEqual((checked.returncode, checked.stdout, checked.stderr), (0, b"", b""))


class OneProcessTests(MetricsDaemonCase):
    def test_scrapeCountsWhatHappenedAndPassesPromtool(self) -> None:
        self.start()
        for i in range(3):
            self.assertEqual(self.curl(f"/{i}"), f"web /{i}\n")
        self.junk()
        self.failed_handshake()
        self.wait_for_value(3, "switchyard_connections_total", **WEB_NORMAL)
        self.wait_for_value(1, "switchyard_tls_handshake_failures_total", target="site")
        text = self.scrape()
        self.promtool(text)
        scraped = parse(text)

        def get(name: str, **labels: str) -> float | None:
            return scraped.get((name, frozenset(labels.items())))

        self.assertEqual(get("switchyard_connections_total", listener="main", route="-",
                             reason="no_route"), 1)
        self.assertEqual(get("switchyard_connections_total", listener="main>site", route="-",
                             reason="tls_handshake_failed"), 1)
        # nginx answered "web /0\n" and the rest, each after its headers.
        self.assertGreater(get("switchyard_bytes_total", listener="main", route="web",
                               direction="out"), 3 * len("web /0\n"))
        self.assertEqual(get("switchyard_sniff_seconds_count", listener="main",
                             outcome="matched"), 4)  # 3 HTTP, 1 TLS
        self.assertEqual(get("switchyard_sniff_seconds_count", listener="main",
                             outcome="no_route"), 1)
        self.assertEqual(get("switchyard_backend_server_up", backend="web",
                             server=f"127.0.0.1:{self.web_port()}"), 1)
        self.assertEqual(get("switchyard_backend_queue_length", backend="web"), 0)
        self.assertIsNotNone(get("process_resident_memory_bytes"))
        self.wait_for_value(0, "switchyard_connections_open", listener="main")

    def web_port(self) -> int:
        found = re.search(r'server="127\.0\.0\.1:(\d+)"', self.scrape())
        assert found is not None
        return int(found.group(1))

    def test_healthChecksAreCounted(self) -> None:
        self.start()
        wait_for(lambda: (self.value("switchyard_health_checks_total", backend="web",
                                     server=f"127.0.0.1:{self.web_port()}",
                                     result="pass") or 0) >= 2, "two passed health checks")

    def test_prometheusScrapesTheCounter(self) -> None:
        self.start()
        for i in range(2):
            self.curl(f"/{i}")
        prometheus_port = free_port()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(PROMETHEUS.replace("{metrics}", str(self.metrics_port)))
        start_process(self, ["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={workdir}/data",
                             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                      prometheus_port, workdir, timeout=SETTLE)
        query = 'switchyard_connections_total{job="switchyard",route="web",reason="normal"}'

        def scraped() -> list[Any]:
            url = (f"http://127.0.0.1:{prometheus_port}/api/v1/query?"
                   + urllib.parse.urlencode({"query": query}))
            try:
                import json

                answer = json.loads(fetch(url))
            except OSError:
                return []  # still starting
            return [r["value"][1] for r in answer["data"]["result"]]

        self.assertEqual(wait_for(lambda: scraped() == ["2"] and scraped(),
                                  f"Prometheus to read {query} == 2"), ["2"])

    def test_metricsPortInUseStopsTwistd(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            text = (f'metrics = "127.0.0.1:{port}"\n[listener.main]\n'
                    f'listen = "127.0.0.1:{free_port()}"\n'
                    '[[listener.main.route]]\nmatch = "any"\nto = "reject"\n')
            done = run_twistd("-n", "--pidfile=", "switchyard", "--config",
                              write_config(self, text))
        self.assertNotEqual(done.returncode, 0)
        self.assertIn(f"listen on 127.0.0.1:{port}", done.stdout + done.stderr)


def privileged_free_port() -> int:
    """A port below 1024 that is free on 127.0.0.1 now."""
    for port in range(990, 700, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port below 1024")


class PrivilegeTests(MetricsDaemonCase):
    def test_privilegedPortOpenedBeforeDroppingToNobody(self) -> None:
        if os.geteuid() != 0:
            raise AssertionError("this test runs as root, as the suite does")
        port = privileged_free_port()
        nginx = start_nginx(self, NGINX)
        listen = free_port()
        text = (f'metrics = "127.0.0.1:{port}"\n[listener.main]\nlisten = "127.0.0.1:{listen}"\n'
                f'[[listener.main.route]]\nmatch = "http"\nto = "web"\n'
                f'[backend.web]\nservers = ["127.0.0.1:{nginx.port}"]\n')
        running = start_switchyard(self, text, listen, ("--uid=65534", "--gid=65534"))
        # Its log file is opened before the switch to nobody as well. The
        # port answers before twistd switches user: wait for the switch.
        wait_for_port(port, SETTLE, running.process)

        def uids() -> list[str]:
            with open(f"/proc/{running.process.pid}/status") as f:
                return next(line for line in f if line.startswith("Uid:")).split()[1:]

        wait_for(lambda: uids() != ["0"] * 4, "twistd to switch user", timeout=SETTLE)
        self.assertEqual(uids(), ["65534"] * 4)
        self.assertIn("switchyard_connections_open", fetch(f"http://127.0.0.1:{port}/metrics"))


class WorkersTests(MetricsDaemonCase):
    def served_by_both(self) -> int:
        """Send requests until each worker has served one; how many were sent."""
        sent = 0

        def both() -> bool:
            nonlocal sent
            self.curl(f"/{sent}")
            sent += 1
            log = self.switchyard.log_text()
            return all(re.search(rf"\[worker {w}\] \S+ main/web -> ", log) for w in (1, 2))

        wait_for(both, "both workers to serve a request")
        return sent

    def test_oneScrapeOfTheParentSumsTheWorkers(self) -> None:
        self.start(workers=2)
        sent = self.served_by_both()
        self.wait_for_value(sent, "switchyard_connections_total", **WEB_NORMAL)
        self.wait_for_value(2, "switchyard_workers_reporting")
        text = self.scrape()
        self.promtool(text)
        scraped = parse(text)
        for worker in ("1", "2"):
            self.assertIn(("process_cpu_seconds_total", frozenset({("worker", worker)})),
                          scraped)
        # The parent's own process, which serves the scrape.
        self.assertIn(("process_cpu_seconds_total", frozenset()), scraped)

    def test_restartedWorkerNeverTakesItsCountsAway(self) -> None:
        self.start(workers=2)
        sent = self.served_by_both()
        self.wait_for_value(sent, "switchyard_connections_total", **WEB_NORMAL)
        first_start = self.value("process_start_time_seconds", worker="1")
        started = re.search(r"worker 1 started \(pid (\d+)\)", self.switchyard.log_text())
        assert started is not None
        os.kill(int(started.group(1)), signal.SIGKILL)
        log_after(self.switchyard, "worker 1 restarted", timeout=SETTLE)
        seen = []

        def replacement_reported() -> bool:
            scraped = parse(self.scrape())
            seen.append(scraped.get(("switchyard_connections_total",
                                     frozenset(WEB_NORMAL.items()))))
            start = scraped.get(("process_start_time_seconds", frozenset({("worker", "1")})))
            return start not in (None, first_start)

        # Until the new worker 1 reports, the parent still has the old one's report.
        wait_for(replacement_reported, "the restarted worker 1 to report")
        self.assertEqual(seen[-1], sent)  # the dead worker's requests are still counted
        self.curl("/after")
        self.wait_for_value(sent + 1, "switchyard_connections_total", **WEB_NORMAL)
        self.assertEqual(set(seen), {sent})  # never went down
