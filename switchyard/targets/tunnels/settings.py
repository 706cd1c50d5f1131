"""Tunnel settings read and checked from config tables: the server, each tunnel, the agent.

A ``[tunnel_server.NAME]`` table holds what the SSH server needs (its host
key, timeouts, limits); each ``[tunnel.NAME]`` table declares one tunnel:
the public keys whose holders may serve it (an authorized key is the
tunnel's identity) and the host names they may publish; an
``[agent.NAME]`` table says which server the built-in agent dials, with
which key, and what it publishes. Errors name the key and say what is
wrong, and never quote key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

import attr
from twisted.conch.ssh.keys import BadKeyError, EncryptedKeyError, Key

from switchyard.endpoints import client_endpoint, split_host_port, tls_client_endpoint
from switchyard.interfaces import OptionError
from switchyard.names import compile_name_patterns, normalize_name
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
               "balance", "proxy_protocol", "port", "default_name", "server", "fallback")

# Key types OpenSSH accepts (DSA is refused since 7.0).
_KEY_TYPES = (b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
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
    # For the tunnel target: the PROXY header sent into each
    # channel, and the port channels name (default: the visitor's own).
    proxy_protocol: str | None = None
    port: int | None = None
    # The name of visitors whose route read none (raw TCP on a port of its own).
    default_name: str | None = None


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
    warnings: tuple[str, ...] = ()  # for --check and the start-up log


def _here(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def load_private_key(key: str, path: str, what: str, make: str) -> tuple[Key, str | None]:
    """Read a private key file (the server's host key, an agent's key).

    @param what: what the key is, for messages ("host key", "agent key").
    @param make: how to make a good one, for messages.
    @return: the key, and a warning if others may read the file (the
        config is still usable: a shipped demo key is checked out 0644).
    """
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise OptionError(key, f"{what} file {path!r} does not exist: {make}")
    except OSError as e:
        raise OptionError(key, f"cannot read {what} file {path!r}: {e.strerror}")
    if not stat.S_ISREG(mode):
        raise OptionError(key, f"{path!r} is not a file: {make}")
    try:
        private = Key.fromString(data)
    except EncryptedKeyError:
        raise OptionError(key, f"{what} {path!r} is protected by a passphrase, which "
                               f"switchyard cannot ask for: {make}")
    except (BadKeyError, ValueError, TypeError, IndexError, binascii.Error):
        raise OptionError(key, f"{path!r} is not an OpenSSH private key: {make}")
    if private.isPublic():
        raise OptionError(key, f"{path!r} is a public key: give the private key file "
                               f"(the one without .pub)")
    if private.sshType() not in _KEY_TYPES:
        raise OptionError(key, f"{what} {path!r} is a {private.type()} key, which OpenSSH "
                               f"refuses: {make}")
    warning = None
    if mode & 0o077:
        # sshd ignores such a key; a warning here, shown by --check and at
        # start-up, so that a demo key from a checkout still runs.
        warning = (f"{what} file {path!r} is readable by other users "
                   f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")
    return private, warning


def load_host_key(key: str, path: str) -> Key:
    """Read the server's private host key; the error says how to make a good one."""
    return load_private_key(key, path, "host key", _make_key(path))[0]


def _make_key(path: str) -> str:
    return f"make one with: ssh-keygen -t ed25519 -f {path} -N ''"


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


def _public_keys(raw: Mapping[str, Any], options: Options, key: str, base_dir: str,
                 known_hosts: bool = False) -> list[Key]:
    """The public keys of ``key`` (lines) and ``key_file`` (files), without repeats.

    With ``known_hosts``, a line may also be a known_hosts entry (``host key...``).
    """
    lines: list[tuple[str, str]] = []
    if key in raw:
        lines += [(f"{key}[{i}]" if isinstance(raw[key], list) else key, line)
                  for i, line in enumerate(require_texts(key, raw[key]))]
    file_key = f"{key}_file"
    for i, path in enumerate(options.texts(file_key) or ()):
        lines += _key_file_lines(f"{file_key}[{i}]" if isinstance(raw[file_key], list)
                                 else file_key, _here(base_dir, path))
    keys: list[Key] = []
    for where, line in lines:
        fields = line.split()
        if known_hosts and fields[0].startswith("@"):
            raise OptionError(where, f"known_hosts markers ({fields[0][:20]}) are not "
                                     f"supported: give the server's host key")
        if known_hosts and len(fields) >= 3 and fields[1].startswith(_KEY_TYPE_PREFIXES):
            line = " ".join(fields[1:])  # a known_hosts entry: host, then the key
        public = parse_public_key(where, line)
        if public not in keys:
            keys.append(public)
    return keys


def compile_server_settings(raw: Mapping[str, Any], base_dir: str = ".") -> ServerSettings:
    """A ``[tunnel_server]`` table; raises OptionError naming the key."""
    options = Options(raw, SERVER_KEYS)
    path = options.text("host_key", required=True)
    assert path is not None
    if not path:
        raise OptionError("host_key", "must not be empty")
    path = _here(base_dir, path)
    host_key, warning = load_private_key("host_key", path, "host key", _make_key(path))
    return ServerSettings(
        host_key=host_key,
        host_key_path=path,
        warnings=(warning,) if warning else (),
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
    keys = _public_keys(raw, options, "keys", base_dir)
    if not keys:
        raise OptionError("keys", "at least one public key is required (keys = [...] or "
                                  "keys_file = FILE): the agents' keys are the tunnel's identity")
    patterns = options.texts("names")
    if patterns is None:
        raise OptionError("names", "required: the host names agents of this tunnel may publish")
    owns = compile_name_patterns("names", patterns)
    port = options.integer("port", 0, minimum=1, maximum=65535) if "port" in raw else None
    proxy = options.choice("proxy_protocol", "none", ("none", "v1", "v2"))
    default_name = options.text("default_name")
    if default_name is not None:
        default_name = normalize_name(default_name)
        if not default_name or not owns(default_name):
            raise OptionError("default_name", f"{default_name!r} is not one of the tunnel's "
                                              f"names ({', '.join(patterns)})")
    return TunnelSpec(
        name=name, keys=tuple(keys), names=patterns, owns=owns,
        max_agents=options.integer("max_agents", DEFAULT_MAX_AGENTS, minimum=1,
                                   maximum=10_000),
        max_channels_per_agent=options.integer("max_channels_per_agent", DEFAULT_MAX_CHANNELS,
                                               minimum=1, maximum=1_000_000),
        balance=options.choice("balance", "roundrobin", tuple(BALANCERS)),
        proxy_protocol=None if proxy == "none" else proxy,
        port=port,
        default_name=default_name,
    )


# -- the built-in agent ------------------------------------------------------

DEFAULT_AGENT_USER = "tunnel"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_RECONNECT_MIN = 1.0
DEFAULT_RECONNECT_MAX = 60.0
DEFAULT_GRACE_PERIOD = 30.0
MAX_AGENT_CONNECTIONS = 64

AGENT_KEYS = ("server", "server_key", "server_key_file", "key", "user", "publish",
              "connections", "tls", "tls_server_name", "tls_ca", "tls_verify",
              "connect_timeout", "reconnect_min", "reconnect_max", "keepalive_interval",
              "keepalive_count_max", "window", "grace_period")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AgentSettings:
    """What an ``[agent.NAME]`` dials, who it is, what it publishes."""

    server: str  # as written, for logs
    endpoint: Any  # an IStreamClientEndpoint (TLS around TCP with ``tls``)
    server_keys: tuple[Key, ...]  # the server's host key(s): nothing else is trusted
    key: Key  # private: the agent's identity
    key_path: str
    publish: tuple[tuple[str, int], ...]  # (name, port); port 0 is every port
    user: str = DEFAULT_AGENT_USER
    connections: int = 1
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    reconnect_min: float = DEFAULT_RECONNECT_MIN
    reconnect_max: float = DEFAULT_RECONNECT_MAX
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count_max: int = DEFAULT_KEEPALIVE_COUNT_MAX
    window: int = DEFAULT_WINDOW
    grace_period: float = DEFAULT_GRACE_PERIOD
    tls_server_name: str | None = None
    warnings: tuple[str, ...] = ()


def parse_publish(key: str, entry: str) -> tuple[str, int]:
    """``NAME:PORT``, or ``NAME`` for every port (port 0)."""
    name, colon, port_text = entry.rpartition(":")
    if not colon or not port_text.isdigit():
        name, port = entry, 0
    else:
        port = int(port_text)
        if port > 65535:
            raise OptionError(key, f"{entry!r}: port {port} is not a TCP port")
    if not name or any(c.isspace() for c in name) or name.startswith("["):
        raise OptionError(key, f"{entry!r}: expected a host name, or NAME:PORT")
    return name, port


def compile_agent_settings(raw: Mapping[str, Any], base_dir: str, reactor: Any) -> AgentSettings:
    """An ``[agent.NAME]`` table's own keys (its routes are compiled apart)."""
    options = Options(raw, AGENT_KEYS)
    server = options.text("server", required=True) or ""
    connect_timeout = options.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    endpoint = client_endpoint("server", server, reactor, connect_timeout)
    if options.flag("tls", False):
        host_port = split_host_port(server)
        name = options.text("tls_server_name") or (host_port[0] if host_port else None)
        if not name or _is_address(name):
            raise OptionError("tls_server_name", "required with tls = true when server is not "
                                                 "host:port with a host name: the name the "
                                                 "switch routes on (SNI)")
        ca = options.text("tls_ca")
        ca_path = _here(base_dir, ca) if ca else None
        if ca_path is not None and not os.path.isfile(ca_path):
            raise OptionError("tls_ca", f"{ca_path!r} does not exist")
        try:
            endpoint = tls_client_endpoint(reactor, endpoint, server_name=name,
                                           verify=options.flag("tls_verify", True),
                                           ca_file=ca_path)
        except Exception as e:
            raise OptionError("tls_ca", f"cannot use {ca_path!r}: {e}")
    else:
        name = None
        for key in ("tls_server_name", "tls_ca", "tls_verify"):
            if key in options:
                raise OptionError(key, "only with tls = true")
    server_keys = _public_keys(raw, options, "server_key", base_dir, known_hosts=True)
    if not server_keys:
        raise OptionError("server_key", "required: the tunnel server's host key line (or "
                                        "server_key_file = FILE), which is all the agent "
                                        "trusts; on the server: cat HOST_KEY.pub")
    path = options.text("key", required=True) or ""
    if not path:
        raise OptionError("key", "must not be empty")
    path = _here(base_dir, path)
    make = (f"make one with: ssh-keygen -t ed25519 -f {path} -N '', and add {path}.pub to "
            f"the tunnel's keys on the server")
    private, warning = load_private_key("key", path, "agent key", make)
    publish: list[tuple[str, int]] = []
    entries = options.texts("publish")
    if entries is None:
        raise OptionError("publish", "required: the names to publish, as NAME:PORT (or NAME "
                                     "for every port)")
    for i, entry in enumerate(entries):
        where = f"publish[{i}]" if isinstance(raw["publish"], list) else "publish"
        binding = parse_publish(where, entry)
        if binding not in publish:
            publish.append(binding)
    reconnect_min = options.number("reconnect_min", DEFAULT_RECONNECT_MIN)
    reconnect_max = options.number("reconnect_max", DEFAULT_RECONNECT_MAX)
    if reconnect_max < reconnect_min:
        raise OptionError("reconnect_max", f"must be at least reconnect_min "
                                           f"({reconnect_min:g}), got {reconnect_max:g}")
    user = options.text("user") or DEFAULT_AGENT_USER
    return AgentSettings(
        server=server, endpoint=endpoint, server_keys=tuple(server_keys), key=private,
        key_path=path, publish=tuple(publish), user=user,
        connections=options.integer("connections", 1, minimum=1,
                                    maximum=MAX_AGENT_CONNECTIONS),
        connect_timeout=connect_timeout, reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        keepalive_interval=options.number("keepalive_interval", DEFAULT_KEEPALIVE_INTERVAL),
        keepalive_count_max=options.integer("keepalive_count_max", DEFAULT_KEEPALIVE_COUNT_MAX,
                                            minimum=1, maximum=100),
        window=options.integer("window", DEFAULT_WINDOW, minimum=MAX_PACKET, maximum=1 << 30),
        grace_period=options.number("grace_period", DEFAULT_GRACE_PERIOD, exclusive=False),
        tls_server_name=name,
        warnings=(warning,) if warning else (),
    )


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
