"""The built-in matchers (tls, http, h2c, ssh, any, regex) and the option helpers
third-party matchers may use too."""

from switchyard.names import compile_name_patterns
from switchyard.options import Options
from switchyard.wire.text import printable

__all__ = ["Options", "compile_name_patterns", "printable"]
