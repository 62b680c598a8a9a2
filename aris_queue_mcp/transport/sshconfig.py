"""Resolve an SSH target (alias, ``user@host:port``, ``ssh://...``) from ``~/.ssh/config`` as ``ssh`` does.

paramiko parses the config but follows neither ``Include`` nor ``ProxyJump``; both are done here.
"""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import paramiko

from ..errors import TransportError

DEFAULT_PORT = 22
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
# OpenSSH's READCONF_MAX_DEPTH; also bounds Include cycles.
MAX_INCLUDE_DEPTH = 16
# A config where hosts jump through each other would otherwise recurse forever.
MAX_JUMP_DEPTH = 8
# StrictHostKeyChecking values under which a new (never a changed) key is accepted and recorded.
ACCEPT_NEW_VALUES = frozenset({"accept-new", "no", "off", "false"})

_HOST_RE = re.compile(r"^[A-Za-z0-9_.%:\-]+$")


@dataclass
class HostSpec:
    """Everything needed to connect to one host, as ``ssh`` would resolve it."""

    alias: str
    """The target as the user wrote it (used in messages)."""
    hostname: str
    port: int = DEFAULT_PORT
    user: str = ""
    identity_files: list[str] = field(default_factory=list)
    identities_only: bool = False
    proxy_jump: list[HostSpec] = field(default_factory=list)
    """Hops in connection order: the first is reached directly (or through its own proxy), the target last."""
    proxy_command: str | None = None
    user_known_hosts_files: list[str] = field(default_factory=list)
    global_known_hosts_files: list[str] = field(default_factory=list)
    strict_host_key_checking: str = "ask"
    connect_timeout: float | None = None
    server_alive_interval: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """The raw options paramiko found for this host (lower-case keys)."""

    @property
    def accepts_new_host_keys(self) -> bool:
        """True when the config says new host keys may be accepted (and recorded) without asking."""
        return self.strict_host_key_checking.lower() in ACCEPT_NEW_VALUES

    @property
    def host_key_name(self) -> str:
        """The name this host's key is stored under in known_hosts (``host`` or ``[host]:port``)."""
        return self.hostname if self.port == DEFAULT_PORT else f"[{self.hostname}]:{self.port}"

    @property
    def address(self) -> str:
        """``user@hostname:port``, for messages."""
        return f"{self.user}@{self.hostname}:{self.port}"

    def describe(self) -> str:
        """The alias as written plus where it resolved to, e.g. ``gpu1 (alice@10.0.0.5:22)``."""
        via = ""
        if self.proxy_jump:
            via = " via " + " -> ".join(h.alias for h in self.proxy_jump)
        elif self.proxy_command:
            via = " via ProxyCommand"
        return f"{self.alias} ({self.address}{via})"


@dataclass(frozen=True)
class Target:
    """A target split into its parts; ``user``/``port`` are None when not given."""

    host: str
    user: str | None = None
    port: int | None = None


def parse_target(target: str) -> Target:
    """Split ``alias``, ``user@host``, ``user@host:port``, ``host:port``, ``[v6]:port`` or ``ssh://user@host:port``."""
    raw = target.strip()
    if not raw:
        raise TransportError("empty SSH target; write an ssh_config alias or user@host[:port]")
    rest = raw[len("ssh://") :] if raw.startswith("ssh://") else raw
    rest = rest.rstrip("/")
    user: str | None = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if not user:
            raise TransportError(f"SSH target {target!r}: empty user name before '@'")
    port: int | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise TransportError(f"SSH target {target!r}: missing ']'")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise TransportError(f"SSH target {target!r}: unexpected text after ']'")
            port = _parse_port(tail[1:], target)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = _parse_port(port_text, target)
    else:
        host = rest  # a bare IPv6 address has several colons and no port
    if not host or not _HOST_RE.match(host):
        raise TransportError(
            f"SSH target {target!r}: {host!r} is not a valid host name or alias "
            "(letters, digits, '.', '-', '_' only)"
        )
    return Target(host=host, user=user, port=port)


def _parse_port(text: str, target: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TransportError(f"SSH target {target!r}: port {text!r} is not a number between 1 and 65535")
    return int(text)


class SSHConfigResolver:
    """Reads ssh_config files (with ``Include``) and resolves targets into `HostSpec` objects.

    ``config_path`` defaults to ``$ARIS_SSH_CONFIG`` or ``~/.ssh/config``; like ``ssh -F``, an explicit path
    skips the system-wide ``/etc/ssh/ssh_config``. ``known_hosts_paths`` replaces the user known_hosts files.
    """

    def __init__(
        self,
        config_path: str | None = None,
        *,
        known_hosts_paths: list[str] | None = None,
        use_system_config: bool | None = None,
    ) -> None:
        explicit = config_path or os.environ.get("ARIS_SSH_CONFIG")
        self.config_path = os.path.expanduser(explicit or "~/.ssh/config")
        self.use_system_config = (not explicit) if use_system_config is None else use_system_config
        self.known_hosts_paths = (
            [os.path.expanduser(p) for p in known_hosts_paths] if known_hosts_paths is not None else None
        )
        self._text: str | None = None

    def config_text(self) -> str:
        """The user (then system) config with every ``Include`` inlined, as paramiko should see it."""
        if self._text is None:
            parts = []
            user_dir = os.path.expanduser("~/.ssh")
            if os.path.isfile(self.config_path):
                parts.append(expand_includes(self.config_path, base_dir=user_dir))
            if self.use_system_config and os.path.isfile(SYSTEM_CONFIG):
                parts.append(expand_includes(SYSTEM_CONFIG, base_dir="/etc/ssh"))
            # Back to an unconditional block between files: the user file may end inside a Host block.
            self._text = "\nHost *\n".join(parts)
        return self._text

    def resolve(self, target: str) -> HostSpec:
        """Resolve ``target`` and its ProxyJump chain into a `HostSpec`; `TransportError` if invalid."""
        return self._resolve(target, depth=0, with_proxy=True)

    def _resolve(self, target: str, *, depth: int, with_proxy: bool) -> HostSpec:
        if depth > MAX_JUMP_DEPTH:
            raise TransportError(
                f"SSH target {target!r}: ProxyJump chain deeper than {MAX_JUMP_DEPTH}; is there a loop?"
            )
        parts = parse_target(target)
        options = self._lookup(parts)
        hostname = options.get("hostname", parts.host)
        try:
            port = int(options.get("port", DEFAULT_PORT))
        except ValueError:
            raise TransportError(
                f"{target}: Port {options.get('port')!r} in ssh config is not a number"
            ) from None
        user = options.get("user") or getpass.getuser()
        spec = HostSpec(
            alias=target,
            hostname=hostname,
            port=port,
            user=user,
            identity_files=[os.path.expanduser(p) for p in options.get("identityfile", [])],
            identities_only=str(options.get("identitiesonly", "no")).lower() == "yes",
            user_known_hosts_files=self._user_known_hosts(options),
            global_known_hosts_files=_split_paths(options.get("globalknownhostsfile"))
            or list(GLOBAL_KNOWN_HOSTS),
            strict_host_key_checking=str(options.get("stricthostkeychecking", "ask")),
            connect_timeout=_number(options.get("connecttimeout"), float, target, "ConnectTimeout"),
            server_alive_interval=_number(
                options.get("serveraliveinterval"), int, target, "ServerAliveInterval"
            ),
            options=dict(options),
        )
        if with_proxy:
            # Like ssh, whichever of ProxyJump / ProxyCommand comes first in the config wins.
            for key in options:
                if key == "proxyjump":
                    spec.proxy_jump = self._jump_chain(str(options[key]), target, depth)
                    break
                if key == "proxycommand":
                    command = options[key]
                    spec.proxy_command = command if command and command.lower() != "none" else None
                    break
        return spec

    def _jump_chain(self, value: str, target: str, depth: int) -> list[HostSpec]:
        if value.strip().lower() == "none":
            return []
        hops = [item.strip() for item in value.split(",") if item.strip()]
        if not hops:
            raise TransportError(f"{target}: empty ProxyJump in ssh config")
        # `ProxyJump a,b` is `ssh -J a b`: the first hop uses its own proxy settings from the config; later
        # hops are reached through the previous one, whatever their own config says.
        return [self._resolve(hop, depth=depth + 1, with_proxy=(i == 0)) for i, hop in enumerate(hops)]

    def _lookup(self, parts: Target) -> paramiko.SSHConfigDict:
        # A user or port given in the target beats the config (like `ssh -l/-p`). paramiko substitutes %p/%r
        # during lookup, so the override goes in as a first-matching block rather than being patched after.
        override = ""
        if parts.user or parts.port:
            override = f"Host {parts.host}\n"
            if parts.user:
                override += f"  User {parts.user}\n"
            if parts.port:
                override += f"  Port {parts.port}\n"
            override += "Host *\n"
        try:
            config = paramiko.SSHConfig.from_text(override + self.config_text())
            return config.lookup(parts.host)
        except (paramiko.ssh_exception.ConfigParseError, ValueError) as exc:
            raise TransportError(f"cannot parse ssh config {self.config_path}: {exc}") from exc
        except ImportError as exc:  # paramiko needs the `invoke` package for `Match exec`
            raise TransportError(
                f"ssh config {self.config_path}: `Match exec` is not supported here ({exc}); "
                "use Host blocks for the hosts you queue to"
            ) from exc

    def _user_known_hosts(self, options: paramiko.SSHConfigDict) -> list[str]:
        if self.known_hosts_paths is not None:
            return list(self.known_hosts_paths)
        configured = _split_paths(options.get("userknownhostsfile"))
        return configured or [os.path.expanduser(p) for p in USER_KNOWN_HOSTS]


def _split_paths(value: str | None) -> list[str]:
    if not value or value.strip().lower() == "none":
        return []
    return [os.path.expanduser(p) for p in shlex.split(value)]


def _number(value: Any, kind: type, target: str, name: str) -> Any:
    if value is None or str(value).lower() == "none":
        return None
    try:
        return kind(value)
    except ValueError:
        raise TransportError(f"{target}: {name} {value!r} in ssh config is not a number") from None


def expand_includes(path: str, *, base_dir: str, _depth: int = 0, _condition: tuple[str, ...] = ()) -> str:
    """Return the text of ``path`` with every ``Include`` replaced by the files it names.

    As in ``ssh``: relative paths are taken from ``base_dir`` (``~/.ssh`` for user files), globs expand in
    sorted order, missing files are skipped, and an ``Include`` inside a ``Host``/``Match`` block only applies
    to hosts that block matches (done here by adding the block's condition to the included blocks).
    """
    if _depth > MAX_INCLUDE_DEPTH:
        raise TransportError(f"ssh config: Include nested deeper than {MAX_INCLUDE_DEPTH} at {path}; a loop?")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise TransportError(f"cannot read ssh config {path}: {exc.strerror}") from exc
    out: list[str] = []
    # The condition of the block we are in (Match criteria); () means unconditional.
    current = _condition
    header = _header(current)
    for line in lines:
        stripped = line.strip()
        match = paramiko.SSHConfig.SETTINGS_REGEX.match(stripped)
        key = match.group(1).lower() if match and not stripped.startswith("#") else ""
        if key in ("host", "match"):
            current = _condition + _criteria(key, match.group(2))  # type: ignore[union-attr]
            header = _header(current)
            out.append(header)
        elif key == "include":
            for pattern in shlex.split(match.group(2)):  # type: ignore[union-attr]
                pattern = os.path.expandvars(os.path.expanduser(pattern))
                if not os.path.isabs(pattern):
                    pattern = os.path.join(base_dir, pattern)
                for included in sorted(glob.glob(pattern)):
                    if os.path.isfile(included):
                        out.append(
                            expand_includes(
                                included, base_dir=base_dir, _depth=_depth + 1, _condition=current
                            )
                        )
            # Back to the block that contained the Include.
            out.append(header)
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _criteria(key: str, value: str) -> tuple[str, ...]:
    if key == "host":
        patterns = shlex.split(value)
        if patterns == ["*"]:
            return ()
        return (f"originalhost {','.join(patterns)}",)
    if value.strip().lower() == "all":
        return ()
    return (value.strip(),)


def _header(condition: tuple[str, ...]) -> str:
    if not condition:
        return "Host *"
    if len(condition) == 1 and condition[0].startswith("originalhost "):
        return "Host " + " ".join(condition[0][len("originalhost ") :].split(","))
    return "Match " + " ".join(condition)
