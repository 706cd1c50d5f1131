"""The gateway's command line: make cipher lines for a server list, read them for support work.

``encrypt`` avoids the usual ``openssl enc`` pitfalls: the digest is said
(OpenSSL 1.1.0 changed the default from MD5 to SHA-256), the plaintext has
no trailing newline (``echo`` without ``-n``), the base64 is one line
(``-a`` without ``-A`` wraps at 64 characters), the address is checked, and
the secret comes from a file or an environment variable, never the command
line (``ps``, shell history).

``decrypt`` says which secret opens a line, and when none does, why: not
base64, not salted, another key derivation, a plaintext that is not an
address (and what it is).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

from switchyard.targets.gateway.crypto import (
    PBKDF2_ITERATIONS,
    Kdf,
    Keyring,
    Secret,
    SecretError,
    decode_line,
    decrypt,
    encrypt_line,
    load_keyring,
    parse_address,
    split_blob,
)
from switchyard.wire.gateway import HUANGKUNBIN_LINE_LIMIT, SALTED

PROG = "python -m switchyard.targets.gateway"
ADDRESS_HELP = "host:port, with a host name, an IPv4 address or a [bracketed] IPv6 address"


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Make and read the encrypted backend addresses of the gateway "
                    "(frontd / huangkunbin protocol).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, several: bool) -> None:
        many = " (repeat to try several)" if several else ""
        sub.add_argument("--secret-file", action="append", default=[], metavar="PATH",
                         help=f"file holding the secret on one line{many}")
        sub.add_argument("--secret-env", action="append", default=[], metavar="NAME",
                         help=f"environment variable holding the secret{many}")
        sub.add_argument("--kdf", choices=[k.value for k in Kdf], default=Kdf.MD5.value,
                         help="key derivation: md5 (openssl enc -md md5, the Go gateways; "
                              "default), sha256 (openssl enc without -md, OpenSSL 1.1+), "
                              "pbkdf2 (openssl enc -pbkdf2)")
        sub.add_argument("--iter", type=_iterations, default=PBKDF2_ITERATIONS, metavar="N",
                         help=f"PBKDF2 iterations, as openssl's -iter (default "
                              f"{PBKDF2_ITERATIONS})")

    enc = commands.add_parser(
        "encrypt", allow_abbrev=False, help="print one cipher line per address",
        description="Print one base64 cipher line per address, as "
                    "'printf %%s ADDRESS | openssl enc -aes-256-cbc -md md5 -salt -a -A' "
                    "would, without its pitfalls.")
    common(enc, several=False)
    enc.add_argument("--line-limit", type=int, default=HUANGKUNBIN_LINE_LIMIT, metavar="N",
                     help="warn when a line and its newline are longer than the gateway's "
                          f"line_limit (default {HUANGKUNBIN_LINE_LIMIT}, huangkunbin's)")
    enc.add_argument("addresses", nargs="+", metavar="ADDRESS", help=ADDRESS_HELP)

    dec = commands.add_parser(
        "decrypt", allow_abbrev=False, help="print the address in each cipher line",
        description="Print the address in each cipher line (arguments, or standard input "
                    "one per line); explain the lines that do not open.")
    common(dec, several=True)
    dec.add_argument("lines", nargs="*", metavar="LINE", help="cipher lines (default: stdin)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """
    Run the command line.

    @param argv: the arguments after the program name (default: C{sys.argv[1:]}).
    @param prog: the name to show in usage and errors.
    @return: 0 when everything worked, 1 when a line or address failed or a
        secret cannot be loaded, 2 for a usage error.
    """
    parser = _parser(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    kdf = Kdf(args.kdf)
    try:
        keyring = load_keyring(args.secret_file, args.secret_env, kdf, args.iter)
    except SecretError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if args.command == "encrypt":
        if len(keyring.secrets) != 1:
            print(f"{prog}: encrypt takes exactly one secret", file=sys.stderr)
            return 1
        return _encrypt(prog, keyring, args.addresses, args.line_limit)
    return _decrypt(prog, keyring, args.lines or _stdin_lines())


def _encrypt(prog: str, keyring: Keyring, addresses: Sequence[str], line_limit: int) -> int:
    plaintexts = []
    for text in addresses:
        plaintext = text.encode("utf-8", "surrogateescape")
        if parse_address(plaintext) is None:
            print(f"{prog}: {text!r} is not an address: {ADDRESS_HELP}, port 1-65535",
                  file=sys.stderr)
            return 1
        plaintexts.append(plaintext)
    (secret,) = keyring.secrets
    for text, plaintext in zip(addresses, plaintexts, strict=True):
        line = encrypt_line(plaintext, secret, keyring.kdf, keyring.iterations)
        print(line.decode("ascii"))
        if len(line) + 1 > line_limit:
            print(f"{prog}: warning: the line for {text} is {len(line) + 1} bytes with its "
                  f"newline, more than line_limit {line_limit}: raise the gateway's "
                  f"line_limit or use a shorter address", file=sys.stderr)
    return 0


def _stdin_lines() -> Iterator[str]:
    for raw in sys.stdin.buffer:
        line = raw.strip().decode("ascii", "replace")
        if line:
            yield line


def _decrypt(prog: str, keyring: Keyring, lines: Iterator[str] | Sequence[str]) -> int:
    status = 0
    several = len(keyring.secrets) > 1
    for number, text in enumerate(lines, 1):
        found, problem = _explain(text.strip().encode("ascii", "replace"), keyring)
        if found is not None:
            address, secret = found
            print(f"{address}\tsecret from {secret.source}" if several else address)
        else:
            print(f"{prog}: line {number} ({_shorten(text)}): {problem}", file=sys.stderr)
            status = 1
    return status


def _shorten(text: str) -> str:
    return text if len(text) <= 24 else text[:20] + "..."


def _explain(line: bytes, keyring: Keyring) -> tuple[tuple[str, Secret] | None, str]:
    """The address and the secret that opens C{line}, or why none does."""
    blob = decode_line(line)
    if blob is None:
        return None, ("not base64 (one line, standard alphabet, '=' padding; "
                      "openssl enc -a needs -A for lines over 64 characters)")
    if not blob.startswith(SALTED):
        return None, "not a salted openssl blob (no 'Salted__': made with -nosalt?)"
    if split_blob(blob) is None:
        return None, (f"{len(blob)} bytes: not 16 bytes of salt header then whole "
                      f"AES blocks of a short address")
    # The gateway's own derivation first, then the others, for a useful hint.
    candidates = []
    for kdf in sorted(Kdf, key=lambda k: k is not keyring.kdf):
        for secret in keyring.secrets:
            plaintext = decrypt(blob, secret, kdf, keyring.iterations)
            if plaintext is None:
                continue
            address = parse_address(plaintext)
            if address is not None and kdf is keyring.kdf:
                return (str(address), secret), ""
            candidates.append((address is None, kdf is not keyring.kdf, kdf, secret, plaintext))
    if not candidates:
        return None, "no secret opens it (another secret, or a damaged line)"
    no_address, _, kdf, secret, plaintext = min(candidates, key=lambda c: c[:2])
    opens = f"it opens with --kdf {kdf.value} and the secret from {secret.source}"
    if not no_address:
        return None, (f"{opens} (not kdf {keyring.kdf.value}): the gateway needs "
                      f'kdf = "{kdf.value}", or remake the line with encrypt')
    hint = ""
    if plaintext.endswith(b"\n"):
        hint = " (a trailing newline: made with echo without -n)"
    return None, f"{opens}, but {plaintext!r} is not an address{hint}; remake it with encrypt"
