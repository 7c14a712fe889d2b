"""Shared test helpers: echo and sink services, a tunnel rig, socket helpers.

Everything binds 127.0.0.1 with port 0 and every wait has a bound.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

import trio_tunnel as tt
from tunnelrig import LOCALHOST as LOCALHOST
from tunnelrig import free_port as free_port


async def echo_handler(tcp: trio.SocketStream) -> None:
    """Echo until EOF, then half-close back (FIN); a reset from the peer just ends it."""
    try:
        while data := await tcp.receive_some(256 * 1024):
            await tcp.send_all(data)
        await tcp.send_eof()
        await trio.sleep(0.05)
    except trio.BrokenResourceError:
        pass
    finally:
        await tcp.aclose()


async def start_service(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[object]]
) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=LOCALHOST))
    return int(listeners[0].socket.getsockname()[1])


def closed_port() -> int:
    """A port where nothing listens (connections are refused)."""
    return free_port()


async def read_to_end(tcp: trio.SocketStream, limit: int = 1 << 40) -> tuple[bytes, str]:
    """Everything until EOF ("eof") or a reset ("reset")."""
    chunks = []
    total = 0
    try:
        while data := await tcp.receive_some(256 * 1024):
            chunks.append(data)
            total += len(data)
            if total > limit:
                raise AssertionError("more data than expected")
    except trio.BrokenResourceError:
        return b"".join(chunks), "reset"
    return b"".join(chunks), "eof"


async def drain(tcp: trio.SocketStream) -> tuple[int, str, bytes]:
    """Count and hash everything until EOF or reset: (bytes, "eof"|"reset", sha256)."""
    digest = hashlib.sha256()
    total = 0
    try:
        while data := await tcp.receive_some(256 * 1024):
            digest.update(data)
            total += len(data)
    except trio.BrokenResourceError:
        return total, "reset", digest.digest()
    return total, "eof", digest.digest()


async def send_pattern(tcp: trio.SocketStream, size: int, *, eof: bool = True) -> bytes:
    """Send ``size`` pseudo-random bytes; returns their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(64 * 1024)
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        await tcp.send_all(piece)
        digest.update(piece)
        sent += len(piece)
    if eof:
        await tcp.send_eof()
    return digest.digest()


def reset_socket(tcp: trio.SocketStream) -> None:
    tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tcp.socket.close()


@attrs.define
class Rig:
    """A server and its clients in this process, wired to services on 127.0.0.1."""

    server: tt.Server
    clients: dict[int, tt.Client]
    nursery: trio.Nursery
    client_scopes: dict[int, trio.CancelScope]

    def server_port(self, tunnel: str) -> int:
        return self.server.listen_ports[tunnel]

    def client_port(self, client_id: int, tunnel: str) -> int:
        return self.clients[client_id].listen_ports[tunnel]

    async def stop_client(self, client_id: int) -> None:
        self.client_scopes.pop(client_id).cancel()
        del self.clients[client_id]


def server_config(
    *,
    listen: dict[str, int] | None = None,
    connect: dict[str, int] | None = None,
    **sections: object,
) -> tt.Config:
    return tt.Config(
        role="server",
        websocket=sections.pop("websocket", tt.WebSocketSettings(url="ws://127.0.0.1:0/")),  # type: ignore[arg-type]
        listen=tuple(tt.Listen(tunnel=t, port=p) for t, p in (listen or {}).items()),
        connect=tuple(
            tt.Connect(tunnel=t, host=LOCALHOST, port=p) for t, p in (connect or {}).items()
        ),
        **sections,  # type: ignore[arg-type]
    )


def client_config(
    client_id: int,
    server_port: int,
    *,
    listen: dict[str, int] | None = None,
    connect: dict[str, int] | None = None,
    **websocket: Any,
) -> tt.Config:
    return tt.Config(
        role="client",
        client_id=client_id,
        # Port 0 is a placeholder: open_rig fills in the server's real port.
        websocket=tt.WebSocketSettings(url=f"ws://127.0.0.1:{server_port or 1}/", **websocket),
        listen=tuple(tt.Listen(tunnel=t, port=p) for t, p in (listen or {}).items()),
        connect=tuple(
            tt.Connect(tunnel=t, host=LOCALHOST, port=p) for t, p in (connect or {}).items()
        ),
    )


async def _run_scoped_client(
    config: tt.Config, *, task_status: trio.TaskStatus[tuple[tt.Client, trio.CancelScope]]
) -> None:
    with trio.CancelScope() as scope:
        async with tt.open_client(config) as client:
            task_status.started((client, scope))
            await trio.sleep_forever()


async def start_client(rig: Rig, config: tt.Config) -> tt.Client:
    client: tt.Client
    scope: trio.CancelScope
    client, scope = await rig.nursery.start(_run_scoped_client, config)
    assert config.client_id is not None
    rig.clients[config.client_id] = client
    rig.client_scopes[config.client_id] = scope
    with trio.fail_after(10):
        await client.wait_for("connected")
        if config.listen:
            await client.wait_for("listening")
    return client


@asynccontextmanager
async def open_rig(server: tt.Config, clients: list[tt.Config] | None = None) -> AsyncIterator[Rig]:
    """Start ``server``, then each client config (its url port is replaced by the server's)."""
    async with trio.open_nursery() as nursery:
        async with tt.open_server(server) as srv:
            rig = Rig(srv, {}, nursery, {})
            for config in clients or []:
                url = f"{server.websocket.scheme}://127.0.0.1:{srv.websocket_port}/"
                config = attrs.evolve(config, websocket=attrs.evolve(config.websocket, url=url))
                await start_client(rig, config)
            yield rig
            for scope in rig.client_scopes.values():
                scope.cancel()
        nursery.cancel_scope.cancel()
