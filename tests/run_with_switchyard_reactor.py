"""Run trial on switchyard's own reactor, the one production runs on.

    python -m tests.run_with_switchyard_reactor [trial options] tests.test_splice ...

trial cannot switch reactors inside one process, and its ``--reactor``
option only knows reactors registered as plugins: this installs
L{switchyard.relay.reactor.SwitchyardReactor} first, says so on the first
line of output, then runs trial as ``python -m twisted.trial`` would.
scripts/test runs the relay test modules once this way, after the whole
suite has run on Twisted's default reactor.
"""

from __future__ import annotations

import sys


def main() -> None:
    from switchyard.relay.reactor import SwitchyardReactor, install

    installed = install()
    if not isinstance(installed, SwitchyardReactor):
        sys.exit(f"SwitchyardReactor could not be installed (got {type(installed).__name__})")
    print(f"reactor: {type(installed).__name__}", flush=True)
    from twisted.scripts.trial import run

    sys.argv[0] = "trial"
    run()


if __name__ == "__main__":
    main()
