"""``python -m switchyard``: the ``switchyard`` command (see switchyard.cli)."""

from switchyard.cli import entry_point

if __name__ == "__main__":
    entry_point()
