"""Tunnels through the real `twistd -n switchyard`: OpenSSH agents, nginx behind, curl in front.

The switch runs as users run it, from a config with a ``[tunnel_server]``,
a ``[tunnel]`` and the listeners agents and visitors reach. Agents are the
stock OpenSSH client (``ssh -N -R NAME:PORT:HOST:PORT``, the server's host
key pinned, ``BatchMode``), or switchyard's own ``[agent.NAME]`` in a second
twistd. The intranet service is nginx (HTTP and HTTPS, WebDAV PUT for
uploads) or a threaded TCP service that checks every byte; visitors are
curl and plain sockets. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from tests.daemon import start_switchyard
from tests.peers import CA, Running, _keygen, free_port, make_ca, start_nginx, wait_for_port
from tests.test_tunnel_server import SECRET, _PasswordClient
from tests.traffic import payload, recv_all

LOCALHOST = "127.0.0.1"
DEADLINE = 30.0  # seconds any awaited condition may take (the machine is shared)
MIB = 1 << 20
HTTP_NAME, TLS_NAME, TUNNEL_SNI, SITE_NAME = "srv-0.test", "srv-1.test", "tunnel.test", "www.test"

NGINX = """
http {
  server {
    listen 127.0.0.1:{web};
    listen 127.0.0.1:{web_tls} ssl;
    server_name srv-0.test srv-1.test;
    ssl_certificate CERTS/srv.crt; ssl_certificate_key CERTS/srv.key;
    root {prefix}/www;
    client_max_body_size 16m;
    location /up/ { dav_methods PUT; create_full_put_path on; }
    location = /who { return 200 "WHO\\n"; }
  }
  server {
    listen 127.0.0.1:{site} ssl;
    server_name www.test;
    ssl_certificate CERTS/site.crt; ssl_certificate_key CERTS/site.key;
    location / { return 200 "site\\n"; }
  }
}
"""

SERVER = """
[tunnel_server.agents]
host_key = "{host_key}"
keepalive_interval = 5

[tunnel.office]
keys = [{keys}]
names = ["srv-0.test", "srv-1.test"]
{tunnel}

[responder.office_down]
kind = "reject"
status = 503

[listener.agents]
listen = "127.0.0.1:{agents}"

[[listener.agents.route]]
match = "ssh"
to = "agents"

[listener.http]
listen = "127.0.0.1:{http}"

[[listener.http.route]]
match = "http"
host = ["srv-0.test", "srv-1.test"]
to = "office"

[listener.tls]
listen = "127.0.0.1:{tls}"

[[listener.tls.route]]
name = "agents"
match = "tls"
sni = "tunnel.test"
to = "agents_tls"

[[listener.tls.route]]
name = "office"
match = "tls"
sni = "srv-1.test"
to = "office"

[[listener.tls.route]]
name = "site"
match = "tls"
sni = "www.test"
to = "site"

[tls.agents_tls]
certificates = [{{ cert = "{certs}/tunnel.crt", key = "{certs}/tunnel.key" }}]

[[tls.agents_tls.route]]
match = "ssh"
to = "agents"

[backend.site]
servers = ["127.0.0.1:{site}"]
"""

AGENT = """
[agent.office]
server = "{server}"
server_key = "{host_public}"
key = "{key}"
publish = [{publish}]
connections = 2
reconnect_min = 0.2
reconnect_max = 1
{extra}

[[agent.office.route]]
name = "https"
match = "tls"
sni = "srv-1.test"
to = "web_tls"

[[agent.office.route]]
name = "web"
match = "http"
host = "srv-0.test"
to = "web"

[backend.web]
servers = ["127.0.0.1:{web}"]

[backend.web_tls]
servers = ["127.0.0.1:{web_tls}"]

[listener.lan]
listen = "127.0.0.1:{lan}"

[[listener.lan.route]]
match = "any"
to = "echo"
"""


def wait_for(condition: Callable[[], bool], what: str, details: Callable[[], str] = str,
             timeout: float = DEADLINE) -> None:
    """Block until ``condition()`` holds; fail after ``timeout`` with ``details()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n"
                                 f"{details()}")
        time.sleep(0.05)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RecordingService:
    """A threaded TCP service: reads to the end of stream, keeps what it read, then
    answers its SHA-256 and ``reply`` (so it answers only after the visitor's EOF)."""

    def __init__(self, testcase: unittest.TestCase, reply: bytes = b"") -> None:
        self.received: list[bytes] = []
        received = self.received

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(DEADLINE)
                got = recv_all(sock)
                received.append(got)
                sock.sendall(hashlib.sha256(got).digest() + reply)
                sock.close()

        self.server = socketserver.ThreadingTCPServer((LOCALHOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        testcase.addCleanup(self.server.server_close)
        testcase.addCleanup(self.server.shutdown)


class Tunnels:
    """A twistd tunnel server, its keys and certificates, nginx behind, agents in front.

    Make the keys (L{key}) before L{start}: the tunnel lists every key made so
    far except C{stranger}.
    """

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.testcase = testcase
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        self.host_key = os.path.join(self.dir, "host_ed25519")
        self.host_public = " ".join(_keygen(self.host_key).split()[:2])
        self.keys: dict[str, str] = {}
        self.certs = os.path.join(self.dir, "certs")
        self.ca: CA = make_ca(self.certs)
        for stem, name in (("srv", [HTTP_NAME, TLS_NAME]), ("site", [SITE_NAME]),
                           ("tunnel", [TUNNEL_SNI])):
            self.ca.issue(name, os.path.join(self.certs, stem))
        self.ports = {"agents": free_port(), "http": free_port(), "tls": free_port()}
        self.nginx = start_nginx(testcase, NGINX.replace("CERTS", self.certs))
        self.www = os.path.join(self.nginx.workdir, "www")
        os.makedirs(self.www)
        self.big = payload(11, MIB)
        with open(os.path.join(self.www, "big.bin"), "wb") as f:
            f.write(self.big)
        self.switch: Running | None = None
        self.config = ""
        self.agents: list[Running] = []

    def key(self, name: str) -> str:
        """The private key file of agent key ``name`` (made on first use)."""
        path = os.path.join(self.dir, name)
        if name not in self.keys:
            self.keys[name] = _keygen(path)
        return path

    def server_config(self, tunnel: str = "", keys: Sequence[str] | None = None) -> str:
        """The tunnel server's config: ``keys`` (default: every key made but C{stranger})
        are the tunnel's, ``tunnel`` is more of its table."""
        names = [n for n in self.keys if n != "stranger"] if keys is None else keys
        listed = ", ".join(f'"{self.keys[name]}"' for name in names)
        return SERVER.format(host_key=self.host_key, keys=listed, tunnel=tunnel,
                             certs=self.certs, site=self.nginx.ports["site"], **self.ports)

    def start(self, tunnel: str = "") -> Running:
        """Start twistd with the tunnel server config (``tunnel``: more [tunnel.office] keys)."""
        self.config = self.server_config(tunnel)
        return self.restart()

    def reload(self, running: Running, text: str) -> None:
        """Rewrite ``running``'s config file and SIGHUP it; return once it applied it."""
        path = running.process.args[running.process.args.index("--config") + 1]
        with open(path + ".new", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".new", path)
        before = running.log_text().count("applied:")
        os.kill(running.process.pid, signal.SIGHUP)
        wait_for(lambda: running.log_text().count("applied:") > before, "the reload",
                 self.details)

    def restart(self) -> Running:
        if self.switch is not None:
            self.switch.stop()
        self.switch = start_switchyard(self.testcase, self.config, self.ports["agents"])
        for port in self.ports.values():
            wait_for_port(port, DEADLINE, self.switch.process)
        return self.switch

    def log(self) -> str:
        assert self.switch is not None
        return self.switch.log_text()

    def details(self) -> str:
        agents = "\n".join(a.log_text() for a in self.agents)
        return f"switchyard:\n{self.log()}\nagents:\n{agents}"

    def wait_log(self, needle: str, count: int = 1) -> str:
        """The switch's log once ``needle`` is in it ``count`` times."""
        wait_for(lambda: self.log().count(needle) >= count, f"{count} x {needle!r} in the log",
                 self.details)
        return self.log()

    def ssh(self, key: str, *args: str, command: Sequence[str] = (),
            through_tls: bool = False) -> Running:
        """OpenSSH as the holder of ``key``, to the agents' port (or to 443-in-TLS)."""
        known_hosts = os.path.join(self.dir, "known_hosts")
        with open(known_hosts, "w", encoding="ascii") as f:
            f.write(f"[{LOCALHOST}]:{self.ports['agents']} {self.host_public}\n"
                    f"{TUNNEL_SNI} {self.host_public}\n")
        route: list[str] = ["-p", str(self.ports["agents"])]
        if through_tls:
            proxy = (f"openssl s_client -quiet -connect {LOCALHOST}:{self.ports['tls']} "
                     f"-servername {TUNNEL_SNI} -CAfile {self.ca.cert_path} "
                     f"-verify_return_error")
            route = ["-o", f"ProxyCommand={proxy}", "-o", f"HostKeyAlias={TUNNEL_SNI}"]
        workdir = os.path.join(self.dir, f"ssh-{len(self.agents)}")
        os.makedirs(workdir)
        argv = ["ssh", "-F", "none", *route, "-i", self.key(key),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=INFO",
                *args, f"tunnel@{LOCALHOST}", *command]
        out, err = os.path.join(workdir, "stdout.log"), os.path.join(workdir, "stderr.log")
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                       cwd=workdir, start_new_session=True)
        running = Running(process, 0, workdir, [err, out])
        self.agents.append(running)
        self.testcase.addCleanup(running.stop)
        return running

    def agent(self, key: str, *forwards: str, through_tls: bool = False) -> Running:
        """``ssh -N -R FORWARD...``, exiting if a forward is refused."""
        args = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=5"]
        for forward in forwards:
            args += ["-R", forward]
        return self.ssh(key, *args, through_tls=through_tls)

    def web_forwards(self) -> tuple[str, str]:
        """The two names published for nginx: HTTP by Host, HTTPS by SNI."""
        return (f"{HTTP_NAME}:{self.ports['http']}:{LOCALHOST}:{self.nginx.ports['web']}",
                f"{TLS_NAME}:{self.ports['tls']}:{LOCALHOST}:{self.nginx.ports['web_tls']}")

    def builtin_agent(self, key: str, extra: str = "", through_tls: bool = False) -> Running:
        """A second twistd running switchyard's own ``[agent.office]`` for nginx."""
        server = f"{LOCALHOST}:{self.ports['agents']}"
        if through_tls:
            server = f"{LOCALHOST}:{self.ports['tls']}"
            extra += (f'\ntls = true\ntls_server_name = "{TUNNEL_SNI}"\n'
                      f'tls_ca = "{self.ca.cert_path}"')
        publish = f'"{HTTP_NAME}:{self.ports["http"]}", "{TLS_NAME}:{self.ports["tls"]}"'
        lan = free_port()
        self.agent_config = AGENT.format(
            server=server, host_public=self.host_public, key=self.key(key), publish=publish,
            extra=extra, web=self.nginx.ports["web"], web_tls=self.nginx.ports["web_tls"],
            lan=lan)
        running = start_switchyard(self.testcase, self.agent_config, lan)
        self.agents.append(running)
        return running

    def wait_exit(self, running: Running) -> int:
        wait_for(lambda: running.process.poll() is not None, "ssh to exit", self.details)
        return running.process.returncode

    # -- visitors ---------------------------------------------------------

    def curl(self, path: str, *extra: str, tls: bool = False,
             name: str = HTTP_NAME) -> subprocess.CompletedProcess[bytes]:
        port = self.ports["tls" if tls else "http"]
        scheme = "https" if tls else "http"
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", self.ca.cert_path,
             "--resolve", f"{name}:{port}:{LOCALHOST}", *extra,
             f"{scheme}://{name}:{port}{path}"],
            capture_output=True, timeout=60)

    def get(self, path: str, tls: bool = False, name: str = HTTP_NAME) -> bytes:
        out = self.curl(path, "--fail", tls=tls, name=name)
        if out.returncode != 0:
            raise AssertionError(f"curl failed: {out.stderr.decode()}\n{self.details()}")
        return out.stdout

    def put(self, path: str, data: bytes, tls: bool = False) -> None:
        upload = os.path.join(self.dir, "upload.bin")
        with open(upload, "wb") as f:
            f.write(data)
        out = self.curl(path, "--fail", "-T", upload, tls=tls,
                        name=TLS_NAME if tls else HTTP_NAME)
        if out.returncode != 0:
            raise AssertionError(f"upload failed: {out.stderr.decode()}\n{self.details()}")

    def uploaded(self, path: str) -> bytes:
        with open(os.path.join(self.www, path.lstrip("/")), "rb") as f:
            return f.read()


def publishes(name: str, port: int) -> str:
    return f"publishes {name}:{port}"


class VisitorTests(unittest.TestCase):
    """Visitors reach nginx behind an OpenSSH agent, by Host and by SNI, intact both ways."""

    timeout = 180

    def setUp(self) -> None:
        self.tunnels = Tunnels(self)
        self.tunnels.key("gw")

    def start_with_agent(self, tunnel: str = "") -> None:
        t = self.tunnels
        t.start(tunnel)
        t.agent("gw", *t.web_forwards())
        t.wait_log(publishes(TLS_NAME, t.ports["tls"]))

    def test_httpByHostBothWaysIntact(self) -> None:
        t = self.tunnels
        self.start_with_agent()
        self.assertEqual(sha256(t.get("/big.bin")), sha256(t.big))
        upload = payload(12, MIB)
        t.put("/up/from-visitor.bin", upload)
        self.assertEqual(sha256(t.uploaded("/up/from-visitor.bin")), sha256(upload))
        log = t.wait_log("http/http -> tunnel:office", 2)
        self.assertRegex(log, r"http/http -> tunnel:office facts\[.*host=srv-0\.test\] "
                              r"in=\d+ out=10\d{5} .* close=normal")

    def test_tlsPassthroughBySniBothWaysIntact(self) -> None:
        """curl checks nginx's certificate for srv-1.test: the TLS is the intranet's own."""
        t = self.tunnels
        self.start_with_agent()
        self.assertEqual(sha256(t.get("/big.bin", tls=True, name=TLS_NAME)), sha256(t.big))
        upload = payload(13, MIB)
        t.put("/up/over-tls.bin", upload, tls=True)
        self.assertEqual(sha256(t.uploaded("/up/over-tls.bin")), sha256(upload))
        log = t.wait_log("tls/office -> tunnel:office", 2)
        self.assertIn("sni=srv-1.test", log)

    def test_visitorHalfCloseStillGetsTheAnswer(self) -> None:
        """The visitor sends a megabyte and its end of stream; the service answers only
        after that end reached it through the tunnel: its digest, then a megabyte."""
        t = self.tunnels
        t.start()
        answer = payload(14, MIB)
        service = RecordingService(self, reply=answer)
        t.agent("gw", f"{HTTP_NAME}:{t.ports['http']}:{LOCALHOST}:{service.port}")
        t.wait_log(publishes(HTTP_NAME, t.ports["http"]))
        request = f"POST / HTTP/1.1\r\nHost: {HTTP_NAME}\r\n\r\n".encode() + payload(15, MIB)
        with socket.create_connection((LOCALHOST, t.ports["http"]), timeout=DEADLINE) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            got = recv_all(s)
        self.assertEqual(service.received, [request])
        self.assertEqual(got, hashlib.sha256(request).digest() + answer)

    def test_proxyHeaderGoesFirstIntoTheChannel(self) -> None:
        t = self.tunnels
        t.start('proxy_protocol = "v1"')
        service = RecordingService(self)
        t.agent("gw", f"{HTTP_NAME}:{t.ports['http']}:{LOCALHOST}:{service.port}")
        t.wait_log(publishes(HTTP_NAME, t.ports["http"]))
        request = f"GET / HTTP/1.0\r\nHost: {HTTP_NAME}\r\n\r\n".encode()
        with socket.create_connection((LOCALHOST, t.ports["http"]), timeout=DEADLINE) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            client_port = s.getsockname()[1]
            recv_all(s)
        header = (f"PROXY TCP4 {LOCALHOST} {LOCALHOST} {client_port} {t.ports['http']}\r\n"
                  .encode())
        self.assertEqual(service.received, [header + request])


class RefusalTests(unittest.TestCase):
    """A tunnel key publishes its tunnel's names, nothing else: each refusal is logged."""

    timeout = 120

    def setUp(self) -> None:
        self.tunnels = Tunnels(self)
        self.tunnels.key("gw")
        self.tunnels.start()

    def test_nameTheTunnelDoesNotOwnIsRefused(self) -> None:
        t = self.tunnels
        agent = t.agent("gw", f"intranet.test:{t.ports['http']}:{LOCALHOST}:9")
        self.assertEqual(t.wait_exit(agent), 255)
        self.assertIn("remote port forwarding failed", agent.log_text())
        t.wait_log("may not publish intranet.test")
        out = t.curl("/", name="intranet.test")  # and no route reaches it anyway
        self.assertEqual(out.stdout, b"")

    def test_unknownKeyIsRefused(self) -> None:
        t = self.tunnels
        t.key("stranger")
        agent = t.agent("stranger", f"{HTTP_NAME}:{t.ports['http']}:{LOCALHOST}:9")
        self.assertEqual(t.wait_exit(agent), 255)
        self.assertIn("Permission denied (publickey)", agent.log_text())
        log = t.wait_log("is not a tunnel key: refused")
        self.assertNotIn(t.keys["stranger"].split()[1], log)  # a fingerprint, never the key

    @defer.inlineCallbacks
    def test_passwordIsRefusedAndNotLogged(self) -> Generator[Any, Any, None]:
        """conch's client sends a password at once (OpenSSH would not: none is offered)."""
        t = self.tunnels
        done: defer.Deferred[bytes] = defer.Deferred()
        endpoint = TCP4ClientEndpoint(reactor, LOCALHOST, t.ports["agents"])
        client = yield connectProtocol(endpoint, _PasswordClient(t.host_public, done))
        methods = yield done
        client.transport.loseConnection()
        self.assertEqual(methods, b"publickey")
        log = t.wait_log("tried password authentication as 'tunnel': refused")
        self.assertNotIn(SECRET.decode(), log)

    def test_directTcpipIsRefused(self) -> None:
        """``ssh -W``: a tunnel key must not reach into the server's own network."""
        t = self.tunnels
        service = RecordingService(self)
        ssh = t.ssh("gw", "-W", f"{LOCALHOST}:{service.port}")
        self.assertEqual(t.wait_exit(ssh), 255)
        self.assertIn("administratively prohibited", ssh.log_text())
        t.wait_log(f"asked for a 'direct-tcpip' channel to {LOCALHOST}:{service.port}: refused")
        self.assertEqual(service.received, [])

    def test_execIsRefused(self) -> None:
        t = self.tunnels
        marker = os.path.join(t.dir, "ran")
        ssh = t.ssh("gw", command=("touch", marker))
        self.assertNotEqual(t.wait_exit(ssh), 0)
        self.assertIn("administratively prohibited", ssh.log_text())
        t.wait_log("asked for a 'session' channel")
        self.assertFalse(os.path.exists(marker))


class FailOverTests(unittest.TestCase):
    """Agents of one tunnel share its visitors, take over for each other, and with
    none left the tunnel's fallback answers."""

    timeout = 180

    def visit(self, port: int) -> bytes:
        request = f"GET / HTTP/1.1\r\nHost: {HTTP_NAME}\r\n\r\n".encode()
        with socket.create_connection((LOCALHOST, port), timeout=DEADLINE) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            return recv_all(s)[32:]  # after the service's digest: who answered

    def test_twoAgentsShareThenOneTakesOverThenFallback(self) -> None:
        t = Tunnels(self)
        t.key("gw-a")
        t.key("gw-b")
        t.start('fallback = "office_down"')
        services = {name: RecordingService(self, reply=name.encode()) for name in "AB"}
        port = t.ports["http"]
        agent_a = t.agent("gw-a", f"{HTTP_NAME}:{port}:{LOCALHOST}:{services['A'].port}")
        t.agent("gw-b", f"{HTTP_NAME}:{port}:{LOCALHOST}:{services['B'].port}")
        t.wait_log(publishes(HTTP_NAME, port), 2)

        answers = [self.visit(port) for _ in range(6)]
        self.assertEqual(sorted(set(answers)), [b"A", b"B"])  # round robin: both serve

        # Visitors keep coming while agent A is killed (no goodbye: its TCP
        # connection just drops): every visitor that came after the kill is
        # served, by B. (One in flight on A then may be cut.)
        visits: list[tuple[float, bytes | None]] = []
        stop = threading.Event()

        def keep_visiting() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    visits.append((started, self.visit(port)))
                except OSError:
                    visits.append((started, None))

        visitor = threading.Thread(target=keep_visiting, daemon=True)
        visitor.start()
        self.addCleanup(stop.set)
        wait_for(lambda: len(visits) >= 5, "visits before the kill", t.details)
        killed = time.monotonic()
        os.killpg(agent_a.process.pid, signal.SIGKILL)
        wait_for(lambda: sum(1 for at, _ in visits if at > killed) >= 10,
                 "visits after the kill", t.details)
        stop.set()
        visitor.join(DEADLINE)
        after = [answer for at, answer in visits if at > killed]
        self.assertEqual(set(after), {b"B"})
        t.wait_log("it published srv-0.test")

        t.agents[1].stop()  # the last agent leaves: the fallback answers
        t.wait_log("it published srv-0.test", 2)
        out = t.curl("/", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(out.stdout, b"503")
        log = t.wait_log("-> tunnel:office>office_down")
        self.assertIn("close=rejected (tunnel_down: no agent publishes srv-0.test", log)

    def test_noAgentAndNoFallbackIsTunnelDown(self) -> None:
        t = Tunnels(self)
        t.key("gw")
        t.start()
        self.assertEqual(t.curl("/").stdout, b"")
        log = t.wait_log("close=tunnel_down")
        self.assertIn(f"no agent publishes {HTTP_NAME}:{t.ports['http']} on tunnel office", log)


class SharedPortTests(unittest.TestCase):
    """The agent reaches the server on the TLS port, inside TLS for tunnel.test, beside
    the visitors' own TLS (by SNI) and another HTTPS site."""

    timeout = 180

    def test_opensshAgentThroughTlsBesideOtherRoutes(self) -> None:
        t = Tunnels(self)
        t.key("gw")
        t.start()
        t.agent("gw", *t.web_forwards(), through_tls=True)
        t.wait_log(publishes(TLS_NAME, t.ports["tls"]))
        self.assertEqual(sha256(t.get("/big.bin")), sha256(t.big))
        self.assertEqual(sha256(t.get("/big.bin", tls=True, name=TLS_NAME)), sha256(t.big))
        self.assertEqual(t.get("/", tls=True, name=SITE_NAME), b"site\n")
        t.wait_log("tls/site ->")
        t.agents[0].stop()  # the agent's access line is written when its connection ends
        log = t.wait_log("tls>agents_tls/ssh -> tunnel_server:agents")
        self.assertNotIn("agents/ssh ->", log)


class BuiltInAgentTests(unittest.TestCase):
    """switchyard's own [agent.NAME] in a second twistd: the visitor's Host or SNI is
    routed again on the agent's side to the right local service."""

    timeout = 180

    def setUp(self) -> None:
        self.tunnels = Tunnels(self)
        self.tunnels.key("gw")
        self.tunnels.start()

    def wait_serving(self, agent: Running, count: int = 2) -> None:
        t = self.tunnels
        wait_for(lambda: agent.log_text().count("logged in to") >= count,
                 "the agent's connections to log in", t.details)
        t.wait_log(publishes(TLS_NAME, t.ports["tls"]), count)

    def test_visitorsReachTheirServiceAndTheAgentComesBackAfterARestart(self) -> None:
        t = self.tunnels
        agent = t.builtin_agent("gw")
        self.wait_serving(agent)
        self.assertEqual(sha256(t.get("/big.bin")), sha256(t.big))
        self.assertEqual(sha256(t.get("/big.bin", tls=True, name=TLS_NAME)), sha256(t.big))
        upload = payload(16, MIB)
        t.put("/up/through-agent.bin", upload)
        self.assertEqual(sha256(t.uploaded("/up/through-agent.bin")), sha256(upload))
        wait_for(lambda: "agent:office/https -> 127.0.0.1" in agent.log_text(),
                 "the agent's access line", t.details)
        self.assertIn("agent:office/web -> 127.0.0.1", agent.log_text())

        t.restart()  # a new server process: the agent dials again
        self.wait_serving(agent)
        self.assertEqual(sha256(t.get("/big.bin")), sha256(t.big))
        self.assertIn("dialling again", agent.log_text())

    def test_agentThroughTls(self) -> None:
        t = self.tunnels
        agent = t.builtin_agent("gw", through_tls=True)
        self.wait_serving(agent)
        self.assertEqual(sha256(t.get("/big.bin")), sha256(t.big))
        agent.stop()  # SIGTERM: it says goodbye, then the switch writes the access lines
        log = t.wait_log("tls>agents_tls/ssh -> tunnel_server:agents", 2)
        self.assertIn("disconnected (agent: agent stopping)", log)
        self.assertNotIn("agents/ssh ->", log)

    def test_keyTheServerDoesNotKnowIsLoggedAndRetried(self) -> None:
        t = self.tunnels
        t.key("stranger")
        agent = t.builtin_agent("stranger")
        wait_for(lambda: agent.log_text().count("the server refused key SHA256:") >= 2,
                 "two refused logins", t.details)
        self.assertIn("dialling again", agent.log_text())

    def test_serverWithAnotherHostKeyIsRefused(self) -> None:
        t = self.tunnels
        t.host_public = " ".join(_keygen(os.path.join(t.dir, "impostor")).split()[:2])
        agent = t.builtin_agent("gw")
        wait_for(lambda: "not the server_key configured" in agent.log_text(),
                 "the agent to refuse the server", t.details)
        self.assertNotIn("logged in to", agent.log_text())


class ReloadTests(unittest.TestCase):
    """SIGHUP reloads the config: connected agents stay connected and get the new
    configuration; a key taken out of a tunnel disconnects its agent."""

    timeout = 180

    def visit(self, port: int) -> bytes:
        request = f"GET / HTTP/1.1\r\nHost: {HTTP_NAME}\r\n\r\n".encode()
        with socket.create_connection((LOCALHOST, port), timeout=DEADLINE) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            return recv_all(s)[32:]

    def test_agentsStayAndARemovedKeyIsDisconnected(self) -> None:
        t = Tunnels(self)
        t.key("gw-a")
        t.key("gw-b")
        switch = t.start()
        services = {name: RecordingService(self, reply=name.encode()) for name in "AB"}
        port = t.ports["http"]
        agent_a = t.agent("gw-a", f"{HTTP_NAME}:{port}:{LOCALHOST}:{services['A'].port}")
        agent_b = t.agent("gw-b", f"{HTTP_NAME}:{port}:{LOCALHOST}:{services['B'].port}")
        t.wait_log(publishes(HTTP_NAME, port), 2)

        t.reload(switch, t.server_config(keys=["gw-b"]))
        self.assertEqual(t.wait_exit(agent_a), 255)  # told to go: its key was taken out
        log = t.wait_log("its key is no longer one of tunnel office's keys")
        self.assertEqual(log.count("connected (user"), 2)  # nobody logged in again
        self.assertIsNone(agent_b.process.poll())
        self.assertEqual([self.visit(port) for _ in range(4)], [b"B"] * 4)

    def test_builtInAgentKeepsItsConnectionsAndTakesTheNewRoutes(self) -> None:
        t = Tunnels(self)
        t.key("gw")
        t.start()
        agent = t.builtin_agent("gw")
        wait_for(lambda: agent.log_text().count("logged in to") >= 2, "the agent", t.details)
        self.assertEqual(sha256(t.get("/big.bin")), sha256(t.big))

        # srv-0.test now answered by a responder on the agent's side.
        t.reload(agent, t.agent_config.replace('to = "web"\n', 'to = "gone"\n') + """
[responder.gone]
kind = "reject"
status = 410
""")
        out = t.curl("/big.bin", "-o", "/dev/null", "-w", "%{http_code}")
        self.assertEqual(out.stdout, b"410")
        self.assertEqual(agent.log_text().count("logged in to"), 2)  # the same connections
        wait_for(lambda: "agent:office/web -> gone" in agent.log_text(), "the 410's line",
                 t.details)
