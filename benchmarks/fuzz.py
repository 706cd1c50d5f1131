"""Fuzz every matcher and wire parser of switchyard with mutated real openings.

Run through ``benchmarks/fuzz`` (see benchmarks/README.md). Each parser in
PARSERS below gets ``--inputs`` mutated openings (10^6 by default), split
over the cores; the report gives per parser the inputs, inputs/s, the
exceptions (each distinct one with a sample input saved next to the
report), results that break the parser's contract, and the slowest call
with its input. It measures and reports; it is never part of the test suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# -- the parsers ---------------------------------------------------------------
#
# One row per parser. ``where``: "module:attribute" paths tried in order (a
# module that moved is found at its new home, the old one kept until it is
# gone); "matcher:NAME" builds the matcher plugin NAME with ``options``.
# ``corpus``: the kinds of openings it is fed (fuzz_corpus.KINDS; 10% of
# inputs come from every kind). ``allowed``: exception class names that are
# the parser's documented answer to bad input. ``check``: a contract check
# of each result (below). ``monotonic``: once the answer is NO, more bytes
# never change it (the switch relies on it for every built-in matcher).
# Adding a parser is one line here.


@dataclass(frozen=True)
class Parser:
    where: tuple[str, ...]
    corpus: tuple[str, ...]
    options: dict[str, Any] | None = None
    allowed: tuple[str, ...] = ()
    check: str = "verdict"
    monotonic: bool = True


ALL = ("tls", "http", "ssh", "proxy", "gateway", "tunnel", "other")

PARSERS: dict[str, Parser] = {
    "proxy-header": Parser(("switchyard.wire.proxy:read_header",), ("proxy",),
                           allowed=("BadProxyHeader",), check="proxy", monotonic=False),
    "http-head": Parser(("switchyard.wire.http:parse_request_head",), ("http",), check="http"),
    "client-hello": Parser(("switchyard.wire.tls:parse_client_hello",), ("tls",), check="tls"),
    "gateway-opening": Parser(("switchyard.wire.gateway:parse_opening",), ("gateway",),
                              check="any", monotonic=False),
    "tunnel-forward-request": Parser(("switchyard.targets.tunnels.server:forward_request",),
                                     ("tunnel",), check="any", monotonic=False),
    "tls": Parser(("matcher:tls",), ("tls",)),
    "tls sni+alpn": Parser(("matcher:tls",), ("tls",), {"sni": ["example.com", "*.example.net"],
                                                        "alpn": ["h2"]}),
    "tls no_sni 1.3": Parser(("matcher:tls",), ("tls",), {"no_sni": True, "min_version": "1.3"}),
    "http": Parser(("matcher:http",), ("http",)),
    "http host+path": Parser(("matcher:http",), ("http",),
                             {"host": ["example.com", "*.example.org"], "path": ["/api", "/x"]}),
    "http method": Parser(("matcher:http",), ("http",), {"method": ["GET", "CONNECT"]}),
    "h2c": Parser(("matcher:h2c",), ("http",)),
    "websocket": Parser(("matcher:websocket",), ("http",), {"host": ["live.example.com"],
                                                            "path": ["/stream"]}),
    "obfs-http": Parser(("matcher:obfs-http",), ("http",), {"host": ["www.bing.com"]}),
    "obfs-tls": Parser(("matcher:obfs-tls",), ("tls",), {"sni": ["www.bing.com"]}),
    "ssh": Parser(("matcher:ssh",), ("ssh",)),
    "regex": Parser(("matcher:regex",), ALL, {"pattern": "^(GET|POST) /(api|x)", "min_length": 6},
                    monotonic=False),
    "any": Parser(("matcher:any",), ALL),
}
# Matcher plugins without a row are fuzzed too, built with no options.

# -- the rest ------------------------------------------------------------------

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))  # the working tree's switchyard is the one fuzzed

from fuzz_corpus import KINDS, Mutator, corpus  # noqa: E402

HANG_SECONDS = 5.0


class Missing(Exception):
    """A parser's code is not where its row says."""


class Hang(Exception):
    """A call took longer than HANG_SECONDS: interrupted by the watchdog."""


def resolve(name: str, row: Parser) -> Callable[[bytes], Any]:
    """The callable to fuzz: ``f(data)``."""
    tried = []
    for where in row.where:
        if where.startswith("matcher:"):
            return _matcher(name, where[8:], row.options or {})
        module_name, _, attribute = where.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            tried.append(f"{where} ({e})")
            continue
        if hasattr(module, attribute):
            return getattr(module, attribute)  # type: ignore[no-any-return]
        tried.append(f"{where} (no {attribute})")
    raise Missing("; ".join(tried))


def _matcher(name: str, plugin: str, options: dict[str, Any]) -> Callable[[bytes], Any]:
    try:
        from switchyard.config import matcher_factories
    except ImportError as e:
        raise Missing(f"switchyard.config:matcher_factories ({e})")
    factories = matcher_factories()
    if plugin not in factories:
        raise Missing(f"no matcher plugin {plugin!r} (installed: {', '.join(sorted(factories))})")
    try:
        matcher = factories[plugin].build(options)
    except Exception as e:
        raise Missing(f"matcher {plugin!r} refused the options {options!r}: {e}")
    facts = {"listener": "fuzz", "client_host": "192.0.2.1", "client_port": 40000}

    def match(data: bytes) -> Any:
        return matcher.match(data, facts)

    return match


def all_rows() -> dict[str, Parser]:
    """PARSERS, plus a row for every matcher plugin that has none."""
    rows = dict(PARSERS)
    try:
        from switchyard.config import matcher_factories

        named = {w[8:] for row in PARSERS.values() for w in row.where if w.startswith("matcher:")}
        for plugin in sorted(set(matcher_factories()) - named):
            rows[f"{plugin} (plugin, no options)"] = Parser((f"matcher:{plugin}",), ALL,
                                                            monotonic=False)
    except ImportError:
        pass
    return rows


# -- contracts -----------------------------------------------------------------


def _verdicts() -> tuple[Any, Any, Any]:
    for module in ("switchyard.interfaces",):
        try:
            m = importlib.import_module(module)
            return m.NO, m.NEED_MORE, m.Match
        except (ImportError, AttributeError):
            continue
    raise Missing("switchyard.interfaces: NO, NEED_MORE, Match")


def contract(kind: str, data: bytes, result: Any) -> str | None:
    """What is wrong with ``result`` as the answer to ``data``, or None.

    The text up to " (" names the kind of problem (inputs are grouped by it);
    what follows in parentheses is this input's value.
    """
    no, need_more, match_type = _verdicts()
    if kind == "any":
        return None
    if kind == "verdict":
        if result is no or result is need_more:
            return None
        if isinstance(result, match_type):
            if not isinstance(result.facts, dict):
                return f"Match.facts is a {type(result.facts).__name__}"
            return None
        return f"answered {type(result).__name__}, not a verdict"
    if kind == "proxy":
        if result is None:
            return None
        if not isinstance(result, tuple) or len(result) != 3:
            return f"answered {type(result).__name__}, not (source, destination, length)"
        source, destination, length = result
        if not isinstance(length, int) or not 0 < length <= len(data):
            return f"header length outside the bytes given ({length!r} of {len(data)})"
        for side, address in (("source", source), ("destination", destination)):
            if address is None:
                continue
            port = getattr(address, "port", None)
            if not isinstance(port, int) or not 0 <= port <= 65535:
                return f"{side} port outside 0-65535 accepted ({port!r})"
            try:
                ipaddress.ip_address(getattr(address, "host", ""))
            except ValueError:
                return f"{side} address not an IP address accepted " \
                       f"({getattr(address, 'host', None)!r})"
        return None
    if result is no or result is need_more:
        return None
    if kind == "http":
        offset = getattr(result, "body_offset", None)
        if offset is not None and not 0 < offset <= len(data):
            return f"body_offset outside the bytes given ({offset} of {len(data)})"
        return None
    if kind == "tls":
        length = getattr(result, "length", None)
        if not isinstance(length, int) or not 0 < length <= len(data):
            return f"hello length outside the bytes given ({length!r} of {len(data)})"
        return None
    return None


# -- one worker: a share of one parser's inputs --------------------------------


@dataclass
class Share:
    inputs: int = 0
    call_ns: int = 0
    wall_s: float = 0.0
    slowest_ns: int = 0
    slowest_input: bytes = b""
    # signature -> [count, first input, first traceback or explanation]
    problems: dict[str, list[Any]] | None = None
    verdicts: collections.Counter[str] | None = None


class Watchdog(threading.Thread):
    """Interrupts a call that runs longer than HANG_SECONDS (SIGALRM to this thread)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.started_ns = 0  # 0: not in a call
        self.main = threading.get_ident()
        signal.signal(signal.SIGALRM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise Hang(f"no answer after {HANG_SECONDS:g} s")

    def run(self) -> None:
        while True:
            time.sleep(0.5)
            started = self.started_ns
            if started and time.perf_counter_ns() - started > HANG_SECONDS * 1e9:
                signal.pthread_kill(self.main, signal.SIGALRM)
                time.sleep(HANG_SECONDS)


_watchdog: Watchdog | None = None


def _signature(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "switchyard" in f.filename and "benchmarks" not in f.filename]
    where = (ours or frames)[-1]
    return f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno}"


def run_share(args: tuple[str, Parser, int, int, dict[str, list[bytes]]]) -> Share:
    name, row, count, seed, openings = args
    global _watchdog
    if _watchdog is None:
        _watchdog = Watchdog()
        _watchdog.start()
    fn = resolve(name, row)
    no, need_more, match_type = _verdicts()
    seeds = [o for kind in row.corpus for o in openings.get(kind, [])]
    everything = [o for kind in KINDS for o in openings.get(kind, [])]
    mutator = Mutator(random.Random(seed), seeds or everything, everything)
    allowed = set(row.allowed)
    share = Share(problems={}, verdicts=collections.Counter())
    problems, verdicts = share.problems, share.verdicts
    assert problems is not None and verdicts is not None
    for opening in seeds:  # first calls import and fill caches: not timed
        try:
            fn(opening)
        except Exception:
            pass
    watchdog = _watchdog
    clock = time.perf_counter_ns
    more = random.Random(seed + 1)
    wall = time.monotonic()
    for _ in range(count):
        data = mutator.next()
        watchdog.started_ns = started = clock()
        try:
            result = fn(data)
            elapsed = clock() - started
            watchdog.started_ns = 0
            problem = contract(row.check, data, result)
            if problem is None and row.monotonic and result is no and more.random() < 0.05:
                extended = data + more.randbytes(more.randint(1, 64))
                if fn(extended) is not no:
                    data, problem = extended, "NO for a prefix, then not NO with more bytes"
            verdicts["NO" if result is no else "NEED_MORE" if result is need_more
                     else type(result).__name__] += 1
            if problem is not None:
                _note(problems, f"contract: {problem.partition(' (')[0]}", data, problem)
        except Exception as e:
            elapsed = clock() - started
            watchdog.started_ns = 0
            if type(e).__name__ in allowed:
                verdicts[type(e).__name__] += 1
            else:
                _note(problems, _signature(e), data,
                      "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        share.call_ns += elapsed
        if elapsed > share.slowest_ns:
            share.slowest_ns, share.slowest_input = elapsed, data
    share.inputs = count
    share.wall_s = time.monotonic() - wall
    return share


def retime(fn: Callable[[bytes], Any], data: bytes) -> float:
    """The best of three more calls on the slowest input, in µs: a slow input
    stays slow, a pause of the process (GC, the machine) does not."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        try:
            fn(data)
        except Exception:
            pass
        best = min(best, (time.perf_counter_ns() - started) / 1e3)
    return best


def _note(problems: dict[str, list[Any]], signature: str, data: bytes, text: str) -> None:
    entry = problems.get(signature)
    if entry is None:
        problems[signature] = [1, data, text]
    else:
        entry[0] += 1


# -- the run -------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/fuzz",
                                description="Fuzz switchyard's matchers and parsers.")
    p.add_argument("--inputs", type=int, default=None,
                   help="inputs per parser (default 1,000,000; quick 100,000)")
    p.add_argument("--quick", action="store_true", help="100,000 inputs per parser")
    p.add_argument("--only", default="", help="comma-separated parser names (default all)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes (default: one per core)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    p.add_argument("--no-record", action="store_true",
                   help="do not run curl/openssl/ssh for more openings (captures only)")
    a = p.parse_args(argv)
    a.inputs = a.inputs or (100_000 if a.quick else 1_000_000)
    a.seed = a.seed if a.seed is not None else int(time.time())
    return a


def merge(shares: Sequence[Share]) -> dict[str, Any]:
    problems: dict[str, list[Any]] = {}
    verdicts: collections.Counter[str] = collections.Counter()
    for share in shares:
        verdicts.update(share.verdicts or {})
        for signature, (count, data, text) in (share.problems or {}).items():
            if signature in problems:
                problems[signature][0] += count
            else:
                problems[signature] = [count, data, text]
    slowest = max(shares, key=lambda s: s.slowest_ns)
    inputs = sum(s.inputs for s in shares)
    wall = max(s.wall_s for s in shares)
    return {"inputs": inputs, "wall_s": wall, "inputs_per_s": inputs / wall if wall else 0,
            "mean_us": sum(s.call_ns for s in shares) / inputs / 1e3 if inputs else 0,
            "slowest_us": slowest.slowest_ns / 1e3, "slowest_input": slowest.slowest_input,
            "problems": problems, "verdicts": dict(verdicts)}


def main(argv: Sequence[str]) -> int:
    a = parse_args(argv)
    started = datetime.datetime.now()
    rows = all_rows()
    if a.only:
        wanted = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in rows]
        if unknown:
            print(f"--only: unknown {', '.join(unknown)} (known: {', '.join(rows)})",
                  file=sys.stderr)
            return 2
        rows = {n: rows[n] for n in wanted}
    openings = corpus(record=not a.no_record)
    print(f"switchyard fuzz: {len(rows)} parsers, {a.inputs:,} inputs each, {a.workers} "
          f"workers, seed {a.seed}; openings: "
          + ", ".join(f"{k} {len(v)}" for k, v in openings.items()), flush=True)
    stem = f"{started:%Y-%m-%dT%H%M%S}-fuzz{'-quick' if a.quick else ''}"
    samples = RESULTS / stem
    results: dict[str, Any] = {}
    missing: dict[str, str] = {}
    t0 = time.monotonic()
    with multiprocessing.get_context("fork").Pool(a.workers) as pool:
        for index, (name, row) in enumerate(rows.items()):
            try:
                resolve(name, row)
            except Missing as e:
                missing[name] = str(e)
                print(f"  {name}: not found, skipped: {e}", flush=True)
                continue
            per = [a.inputs // a.workers + (1 if i < a.inputs % a.workers else 0)
                   for i in range(a.workers)]
            jobs = [(name, row, n, a.seed * 1000 + index * 10 + i, openings)
                    for i, n in enumerate(per) if n]
            result = merge(pool.map(run_share, jobs))
            result["slowest_again_us"] = retime(resolve(name, row), result["slowest_input"])
            results[name] = result
            bad = sum(count for count, _, _ in result["problems"].values())
            print(f"  {name}: {result['inputs']:,} inputs, {result['inputs_per_s']:,.0f}/s, "
                  f"{bad:,} problems, slowest {result['slowest_us']:,.0f} µs", flush=True)
    elapsed = time.monotonic() - t0
    save_samples(samples, results)
    report = markdown(a, argv, started, elapsed, results, missing, samples)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(report)
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "command": ["benchmarks/fuzz", *argv],
        "elapsed_s": round(elapsed, 1), "inputs_per_parser": a.inputs, "seed": a.seed,
        "openings": {k: len(v) for k, v in openings.items()}, "missing": missing,
        "parsers": {name: {**{k: v for k, v in r.items()
                              if k not in ("problems", "slowest_input")},
                           "slowest_input": r["slowest_input"][:200].hex(),
                           "problems": {sig: {"count": c, "sample": f"{samples.name}/"
                                              f"{_file(name, i)}.bin"}
                                        for i, (sig, (c, _, _)) in
                                        enumerate(sorted(r["problems"].items()))}}
                    for name, r in results.items()},
    }, indent=2, default=str))
    print()
    print(report)
    print(f"written: {RESULTS / stem}.md and .json" + (f", samples in {samples}"
                                                        if samples.exists() else ""))
    return 1 if any(r["problems"] for r in results.values()) else 0


def _bold(count: int) -> str:
    return f"**{count:,}**" if count else "0"


def _file(name: str, index: int | str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) + f"-{index}"


def save_samples(folder: Path, results: dict[str, Any]) -> None:
    """Each distinct problem's first input (.bin) and traceback (.txt); each slowest input."""
    for name, r in results.items():
        for i, (signature, (count, data, text)) in enumerate(sorted(r["problems"].items())):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{_file(name, i)}.bin").write_bytes(data)
            (folder / f"{_file(name, i)}.txt").write_text(
                f"{name}: {signature} ({count:,} inputs)\ninput: {data!r}\n\n{text}\n")
        if r["slowest_us"] > 1000:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{_file(name, 'slowest')}.bin").write_bytes(r["slowest_input"])


def markdown(a: argparse.Namespace, argv: Sequence[str], started: datetime.datetime,
             elapsed: float, results: dict[str, Any], missing: dict[str, str],
             samples: Path) -> str:
    out = [f"# switchyard fuzz, {started:%Y-%m-%d %H:%M:%S}", "",
           f"Command: `benchmarks/fuzz {' '.join(argv)}`, {elapsed:.0f} s, seed {a.seed}, "
           f"{a.workers} workers; load average at the end "
           f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}", "",
           "| parser | inputs | inputs/s | mean µs | exceptions | contract violations | "
           "slowest µs (again) | slowest input |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        exceptions = sum(c for sig, (c, _, _) in r["problems"].items()
                         if not sig.startswith("contract:"))
        violations = sum(c for sig, (c, _, _) in r["problems"].items()
                         if sig.startswith("contract:"))
        out.append(f"| {name} | {r['inputs']:,} | {r['inputs_per_s']:,.0f} | "
                   f"{r['mean_us']:.1f} | {_bold(exceptions)} | {_bold(violations)} | "
                   f"{r['slowest_us']:,.0f} ({r['slowest_again_us']:,.0f}) | "
                   f"`{r['slowest_input'][:48]!r}` |")
    for name, why in missing.items():
        out.append(f"| {name} | not found: {why} | | | | | | |")
    problems = [(name, i, sig, c, data) for name, r in results.items()
                for i, (sig, (c, data, _)) in enumerate(sorted(r["problems"].items()))]
    if problems:
        out += ["", "## Problems (each distinct one, with its first input)", ""]
        for name, i, sig, count, data in problems:
            out.append(f"- {name}: {sig}: {count:,} inputs; e.g. `{data[:80]!r}` "
                       f"({samples.name}/{_file(name, i)}.bin, traceback in .txt)")
    out += ["", "Inputs: real openings (tests/vectors captures, curl / openssl s_client / ssh "
            "recorded live, Python's TLS client) mutated 1-4 times each: bit flips, byte "
            "sets, insertions, deletions, truncation, duplication, splicing two openings, "
            "big-endian length-field edits, decimal number edits, separator swaps; 10% start "
            "from an opening of another kind. inputs/s: both workers, mutation included; "
            "mean µs: inside the parser. A matcher that answers NO must answer NO with more "
            "bytes too (checked on 5% of NO answers). Slowest: the longest call, then (again) "
            "the best of three more calls on the same input: a slow input stays slow, a "
            "pause of the process does not."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
