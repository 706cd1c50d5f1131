"""Benchmark tunnels: an OpenSSH agent into switchyard's tunnel server, against the same
agent into OpenSSH's own sshd (``ssh -R`` with ``GatewayPorts``), in the same run.

Both tunnels carry the same loads to the same services on 127.0.0.1: iperf3
(one stream each way, four streams) and wrk (``Connection: close`` and
keep-alive) to nginx serving 1 KiB; ``direct`` is the service without a
tunnel. Each agent is one ``ssh -N -R ...`` process, one SSH connection, with
the same cipher and MAC forced on both (conch offers AES-CTR and HMAC-SHA2,
not OpenSSH's default chacha20-poly1305). Figures are reported with the ratio
switchyard/peer, to benchmarks/results/DATE-tunnel.md and .json. Nothing here
asserts a timing.

Run (as root, Debian; iperf3, wrk, nginx, openssh-server installed):

    .venv/bin/python benchmarks/tunnel_bench.py [--quick] [--rounds N] [--profile]

``--profile`` samples switchyard with py-spy (``pip install py-spy``) during
one more single-stream iperf3 run and reports where its time goes.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402  (bench is beside this file, not a package)
    HOST,
    REPO,
    RESULTS,
    Figure,
    Processes,
    free_port,
    iperf,
    machine,
    median_or_none,
    start_iperf_server,
    start_web_backend,
    table,
    wait_listening,
    wrk,
)

PEERS = ("switchyard", "sshd", "direct")
NAME = "bench.test"  # the tunnel's name for iperf3 (raw TCP: the tunnel's default_name)
# wrk sends "Host: 127.0.0.1:PORT": the HTTP visitors' name, published as such.
WEB_NAME = HOST
CIPHER = ("-c", "aes128-ctr", "-m", "hmac-sha2-256")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/tunnel_bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s iperf3, 3 s wrk")
    p.add_argument("--rounds", type=int, default=3,
                   help="repeat each load, peers interleaved; the median is reported")
    p.add_argument("--only", choices=("bulk", "http"), default=None,
                   help="only the iperf3 loads, or only the wrk loads")
    p.add_argument("--profile", action="store_true", help="sample switchyard with py-spy")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args(argv)


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True, capture_output=True)
    return Path(f"{path}.pub").read_text().strip()


def wait_for(condition: Any, what: str, procs: Processes, name: str,
             timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{procs.log_tail(name, 30)}")
        time.sleep(0.1)


class Bench:
    """The services, both tunnel servers and both agents, on free 127.0.0.1 ports."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs = Processes(work)
        self.taken: set[int] = set()
        self.port = {name: free_port(self.taken) for name in (
            "iperf", "web", "agents", "sy_bulk", "sy_web", "sshd", "sshd_bulk", "sshd_web")}
        self.host_key = work / "host_ed25519"
        self.host_public = " ".join(keygen(self.host_key).split()[:2])
        self.agent_key = work / "agent_ed25519"
        self.agent_public = keygen(self.agent_key)
        self.known_hosts = work / "known_hosts"
        self.known_hosts.write_text(
            f"[{HOST}]:{self.port['agents']} {self.host_public}\n"
            f"[{HOST}]:{self.port['sshd']} {self.host_public}\n")
        self.twistd_pid = 0

    def start(self) -> None:
        start_iperf_server(self.procs, self.port["iperf"])
        start_web_backend(self.procs, self.work, self.port["web"])
        self.start_switchyard()
        self.start_sshd()
        self.agent("agent-switchyard", self.port["agents"], [
            f"{NAME}:{self.port['sy_bulk']}:{HOST}:{self.port['iperf']}",
            f"{WEB_NAME}:{self.port['sy_web']}:{HOST}:{self.port['web']}"])
        log = self.work / "switchyard.log"
        wait_for(lambda: log.read_text().count("publishes") >= 2, "the agent's names",
                 self.procs, "switchyard")
        self.agent("agent-sshd", self.port["sshd"], [
            f"{HOST}:{self.port['sshd_bulk']}:{HOST}:{self.port['iperf']}",
            f"{HOST}:{self.port['sshd_web']}:{HOST}:{self.port['web']}"])
        for name in ("sshd_bulk", "sshd_web"):
            wait_listening(self.port[name], None, self.procs, "agent-sshd")

    def start_switchyard(self) -> None:
        conf = self.work / "switchyard.toml"
        conf.write_text(f"""
access_log = "{self.work / 'access.log'}"

[tunnel_server.agents]
host_key = "{self.host_key}"

[tunnel.bench]
keys = ["{self.agent_public}"]
names = ["{NAME}", "{WEB_NAME}"]
default_name = "{NAME}"

[listener.agents]
listen = "{HOST}:{self.port['agents']}"
[[listener.agents.route]]
match = "ssh"
to = "agents"

[listener.bulk]
listen = "{HOST}:{self.port['sy_bulk']}"
[[listener.bulk.route]]
match = "any"
to = "bench"

[listener.web]
listen = "{HOST}:{self.port['sy_web']}"
[[listener.web.route]]
match = "http"
to = "bench"
""")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        twistd = str(REPO / ".venv" / "bin" / "twistd")
        proc = self.procs.start("switchyard", [twistd, "-n", "--pidfile=", "switchyard",
                                               "--config", str(conf)], env=env, cwd=self.work)
        self.twistd_pid = proc.pid
        wait_listening(self.port["agents"], proc, self.procs, "switchyard")

    def start_sshd(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        authorized = self.work / "authorized_keys"
        authorized.write_text(self.agent_public + "\n")
        conf = self.work / "sshd_config"
        conf.write_text(
            f"Port {self.port['sshd']}\nListenAddress {HOST}\nHostKey {self.host_key}\n"
            f"PidFile {self.work / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\nGatewayPorts clientspecified\nUseDNS no\n"
            "LogLevel ERROR\n")
        proc = self.procs.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)])
        wait_listening(self.port["sshd"], proc, self.procs, "sshd")

    def agent(self, name: str, port: int, forwards: list[str]) -> None:
        argv = ["ssh", "-N", "-F", "none", "-p", str(port), "-i", str(self.agent_key),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15", *CIPHER]
        for forward in forwards:
            argv += ["-R", forward]
        self.procs.start(name, [*argv, f"root@{HOST}"])

    def ports(self, load: str) -> dict[str, int]:
        if load == "bulk":
            return {"switchyard": self.port["sy_bulk"], "sshd": self.port["sshd_bulk"],
                    "direct": self.port["iperf"]}
        return {"switchyard": self.port["sy_web"], "sshd": self.port["sshd_web"],
                "direct": self.port["web"]}


def _ticks(pid: int) -> tuple[int, int]:
    """(parent pid, user + system clock ticks) of a process; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0, 0
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds(root: int) -> float:
    """CPU time used so far by ``root`` and its live descendants (sshd's per-connection
    processes leave its session, so the tree is followed by parent pid)."""
    parents = {int(e): _ticks(int(e)) for e in os.listdir("/proc") if e.isdigit()}
    tree, grown = {root}, True
    while grown:
        more = {pid for pid, (ppid, _) in parents.items() if ppid in tree} - tree
        tree |= more
        grown = bool(more)
    return sum(parents[pid][1] for pid in tree if pid in parents) / os.sysconf("SC_CLK_TCK")


def iperf_reverse(port: int, seconds: int) -> tuple[float | None, str]:
    """One stream from the service to the visitor (iperf3 -R): Gbit/s received."""
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-R", "-J",
            "--connect-timeout", "5000"]
    out = subprocess.run(argv, capture_output=True, timeout=seconds + 30, text=True)
    try:
        report = json.loads(out.stdout)
        if "error" in report:
            return None, str(report["error"])[:200]
        return report["end"]["sum_received"]["bits_per_second"] / 1e9, ""
    except (json.JSONDecodeError, KeyError):
        return None, (out.stderr or out.stdout).strip()[:200]


def measure(bench: Bench, rounds: int, quick: bool, only: str | None = None) -> list[Figure]:
    seconds, wrk_seconds = (2, 3) if quick else (5, 10)
    bulk: list[tuple[str, Any]] = [
        ("bulk, 1 stream, visitor to service", lambda port: iperf(port, seconds, 1)),
        ("bulk, 1 stream, service to visitor", lambda port: iperf_reverse(port, seconds)),
        ("bulk, 4 streams, visitor to service", lambda port: iperf(port, seconds, 4)),
    ]
    figures: list[Figure] = []
    servers = {"switchyard": bench.procs.started["switchyard"].pid,
               "sshd": bench.procs.started["sshd"].pid}
    for title, run in bulk if only != "http" else []:
        fig = Figure("bulk", title, "Gbit/s", "higher")
        cpu = Figure("bulk", f"server CPU per GB, {title.partition(', ')[2]}", "s/GB", "lower")
        samples: dict[str, list[float | None]] = collections.defaultdict(list)
        costs: dict[str, list[float | None]] = collections.defaultdict(list)
        for _ in range(rounds):
            for peer, port in bench.ports("bulk").items():
                print(f"  {title}: {peer} ...", flush=True)
                before = cpu_seconds(servers[peer]) if peer in servers else 0.0
                value, error = run(port)
                samples[peer].append(value)
                if peer in servers and value:
                    costs[peer].append((cpu_seconds(servers[peer]) - before)
                                       / (value * seconds / 8))
                if error:
                    fig.notes[peer] = error
                time.sleep(0.5)
        fig.values = {p: median_or_none(v) for p, v in samples.items()}
        fig.raw = {"samples": dict(samples)}
        cpu.values = {p: median_or_none(v) for p, v in costs.items()}
        cpu.raw = {"samples": dict(costs)}
        figures += [fig, cpu]
    for close in (True, False) if only != "bulk" else ():
        what = "close" if close else "keep-alive"
        rps = Figure(what, f"{what}: requests/s", "req/s", "higher")
        p99 = Figure(what, f"{what}: p99 latency", "ms", "lower")
        runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for _ in range(rounds):
            for peer, port in bench.ports("web").items():
                print(f"  {what}: {peer} ...", flush=True)
                runs[peer].append(wrk(port, wrk_seconds, close))
                time.sleep(1)
        for peer, results in runs.items():
            rps.values[peer] = median_or_none([r.get("rps") for r in results])
            p99.values[peer] = median_or_none([r.get("p99_ms") for r in results])
            errors = "; ".join(r["error"] for r in results if "error" in r)
            if errors:
                rps.notes[peer] = errors
        rps.raw = {"samples": dict(runs)}
        figures += [rps, p99]
    return figures


def profile(bench: Bench, seconds: int) -> str:
    """Where switchyard's time goes during one single-stream iperf3: py-spy's samples,
    by the frame they were in (self time) and by module."""
    py_spy = REPO / ".venv" / "bin" / "py-spy"
    if not py_spy.exists():
        return "py-spy is not installed (.venv/bin/pip install py-spy)"
    raw = bench.work / "profile.txt"
    sampler = subprocess.Popen([str(py_spy), "record", "--format", "raw", "-r", "250",
                                "-d", str(seconds + 1), "-p", str(bench.twistd_pid),
                                "-o", str(raw)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    value, _ = iperf(bench.ports("bulk")["switchyard"], seconds, 1)
    sampler.wait(timeout=seconds + 30)
    frames: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        frames[leaf] += n
        where = leaf.partition("(")[2].rstrip(")").rsplit(":", 1)[0]
        modules[_short(where)] += n
    if not total:
        return "no samples"
    lines = [f"py-spy, {total} samples at 250/s during {seconds} s of iperf3 (1 stream, "
             f"{value or 0:.2f} Gbit/s); the idle reactor's wait counts as epoll.",
             "", "| self time | frame |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f}% | `{f}` |" for f, n in frames.most_common(15)]
    lines += ["", "| self time | module |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f}% | `{m}` |" for m, n in modules.most_common(10)]
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/switchyard/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


NOTES = """\
- switchyard: visitor -> switchyard (listener, route, [tunnel]) -> forwarded-tcpip
  channel on the agent's SSH connection (conch, in Python) -> `ssh -N -R` -> service.
- sshd: visitor -> sshd's `-R` listening port -> channel -> the same `ssh -N -R` -> service.
- direct: the service itself, no tunnel.
- Both agents: one OpenSSH client, one SSH connection, `-c aes128-ctr -m hmac-sha2-256`.
- bulk: iperf3 (the tunnel's default_name: iperf3's opening has no name), Gbit/s received;
  server CPU per GB: user + system time of the tunnel server's processes (twistd;
  sshd and its per-connection children) during the run, per GB carried: less
  sensitive than Gbit/s to a shared machine's load.
- close / keep-alive: `wrk -t2 -c50` to nginx serving 1 KiB, with and without
  `Connection: close` (each request a new channel, or 50 channels reused).
"""


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="switchyard-tunnel-bench-"))
    work.chmod(0o755)  # nginx's workers run as nobody: they must reach the file they serve
    info = machine()
    bench = Bench(work)
    t0 = time.monotonic()
    try:
        bench.start()
        figures = measure(bench, max(1, args.rounds), args.quick, args.only)
        profiled = profile(bench, 5) if args.profile else ""
    finally:
        bench.procs.stop_all()
    info["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    info["openssh"] = subprocess.run(["ssh", "-V"], capture_output=True,
                                     text=True).stderr.strip()
    results = table(figures, PEERS)
    described = "\n".join(f"- {k}: {v}" for k, v in info.items())
    text = (f"# switchyard tunnel benchmark, {started:%Y-%m-%d %H:%M:%S}\n\n"
            f"Command: `benchmarks/tunnel_bench.py {' '.join(argv)}`, "
            f"{time.monotonic() - t0:.0f} s, {args.rounds} round(s), median\n\n"
            f"## Machine\n\n{described}\n\n## Settings\n\n{NOTES}\n"
            f"## Results\n\n{results}\n")
    if profiled:
        text += f"\n## Profile\n\n{profiled}\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{started:%Y-%m-%dT%H%M%S}-tunnel{'-quick' if args.quick else ''}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({
        "started": started.isoformat(), "argv": list(argv), "machine": info,
        "figures": [f.__dict__ for f in figures]}, indent=2, default=str))
    print(f"written: {stem}.md, .json")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
