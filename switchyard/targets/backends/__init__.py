"""The ``[backend.NAME]`` target kind: pools of servers behind one target, balanced,
health-checked, discovered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import implementer

from switchyard.interfaces import ICompileContext, ITarget, ITargetKind
from switchyard.targets.backends.compile import compile_backend
from switchyard.targets.backends.pool import Server
from switchyard.targets.backends.target import BackendTarget


@implementer(ITargetKind)
class BackendKind:
    """``[backend.NAME]``: servers to connect to, with balancing and health checks."""

    section = "backend"
    description = "a pool of servers: balanced, retried, queued, health-checked"
    order = 10
    builtins: Mapping[str, ITarget] = {}

    def compile(self, name: str, table: Mapping[str, Any], context: ICompileContext) -> ITarget:
        return compile_backend(name, table, context.reactor)


__all__ = ["BackendKind", "BackendTarget", "Server", "compile_backend"]
