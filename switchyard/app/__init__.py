"""The application: twistd options, the service tree, worker processes."""
