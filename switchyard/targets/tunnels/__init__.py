"""Tunnels: agents behind NAT dial out over SSH and publish host names; visitors are sent down.

The agent is the stock OpenSSH client (``ssh -N -R NAME:80:HOST:PORT``) or
switchyard's own (L{agent}); the server is twisted.conch. L{settings} reads
the config tables, L{registry} keeps the live agents and balances visitors
over them, L{server} is the SSH server, L{channel} the ``forwarded-tcpip``
channel a visitor is relayed with, L{link} what both ends of an agent's
connection share, L{target} the targets routes send agents and visitors to.
"""

import warnings

# Older conch (Twisted 24.7, which setup.cfg allows) looks TripleDES up where
# newer cryptography has moved it from, and cryptography warns on that import:
# noise on every start-up and --check that the operator can do nothing about
# (the warning is about the name's home, not about the cipher being used).
warnings.filterwarnings("ignore", message=r"TripleDES has been moved", module=r"twisted\.conch\.")

from switchyard.targets.tunnels.registry import (  # noqa: E402 (after the filter)
    Registry,
    TunnelDown,
    TunnelError,
    TunnelFull,
    TunnelRefused,
    TunnelTimeout,
)
from switchyard.targets.tunnels.server import TunnelServer  # noqa: E402
from switchyard.targets.tunnels.settings import (  # noqa: E402
    ServerSettings,
    TunnelSpec,
    compile_server_settings,
    compile_tunnel,
)

__all__ = [
    "Registry",
    "ServerSettings",
    "TunnelDown",
    "TunnelError",
    "TunnelFull",
    "TunnelRefused",
    "TunnelServer",
    "TunnelSpec",
    "TunnelTimeout",
    "compile_server_settings",
    "compile_tunnel",
]
