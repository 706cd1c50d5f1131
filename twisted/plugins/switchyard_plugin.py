"""The twistd plugin: `twistd -n switchyard --config FILE` (see switchyard.app.tap)."""

from twisted.application.service import ServiceMaker

switchyard = ServiceMaker(
    "switchyard",
    "switchyard.app.tap",
    "One TCP port, many protocols: sniff each connection and route it.",
    "switchyard",
)
