"""Certificate files watched while running: changed files are reloaded for new handshakes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet.task import LoopingCall


class CertificateWatcher:
    """Reload a target's certificates when their files change, or on SIGHUP.

    New handshakes use the new certificates; connections already open keep
    theirs, so nothing is dropped.
    """

    def __init__(self, targets: Sequence[Any], reactor: Any,
                 interval: float = 2.0) -> None:
        self.targets = list(targets)
        self.reactor = reactor
        self.interval = interval
        self.seen = {id(t): self._stamp(t) for t in self.targets}
        self._loop: Any = None

    @staticmethod
    def _stamp(target: Any) -> tuple[float, ...]:
        stamps = []
        for cert in target.settings.certificates:
            for path in (cert.cert_path, cert.key_path):
                try:
                    stamps.append(os.stat(path).st_mtime)
                except OSError:
                    stamps.append(-1.0)
        return tuple(stamps)

    def check(self) -> None:
        for target in self.targets:
            stamp = self._stamp(target)
            if stamp != self.seen[id(target)]:
                self.seen[id(target)] = stamp
                target.reload()

    def reload_all(self) -> None:
        for target in self.targets:
            self.seen[id(target)] = self._stamp(target)
            target.reload()

    def start(self) -> None:
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
