"""Soak switchyard against its own checking backends and count what was lost or hidden.

Run through ``benchmarks/soak`` (see benchmarks/README.md). Starts the real
``twistd -n switchyard`` with an access log, three checking backends
(``soak_backend.py``) and checking clients (``soak_client.py``), then runs
the phases: random-size transfers with sha256 checks both ways on the fast
path, off it and through a TLS-terminated route while backends are killed
and restarted and SIGHUP is sent; slow readers; slowloris beside a legit
client; descriptor exhaustion and recovery. Every figure goes to a dated
file under ``benchmarks/results/``. It measures and reports; it is never
part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import glob
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))  # the working tree's switchyard, for its version

from bench import Processes, free_port, memory_kib, wait_listening  # noqa: E402
from soak_client import (  # noqa: E402
    GAVE_UP,
    OK,
    SILENT,
    Client,
    Load,
    Result,
    Spec,
    Target,
    make_specs,
)
from soak_crowd import Burst, Flood, SlowReaders, burst, open_fds, start_slowloris  # noqa: E402

TRANSFER_PHASES = ("fast", "ordinary", "tls")  # one listener each
PHASES = (*TRANSFER_PHASES, "proxy", "slow", "slowloris", "fd")
BACKENDS = 3


# -- settings --------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    phases: tuple[str, ...]
    transfers: int  # per transfer phase
    processes: int
    threads: int
    max_connections: int
    reset_rate: float
    client_fault_rate: float
    kill_every: float
    hup_every: float
    slow_readers: int
    slow_seconds: float
    slowloris_clients: int
    slowloris_seconds: float
    legit_transfers: int
    proxy_mutations: int
    fd_limit: int
    seed: int
    keep: bool
    results: Path
    workdir: Path
    twistd: str
    python: str


def parse_args(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(
        prog="benchmarks/soak",
        description="Soak switchyard with checked transfers under faults; count silent failures.")
    p.add_argument("--quick", action="store_true", help="short run (about 2 minutes)")
    p.add_argument("--only", default=",".join(PHASES),
                   help=f"comma-separated phases (default all: {','.join(PHASES)})")
    p.add_argument("--transfers", type=int, default=None,
                   help="transfers per transfer phase (default 100000, quick 3000)")
    p.add_argument("--processes", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--threads", type=int, default=16,
                   help="threads per client process (default 16)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="max_connections of the soak listeners, and the size of the bursts "
                        "that check their open count (default 2048, quick 512)")
    p.add_argument("--kill-every", type=float, default=None,
                   help="seconds between backend kills (default 1.0, quick 0.5)")
    p.add_argument("--reset-rate", type=float, default=0.05,
                   help="share of transfers whose backend resets mid-answer (default 0.05)")
    p.add_argument("--client-fault-rate", type=float, default=0.01,
                   help="share of transfers whose client closes first (default 0.01)")
    p.add_argument("--hup-every", type=float, default=2.0,
                   help="seconds between log rotations + SIGHUP (default 2)")
    p.add_argument("--fd-limit", type=int, default=None,
                   help="switchyard's soft descriptor limit in the fd phase "
                        "(default 4096, quick 1024)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    p.add_argument("--results", default=str(RESULTS),
                   help="folder for the dated results (default benchmarks/results)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder (configs, access logs, every process's log)")
    a = p.parse_args(argv)
    unknown = [n for n in a.only.split(",") if n and n not in PHASES]
    if unknown:
        p.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(PHASES)})")
    twistd = REPO / ".venv" / "bin" / "twistd"
    if not os.access(twistd, os.X_OK):
        p.error(f"{twistd} is missing: start through benchmarks/soak, which creates it")
    quick = a.quick
    return Settings(
        quick=quick,
        phases=tuple(n for n in PHASES if n in a.only.split(",")),
        transfers=a.transfers or (3000 if quick else 100_000),
        processes=max(1, a.processes),
        threads=max(1, a.threads),
        max_connections=a.max_connections or (512 if quick else 2048),
        reset_rate=a.reset_rate,
        client_fault_rate=a.client_fault_rate,
        kill_every=a.kill_every or (0.5 if quick else 1.0),
        hup_every=a.hup_every,
        slow_readers=20 if quick else 100,
        slow_seconds=3 if quick else 30,
        slowloris_clients=2000,
        slowloris_seconds=8 if quick else 60,
        legit_transfers=200 if quick else 2000,
        proxy_mutations=200 if quick else 3000,
        fd_limit=a.fd_limit or (1024 if quick else 4096),
        seed=a.seed if a.seed is not None else int(time.time()),
        keep=a.keep,
        results=Path(a.results),
        workdir=Path(tempfile.mkdtemp(prefix="switchyard-soak-")),
        twistd=str(twistd),
        python=str(REPO / ".venv" / "bin" / "python"),
    )


# -- the access log ----------------------------------------------------------

ACCESS_LINE = re.compile(
    r"^\S+ (?P<client>\S+) (?P<listener>[^/ ]+)/(?P<route>\S+) -> (?P<server>\S+) "
    r"facts\[(?P<facts>[^\]]*)\] in=(?P<bytes_in>\d+) out=(?P<bytes_out>\d+) "
    r"(?P<duration>[\d.]+)s (?:relay=(?P<relay>[\w-]+) )?close=(?P<reason>\w+)"
    r"(?: \((?P<detail>.*)\))?$")
TAG = re.compile(r"(?:^| )path=/soak/(\S+)")


@dataclass(frozen=True)
class AccessLine:
    listener: str
    reason: str
    detail: str
    tag: str | None
    client_port: int
    in_twistd_log: bool  # not in the access_log file, where every line should be
    text: str


TWISTD_ACCESS = " [switchyard.access#info] "


def parse_access_line(text: str, in_twistd_log: bool = False) -> AccessLine | None:
    m = ACCESS_LINE.match(text.replace(TWISTD_ACCESS, " ", 1) if in_twistd_log else text)
    if m is None:
        return None
    tag = TAG.search(m["facts"])
    client = m["client"]
    return AccessLine(listener=m["listener"], reason=m["reason"], detail=m["detail"] or "",
                      tag=tag[1] if tag else None,
                      client_port=int(client.rpartition(":")[2]) if ":" in client else 0,
                      in_twistd_log=in_twistd_log, text=text)


class AccessLog:
    """The access log file and the files it was rotated to, read as they grow.

    Rotation is logrotate's: rename, then SIGHUP. Files are followed by inode,
    so lines written to the old file before the reopen are read too. Access
    lines that went to the twistd log instead (``twistd_log``) are read too,
    and marked: with ``access_log`` set, none should be there.
    """

    def __init__(self, path: Path, twistd_log: Path) -> None:
        self.path = path
        self.twistd_log = twistd_log
        self.offsets: dict[int, int] = {}
        self.rotations = 0
        self.unparsed: list[str] = []

    def rotate(self) -> None:
        self.rotations += 1
        try:
            os.rename(self.path, f"{self.path}.{self.rotations}")
        except FileNotFoundError:
            pass  # nothing logged since the last rotation

    def new_lines(self) -> list[AccessLine]:
        lines: list[AccessLine] = []
        names = sorted(glob.glob(f"{glob.escape(str(self.path))}*"))
        for name in [*names, str(self.twistd_log)]:
            in_twistd_log = name == str(self.twistd_log)
            try:
                with open(name, "rb") as f:
                    inode = os.fstat(f.fileno()).st_ino
                    f.seek(self.offsets.get(inode, 0))
                    data = f.read()
            except OSError:
                continue
            whole = data[:data.rfind(b"\n") + 1]
            self.offsets[inode] = self.offsets.get(inode, 0) + len(whole)
            for raw in whole.decode("utf-8", "replace").splitlines():
                if in_twistd_log and TWISTD_ACCESS not in raw:
                    continue
                line = parse_access_line(raw, in_twistd_log)
                if line is None:
                    self.unparsed.append(raw)
                else:
                    lines.append(line)
        return lines


# -- processes ---------------------------------------------------------------


class Backends:
    """The checking backends, by index: started, killed and restarted on their ports."""

    def __init__(self, s: Settings, procs: Processes, ports: Sequence[int]) -> None:
        self.s = s
        self.procs = procs
        self.ports = list(ports)
        self.events_path = s.workdir / "backend-events.log"
        self.events_path.touch()
        self.events_offset = 0
        self.lock = threading.Lock()

    def name(self, i: int) -> str:
        return f"backend-{i}"

    def start(self, i: int) -> None:
        name = self.name(i)
        proc = self.procs.start(name, [self.s.python, str(HERE / "soak_backend.py"),
                                       str(self.ports[i]), str(self.events_path)])
        wait_listening(self.ports[i], proc, self.procs, name)

    def start_all(self) -> None:
        for i in range(len(self.ports)):
            self.start(i)

    def fault(self, i: int, how: str) -> None:
        """SIGKILL, or reset-then-exit (SIGUSR1): every open connection reset."""
        proc = self.procs.started[self.name(i)]
        os.kill(proc.pid, signal.SIGKILL if how == "sigkill" else signal.SIGUSR1)
        proc.wait(10)

    def ensure_up(self) -> None:
        for i in range(len(self.ports)):
            if self.procs.started[self.name(i)].poll() is not None:
                self.start(i)

    def new_events(self) -> list[str]:
        with open(self.events_path, "rb") as f:
            f.seek(self.events_offset)
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]
        self.events_offset += len(whole)
        return whole.decode("utf-8", "replace").splitlines()


@dataclass
class Switchyard:
    """One running ``twistd -n switchyard``: its process, ports and access log."""

    proc: subprocess.Popen[bytes]
    name: str
    ports: dict[str, int]
    log: AccessLog

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return memory_kib(self.proc.pid)[0]

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, wait: float) -> float | None:
        """SIGTERM; seconds until it exited, or None if it had not after ``wait`` s."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - started


GRACE_PERIOD = 3


def listener_toml(name: str, port: int, extra: str = "") -> str:
    return textwrap.dedent(f"""\

        [listener.{name}]
        listen = "127.0.0.1:{port}"
        grace_period = {GRACE_PERIOD}
        """) + extra


def soak_route(table: str) -> str:
    return textwrap.dedent(f"""\

        [[{table}.route]]
        name = "soak"
        match = "http"
        path = "/soak/"
        to = "check"
        """)


def main_config(s: Settings, ports: dict[str, int], backend_ports: Sequence[int],
                cert: Path, key: Path, access_log: Path) -> str:
    limit = f"max_connections = {s.max_connections}\n"
    servers = ", ".join(f'"127.0.0.1:{p}"' for p in backend_ports)
    return (
        f'# Generated by benchmarks/soak.py\naccess_log = "{access_log}"\n'
        + listener_toml("fast", ports["fast"], limit) + soak_route("listener.fast")
        + listener_toml("ordinary", ports["ordinary"], limit + "fast_path = false\n")
        + soak_route("listener.ordinary")
        + listener_toml("tls", ports["tls"], limit) + textwrap.dedent(f"""\

            [[listener.tls.route]]
            name = "term"
            match = "tls"
            sni = ["soak.example"]
            to = "term"

            [tls.term]
            certificates = [{{ cert = "{cert}", key = "{key}" }}]
            """) + soak_route("tls.term")
        + listener_toml("front", ports["front"], 'accept_proxy = ["127.0.0.1"]\n')
        + soak_route("listener.front")
        # No max_connections: slowloris's 2,000 clients must get in.
        + listener_toml("open", ports["open"]) + soak_route("listener.open")
        + textwrap.dedent(f"""\

            # Backends die and come back every second or so: with the
            # default passive_down_time (30 s) all three would soon be down.
            [backend.check]
            servers = [{servers}]
            retries = 2
            connect_timeout = 2
            passive_down_time = 1
            """))


def fd_config(port: int, backend_ports: Sequence[int], access_log: Path) -> str:
    servers = ", ".join(f'"127.0.0.1:{p}"' for p in backend_ports)
    # The backend's health options are the defaults a user would have.
    return (f'# Generated by benchmarks/soak.py\naccess_log = "{access_log}"\n'
            + listener_toml("fd", port) + soak_route("listener.fd")
            + f"\n[backend.check]\nservers = [{servers}]\n")


def start_switchyard(s: Settings, procs: Processes, name: str, config: str,
                     ports: dict[str, int], access_log: Path,
                     prefix: Sequence[str] = ()) -> Switchyard:
    conf = s.workdir / f"{name}.toml"
    conf.write_text(config)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = procs.start(name, [*prefix, s.twistd, "-n", "--pidfile=", "switchyard",
                              "--config", str(conf)], env=env, cwd=s.workdir)
    for port in ports.values():
        wait_listening(port, proc, procs, name)
    return Switchyard(proc, name, ports, AccessLog(access_log, procs.logdir / f"{name}.log"))


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "soak.pem", workdir / "soak.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=soak.example", "-addext", "subjectAltName=DNS:soak.example",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


# -- faults during transfers ---------------------------------------------------


class Injector(threading.Thread):
    """Kills backends (SIGKILL or reset-then-exit) and restarts them; rotates + SIGHUPs."""

    def __init__(self, s: Settings, backends: Backends, sy: Switchyard, rng: random.Random):
        super().__init__(daemon=True)
        self.s = s
        self.backends = backends
        self.sy = sy
        self.rng = rng
        self.stopping = threading.Event()
        self.counts: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        now = time.monotonic()
        next_kill = now + self.s.kill_every * self.rng.uniform(0.5, 1.5)
        next_hup = now + self.s.hup_every
        restarts: list[tuple[float, int]] = []
        down: set[int] = set()
        while not self.stopping.wait(0.02):
            now = time.monotonic()
            if now >= next_hup:
                self.sy.log.rotate()
                os.kill(self.sy.pid, signal.SIGHUP)
                self.counts["sighup"] += 1
                next_hup = now + self.s.hup_every
            if now >= next_kill:
                up = [i for i in range(BACKENDS) if i not in down]
                if len(up) > 1:  # one always stays: the phase measures relaying, not 503s
                    i = self.rng.choice(up)
                    how = self.rng.choice(("sigkill", "reset-then-exit"))
                    self.backends.fault(i, how)
                    self.counts[how] += 1
                    down.add(i)
                    restarts.append((now + self.rng.uniform(0.1, 0.5), i))
                next_kill = now + self.s.kill_every * self.rng.uniform(0.5, 1.5)
            for when, i in list(restarts):
                if now >= when:
                    restarts.remove((when, i))
                    self.backends.start(i)
                    down.discard(i)
                    self.counts["restarts"] += 1
        self.backends.ensure_up()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


# -- phases ------------------------------------------------------------------


@dataclass
class Run:
    s: Settings
    procs: Processes
    backends: Backends
    sy: Switchyard
    cafile: str
    rng: random.Random
    report: dict[str, Any] = field(default_factory=dict)


def target(run: Run, listener: str, timeout: float = 30.0) -> Target:
    return Target(run.sy.ports[listener], run.cafile if listener == "tls" else None, timeout)


def settle(log: AccessLog, want: set[str], quiet: float = 3.0, limit: float = 20.0
           ) -> list[AccessLine]:
    """Read access lines until every tag in ``want`` is in, or none came for ``quiet`` s."""
    lines: list[AccessLine] = []
    seen: set[str] = set()
    deadline = time.monotonic() + limit
    last_new = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        new = log.new_lines()
        if new:
            last_new = time.monotonic()
            lines += new
            seen.update(line.tag for line in new if line.tag)
        if want <= seen and time.monotonic() - last_new > 1.2:
            break  # lines are flushed within a second: one more second for the rest
        if time.monotonic() - last_new > quiet:
            break
    return lines


def open_count_check(run: Run, listener: str) -> dict[str, Any]:
    """Whether ``listener`` counts no connection that is gone, seen from outside.

    Today: bursts of exactly max_connections held connections, all of which
    must be served (each counted but gone connection makes one over_limit).
    The first burst shows what the phase left counted, the second what the
    first burst left (its clients close after their answer: the ordinary
    way). The one place to switch to the metrics endpoint once it exists.
    """
    size = run.s.max_connections
    rounds: list[dict[str, Any]] = []
    for i in range(2):
        result: Burst = burst(run.sy.ports[listener], size,
                              run.cafile if listener == "tls" else None, label=f"{listener}{i}")
        rounds.append({"served": result.served, "failed": dict(result.failed),
                       "seconds": round(result.seconds, 2)})
    lines = settle(run.sy.log, set(), quiet=1.2, limit=10)
    return {"listener": listener, "burst": size, "served": rounds[0]["served"],
            "failed": rounds[0]["failed"], "counted_but_gone": size - rounds[0]["served"],
            "after_a_burst": size - rounds[1]["served"], "rounds": rounds,
            "over_limit_lines": sum(1 for line in lines if line.reason == "over_limit")}


def phase_transfers(run: Run, listener: str) -> dict[str, Any]:
    s = run.s
    specs = make_specs(listener, s.transfers, run.rng, s.reset_rate, s.client_fault_rate)
    by_tag = {spec.tag: spec for spec in specs}
    run.sy.log.new_lines()
    run.backends.new_events()
    print(f"  {s.transfers:,} transfers, {s.processes}x{s.threads} at a time, backends "
          f"killed every ~{s.kill_every:g}s, SIGHUP every {s.hup_every:g}s", flush=True)
    injector = Injector(s, run.backends, run.sy, run.rng)
    cpu0 = run.sy.cpu_seconds()
    started = time.monotonic()
    load = Load(target(run, listener), specs, s.processes, s.threads, run.rng.randrange(1 << 30))
    injector.start()
    last_print = started
    try:
        while not load.ready():
            time.sleep(0.2)
            if time.monotonic() - last_print >= 10:
                last_print = time.monotonic()
                rate = load.done / (last_print - started)
                print(f"  {load.done:,}/{load.total:,} transfers, {rate:,.0f}/s", flush=True)
    except BaseException:
        load.abort()
        injector.stop()
        raise
    injector.stop()
    results = load.results()
    elapsed = time.monotonic() - started
    cpu = run.sy.cpu_seconds() - cpu0
    rss = run.sy.rss_kib()
    lines = settle(run.sy.log, {r[0] for r in results})
    events = run.backends.new_events()
    write_failures(s.workdir / f"failures-{listener}.tsv", results, by_tag, lines)
    report = tally(listener, results, by_tag, lines, events)
    report.update(seconds=round(elapsed, 1), transfers_per_s=round(len(results) / elapsed, 1),
                  rss_kib_after_transfers=rss,
                  switchyard_cpu_share=round(cpu / elapsed, 2), faults=dict(injector.counts))
    report["open_count"] = open_count_check(run, listener)
    return report


def write_failures(path: Path, results: Sequence[Result], by_tag: dict[str, Spec],
                   lines: Sequence[AccessLine]) -> None:
    """Every transfer that was not ok, with its spec and access line: the work folder's
    record for whoever looks into a failure."""
    line_by_tag = {line.tag: line for line in lines if line.tag}
    with open(path, "w") as f:
        f.write("tag\toutcome\tdetail\tclient port\tseconds\trequest\tanswer\tfault\t"
                "client fault\taccess line\n")
        for tag, outcome, detail, _, seconds, port in results:
            if outcome == OK:
                continue
            spec = by_tag[tag]
            line = line_by_tag.get(tag)
            f.write(f"{tag}\t{outcome}\t{detail}\t{port}\t{seconds:.3f}\t{spec.size}\t"
                    f"{spec.answer_size}\t{spec.fault}\t{spec.client_fault}\t"
                    f"{line.text if line else '(none)'}\n")


def tally(listener: str, results: Sequence[Result], by_tag: dict[str, Spec],
          lines: Sequence[AccessLine], events: Sequence[str]) -> dict[str, Any]:
    outcomes: collections.Counter[str] = collections.Counter()
    samples: dict[str, list[str]] = collections.defaultdict(list)
    injected: collections.Counter[str] = collections.Counter()
    bytes_moved = 0
    line_by_tag: dict[str, list[AccessLine]] = collections.defaultdict(list)
    for line in lines:
        if line.tag:
            line_by_tag[line.tag].append(line)
    reasons_by_outcome: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    reasons_injected: collections.Counter[str] = collections.Counter()
    missing = duplicated = 0
    for tag, outcome, detail, _, _, port in results:
        spec = by_tag[tag]
        outcomes[outcome] += 1
        if outcome == OK:
            bytes_moved += spec.size + spec.answer_size
        elif len(samples[outcome]) < 5:
            samples[outcome].append(f"{tag} (client port {port}, request {spec.size} B, "
                                    f"answer {spec.answer_size} B, {spec.fault}): {detail}")
        found = line_by_tag.get(tag, [])
        if outcome not in ("refused", "connect_error") and not found:
            missing += 1
        if len(found) > 1:
            duplicated += 1
        reason = found[0].reason if found else "(no line)"
        reasons_by_outcome[outcome][reason] += 1
        if spec.fault.startswith("reset:") and spec.client_fault == "none":
            injected[outcome] += 1
            reasons_injected[reason] += 1
    # The backend's view: a request cut short and ended by a clean EOF is a
    # silent truncation too (a client's reset passed on as a FIN).
    cut_requests: collections.Counter[str] = collections.Counter()
    for event in events:
        kind, _, tag, *_ = event.split() + ["", ""]
        if kind == "short_request_eof" and tag in by_tag:
            cut_requests[by_tag[tag].client_fault.partition(":")[0]] += 1
    silent = sum(outcomes[k] for k in SILENT)
    visible = sum(n for k, n in outcomes.items() if k not in SILENT and k not in (OK, GAVE_UP))
    untagged = collections.Counter(line.reason for line in lines if not line.tag)
    return {
        "listener": listener,
        "transfers": len(results),
        "ok": outcomes[OK],
        "visible": visible,
        "silent": silent,
        "silent_at_backend": sum(cut_requests.values()),
        "silent_at_backend_by_client_fault": dict(cut_requests),
        "client_gave_up": outcomes[GAVE_UP],
        "outcomes": dict(outcomes),
        "samples": dict(samples),
        "injected_backend_resets": dict(injected),
        "access_reasons_of_injected_resets": dict(reasons_injected),
        "access_reasons_by_outcome": {k: dict(v) for k, v in reasons_by_outcome.items()},
        "access_lines": len(lines),
        "access_lines_in_twistd_log": sum(1 for line in lines if line.in_twistd_log),
        "transfers_without_access_line": missing,
        "transfers_with_several_lines": duplicated,
        "untagged_access_lines": dict(untagged),
        "backend_events": dict(collections.Counter(e.split()[0] for e in events)),
        "backend_event_samples": list(events[:5]),
        "ok_megabytes": round(bytes_moved / 1e6, 1),
    }


V2 = b"\r\n\r\n\x00\r\nQUIT\n"
# (case, header, what must happen: the transfer is served, or bad_proxy_header)
PROXY_CASES: list[tuple[str, bytes, str]] = [
    ("v1 TCP4", b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 443\r\n", "ok"),
    ("v1 TCP6", b"PROXY TCP6 2001:db8::1 ::1 40000 443\r\n", "ok"),
    ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n", "ok"),
    ("v2 TCP4", V2 + b"\x21\x11\x00\x0c\xc0\x00\x02\x01\x7f\x00\x00\x01\x9c\x40\x01\xbb", "ok"),
    ("v2 LOCAL", V2 + b"\x20\x00\x00\x00", "ok"),
    ("v1 address of three parts", b"PROXY TCP4 127.0.1 127.0.0.1 1 2\r\n", "bad_proxy_header"),
    ("v1 port 99999", b"PROXY TCP4 127.0.0.1 127.0.0.1 99999 2\r\n", "bad_proxy_header"),
    ("v1 port -1", b"PROXY TCP4 127.0.0.1 127.0.0.1 -1 2\r\n", "bad_proxy_header"),
    ("v1 TCP6 with IPv4 addresses", b"PROXY TCP6 127.0.0.1 127.0.0.1 1 2\r\n",
     "bad_proxy_header"),
    ("v1 a field missing", b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n", "bad_proxy_header"),
    ("v1 no CRLF in 107 bytes", b"PROXY TCP4 " + b"1" * 120, "bad_proxy_header"),
    ("v2 unknown family", V2 + b"\x21\x31\x00\x0c" + bytes(12), "bad_proxy_header"),
    ("v2 address block too short", V2 + b"\x21\x11\x00\x04" + bytes(4), "bad_proxy_header"),
    ("no header", b"", "bad_proxy_header"),
]


def phase_proxy(run: Run) -> dict[str, Any]:
    """PROXY headers from a trusted front: good ones served, bad ones closed as such."""
    from fuzz_corpus import Mutator

    client = Client(seed=5)
    t = target(run, "front", timeout=10)
    twistd_log = run.procs.logdir / f"{run.sy.name}.log"
    log_offset = twistd_log.stat().st_size
    run.sy.log.new_lines()
    cases: dict[str, tuple[str, list[Result]]] = {}
    for name, header, expected in PROXY_CASES:
        cases[name] = (expected, [
            client.transfer(t, Spec(f"proxy-{len(cases)}-{i}", 256, 256, prefix=header), None)
            for i in range(10)])
    # Closed before a route, a line has no path: found by the client's port,
    # so the cases' lines are read before the mutations reuse ports.
    found = settle(run.sy.log, {r[0] for _, results in cases.values() for r in results})
    # Mutations of the good headers: whatever they become, a logged, bounded end.
    mutator = Mutator(run.rng, [h for _, h, e in PROXY_CASES if e == "ok"],
                      [h for _, h, _ in PROXY_CASES])
    specs = [Spec(f"proxy-m-{i}", 256, 256, prefix=mutator.next())
             for i in range(run.s.proxy_mutations)]
    # In parallel: a header that is a valid prefix waits for inspect_timeout (5 s).
    with ThreadPoolExecutor(32) as pool:
        mutated = list(pool.map(lambda spec: client.transfer(t, spec, None), specs))
    found_mutated = settle(run.sy.log, {r[0] for r in mutated})
    by_tag = {line.tag: line for line in found + found_mutated if line.tag}
    by_port = {line.client_port: line for line in found if not line.tag}
    by_port_mutated = {line.client_port: line for line in found_mutated if not line.tag}

    def reason(r: Result) -> str:
        ports = by_port_mutated if r[0].startswith("proxy-m-") else by_port
        line = by_tag.get(r[0]) or ports.get(r[5])
        # Not found: a header accepted with a mutated source port hides the client's.
        return line.reason if line else "(unmatched)"

    log_text = twistd_log.read_bytes()[log_offset:].decode("utf-8", "replace")
    out: dict[str, Any] = {"cases": {}, "tracebacks_in_twistd_log": log_text.count("Traceback")}
    wrong = 0
    for name, (expected, results) in cases.items():
        reasons = collections.Counter(reason(r) for r in results)
        right = reasons.get("normal" if expected == "ok" else expected, 0)
        wrong += len(results) - right
        out["cases"][name] = {"expected": expected, "access_reasons": dict(reasons),
                              "as_expected": right, "of": len(results),
                              "client_outcomes": dict(collections.Counter(r[1] for r in results)),
                              "seconds_max": round(max(r[4] for r in results), 3)}
    out["cases_not_as_expected"] = wrong
    out["mutated"] = {
        "transfers": len(mutated),
        "outcomes": dict(collections.Counter(r[1] for r in mutated)),
        "access_reasons": dict(collections.Counter(reason(r) for r in mutated)),
        "silent": sum(1 for r in mutated if r[1] in SILENT),
    }
    out["traceback_samples"] = [block.strip()[-300:] for block in
                                log_text.split("Traceback")[1:3]]
    print(f"  {len(PROXY_CASES)} cases: {wrong} transfers not as expected; "
          f"{len(mutated)} mutated headers: {_counts(out['mutated']['access_reasons'])}; "
          f"{out['tracebacks_in_twistd_log']} tracebacks in the twistd log", flush=True)
    return out


def phase_slow(run: Run) -> dict[str, Any]:
    """Slow readers on each relay path: switchyard's RSS must stay flat."""
    s = run.s
    out: dict[str, Any] = {}
    for listener in TRANSFER_PHASES:
        rss0 = run.sy.rss_kib()
        readers = SlowReaders(run.sy.ports[listener], s.slow_readers,
                              run.cafile if listener == "tls" else None, listener)
        started = time.monotonic()
        readers.start()
        samples: list[tuple[float, int]] = []
        while time.monotonic() - started < s.slow_seconds + 2:
            samples.append((time.monotonic() - started, run.sy.rss_kib()))
            time.sleep(0.5)
        readers.stop()
        ramped = [kib for t, kib in samples if t >= 2]
        growth = (ramped[-1] - ramped[0]) / max(0.5, samples[-1][0] - 2)
        out[listener] = {
            "readers": s.slow_readers, "seconds": s.slow_seconds,
            "rss_kib_before": rss0, "rss_kib_after_2s": ramped[0], "rss_kib_end": ramped[-1],
            "rss_kib_max": max(kib for _, kib in samples),
            "rss_growth_kib_per_s_after_2s": round(growth, 1),
            "kib_per_reader": round((ramped[-1] - rss0) / s.slow_readers, 1),
            "bytes_read_by_readers": readers.received,
            "readers_closed_early": readers.closed,
        }
        print(f"  {listener}: RSS {rss0:,} -> {ramped[0]:,} KiB after 2 s -> {ramped[-1]:,} "
              f"KiB at {s.slow_seconds:g} s ({growth:+.1f} KiB/s)", flush=True)
    settle(run.sy.log, set(), quiet=1.5, limit=5)
    out["open_count"] = [open_count_check(run, listener) for listener in TRANSFER_PHASES]
    return out


def legit_latencies(run: Run, count: int,
                    label: str) -> tuple[list[float], collections.Counter[str]]:
    client = Client(seed=7)
    t = target(run, "open", timeout=10)
    times: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    for i in range(count):
        tag, outcome, _, _, seconds, _ = client.transfer(t, Spec(f"legit-{label}-{i}", 1024, 1024),
                                                         None)
        if outcome == OK:
            times.append(seconds)
        else:
            failures[outcome] += 1
    return times, failures


def percentiles(times: Sequence[float]) -> dict[str, float | None]:
    if len(times) < 2:
        return {"p50_ms": None, "p99_ms": None}
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2)}


def phase_slowloris(run: Run) -> dict[str, Any]:
    s = run.s
    base, base_failed = legit_latencies(run, s.legit_transfers, "baseline")
    rss0, cpu0 = run.sy.rss_kib(), run.sy.cpu_seconds()
    proc, out = start_slowloris(run.sy.ports["open"], s.slowloris_clients, s.slowloris_seconds)
    started = time.monotonic()
    time.sleep(2)  # let the crowd connect
    fds_crowd = open_fds(run.sy.pid)
    loaded, loaded_failed = [], collections.Counter[str]()
    while time.monotonic() - started < s.slowloris_seconds - 1:
        times, failed = legit_latencies(run, 50, "slowloris")
        loaded += times
        loaded_failed += failed
    rss1, cpu1 = run.sy.rss_kib(), run.sy.cpu_seconds()
    stats = out.get(timeout=s.slowloris_seconds + 30)
    proc.join(10)
    settle(run.sy.log, set(), quiet=1.5, limit=8)
    result = {
        "clients": s.slowloris_clients, "seconds": s.slowloris_seconds,
        "crowd": stats, "switchyard_fds_with_crowd": fds_crowd,
        "baseline": {"transfers": len(base), **percentiles(base), "failed": dict(base_failed)},
        "under_slowloris": {"transfers": len(loaded), **percentiles(loaded),
                            "failed": dict(loaded_failed)},
        "rss_kib_before": rss0, "rss_kib_during": rss1,
        "switchyard_cpu_share": round((cpu1 - cpu0) / (time.monotonic() - started), 2),
    }
    print(f"  legit p50/p99: {result['baseline']['p50_ms']}/{result['baseline']['p99_ms']} ms "
          f"alone, {result['under_slowloris']['p50_ms']}/{result['under_slowloris']['p99_ms']} "
          f"ms beside {s.slowloris_clients:,} slowloris clients", flush=True)
    return result


def phase_fd(run: Run) -> dict[str, Any]:
    """Descriptor exhaustion: flood, hold, stop; how long until a client is served again."""
    s = run.s
    port = free_port(set(run.sy.ports.values()) | set(run.backends.ports))
    access_log = s.workdir / "fd-access.log"
    sy = start_switchyard(s, run.procs, "switchyard-fd",
                          fd_config(port, run.backends.ports, access_log), {"fd": port},
                          access_log, prefix=["prlimit", f"--nofile={s.fd_limit}:"])
    client = Client(seed=11)
    t = Target(port, None, timeout=2)
    probes = 0

    def probe() -> str:
        nonlocal probes
        probes += 1
        return client.transfer(t, Spec(f"fd-probe-{probes}", 512, 512), None)[1]

    base = collections.Counter(probe() for _ in range(20))
    time.sleep(1.2)
    rss0, fds0 = sy.rss_kib(), open_fds(sy.pid)
    flood = Flood(port, "fd")
    opener = threading.Thread(target=flood.open, args=(s.fd_limit,), daemon=True)
    opener.start()
    plateau, last, stable_since = fds0, fds0, time.monotonic()
    while time.monotonic() - stable_since < 1.0 or opener.is_alive():
        time.sleep(0.1)
        now_fds = open_fds(sy.pid)
        if now_fds != last:
            last, stable_since = now_fds, time.monotonic()
        plateau = max(plateau, now_fds)
    opener.join()
    rss_full, fds_full = sy.rss_kib(), open_fds(sy.pid)
    cpu0, hold_started = sy.cpu_seconds(), time.monotonic()
    during = collections.Counter(probe() for _ in range(3))
    time.sleep(max(0.0, 3 - (time.monotonic() - hold_started)))
    cpu_share = (sy.cpu_seconds() - cpu0) / (time.monotonic() - hold_started)
    held = max(0, (fds_full - fds0) // 2)
    stopped = flood.close()
    first_ok: float | None = None
    after: list[tuple[float, str]] = []
    while time.monotonic() - stopped < 40:
        outcome = probe()
        at = time.monotonic() - stopped
        after.append((round(at, 3), outcome))
        if outcome == OK and first_ok is None:
            first_ok = at
        if first_ok is not None and at - first_ok > 2:
            break
        time.sleep(0.02)
    failures_after_ok = [(at, o) for at, o in after if first_ok is not None and at > first_ok
                         and o != OK]
    lines = settle(sy.log, set(), quiet=1.5, limit=10)
    probe_reasons = collections.Counter(line.reason for line in lines
                                        if line.tag and line.tag.startswith("fd-probe-"))
    all_reasons = collections.Counter(line.reason for line in lines)
    twistd_log = (run.procs.logdir / "switchyard-fd.log").read_text(errors="replace")
    down_marks = [line for line in twistd_log.splitlines() if " is DOWN" in line]
    exit_s = sy.stop(GRACE_PERIOD + 10)
    result = {
        "fd_limit": s.fd_limit, "flood": s.fd_limit, "flood_failed": dict(flood.failed),
        "baseline_probes": dict(base),
        "rss_kib_before": rss0, "fds_before": fds0, "fds_at_limit": fds_full,
        "held_connections": held,
        "rss_kib_at_limit": rss_full,
        "kib_per_held_connection": round((rss_full - rss0) / held, 2) if held else None,
        "switchyard_cpu_share_while_exhausted": round(cpu_share, 2),
        "probes_while_exhausted": dict(during),
        "recovery_s": round(first_ok, 3) if first_ok is not None else None,
        "probes_after_flood": len(after),
        "probe_outcomes_after_flood": dict(collections.Counter(o for _, o in after)),
        "failures_after_first_ok": len(failures_after_ok),
        "probe_access_reasons": dict(probe_reasons),
        "access_reasons": dict(all_reasons),
        "backend_marked_down": len(down_marks),
        "backend_down_samples": [line[-200:] for line in down_marks[:3]],
        "exit_after_sigterm_s": round(exit_s, 2) if exit_s is not None else None,
    }
    print(f"  {held:,} held at the limit, {result['kib_per_held_connection']} KiB each; "
          f"first success {result['recovery_s']} s after the flood stopped; backend marked "
          f"DOWN {len(down_marks)} times", flush=True)
    return result


# -- report ------------------------------------------------------------------


def verdicts(s: Settings, report: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Issue 12's "done when", one row each: (criterion, met or None if not run, figures)."""
    rows: list[tuple[str, bool | None, str]] = []
    phases = report.get("phases", {})
    for listener in ("fast", "ordinary", "tls"):
        p = phases.get(listener)
        if p is None:
            rows.append((f"0 silent failures, {listener}", None, "not run"))
            continue
        enough = p["transfers"] >= 100_000
        silent = p["silent"] + p["silent_at_backend"]
        met = False if silent else True if enough else None
        rows.append((f"0 silent failures in >= 100,000 transfers with faults, {listener}", met,
                     f"{p['silent']:,} silent at the client, {p['silent_at_backend']:,} at the "
                     f"backend, in {p['transfers']:,}"
                     + ("" if enough else " (a full run makes 100,000)")))
    fd = phases.get("fd")
    if fd is None:
        rows.append(("recovery from descriptor exhaustion <= 1 s", None, "not run"))
    else:
        r = fd["recovery_s"]
        rows.append(("recovery from descriptor exhaustion <= 1 s",
                     r is not None and r <= 1 and fd["failures_after_first_ok"] == 0,
                     f"first success after {r} s; {fd['failures_after_first_ok']} failures "
                     f"after it; backend marked DOWN {fd['backend_marked_down']} times"))
    px = phases.get("proxy")
    if px is not None:
        rows.append(("PROXY headers: bad ones closed as bad_proxy_header, no traceback",
                     px["cases_not_as_expected"] == 0 and px["tracebacks_in_twistd_log"] == 0
                     and px["mutated"]["silent"] == 0,
                     f"{px['cases_not_as_expected']} transfers not as expected; "
                     f"{px['tracebacks_in_twistd_log']} tracebacks"))
    checks = []
    for name, p in phases.items():
        found = p.get("open_count")
        for c in found if isinstance(found, list) else [found] if found else []:
            checks.append((name, c))
    if checks:
        leaks = [f"after {name}: {c['listener']} {c['counted_but_gone']} counted but gone, "
                 f"{c['after_a_burst']} after a burst of {c['burst']}" for name, c in checks
                 if c["counted_but_gone"] or c["after_a_burst"]]
        rows.append(("listener open count back to 0 after every phase (TLS included)",
                     not leaks, "; ".join(leaks) if leaks else
                     f"{len(checks)} bursts of {s.max_connections} all served"))
    exits = report.get("exit_after_sigterm_s", "not run")
    rows.append(("SIGTERM: switchyard exits within grace_period + 10 s",
                 None if exits == "not run" else exits is not None,
                 f"{exits} s (grace_period {GRACE_PERIOD})" if exits not in (None, "not run")
                 else str(exits)))
    return rows


def markdown(s: Settings, argv: Sequence[str], started: datetime.datetime,
             report: dict[str, Any]) -> str:
    out = [f"# switchyard soak, {started:%Y-%m-%d %H:%M:%S}", "",
           f"Command: `benchmarks/soak {' '.join(argv)}`, {report['elapsed_s']:.0f} s, "
           f"seed {s.seed}; switchyard's RSS at the start "
           f"{report.get('rss_kib_at_start', 0):,} KiB", "", "## Machine", ""]
    out += [f"- {k}: {v}" for k, v in report["machine"].items()]
    out.append("- phases took: " + ", ".join(f"{k} {v:g} s"
                                             for k, v in report.get("phase_seconds", {}).items()))
    out += ["", "## Verdict (issue 12, done when)", "", "| criterion | met | figures |",
            "|---|---|---|"]
    for name, met, figures in verdicts(s, report):
        out.append(f"| {name} | {'—' if met is None else 'yes' if met else '**NO**'} | "
                   f"{figures} |")
    phases = report.get("phases", {})
    transfer = [phases[p] for p in TRANSFER_PHASES if p in phases]
    if transfer:
        out += ["", "## Transfers under faults", "",
                f"Each transfer: random sizes each way (70% < 4 KiB, 1% 256 KiB-1 MiB), "
                f"sha256 checked both ways; {s.reset_rate:.0%} with a backend reset "
                f"mid-answer, {s.client_fault_rate:.0%} where the client closes first (a FIN "
                "after its request, a reset mid-answer, a reset mid-request); "
                f"backends killed (SIGKILL or reset-then-exit) every ~{s.kill_every:g} s "
                f"and restarted; access log rotated + SIGHUP every {s.hup_every:g} s.", "",
                "| | " + " | ".join(p["listener"] for p in transfer) + " |",
                "|---|" + "---|" * len(transfer)]

        def row(label: str, get: Callable[[dict[str, Any]], Any]) -> None:
            out.append(f"| {label} | " + " | ".join(str(get(p)) for p in transfer) + " |")

        row("transfers", lambda p: f"{p['transfers']:,}")
        row("ok", lambda p: f"{p['ok']:,}")
        row("visible failures", lambda p: f"{p['visible']:,}")
        row("**silent failures** (at the client)", lambda p: f"**{p['silent']:,}**")
        row("**silent failures at the backend** (a request cut, then a clean EOF)",
            lambda p: f"**{p['silent_at_backend']:,}**"
            + (f" (client faults: {_counts(p['silent_at_backend_by_client_fault'])})"
               if p["silent_at_backend"] else ""))
        row("client closed first (by design)", lambda p: f"{p['client_gave_up']:,}")
        row("outcomes", lambda p: _counts(p["outcomes"]))
        row("injected backend resets: client saw", lambda p: _counts(p["injected_backend_resets"]))
        row("injected backend resets: access log said",
            lambda p: _counts(p["access_reasons_of_injected_resets"]))
        row("silent failures: access log said", lambda p: _counts(
            {r: n for o in SILENT for r, n in p["access_reasons_by_outcome"].get(o, {}).items()}))
        row("transfers without / with several access lines",
            lambda p: f"{p['transfers_without_access_line']} / {p['transfers_with_several_lines']}")
        row("untagged access lines", lambda p: _counts(p["untagged_access_lines"]))
        row("access lines in the twistd log, not the access_log file",
            lambda p: f"{p['access_lines_in_twistd_log']:,} of {p['access_lines']:,}")
        row("backend saw", lambda p: _counts(p["backend_events"]) or "nothing wrong")
        row("faults injected", lambda p: _counts(p["faults"]))
        row("transfers/s; switchyard CPU", lambda p: f"{p['transfers_per_s']:,.0f}; "
                                                     f"{p['switchyard_cpu_share']:.0%}")
        row("ok data moved", lambda p: f"{p['ok_megabytes']:,} MB")
        row("switchyard RSS after the transfers; after the bursts", lambda p:
            f"{p['rss_kib_after_transfers']:,} KiB; {p.get('rss_kib_after', 0):,} KiB")
        row(f"open count: bursts of {s.max_connections}, served (after the phase; "
            "after the first burst)", lambda p: _served(p["open_count"]))
        for p in transfer:
            for outcome, lines in p["samples"].items():
                if outcome in SILENT:
                    out += ["", f"Samples of `{outcome}` on {p['listener']}:", ""]
                    out += [f"- {line}" for line in lines]
    if "proxy" in phases:
        px = phases["proxy"]
        out += ["", "## PROXY headers from a trusted front", "",
                "A listener with `accept_proxy = [\"127.0.0.1\"]`; each case 10 transfers "
                "with the header first; bad headers must end in `close=bad_proxy_header`, "
                "never a traceback.", "",
                "| case | expected | access log said | client saw | slowest |",
                "|---|---|---|---|---|"]
        for name, c in px["cases"].items():
            mark = "" if c["as_expected"] == c["of"] else " **(not as expected)**"
            out.append(f"| {name} | {c['expected']} | {_counts(c['access_reasons'])}{mark} | "
                       f"{_counts(c['client_outcomes'])} | {c['seconds_max']} s |")
        m = px["mutated"]
        out += ["", f"{m['transfers']:,} mutated headers: access log "
                f"{_counts(m['access_reasons'])}; clients {_counts(m['outcomes'])}; "
                f"silent {m['silent']}. Tracebacks in the "
                f"twistd log during the phase: **{px['tracebacks_in_twistd_log']}**."]
        if px["traceback_samples"]:
            out += ["", "```", px["traceback_samples"][0], "```"]
    if "slow" in phases:
        slow = phases["slow"]
        out += ["", "## Slow readers", "",
                f"{s.slow_readers} clients per relay path, each asking for 1 GiB and reading "
                f"1 byte/s (4 KiB receive buffer), for {s.slow_seconds:g} s; switchyard's RSS:",
                "", "| path | before | after 2 s | end | growth after 2 s | per reader |",
                "|---|---|---|---|---|---|"]
        for listener in TRANSFER_PHASES:
            r = slow[listener]
            out.append(f"| {listener} | {r['rss_kib_before']:,} KiB | {r['rss_kib_after_2s']:,} "
                       f"KiB | {r['rss_kib_end']:,} KiB | {r['rss_growth_kib_per_s_after_2s']} "
                       f"KiB/s | {r['kib_per_reader']} KiB |")
        out.append("")
        out += [f"Open count after (bursts of {s.max_connections}, served after the phase; "
                "after the first burst): " + "; ".join(
                    f"{c['listener']} {_served(c)}" for c in slow["open_count"])]
    if "slowloris" in phases:
        sl = phases["slowloris"]
        out += ["", "## Slowloris", "",
                f"{sl['clients']:,} clients dribbling `GET /soak/slowloris-...` a byte a second "
                f"for {sl['seconds']:g} s (reconnecting when closed), beside one legit client "
                f"making 1 KiB / 1 KiB transfers one after the other:", "",
                "| | transfers | p50 | p99 | failed |", "|---|---|---|---|---|"]
        for key, label in (("baseline", "alone"), ("under_slowloris", "beside slowloris")):
            r = sl[key]
            out.append(f"| {label} | {r['transfers']:,} | {r['p50_ms']} ms | {r['p99_ms']} ms | "
                       f"{_counts(r['failed']) or 0} |")
        out += ["", f"Crowd: {_counts(sl['crowd'])}; switchyard held "
                f"{sl['switchyard_fds_with_crowd']:,} descriptors, RSS {sl['rss_kib_before']:,} "
                f"-> {sl['rss_kib_during']:,} KiB, CPU {sl['switchyard_cpu_share']:.0%}."]
    if "fd" in phases:
        fd = phases["fd"]
        out += ["", "## Descriptor exhaustion", "",
                f"A switchyard of its own with a soft RLIMIT_NOFILE of {fd['fd_limit']:,} "
                f"(`prlimit`), backend health options at their defaults; {fd['flood']:,} "
                "connections send a request head and never its body, held 3 s, then all "
                "closed; a probe transfer every 20 ms until one succeeds, and 2 s more.", "",
                f"- descriptors: {fd['fds_before']} before, {fd['fds_at_limit']:,} at the limit "
                f"({fd['held_connections']:,} held connections)",
                f"- RSS: {fd['rss_kib_before']:,} -> {fd['rss_kib_at_limit']:,} KiB: "
                f"**{fd['kib_per_held_connection']} KiB per held connection**",
                f"- while exhausted: probes {_counts(fd['probes_while_exhausted'])}; switchyard "
                f"CPU {fd['switchyard_cpu_share_while_exhausted']:.0%}",
                f"- **first success {fd['recovery_s']} s after the flood stopped**; "
                f"{fd['failures_after_first_ok']} failures after it; probe outcomes "
                f"{_counts(fd['probe_outcomes_after_flood'])}",
                f"- probes' access lines: {_counts(fd['probe_access_reasons'])}",
                f"- backend servers marked DOWN: {fd['backend_marked_down']}"
                + (f" (`{fd['backend_down_samples'][0].strip()}`)"
                   if fd["backend_down_samples"] else ""),
                f"- exit after SIGTERM: {fd['exit_after_sigterm_s']} s"]
    if report.get("unparsed_access_lines"):
        out += ["", f"Access lines not understood: {len(report['unparsed_access_lines'])}, e.g. "
                f"`{report['unparsed_access_lines'][0]}`"]
    if report.get("failed"):
        out += ["", "Phases that failed to run: " + ", ".join(report["failed"])]
    return "\n".join(out) + "\n"


def _served(check: dict[str, Any]) -> str:
    return "; ".join(f"{r['served']}" + (f" ({_counts(r['failed'])})" if r["failed"] else "")
                     for r in check["rounds"])


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def machine() -> dict[str, Any]:
    import platform

    import switchyard
    import twisted

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version(), "twisted": twisted.__version__,
            "switchyard": f"{switchyard.__version__} ({Path(switchyard.__file__).parent})"}


# -- main --------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def processes(s: Settings) -> Iterator[Processes]:
    logdir = s.workdir / "logs"
    logdir.mkdir(exist_ok=True)
    procs = Processes(logdir)
    try:
        yield procs
    finally:
        procs.stop_all()


def run_phases(s: Settings, procs: Processes, report: dict[str, Any]) -> None:
    taken: set[int] = set()
    backend_ports = [free_port(taken) for _ in range(BACKENDS)]
    ports = {name: free_port(taken) for name in ("fast", "ordinary", "tls", "front", "open")}
    cert, key = make_certificate(s.workdir)
    backends = Backends(s, procs, backend_ports)
    backends.start_all()
    access_log = s.workdir / "access.log"
    sy = start_switchyard(s, procs, "switchyard",
                          main_config(s, ports, backend_ports, cert, key, access_log),
                          ports, access_log)
    run = Run(s, procs, backends, sy, str(cert), random.Random(s.seed))
    phases: dict[str, Any] = report.setdefault("phases", {})
    report["rss_kib_at_start"] = sy.rss_kib()
    durations: dict[str, float] = report.setdefault("phase_seconds", {})
    for name in s.phases:
        print(f"== {name}", flush=True)
        phase_started = time.monotonic()
        try:
            if name in TRANSFER_PHASES:
                phases[name] = phase_transfers(run, name)
            elif name == "proxy":
                phases[name] = phase_proxy(run)
            elif name == "slow":
                phases[name] = phase_slow(run)
            elif name == "slowloris":
                phases[name] = phase_slowloris(run)
            else:
                phases[name] = phase_fd(run)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken phase must not lose the others
            import traceback

            traceback.print_exc()
            report.setdefault("failed", []).append(f"{name} ({type(e).__name__}: {e})")
        durations[name] = round(time.monotonic() - phase_started, 1)
        if name in phases and name != "fd":
            phases[name]["rss_kib_after"] = sy.rss_kib()
        if name in TRANSFER_PHASES:
            p = phases.get(name)
            if p:
                print(f"  ok {p['ok']:,}, visible {p['visible']:,}, SILENT {p['silent']:,} "
                      f"(+{p['silent_at_backend']:,} at the backend), "
                      f"client closed first {p['client_gave_up']:,}; "
                      f"{p['transfers_per_s']:,.0f} transfers/s; open count: bursts of "
                      f"{s.max_connections} served {_served(p['open_count'])}", flush=True)
    report["unparsed_access_lines"] = sy.log.unparsed[:20]
    exit_s = sy.stop(GRACE_PERIOD + 10)
    report["exit_after_sigterm_s"] = round(exit_s, 2) if exit_s is not None else None


def main(argv: Sequence[str]) -> int:
    s = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = datetime.datetime.now()
    t0 = time.monotonic()
    report: dict[str, Any] = {"machine": machine()}
    print(f"switchyard soak: {', '.join(s.phases)}; seed {s.seed}")
    print(f"work folder: {s.workdir}")
    try:
        with processes(s) as procs:
            run_phases(s, procs, report)
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    text = markdown(s, argv, started, report)
    results = s.results
    results.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y-%m-%dT%H%M%S}-soak{'-quick' if s.quick else ''}"
    (results / f"{stem}.md").write_text(text)
    settings = {k: v for k, v in dataclasses.asdict(s).items()
                if k not in ("workdir", "twistd", "python", "results")}
    (results / f"{stem}.json").write_text(json.dumps(
        {"started": started.isoformat(timespec="seconds"), "command": ["benchmarks/soak", *argv],
         "settings": settings, "verdicts": verdicts(s, report), **report},
        indent=2, default=str))
    print()
    print(text)
    print(f"written: {results / stem}.md and .json")
    silent = sum(p.get("silent", 0) + p.get("silent_at_backend", 0)
                 for p in report.get("phases", {}).values())
    if s.keep or report.get("failed") or silent:
        print(f"logs kept in {s.workdir}")
    else:
        import shutil

        shutil.rmtree(s.workdir, ignore_errors=True)
    return 1 if report.get("failed") or silent else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
