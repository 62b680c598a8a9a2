"""Transports: how commands reach a host (this machine, or a server over SSH)."""

from .base import CommandResult, Transport
from .local import LocalTransport

__all__ = ["CommandResult", "LocalTransport", "Transport"]
