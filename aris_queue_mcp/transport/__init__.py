"""Transports: how commands reach a host (this machine, or a server over SSH)."""
