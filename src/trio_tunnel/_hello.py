"""The versioned handshake that opens every session, over an accepted WebSocket.

client -> server  HELLO   {protocol, version, role: "client", client_id, window, listen, connect}
server -> client  WELCOME {protocol, version, window, standby_socket_close_secs}
               or WELCOME {error: "why"} and the WebSocket is closed with code 1008.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from ._errors import HandshakeError, RemoteProtocolError
from ._protocol import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    FrameType,
    decode_frames,
    decode_json,
    encode_frame,
    encode_json,
)
from ._ws import WebSocket


@attrs.frozen
class Hello:
    client_id: int
    window: int
    listen: tuple[str, ...]
    connect: tuple[str, ...]


def _single(message: bytes, expected: FrameType) -> dict[str, Any]:
    frames = decode_frames(message)
    if len(frames) != 1 or frames[0].type is not expected:
        got = ", ".join(f.type.name for f in frames)
        raise RemoteProtocolError(f"expected one {expected.name} frame, got {got}")
    return decode_json(frames[0].payload, expected.name)


def _check_version(body: dict[str, Any]) -> None:
    if body.get("protocol") != PROTOCOL_NAME:
        raise HandshakeError(f"not a {PROTOCOL_NAME} peer (protocol {body.get('protocol')!r})")
    if body.get("version") != PROTOCOL_VERSION:
        raise HandshakeError(
            f"protocol version {body.get('version')!r} is not supported "
            f"(this side speaks {PROTOCOL_VERSION})"
        )


def _window(body: dict[str, Any]) -> int:
    window = body.get("window")
    if type(window) is not int or not 4096 <= window <= 1 << 30:
        raise HandshakeError(f"invalid window {window!r}")
    return window


def _names(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HandshakeError(f"invalid {key} list")
    return tuple(value)


async def client_handshake(
    ws: WebSocket,
    *,
    client_id: int,
    window: int,
    listen: list[str],
    connect: list[str],
    timeout: float,
) -> tuple[int, dict[str, Any]]:
    """Send HELLO, await WELCOME. Returns the server's window and its WELCOME body."""
    hello = {
        "protocol": PROTOCOL_NAME,
        "version": PROTOCOL_VERSION,
        "role": "client",
        "client_id": client_id,
        "window": window,
        "listen": listen,
        "connect": connect,
    }
    await ws.send(encode_frame(FrameType.HELLO, 0, 0, encode_json(hello)))
    with trio.fail_after(timeout):
        body = _single(await ws.receive(), FrameType.WELCOME)
    if "error" in body:
        raise HandshakeError(f"refused by server: {body['error']}")
    _check_version(body)
    return _window(body), body


async def server_handshake(ws: WebSocket, *, timeout: float) -> Hello:
    """Await a client's HELLO and check it; raises HandshakeError/RemoteProtocolError."""
    with trio.fail_after(timeout):
        body = _single(await ws.receive(), FrameType.HELLO)
    _check_version(body)
    if body.get("role") != "client":
        raise HandshakeError(f"peer role {body.get('role')!r}: only clients connect to a server")
    client_id = body.get("client_id")
    if type(client_id) is not int or client_id not in (1, 2):
        raise HandshakeError(f"client_id {client_id!r}: must be 1 or 2")
    return Hello(
        client_id=client_id,
        window=_window(body),
        listen=_names(body, "listen"),
        connect=_names(body, "connect"),
    )


async def send_welcome(ws: WebSocket, *, window: int, standby_socket_close_secs: float) -> None:
    body = {
        "protocol": PROTOCOL_NAME,
        "version": PROTOCOL_VERSION,
        "window": window,
        "standby_socket_close_secs": standby_socket_close_secs,
    }
    await ws.send(encode_frame(FrameType.WELCOME, 0, 0, encode_json(body)))


async def send_refusal(ws: WebSocket, reason: str) -> None:
    body = {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION, "error": reason}
    with trio.move_on_after(1):
        await ws.send(encode_frame(FrameType.WELCOME, 0, 0, encode_json(body)))
