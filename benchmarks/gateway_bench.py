"""Benchmark the gateway route against a plain route, in one switchyard, in one run.

One twistd serves a listener per variant, all to the same nginx (one small
file): a plain HTTP route, and gateway routes whose clients first send a
cipher line (frontd dialect, so the answer is nginx's HTTP response and wrk
can count it), with the line's address cached or not (``cache_size = 0``:
every connection decrypts) and with the md5 or pbkdf2 derivation. wrk opens
a new connection per request (``Connection: close``); a Lua script puts the
line before each request. For each variant: connections per second, p50
latency, and the twistd process's CPU (user + system, all its threads, from
/proc) per connection: the gateway's handshake costs the difference from
the plain route.

Then the refusal timing: connections with a wrong-secret line and with a
bad-padding line, interleaved, timed from connect to the ``401``: the
medians should not differ beyond the noise.

Run: ``.venv/bin/python benchmarks/gateway_bench.py [--seconds N] [--rounds N]``.
Nothing here asserts a timing: it measures and reports. The machine is
shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

# bench.py puts the working tree first on sys.path: imported before switchyard.
from bench import (  # isort: skip
    HOST,
    REPO,
    RESULTS,
    WEB_PATH,
    Processes,
    free_port,
    machine,
    start_web_backend,
    wait_listening,
)

from switchyard.targets.gateway.crypto import Kdf, Secret, derive, encrypt_line

REQUEST = f"GET {WEB_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# (name, route to nginx, gateway table lines or None for the plain route, kdf)
VARIANTS: list[tuple[str, str | None, Kdf | None]] = [
    ("plain", None, None),
    ("gateway md5, cached line", "", Kdf.MD5),
    ("gateway md5, no cache", "cache_size = 0", Kdf.MD5),
    ("gateway pbkdf2, cached line", 'kdf = "pbkdf2"', Kdf.PBKDF2),
    ("gateway pbkdf2, no cache", 'kdf = "pbkdf2"\ncache_size = 0', Kdf.PBKDF2),
]


def config(ports: list[int], web: int, secret_file: Path, access_log: Path) -> str:
    parts = [f'access_log = "{access_log}"\n']
    for i, ((_, extra, _), port) in enumerate(zip(VARIANTS, ports, strict=True)):
        route = "http" if extra is None else "gateway"
        target = "web" if extra is None else f"gw{i}"
        parts.append(textwrap.dedent(f"""
            [listener.v{i}]
            listen = "{HOST}:{port}"
            [[listener.v{i}.route]]
            match = "{route}"
            to = "{target}"
            """))
        if extra is not None:
            parts.append(f'[gateway.gw{i}]\nsecret_file = "{secret_file}"\ndialect = "frontd"\n'
                         f'allow = "{HOST}:{web}"\n{extra}\n')
    parts.append(f'[backend.web]\nservers = ["{HOST}:{web}"]\n')
    return "".join(parts)


def lua_script(path: Path, opening: bytes) -> None:
    """wrk sends ``opening`` (a line and its newline, or nothing) before each request."""

    def lua(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n") + '"'

    # wrk checks the script once, at start, by parsing what the first
    # thread's request() returns as HTTP: that one call gets the bare request.
    path.write_text(textwrap.dedent(f"""\
        local threads = 0
        function setup(thread) thread:set("id", threads); threads = threads + 1 end
        local checked = false
        local plain = {lua(REQUEST)}
        local req = {lua(opening.decode("ascii") + REQUEST)}
        function request()
          if id == 0 and not checked then checked = true; return plain end
          return req
        end
        """))


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, every thread) the process used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, Any]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
            "-s", str(script), f"http://{HOST}:{port}{WEB_PATH}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    out = done.stdout + done.stderr
    result: dict[str, Any] = {"output": out}
    if m := re.search(r"^\s+(\d+) requests in", out, re.M):
        result["requests"] = int(m.group(1))
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M):
        result["rps"] = float(m.group(1))
    if m := re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        result["p50_ms"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    errors = [m.group(0) for m in re.finditer(r"(Socket errors: .*|Non-2xx .*)", out)]
    if errors:
        result["errors"] = "; ".join(errors)
    return result


def check(port: int, opening: bytes) -> None:
    """One request through a variant, before measuring it: the file must come back."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(opening + REQUEST.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"check through port {port} got {data[:80]!r}")


def bad_padding_line(passphrase: bytes, address: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    salt = secrets.token_bytes(8)
    key, iv = derive(passphrase, salt, Kdf.MD5)
    padded = address + b"\x00" * (16 - len(address) % 16)  # padding byte 0: never valid
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(b"Salted__" + salt + encryptor.update(padded) + encryptor.finalize())


def refusal_micros(port: int, opening: bytes) -> float:
    """Microseconds from sending the opening (connected) to the reply's arrival."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(opening)
        reply = sock.recv(16)
        elapsed = time.perf_counter() - started
    if reply != b"4106":
        raise RuntimeError(f"expected 4106, got {reply!r}")
    return elapsed * 1e6


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gateway_bench.py", description=__doc__)
    p.add_argument("--seconds", type=int, default=8, help="wrk duration per variant and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, variants interleaved; medians")
    p.add_argument("--connections", type=int, default=20, help="wrk's concurrent connections")
    p.add_argument("--refusals", type=int, default=2000, help="timed refusals of each kind")
    a = p.parse_args(argv)
    started = datetime.datetime.now()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="switchyard-gwbench-"))
    work.chmod(0o755)
    procs = Processes(work)
    taken: set[int] = set()
    passphrase = secrets.token_urlsafe(32).encode()
    secret_file = work / "gateway.secret"
    secret_file.write_bytes(passphrase + b"\n")
    secret_file.chmod(0o600)
    try:
        web = free_port(taken)
        start_web_backend(procs, work, web)
        ports = [free_port(taken) for _ in VARIANTS]
        conf = work / "switchyard.toml"
        conf.write_text(config(ports, web, secret_file, work / "access.log"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        twistd = procs.start("switchyard", [str(REPO / ".venv" / "bin" / "twistd"), "-n",
                                            "--pidfile=", "switchyard", "--config", str(conf)],
                             env=env, cwd=work)
        for port in ports:
            wait_listening(port, twistd, procs, "switchyard")
        secret = Secret(passphrase, "bench")
        address = f"{HOST}:{web}".encode()
        openings = [b"" if kdf is None else encrypt_line(address, secret, kdf) + b"\n"
                    for _, _, kdf in VARIANTS]
        scripts = []
        for i, opening in enumerate(openings):
            check(ports[i], opening)
            scripts.append(work / f"v{i}.lua")
            lua_script(scripts[-1], opening)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
        for round_ in range(a.rounds):
            for i, (name, _, _) in enumerate(VARIANTS):
                print(f"  round {round_ + 1}: {name} ...", flush=True)
                before = process_cpu(twistd.pid)
                result = run_wrk(ports[i], scripts[i], a.seconds, a.connections)
                result["cpu_s"] = process_cpu(twistd.pid) - before
                if "requests" not in result:
                    print(f"    wrk gave no result: {result['output'].strip()[-300:]}")
                if result.get("requests"):
                    result["cpu_us_per_conn"] = result["cpu_s"] / result["requests"] * 1e6
                samples[name].append(result)
                time.sleep(1)  # the closed connections' TIME_WAIT and backlog drain
        # Refusals: wrong secret and bad padding, interleaved, from a frontd route.
        wrong, padding = [], []
        gw_port = ports[2]  # md5, no cache: both kinds do the whole work
        for _ in range(a.refusals):
            other = Secret(secrets.token_bytes(16), "wrong")
            wrong.append(refusal_micros(gw_port, encrypt_line(address, other) + b"\n"))
            padding.append(refusal_micros(gw_port, bad_padding_line(passphrase, address)
                                          + b"\n"))
        load_end = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        procs.stop_all()

    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in samples[name] if key in r]
        return statistics.median(values) if values else None

    def spread(name: str, key: str) -> str:
        values = [r[key] for r in samples[name] if key in r]
        return f"{min(values):,.0f}-{max(values):,.0f}" if values else "-"

    plain_cpu = med("plain", "cpu_us_per_conn")
    rows = ["| variant | connections/s (median, range) | p50 ms | twistd CPU µs/conn | "
            "handshake µs/conn (vs plain) |", "|---|---|---|---|---|"]
    figures = {}
    for name, _, _ in VARIANTS:
        rps, cpu, p50 = med(name, "rps"), med(name, "cpu_us_per_conn"), med(name, "p50_ms")
        extra = (cpu - plain_cpu) if (cpu is not None and plain_cpu is not None
                                      and name != "plain") else None
        figures[name] = {"rps": rps, "p50_ms": p50, "cpu_us_per_conn": cpu,
                         "handshake_us_per_conn": extra,
                         "errors": [r["errors"] for r in samples[name] if "errors" in r]}
        rows.append(f"| {name} | {rps or 0:,.0f} ({spread(name, 'rps')}) | {p50 or 0:.2f} | "
                    f"{cpu or 0:,.0f} | {'' if extra is None else f'{extra:+,.0f}'} |")
    refusal = {
        "wrong_secret_us_median": statistics.median(wrong),
        "bad_padding_us_median": statistics.median(padding),
        "wrong_secret_us_p10_p90": statistics.quantiles(wrong, n=10)[::8],
        "bad_padding_us_p10_p90": statistics.quantiles(padding, n=10)[::8],
    }
    report = (
        f"# gateway benchmark, {started:%Y-%m-%d %H:%M:%S}\n\n"
        f"Command: `.venv/bin/python benchmarks/gateway_bench.py {' '.join(argv)}`\n\n"
        f"- cpu: {info['cpu']}, {info['cores']} cores, load average at start "
        f"{' '.join(info['load_average_at_start'])}, at end {' '.join(load_end)}\n"
        f"- python {info['python']}, twisted {info['twisted']}, {info['wrk']}\n"
        f"- wrk -t2 -c{a.connections} -d{a.seconds}s, Connection: close (a new connection "
        f"per request), {a.rounds} rounds, variants interleaved; one twistd (1 worker), "
        f"frontd dialect, nginx serving 1 KiB\n\n"
        + "\n".join(rows) + "\n\n"
        f"Refusal timing ({a.refusals} each, interleaved, connect excluded, md5, no cache): "
        f"wrong secret median {refusal['wrong_secret_us_median']:.0f} µs "
        f"(p10-p90 {refusal['wrong_secret_us_p10_p90'][0]:.0f}-"
        f"{refusal['wrong_secret_us_p10_p90'][1]:.0f}), bad padding median "
        f"{refusal['bad_padding_us_median']:.0f} µs "
        f"(p10-p90 {refusal['bad_padding_us_p10_p90'][0]:.0f}-"
        f"{refusal['bad_padding_us_p10_p90'][1]:.0f}).\n")
    RESULTS.mkdir(exist_ok=True)
    stem = f"{started:%Y-%m-%dT%H%M%S}-gateway"
    (RESULTS / f"{stem}.md").write_text(report)
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "argv": argv, "machine": info,
        "load_average_at_end": load_end, "figures": figures, "refusals": refusal,
        "samples": {k: [{kk: vv for kk, vv in r.items() if kk != "output"} for r in v]
                    for k, v in samples.items()},
    }, indent=2, default=str))
    print(report)
    print(f"written: {RESULTS / stem}.md and .json")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
