"""Registers switchyard's built-in matchers exactly as a third-party plugin would."""

from switchyard.matchers.basic import AnyMatcherFactory, RegexMatcherFactory
from switchyard.matchers.http import H2CMatcherFactory, HTTPMatcherFactory
from switchyard.matchers.obfs import ObfsHTTPMatcherFactory, ObfsTLSMatcherFactory
from switchyard.matchers.ssh import SSHMatcherFactory
from switchyard.matchers.tls import TLSMatcherFactory
from switchyard.matchers.websocket import WebSocketMatcherFactory

tls = TLSMatcherFactory()
http = HTTPMatcherFactory()
h2c = H2CMatcherFactory()
ssh = SSHMatcherFactory()
any_ = AnyMatcherFactory()
regex = RegexMatcherFactory()
websocket = WebSocketMatcherFactory()
obfs_http = ObfsHTTPMatcherFactory()
obfs_tls = ObfsTLSMatcherFactory()
