"""switchyard: one TCP port, many protocols."""

__version__ = "0.1.0"
