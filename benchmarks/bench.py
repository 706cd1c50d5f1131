"""Benchmark switchyard against HAProxy, nginx stream and sslh, on loopback only.

Run through ``benchmarks/run`` (see benchmarks/README.md). For each scenario
this starts the backends and every proxy side by side on free 127.0.0.1
ports, loads each proxy in turn with the same client, stops everything, and
reports every figure with the ratio switchyard/peer. Nothing here asserts a
timing: it measures and reports, and is never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"  # the only address anything here listens on or connects to

# The working tree's switchyard is measured, not whatever copy .venv holds,
# so a run always reflects the code being worked on.
sys.path.insert(0, str(REPO))

BASELINE = "direct"
PROXIES = ("switchyard", "haproxy", "haproxy-splice", "nginx", "sslh-select", "sslh-fork",
           "python-floor")
PEERS = (BASELINE, *PROXIES)
SCENARIOS = ("bulk", "close", "keepalive", "syscalls", "memory", "sniff")

# Held-connection caps for the memory scenario, per peer. Per-connection
# cost is linear, so a figure at fewer connections still compares.
HELD_CAPS = {
    # One process per connection: 10,000 would take a third of this machine's
    # pid space (pid_max 32768) from everyone sharing it.
    "sslh-fork": 1000,
    # select(2): each proxied connection takes two descriptors, and past
    # FD_SETSIZE (1024) sslh-select drops connections, then aborts
    # ("bit out of range 0 - FD_SETSIZE on fd_set").
    "sslh-select": 400,
}

SMALL_FILE = b"<!doctype html><title>bench</title>" + b"x" * 989 + b"\n"  # 1 KiB
WEB_PATH = "/small.html"
# Neither TLS, SSH nor HTTP: takes each proxy's default route. Longer than
# any HTTP method, or sslh's HTTP probe keeps asking for more until its timeout.
HOLD_OPENING = b"hold-this-connection\n"


# -- settings --------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    scenarios: tuple[str, ...]
    peers: tuple[str, ...]
    iperf_seconds: int
    wrk_seconds: int
    connections: int
    rounds: int
    sniff_seconds: float
    switchyard_args: tuple[str, ...]
    switchyard_toml: tuple[str, ...]
    switchyard_top: tuple[str, ...]
    keep: bool
    workdir: Path
    twistd: str
    limit_note: str = ""  # why fewer connections are held than asked, if so


def parse_args(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Benchmark switchyard against HAProxy, nginx stream and sslh on 127.0.0.1.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 s iperf3, 2 s wrk, 1,000 held connections")
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers (default all: {','.join(PEERS)})")
    p.add_argument("--connections", type=int, default=None,
                   help="held connections for the memory scenario (default 10000, quick 1000)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat each load this many times, peers interleaved; report the median")
    p.add_argument("--switchyard-arg", action="append", default=[], metavar="ARG",
                   help="extra twistd switchyard argument, e.g. --switchyard-arg=--workers=2")
    p.add_argument("--switchyard-toml", action="append", default=[], metavar="LINE",
                   help="a TOML line added to switchyard's [listener.bench] table, "
                        "e.g. --switchyard-toml 'workers = 2'")
    p.add_argument("--switchyard-top", action="append", default=[], metavar="LINE",
                   help="a top-level TOML line for switchyard's config, e.g. "
                        "--switchyard-top 'metrics = \"127.0.0.1:9109\"'")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder (configs and logs of every process)")
    a = p.parse_args(argv)

    scenarios = _names(a.only, SCENARIOS, "--only")
    peers = _names(a.peers, PEERS, "--peers")
    twistd = str(REPO / ".venv" / "bin" / "twistd")
    if "switchyard" in peers and not os.access(twistd, os.X_OK):
        p.error(f"{twistd} is missing: start through benchmarks/run, which creates it")
    return Settings(
        quick=a.quick,
        scenarios=scenarios,
        peers=peers,
        iperf_seconds=1 if a.quick else 5,
        wrk_seconds=2 if a.quick else 10,
        connections=a.connections or (1000 if a.quick else 10000),
        rounds=max(1, a.rounds),
        sniff_seconds=0.2 if a.quick else 1.0,
        switchyard_args=tuple(a.switchyard_arg),
        switchyard_toml=tuple(a.switchyard_toml),
        switchyard_top=tuple(a.switchyard_top),
        keep=a.keep,
        workdir=_workdir(),
        twistd=twistd,
    )


def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    # nginx's workers run as nobody: they must reach the file they serve.
    path.chmod(0o755)
    return path


def _names(text: str, known: Sequence[str], option: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"{option}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    # Keep the canonical order so tables always read the same way.
    return tuple(n for n in known if n in names)


# -- processes -------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[3])


def session_pids(sid: int, zombies: bool = False) -> list[int]:
    """Live processes of session ``sid``: a server and all its workers (and,
    with ``zombies``, those that exited and were not reaped yet)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == sid and (zombies or st[0] != "Z"):
                pids.append(int(entry))
    return pids


def memory_kib(sid: int) -> tuple[int, int]:
    """Total RSS and PSS in KiB of every process of session ``sid``.

    RSS counts shared pages once per process (sslh-fork's children all share
    one binary), PSS splits them: both are reported.
    """
    rss = pss = 0
    for pid in session_pids(sid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass  # exited between the listing and the read
    return rss, pss


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(sid: int) -> tuple[float, float]:
    """User and system CPU seconds used so far by session ``sid``: every
    process (all its threads), exited ones not reaped yet included, plus the
    children reaped (sslh-fork's per-connection processes), from /proc/PID/stat."""
    user = system = 0
    for pid in session_pids(sid, zombies=True):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # exited between the listing and the read
        fields = text[text.rindex(")") + 2:].split()
        # utime, stime, cutime, cstime: fields 14 to 17 (state is field 3).
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / _CLOCK_TICKS, system / _CLOCK_TICKS


@contextmanager
def cpu_used(sid: int | None) -> Iterator[dict[str, float]]:
    """The user and system CPU seconds session ``sid`` spends inside the block
    (nothing for None: the direct baseline has no proxy)."""
    used: dict[str, float] = {}
    before = cpu_seconds(sid) if sid is not None else None
    try:
        yield used
    finally:
        if before is not None and sid is not None:
            after = cpu_seconds(sid)
            used["user_s"] = after[0] - before[0]
            used["system_s"] = after[1] - before[1]


class Processes:
    """Every long-running process started here, each in a session of its own.

    A session groups a server with the workers or children it forks, so all
    of them can be measured and stopped by their ids, and nothing else.
    """

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(self.logdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(env) if env is not None else None, cwd=cwd)
        self.started[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for proc in self.started.values():
            self._signal_session(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.started.values():
            # The leader is not reaped before its session is empty, so its
            # pid (the session id) cannot be reused while we signal by it.
            while session_pids(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._signal_session(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.started.clear()

    @staticmethod
    def _signal_session(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def listening(port: int) -> bool:
    """Whether something listens on HOST:port, read from /proc/net/tcp.

    Not by connecting: a probe connection would be routed like a client's
    (HAProxy and nginx forward an empty one to the default backend, and
    iperf3 counts it as a failed test).
    """
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in lines))


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None, procs: Processes,
                   name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{procs.log_tail(name)}")
        if listening(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} is not listening on {HOST}:{port} after {timeout:g}s:\n"
                       f"{procs.log_tail(name)}")


# -- backends --------------------------------------------------------------


def start_iperf_server(procs: Processes, port: int) -> None:
    # --idle-timeout: a test aborted half-way cannot leave it stuck for the next peer.
    proc = procs.start("iperf3-server", ["iperf3", "-s", "-B", HOST, "-p", str(port),
                                         "--idle-timeout", "30"])
    wait_listening(port, proc, procs, "iperf3-server")


def start_web_backend(procs: Processes, workdir: Path, port: int) -> None:
    """nginx serving one small file: the HTTP backend of the wrk scenarios."""
    prefix = workdir / "web"
    (prefix / "root").mkdir(parents=True, exist_ok=True)
    (prefix / "root" / WEB_PATH.lstrip("/")).write_bytes(SMALL_FILE)
    conf = prefix / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 8192; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/client_body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            # The keep-alive scenario measures requests on established
            # connections, not reconnects every 1,000 requests (the default).
            keepalive_requests 10000000;
            server {{
                listen {HOST}:{port} backlog=4096;
                root {prefix}/root;
            }}
        }}
        """))
    proc = procs.start("web-backend", ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                                       "-c", str(conf), "-g", "daemon off;"])
    wait_listening(port, proc, procs, "web-backend")


# -- proxies ---------------------------------------------------------------


@dataclass(frozen=True)
class Routes:
    """Where each sniffed protocol goes.

    TLS and SSH go to ``decoy`` (a port held closed): no load uses them, they
    are there so every proxy really inspects the opening. ``plain`` is the
    scenario's backend: reached by the HTTP route (wrk) or the default route
    (iperf3, held connections).
    """

    decoy: int
    http: int
    other: int

    @property
    def plain(self) -> int:
        return self.other if self.http == self.decoy else self.http


def switchyard_config(port: int, routes: Routes, extra_lines: Sequence[str] = (),
                      access_log: str | None = None, top_lines: Sequence[str] = ()) -> str:
    extra = "".join(f"{line}\n" for line in extra_lines)
    # Every connection is logged, to a file of its own, as a deployment's
    # would be (the peers here log nothing: their logging costs nothing).
    top = f'access_log = "{access_log}"\n' if access_log else ""
    top += "".join(f"{line}\n" for line in top_lines)
    return top + textwrap.dedent(f"""\
        # Generated by benchmarks/bench.py: tls, ssh, http, then a catch-all.
        [listener.bench]
        listen = "{HOST}:{port}"
        """) + extra + textwrap.dedent(f"""\

        [[listener.bench.route]]
        name = "tls"
        match = "tls"
        sni = ["bench.example", "*.bench.example"]
        to = "decoy"

        [[listener.bench.route]]
        name = "ssh"
        match = "ssh"
        to = "decoy"

        [[listener.bench.route]]
        name = "http"
        match = "http"
        to = "web"

        [[listener.bench.route]]
        name = "default"
        match = "any"
        to = "other"

        [backend.decoy]
        servers = ["{HOST}:{routes.decoy}"]

        [backend.web]
        servers = ["{HOST}:{routes.http}"]

        [backend.other]
        servers = ["{HOST}:{routes.other}"]
        """)


def start_switchyard(procs: Processes, s: Settings, port: int, routes: Routes) -> None:
    conf = s.workdir / "switchyard.toml"
    conf.write_text(switchyard_config(port, routes, s.switchyard_toml,
                                      access_log=str(s.workdir / "access.log"),
                                      top_lines=s.switchyard_top))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Operational messages go to twistd's log (stdout, into a file).
    proc = procs.start("switchyard", [s.twistd, "-n", "--pidfile=", "switchyard",
                                      "--config", str(conf), *s.switchyard_args],
                       env=env, cwd=s.workdir)
    wait_listening(port, proc, procs, "switchyard")


def start_haproxy(procs: Processes, s: Settings, name: str, port: int, routes: Routes,
                  splice: bool) -> None:
    conf = s.workdir / f"{name}.cfg"
    # No maxconn: HAProxy derives it from the fd limit (and, with splicing,
    # keeps descriptors for its pipes), which is its default behaviour.
    conf.write_text(textwrap.dedent(f"""\
        defaults
            mode tcp
            timeout connect 5s
            timeout client 10m
            timeout server 10m
            {"option splice-auto" if splice else "# default: no splicing"}

        frontend bench
            bind {HOST}:{port}
            # Wait for the opening, like switchyard's inspect_timeout.
            tcp-request inspect-delay 5s
            tcp-request content accept if {{ req.ssl_hello_type 1 }}
            tcp-request content accept if {{ req.payload(0,4) -m str SSH- }}
            tcp-request content accept if HTTP
            tcp-request content accept if {{ req.len gt 0 }}
            use_backend decoy if {{ req.ssl_hello_type 1 }}
            use_backend decoy if {{ req.payload(0,4) -m str SSH- }}
            use_backend web if HTTP
            default_backend other

        backend decoy
            server s {HOST}:{routes.decoy}
        backend web
            server s {HOST}:{routes.http}
        backend other
            server s {HOST}:{routes.other}
        """))
    proc = procs.start(name, ["haproxy", "-db", "-f", str(conf)])
    wait_listening(port, proc, procs, name)


def start_nginx_stream(procs: Processes, s: Settings, port: int, routes: Routes) -> None:
    # Each proxied connection takes two of nginx's connection slots; a
    # worker cannot have more than its fd limit (inherited from bench.py).
    slots = min(2 * s.connections + 1024, fd_limit() - 100)
    prefix = s.workdir / "nginx-stream"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        load_module /usr/lib/nginx/modules/ngx_stream_module.so;
        worker_processes auto;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections {slots}; }}
        stream {{
            # ssl_preread tells TLS (a protocol version) from anything else
            # (""); nginx stream cannot tell HTTP from other plain openings,
            # so the scenario's plain backend takes every non-TLS connection.
            map $ssl_preread_protocol $upstream {{
                ""      {HOST}:{routes.plain};
                default {HOST}:{routes.decoy};
            }}
            server {{
                listen {HOST}:{port} backlog=4096;
                ssl_preread on;
                preread_timeout 5s;
                proxy_pass $upstream;
                proxy_timeout 10m;
            }}
        }}
        """))
    proc = procs.start("nginx", ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                                 "-c", str(conf), "-g", "daemon off;"])
    wait_listening(port, proc, procs, "nginx")


def start_sslh(procs: Processes, name: str, port: int, routes: Routes) -> None:
    binary = "sslh-select" if name == "sslh-select" else "sslh"  # Debian's sslh is sslh-fork
    argv = [binary, "-f",  # foreground
            "-n",  # numeric: no reverse DNS lookup per connection in its log line
            "-p", f"{HOST}:{port}",
            "--tls", f"{HOST}:{routes.decoy}",
            "--ssh", f"{HOST}:{routes.decoy}",
            "--http", f"{HOST}:{routes.http}",
            "--anyprot", f"{HOST}:{routes.other}",
            # sslh 1.20 takes a protocol name here, whatever its --help says.
            "--on-timeout", "tls"]
    proc = procs.start(name, argv)
    wait_listening(port, proc, procs, name)


def start_floor(procs: Processes, port: int, routes: Routes) -> None:
    """benchmarks/floor.py: a featureless Python forwarder to the scenario's
    plain backend (no sniffing, no routes): Python's floor on this path."""
    proc = procs.start("python-floor", [sys.executable, str(HERE / "floor.py"), str(port),
                                        str(routes.plain)])
    wait_listening(port, proc, procs, "python-floor")


def start_proxies(procs: Processes, s: Settings, routes: Routes,
                  taken: set[int]) -> tuple[dict[str, int], dict[str, str]]:
    """Start every selected proxy.

    Returns each running peer's port (direct: the backend's), and why each
    peer that failed to start did: one broken peer must not lose the others.
    """
    ports: dict[str, int] = {}
    broken: dict[str, str] = {}
    for peer in s.peers:
        if peer == BASELINE:
            ports[peer] = routes.plain
            continue
        port = free_port(taken)
        try:
            if peer == "switchyard":
                start_switchyard(procs, s, port, routes)
            elif peer.startswith("haproxy"):
                start_haproxy(procs, s, peer, port, routes, splice=peer == "haproxy-splice")
            elif peer == "nginx":
                start_nginx_stream(procs, s, port, routes)
            elif peer == "python-floor":
                start_floor(procs, port, routes)
            else:
                start_sslh(procs, peer, port, routes)
        except RuntimeError as e:
            print(f"  {peer} did not start: {e}", file=sys.stderr)
            broken[peer] = "did not start (see its log)"
            continue
        ports[peer] = port
    return ports, broken


def note_broken(figures: Sequence[Figure], broken: Mapping[str, str]) -> None:
    for fig in figures:
        for peer, why in broken.items():
            fig.values[peer] = None
            fig.notes[peer] = why


# -- results ---------------------------------------------------------------


@dataclass
class Figure:
    scenario: str
    name: str
    unit: str
    better: str  # "higher" or "lower"
    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def median_or_none(samples: Sequence[float | None]) -> float | None:
    good = [x for x in samples if x is not None]
    return statistics.median(good) if good else None


# -- scenario 1: bulk throughput -------------------------------------------


def iperf(port: int, seconds: int, streams: int) -> dict[str, Any]:
    """Gbit/s and bytes received by the iperf3 server through ``port``, or an error."""
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-P", str(streams),
            "-J", "--connect-timeout", "5000"]
    try:
        out = subprocess.run(argv, capture_output=True, timeout=seconds + 30, text=True)
    except subprocess.TimeoutExpired:
        return {"error": "iperf3 timed out"}
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"error": (out.stderr or out.stdout).strip()[:200]
                or f"iperf3 exit {out.returncode}"}
    if "error" in report:
        return {"error": str(report["error"])[:200]}
    received = report["end"]["sum_received"]
    return {"gbps": received["bits_per_second"] / 1e9, "bytes": received["bytes"]}


# -- CPU per unit of work ----------------------------------------------------
# Rates depend on the machine and on what else runs on it; the CPU a proxy
# spends on one unit of work (a new connection, a request, a gigabyte) carries
# from one machine to another far better.


def cpu_figures(scenario: str, what: str, unit: str, per: str, scale: float,
                samples: Mapping[str, Sequence[Mapping[str, Any]]],
                count_key: str) -> list[Figure]:
    """CPU (user + system, and system alone) per unit of work, for each peer:
    the median over rounds of CPU seconds x ``scale`` / ``sample[count_key]``."""
    total = Figure(scenario, f"{what}: CPU per {per}", unit, "lower")
    system = Figure(scenario, f"{what}: system CPU per {per}", unit, "lower")
    for peer, runs in samples.items():
        totals, systems = [], []
        for run in runs:
            count = run.get(count_key)
            if "user_s" not in run or not count:
                continue
            totals.append((run["user_s"] + run["system_s"]) * scale / count)
            systems.append(run["system_s"] * scale / count)
        if totals:
            total.values[peer] = statistics.median(totals)
            system.values[peer] = statistics.median(systems)
    if "sslh-fork" in total.values:
        # Its per-connection processes exit without being waited for
        # (SIGCHLD ignored): their CPU reaches no parent's cutime.
        total.notes["sslh-fork"] = system.notes["sslh-fork"] = (
            "the parent only: its per-connection processes are not counted once they exit")
    return [total, system]


def proxy_sids(procs: Processes, ports: Mapping[str, int]) -> dict[str, int | None]:
    """Each peer's session id (its processes' CPU is measured); None for direct."""
    return {peer: procs.started[peer].pid if peer in procs.started else None
            for peer in ports}


def scenario_bulk(s: Settings, procs: Processes, taken: set[int], decoy: int) -> list[Figure]:
    backend = free_port(taken)
    start_iperf_server(procs, backend)
    ports, broken = start_proxies(procs, s, Routes(decoy=decoy, http=decoy, other=backend),
                                  taken)
    sids = proxy_sids(procs, ports)
    figures = []
    for streams in (1, 4):
        what = f"bulk, {streams} stream{'s' if streams > 1 else ''}"
        fig = Figure("bulk", what, "Gbit/s", "higher")
        samples: dict[str, list[dict[str, Any]]] = {p: [] for p in ports}
        for _ in range(s.rounds):
            for peer, port in ports.items():
                print(f"  bulk {streams}x {peer} ...", flush=True)
                with cpu_used(sids[peer]) as used:
                    result = iperf(port, s.iperf_seconds, streams)
                samples[peer].append(result | used)
                if "error" in result:
                    fig.notes[peer] = result["error"]
                time.sleep(0.5)
        fig.values = {p: median_or_none([r.get("gbps") for r in v]) for p, v in samples.items()}
        fig.raw = {"samples": samples}
        figures.append(fig)
        # Milliseconds of CPU per gigabyte received (1e9 bytes).
        figures += cpu_figures("bulk", what, "ms", "GB", 1e3 * 1e9, samples, "bytes")
    note_broken(figures, broken)
    return figures


# -- scenarios 2 and 3: HTTP request rates ---------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(port: int, seconds: int, close: bool) -> dict[str, Any]:
    argv = ["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}{WEB_PATH}")
    try:
        out = subprocess.run(argv, capture_output=True, timeout=seconds + 30, text=True).stdout
    except subprocess.TimeoutExpired:
        return {"error": "wrk timed out"}
    result: dict[str, Any] = {}
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M):
        result["rps"] = float(m.group(1))
    if m := re.search(r"^\s*(\d+) requests in ", out, re.M):
        result["requests"] = int(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
            result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = []
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append("socket errors: " + m.group(1).strip())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"{m.group(1)} non-2xx responses")
    if "rps" not in result:
        errors.append("no result: " + out.strip()[-200:])
    if errors:
        result["error"] = "; ".join(errors)
    return result


def check_http(port: int) -> str:
    """One request through ``port``: '' if the small file came back, else what went wrong."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(f"GET {WEB_PATH} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError as e:
        return f"check request failed: {e}"
    if data.startswith(b"HTTP/1.1 200") and data.endswith(SMALL_FILE):
        return ""
    return f"check request got {data[:60]!r}"


def scenario_http(s: Settings, procs: Processes, taken: set[int], decoy: int,
                  close: bool) -> list[Figure]:
    name = "close" if close else "keepalive"
    web = free_port(taken)
    start_web_backend(procs, s.workdir, web)
    ports, failed = start_proxies(procs, s, Routes(decoy=decoy, http=web, other=decoy), taken)
    what = "close" if close else "keep-alive"
    rps = Figure(name, f"{what}: requests/s", "req/s", "higher")
    p50 = Figure(name, f"{what}: p50 latency", "ms", "lower")
    p99 = Figure(name, f"{what}: p99 latency", "ms", "lower")
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in ports}
    broken: dict[str, str] = {}
    sids = proxy_sids(procs, ports)
    for peer, port in ports.items():
        if problem := check_http(port):
            broken[peer] = problem
    for _ in range(s.rounds):
        for peer, port in ports.items():
            if peer in broken:
                continue
            print(f"  {name} {peer} ...", flush=True)
            with cpu_used(sids[peer]) as used:
                result = wrk(port, s.wrk_seconds, close)
            samples[peer].append(result | used)
            time.sleep(1)  # let the previous peer's closing connections drain
    for peer in ports:
        runs = samples[peer]
        for fig, key in ((rps, "rps"), (p50, "p50_ms"), (p99, "p99_ms")):
            fig.values[peer] = median_or_none([r.get(key) for r in runs])
            note = broken.get(peer) or "; ".join(r["error"] for r in runs if "error" in r)
            if note:
                fig.notes[peer] = note
    rps.raw = {"samples": samples}
    # CPU per request: with Connection: close, each request is a new
    # proxied connection (accept, sniff, connect, relay, close).
    cpu = cpu_figures(name, what, "µs", "new connection" if close else "request", 1e6,
                      {p: r for p, r in samples.items() if p not in broken}, "requests")
    figures = [rps, p50, p99, *cpu]
    note_broken(figures, failed)
    return figures


# -- scenario: system calls per unit of work ---------------------------------


def threads_of(sid: int) -> list[int]:
    """Every thread of every process of session ``sid``."""
    tids = []
    for pid in session_pids(sid):
        try:
            tids += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            pass
    return tids


def strace_summary(path: Path) -> dict[str, int]:
    """Calls per system call from ``strace -c`` output (its "total" line as "total")."""
    calls: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return calls
    for line in lines:
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and fields[3].isdigit():
            calls[fields[-1]] = int(fields[3])
    return calls


def syscalls_per_request(sid: int, port: int, seconds: int, close: bool,
                         out: Path) -> dict[str, Any]:
    """Run wrk against ``port`` with every thread of session ``sid`` under
    ``strace -c -f``: the proxy's system calls per request."""
    argv = ["strace", "-c", "-f", "-q", "-o", str(out)]
    for tid in threads_of(sid):
        argv += ["-p", str(tid)]
    tracer = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(1)  # attached to every thread
        result = wrk(port, seconds, close)
    finally:
        tracer.send_signal(signal.SIGINT)  # detach: strace writes its summary
        try:
            tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    calls = strace_summary(out)
    requests = result.get("requests")
    if not requests or "total" not in calls:
        return {"error": result.get("error") or "strace gave no summary"}
    return {"requests": requests, "per_request": calls["total"] / requests,
            "top": {name: round(n / requests, 2) for name, n in
                    sorted(calls.items(), key=lambda kv: -kv[1]) if name != "total"}}


def scenario_syscalls(s: Settings, procs: Processes, taken: set[int],
                      decoy: int) -> list[Figure]:
    """System calls per new connection and per keep-alive request, every
    proxy under ``strace -c -f`` (slowed down by it: the counts are what
    matters, and they hardly depend on the speed)."""
    web = free_port(taken)
    start_web_backend(procs, s.workdir, web)
    s_proxies = dataclasses.replace(s, peers=tuple(p for p in s.peers if p != BASELINE))
    ports, failed = start_proxies(procs, s_proxies, Routes(decoy=decoy, http=web, other=decoy),
                                  taken)
    figures = []
    seconds = 2 if s.quick else 4
    for close in (True, False):
        per = "new connection" if close else "keep-alive request"
        fig = Figure("syscalls", f"system calls per {per}", "calls", "lower")
        for peer, port in ports.items():
            print(f"  syscalls {'close' if close else 'keepalive'} {peer} ...", flush=True)
            out = s.workdir / f"strace-{peer}-{'close' if close else 'keepalive'}.txt"
            result = syscalls_per_request(procs.started[peer].pid, port, seconds, close, out)
            if "error" in result:
                fig.notes[peer] = result["error"]
            else:
                fig.values[peer] = result["per_request"]
            fig.raw[peer] = result
            time.sleep(1)
        figures.append(fig)
    note_broken(figures, failed)
    return figures


# -- scenario 4: memory per held connection --------------------------------


def idle_backend(port: int) -> None:
    """The memory scenario's backend, run as its own process (own fd budget).

    Answers one byte to each opening, proving the connection reached it, then
    holds it. SIGUSR1 closes every held connection: the backend closing first
    leaves no client port in TIME_WAIT for the next peer.
    """
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            if await reader.read(64):
                writer.write(b"k")
                await reader.read()  # hold until the other side closes
        except OSError:
            pass
        finally:
            writers.discard(writer)
            writer.close()

    def close_all() -> None:
        for writer in list(writers):
            writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, close_all)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await asyncio.start_server(serve, HOST, port, backlog=4096)
        async with server:
            await stop

    asyncio.run(main())


def established(port: int) -> int:
    """Established TCP connections whose local end is HOST:port."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0
    return sum(1 for f in (line.split() for line in lines) if f[1] == wanted and f[3] == "01")


async def open_held(port: int, count: int,
                    deadline: float) -> tuple[list[asyncio.StreamWriter], str]:
    """Open ``count`` connections through ``port``, each proved to reach the backend."""
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(200)  # connections being set up at once
    errors: dict[str, int] = {}

    async def one() -> None:
        async with gate:
            # A proxy at its limit stops accepting or drops connections:
            # past 50 failures, the rest would only wait out their timeouts.
            if time.monotonic() > deadline or sum(errors.values()) >= 50:
                errors["not tried"] = errors.get("not tried", 0) + 1
                return
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, port), timeout=10)
                writer.write(HOLD_OPENING)
                await asyncio.wait_for(reader.readexactly(1), timeout=10)
                held.append(writer)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                kind = type(e).__name__
                errors[kind] = errors.get(kind, 0) + 1
                if writer is not None:
                    writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    problem = ", ".join(f"{n} {k}" for k, n in errors.items())
    return held, problem


async def memory_all(s: Settings, ports: Mapping[str, int], sids: Mapping[str, int],
                     backend: subprocess.Popen[bytes], backend_port: int,
                     figures: tuple[Figure, Figure]) -> None:
    rss_fig, pss_fig = figures
    for peer, port in ports.items():
        wanted = min(s.connections, HELD_CAPS.get(peer, s.connections))
        print(f"  memory {peer}: {wanted:,} connections ...", flush=True)
        before = memory_kib(sids[peer])
        held, problem = await open_held(port, wanted, time.monotonic() + 120)
        await asyncio.sleep(1)  # let lazily-freed buffers settle
        after = memory_kib(sids[peer])
        n = len(held)
        alive = bool(session_pids(sids[peer]))
        if n and alive:
            rss_fig.values[peer] = (after[0] - before[0]) / n
            pss_fig.values[peer] = (after[1] - before[1]) / n
        note = f"at {n:,} connections" if n != s.connections else ""
        if not alive:
            note = f"exited while holding {n:,} connections"
        if problem:
            note += f"{'; ' if note else ''}{problem}"
        if note:
            rss_fig.notes[peer] = pss_fig.notes[peer] = note
        rss_fig.raw[peer] = {"held": n, "before_rss_kib": before[0], "after_rss_kib": after[0],
                             "before_pss_kib": before[1], "after_pss_kib": after[1]}
        # The backend closes first, the proxy passes it on, then the client
        # side goes; wait until the backend holds nothing before the next peer.
        backend.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        for writer in held:
            writer.close()
        for _ in range(100):
            if not established(backend_port):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)


def scenario_memory(s: Settings, procs: Processes, taken: set[int], decoy: int) -> list[Figure]:
    backend_port = free_port(taken)
    backend = procs.start("idle-backend", [sys.executable, str(Path(__file__).resolve()),
                                           "--idle-backend", str(backend_port)])
    wait_listening(backend_port, backend, procs, "idle-backend")
    # Held connections are the proxies' cost: there is no direct baseline.
    s_proxies = dataclasses.replace(s, peers=tuple(p for p in s.peers if p != BASELINE))
    ports, broken = start_proxies(procs, s_proxies,
                                  Routes(decoy=decoy, http=decoy, other=backend_port), taken)
    sids = {peer: procs.started[peer].pid for peer in ports}
    rss = Figure("memory", f"memory: RSS per connection, {s.connections:,} held", "KiB", "lower")
    pss = Figure("memory", f"memory: PSS per connection, {s.connections:,} held", "KiB", "lower")
    asyncio.run(memory_all(s, ports, sids, backend, backend_port, (rss, pss)))
    note_broken([rss, pss], broken)
    return [rss, pss]


# -- scenario 5: sniffing cost, in-process ---------------------------------


def client_hellos(count: int) -> list[bytes]:
    """Real ClientHellos (OpenSSL's, with SNI and ALPN), each with its own random."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    hellos = []
    for _ in range(count):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="www.bench.example")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass  # the hello is written; the server's answer would come next
        hellos.append(outgoing.read())
    return hellos


def openings(count: int) -> dict[str, tuple[str, list[bytes]]]:
    """Per kind: the route it must reach, and ``count`` distinct openings.

    Distinct, because the TLS and HTTP parsers remember the last buffer
    (by identity) for the routes after the first: every opening must be a
    new connection's parse, not a repeat.
    """
    return {
        "TLS ClientHello with SNI": ("tls", client_hellos(count)),
        "SSH banner": ("ssh", [f"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u{i}\r\n".encode()
                               for i in range(count)]),
        "HTTP/1.1 request": ("http", [
            (f"GET /static/{i}.css HTTP/1.1\r\nHost: www.bench.example\r\n"
             "User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n").encode()
            for i in range(count)]),
    }


def scenario_sniff(s: Settings) -> list[Figure]:
    import tomllib

    from twisted.internet import reactor

    import switchyard
    from switchyard.config import compile_config
    from switchyard.interfaces import NEED_MORE, NO, Match

    raw = tomllib.loads(switchyard_config(1, Routes(decoy=2, http=3, other=4)))
    listener = compile_config(raw, reactor).listeners[0]
    facts = {"listener": listener.name, "client_host": HOST, "client_port": 40000}

    def classify(data: bytes) -> str:
        # The switch's decision loop: routes in order, the first match wins.
        for route in listener.routes:
            result = route.matcher.match(data, facts)
            if result is NO or result is NEED_MORE:
                continue
            if isinstance(result, Match):
                return route.name
        return "no route"

    figures = []
    for label, (expected, pool) in openings(256).items():
        fig = Figure("sniff", f"sniff: {label}", "µs", "lower")
        chosen = {classify(data) for data in pool}
        if chosen != {expected}:
            fig.notes["switchyard"] = f"routed to {sorted(chosen)}, expected {expected}"

        def one_pass(pool: list[bytes] = pool) -> None:
            for data in pool:
                classify(data)

        timer = timeit.Timer(one_pass)
        loops, _ = timer.autorange()
        loops = max(1, int(loops * s.sniff_seconds / 0.2))
        best = min(timer.repeat(repeat=5, number=loops))  # the least disturbed run
        fig.values["switchyard"] = best / (loops * len(pool)) * 1e6
        fig.raw = {"opening_bytes": len(pool[0]), "route": expected,
                   "switchyard": getattr(switchyard, "__file__", "")}
        figures.append(fig)
    return figures


# -- the machine -----------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    try:
        os_name = "Debian " + Path("/etc/debian_version").read_text().strip()
    except OSError:
        os_name = platform.platform()
    import switchyard
    import twisted
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": os_name,
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "switchyard": f"{switchyard.__version__} ({Path(switchyard.__file__).parent})",
        "haproxy": _first_line(["haproxy", "-v"]),
        "nginx": _first_line(["nginx", "-v"]),
        "sslh": _first_line(["sslh", "-V"]) + "; " + _first_line(["sslh-select", "-V"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        "wrk": _first_line(["wrk", "-v"]),
    }


# -- report ----------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(figure: Figure, peer: str) -> float | None:
    ours, theirs = figure.values.get("switchyard"), figure.values.get(peer)
    if ours is None or theirs is None or theirs <= 0:
        return None
    return ours / theirs


def table(figures: Sequence[Figure], peers: Sequence[str], legend: bool = True) -> str:
    columns = ["switchyard", *[p for p in peers if p != "switchyard"]]
    lines = ["| figure | unit | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    footnotes: list[str] = []
    for fig in figures:
        cells = []
        for peer in columns:
            if peer not in fig.values and peer not in fig.notes:
                cells.append("n/a")
                continue
            cell = _fmt(fig.values.get(peer))
            r = ratio(fig, peer) if peer != "switchyard" else None
            if r is not None:
                cell += f" ({r:.2f}×)"
            if peer in fig.notes:
                # One footnote per distinct note: a failed peer fails every row alike.
                note = f"{peer} ({fig.scenario}): {fig.notes[peer]}"
                if note not in footnotes:
                    footnotes.append(note)
                cell += f" [{footnotes.index(note) + 1}]"
            cells.append(cell)
        better = "↑" if fig.better == "higher" else "↓"
        lines.append(f"| {fig.name} | {fig.unit} {better} | " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    if legend:
        out += ("\n\nEach peer cell: value (switchyard/peer). ↑ higher is better, ↓ lower "
                "is better; so a ratio above 1 is good for ↑ rows and bad for ↓ rows.")
    if footnotes:
        out += "\n\n" + "\n".join(f"[{i}] {note}" for i, note in enumerate(footnotes, 1))
    return out


SCENARIO_NOTES = """\
- bulk: `iperf3 -c` through the proxy's default route (iperf3 opens with its
  own cookie), Gbit/s received.
- close: `wrk -t2 -c50 --latency -H 'Connection: close'` through the HTTP
  route to nginx serving a 1 KiB file: a new proxied connection per request.
- keep-alive: the same without `Connection: close`.
- memory: growth of the proxy's total RSS (and PSS: shared pages split
  between its processes) over N connections held open to an idle backend,
  divided by N.
- sniff: switchyard's compiled routes (tls with SNI, ssh, http, any) deciding
  one opening, in-process; distinct openings so parser caches do not hit.
- nginx stream can only tell TLS from the rest (ssl_preread): its non-TLS
  connections all go to the scenario's backend.
"""


def markdown(started: datetime.datetime, argv: Sequence[str], s: Settings,
             info: Mapping[str, Any], figures: Sequence[Figure], elapsed: float) -> str:
    described = "\n".join(f"- {k}: {v}" for k, v in info.items())
    settings = (f"iperf3 -t {s.iperf_seconds}; wrk -t2 -c50 -d{s.wrk_seconds}s; "
                f"{s.connections:,} held connections ("
                + ", ".join(f"{p} at most {n:,}" for p, n in HELD_CAPS.items()) + "); "
                f"{s.rounds} round(s), median")
    if s.limit_note:
        settings += f"\n\nNote: {s.limit_note}."
    if s.switchyard_args or s.switchyard_toml or s.switchyard_top:
        settings += (f"; switchyard extra args {list(s.switchyard_args)}, "
                     f"extra TOML {list(s.switchyard_toml)}, top-level {list(s.switchyard_top)}")
    compared = [f for f in figures if f.scenario != "sniff"]
    in_process = [f for f in figures if f.scenario == "sniff"]
    results = table(compared, s.peers) if compared else ""
    if in_process:
        results += ("\n\nIn-process, switchyard only:\n\n"
                    + table(in_process, ["switchyard"], legend=False))
    return (f"# switchyard benchmark, {started:%Y-%m-%d %H:%M:%S}\n\n"
            f"Command: `benchmarks/run {' '.join(argv)}`, {elapsed:.0f} s\n\n"
            f"## Machine\n\n{described}\n\n"
            f"## Settings\n\n{settings}\n\n{SCENARIO_NOTES}\n"
            f"## Results\n\n{results.strip()}\n")


# -- main ------------------------------------------------------------------


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_fd_limit(connections: int) -> None:
    """As many descriptors as the held connections need; children inherit it.

    A proxy holds two per connection, the client one (the idle backend, its
    own process, one). Without CAP_SYS_RESOURCE the hard limit cannot be
    raised: main() then holds fewer connections and says so.
    """
    want = 2 * connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fit_connections(s: Settings) -> Settings:
    """The held-connection count that fits in one process's fd limit."""
    raise_fd_limit(s.connections)
    limit = fd_limit()
    fits = (limit - 100) // 2  # two per proxied connection, and a few of its own
    if s.connections <= fits:
        return s
    note = (f"{s.connections:,} asked; the fd limit is {limit:,} (its hard limit cannot be "
            f"raised here), so {fits:,} are held: two descriptors each in one proxy process")
    print(f"note: {note}", file=sys.stderr)
    return dataclasses.replace(s, connections=fits, limit_note=note)


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every finally block stops what it started.
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def processes(s: Settings, scenario: str) -> Iterator[Processes]:
    logdir = s.workdir / f"logs-{scenario}"
    logdir.mkdir(exist_ok=True)
    procs = Processes(logdir)
    try:
        yield procs
    finally:
        procs.stop_all()


def run_scenario(s: Settings, name: str) -> list[Figure]:
    if name == "sniff":
        return scenario_sniff(s) if "switchyard" in s.peers else []
    taken: set[int] = set()
    # The decoy port is held bound but not listening: nothing else can take
    # it, and a connection wrongly routed there is refused at once.
    with socket.socket() as decoy_socket, processes(s, name) as procs:
        decoy_socket.bind((HOST, 0))
        decoy = decoy_socket.getsockname()[1]
        taken.add(decoy)
        if name == "bulk":
            return scenario_bulk(s, procs, taken, decoy)
        if name in ("close", "keepalive"):
            return scenario_http(s, procs, taken, decoy, close=name == "close")
        if name == "syscalls":
            return scenario_syscalls(s, procs, taken, decoy)
        return scenario_memory(s, procs, taken, decoy)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--idle-backend"]:  # bench.py starting its own backend process
        idle_backend(int(argv[1]))
        return 0
    s = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    s = fit_connections(s)
    started = datetime.datetime.now()
    t0 = time.monotonic()
    info = machine()
    print(f"switchyard benchmark: {', '.join(s.scenarios)} for {', '.join(s.peers)}")
    print(f"work folder: {s.workdir}")
    figures: list[Figure] = []
    failed: list[str] = []
    try:
        for name in s.scenarios:
            print(f"== {name}", flush=True)
            try:
                figures += run_scenario(s, name)
            except Exception as e:  # one broken scenario must not lose the others
                failed.append(name)
                print(f"scenario {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        if not s.keep:
            _remove_tree(s.workdir)
        return 130
    elapsed = time.monotonic() - t0
    report = markdown(started, argv, s, info, figures, elapsed)
    if failed:
        report += f"\nScenarios that failed to run: {', '.join(failed)}\n"
    RESULTS.mkdir(exist_ok=True)
    stem = f"{started:%Y-%m-%dT%H%M%S}{'-quick' if s.quick else ''}"
    (RESULTS / f"{stem}.md").write_text(report)
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"),
        "command": ["benchmarks/run", *argv],
        "elapsed_s": round(elapsed, 1),
        "machine": info,
        "settings": {k: v for k, v in s.__dict__.items() if k not in ("workdir", "twistd")},
        "figures": [fig.__dict__ | {"ratios": {p: ratio(fig, p) for p in fig.values
                                               if p != "switchyard"}} for fig in figures],
        "failed": failed,
    }, indent=2, default=str))
    print()
    print(report)
    print(f"written: {RESULTS / stem}.md and .json")
    if s.keep or failed:
        print(f"logs kept in {s.workdir}")
    else:
        _remove_tree(s.workdir)
    return 1 if failed else 0


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
