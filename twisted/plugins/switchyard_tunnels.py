"""Registers the tunnel target kinds: the SSH server agents dial, tunnels, the built-in agent."""

from switchyard.targets.tunnels.agent import AgentKind
from switchyard.targets.tunnels.target import TunnelKind, TunnelServerKind

tunnel_server = TunnelServerKind()
tunnel = TunnelKind()
agent = AgentKind()
