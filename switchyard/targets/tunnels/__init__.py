"""Tunnels: agents behind NAT dial out over SSH and publish host names; visitors are sent down.

The agent is the stock OpenSSH client (``ssh -N -R NAME:80:HOST:PORT``) or
switchyard's own (L{agent}); the server is twisted.conch. L{settings} reads
the config tables, L{registry} keeps the live agents and balances visitors
over them, L{server} is the SSH server, L{channel} the ``forwarded-tcpip``
channel a visitor is relayed with, L{link} what both ends of an agent's
connection share, L{target} the targets routes send agents and visitors to.
"""

from switchyard.targets.tunnels.registry import (
    Registry,
    TunnelDown,
    TunnelError,
    TunnelFull,
    TunnelRefused,
    TunnelTimeout,
)
from switchyard.targets.tunnels.server import TunnelServer
from switchyard.targets.tunnels.settings import (
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
