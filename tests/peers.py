"""Start real programs (sshd, nginx, haproxy, anything) as test peers.

Tests use this to prove switchyard interoperates with the real thing rather
than with a mock.  It is blocking on purpose (``subprocess`` plus polling
sockets) so it works from synchronous ``twisted.trial.unittest.TestCase``
tests without touching the reactor.

Every program:

* listens on 127.0.0.1 on a port reserved for it (L{free_port}, from
  L{tests.helpers}: no parallel test or outgoing connection can take it);
* gets its own config and run folder under the test's temporary directory
  (``testcase.mktemp()``), where its stdout/stderr (``stdout.log``,
  ``stderr.log``) and its own log files go;
* is started in a new session (``start_new_session=True``) so it and all its
  children form one process group;
* is stopped by a cleanup registered with ``testcase.addCleanup``: SIGTERM to
  the process group, then SIGKILL to the group if it has not exited 5
  seconds later (L{Running.stop}, which may also be called early).

Starting waits until the port accepts TCP connections (10 seconds at most);
if the program exits or the port never opens, L{PeerStartError} is raised
with the program's logs in the message.

API::

    free_port() -> int
    wait_for_port(port, timeout=10.0, process=None) -> None
    Running            .process .port .workdir .log_files .stop() .log_text()
    start_process(testcase, argv, port, workdir, env=None) -> Running
    start_sshd(testcase) -> SSHD     # SSHD(Running) + .ssh_command(port, *cmd)
    start_nginx(testcase, config_body, ports=None) -> Running   # + .ports
    start_haproxy(testcase, config_text, port) -> Running
    make_ca(dirpath) -> CA      # CA.issue(names, path_prefix), CA.cert_path

Quirks handled here (Debian 12, running as root):

* sshd needs its privilege separation directory ``/run/sshd``, an absolute
  config path and binary path (it re-executes itself), host keys readable
  only by their owner (ssh-keygen does that); C{StrictModes no} because the
  trial temp folders are not root-only; C{UsePAM no}.
* nginx is given C{-e ERRORLOG} so it never opens the compiled-in
  ``/var/log/nginx/error.log``; every ``*_temp_path``, the pid, the error and
  access logs live under the prefix; as root, C{user root;} is set so worker
  processes can use the temp folders (the default worker user, www-data,
  cannot write under the test directory).
* haproxy runs with C{-db} (foreground, no daemon); it logs to stderr.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from tests.helpers import LOCALHOST, free_port

__all__ = [
    "CA",
    "PeerStartError",
    "Running",
    "SSHD",
    "free_port",
    "make_ca",
    "start_haproxy",
    "start_nginx",
    "start_process",
    "start_sshd",
    "wait_for_port",
]

START_TIMEOUT = 10.0
STOP_GRACE = 5.0
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
SSHD_BINARY = "/usr/sbin/sshd"


class PeerStartError(RuntimeError):
    """A program did not start: it exited, or its port never opened."""


def wait_for_port(
    port: int,
    timeout: float = START_TIMEOUT,
    process: subprocess.Popen | None = None,
) -> None:
    """Block until 127.0.0.1:port accepts a TCP connection.

    @param process: if given and it exits while waiting, give up at once.
    @raise PeerStartError: the process exited, or timeout seconds passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise PeerStartError(
                f"process {process.pid} exited with code {process.returncode}"
                f" before port {port} accepted connections"
            )
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise PeerStartError(
                f"port {port} did not accept connections within {timeout} s"
            )
        time.sleep(0.05)


class Running:
    """A started program.

    @ivar process: the C{subprocess.Popen} (a process group leader).
    @ivar port: the port it listens on (127.0.0.1).
    @ivar workdir: its own folder: config, pid, logs, temp files.
    @ivar log_files: files whose text L{log_text} returns (stdout.log and
        stderr.log in workdir, plus any the recipe adds).
    @ivar ports: named ports (filled by L{start_nginx}; empty otherwise).
    """

    def __init__(
        self,
        process: subprocess.Popen,
        port: int,
        workdir: str,
        log_files: Sequence[str] = (),
    ) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.log_files = list(log_files)
        self.ports: dict[str, int] = {}

    def stop(self) -> None:
        """Stop the program and its children; safe to call more than once.

        SIGTERM to the process group, SIGKILL to the group after 5 seconds
        if the leader is still running, then a last SIGKILL to the group so
        no stray child (nginx worker, sshd session) outlives the test.
        """
        pgid = self.process.pid
        if self.process.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.process.wait()
        # Children that ignored SIGTERM or were left behind by the leader.
        _signal_group(pgid, signal.SIGKILL)

    def log_text(self) -> str:
        """Return the program's logs (stderr, stdout, own log files)."""
        parts = []
        for path in self.log_files:
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            except OSError as error:
                text = f"(unreadable: {error})\n"
            parts.append(f"==> {path} <==\n{text}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} pid={self.process.pid} port={self.port}"
            f" workdir={self.workdir!r}>"
        )


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _workdir(testcase: Any, name: str) -> str:
    """A new absolute folder under the test's temporary directory."""
    path = os.path.abspath(os.path.join(testcase.mktemp(), name))
    os.makedirs(path)
    return path


def start_process(
    testcase: Any,
    argv: Sequence[str],
    port: int,
    workdir: str,
    env: Mapping[str, str] | None = None,
    *,
    log_files: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
    running_class: type = Running,
) -> Running:
    """Start argv in workdir and wait until it listens on 127.0.0.1:port.

    stdout and stderr go to ``workdir/stdout.log`` and ``workdir/stderr.log``.
    A cleanup stopping the process is registered on testcase before waiting.

    @param testcase: the running C{TestCase} (for C{addCleanup}).
    @param argv: the program and its arguments.
    @param port: the port it will listen on.
    @param workdir: its folder (created if missing); also its cwd.
    @param env: variables added to (overriding) a copy of C{os.environ}.
    @param log_files: extra files for L{Running.log_text}.
    @param timeout: seconds to wait for the port.
    @param running_class: the L{Running} subclass to return.
    @raise PeerStartError: it exited or did not listen in time; the message
        carries the command line and its logs.
    """
    os.makedirs(workdir, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    stdout_path = os.path.join(workdir, "stdout.log")
    stderr_path = os.path.join(workdir, "stderr.log")
    with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=workdir,
            env=full_env,
            start_new_session=True,
        )
    running = running_class(
        process, port, workdir, [stderr_path, stdout_path, *log_files]
    )
    testcase.addCleanup(running.stop)
    try:
        wait_for_port(port, timeout, process)
    except PeerStartError as error:
        running.stop()
        raise PeerStartError(
            f"{error}\ncommand: {' '.join(argv)}\n{running.log_text()}"
        ) from None
    return running


# --- sshd -------------------------------------------------------------------


class SSHD(Running):
    """A running sshd accepting one generated client key.

    @ivar client_key: private key file of the authorised client key.
    @ivar host_key: private host key file.
    @ivar host_public_key: the host key line, ``ssh-ed25519 AAAA...``.
    @ivar known_hosts: known_hosts file used by L{ssh_command}.
    @ivar user: the login name (the user running the tests).
    """

    client_key: str
    host_key: str
    host_public_key: str
    known_hosts: str
    user: str

    def ssh_command(self, port: int, *remote_cmd: str) -> list[str]:
        """Return an ssh argv running remote_cmd through 127.0.0.1:port.

        port may be this sshd's own port or that of anything relaying to it
        (switchyard): the known_hosts file gets an entry for
        ``[127.0.0.1]:port`` with this sshd's host key, and ssh is run with
        C{StrictHostKeyChecking=yes}, so success proves this sshd answered.
        No user or system ssh configuration is read (C{-F none}).
        """
        host = LOCALHOST if port == 22 else f"[{LOCALHOST}]:{port}"
        entry = f"{host} {self.host_public_key}\n"
        try:
            with open(self.known_hosts, encoding="ascii") as handle:
                known = handle.read()
        except FileNotFoundError:
            known = ""
        if entry not in known:
            with open(self.known_hosts, "a", encoding="ascii") as handle:
                handle.write(entry)
        return [
            "ssh",
            "-F", "none",
            "-p", str(port),
            "-i", self.client_key,
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "HostKeyAlgorithms=ssh-ed25519",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
            f"{self.user}@{LOCALHOST}",
            *remote_cmd,
        ]


def _keygen(path: str) -> str:
    """Make an ed25519 key pair at path; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    with open(path + ".pub", encoding="ascii") as handle:
        return handle.read().strip()


def start_sshd(testcase: Any) -> SSHD:
    """Start an sshd on a free port that lets the current user in by key.

    The sshd has its own host key, config, pid file and authorized_keys
    under the test's temp folder, logs to stderr (C{-e}), and allows only
    public-key login with a client key generated here.
    """
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    workdir = _workdir(testcase, "sshd")
    port = free_port()
    host_key = os.path.join(workdir, "ssh_host_ed25519_key")
    host_public_key = " ".join(_keygen(host_key).split()[:2])
    client_key = os.path.join(workdir, "client_ed25519")
    client_public_key = _keygen(client_key)
    authorized_keys = os.path.join(workdir, "authorized_keys")
    with open(authorized_keys, "w", encoding="ascii") as handle:
        handle.write(client_public_key + "\n")
    config = os.path.join(workdir, "sshd_config")
    with open(config, "w", encoding="ascii") as handle:
        handle.write(
            f"Port {port}\n"
            f"ListenAddress {LOCALHOST}\n"
            f"HostKey {host_key}\n"
            f"PidFile {os.path.join(workdir, 'sshd.pid')}\n"
            f"AuthorizedKeysFile {authorized_keys}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "LogLevel VERBOSE\n"
        )
    sshd = cast(SSHD, start_process(
        testcase,
        [SSHD_BINARY, "-D", "-e", "-f", config],
        port,
        workdir,
        running_class=SSHD,
    ))
    sshd.client_key = client_key
    sshd.host_key = host_key
    sshd.host_public_key = host_public_key
    sshd.known_hosts = os.path.join(workdir, "known_hosts")
    sshd.user = getpass.getuser()
    return sshd


# --- nginx ------------------------------------------------------------------

# {name} not preceded by "$" (nginx's ${variable} syntax is left alone).
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LISTEN = re.compile(r"\blisten\s+(?:[^\s;{}]*:)?\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BLOCK = re.compile(r"^\s*(http|stream)\s*\{", re.MULTILINE)


def start_nginx(
    testcase: Any,
    config_body: str,
    ports: dict[str, int] | None = None,
) -> Running:
    """Start nginx with the caller's C{http {...}} and/or C{stream {...}}.

    @param config_body: the config after C{events {}}: C{http { server {
        listen 127.0.0.1:{port}; ... } }} or a C{stream} block (the stream
        module is then loaded), with C{{name}}-style placeholders.  A body
        with neither block is wrapped in C{http { }}.  C{{prefix}} is the
        nginx prefix folder (for paths); every other C{{name}} is a port:
        taken from ports, else a fresh free port.  Nginx's own
        C{${variable}} syntax is not touched, and other braces need no
        escaping.
    @param ports: ports to use for some placeholders (e.g. a backend's).
    @return: a L{Running} with C{.ports} (every placeholder's port, given
        or allocated) and C{.port}, the first placeholder used in a
        C{listen} directive (else the first placeholder).  Startup waits for
        every placeholder port used in a C{listen} directive.
    """
    workdir = _workdir(testcase, "nginx")
    all_ports: dict[str, int] = dict(ports or {})
    order: list[str] = []
    for match in _PLACEHOLDER.finditer(config_body):
        name = match.group(1)
        if name == "prefix":
            continue
        if name not in order:
            order.append(name)
        if name not in all_ports:
            all_ports[name] = free_port()
    if not order:
        raise ValueError("nginx config has no {port} placeholder to listen on")
    listen_names = [n for n in dict.fromkeys(_LISTEN.findall(config_body))
                    if n != "prefix"]
    values: dict[str, Any] = dict(all_ports, prefix=workdir)
    body = _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), config_body)

    blocks = {m.group(1) for m in _BLOCK.finditer(body)}
    if not blocks:
        body = "http {\n" + body + "\n}\n"
        blocks = {"http"}
    path = os.path.join
    error_log = path(workdir, "error.log")
    access_log = path(workdir, "access.log")
    http_setup = (
        f"\n    access_log {access_log};\n"
        f"    client_body_temp_path {path(workdir, 'client_body_temp')};\n"
        f"    proxy_temp_path {path(workdir, 'proxy_temp')};\n"
        f"    fastcgi_temp_path {path(workdir, 'fastcgi_temp')};\n"
        f"    uwsgi_temp_path {path(workdir, 'uwsgi_temp')};\n"
        f"    scgi_temp_path {path(workdir, 'scgi_temp')};\n"
    )
    body = re.sub(r"^(\s*http\s*\{)", lambda m: m.group(1) + http_setup,
                  body, count=1, flags=re.MULTILINE)
    head = []
    if "stream" in blocks and "ngx_stream_module" not in body:
        head.append(f"load_module {NGINX_STREAM_MODULE};")
    if os.geteuid() == 0:
        head.append("user root;")
    head += [
        "worker_processes 1;",
        f"pid {path(workdir, 'nginx.pid')};",
        f"error_log {error_log} info;",
        "events {}",
    ]
    conf = path(workdir, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write("\n".join(head) + "\n" + body + "\n")

    main_name = listen_names[0] if listen_names else order[0]
    argv = ["nginx", "-p", workdir + "/", "-e", error_log, "-c", conf,
            "-g", "daemon off;"]
    nginx = start_process(testcase, argv, all_ports[main_name], workdir,
                          log_files=[error_log, access_log])
    for name in listen_names[1:]:
        try:
            wait_for_port(all_ports[name], START_TIMEOUT, nginx.process)
        except PeerStartError as error:
            raise PeerStartError(f"{error}\n{nginx.log_text()}") from None
    nginx.ports = all_ports
    return nginx


# --- haproxy ----------------------------------------------------------------


def start_haproxy(testcase: Any, config_text: str, port: int) -> Running:
    """Start haproxy (C{-db}: foreground) with config_text, waiting on port.

    The config is written to C{haproxy.cfg} in its own folder; the caller
    puts the port in it.  Logs sent to C{stdout}/C{stderr} by the config
    land in L{Running.log_text}.
    """
    workdir = _workdir(testcase, "haproxy")
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(config_text)
    return start_process(testcase, ["haproxy", "-db", "-f", conf], port,
                         workdir)


# --- TLS material -----------------------------------------------------------


class CA:
    """A throwaway certificate authority (EC P-256) for TLS tests.

    @ivar cert_path: the CA certificate (PEM), for clients to verify with.
    @ivar key_path: the CA private key (PEM).
    @ivar directory: where it and (relative) issued files are written.
    """

    def __init__(self, directory: str, cert: Any, key: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self.directory = directory
        self.cert = cert
        self.key = key
        self.cert_path = os.path.join(directory, "ca.crt")
        self.key_path = os.path.join(directory, "ca.key")
        _write(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(self.key_path, _key_pem(key), private=True)

    def issue(self, names: list[str], path_prefix: str) -> tuple[str, str]:
        """Issue a server/client certificate for names.

        Each name becomes a SAN dNSName (an IP literal an iPAddress); the
        first is also the subject CN.  Valid from a day ago for 30 days.

        @param path_prefix: files are C{path_prefix + ".crt"} (certificate),
            C{".key"} (private key) and C{".pem"} (certificate then key, for
            haproxy's C{crt}); a relative prefix is under the CA folder.
        @return: C{(cert_path, key_path)}.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        if not names:
            raise ValueError("a certificate needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                              names[0][:64])])
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=True, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                       ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        prefix = os.path.join(self.directory, path_prefix)
        os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        cert_path, key_path = prefix + ".crt", prefix + ".key"
        _write(cert_path, cert_pem)
        _write(key_path, key_pem, private=True)
        _write(prefix + ".pem", cert_pem + key_pem, private=True)
        return cert_path, key_path


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_ca(dirpath: str) -> CA:
    """Create a CA (EC P-256, C{basicConstraints CA:TRUE}) in dirpath.

    dirpath is created if missing; the CA certificate is C{ca.crt} there.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    dirpath = os.path.abspath(dirpath)
    os.makedirs(dirpath, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "switchyard test CA"),
    ])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CA(dirpath, cert, key)
