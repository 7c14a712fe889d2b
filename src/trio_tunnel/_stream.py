"""One tunnel stream: its TCP connection, its two pumps, half-close and reset.

A stream task owns one TCP connection for its whole life and runs in its session's nursery:
closing the session cancels exactly its streams. The TCP connection is closed cleanly (FIN)
only when both directions ended with EOF; in every other case it is reset (RST), so a
transfer cut short never looks complete to the application.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ._protocol import FrameType, StreamFlow, encode_frame, encode_header
from ._protocol._flow import FRAME_COST
from ._writer import StreamSlot

if TYPE_CHECKING:
    from ._session import Session

log = logging.getLogger("trio_tunnel.stream")

CHUNK_BYTES = 128 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)


def _arm_reset(tcp: trio.SocketStream) -> None:
    """Should this process die, the kernel resets ``tcp`` instead of closing it cleanly."""
    with contextlib.suppress(OSError):
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


class _EndOfStream:
    """Marker queued behind the last DATA payload of a stream."""


END_OF_STREAM = _EndOfStream()


class TunnelStream:
    """State of one stream, shared by its task and the session's reader."""

    def __init__(
        self,
        stream_id: int,
        tunnel: str,
        *,
        window: int,
        peer_window: int,
        peer: str,
        on_first_data: Callable[[TunnelStream], None] | None = None,
    ) -> None:
        self.id = stream_id
        self.tunnel = tunnel
        self.peer = peer
        self.flow = StreamFlow(window=window, peer_window=peer_window)
        # At most window // FRAME_COST DATA frames fit in the window, plus the EOF marker.
        self.inbound_send, self.inbound_receive = trio.open_memory_channel[
            "memoryview | bytes | _EndOfStream"
        ](window // FRAME_COST + 1)
        self.cancel_scope = trio.CancelScope()
        self.slot = StreamSlot()
        self.credit = trio.lowlevel.ParkingLot()
        self.done = trio.Event()
        self.on_first_data = on_first_data
        self.reset_reason: str | None = None
        self.bytes_out = 0  # TCP -> tunnel
        self.bytes_in = 0  # tunnel -> TCP
        self.opened_at = trio.current_time()

    def __repr__(self) -> str:
        return f"<stream {self.id} tunnel {self.tunnel!r}>"


def reset_tcp(tcp: trio.SocketStream) -> None:
    """Close ``tcp`` with an RST (SO_LINGER 0): the application sees a reset, never a FIN."""
    sock = tcp.socket
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


async def run_stream(
    session: Session,
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
                tcp = await _connect(session, stream, target, connect_timeout)
                if tcp is None:
                    return
            _arm_reset(tcp)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump_tcp_to_tunnel, session, stream, tcp)
                nursery.start_soon(_pump_tunnel_to_tcp, session, stream, tcp)
            clean = stream.reset_reason is None
    except Exception as exc:
        # A bug in one stream must not end the session carrying the others: log it and
        # reset this stream only.
        log.exception("stream %d tunnel %s: internal error", stream.id, stream.tunnel)
        fail(session, stream, f"internal error: {type(exc).__name__}")
    finally:
        if stream.reset_reason is None and not clean:
            stream.reset_reason = session.closing_reason or "cancelled"
        session.forget_stream(stream)
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
    session: Session, stream: TunnelStream, target: tuple[str, int], timeout: float
) -> trio.SocketStream | None:
    host, port = target
    try:
        with trio.fail_after(timeout):
            return await open_tcp(host, port)
    except trio.TooSlowError:
        reason = f"connect to {host}:{port} timed out after {timeout:g}s"
    except OSError as exc:
        reason = f"connect to {host}:{port} failed: {exc.strerror or exc}"
    fail(session, stream, reason)
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


def fail(session: Session, stream: TunnelStream, reason: str) -> None:
    """Reset ``stream`` from this side: tell the peer, then cancel the stream's task."""
    if stream.reset_reason is not None:
        return
    stream.reset_reason = reason
    session.send_control_frame(encode_frame(FrameType.RESET, stream.id, 1, reason[:200]))
    stream.cancel_scope.cancel()


def peer_reset(stream: TunnelStream, reason: str) -> None:
    """The peer reset ``stream``: cancel its task without answering."""
    if stream.reset_reason is not None:
        return
    stream.reset_reason = f"reset by peer: {reason}"
    stream.cancel_scope.cancel()


async def _pump_tcp_to_tunnel(
    session: Session, stream: TunnelStream, tcp: trio.SocketStream
) -> None:
    flow = stream.flow
    writer = session.writer
    try:
        while True:
            while (sendable := flow.sendable()) <= 0:
                await stream.credit.park()
            await writer.reserve(stream.slot)
            try:
                data = await tcp.receive_some(min(sendable, CHUNK_BYTES))
            except BaseException:
                writer.unreserve(stream.slot)
                raise
            if not data:
                seq = flow.on_send_eof()
                writer.submit(stream.slot, encode_header(FrameType.EOF, stream.id, seq, 0))
                return
            if stream.on_first_data is not None:
                hook, stream.on_first_data = stream.on_first_data, None
                hook(stream)
            seq = flow.on_send_data(len(data))
            stream.bytes_out += len(data)
            writer.submit(
                stream.slot, encode_header(FrameType.DATA, stream.id, seq, len(data)), data
            )
    except (trio.BrokenResourceError, OSError) as exc:
        fail(session, stream, f"TCP receive failed: {exc}")


async def _pump_tunnel_to_tcp(
    session: Session, stream: TunnelStream, tcp: trio.SocketStream
) -> None:
    flow = stream.flow
    try:
        async for item in stream.inbound_receive:
            if isinstance(item, _EndOfStream):
                await tcp.send_eof()
                return
            await tcp.send_all(item)
            stream.bytes_in += len(item)
            increment = flow.on_consumed(len(item))
            if increment:
                session.send_control_frame(encode_header(FrameType.WINDOW, stream.id, increment, 0))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        fail(session, stream, f"TCP send failed: {exc}")


def _log_close(stream: TunnelStream) -> None:
    duration = trio.current_time() - stream.opened_at
    if stream.reset_reason is None:
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
            "stream %d tunnel %s peer %s reset: %s (%d bytes out, %d bytes in, %.3fs)",
            stream.id,
            stream.tunnel,
            stream.peer,
            stream.reset_reason,
            stream.bytes_out,
            stream.bytes_in,
            duration,
        )
