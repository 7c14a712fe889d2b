"""One tunnel stream: its TCP connection, its two pumps, half-close and reset.

A stream task owns one TCP connection for its whole life and runs in its session's nursery:
closing the session cancels exactly its streams. The TCP connection is closed cleanly (FIN)
only when both directions ended with EOF; in every other case it is reset (RST), so a
transfer cut short never looks complete to the application.

This module makes no protocol decision: the session's :class:`~._protocol.Connection` says
what may be sent and numbers it; the pumps move bytes and report what happened. It knows its
session only through :class:`StreamHost`, so the session imports it and not the reverse.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

import trio

from ._errors import StreamReset
from ._protocol import FRAME_COST, Connection, ResetCode, StreamFlow
from ._writer import StreamSlot, Writer

log = logging.getLogger("trio_tunnel.stream")

CHUNK_BYTES = 128 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)


class _EndOfStream:
    """Marker queued behind the last DATA payload of a stream."""


END_OF_STREAM = _EndOfStream()


class StreamHost(Protocol):
    """What a stream asks of the session that carries it."""

    conn: Connection
    writer: Writer

    @property
    def closing_reason(self) -> str | None: ...

    def reset_stream(self, stream: TunnelStream, code: ResetCode, reason: str) -> None:
        """Reset ``stream`` from this side: tell the peer, cancel the stream's task."""

    def send_control_frame(self, frame: bytes) -> None: ...

    def forget_stream(self, stream: TunnelStream) -> None:
        """The stream's task is ending: drop it from the session."""


class TunnelStream:
    """The shell's side of one stream, shared by its task and the session's reader."""

    def __init__(
        self,
        stream_id: int,
        tunnel: str,
        *,
        window: int,
        peer: str,
        on_first_data: Callable[[TunnelStream], None] | None = None,
    ) -> None:
        self.id = stream_id
        self.tunnel = tunnel
        self.peer = peer
        # At most window // FRAME_COST DATA frames fit in the window, plus the EOF marker.
        self.inbound_send, self.inbound_receive = trio.open_memory_channel[
            "memoryview | bytes | _EndOfStream"
        ](window // FRAME_COST + 1)
        self.cancel_scope = trio.CancelScope()
        self.slot = StreamSlot()
        self.credit = trio.lowlevel.ParkingLot()
        self.done = trio.Event()
        self.on_first_data = on_first_data
        self.reset_code: ResetCode | None = None
        self.reset_reason: str | None = None
        self.reset_remote = False
        self.bytes_out = 0  # TCP -> tunnel
        self.bytes_in = 0  # tunnel -> TCP
        self.opened_at = self.last_active = trio.current_time()
        self.flow: StreamFlow | None = None  # the core's counters, for inspection only
        self.app_closed = False  # an application stream closed by its application

    def __repr__(self) -> str:
        return f"<stream {self.id} tunnel {self.tunnel!r}>"

    def mark_reset(self, code: ResetCode, reason: str, *, remote: bool) -> bool:
        """Record why the stream ends and cancel its task; ``False`` if it already ended."""
        if self.reset_code is not None:
            return False
        self.reset_code = code
        self.reset_reason = reason
        self.reset_remote = remote
        self.cancel_scope.cancel()
        self.on_reset()
        return True

    def on_reset(self) -> None:
        """What else a reset must do (the task-driven stream: nothing, its task ends)."""


def _arm_reset(tcp: trio.SocketStream) -> None:
    """Should this process die, the kernel resets ``tcp`` instead of closing it cleanly."""
    with contextlib.suppress(OSError):
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


def reset_tcp(tcp: trio.SocketStream) -> None:
    """Close ``tcp`` with an RST (SO_LINGER 0): the application sees a reset, never a FIN."""
    sock = tcp.socket
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


async def run_stream(
    host: StreamHost,
    stream: TunnelStream,
    tcp: trio.SocketStream | None,
    target: tuple[str, int] | None,
    connect_timeout: float,
) -> None:
    """Carry one stream until both directions end, or it is reset or cancelled."""
    clean = False
    try:
        with stream.cancel_scope:
            if tcp is None:
                assert target is not None
                tcp = await _connect(host, stream, target, connect_timeout)
                if tcp is None:
                    return
            _arm_reset(tcp)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump_tcp_to_tunnel, host, stream, tcp)
                nursery.start_soon(_pump_tunnel_to_tcp, host, stream, tcp)
            clean = stream.reset_code is None
    except Exception as exc:
        # A bug in one stream must not end the session carrying the others: log it and
        # reset this stream only.
        log.exception("stream %d tunnel %s: internal error", stream.id, stream.tunnel)
        host.reset_stream(stream, ResetCode.INTERNAL, f"internal error: {type(exc).__name__}")
    finally:
        if stream.reset_code is None and not clean:
            # Cancelled from outside the stream: the session ended or the process stops.
            reason = host.closing_reason
            code = ResetCode.SESSION_LOST if reason is not None else ResetCode.SHUTDOWN
            stream.mark_reset(code, reason or "cancelled", remote=False)
        host.forget_stream(stream)
        if tcp is not None:
            if clean:
                with contextlib.suppress(OSError):
                    tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    await tcp.aclose()
            else:
                reset_tcp(tcp)
        _log_close(stream)
        stream.done.set()


async def _connect(
    host: StreamHost, stream: TunnelStream, target: tuple[str, int], timeout: float
) -> trio.SocketStream | None:
    address, port = target
    try:
        with trio.fail_after(timeout):
            return await open_tcp(address, port)
    except trio.TooSlowError:
        code = ResetCode.CONNECT_TIMEOUT
        reason = f"connect to {address}:{port} timed out after {timeout:g}s"
    except OSError as exc:
        code = ResetCode.CONNECT_FAILED
        reason = f"connect to {address}:{port} failed: {exc.strerror or exc}"
    host.reset_stream(stream, code, reason)
    return None


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """Connect to ``host:port`` with the socket armed to reset (SO_LINGER 0) from the start.

    Armed before ``connect``, a connection cancelled (or a process killed) right after the
    handshake reaches the far service as a reset, never as a clean empty stream. An IP literal
    skips name resolution (a quarter of a new stream's time on loopback); a host name's
    addresses are tried in turn, each with an equal share of the time left.
    """
    infos: list[tuple[Any, Any, int, str, Any]]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        infos = [(family, socket.SOCK_STREAM, 0, "", (host, port))]
    errors: list[str] = []
    for index, (family, type_, proto, _name, address) in enumerate(infos):
        left = max(0.0, trio.current_effective_deadline() - trio.current_time())
        with trio.move_on_after(left / (len(infos) - index)) as attempt:
            try:
                return await _connect_one(family, type_, proto, address)
            except OSError as exc:
                errors.append(f"{address[0]}: {exc.strerror or exc}")
        if attempt.cancelled_caught:
            errors.append(f"{address[0]}: timed out")
    if not errors:
        raise OSError(f"{host} has no address")
    if len(errors) == 1:
        raise OSError(errors[0].split(": ", 1)[1])
    raise OSError("; ".join(errors))


async def _connect_one(
    family: int, type_: int, proto: int, address: tuple[Any, ...]
) -> trio.SocketStream:
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _pump_tcp_to_tunnel(
    host: StreamHost, stream: TunnelStream, tcp: trio.SocketStream
) -> None:
    conn = host.conn
    writer = host.writer
    stream_id = stream.id
    try:
        while True:
            while (sendable := conn.sendable(stream_id)) <= 0:
                await stream.credit.park()
            await writer.reserve(stream.slot)
            try:
                data = await tcp.receive_some(min(sendable, CHUNK_BYTES))
            except BaseException:
                writer.unreserve(stream.slot)
                raise
            if not data:
                frame = conn.send_eof(stream_id)
                if frame is None:
                    writer.unreserve(stream.slot)
                else:
                    writer.submit(stream.slot, frame)
                return
            if stream.on_first_data is not None:
                hook, stream.on_first_data = stream.on_first_data, None
                hook(stream)
            header = conn.send_data(stream_id, data)
            if header is None:  # reset while we read: the task is being cancelled
                writer.unreserve(stream.slot)
                return
            stream.bytes_out += len(data)
            stream.last_active = trio.current_time()
            writer.submit(stream.slot, header, data)
    except (trio.BrokenResourceError, OSError) as exc:
        host.reset_stream(stream, ResetCode.TCP_ERROR, f"TCP receive failed: {exc}")


async def _pump_tunnel_to_tcp(
    host: StreamHost, stream: TunnelStream, tcp: trio.SocketStream
) -> None:
    conn = host.conn
    stream_id = stream.id
    try:
        async for item in stream.inbound_receive:
            if isinstance(item, _EndOfStream):
                await tcp.send_eof()
                return
            await tcp.send_all(item)
            stream.bytes_in += len(item)
            grant = conn.consumed(stream_id, len(item))
            if grant is not None:
                host.send_control_frame(grant)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        host.reset_stream(stream, ResetCode.TCP_ERROR, f"TCP send failed: {exc}")


def _log_close(stream: TunnelStream) -> None:
    duration = trio.current_time() - stream.opened_at
    if stream.reset_code is None:
        log.info(
            "stream %d tunnel %s peer %s closed: %d bytes out, %d bytes in, %.3fs",
            stream.id,
            stream.tunnel,
            stream.peer,
            stream.bytes_out,
            stream.bytes_in,
            duration,
        )
    else:
        log.warning(
            "stream %d tunnel %s peer %s reset: %s [%s] (%d bytes out, %d bytes in, %.3fs)",
            stream.id,
            stream.tunnel,
            stream.peer,
            stream.reset_reason,
            stream.reset_code.label,
            stream.bytes_out,
            stream.bytes_in,
            duration,
        )


class AppStream(TunnelStream, trio.abc.HalfCloseableStream):
    """A tunnel stream the application drives itself, as a trio ``HalfCloseableStream``.

    No TCP socket and no task: ``send_all`` sends DATA under the peer's credit, ``send_eof``
    ends our direction, ``receive_some`` returns what the peer sent and grants the credit
    back, and returns ``b""`` after the peer's EOF. A reset, by either side, makes every
    later call raise ``trio.BrokenResourceError`` whose cause is :class:`~._errors.StreamReset`.
    ``aclose`` behaves like closing a TCP socket: our direction ends with an EOF if it can
    (the frames already queued go first), but unread data, data arriving afterwards, or a
    cancelled close resets the stream.
    """

    def __init__(self, host: StreamHost, stream_id: int, tunnel: str, *, window: int) -> None:
        super().__init__(stream_id, tunnel, window=window, peer="application")
        self._host = host
        self._pending = b""  # the rest of a payload a short receive_some did not take
        self._frame_length = 0  # the whole payload _pending came from
        self._eof_received = False
        self._eof_sent = False
        self._sending = False
        self._receiving = False

    # -- errors ----------------------------------------------------------------------------
    def _check_send(self) -> None:
        if self.app_closed or self._eof_sent:
            raise trio.ClosedResourceError("the stream is closed for sending")
        self._check_reset()

    def _check_reset(self) -> None:
        if self.reset_code is not None:
            error = StreamReset(self.reset_code, self.reset_reason or "", remote=self.reset_remote)
            raise trio.BrokenResourceError(str(error)) from error

    def on_reset(self) -> None:
        """The stream was reset: wake every task waiting on it, and leave the session."""
        self.inbound_send.close()
        self.credit.unpark_all()
        if not self.done.is_set():
            self._host.forget_stream(self)
            self.done.set()

    # -- sending ---------------------------------------------------------------------------
    async def _wait_credit(self) -> int:
        conn = self._host.conn
        while (sendable := conn.sendable(self.id)) <= 0:
            self._check_send()
            await self.credit.park()
        return sendable

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            self._check_send()
            view = memoryview(data).cast("B")
            host = self._host
            if not view:
                await trio.lowlevel.checkpoint()
                return
            while view:
                sendable = await self._wait_credit()
                await host.writer.reserve(self.slot)
                try:
                    self._check_send()
                except BaseException:
                    host.writer.unreserve(self.slot)
                    raise
                chunk = bytes(view[: min(sendable, CHUNK_BYTES)])  # the caller may reuse data
                header = host.conn.send_data(self.id, chunk)
                assert header is not None
                host.writer.submit(self.slot, header, chunk)
                self.bytes_out += len(chunk)
                self.last_active = trio.current_time()
                view = view[len(chunk) :]
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            self._check_send()
            await self._wait_credit()
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._eof_sent or self.app_closed:
            await trio.lowlevel.checkpoint()
            return
        self._check_reset()
        self._sending = True
        try:
            await self._host.writer.reserve(self.slot)
            self._submit_eof()
        finally:
            self._sending = False

    def _submit_eof(self) -> None:
        """Queue the EOF under a reservation already taken."""
        self._eof_sent = True
        frame = self._host.conn.send_eof(self.id)
        if frame is None:
            self._host.writer.unreserve(self.slot)
        else:
            self._host.writer.submit(self.slot, frame)
        self.finish_if_done()

    # -- receiving -------------------------------------------------------------------------
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            if not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an integer or None")
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            if self.app_closed:
                raise trio.ClosedResourceError("the stream is closed")
            self._check_reset()
            if not self._pending and not self._eof_received:
                try:
                    item = await self.inbound_receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    self._check_reset()
                    raise trio.ClosedResourceError("the stream is closed") from None
                if isinstance(item, _EndOfStream):
                    self._eof_received = True
                    self.finish_if_done()
                else:
                    self._pending = bytes(item)
                    self._frame_length = len(item)
            else:
                await trio.lowlevel.checkpoint()
            if self._eof_received and not self._pending:
                return b""
            size = len(self._pending) if max_bytes is None else max_bytes
            data, self._pending = self._pending[:size], self._pending[size:]
            self.bytes_in += len(data)
            if not self._pending:
                # Credit is counted per frame (payload plus FRAME_COST): give it back once
                # the whole frame was taken, however many reads that took.
                grant = self._host.conn.consumed(self.id, self._frame_length)
                if grant is not None:
                    self._host.send_control_frame(grant)
            return data
        finally:
            self._receiving = False

    def on_data_after_close(self) -> bool:
        """Data arrived after ``aclose``: like TCP, answer with a reset."""
        if self.app_closed and self.reset_code is None:
            self._host.reset_stream(self, ResetCode.CANCELLED, "data arrived after close")
            return True
        return False

    # -- closing ---------------------------------------------------------------------------
    def finish_if_done(self) -> None:
        if self._host.conn.state_of(self.id) is None and not self.done.is_set():
            self._host.forget_stream(self)
            self.done.set()

    async def aclose(self) -> None:
        if self.app_closed:
            await trio.lowlevel.checkpoint()
            return
        self.app_closed = True
        host = self._host
        unread = self._pending or self.inbound_receive.statistics().current_buffer_used
        self.inbound_receive.close()  # a task blocked in receive_some gets ClosedResourceError
        if self.reset_code is None and unread and not self._eof_received:
            host.reset_stream(self, ResetCode.CANCELLED, "closed with unread data")
        elif self.reset_code is None and not self._eof_sent:
            try:
                if not host.writer.try_reserve(self.slot):
                    with trio.fail_after(CLOSE_TIMEOUT_SECS):
                        await host.writer.reserve(self.slot)
            except trio.TooSlowError:
                host.reset_stream(self, ResetCode.CANCELLED, "close timed out")
            except BaseException:
                # Cancelled: the EOF cannot go, so the close is a reset; the stream is
                # released all the same, then the cancellation goes on.
                host.reset_stream(self, ResetCode.CANCELLED, "close cancelled")
                raise
            else:
                self._submit_eof()
        self.finish_if_done()
        await trio.lowlevel.checkpoint()


CLOSE_TIMEOUT_SECS = 5.0
