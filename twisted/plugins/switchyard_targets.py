"""Registers switchyard's built-in target kinds exactly as a third-party plugin would."""

from switchyard.targets.backends import BackendKind
from switchyard.targets.responders import ResponderKind
from switchyard.targets.tls.target import TLSKind

backend = BackendKind()
responder = ResponderKind()
tls = TLSKind()
