"""One WebSocket session: the reader, the writer, keepalive, and the nursery of its streams.

The session nursery owns every stream task of this WebSocket; when the session ends (the
WebSocket closes, the peer breaks the protocol or goes silent past the ping timeout, or the
owner closes it) the nursery is cancelled and every stream's TCP connection is reset.

The reader never blocks on a stream: DATA goes into the stream's bounded channel with
``send_nowait``, which cannot overflow while the peer respects its credit window (a peer that
does not is a protocol error, and the session ends).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from ._errors import RemoteProtocolError, SequenceError
from ._metrics import Metrics
from ._protocol import Frame, FrameType, decode_frames, decode_json, encode_frame, encode_json
from ._stream import END_OF_STREAM, TunnelStream, fail, peer_reset, reset_tcp, run_stream
from ._writer import Writer
from ._ws import ConnectionClosed, WebSocket

log = logging.getLogger("trio_tunnel.session")


@attrs.frozen
class SessionSettings:
    window: int
    peer_window: int
    max_streams: int
    connect_timeout: float
    ping_interval: float
    ping_timeout: float


class SessionOwner(Protocol):
    """What a session asks of the server or client that owns it."""

    def resolve_open(self, session: Session, tunnel: str, epoch: int) -> tuple[str, int] | str:
        """Where to connect for a stream the peer opened, or the reason to refuse it."""

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
        self._is_server = is_server
        # Server-opened streams have even ids, client-opened odd ids; ids never repeat.
        self._next_id = 2 if is_server else 1
        self._last_peer_id = 0
        self._streams: dict[int, TunnelStream] = {}
        self.metrics = metrics if metrics is not None else Metrics()
        self.writer = Writer(ws, control_limit=4 * settings.max_streams + 1024)
        self._nursery: trio.Nursery | None = None
        self._last_rx = trio.current_time()
        self.closing_reason: str | None = None
        self._close_code = 1000
        self._ignored_frames = 0
        self._copy_below = 0
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
        peer = _peer_name(tcp)
        if self._nursery is None or self.closed:
            log.warning("%s: tunnel %s from %s refused: session closed", self.name, tunnel, peer)
            reset_tcp(tcp)
            return None
        if len(self._streams) >= self.settings.max_streams:
            log.warning(
                "%s: tunnel %s from %s refused: %d streams open (max_streams_per_session)",
                self.name,
                tunnel,
                peer,
                len(self._streams),
            )
            reset_tcp(tcp)
            return None
        stream_id = self._next_id
        self._next_id += 2
        stream = self._new_stream(stream_id, tunnel, peer)
        stream.on_first_data = on_first_data
        self.send_control_frame(encode_frame(FrameType.OPEN, stream_id, epoch, tunnel))
        log.info("stream %d tunnel %s from %s opened via %s", stream_id, tunnel, peer, self.name)
        self._nursery.start_soon(run_stream, self, stream, tcp, None, self.settings.connect_timeout)
        return stream

    def _new_stream(self, stream_id: int, tunnel: str, peer: str) -> TunnelStream:
        stream = TunnelStream(
            stream_id,
            tunnel,
            window=self.settings.window,
            peer_window=self.settings.peer_window,
            peer=peer,
        )
        self._streams[stream_id] = stream
        self.streams_total += 1
        self.metrics.stream_opened(tunnel)
        return stream

    def forget_stream(self, stream: TunnelStream) -> None:
        if self._streams.pop(stream.id, None) is not None:
            self.metrics.stream_closed(
                stream.tunnel, stream.bytes_out, stream.bytes_in, stream.reset_reason
            )

    async def reset_all_streams(self, reason: str, timeout: float = 5.0) -> int:
        """Reset every stream of this session and wait (bounded) until all have closed."""
        streams = list(self._streams.values())
        for stream in streams:
            fail(self, stream, reason)
        with trio.move_on_after(timeout):
            for stream in streams:
                await stream.done.wait()
        return len(streams)

    def start_reset_all_streams(self, reason: str) -> None:
        """Reset every stream of this session in the background (from synchronous code)."""
        if self._nursery is not None:
            self._nursery.start_soon(self.reset_all_streams, reason)

    def send_control_frame(self, frame: bytes) -> None:
        try:
            self.writer.send_control(frame)
        except RemoteProtocolError as exc:
            self._protocol_failure(exc)

    def send_control(self, message: dict[str, Any]) -> None:
        """Send a CONTROL message (failover state) to the peer."""
        self.send_control_frame(encode_frame(FrameType.CONTROL, 0, 0, encode_json(message)))

    # -- tasks ---------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        try:
            await self.writer.run()
        except ConnectionClosed as exc:
            self.close(f"WebSocket closed ({_close_text(exc)})")

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except ConnectionClosed as exc:
                self.close(f"WebSocket closed ({_close_text(exc)})")
                return
            except RemoteProtocolError as exc:
                self._protocol_failure(exc)
                return
            self._last_rx = trio.current_time()
            # A payload kept as a view pins its whole message: copy the small ones out of a
            # batch, so a slow stream never holds other streams' data (at most 2x its window).
            self._copy_below = len(message) // 2
            try:
                for frame in decode_frames(message):
                    self._dispatch(frame)
            except RemoteProtocolError as exc:
                self._protocol_failure(exc)
                return

    def _protocol_failure(self, exc: RemoteProtocolError) -> None:
        if not self.closed:
            log.warning("%s: protocol error from peer: %s", self.name, exc)
        self.close(f"protocol error: {exc}", exc.close_code)

    async def _keepalive(self) -> None:
        interval = self.settings.ping_interval
        timeout = self.settings.ping_timeout
        nonce = 0
        next_ping = trio.current_time()
        while True:
            now = trio.current_time()
            silent = now - self._last_rx
            if silent >= timeout:
                log.warning("%s: peer silent for %.1fs: declared dead", self.name, silent)
                self.close(f"no data or pong for {silent:.1f}s (ping timeout)", 1001)
                return
            if now >= next_ping:
                nonce += 1
                self.send_control_frame(encode_frame(FrameType.PING, 0, nonce))
                next_ping = now + interval
            await trio.sleep_until(min(next_ping, self._last_rx + timeout))

    # -- dispatch (runs in the reader; never blocks) -------------------------------------
    def _dispatch(self, frame: Frame) -> None:
        kind = frame.type
        if kind is FrameType.DATA:
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                self._ignore(frame)
                return
            if stream.reset_reason is not None:
                return
            try:
                stream.flow.on_data(frame.arg, len(frame.payload))
            except SequenceError as exc:
                fail(self, stream, str(exc))
                return
            payload = frame.payload
            if len(payload) < self._copy_below:
                payload = bytes(payload)
            stream.inbound_send.send_nowait(payload)
        elif kind is FrameType.WINDOW:
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream.flow.on_window(frame.arg)
                stream.credit.unpark_all()
        elif kind is FrameType.OPEN:
            self._on_open(frame)
        elif kind is FrameType.EOF:
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                self._ignore(frame)
                return
            if stream.reset_reason is not None:
                return
            try:
                stream.flow.on_eof(frame.arg)
            except SequenceError as exc:
                fail(self, stream, str(exc))
                return
            stream.inbound_send.send_nowait(END_OF_STREAM)
        elif kind is FrameType.RESET:
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                peer_reset(stream, frame.text())
        elif kind is FrameType.PING:
            self.send_control_frame(encode_frame(FrameType.PONG, 0, frame.arg))
        elif kind is FrameType.PONG:
            pass
        elif kind is FrameType.CONTROL:
            self._owner.on_control(self, decode_json(frame.payload, "CONTROL message"))
        else:
            raise RemoteProtocolError(f"unexpected {kind.name} frame after the handshake")

    def _ignore(self, frame: Frame) -> None:
        # Frames can trail a stream we already reset; a few are normal, so log once.
        self._ignored_frames += 1
        if self._ignored_frames == 1:
            log.info(
                "%s: ignoring %s for closed or unknown stream %d (logged once per session)",
                self.name,
                frame.type.name,
                frame.stream_id,
            )

    def _on_open(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        expected_parity = 1 if self._is_server else 0
        if stream_id % 2 != expected_parity or stream_id <= self._last_peer_id:
            raise RemoteProtocolError(f"OPEN with invalid or reused stream id {stream_id}")
        self._last_peer_id = stream_id
        tunnel = frame.text()
        if len(self._streams) >= self.settings.max_streams:
            self._refuse(stream_id, tunnel, "too many streams (max_streams_per_session)")
            return
        target = self._owner.resolve_open(self, tunnel, frame.arg)
        if isinstance(target, str):
            self._refuse(stream_id, tunnel, target)
            return
        assert self._nursery is not None
        stream = self._new_stream(stream_id, tunnel, f"{target[0]}:{target[1]}")
        log.info(
            "stream %d tunnel %s opened by %s: connecting to %s:%d",
            stream_id,
            tunnel,
            self.name,
            target[0],
            target[1],
        )
        self._nursery.start_soon(
            run_stream, self, stream, None, target, self.settings.connect_timeout
        )

    def _refuse(self, stream_id: int, tunnel: str, reason: str) -> None:
        log.warning("%s: stream %d tunnel %r refused: %s", self.name, stream_id, tunnel, reason)
        self.send_control_frame(encode_frame(FrameType.RESET, stream_id, 1, reason[:200]))


def _peer_name(tcp: trio.SocketStream) -> str:
    try:
        host, port, *_ = tcp.socket.getpeername()
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _close_text(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "no reason"
    return f"code {reason.code}" + (f": {reason.reason}" if reason.reason else "")
