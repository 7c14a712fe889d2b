"""The WebSocket layer, kept behind this one small module so the stack stays swappable.

Everything above it sees :class:`WebSocket`: ``send(bytes)``, ``receive() -> bytes``,
``aclose()``. Facts about trio-websocket that shape this module (see
``shared/reference/websocket-stack.md``): 4 KiB reads by default (we read 256 KiB), a 60 s close
wait by default (we pass a short one), and a send cancelled mid-frame corrupts the connection
(only the session's single writer sends, and it is cancelled only when the session is torn
down).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, NoReturn

import trio
import trio_websocket

from ._errors import RemoteProtocolError

RECEIVE_BUFFER_SIZE = 256 * 1024
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
_CANCELLED_CLOSE_SECS = 0.1

ConnectionClosed = trio_websocket.ConnectionClosed


class WebSocket:
    """One open WebSocket carrying binary tunnel messages."""

    def __init__(self, connection: trio_websocket.WebSocketConnection, *, close_timeout: float):
        self._ws = connection
        self._close_timeout = close_timeout

    @property
    def remote(self) -> str:
        return _endpoint_text(self._ws.remote)

    async def send(self, message: bytes) -> None:
        """Send one binary message. Raises :class:`ConnectionClosed` once closed."""
        await self._ws.send_message(message)

    async def receive(self) -> bytes:
        """The next binary message. A text message is a protocol error."""
        message = await self._ws.get_message()
        if isinstance(message, str):
            raise RemoteProtocolError("text message on a binary tunnel", close_code=1003)
        return message

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close, waiting at most ``close_timeout`` for the peer; always releases the socket.

        When the caller is being cancelled (shutdown), the library's reader task is being
        cancelled too and will never see the peer's answer: send the close frame and go.
        """
        cancelled = trio.current_effective_deadline() == -float("inf")
        timeout = _CANCELLED_CLOSE_SECS if cancelled else self._close_timeout
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            await self._ws.aclose(code, _clip_reason(reason))


def _clip_reason(reason: str | None) -> str | None:
    # A close frame's reason is limited to 123 bytes of UTF-8.
    if reason is None:
        return None
    return reason.encode("utf-8")[:120].decode("utf-8", errors="ignore")


def _endpoint_text(endpoint: Any) -> str:
    address = getattr(endpoint, "address", None)
    port = getattr(endpoint, "port", None)
    if address is None:
        return str(endpoint)
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


@asynccontextmanager
async def connect(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[bytes, bytes]],
    connect_timeout: float,
    close_timeout: float,
) -> AsyncIterator[WebSocket]:
    """Open a client WebSocket; raises ``OSError``/``trio_websocket.HandshakeError`` on failure."""
    async with trio_websocket.open_websocket_url(
        url,
        ssl_context=ssl_context,
        extra_headers=headers,
        message_queue_size=1,
        max_message_size=MAX_MESSAGE_SIZE,
        receive_buffer_size=RECEIVE_BUFFER_SIZE,
        connect_timeout=connect_timeout,
        disconnect_timeout=close_timeout,
    ) as connection:
        yield WebSocket(connection, close_timeout=close_timeout)


class Request:
    """An incoming WebSocket upgrade, not yet accepted."""

    def __init__(self, request: trio_websocket.WebSocketRequest, close_timeout: float) -> None:
        self._request = request
        self._close_timeout = close_timeout

    @property
    def path(self) -> str:
        return str(self._request.path)

    @property
    def remote(self) -> str:
        return _endpoint_text(self._request.remote)

    def header(self, name: str) -> bytes | None:
        wanted = name.lower().encode("ascii")
        for key, value in self._request.headers:
            if key.lower() == wanted:
                return bytes(value)
        return None

    async def accept(self) -> WebSocket:
        connection = await self._request.accept()
        return WebSocket(connection, close_timeout=self._close_timeout)

    async def reject(self, status: int, body: str) -> None:
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            await self._request.reject(status, body=body.encode("utf-8"))


async def serve(
    handler: Callable[[Request], Awaitable[None]],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float,
    close_timeout: float,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve WebSocket upgrades on ``host:port``; reports the bound port via ``task_status``.

    An upgrade that does not complete within ``handshake_timeout`` is closed.
    """

    async def on_request(request: trio_websocket.WebSocketRequest) -> None:
        await handler(Request(request, close_timeout))

    async with trio.open_nursery() as nursery:
        server: trio_websocket.WebSocketServer = await nursery.start(
            partial(
                trio_websocket.serve_websocket,
                on_request,
                host,
                port,
                ssl_context,
                handler_nursery=handler_nursery,
                message_queue_size=1,
                max_message_size=MAX_MESSAGE_SIZE,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
                connect_timeout=handshake_timeout,
                disconnect_timeout=close_timeout,
            )
        )
        endpoint = server.listeners[0]
        task_status.started(int(getattr(endpoint, "port", port)))
        await trio.sleep_forever()
    raise AssertionError("unreachable")
