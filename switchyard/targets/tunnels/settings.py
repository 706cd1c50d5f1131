"""The tunnel server's settings and each tunnel's declaration, read and checked from config tables.

A ``[tunnel_server]`` table holds what the SSH server needs (its host key,
timeouts, limits); each ``[tunnel.NAME]`` table declares one tunnel: the
public keys whose holders may serve it (an authorized key is the tunnel's
identity) and the host names they may publish. Errors name the key and say
what is wrong, and never quote key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

import attr
from twisted.conch.ssh.keys import BadKeyError, EncryptedKeyError, Key

from switchyard.interfaces import OptionError
from switchyard.names import compile_name_patterns
from switchyard.options import Options
from switchyard.targets.backends.balancing import BALANCERS
from switchyard.values import require_texts

DEFAULT_LOGIN_TIMEOUT = 30.0
DEFAULT_MAX_AUTH_TRIES = 6
DEFAULT_KEEPALIVE_INTERVAL = 15.0
DEFAULT_KEEPALIVE_COUNT_MAX = 3
DEFAULT_OPEN_TIMEOUT = 10.0
# The most an agent may send on one channel before we say "more": the bytes
# a slow visitor can make us hold per channel.
DEFAULT_WINDOW = 1 << 20
MAX_PACKET = 32 * 1024  # what OpenSSH uses for TCP channels
DEFAULT_MAX_FORWARDS = 64
DEFAULT_MAX_AGENTS = 8
DEFAULT_MAX_CHANNELS = 1000

SERVER_KEYS = ("host_key", "login_timeout", "max_auth_tries", "keepalive_interval",
               "keepalive_count_max", "open_timeout", "window", "max_forwards_per_agent")
TUNNEL_KEYS = ("keys", "keys_file", "names", "max_agents", "max_channels_per_agent",
               "balance", "proxy_protocol", "port")

# Host key types OpenSSH clients accept (DSA is refused by them since 7.0).
_HOST_KEY_TYPES = (b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
                   b"ecdsa-sha2-nistp521", b"ssh-rsa")
_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-")
_KEY_LINE_EXAMPLE = "expected an OpenSSH public key line such as 'ssh-ed25519 AAAA... comment'"


def fingerprint(key: Key) -> str:
    """A key's SHA-256 fingerprint as ssh-keygen -l prints it: what logs name keys by."""
    digest = hashlib.sha256(key.blob()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TunnelSpec:
    """One declared tunnel: who may serve it and what it may publish."""

    name: str
    keys: tuple[Key, ...]  # public keys; any of them identifies an agent of this tunnel
    names: tuple[str, ...]  # the name patterns as written, for messages
    owns: Callable[[str], bool]  # whether an agent may publish this host name
    max_agents: int = DEFAULT_MAX_AGENTS
    max_channels_per_agent: int = DEFAULT_MAX_CHANNELS
    balance: str = "roundrobin"
    # For the route's target (phase 2): the PROXY header sent into each
    # channel, and the port channels name (default: the visitor's own).
    proxy_protocol: str | None = None
    port: int | None = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerSettings:
    """The SSH server the agents dial."""

    host_key: Key  # private
    host_key_path: str
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    max_auth_tries: int = DEFAULT_MAX_AUTH_TRIES
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count_max: int = DEFAULT_KEEPALIVE_COUNT_MAX
    open_timeout: float = DEFAULT_OPEN_TIMEOUT
    window: int = DEFAULT_WINDOW
    max_forwards_per_agent: int = DEFAULT_MAX_FORWARDS


def _here(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def load_host_key(key: str, path: str) -> Key:
    """Read the server's private host key; the error says how to make a good one."""
    make = f"make one with: ssh-keygen -t ed25519 -f {path} -N ''"
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise OptionError(key, f"host key file {path!r} does not exist: {make}")
    except OSError as e:
        raise OptionError(key, f"cannot read host key file {path!r}: {e.strerror}")
    if not stat.S_ISREG(mode):
        raise OptionError(key, f"{path!r} is not a file: {make}")
    if mode & 0o077:
        # As sshd does: a private key others can read is no longer private.
        raise OptionError(key, f"host key file {path!r} is readable by other users "
                               f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")
    try:
        host_key = Key.fromString(data)
    except EncryptedKeyError:
        raise OptionError(key, f"host key {path!r} is protected by a passphrase, which the "
                               f"server cannot ask for: {make}")
    except (BadKeyError, ValueError, TypeError, IndexError, binascii.Error):
        raise OptionError(key, f"{path!r} is not an OpenSSH private key: {make}")
    if host_key.isPublic():
        raise OptionError(key, f"{path!r} is a public key: give the private key file "
                               f"(the one without .pub)")
    if host_key.sshType() not in _HOST_KEY_TYPES:
        raise OptionError(key, f"host key {path!r} is a {host_key.type()} key, which OpenSSH "
                               f"clients refuse: {make}")
    return host_key


def parse_public_key(key: str, line: str) -> Key:
    """One authorized key line (type, base64, optional comment) as a public key."""
    if "PRIVATE KEY" in line:
        raise OptionError(key, "this is a private key: give the public key line (the .pub "
                               "file) and keep the private key on the agent")
    fields = line.split()
    if not fields:
        raise OptionError(key, f"empty: {_KEY_LINE_EXAMPLE}")
    if not fields[0].startswith(_KEY_TYPE_PREFIXES):
        if any(f.startswith(_KEY_TYPE_PREFIXES) for f in fields[1:]):
            raise OptionError(key, "authorized_keys options (restrict, command=...) are not "
                                   "supported: give the bare key line")
        raise OptionError(key, _KEY_LINE_EXAMPLE)
    if len(fields) < 2:
        raise OptionError(key, _KEY_LINE_EXAMPLE)
    try:
        public = Key.fromString(" ".join(fields[:2]).encode("ascii"), type="public_openssh")
    except (BadKeyError, ValueError, TypeError, IndexError, binascii.Error, UnicodeError):
        raise OptionError(key, f"not a valid public key: {_KEY_LINE_EXAMPLE}")
    if not public.isPublic():
        raise OptionError(key, "not a public key")
    return public


def _key_file_lines(key: str, path: str) -> list[tuple[str, str]]:
    """(key for messages, line) for each key line of an authorized_keys-style file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise OptionError(key, f"{path!r} does not exist")
    except OSError as e:
        raise OptionError(key, f"cannot read {path!r}: {e.strerror}")
    except UnicodeDecodeError:
        raise OptionError(key, f"{path!r} is not a text file of public keys")
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append((f"{key} ({path} line {n})", line))
    return lines


def compile_server_settings(raw: Mapping[str, Any], base_dir: str = ".") -> ServerSettings:
    """A ``[tunnel_server]`` table; raises OptionError naming the key."""
    options = Options(raw, SERVER_KEYS)
    path = options.text("host_key", required=True)
    assert path is not None
    if not path:
        raise OptionError("host_key", "must not be empty")
    path = _here(base_dir, path)
    return ServerSettings(
        host_key=load_host_key("host_key", path),
        host_key_path=path,
        login_timeout=options.number("login_timeout", DEFAULT_LOGIN_TIMEOUT),
        max_auth_tries=options.integer("max_auth_tries", DEFAULT_MAX_AUTH_TRIES,
                                       minimum=1, maximum=100),
        keepalive_interval=options.number("keepalive_interval", DEFAULT_KEEPALIVE_INTERVAL),
        keepalive_count_max=options.integer("keepalive_count_max", DEFAULT_KEEPALIVE_COUNT_MAX,
                                            minimum=1, maximum=100),
        open_timeout=options.number("open_timeout", DEFAULT_OPEN_TIMEOUT),
        # Below one packet the agent could never send a full one.
        window=options.integer("window", DEFAULT_WINDOW, minimum=MAX_PACKET,
                               maximum=1 << 30),
        max_forwards_per_agent=options.integer("max_forwards_per_agent", DEFAULT_MAX_FORWARDS,
                                               minimum=1, maximum=100_000),
    )


def compile_tunnel(name: str, raw: Mapping[str, Any], base_dir: str = ".") -> TunnelSpec:
    """A ``[tunnel.NAME]`` table; raises OptionError naming the key."""
    options = Options(raw, TUNNEL_KEYS)
    lines: list[tuple[str, str]] = []
    if "keys" in raw:
        lines += [(f"keys[{i}]", line) for i, line in enumerate(require_texts("keys", raw["keys"]))]
    for i, path in enumerate(options.texts("keys_file") or ()):
        lines += _key_file_lines(f"keys_file[{i}]" if isinstance(raw["keys_file"], list)
                                 else "keys_file", _here(base_dir, path))
    if not lines:
        raise OptionError("keys", "at least one public key is required (keys = [...] or "
                                  "keys_file = FILE): the agents' keys are the tunnel's identity")
    keys: list[Key] = []
    for key, line in lines:
        public = parse_public_key(key, line)
        if public not in keys:
            keys.append(public)
    patterns = options.texts("names")
    if patterns is None:
        raise OptionError("names", "required: the host names agents of this tunnel may publish")
    owns = compile_name_patterns("names", patterns)
    port = options.integer("port", 0, minimum=1, maximum=65535) if "port" in raw else None
    proxy = options.choice("proxy_protocol", "none", ("none", "v1", "v2"))
    return TunnelSpec(
        name=name, keys=tuple(keys), names=patterns, owns=owns,
        max_agents=options.integer("max_agents", DEFAULT_MAX_AGENTS, minimum=1,
                                   maximum=10_000),
        max_channels_per_agent=options.integer("max_channels_per_agent", DEFAULT_MAX_CHANNELS,
                                               minimum=1, maximum=1_000_000),
        balance=options.choice("balance", "roundrobin", tuple(BALANCERS)),
        proxy_protocol=None if proxy == "none" else proxy,
        port=port,
    )


def check_tunnels(tunnels: Mapping[str, TunnelSpec]) -> None:
    """Checks across tunnels: a key identifies one tunnel, never two.

    @raise OptionError: C{key} is C{NAME.keys} of the second tunnel holding a key.
    """
    owner: dict[bytes, str] = {}
    for name, spec in tunnels.items():
        for public in spec.keys:
            other = owner.setdefault(public.blob(), name)
            if other != name:
                raise OptionError(f"{name}.keys", f"key {fingerprint(public)} is also a key of "
                                                  f"tunnel {other!r}: a key identifies one tunnel")
