"""A worker process's log (switchyard/app/worker.py): info lines batched, the rest at once."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from switchyard.app import worker


class LogBatchingTests(unittest.TestCase):
    """A worker writes info lines in batches, the rest at once."""

    def setUp(self) -> None:
        import io

        self.out = io.StringIO()
        self.flushed: list[str] = []
        self.patch(self.out, "flush", lambda: self.flushed.append(self.out.getvalue()))
        self.clock = Clock()
        self.observer = worker._JSONLines(self.out)
        self.observer.batch(self.clock)

    def event(self, level: Any, **fields: Any) -> dict[str, Any]:
        return {"log_level": level, "log_format": "x", "log_namespace": "t",
                "log_time": 0.0, **fields}

    def test_infoWaitsForTheBatch(self) -> None:
        from twisted.logger import LogLevel

        self.observer(self.event(LogLevel.info))
        self.observer(self.event(LogLevel.info))
        self.assertEqual(self.flushed, [])
        self.clock.advance(worker.LOG_BATCH_DELAY)
        self.assertEqual(len(self.flushed), 1)
        self.assertEqual(self.flushed[0].count("\n"), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_warningsAndReadyGoAtOnce(self) -> None:
        from twisted.logger import LogLevel

        self.observer(self.event(LogLevel.info))
        self.observer(self.event(LogLevel.warn))
        self.assertEqual(len(self.flushed), 1)
        self.observer(self.event(LogLevel.info, switchyard_worker_ready=True))
        self.assertEqual(len(self.flushed), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopFlushes(self) -> None:
        from twisted.logger import LogLevel

        self.observer(self.event(LogLevel.info))
        self.observer.stop_batching()
        self.assertEqual(len(self.flushed), 1)
        self.observer(self.event(LogLevel.info))
        self.assertEqual(len(self.flushed), 2)
