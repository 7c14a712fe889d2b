"""The WebSocket layer, kept behind this one small module so the stack stays swappable.

Everything above it sees :class:`WebSocket`: ``send(bytes)``, ``receive() -> bytes``,
``aclose()``. Facts about trio-websocket that shape this module (see
``shared/reference/websocket-stack.md``): 4 KiB reads by default (we read 256 KiB), a 60 s close
wait by default (we pass a short one), and a send cancelled mid-frame corrupts the connection
(only the session's single writer sends, and it is cancelled only when the session is torn
down).
"""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, NoReturn

import trio
import trio_websocket

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

from . import _mask, _proxy
from ._errors import RemoteProtocolError, WebSocketClosed
from ._peer import PeerListener, PeerStream
from ._tls import TlsListener

RECEIVE_BUFFER_SIZE = 256 * 1024
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
_CANCELLED_CLOSE_SECS = 0.1
MAX_PENDING_UPGRADES = 512

ConnectionClosed = WebSocketClosed  # the name the rest of the package catches
FAST_MASKING = _mask.FAST_MASKING
log = logging.getLogger("trio_tunnel.websocket")


@contextmanager
def map_exceptions() -> Iterator[None]:
    """trio-websocket's exceptions become the package's (httpcore's ``map_exceptions``)."""
    try:
        yield
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
        if reason is None:
            raise WebSocketClosed(None, None) from exc
        raise WebSocketClosed(reason.code, reason.reason) from exc


class WebSocket:
    """One open WebSocket carrying binary tunnel messages."""

    def __init__(self, connection: trio_websocket.WebSocketConnection, *, close_timeout: float):
        self._ws = connection
        self._close_timeout = close_timeout

    @property
    def remote(self) -> str:
        return _endpoint_text(self._ws.remote)

    async def send(self, message: bytes) -> None:
        """Send one binary message. Raises :class:`WebSocketClosed` once closed."""
        with map_exceptions():
            await self._ws.send_message(message)

    async def receive(self) -> bytes:
        """The next binary message. A text message is a protocol error."""
        with map_exceptions():
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
    host: str,
    port: int,
    resource: str,
    *,
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[bytes, bytes]],
    connect_timeout: float,
    close_timeout: float,
    open_transport: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    proxy: _proxy.ProxyURL | None = None,  # CONNECT through it (ProxyError when refused)
) -> AsyncIterator[WebSocket]:
    """Open a client WebSocket.

    TCP connect, the TLS handshake (done here, so a certificate problem is reported at once
    rather than as a time-out) and the HTTP upgrade must finish within ``connect_timeout``.
    Raises ``OSError``, ``trio.BrokenResourceError`` (TLS), ``trio.TooSlowError`` or
    :class:`trio_websocket.ConnectionRejected`. ``open_transport`` replaces the TCP connect
    (tests run the same code over in-memory streams); TLS, if any, still runs over it.
    """
    host_header = host if port in (80, 443) else f"{host}:{port}"
    if ":" in host:
        host_header = f"[{host}]" if port in (80, 443) else f"[{host}]:{port}"
    deadline = trio.current_time() + connect_timeout
    with trio.fail_at(deadline):
        stream = await _open_stream(host, port, ssl_context, open_transport, proxy)
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_at(deadline):
                    connection = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]  # annotated too narrowly: any Stream
                        host_header,
                        resource,
                        extra_headers=headers,
                        message_queue_size=1,
                        max_message_size=MAX_MESSAGE_SIZE,
                        receive_buffer_size=RECEIVE_BUFFER_SIZE,
                    )
            except BaseException:
                # The library leaves the stream open when its upgrade fails or times out:
                # close it here, or the server holds a dead connection until GC runs.
                await trio.aclose_forcefully(stream)
                raise
            ws = WebSocket(connection, close_timeout=close_timeout)
            try:
                yield ws
            finally:
                await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A failed upgrade (an HTTP rejection raised by the library's reader task, a broken
        # or timed-out connection) arrives wrapped by our nursery: raise it plainly.
        failure = _sole_failure(group)
        if failure is not None:
            raise failure from None
        raise


async def _open_stream(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    open_transport: Callable[[], Awaitable[trio.abc.Stream]] | None,
    proxy: _proxy.ProxyURL | None,
) -> trio.abc.Stream:
    tcp: trio.abc.Stream
    if open_transport is None:
        tcp = await _proxy.open_tcp_stream(host, port, proxy)
    else:
        tcp = await open_transport()
    if ssl_context is None:
        return tcp
    stream = trio.SSLStream(tcp, ssl_context, server_hostname=host, https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def _sole_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error ``group`` is about, ignoring cancellations, if there is exactly one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], Exception):
        return leaves[0]
    return None


class Request:
    """An incoming WebSocket upgrade, not yet accepted."""

    def __init__(
        self,
        request: trio_websocket.WebSocketRequest,
        close_timeout: float,
        peer_certificate: bytes | None = None,
    ) -> None:
        self._request = request
        self._close_timeout = close_timeout
        # The DER of the certificate the peer presented at the TLS handshake (mutual TLS).
        self.peer_certificate = peer_certificate

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
    on_refused: Callable[[str], None] | None = None,
    listener: trio.abc.Listener[trio.abc.Stream] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve WebSocket upgrades on ``host:port``; reports the bound port via ``task_status``.

    The TLS handshake (if any), the HTTP upgrade and everything before ``handler`` runs must
    complete within ``handshake_timeout``, or the connection is closed. An injected
    ``listener`` replaces binding ``host:port`` (tests serve in-memory streams; the port
    reported is then 0); TLS, if any, still runs over what it accepts.
    """

    upgrades = _UpgradeLimit(MAX_PENDING_UPGRADES)

    async def on_connection(stream: PeerStream) -> None:
        # Each connection's failure stays with it: logged here, never raised to the server.
        try:
            await _serve_connection(stream, handler, handshake_timeout, close_timeout, upgrades)
        except Exception as exc:
            log.warning("WebSocket connection from %s failed: %s", stream.remote, _short(exc))

    tcp_listeners: list[trio.abc.Listener[trio.abc.Stream]]
    if listener is None:
        sockets = await trio.open_tcp_listeners(port, host=host)
        bound_port = int(sockets[0].socket.getsockname()[1])
        tcp_listeners = list(sockets)
    else:
        bound_port, tcp_listeners = 0, [listener]
    listeners: list[Any] = (
        [PeerListener(listener) for listener in tcp_listeners]
        if ssl_context is None
        else [TlsListener(listener, ssl_context, on_refused) for listener in tcp_listeners]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.serve_listeners, on_connection, listeners, handler_nursery=handler_nursery)
        )
        task_status.started(bound_port)
        await trio.sleep_forever()
    raise AssertionError("unreachable")


class _UpgradeLimit:
    """Counts connections still in their TLS/HTTP upgrade; past the limit new ones are shed
    at once (each pending one also ends at the handshake timeout), so a flood of half-open
    connections cannot exhaust descriptors or memory while the clients keep working."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self.shed = 0

    def try_enter(self) -> bool:
        if self.pending >= self.limit:
            self.shed += 1
            if self.shed == 1 or self.shed % 1000 == 0:
                log.warning(
                    "%d connections are in their WebSocket upgrade (the limit): shedding new "
                    "ones (%d so far)",
                    self.pending,
                    self.shed,
                )
            return False
        self.pending += 1
        return True

    def leave(self) -> None:
        self.pending -= 1


async def _serve_connection(
    stream: PeerStream,
    handler: Callable[[Request], Awaitable[None]],
    handshake_timeout: float,
    close_timeout: float,
    upgrades: _UpgradeLimit,
) -> None:
    if not upgrades.try_enter():
        await trio.aclose_forcefully(stream)
        return
    async with trio.open_nursery() as nursery:
        request: trio_websocket.WebSocketRequest | None = None
        try:
            with trio.move_on_after(handshake_timeout):
                async with trio.open_nursery() as race:

                    async def upgrade() -> None:
                        nonlocal request
                        request = await trio_websocket.wrap_server_stream(
                            nursery,
                            stream,
                            message_queue_size=1,
                            max_message_size=MAX_MESSAGE_SIZE,
                            receive_buffer_size=RECEIVE_BUFFER_SIZE,
                        )
                        race.cancel_scope.cancel()

                    async def ended() -> None:
                        # The library answered a bad request (400) and closed, or TLS failed.
                        await stream.ended.wait()
                        race.cancel_scope.cancel()

                    race.start_soon(upgrade)
                    race.start_soon(ended)
        finally:
            upgrades.leave()
        if request is None:
            if not stream.refused:
                if stream.ended.is_set():
                    log.warning("refused %s: not a valid WebSocket upgrade request", stream.remote)
                else:
                    log.warning(
                        "refused %s: no WebSocket upgrade within %gs",
                        stream.remote,
                        handshake_timeout,
                    )
            nursery.cancel_scope.cancel()
            await trio.aclose_forcefully(stream)
            return
        try:
            await handler(
                Request(request, close_timeout, getattr(stream, "peer_certificate", None))
            )
        finally:
            nursery.cancel_scope.cancel()
            with trio.move_on_after(close_timeout) as close_scope:
                close_scope.shield = True
                await stream.aclose()


def _short(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
