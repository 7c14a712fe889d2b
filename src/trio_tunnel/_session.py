"""One WebSocket session: the I/O shell around the pure :class:`~._protocol.Connection`.

The reader feeds each message to the core and acts on the events it returns; the writer is
the one task that sends; keepalive pings and declares a silent peer dead. The session nursery
owns every stream task of this WebSocket; when the session ends (the WebSocket closes, the
peer breaks the protocol or goes silent past the ping timeout, or the owner closes it) the
nursery is cancelled and every stream's TCP connection is reset. No protocol rule lives here.

The reader never blocks on a stream: DATA goes into the stream's bounded channel with
``send_nowait``, which cannot overflow while the peer respects its credit window (the core
refuses a peer that does not, and the session ends).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from ._errors import RemoteProtocolError, StreamReset
from ._metrics import Metrics
from ._peer import peer_address
from ._protocol import (
    CloseCode,
    Connection,
    ControlReceived,
    CreditGranted,
    DataReceived,
    EndReceived,
    FrameIgnored,
    PingReceived,
    PongReceived,
    ResetCode,
    StreamOpened,
    StreamRefused,
    StreamWasReset,
)
from ._stream import END_OF_STREAM, AppStream, TunnelStream, reset_tcp, run_stream
from ._writer import Writer
from ._ws import ConnectionClosed, WebSocket

log = logging.getLogger("trio_tunnel.session")

Refusal = tuple[ResetCode, str]
SLICE_FRAMES = 256  # frames handled between two yields to the event loop
# Where a stream the peer opened goes: a TCP address to connect to, a refusal, or a callable
# that takes the stream as an application stream.
Target = tuple[str, int] | Refusal | Callable[[AppStream], None]


@attrs.frozen
class SessionSettings:
    window: int
    peer_window: int
    max_streams: int
    connect_timeout: float
    ping_interval: float
    ping_timeout: float
    idle_timeout: float = 0.0  # reset streams idle this long; 0 = never


class SessionOwner(Protocol):
    """What a session asks of the server or client that owns it."""

    def resolve_open(self, session: Session, tunnel: str, epoch: int) -> Target:
        """Where a stream the peer opened goes (see :data:`Target`)."""

    def on_control(self, session: Session, message: dict[str, Any]) -> None:
        """A CONTROL message from the peer (failover state and requests)."""

    def session_ended(self, session: Session) -> None:
        """The session's streams are closed; called before the (bounded) WebSocket close
        handshake, so failover never waits for a peer that does not answer."""


class Session:
    def __init__(
        self,
        ws: WebSocket,
        owner: SessionOwner,
        settings: SessionSettings,
        *,
        is_server: bool,
        name: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.ws = ws
        self.name = name
        self.settings = settings
        self._owner = owner
        self.conn = Connection(
            is_server=is_server,
            window=settings.window,
            peer_window=settings.peer_window,
            max_streams=settings.max_streams,
        )
        self._streams: dict[int, TunnelStream] = {}
        self.metrics = metrics if metrics is not None else Metrics()
        self.writer = Writer(ws, control_limit=4 * settings.max_streams + 1024)
        self._nursery: trio.Nursery | None = None
        self._last_rx = trio.current_time()
        self.closing_reason: str | None = None
        self._close_code = 1000
        self.streams_total = 0

    # -- life cycle ----------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> str:
        """Carry streams until the session ends; returns why it ended."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._keepalive)
                task_status.started()
        finally:
            self._nursery = None
            if self.closing_reason is None:
                self.closing_reason = "closed"
            # Task-driven streams ended with the nursery; application streams have no task.
            for stream in list(self._streams.values()):
                stream.mark_reset(ResetCode.SESSION_LOST, self.closing_reason, remote=False)
            self._owner.session_ended(self)
            await self.ws.aclose(self._close_code, self.closing_reason)
        return self.closing_reason or "closed"

    def close(self, reason: str, code: int = 1000) -> None:
        """End the session: cancel every stream (their TCP connections are reset)."""
        if self.closing_reason is None:
            self.closing_reason = reason
            self._close_code = code
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def closed(self) -> bool:
        return self.closing_reason is not None

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def open_bytes_by_tunnel(self, totals: dict[str, tuple[int, int]]) -> None:
        """Add the bytes out and in of this session's open streams to ``totals``."""
        for stream in self._streams.values():
            out, in_ = totals.get(stream.tunnel, (0, 0))
            totals[stream.tunnel] = (out + stream.bytes_out, in_ + stream.bytes_in)

    # -- streams -------------------------------------------------------------------------
    def open_stream(
        self,
        tunnel: str,
        tcp: trio.SocketStream,
        *,
        epoch: int = 0,
        on_first_data: Callable[[TunnelStream], None] | None = None,
    ) -> TunnelStream | None:
        """Carry a TCP connection accepted here as a new stream to the peer.

        The session takes ownership of ``tcp``; if it cannot (closed, or at its stream limit)
        the connection is reset and ``None`` returned.
        """
        peer = peer_address(tcp)
        opened = (
            None if self._nursery is None or self.closed else self.conn.open_stream(tunnel, epoch)
        )
        if opened is None:
            why = (
                "session closed"
                if self._nursery is None or self.closed
                else f"{self.conn.stream_count} streams open (max_streams_per_session)"
            )
            log.warning("%s: tunnel %s from %s refused: %s", self.name, tunnel, peer, why)
            self.metrics.connection_refused(
                tunnel, "session_closed" if why == "session closed" else "stream_limit"
            )
            reset_tcp(tcp)
            return None
        stream_id, frame = opened
        stream = self._new_stream(stream_id, tunnel, peer)
        stream.on_first_data = on_first_data
        self.send_control_frame(frame)
        log.info("stream %d tunnel %s from %s opened via %s", stream_id, tunnel, peer, self.name)
        assert self._nursery is not None
        self._nursery.start_soon(run_stream, self, stream, tcp, None, self.settings.connect_timeout)
        return stream

    def open_app_stream(self, tunnel: str, *, epoch: int = 0) -> AppStream:
        """A new stream to the peer's ``tunnel`` that the caller drives as a trio
        ``HalfCloseableStream`` (no local TCP socket). Raises ``trio.BrokenResourceError``
        (its cause a :class:`StreamReset`) when the session is closed or at its limit."""
        opened = (
            None if self._nursery is None or self.closed else self.conn.open_stream(tunnel, epoch)
        )
        if opened is None:
            code = ResetCode.REFUSED if self._nursery is None or self.closed else ResetCode.LIMIT
            reason = "session closed" if code is ResetCode.REFUSED else "too many streams"
            error = StreamReset(code, reason, remote=False)
            raise trio.BrokenResourceError(str(error)) from error
        stream_id, frame = opened
        stream = self._new_stream(stream_id, tunnel, "application", app=True)
        self.send_control_frame(frame)
        assert isinstance(stream, AppStream)
        return stream

    def _new_stream(
        self, stream_id: int, tunnel: str, peer: str, *, app: bool = False
    ) -> TunnelStream:
        stream = (
            AppStream(self, stream_id, tunnel, window=self.settings.window)
            if app
            else TunnelStream(stream_id, tunnel, window=self.settings.window, peer=peer)
        )
        stream.flow = self.conn.flow_of(stream_id)
        self._streams[stream_id] = stream
        self.streams_total += 1
        self.metrics.stream_opened(tunnel)
        return stream

    def forget_stream(self, stream: TunnelStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
            # A stream that ended cleanly on this side may still be open in the core (the
            # peer's EOF never came because the task was cancelled): end it there too.
            if stream.reset_code is not None:
                frame = self.conn.reset_stream(
                    stream.id, stream.reset_code, stream.reset_reason or ""
                )
                if frame is not None and not self.closed:
                    self.send_control_frame(frame)
            self.metrics.stream_closed(
                stream.tunnel, stream.bytes_out, stream.bytes_in, stream.reset_code
            )

    def reset_stream(self, stream: TunnelStream, code: ResetCode, reason: str) -> None:
        """Reset ``stream`` from this side: tell the peer, then cancel the stream's task."""
        if not stream.mark_reset(code, reason, remote=False):
            return
        frame = self.conn.reset_stream(stream.id, code, reason)
        if frame is not None:
            self.send_control_frame(frame)

    async def reset_all_streams(
        self, reason: str, code: ResetCode = ResetCode.FAILOVER, timeout: float = 5.0
    ) -> int:
        """Reset every stream of this session and wait (bounded) until all have closed."""
        streams = list(self._streams.values())
        for stream in streams:
            self.reset_stream(stream, code, reason)
        with trio.move_on_after(timeout):
            for stream in streams:
                await stream.done.wait()
        return len(streams)

    async def wait_streams_done(self) -> None:
        """Wait until every stream of this session has ended, those opened meanwhile too
        (a drain; callers bound this with a deadline)."""
        while pending := [s for s in self._streams.values() if not s.done.is_set()]:
            for stream in pending:
                await stream.done.wait()
        await trio.lowlevel.checkpoint()

    def start_reset_all_streams(self, reason: str, code: ResetCode = ResetCode.FAILOVER) -> None:
        """Reset every stream of this session in the background (from synchronous code)."""
        if self._nursery is not None:
            self._nursery.start_soon(self.reset_all_streams, reason, code)

    def send_control_frame(self, frame: bytes) -> None:
        try:
            self.writer.send_control(frame)
        except RemoteProtocolError as exc:
            self._protocol_failure(exc)

    def send_control(self, message: dict[str, Any]) -> None:
        """Send a CONTROL message (failover state) to the peer."""
        self.send_control_frame(self.conn.control(message))

    # -- tasks ---------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        try:
            await self.writer.run()
        except ConnectionClosed as exc:
            self.close(f"WebSocket closed ({exc})")

    async def _read_loop(self) -> None:
        conn = self.conn
        while True:
            try:
                message = await self.ws.receive()
            except ConnectionClosed as exc:
                self.close(f"WebSocket closed ({exc})")
                return
            except RemoteProtocolError as exc:
                self._protocol_failure(exc)
                return
            self._last_rx = now = trio.current_time()
            try:
                frames = conn.decode(message)
                # A message is fed in slices with a yield between them, so one session's big
                # batch never keeps the event loop from the other client's session.
                for start in range(0, len(frames), SLICE_FRAMES):
                    if start:
                        await trio.lowlevel.checkpoint()
                    try:
                        events = conn.receive_frames(
                            frames[start : start + SLICE_FRAMES], now, len(message)
                        )
                    finally:
                        for frame in conn.take_frames():
                            self.send_control_frame(frame)
                    self._handle(events)
            except RemoteProtocolError as exc:
                self._protocol_failure(exc)
                return

    def _handle(self, events: list[Any]) -> None:
        # Events of one message come together: a stream this loop refused or reset may still
        # have events behind that one, so every lookup tolerates a stream that is gone.
        streams = self._streams
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    if stream.app_closed:  # like TCP: data after close is answered by a reset
                        self.reset_stream(stream, ResetCode.CANCELLED, "data arrived after close")
                    else:
                        stream.last_active = self._last_rx
                        stream.inbound_send.send_nowait(event.payload)
            elif kind is CreditGranted:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.credit.unpark_all()
            elif kind is EndReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    if not stream.app_closed:
                        stream.inbound_send.send_nowait(END_OF_STREAM)
                    if isinstance(stream, AppStream):
                        stream.finish_if_done()
            elif kind is StreamWasReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    reason = f"reset by peer: {event.reason}" if event.remote else event.reason
                    stream.mark_reset(event.code, reason, remote=event.remote)
            elif kind is StreamOpened:
                self._on_open(event)
            elif kind is ControlReceived:
                self._owner.on_control(self, event.message)
            elif kind is StreamRefused:
                log.warning(
                    "%s: stream %d tunnel %r refused: %s",
                    self.name,
                    event.stream_id,
                    event.tunnel,
                    event.reason,
                )
            elif kind is FrameIgnored:
                # Frames can trail a stream we already reset; a few are normal, so log once.
                log.info(
                    "%s: ignoring %s for closed or unknown stream %d (logged once per session)",
                    self.name,
                    event.frame_type,
                    event.stream_id,
                )
            elif kind is PingReceived or kind is PongReceived:
                pass

    def _protocol_failure(self, exc: RemoteProtocolError) -> None:
        if not self.closed:
            log.warning("%s: protocol error from peer: %s", self.name, exc)
        self.close(f"protocol error: {exc}", exc.close_code)

    async def _keepalive(self) -> None:
        interval = self.settings.ping_interval
        timeout = self.settings.ping_timeout
        reorder = self.conn.reorder_secs
        idle = self.settings.idle_timeout
        nonce = 0
        next_ping = trio.current_time()
        while True:
            now = trio.current_time()
            silent = now - self._last_rx
            if silent >= timeout:
                log.warning("%s: peer silent for %.1fs: declared dead", self.name, silent)
                self.close(
                    f"no data or pong for {silent:.1f}s (ping timeout)", CloseCode.GOING_AWAY
                )
                return
            if now >= next_ping:
                nonce += 1
                self.send_control_frame(self.conn.ping(nonce))
                next_ping = now + interval
            expired = self.conn.expire(now)
            if expired:
                for frame in self.conn.take_frames():
                    self.send_control_frame(frame)
                self._handle(expired)
            wake = min(next_ping, self._last_rx + timeout, now + reorder)
            if idle:
                wake = min(wake, self._reset_idle_streams(now, idle))
            await trio.sleep_until(wake)

    def _reset_idle_streams(self, now: float, idle: float) -> float:
        """Reset the streams that carried nothing for ``idle`` seconds; returns when the next
        one could fall idle."""
        next_check = now + idle
        for stream in list(self._streams.values()):
            since = stream.last_active
            if now - since >= idle:
                self.reset_stream(
                    stream, ResetCode.IDLE, f"idle for {now - since:.0f}s (idle_timeout_secs)"
                )
            else:
                next_check = min(next_check, since + idle)
        return next_check

    def _on_open(self, event: StreamOpened) -> None:
        stream_id, tunnel = event.stream_id, event.tunnel
        target = self._owner.resolve_open(self, tunnel, event.epoch)
        if not callable(target) and isinstance(target[0], ResetCode):
            code, reason = target
            log.warning("%s: stream %d tunnel %r refused: %s", self.name, stream_id, tunnel, reason)
            frame = self.conn.refuse(stream_id, code, str(reason))
            if frame is not None:
                self.send_control_frame(frame)
            return
        if callable(target):  # the owner takes the stream itself, as an application stream
            stream = self._new_stream(stream_id, tunnel, "application", app=True)
            assert isinstance(stream, AppStream)
            target(stream)
            return
        host, port = target
        assert self._nursery is not None
        stream = self._new_stream(stream_id, tunnel, f"{host}:{port}")
        log.info(
            "stream %d tunnel %s opened by %s: connecting to %s:%d",
            stream_id,
            tunnel,
            self.name,
            host,
            port,
        )
        self._nursery.start_soon(
            run_stream, self, stream, None, (host, int(port)), self.settings.connect_timeout
        )
