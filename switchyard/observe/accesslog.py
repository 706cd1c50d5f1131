"""The one access-log event every connection ends with, and the access log file."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="switchyard.access")

# Facts every connection has; the access log shows the matcher's facts apart.
_CONNECTION_FACTS = frozenset({"listener", "client", "client_host", "client_port",
                               "tls_terminated"})

ACCESS_FORMAT = (
    "{client} {listener}/{route} -> {server} facts[{facts_text}] "
    "in={bytes_in} out={bytes_out} {duration:.3f}s relay={relay} close={reason}{detail_text}"
)


def format_address(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", None) or address)
    if ":" in host:
        return f"[{host}]:{address.port}"
    return f"{host}:{address.port}"


def format_facts(facts: dict[str, Any]) -> str:
    parts = []
    for k, v in facts.items():
        if v is None:
            v = "none"  # e.g. sni=none: a TLS client that sent no name
        elif isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        parts.append(f"{k}={v}")
    return " ".join(parts)


def emit_access_event(connection: Any, sink: AccessLogFile | None = None) -> None:
    """Log one connection's outcome with structured fields, or write its
    line to ``sink``, the access log file, when one is configured.

    Fields: client, listener, route, server, facts (dict), bytes_in (from
    the client), bytes_out (to the client), duration (s), relay (which relay
    carried the bytes: splice, twisted, or - for none), reason, detail.
    """
    facts = {k: v for k, v in connection.facts.items() if k not in _CONNECTION_FACTS}
    route = connection.route.name if connection.route is not None else "-"
    detail = connection.detail
    fields = dict(
        client=format_address(connection.client_address),
        listener=connection.listener_label,
        route=route,
        server=connection.server or "-",
        facts_text=format_facts(facts),
        bytes_in=connection.bytes_in,
        bytes_out=connection.bytes_out,
        duration=connection.reactor.seconds() - connection.started,
        relay=connection.relay_kind,
        reason=connection.reason or "normal",
        detail_text=f" ({detail})" if detail else "",
    )
    if sink is not None:
        if sink.json:
            sink.write_json(fields, facts, detail)
        else:
            sink.write(ACCESS_FORMAT.format(**fields))
        return
    # The line is formatted here, in C (str.format), rather than by the log
    # observer's pure-Python formatter: a tenth of a connection's cost.
    log.info("{access_line}", access_line=ACCESS_FORMAT.format(**fields),
             switchyard_access=True, facts=facts, detail=detail, **fields)


class AccessLogFile:
    """The ``access_log`` file: one timestamped line per connection, buffered.

    Lines reach the file within ``flush_interval`` seconds, or as soon as
    ``max_buffer`` characters wait, and at stop. Twisted's log observer
    formats and flushes every event, about a fifth of a short connection's
    cost; here that is one write(2) per batch. The file is opened for
    appending (workers share it: each write is whole lines) and reopened by
    L{reopen} (SIGHUP), for logrotate.
    """

    def __init__(self, path: str, reactor: Any, flush_interval: float = 1.0,
                 max_buffer: int = 64 * 1024, json: bool = False) -> None:
        self.path = path
        self.reactor = reactor
        self.json = json  # one JSON object a line (access_log_format = "json")
        self._owner: tuple[int | None, int | None] = (None, None)
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._fd = -1
        self._lines: list[str] = []
        self._size = 0
        self._flush_call: Any = None
        self._second = -1
        self._stamp = ""

    @staticmethod
    def check(path: str) -> str | None:
        """Why ``path`` cannot be the access log, or None if it can; creates
        nothing (``--check`` run as root must not leave a root-owned file)."""
        if os.path.isdir(path):
            return f"{path!r} is a folder"
        if os.path.exists(path):
            if not os.access(path, os.W_OK):
                return f"cannot open {path!r} for appending: permission denied"
            return None
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"cannot create {path!r}: the folder {folder!r} does not exist"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot create {path!r}: the folder {folder!r} is not writable"
        return None

    def open(self, owner: tuple[int | None, int | None] | None = None) -> None:
        """Open (create) the file for appending. ``owner`` is the (uid, gid)
        the process will run as: a file created by root is given to it, so
        that reopening it after logrotate works without privileges."""
        if owner is not None:
            self._owner = owner
        if self._fd < 0:
            existed = os.path.exists(self.path)
            self._fd = _open_append(self.path)
            uid, gid = self._owner
            if not existed and (uid is not None or gid is not None) and os.geteuid() == 0:
                os.fchown(self._fd, -1 if uid is None else uid, -1 if gid is None else gid)

    def write(self, line: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z ", time.localtime(now))
        self._append(self._stamp + line + "\n")

    def _append(self, text: str) -> None:
        self._lines.append(text)
        self._size += len(text)
        if self._size >= self.max_buffer:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.reactor.callLater(self.flush_interval, self.flush)

    def write_json(self, fields: dict[str, Any], facts: dict[str, Any], detail: str) -> None:
        """One connection as a JSON object: every field of the access event."""
        record = {k: v for k, v in fields.items() if k not in ("facts_text", "detail_text")}
        record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["duration"] = round(record["duration"], 6)
        record["facts"] = facts
        record["detail"] = detail
        self._append(json.dumps(record, default=str, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "replace")
        self._lines = []
        self._size = 0
        try:
            self.open()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            log.error("access log {path}: cannot write: {error}; {n} bytes of lines lost",
                      path=self.path, error=e.strerror, n=len(data))

    def reopen(self) -> None:
        """Flush, close and open the path again (after logrotate moved the file)."""
        self.flush()
        self.close()
        try:
            self.open()
        except OSError as e:
            log.error("access log {path}: cannot reopen: {error}", path=self.path,
                      error=e.strerror)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
