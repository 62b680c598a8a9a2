"""Transports: how commands reach a host (this machine, or a server over SSH).

`open_transport` picks one from a manifest's ``ssh`` value; `TransportPool` keeps one per host so the MCP
server reuses connections across tool calls.
"""

from __future__ import annotations

import threading
from typing import Any

from .base import CommandResult, Transport
from .local import LocalTransport
from .ssh import SSHTransport
from .sshconfig import HostSpec, SSHConfigResolver, parse_target


def _normalize(target: str | None) -> str:
    return (target or "").strip()


def is_local(target: str | None) -> bool:
    """True when ``target`` means this machine without SSH (``None``, empty or ``local``)."""
    return _normalize(target).lower() in ("", "local")


def open_transport(target: str | None, **ssh_options: Any) -> Transport:
    """A `LocalTransport` for ``None``/``""``/``"local"``, else an `SSHTransport` (options passed to it)."""
    if is_local(target):
        return LocalTransport()
    return SSHTransport(_normalize(target), **ssh_options)


class TransportPool:
    """One open transport per target, shared by every caller (thread-safe); `close_all` releases them."""

    def __init__(self, **ssh_options: Any) -> None:
        self._ssh_options = ssh_options
        self._lock = threading.Lock()
        self._transports: dict[str, Transport] = {}

    def get(self, target: str | None) -> Transport:
        """The transport for ``target``, created on first use (connections open lazily, on the first call)."""
        key = "local" if is_local(target) else _normalize(target)
        with self._lock:
            transport = self._transports.get(key)
            if transport is None:
                transport = open_transport(key, **self._ssh_options)
                self._transports[key] = transport
            return transport

    def close_all(self) -> None:
        """Close every transport; later `get` calls reconnect."""
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            transport.close()

    def __enter__(self) -> TransportPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


__all__ = [
    "CommandResult",
    "HostSpec",
    "LocalTransport",
    "SSHConfigResolver",
    "SSHTransport",
    "Transport",
    "TransportPool",
    "is_local",
    "open_transport",
    "parse_target",
]
