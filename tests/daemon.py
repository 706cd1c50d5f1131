"""Run the real `twistd -n switchyard` as a subprocess, the way users do."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.helpers import WAIT, wait_for
from tests.peers import Running, start_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# twistd as the installed console script would run it, but from this
# interpreter and with this checkout first on the path.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def write_config(testcase: Any, text: str) -> str:
    folder = testcase.mktemp()
    os.makedirs(folder)
    path = os.path.join(folder, "switchyard.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return os.path.abspath(path)


def start_switchyard(testcase: Any, config_text: str, port: int,
                     twistd_args: tuple[str, ...] = ()) -> Running:
    """Start ``twistd -n [twistd_args] switchyard --config FILE`` and wait for ``port``."""
    config = write_config(testcase, config_text)
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    argv = [*TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(workdir, "twistd.log"),
            *twistd_args, "switchyard", "--config", config]
    return start_process(testcase, argv, port, workdir, env=env(),
                         log_files=[os.path.join(workdir, "twistd.log")])


def run_twistd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run twistd to completion (``--check``, ``--help``...)."""
    return subprocess.run([*TWISTD, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env()}, cwd=REPO, stdin=subprocess.DEVNULL)


def log_after(running: Running, needle: str, timeout: float = WAIT) -> str:
    """The program's log, once ``needle`` is in it (or, after ``timeout``,
    as it is: the caller's assertion then shows it)."""
    try:
        return wait_for(lambda: needle in (text := running.log_text()) and text,
                        f"{needle!r} in the log", timeout)
    except AssertionError:
        return running.log_text()
