"""TLS termination: the ``[tls.NAME]`` target kind, its settings, engine and watcher."""
