"""Backends: pools of servers behind one target, balanced, health-checked, discovered."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application.service import IService, MultiService, Service

from switchyard.backends.compile import compile_backend
from switchyard.backends.pool import Server
from switchyard.backends.target import BackendTarget


class _BackendService(Service):
    """Runs one backend's health checks and DNS discovery while the service runs."""

    def __init__(self, target: BackendTarget) -> None:
        self.target = target
        self.setName(f"backend.{target.name}")

    def startService(self) -> None:
        super().startService()
        self.target.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.target.stop()


def backends_service(config: Any) -> IService:
    """One service running every backend of a compiled config (its ``backends``)."""
    top = MultiService()
    top.setName("backends")
    targets: Iterable[BackendTarget] = config.backends.values()
    for target in targets:
        _BackendService(target).setServiceParent(top)
    return top


__all__ = ["BackendTarget", "Server", "backends_service", "compile_backend"]
