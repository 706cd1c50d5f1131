"""A ``[gateway.NAME]`` table, checked key by key: secrets, dialect, limits, allow-list.

Secrets come from files (``secret_file``) and environment variables
(``secret_env``), never from the config text; errors and summaries name
where a secret comes from, never what it is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

import attr
from twisted.logger import Logger

from switchyard.interfaces import OptionError
from switchyard.options import Options
from switchyard.targets.gateway.allow import EXAMPLE, AllowList, parse_allow
from switchyard.targets.gateway.crypto import (
    DEFAULT_CACHE_SIZE,
    PBKDF2_ITERATIONS,
    Kdf,
    Keyring,
    SecretError,
    secret_from_env,
    secret_from_file,
)
from switchyard.targets.gateway.replies import DEFAULT_LINE_LIMITS, Dialect
from switchyard.wire.gateway import HTTP_HEADER_LIMIT

log = Logger(namespace="switchyard.gateway")

GATEWAY_KEYS = ("secret_file", "secret_env", "dialect", "kdf", "iterations", "allow", "retry",
                "timeout", "handshake_timeout", "line_limit", "header_limit",
                "proxy_protocol", "cache_size")

# huangkunbin's -timeout default; frontd's BACKEND_TIMEOUT default.
DEFAULT_TIMEOUTS: Mapping[Dialect, float] = {Dialect.HUANGKUNBIN: 3.0, Dialect.FRONTD: 5.0}
# frontd's read deadline is 30 s; huangkunbin has none, 10 s bounds it.
DEFAULT_HANDSHAKE_TIMEOUTS: Mapping[Dialect, float] = {Dialect.HUANGKUNBIN: 10.0,
                                                        Dialect.FRONTD: 30.0}
# The shortest line that can open: a 32-byte blob is 44 base64 characters.
MIN_LINE_LIMIT = 45
MAX_LIMIT = 1 << 20
MIN_HEADER_LIMIT = 256


@attr.s(frozen=True, slots=True, auto_attribs=True)
class SecretSources:
    """Where a gateway's secrets are read from: files (absolute), then variables."""

    files: tuple[str, ...]
    envs: tuple[str, ...]

    def describe(self) -> str:
        return ", ".join([*(f"file {f}" for f in self.files),
                          *(f"environment variable {e}" for e in self.envs)])


@attr.s(frozen=True, slots=True, auto_attribs=True)
class GatewaySettings:
    """One gateway's compiled options."""

    sources: SecretSources
    keyring: Keyring
    dialect: Dialect
    allow: AllowList
    retry: int = 1
    timeout: float = 3.0
    handshake_timeout: float = 10.0
    line_limit: int = 65
    header_limit: int = HTTP_HEADER_LIMIT
    proxy_protocol: str | None = None

    def describe(self) -> list[str]:
        keyring = self.keyring
        kdf = keyring.kdf.value
        if keyring.kdf is Kdf.PBKDF2:
            kdf += f" ({keyring.iterations} iterations)"
        return [
            f"gateway: dialect {self.dialect.value}, kdf {kdf}, "
            f"secrets from {self.sources.describe()}",
            f"gateway: allow {self.allow}",
            f"gateway: retry {self.retry} x {self.timeout:g}s, handshake_timeout "
            f"{self.handshake_timeout:g}s, line_limit {self.line_limit}, header_limit "
            f"{self.header_limit}, proxy_protocol {self.proxy_protocol or 'none'}, "
            f"cache_size {keyring.cache_size}",
        ]


def _here(base_dir: str, path: str) -> str:
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))


def _warn_if_readable(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # reading it will say what is wrong
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warn("gateway secret file {path} can be read by other users (mode {mode:04o}): "
                 "chmod 600 {path}", path=path, mode=stat.S_IMODE(mode))


def load_secrets(sources: SecretSources, kdf: Kdf, iterations: int, cache_size: int,
                 environ: Mapping[str, str] | None = None) -> Keyring:
    """
    Read every secret named in C{sources} into a new keyring.

    @raise OptionError: a secret cannot be read; the key is C{secret_file} or
        C{secret_env}, the problem names the source and never the secret.
    """
    secrets = []
    for path in sources.files:
        _warn_if_readable(path)
        try:
            secrets.append(secret_from_file(path))
        except SecretError as e:
            raise OptionError("secret_file", str(e))
    for name in sources.envs:
        try:
            secrets.append(secret_from_env(name, environ))
        except SecretError as e:
            raise OptionError("secret_env", str(e))
    return Keyring(secrets, kdf, iterations, cache_size)


def compile_gateway(table: Mapping[str, Any], base_dir: str = ".",
                    environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """A ``[gateway.NAME]`` table as settings; OptionError names the key at fault."""
    if "secret" in table:
        # Its value is never repeated: it is the secret.
        raise OptionError("secret", "a secret never goes in the config text: put it in a file "
                                    "(secret_file = PATH) or an environment variable "
                                    "(secret_env = NAME)")
    options = Options(table, GATEWAY_KEYS)
    files = tuple(_here(base_dir, f) for f in options.texts("secret_file") or ())
    envs = options.texts("secret_env") or ()
    if not files and not envs:
        raise OptionError("secret_file", "a secret is required: secret_file = PATH or "
                                         "secret_env = NAME (a list of either for a rotation)")
    dialect = Dialect(options.choice("dialect", Dialect.HUANGKUNBIN.value,
                                     [d.value for d in Dialect]))
    kdf = Kdf(options.choice("kdf", Kdf.MD5.value, [k.value for k in Kdf]))
    if "iterations" in options and kdf is not Kdf.PBKDF2:
        raise OptionError("iterations", 'has no effect without kdf = "pbkdf2"')
    iterations = options.integer("iterations", PBKDF2_ITERATIONS, minimum=1,
                                 maximum=10_000_000)
    if "allow" not in table:
        raise OptionError("allow", "required: the networks and ports decrypted addresses may "
                                   "point to, e.g. allow = " + EXAMPLE)
    allow = parse_allow("allow", table["allow"])
    proxy_protocol = options.choice("proxy_protocol", "none", ("none", "v1", "v2"))
    cache_size = options.integer("cache_size", DEFAULT_CACHE_SIZE, minimum=0,
                                 maximum=10_000_000)
    sources = SecretSources(files, envs)
    return GatewaySettings(
        sources=sources,
        keyring=load_secrets(sources, kdf, iterations, cache_size, environ),
        dialect=dialect,
        allow=allow,
        retry=options.integer("retry", 1, minimum=1, maximum=100),
        timeout=options.number("timeout", DEFAULT_TIMEOUTS[dialect]),
        handshake_timeout=options.number("handshake_timeout",
                                         DEFAULT_HANDSHAKE_TIMEOUTS[dialect]),
        line_limit=options.integer("line_limit", DEFAULT_LINE_LIMITS[dialect],
                                   minimum=MIN_LINE_LIMIT, maximum=MAX_LIMIT),
        header_limit=options.integer("header_limit", HTTP_HEADER_LIMIT,
                                     minimum=MIN_HEADER_LIMIT, maximum=MAX_LIMIT),
        proxy_protocol=None if proxy_protocol == "none" else proxy_protocol,
    )
