"""Registers the encrypted-address gateway: the ``gateway`` matcher and target kind."""

from switchyard.matchers.gateway import GatewayMatcherFactory
from switchyard.targets.gateway.target import GatewayKind

gateway_matcher = GatewayMatcherFactory()
gateway_kind = GatewayKind()
