"""What one proxied connection costs switchyard, counted rather than timed.

    .venv/bin/python benchmarks/percall.py [--connections N] [--what cpu,calls,syscalls]

The proxy under test (switchyard with benchmarks/bench.py's routes, in-process
on its own reactor; or ``--peer floor``, benchmarks/floor.py's featureless
forwarder) serves HTTP requests with ``Connection: close`` to an nginx
backend; a client in this process makes N of them, C at a time, after a
warm-up. Only the N are measured, in the proxy's process:

- ``cpu``: user and system CPU per connection (getrusage, microsecond resolution);
- ``calls``: Python function calls per connection (cProfile), and which;
- ``syscalls``: system calls per connection (``strace -c -f``), and which;
- ``instructions``: user-space instructions per connection (valgrind's
  callgrind, collection switched on for the N only), and where.

Counts hardly depend on the machine's load, where rates and times do: this
is how a change to the per-connection path is judged on a shared machine.
Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402

HOST = bench.HOST
REQUEST = f"GET {bench.WEB_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
WHAT = ("cpu", "calls", "syscalls", "instructions", "garbage", "samples")


# -- the proxy's side: runs in the measured process ---------------------------


class Meter:
    """Started by SIGUSR1, stopped by SIGUSR2 (then it writes its report and
    the process exits): CPU from getrusage, Python calls from cProfile."""

    def __init__(self, report: Path, calls: bool, stop: Any, garbage: bool = False,
                 samples: bool = False) -> None:
        self.report = report
        self.calls = calls
        self.garbage = garbage
        self.samples: dict[str, list[int]] | None = {} if samples else None
        self.stop = stop
        self.profile: Any = None
        self.before: Any = None
        signal.signal(signal.SIGUSR1, self.start)
        signal.signal(signal.SIGUSR2, self.finish)

    def start(self, *_: Any) -> None:
        if self.calls:
            import cProfile

            self.profile = cProfile.Profile()
            self.profile.enable()
        if self.garbage:
            import gc

            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
        if self.samples is not None:
            # A statistical profile of CPU time (ITIMER_PROF: user + system
            # of this process): the Python stack at each tick, without the
            # per-call cost cProfile adds to small functions.
            signal.signal(signal.SIGPROF, self._sample)
            signal.setitimer(signal.ITIMER_PROF, 0.0005, 0.0005)
        import gc

        self.gc_before = [s["collections"] for s in gc.get_stats()]
        self.before = resource.getrusage(resource.RUSAGE_SELF)
        print("measuring", flush=True)

    def _sample(self, _signum: int, frame: Any) -> None:
        assert self.samples is not None
        seen = set()
        first = True
        while frame is not None:
            code = frame.f_code
            where = f"{_short(code.co_filename)}:{code.co_firstlineno}({code.co_name})"
            counts = self.samples.setdefault(where, [0, 0])
            if first:
                counts[0] += 1  # where the tick landed: self time
                first = False
            if where not in seen:
                counts[1] += 1  # on the stack: inclusive time
                seen.add(where)
            frame = frame.f_back

    def finish(self, *_: Any) -> None:
        if self.samples is not None:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {"user_s": after.ru_utime - self.before.ru_utime,
                               "system_s": after.ru_stime - self.before.ru_stime,
                               "minor_faults": after.ru_minflt - self.before.ru_minflt,
                               "voluntary_switches": after.ru_nvcsw - self.before.ru_nvcsw}
        import gc

        out["gc_collections"] = [s["collections"] - b for s, b in
                                 zip(gc.get_stats(), self.gc_before, strict=True)]
        if self.samples is not None:
            out["samples"] = sorted(([k, *v] for k, v in self.samples.items()),
                                    key=lambda row: -row[2])
        if self.garbage:
            import collections
            import gc

            gc.collect()
            kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
            out["garbage"] = kinds.most_common(40)
            out["collections"] = gc.get_stats()
        if self.profile is not None:
            import pstats

            self.profile.disable()
            stats = pstats.Stats(self.profile)
            out["calls"] = stats.total_calls  # type: ignore[attr-defined]
            rows = []
            for (path, line, name), (_cc, ncalls, tottime, _ct, _callers) in \
                    stats.stats.items():  # type: ignore[attr-defined]
                rows.append((ncalls, tottime, f"{_short(path)}:{line}({name})"))
            rows.sort(reverse=True)
            out["functions"] = [[n, t, where] for n, t, where in rows]
        self.report.write_text(json.dumps(out))
        self.stop()


def _short(path: str) -> str:
    for marker in ("/switchyard/", "/twisted/", "/lib/python3"):
        if marker in path:
            return path[path.index(marker) + 1:]
    return path


def serve_switchyard(config: Path, report: Path, calls: bool, garbage: bool = False,
                     samples: bool = False) -> None:
    from switchyard.relay.reactor import install

    reactor = install()
    from switchyard.app.service import switch_service
    from switchyard.config import load

    service = switch_service(load(str(config), reactor), reactor)
    service.privilegedStartService()
    service.startService()
    Meter(report, calls, lambda: reactor.callLater(0, reactor.stop), garbage, samples)
    # switchyard's own log lines (start-up) to stdout.
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)
    print(f"ready {type(reactor).__name__}", flush=True)
    reactor.run(installSignalHandlers=False)


def serve_floor(port: int, backend: int, report: Path, calls: bool) -> None:
    import floor

    meter = Meter(report, calls, lambda: os.kill(os.getpid(), signal.SIGTERM))
    del meter
    print("ready floor", flush=True)
    floor.serve(port, backend)


# -- the driver ----------------------------------------------------------------


def client(port: int, count: int, concurrency: int) -> int:
    """``count`` requests with Connection: close, ``concurrency`` at a time; failures."""
    import selectors

    sel = selectors.DefaultSelector()
    started = failed = done = 0
    open_: dict[socket.socket, bytearray] = {}

    def start() -> None:
        nonlocal started
        started += 1
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((HOST, port))
        open_[s] = bytearray()
        sel.register(s, selectors.EVENT_WRITE)

    for _ in range(min(concurrency, count)):
        start()
    while open_:
        for key, event in sel.select(timeout=30):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            if event & selectors.EVENT_WRITE:
                try:
                    s.send(REQUEST)
                except OSError:
                    pass
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                open_[s] += chunk
                continue
            body = open_.pop(s)
            sel.unregister(s)
            s.close()
            done += 1
            if not (body.startswith(b"HTTP/1.1 200") and body.endswith(bench.SMALL_FILE)):
                failed += 1
            if started < count:
                start()
    return failed


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the proxy exited ({proc.wait()})")
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"no {prefix!r} line from the proxy")


def measure(a: argparse.Namespace, what: str, workdir: Path, web: int, port: int) -> dict[str, Any]:
    report = workdir / f"report-{what}.json"
    report.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
    if a.peer == "switchyard":
        config = workdir / "switchyard.toml"
        config.write_text(bench.switchyard_config(
            port, bench.Routes(decoy=a.decoy, http=web, other=a.decoy), a.switchyard_toml,
            access_log=str(workdir / "access.log")))
        serve = ["--serve-switchyard", str(config)]
    else:
        serve = ["--serve-floor", f"{port},{web}"]
    argv = [sys.executable, str(Path(__file__).resolve()), *serve, "--report", str(report)]
    if what == "calls":
        argv.append("--calls")
    if what == "garbage":
        argv.append("--garbage")
    if what == "samples":
        argv.append("--samples")
    callgrind_out = workdir / "callgrind.out"
    if what == "instructions":
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={callgrind_out}", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=workdir,
                            start_new_session=True)
    tracer = None
    try:
        ready = wait_line(proc, "ready", timeout=300)
        bench.wait_listening(port, None, bench.Processes(workdir), "proxy", timeout=60)
        warm = client(port, a.warmup, a.concurrency)
        if what == "instructions":
            subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], check=True,
                           capture_output=True)
        if what == "syscalls":
            strace_out = workdir / "strace.txt"
            tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(strace_out),
                                       "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
            time.sleep(1)
        os.kill(proc.pid, signal.SIGUSR1)
        wait_line(proc, "measuring")
        t0 = time.monotonic()
        failed = client(port, a.connections, a.concurrency)
        elapsed = time.monotonic() - t0
        if what == "instructions":
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True,
                           capture_output=True)
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
        os.kill(proc.pid, signal.SIGUSR2)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
    result: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    result.update(ready=ready, warmup_failed=warm, failed=failed, elapsed_s=elapsed)
    n = a.connections
    if what == "syscalls":
        calls = bench.strace_summary(workdir / "strace.txt")
        result["syscalls"] = {k: round(v / n, 2) for k, v in
                              sorted(calls.items(), key=lambda kv: -kv[1])}
    if what == "instructions":
        # The dump asked for after the N connections (callgrind.out.1), not
        # the one written at exit (interpreter shutdown is no connection's).
        dumps = sorted(workdir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        text = dumps[-1].read_text(errors="replace") if dumps else ""
        for line in text.splitlines():
            if line.startswith(("summary:", "totals:")):
                result["instructions"] = int(line.split()[1])
        annotate = subprocess.run(["callgrind_annotate", str(dumps[-1])], capture_output=True,
                                  text=True) if dumps else None
        result["annotate"] = annotate.stdout if annotate else ""
    return result


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/percall.py", description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--what", default="cpu,calls,syscalls")
    p.add_argument("--peer", choices=("switchyard", "floor"), default="switchyard")
    p.add_argument("--switchyard-toml", action="append", default=[], metavar="LINE")
    p.add_argument("--top", type=int, default=25, help="functions listed (calls)")
    p.add_argument("--json", metavar="PATH", help="also write every figure here")
    # Internal: the measured process.
    p.add_argument("--serve-switchyard", help=argparse.SUPPRESS)
    p.add_argument("--serve-floor", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    p.add_argument("--calls", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--garbage", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--samples", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve_switchyard:
        serve_switchyard(Path(a.serve_switchyard), Path(a.report), a.calls, a.garbage,
                         a.samples)
        return 0
    if a.serve_floor:
        port, backend = map(int, a.serve_floor.split(","))
        serve_floor(port, backend, Path(a.report), a.calls)
        return 0
    whats = [w.strip() for w in a.what.split(",") if w.strip()]
    unknown = set(whats) - set(WHAT)
    if unknown:
        p.error(f"--what: unknown {', '.join(sorted(unknown))} (known: {', '.join(WHAT)})")
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-percall-"))
    workdir.chmod(0o755)
    taken: set[int] = set()
    procs = bench.Processes(workdir)
    n = a.connections
    figures: dict[str, Any] = {"peer": a.peer, "connections": n, "concurrency": a.concurrency}
    with socket.socket() as decoy:
        decoy.bind((HOST, 0))
        a.decoy = decoy.getsockname()[1]
        taken.add(a.decoy)
        try:
            web = bench.free_port(taken)
            bench.start_web_backend(procs, workdir, web)
            for what in whats:
                port = bench.free_port(taken)
                print(f"== {what}: {a.peer}, {n} connections", flush=True)
                r = measure(a, what, workdir, web, port)
                if r.get("failed") or r.get("warmup_failed"):
                    print(f"  failed requests: {r.get('warmup_failed')} in the warm-up, "
                          f"{r.get('failed')} measured")
                if what == "cpu":
                    user, system = r["user_s"] * 1e6 / n, r["system_s"] * 1e6 / n
                    print(f"  {r['ready']}: {user + system:.1f} µs CPU per connection "
                          f"({user:.1f} user + {system:.1f} system), {n / r['elapsed_s']:,.0f} "
                          f"connections/s at concurrency {a.concurrency}, "
                          f"{r['minor_faults'] / n:.2f} page faults each; garbage collections "
                          f"by generation: {r['gc_collections']}")
                    figures.update(cpu_us=user + system, user_us=user, system_us=system,
                                   rate=n / r["elapsed_s"], minor_faults=r["minor_faults"] / n)
                elif what == "calls":
                    print(f"  {r['calls'] / n:.1f} Python function calls per connection; "
                          f"top {a.top} by calls:")
                    for count, tottime, where in r["functions"][:a.top]:
                        print(f"    {count / n:7.2f}  {tottime * 1e6 / n:6.2f} µs  {where}")
                    figures.update(python_calls=r["calls"] / n,
                                   functions=[[c / n, w] for c, _t, w in r["functions"][:200]])
                elif what == "syscalls":
                    total = r["syscalls"].pop("total", 0)
                    print(f"  {total:.2f} system calls per connection: " + ", ".join(
                        f"{k} {v}" for k, v in r["syscalls"].items()))
                    figures.update(syscalls=total, by_syscall=r["syscalls"])
                elif what == "samples":
                    total = r["user_s"] + r["system_s"]
                    ticks = sum(row[1] for row in r["samples"]) or 1
                    scale = total * 1e6 / n / ticks  # µs of CPU per tick, per connection
                    print(f"  CPU per connection by Python function (inclusive, then self; "
                          f"{ticks} ticks, time in C calls counts as their caller's):")
                    for where, own, inclusive in r["samples"][:a.top]:
                        print(f"    {inclusive * scale:7.2f} {own * scale:7.2f} µs  {where}")
                    figures.update(samples=r["samples"][:200])
                elif what == "garbage":
                    total = sum(count for _kind, count in r["garbage"])
                    print(f"  {total / n:.2f} objects per connection freed only by the "
                          "garbage collector (reference cycles): " + ", ".join(
                              f"{kind} {count / n:.2f}" for kind, count in r["garbage"]))
                    figures.update(cyclic_garbage=total / n)
                elif what == "instructions":
                    per = r.get("instructions", 0) / n
                    print(f"  {per:,.0f} instructions per connection (user space)")
                    print("\n".join(r["annotate"].splitlines()[:40]))
                    figures.update(instructions=per)
        finally:
            procs.stop_all()
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2))
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
