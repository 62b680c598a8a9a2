"""A server over SSH (paramiko) that behaves like ``ssh``: ssh_config, known_hosts, agent, ProxyJump.

One connection per transport, reused across calls, kept alive, and re-established once if it dropped.
Host keys are checked against known_hosts; unknown or changed keys are refused with a message that says
how to fix it. Only ``StrictHostKeyChecking accept-new`` (or ``no``) in the user's config lets a *new* key
in, and then it is recorded in known_hosts as ``ssh`` does; a changed key is always refused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError, ProxyCommandFailure

from ..errors import HostKeyError, TransportError
from .base import CommandResult
from .sshconfig import DEFAULT_PORT, HostSpec, SSHConfigResolver

log = logging.getLogger(__name__)

T = TypeVar("T")
_Sock = paramiko.Channel | paramiko.ProxyCommand

_CHUNK = 65536
# Errors that mean the connection itself broke (as opposed to the remote side refusing a request).
_LINK_ERRORS = (paramiko.SSHException, EOFError, OSError)


class SSHTransport:
    """Run commands and move files on ``target`` (an ssh_config alias, ``user@host[:port]`` or ``ssh://...``).

    ``ssh_config_path`` and ``known_hosts_paths`` replace ``~/.ssh/config`` and the user known_hosts files
    (tests use them to keep away from the real ``~/.ssh``). ``connect_timeout`` and ``keepalive`` apply
    unless the config sets ``ConnectTimeout`` / ``ServerAliveInterval`` for the host.
    """

    def __init__(
        self,
        target: str,
        *,
        ssh_config_path: str | None = None,
        known_hosts_paths: list[str] | None = None,
        connect_timeout: float = 15,
        keepalive: int = 30,
        label: str | None = None,
    ) -> None:
        self.target = target
        self.label = label or target
        self.spec: HostSpec = SSHConfigResolver(ssh_config_path, known_hosts_paths=known_hosts_paths).resolve(
            target
        )
        self.connect_timeout = float(self.spec.connect_timeout or connect_timeout)
        self.keepalive = int(self.spec.server_alive_interval or keepalive)
        self._lock = threading.RLock()  # guards the connection objects below
        self._sftp_lock = threading.Lock()  # an SFTP session serves one request sequence at a time
        self._clients: list[paramiko.SSHClient] = []  # jump hosts first, the target last
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self.connects = 0
        """How many times a connection was (re-)established; lets tests check reuse."""

    def __repr__(self) -> str:
        return f"SSHTransport({self.spec.describe()})"

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- commands -------------------------------------------------------------------------------------

    def run(self, argv: list[str], *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` on the host (each word quoted for the remote shell); at most ``timeout`` seconds."""
        if not argv:
            raise TransportError(f"{self.label}: empty command")
        cmd = shlex.join(argv)
        deadline = time.monotonic() + timeout
        chan = self._start(cmd, deadline)
        return self._collect(chan, cmd, stdin, deadline, timeout)

    def _start(self, cmd: str, deadline: float) -> paramiko.Channel:
        """Open a session and start ``cmd``; reconnect and retry once if the link broke before it started."""
        for attempt in (1, 2):
            transport = self._connection()
            try:
                chan = transport.open_session(timeout=max(0.1, min(self.connect_timeout, _left(deadline))))
                chan.exec_command(cmd)
                return chan
            except _LINK_ERRORS as exc:
                if attempt == 2 or time.monotonic() >= deadline:
                    raise TransportError(
                        f"{self.label}: could not start a command on {self.spec.address}: {_why(exc)}; "
                        f"the connection keeps failing, check the host and the network: {cmd}"
                    ) from exc
                log.info("%s: connection lost (%s); reconnecting", self.label, _why(exc))
                self._disconnect()
        raise AssertionError("unreachable")

    def _collect(
        self, chan: paramiko.Channel, cmd: str, stdin: bytes | None, deadline: float, timeout: float
    ) -> CommandResult:
        out: list[bytes] = []
        err: list[bytes] = []
        # stdout, stderr and stdin each get a thread: a command that fills one pipe while we wait on another
        # would otherwise deadlock once the SSH window is full.
        workers = [
            threading.Thread(target=_drain, args=(chan.recv, out), daemon=True),
            threading.Thread(target=_drain, args=(chan.recv_stderr, err), daemon=True),
        ]
        if stdin is None:
            chan.shutdown_write()
        else:
            workers.append(threading.Thread(target=_feed, args=(chan, stdin), daemon=True))
        for w in workers:
            w.start()
        finished = chan.status_event.wait(_left(deadline))
        for w in workers[:2]:
            w.join(_left(deadline))
        if not finished or any(w.is_alive() for w in workers[:2]):
            chan.close()
            raise TransportError(f"{self.label}: command timed out after {timeout:g}s: {cmd}")
        exit_code = chan.recv_exit_status()
        chan.close()
        if exit_code == -1 and not self._is_active():
            raise TransportError(
                f"{self.label}: connection to {self.spec.address} was lost while running: {cmd}; "
                "the command may or may not have run"
            )
        return CommandResult(
            exit_code=exit_code,
            stdout=b"".join(out).decode("utf-8", errors="replace"),
            stderr=b"".join(err).decode("utf-8", errors="replace"),
        )

    # ---- files ----------------------------------------------------------------------------------------

    def put_file(self, local_path: str, remote_path: str, *, mode: int = 0o600) -> None:
        """Upload atomically: write a temp file next to ``remote_path``, set ``mode``, rename over it."""
        remote = self._absolute(remote_path)
        directory, name = posixpath.split(remote)
        tmp = posixpath.join(directory, f".{name}.tmp-{secrets.token_hex(4)}")
        try:
            src = open(local_path, "rb")  # noqa: SIM115 - closed below; opened first so errors are local
        except OSError as exc:
            raise TransportError(
                f"{self.label}: cannot read local file {local_path}: {exc.strerror}"
            ) from exc

        def upload(sftp: paramiko.SFTPClient) -> None:
            src.seek(0)
            try:
                with sftp.open(tmp, "wb") as f:
                    # Set the mode before any data lands, so a secret is never readable under a wider mode.
                    sftp.chmod(tmp, mode)
                    f.set_pipelined(True)
                    while chunk := src.read(_CHUNK):
                        f.write(chunk)
                _rename(sftp, tmp, remote)
            except BaseException:
                with contextlib.suppress(_LINK_ERRORS):
                    sftp.remove(tmp)
                raise

        try:
            with src:
                self._with_sftp(upload, f"upload {local_path} to {remote}")
        except OSError as exc:
            raise TransportError(
                f"{self.label}: cannot write {remote} on {self.spec.address}: {_why(exc)}"
                + ("; does the directory exist?" if _errno(exc) == errno.ENOENT else "")
            ) from exc

    def read_file(self, remote_path: str) -> bytes:
        """Read a whole remote file over SFTP."""
        path = self._absolute(remote_path)

        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(path, "rb") as f:
                f.prefetch()
                return f.read()

        try:
            return self._with_sftp(read, f"read {path}")
        except OSError as exc:
            if _errno(exc) == errno.ENOENT:
                raise TransportError(f"{self.label}: no such file on {self.spec.address}: {path}") from None
            raise TransportError(
                f"{self.label}: cannot read {path} on {self.spec.address}: {_why(exc)}"
            ) from exc

    def home(self) -> str:
        """``$HOME`` of the login user as remote commands see it.

        Asked from a shell rather than SFTP: the SFTP server starts in the passwd home directory and
        ignores an overridden ``HOME``; commands (and ``~`` in them) follow ``HOME``.
        """
        if self._home is None:
            res = self.run(["sh", "-c", 'printf %s "$HOME"'], timeout=max(self.connect_timeout, 10))
            home = res.stdout.strip()
            if res.exit_code != 0 or not home.startswith("/"):
                home = self._with_sftp(lambda sftp: sftp.normalize("."), "find the home directory")
            self._home = home
        return self._home

    def _absolute(self, path: str) -> str:
        """``~``, ``~/x`` and relative paths are taken from `home`, as a remote shell would."""
        if path == "~":
            return self.home()
        if path.startswith("~/"):
            return posixpath.join(self.home(), path[2:])
        if not path.startswith("/"):
            return posixpath.join(self.home(), path)
        return path

    def _with_sftp(self, fn: Callable[[paramiko.SFTPClient], T], what: str) -> T:
        """Call ``fn`` with the SFTP session, reconnecting and retrying once if the link broke."""
        with self._sftp_lock:
            for attempt in (1, 2):
                try:
                    sftp = self._sftp_session()
                    return fn(sftp)
                except TransportError:
                    raise
                except _LINK_ERRORS as exc:
                    # An SFTP status error (no such file, permission) arrives with the link still up: that
                    # is the answer, not a reason to retry.
                    if attempt == 2 or self._is_active():
                        if isinstance(exc, OSError):
                            raise  # the caller turns SFTP status errors into messages
                        raise TransportError(
                            f"{self.label}: could not {what} on {self.spec.address}: {_why(exc)}"
                        ) from exc
                    log.info("%s: connection lost during %s (%s); reconnecting", self.label, what, _why(exc))
                    self._disconnect()
        raise AssertionError("unreachable")

    def _sftp_session(self) -> paramiko.SFTPClient:
        with self._lock:
            transport = self._connection()
            if self._sftp is None or self._sftp.sock.closed:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport)
                except _LINK_ERRORS as exc:
                    raise TransportError(
                        f"{self.label}: cannot open SFTP on {self.spec.address}: {_why(exc)}; "
                        "is the sftp Subsystem enabled in the server's sshd_config?"
                    ) from exc
                assert self._sftp is not None
            return self._sftp

    # ---- connection -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (and jump hosts); the next call reconnects."""
        self._disconnect()

    def _is_active(self) -> bool:
        with self._lock:
            transport = self._clients[-1].get_transport() if self._clients else None
            return transport is not None and transport.is_active()

    def _connection(self) -> paramiko.Transport:
        """The live connection to the target, (re)connecting if there is none."""
        with self._lock:
            if self._clients:
                transport = self._clients[-1].get_transport()
                if transport is not None and transport.is_active():
                    return transport
                log.info("%s: connection dropped; reconnecting", self.label)
                self._disconnect()
            self._clients = self._open(self.spec, sock=None)
            self.connects += 1
            transport = self._clients[-1].get_transport()
            assert transport is not None
            return transport

    def _disconnect(self) -> None:
        with self._lock:
            sftp, self._sftp = self._sftp, None
            clients, self._clients = self._clients, []
        if sftp is not None:
            with contextlib.suppress(_LINK_ERRORS):
                sftp.close()
        for client in reversed(clients):
            client.close()

    def _open(self, spec: HostSpec, sock: _Sock | None) -> list[paramiko.SSHClient]:
        """Connect to ``spec`` (through its jump hosts or proxy command unless ``sock`` is given)."""
        clients: list[paramiko.SSHClient] = []
        try:
            if sock is None and spec.proxy_jump:
                via: tuple[HostSpec, paramiko.SSHClient] | None = None
                for hop in spec.proxy_jump:
                    hop_clients = self._open(hop, self._tunnel(*via, hop) if via else None)
                    clients.extend(hop_clients)
                    via = (hop, hop_clients[-1])
                assert via is not None
                sock = self._tunnel(*via, spec)
            elif sock is None and spec.proxy_command:
                try:
                    # ssh runs ProxyCommand through a shell (so `exec ...` and pipes work); so do we.
                    sock = paramiko.ProxyCommand(shlex.join(["/bin/sh", "-c", spec.proxy_command]))
                except (OSError, ProxyCommandFailure) as exc:
                    raise TransportError(
                        f"{self.label}: ProxyCommand for {spec.describe()} failed to start: {_why(exc)}"
                    ) from exc
            clients.append(self._connect_one(spec, sock))
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        return clients

    def _tunnel(self, via_spec: HostSpec, via: paramiko.SSHClient, dest: HostSpec) -> paramiko.Channel:
        """A direct-tcpip channel from jump host ``via`` to ``dest``, used as the socket for the next hop."""
        transport = via.get_transport()
        assert transport is not None
        try:
            return transport.open_channel(
                "direct-tcpip", (dest.hostname, dest.port), ("127.0.0.1", 0), timeout=self.connect_timeout
            )
        except _LINK_ERRORS as exc:
            raise TransportError(
                f"{self.label}: jump host {via_spec.describe()} could not open a tunnel to "
                f"{dest.hostname}:{dest.port}: {_why(exc)}; check that the jump host can reach it and allows "
                "TCP forwarding (AllowTcpForwarding)"
            ) from exc

    def _connect_one(self, spec: HostSpec, sock: _Sock | None) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        host_keys = client.get_host_keys()
        for path in [*spec.global_known_hosts_files, *spec.user_known_hosts_files]:
            if os.path.isfile(path):
                try:
                    host_keys.load(path)
                except (OSError, paramiko.SSHException) as exc:
                    log.warning("%s: skipping unreadable known_hosts %s: %s", self.label, path, exc)
        client.set_missing_host_key_policy(_HostKeyPolicy(self.label, spec))
        key_files = [p for p in spec.identity_files if os.path.isfile(p)]
        only_listed = spec.identities_only and bool(key_files)
        try:
            client.connect(
                spec.hostname,
                port=spec.port,
                username=spec.user,
                key_filename=key_files or None,
                allow_agent=not only_listed,
                look_for_keys=not only_listed,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
                sock=sock,
            )
        except BaseException as exc:
            client.close()
            if isinstance(exc, Exception):
                raise self._connect_error(spec, exc, key_files, only_listed) from exc
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(self.keepalive)
        return client

    def _connect_error(
        self, spec: HostSpec, exc: Exception, key_files: list[str], only_listed: bool
    ) -> TransportError:
        where = f"{self.label}: cannot connect to {spec.describe()}"
        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            return HostKeyError(_changed_key_message(self.label, spec, exc.key, exc.expected_key))
        if isinstance(exc, paramiko.AuthenticationException):
            tried = ", ".join(key_files) if key_files else "default keys"
            agent = "" if only_listed else " and ssh-agent keys"
            return TransportError(
                f"{where}: authentication failed for user {spec.user!r} (tried {tried}{agent}). Check that "
                "your public key is in ~/.ssh/authorized_keys on the server, that `ssh-add -l` lists it, or "
                "set User/IdentityFile for this host in ~/.ssh/config; `ssh -v "
                f"{spec.alias}` shows what ssh tries"
            )
        if isinstance(exc, socket.gaierror):
            return TransportError(
                f"{where}: cannot resolve host name {spec.hostname!r} (DNS: {exc.strerror}); check the "
                "spelling, or the HostName for this alias in ~/.ssh/config"
            )
        if isinstance(exc, NoValidConnectionsError | ConnectionRefusedError):
            return TransportError(
                f"{where}: connection refused at {spec.hostname}:{spec.port}; is sshd running there, and "
                "is the port right?"
            )
        if isinstance(exc, socket.timeout | TimeoutError):
            return TransportError(
                f"{where}: timed out after {self.connect_timeout:g}s; is the host up and reachable "
                "(VPN, firewall)? ConnectTimeout in ~/.ssh/config raises the limit"
            )
        if isinstance(exc, ProxyCommandFailure):
            return TransportError(f"{where}: ProxyCommand failed: {_why(exc)}")
        if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
            return TransportError(
                f"{where}: no SSH server answered at {spec.hostname}:{spec.port} ({exc}); is it an SSH "
                "port, and is the server overloaded (MaxStartups)?"
            )
        return TransportError(f"{where}: {_why(exc)}")


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys, unless the config says StrictHostKeyChecking accept-new (or no)."""

    def __init__(self, label: str, spec: HostSpec) -> None:
        self.label = label
        self.spec = spec

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.spec.accepts_new_host_keys:
            raise HostKeyError(_unknown_key_message(self.label, self.spec, hostname, key))
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.spec.user_known_hosts_files:
            path = self.spec.user_known_hosts_files[0]
            _append_known_host(path, f"{hostname} {key.get_name()} {key.get_base64()}\n")
            log.warning(
                "%s: permanently added %s key %s for %s to %s (StrictHostKeyChecking=%s)",
                self.label,
                key.get_name(),
                key.fingerprint,
                hostname,
                path,
                self.spec.strict_host_key_checking,
            )


def _append_known_host(path: str, line: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)


def _known_hosts_hint(spec: HostSpec) -> str:
    path = spec.user_known_hosts_files[0] if spec.user_known_hosts_files else "~/.ssh/known_hosts"
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path


def _unknown_key_message(label: str, spec: HostSpec, name: str, key: paramiko.PKey) -> str:
    port = f"-p {spec.port} " if spec.port != DEFAULT_PORT else ""
    files = ", ".join(spec.user_known_hosts_files + spec.global_known_hosts_files) or "none configured"
    return (
        f"{label}: host key for {name} ({key.get_name()} {key.fingerprint}) is not in known_hosts "
        f"({files}); verify it and add it with: "
        f"ssh-keyscan {port}{spec.hostname} >> {_known_hosts_hint(spec)} "
        f"(or connect once with `ssh {spec.alias}`, or set StrictHostKeyChecking accept-new for this host "
        "in ~/.ssh/config)"
    )


def _changed_key_message(label: str, spec: HostSpec, got: paramiko.PKey, expected: paramiko.PKey) -> str:
    kh = _known_hosts_hint(spec)
    file_opt = f" -f {kh}" if kh != "~/.ssh/known_hosts" else ""
    return (
        f"{label}: host key for {spec.host_key_name} CHANGED: known_hosts has {expected.get_name()} "
        f"{expected.fingerprint}, the server sent {got.get_name()} {got.fingerprint}. This can be a "
        "man-in-the-middle attack, so the connection was refused. If the server was reinstalled, verify the "
        f"new key, remove the old line with: ssh-keygen -R '{spec.host_key_name}'{file_opt} and connect again"
    )


def _rename(sftp: paramiko.SFTPClient, src: str, dest: str) -> None:
    try:
        sftp.posix_rename(src, dest)
    except OSError as exc:
        if "not supported" not in str(exc).lower():
            raise
        # A server without the posix-rename extension: plain SFTP rename refuses to overwrite.
        with contextlib.suppress(OSError):
            sftp.remove(dest)
        sftp.rename(src, dest)


def _drain(recv: Callable[[int], bytes], chunks: list[bytes]) -> None:
    while True:
        try:
            data = recv(_CHUNK)
        except _LINK_ERRORS:
            return
        if not data:
            return
        chunks.append(data)


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except _LINK_ERRORS:
        # The command exited (or was closed on timeout) before reading all of its input.
        pass


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _errno(exc: BaseException) -> int | None:
    return getattr(exc, "errno", None) if isinstance(exc, OSError) else None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
