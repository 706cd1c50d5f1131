"""twistd log observers for log shippers (``twistd --logger=...``): JSON lines on stdout."""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_stdout() -> ILogObserver:
    """Every log event as one JSON object a line on standard output (the
    journal, docker, a shipper's pipe): access events keep their fields
    (client, route, server, facts, bytes_in, bytes_out, duration, reason...).

    twistd calls a ``--logger`` factory without arguments, which is why
    Twisted's own ``jsonFileLogObserver`` cannot be named there directly.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
