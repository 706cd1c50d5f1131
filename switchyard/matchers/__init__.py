"""The built-in matchers (tls, http, h2c, ssh, any, regex) and the option helpers
third-party matchers may use too."""

from switchyard.matchers._names import Options, compile_name_patterns, printable

__all__ = ["Options", "compile_name_patterns", "printable"]
