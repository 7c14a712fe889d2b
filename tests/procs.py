"""Real ``trio-tunnel run`` processes for system tests: the shared rig (``tunnelrig/``), under the
names the tests use."""

from __future__ import annotations

from tunnelrig import (
    TunnelProcess,
    free_port,
    port_refuses,
    toml_config,
    wait_active,
    wait_port_open,
)

__all__ = [
    "TunnelProcess",
    "free_port",
    "port_refuses",
    "toml_config",
    "wait_active",
    "wait_port_open",
]
