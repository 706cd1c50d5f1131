"""The one access-log event every connection ends with."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger(namespace="switchyard.access")

# Facts every connection has; the access log shows the matcher's facts apart.
_CONNECTION_FACTS = frozenset({"listener", "client", "client_host", "client_port",
                               "tls_terminated"})

ACCESS_FORMAT = (
    "{client} {listener}/{route} -> {server} facts[{facts_text}] "
    "in={bytes_in} out={bytes_out} {duration:.3f}s close={reason}{detail_text}"
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


def emit_access_event(connection: Any) -> None:
    """Log one connection's outcome with structured fields.

    Fields: client, listener, route, server, facts (dict), bytes_in (from
    the client), bytes_out (to the client), duration (s), reason, detail.
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
        reason=connection.reason or "normal",
        detail_text=f" ({detail})" if detail else "",
    )
    # The line is formatted here, in C (str.format), rather than by the log
    # observer's pure-Python formatter: a tenth of a connection's cost.
    log.info("{access_line}", access_line=ACCESS_FORMAT.format(**fields),
             switchyard_access=True, facts=facts, detail=detail, **fields)
