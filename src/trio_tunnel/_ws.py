"""The WebSocket layer, kept behind this one small module so the stack stays swappable.

Everything above it sees :class:`WebSocket`: ``send(bytes)``, ``receive() -> bytes``,
``aclose()``. Facts about trio-websocket that shape this module (see
``shared/reference/websocket-stack.md``): 4 KiB reads by default (we read 256 KiB), a 60 s close
wait by default (we pass a short one), and a send cancelled mid-frame corrupts the connection
(only the session's single writer sends, and it is cancelled only when the session is torn
down).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, NoReturn, TypeVar

import trio
import trio_websocket

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

from . import _admission, _mask, _proxy
from ._admission import Admission, Limits, RefusalLog, Ticket
from ._errors import RemoteProtocolError, WebSocketClosed
from ._peer import PeerListener, PeerStream
from ._tls import TlsListener, TlsServerStream

RECEIVE_BUFFER_SIZE = 256 * 1024
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
# An upgrade request head is a few hundred bytes; past this it is not one (h11, under the
# WebSocket library, also refuses heads above 16 KiB).
MAX_REQUEST_HEAD = 16 * 1024
_CANCELLED_CLOSE_SECS = 0.1

ConnectionClosed = WebSocketClosed  # the name the rest of the package catches
FAST_MASKING = _mask.FAST_MASKING
log = logging.getLogger("trio_tunnel.websocket")
T = TypeVar("T")


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
    # Watched, so a stream that fails during the upgrade ends it at once with its reason (the
    # library's reader would swallow it and leave the upgrade waiting for the deadline): with
    # TLS 1.3 the server checks our certificate after our handshake has returned, and its
    # alert (unknown CA, bad or missing certificate) arrives on the first read.
    watched = PeerStream(stream, host_header)
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_at(deadline):
                    connection = await _client_upgrade(
                        nursery,
                        watched,
                        host_header,
                        resource,
                        headers,
                        tls=ssl_context is not None,
                    )
            except BaseException:
                # The library leaves the stream open when its upgrade fails or times out:
                # close it here, or the server holds a dead connection until GC runs.
                await trio.aclose_forcefully(watched)
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
            raise failure from failure.__cause__  # keeps a TLS error's SSLError cause
        raise


async def _client_upgrade(
    nursery: trio.Nursery,
    stream: PeerStream,
    host_header: str,
    resource: str,
    headers: list[tuple[bytes, bytes]],
    *,
    tls: bool,
) -> trio_websocket.WebSocketConnection:
    """The HTTP upgrade, ended at once (with the stream's own error) if the stream fails."""
    connection = await _unless_ended(
        stream,
        partial(
            trio_websocket.wrap_client_stream,
            nursery,
            stream,  # type: ignore[arg-type]  # any trio stream works; typed too narrowly
            host_header,
            resource,
            extra_headers=headers,
            message_queue_size=1,
            max_message_size=MAX_MESSAGE_SIZE,
            receive_buffer_size=RECEIVE_BUFFER_SIZE,
        ),
    )
    if connection is not None:
        return connection
    failure = stream.failure
    if failure is not None and _tls_error_in(failure):
        raise failure  # a TLS alert from the server: its reason names the cause
    if tls:
        # A server pinning client certificates refuses after the TLS handshake has succeeded,
        # so no alert names the cause (the close or reset arrives bare); say what it most
        # likely is.
        raise trio.BrokenResourceError(
            "the server closed the connection after the TLS handshake without answering the "
            "WebSocket upgrade: most likely it did not accept this client's certificate (not "
            "among the server's trusted_peers), or it dropped unauthenticated connections"
        ) from failure
    raise trio.BrokenResourceError(
        "the server closed the connection without answering the WebSocket upgrade"
    ) from failure


def _tls_error_in(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


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
    """An incoming WebSocket upgrade, not yet accepted, from a connection not yet admitted.

    The handler reports refusals through :meth:`refuse` (counted, logged rate-limited) and
    calls :meth:`admitted` once the peer has authenticated (its HELLO accepted); until then
    the connection is bounded by the admission deadlines and may be dropped to make room.
    """

    def __init__(
        self,
        request: trio_websocket.WebSocketRequest,
        close_timeout: float,
        admission: Admission,
        ticket: Ticket,
        peer_certificate: bytes | None = None,
    ) -> None:
        self._request = request
        self._close_timeout = close_timeout
        self._admission = admission
        self._ticket = ticket
        self.hello_deadline = ticket.deadline
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
        """Accept the upgrade; the tunnel handshake must then end by ``hello_deadline``."""
        connection = await self._request.accept()
        self.hello_deadline = self._ticket.phase_deadline(self._admission.limits.hello_secs)
        return WebSocket(connection, close_timeout=self._close_timeout)

    async def reject(self, status: int, body: str) -> None:
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            await self._request.reject(status, body=body.encode("utf-8"))

    def refuse(self, reason: str, why: str, *, kind: str = "") -> None:
        """Count a refusal of this peer by ``reason`` and log it (rate-limited per reason
        and ``kind``)."""
        self._admission.refusals.note(reason, self.remote, why, kind=kind)

    def admitted(self) -> None:
        """The peer has authenticated: no more deadlines, never dropped to make room."""
        self._admission.admit(self._ticket)


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
    limits: Limits | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve WebSocket upgrades on ``host:port``; reports the bound port via ``task_status``.

    Until ``handler`` calls :meth:`Request.admitted`, a connection is pending and bounded by
    ``limits`` (see :mod:`._admission`: per-phase deadlines, all within
    ``handshake_timeout``; caps per source address and in total, making room by dropping the
    oldest). ``on_refused(reason)`` counts every refusal. An injected ``listener`` replaces
    binding ``host:port`` (tests serve in-memory streams; the port reported is then 0); TLS,
    if any, still runs over what it accepts.
    """
    refusals = RefusalLog(on_refused)
    admission = Admission(limits or _admission.DEFAULT_LIMITS, refusals, handshake_timeout)

    async def on_connection(stream: PeerStream) -> None:
        # Each connection's failure stays with it: logged here, never raised to the server.
        try:
            await _serve_connection(stream, handler, admission, close_timeout)
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
        nursery.start_soon(refusals.run)
        await nursery.start(
            partial(trio.serve_listeners, on_connection, listeners, handler_nursery=handler_nursery)
        )
        task_status.started(bound_port)
        await trio.sleep_forever()
    raise AssertionError("unreachable")


async def _serve_connection(
    stream: PeerStream,
    handler: Callable[[Request], Awaitable[None]],
    admission: Admission,
    close_timeout: float,
) -> None:
    # The scope's backstop deadline leaves time to send a refusal and close after the last
    # phase's own deadline; dropping the connection to make room cancels it.
    ticket = admission.enter(stream.remote, grace=close_timeout + 1)
    request: trio_websocket.WebSocketRequest | None = None
    try:
        with ticket.scope:
            head = await _first_data(stream, admission, ticket)
            if head is not None:
                async with trio.open_nursery() as nursery:  # the library's reader task
                    try:
                        request = await _request_head(stream, nursery, admission, ticket, head)
                        if request is not None:
                            certificate = getattr(stream, "peer_certificate", None)  # TLS
                            await handler(
                                Request(request, close_timeout, admission, ticket, certificate)
                            )
                    finally:
                        nursery.cancel_scope.cancel()
                        if request is not None:
                            with trio.move_on_after(close_timeout) as close_scope:
                                close_scope.shield = True
                                await stream.aclose()
        if ticket.scope.cancelled_caught and ticket.dropped is None:
            # The handler outlived every deadline (it bounds its own phases).
            admission.refusals.note(
                "handshake",
                stream.remote,
                f"not through the handshake within {admission.handshake_timeout:g}s",
            )
    finally:
        admission.leave(ticket)
        if request is None:  # nothing to say goodbye to
            await trio.aclose_forcefully(stream)


async def _first_data(
    stream: PeerStream, admission: Admission, ticket: Ticket
) -> tuple[float, float] | None:
    """TLS (if any), then the request head, each within its deadline.

    Nothing else is set up for a connection until its request head has arrived (or passed
    the size any valid one has), so a flood of silent or slowloris connections costs little
    more than their sockets and a small buffer each. Returns when the request-head phase
    started and its deadline, or None if refused (reported here).
    """
    limits = admission.limits
    refusals = admission.refusals
    if isinstance(stream, TlsServerStream):
        failure: str | None = None
        started = trio.current_time()
        with trio.move_on_at(ticket.phase_deadline(limits.tls_handshake_secs)) as tls_scope:
            failure = await stream.handshake()
        if tls_scope.cancelled_caught:
            refusals.note(
                "tls_timeout",
                stream.remote,
                f"no TLS handshake within {_secs(tls_scope.deadline - started)}s",
            )
            return None
        if failure is not None:
            refusals.note("tls", stream.remote, f"TLS handshake failed: {failure}")
            return None
        if stream.subject:  # a client certificate the server verified
            admission.prove(ticket)
    started = trio.current_time()
    deadline = ticket.phase_deadline(limits.request_head_secs)
    data = b""
    with trio.move_on_at(deadline) as first_scope:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            data = await stream.read_head(MAX_REQUEST_HEAD)
    if first_scope.cancelled_caught:
        _request_timeout(stream, admission, started, deadline)
        return None
    if not data:
        refusals.note(
            "bad_request", stream.remote, "closed the connection before completing its request"
        )
        return None
    return started, deadline


def _request_timeout(
    stream: PeerStream, admission: Admission, started: float, deadline: float
) -> None:
    admission.refusals.note(
        "request_timeout",
        stream.remote,
        f"no complete WebSocket upgrade request within {_secs(deadline - started)}s",
    )


async def _request_head(
    stream: PeerStream,
    nursery: trio.Nursery,
    admission: Admission,
    ticket: Ticket,
    head: tuple[float, float],
) -> trio_websocket.WebSocketRequest | None:
    """The rest of the HTTP request head, by the phase's deadline; None if refused."""
    started, deadline = head
    refusals = admission.refusals
    request: trio_websocket.WebSocketRequest | None = None
    with trio.move_on_at(deadline) as head_scope:
        # Ended first: the library answered a bad request (400) and closed, or the peer left.
        request = await _unless_ended(
            stream,
            partial(
                trio_websocket.wrap_server_stream,
                nursery,
                stream,
                message_queue_size=1,
                max_message_size=MAX_MESSAGE_SIZE,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            ),
        )
    if request is not None:
        admission.prove(ticket)
        return request
    if head_scope.cancelled_caught:
        _request_timeout(stream, admission, started, deadline)
    elif stream.peer_eof:
        refusals.note(
            "bad_request", stream.remote, "closed the connection before completing its request"
        )
    else:
        refusals.note("bad_request", stream.remote, "not a valid WebSocket upgrade request")
    return None


async def _unless_ended(stream: PeerStream, operation: Callable[[], Awaitable[T]]) -> T | None:
    """``operation()``'s result, or None if ``stream`` ends first (its reader failed or the
    peer left), so an upgrade never waits out its deadline on a dead stream."""
    result: list[T] = []
    async with trio.open_nursery() as race:

        async def run() -> None:
            result.append(await operation())
            race.cancel_scope.cancel()

        async def ended() -> None:
            await stream.ended.wait()
            race.cancel_scope.cancel()

        race.start_soon(run)
        race.start_soon(ended)
    return result[0] if result else None


def _secs(value: float) -> str:
    return f"{round(value, 2):g}"


def _short(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
