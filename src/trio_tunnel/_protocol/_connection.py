"""The multiplexer as a pure state machine: messages in, events out; actions in, frames out.

One :class:`Connection` per WebSocket session. It does no I/O, knows no trio and reads no
clock (time is passed in). Every protocol rule lives here: stream-id parity and limits, which
frame is legal in which stream state (:mod:`._state`), sequence numbers, credit windows, the
reorder stage and the record of data sent but not yet acknowledged.

Inbound, :meth:`Connection.receive_message` turns one WebSocket message into events, and
queues the control frames the rules answer with (PONG, a RESET for a refused OPEN) for
:meth:`Connection.take_frames`. Outbound, each action returns the frame to send, or ``None``
when the stream is already done (a shell may race a reset it has not seen yet). A stream's
DATA and EOF frames must reach the wire in the order they were made; the other frames may go
ahead of them.

Any input not allowed raises :class:`RemoteProtocolError` carrying the WebSocket close code to
answer with; nothing else escapes :meth:`receive_message` (Hypothesis holds us to that).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .._errors import LocalProtocolError, RemoteProtocolError
from ._codes import CloseCode, ResetCode
from ._events import (
    ControlReceived,
    CreditGranted,
    DataReceived,
    EndReceived,
    Event,
    FrameIgnored,
    PingReceived,
    PongReceived,
    StreamOpened,
    StreamRefused,
    StreamWasReset,
)
from ._flow import FRAME_COST, StreamFlow
from ._frames import MAX_STREAM_ID, Frame, FrameType, decode_frames, encode_frame, encode_header
from ._handshake import decode_json, encode_json
from ._state import DONE, Input, StreamState, transition

MAX_REASON_CHARS = 200
REORDER_FRAMES = 64  # frames one stream may hold ahead of a gap
REORDER_SECS = 2.0  # how long a gap may stay open before the stream is reset
# The most frames one message may carry (our writer sends at most WRITER_FRAMES): past it the
# peer is flooding, and the session is closed with 1008.
MAX_FRAMES_PER_MESSAGE = 4096
# Stream ids increase, and wrap to the lowest ids before the u32 runs out: an OPEN may go
# back to a low id only from the top of the range.
_WRAP_WINDOW = 2**24
_REPORTED_IGNORES = frozenset({FrameType.DATA, FrameType.EOF})


class Sent(NamedTuple):
    """A frame kept until the peer acknowledges it (for retransmission after a resume)."""

    seq: int
    payload: bytes | memoryview | None  # None: the EOF
    cost: int
    kept_at: int = 0  # the connection's count of kept frames when this one was sent


class _Stream:
    __slots__ = (
        "acked",
        "credit_total",
        "epoch",
        "flow",
        "gap_since",
        "granted_total",
        "held",
        "held_cost",
        "id",
        "local",
        "state",
        "tunnel",
        "unacked",
    )

    def __init__(self, stream_id: int, tunnel: str, flow: StreamFlow, *, local: bool) -> None:
        self.id = stream_id
        self.tunnel = tunnel
        self.flow = flow
        self.local = local
        self.state = StreamState.OPEN
        self.held: dict[int, bytes | None] = {}  # reorder stage: seq -> payload (None: EOF)
        self.held_cost = 0
        self.gap_since: float | None = None
        self.unacked: deque[Sent] = deque()
        self.acked = 0  # credit returned by the peer not yet matched to a kept frame
        self.epoch = 0  # of the OPEN (a local stream's OPEN may have to be sent again)
        # Credit this side granted the peer in all (the initial window included), and the
        # credit the peer granted this side: a resume recovers grants lost on the way.
        self.granted_total = flow.window
        self.credit_total = flow.peer_window


class Connection:
    """The tunnel protocol of one WebSocket, from one side."""

    def __init__(
        self,
        *,
        is_server: bool,
        window: int,
        peer_window: int,
        max_streams: int,
        keep_unacked: bool = False,
        reorder_frames: int = REORDER_FRAMES,
        reorder_secs: float = REORDER_SECS,
        max_frames_per_message: int = MAX_FRAMES_PER_MESSAGE,
    ) -> None:
        self.is_server = is_server
        self.window = window
        self.peer_window = peer_window
        self.max_streams = max_streams
        self.keep_unacked = keep_unacked
        self.reorder_frames = reorder_frames
        self.reorder_secs = reorder_secs
        self.max_frames_per_message = max_frames_per_message
        self._first_id = 2 if is_server else 1
        self._next_id = self._first_id
        self._peer_parity = 1 if is_server else 0
        self._streams: dict[int, _Stream] = {}
        self._gaps: set[int] = set()
        # Resume (keep_unacked): streams done here whose last frames the peer has not
        # acknowledged yet, the count of frames kept, and that count at each PING sent.
        self._lingering: dict[int, _Stream] = {}
        self._kept = 0
        self._pings: dict[int, int] = {}
        self._frames: list[bytes] = []
        self.ignored_frames = 0  # frames for streams that are done (normal, a few trail)
        self._reported_ignore = False
        self._last_peer_id = 0
        self.duplicates_dropped = 0

    # -- inspection ----------------------------------------------------------------------
    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def state_of(self, stream_id: int) -> StreamState | None:
        """The stream's state, or ``None`` once it is done (closed or reset) or unknown."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.state

    def flow_of(self, stream_id: int) -> StreamFlow | None:
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.flow

    def held_of(self, stream_id: int) -> int:
        """Frames the reorder stage holds for the stream."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else len(stream.held)

    def unacked_of(self, stream_id: int) -> tuple[Sent, ...]:
        """What was sent on the stream and not yet acknowledged by a credit grant."""
        stream = self._streams.get(stream_id)
        return () if stream is None else tuple(stream.unacked)

    def take_frames(self) -> list[bytes]:
        """The control frames the core queued while receiving (PONG, RESET); send them."""
        frames, self._frames = self._frames, []
        return frames

    # -- inbound -------------------------------------------------------------------------
    def receive_message(self, message: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Every event one WebSocket message causes, in order."""
        return self.receive_frames(self.decode(message), now, len(message))

    def decode(self, message: bytes | bytearray | memoryview) -> list[Frame]:
        """The frames of one message, at most ``max_frames_per_message`` of them."""
        return decode_frames(message, self.max_frames_per_message)

    def receive_frames(self, frames: list[Frame], now: float, message_size: int) -> list[Event]:
        """The events of some frames of one message of ``message_size`` bytes, in order.

        A shell may feed a message's frames in slices (and let other work run between them);
        the events are the same as for the whole message at once.
        """
        events: list[Event] = []
        # A payload kept as a view pins its whole message: copy the small ones out of a
        # batch, so a slow stream never holds other streams' data (at most 2x its window).
        copy_below = message_size // 2
        for frame in frames:
            kind = frame.type
            if kind is FrameType.DATA:
                self._on_data(frame, now, copy_below, events)
            elif kind is FrameType.WINDOW:
                self._on_window(frame, events)
            elif kind is FrameType.OPEN:
                self._on_open(frame, events)
            elif kind is FrameType.EOF:
                self._on_eof(frame, now, events)
            elif kind is FrameType.RESET:
                self._on_reset(frame, events)
            elif kind is FrameType.PING:
                self._frames.append(encode_frame(FrameType.PONG, 0, frame.arg))
                events.append(PingReceived(frame.arg))
            elif kind is FrameType.PONG:
                if self._pings:
                    self._acknowledge_through(self._pings.pop(frame.arg, 0))
                events.append(PongReceived(frame.arg))
            elif kind is FrameType.CONTROL:
                events.append(ControlReceived(decode_json(frame.payload, "CONTROL message")))
            else:
                raise RemoteProtocolError(
                    f"{kind.name} frame after the handshake", close_code=CloseCode.PROTOCOL_ERROR
                )
        return events

    def _live(self, frame: Frame, events: list[Event]) -> _Stream | None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            # WINDOW and RESET trail a finished stream normally; DATA and EOF only after a
            # reset. Count them all, report the first of the latter.
            self.ignored_frames += 1
            if frame.type in _REPORTED_IGNORES and not self._reported_ignore:
                self._reported_ignore = True
                events.append(FrameIgnored(frame.type.name, frame.stream_id))
        return stream

    def _on_open(self, frame: Frame, events: list[Event]) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 != self._peer_parity:
            raise RemoteProtocolError(
                f"OPEN with stream id {stream_id} of this side's parity",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        existing = self._streams.get(stream_id)
        if existing is not None:
            transition(existing.state, Input.RECV_OPEN)  # never legal: raises
        if stream_id <= self._last_peer_id and not (
            self._last_peer_id > MAX_STREAM_ID - _WRAP_WINDOW and stream_id < _WRAP_WINDOW
        ):
            raise RemoteProtocolError(
                f"OPEN reuses stream id {stream_id} (ids increase until they wrap)",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        self._last_peer_id = stream_id
        tunnel = frame.text()
        if len(self._streams) >= self.max_streams:
            reason = f"too many streams: {len(self._streams)} open (max_streams_per_session)"
            self._frames.append(_reset_frame(stream_id, ResetCode.LIMIT, reason))
            events.append(StreamRefused(stream_id, tunnel, ResetCode.LIMIT, reason))
            return
        self._streams[stream_id] = _Stream(stream_id, tunnel, self._new_flow(), local=False)
        events.append(StreamOpened(stream_id, tunnel, frame.arg))

    def _on_data(self, frame: Frame, now: float, copy_below: int, events: list[Event]) -> None:
        stream = self._live(frame, events)
        if stream is None:
            return
        flow = stream.flow
        seq = frame.arg
        payload = frame.payload
        expected = flow.recv_seq
        if seq == expected:
            stream.state = transition(stream.state, Input.RECV_DATA)
            if stream.held_cost:
                self._check_window(stream, len(payload))
            flow.on_data(seq, len(payload))
            if len(payload) < copy_below:
                payload = bytes(payload)
            events.append(DataReceived(stream.id, payload))
            if stream.held:
                self._deliver_held(stream, now, events)
        elif seq < expected or seq in stream.held:
            self.duplicates_dropped += 1
        else:
            transition(stream.state, Input.RECV_DATA)  # DATA after a delivered EOF raises
            if not payload:
                raise RemoteProtocolError("empty DATA frame", close_code=CloseCode.PROTOCOL_ERROR)
            self._check_window(stream, len(payload))
            self._hold(stream, seq, bytes(payload), len(payload) + FRAME_COST, now, events)

    def _on_eof(self, frame: Frame, now: float, events: list[Event]) -> None:
        stream = self._live(frame, events)
        if stream is None:
            return
        seq = frame.arg
        expected = stream.flow.recv_seq
        if seq < expected or seq in stream.held or (seq == expected and stream.flow.recv_eof):
            self.duplicates_dropped += 1
        elif seq == expected:
            self._deliver_eof(stream, events)
        else:
            transition(stream.state, Input.RECV_EOF)  # a second EOF raises
            if any(held is None for held in stream.held.values()):
                raise RemoteProtocolError("second EOF", close_code=CloseCode.PROTOCOL_ERROR)
            self._hold(stream, seq, None, 0, now, events)

    def _deliver_eof(self, stream: _Stream, events: list[Event]) -> None:
        if stream.held:
            raise RemoteProtocolError(
                f"stream {stream.id}: DATA sequenced after its EOF",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        stream.state = transition(stream.state, Input.RECV_EOF)
        stream.flow.on_eof(stream.flow.recv_seq)
        events.append(EndReceived(stream.id))
        if stream.state in DONE:
            self._drop(stream)

    def _check_window(self, stream: _Stream, length: int) -> None:
        flow = stream.flow
        outstanding = flow.recv_buffered + stream.held_cost + length + FRAME_COST
        if outstanding > flow.window:
            raise RemoteProtocolError(
                f"window violation: {outstanding} bytes outstanding, window {flow.window}"
            )

    def _hold(
        self,
        stream: _Stream,
        seq: int,
        payload: bytes | None,
        cost: int,
        now: float,
        events: list[Event],
    ) -> None:
        """A frame ahead of a gap waits in the reorder stage, within its bound."""
        if len(stream.held) >= self.reorder_frames:
            self._reset_by_core(
                stream,
                f"sequence gap at {stream.flow.recv_seq} not filled within "
                f"{self.reorder_frames} frames",
                events,
            )
            return
        stream.held[seq] = payload
        stream.held_cost += cost
        if stream.gap_since is None:
            stream.gap_since = now
            self._gaps.add(stream.id)

    def _deliver_held(self, stream: _Stream, now: float, events: list[Event]) -> None:
        """The gap closed: deliver what waited behind it, in sequence."""
        held = stream.held
        flow = stream.flow
        while flow.recv_seq in held:
            payload = held.pop(flow.recv_seq)
            if payload is None:
                self._deliver_eof(stream, events)
                return
            stream.held_cost -= len(payload) + FRAME_COST
            stream.state = transition(stream.state, Input.RECV_DATA)
            flow.on_data(flow.recv_seq, len(payload))
            events.append(DataReceived(stream.id, payload))
        if held:
            stream.gap_since = now  # a new gap: its own time bound
        else:
            stream.gap_since = None
            self._gaps.discard(stream.id)

    def expire(self, now: float) -> list[Event]:
        """Reset streams whose sequence gap stayed open past the reorder time bound."""
        events: list[Event] = []
        for stream_id in list(self._gaps):
            stream = self._streams.get(stream_id)
            if stream is None or stream.gap_since is None:
                self._gaps.discard(stream_id)
            elif now - stream.gap_since >= self.reorder_secs:
                self._reset_by_core(
                    stream,
                    f"sequence gap at {stream.flow.recv_seq} not filled within "
                    f"{self.reorder_secs:g}s",
                    events,
                )
        return events

    def _reset_by_core(self, stream: _Stream, reason: str, events: list[Event]) -> None:
        self._drop(stream)
        self._frames.append(_reset_frame(stream.id, ResetCode.PROTOCOL_ERROR, reason))
        events.append(StreamWasReset(stream.id, ResetCode.PROTOCOL_ERROR, reason, False))

    def _on_window(self, frame: Frame, events: list[Event]) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            lingering = self._lingering.get(frame.stream_id)
            if lingering is not None:  # a grant for the last data of a finished stream
                self._acknowledge(lingering, frame.arg)
                self._release_if_acknowledged(lingering)
                return
            self._live(frame, events)  # counts it as ignored
            return
        stream.state = transition(stream.state, Input.RECV_WINDOW)
        stream.flow.on_window(frame.arg)
        stream.credit_total += frame.arg
        if stream.unacked:
            self._acknowledge(stream, frame.arg)
        events.append(CreditGranted(stream.id))

    def _acknowledge(self, stream: _Stream, increment: int) -> None:
        """Credit comes back only for data the peer wrote to TCP: drop what it covers."""
        stream.acked += increment
        unacked = stream.unacked
        # Grants cover data only; an EOF is acknowledged by a PONG or a resume.
        while unacked and unacked[0].payload is not None and unacked[0].cost <= stream.acked:
            stream.acked -= unacked.popleft().cost

    def _acknowledge_through(self, index: int) -> None:
        """A PONG proves the peer took in every frame sent before its PING."""
        for stream in [*self._streams.values(), *self._lingering.values()]:
            unacked = stream.unacked
            while unacked and unacked[0].kept_at <= index:
                unacked.popleft()
            self._release_if_acknowledged(stream)

    def _release_if_acknowledged(self, stream: _Stream) -> None:
        if not stream.unacked and self._lingering.get(stream.id) is stream:
            del self._lingering[stream.id]

    def _on_reset(self, frame: Frame, events: list[Event]) -> None:
        stream = self._live(frame, events)
        if stream is None:
            return
        transition(stream.state, Input.RECV_RESET)
        self._drop(stream)
        events.append(StreamWasReset(stream.id, ResetCode.from_wire(frame.arg), frame.text(), True))

    def _drop(self, stream: _Stream) -> None:
        del self._streams[stream.id]
        self._gaps.discard(stream.id)
        if stream.unacked and stream.state is StreamState.CLOSED:
            self._lingering[stream.id] = stream  # until the peer acknowledges its tail

    def _new_flow(self) -> StreamFlow:
        return StreamFlow(window=self.window, peer_window=self.peer_window)

    # -- outbound actions ----------------------------------------------------------------
    def open_stream(self, tunnel: str, epoch: int) -> tuple[int, bytes] | None:
        """A new stream to the peer: its id and OPEN frame, or ``None`` at the stream limit.

        Ids of this side's parity are handed out in turn and wrap around before the u32 runs
        out, skipping ids still in use, so a long-lived session never runs out of them.
        """
        if len(self._streams) >= self.max_streams:
            return None
        stream_id = self._next_id
        while stream_id in self._streams:
            stream_id = self._advance(stream_id)
        self._next_id = self._advance(stream_id)
        frame = encode_frame(FrameType.OPEN, stream_id, epoch, tunnel)
        stream = self._streams[stream_id] = _Stream(stream_id, tunnel, self._new_flow(), local=True)
        stream.epoch = epoch
        return stream_id, frame

    def _advance(self, stream_id: int) -> int:
        following = stream_id + 2
        return following if following <= MAX_STREAM_ID else self._first_id

    def sendable(self, stream_id: int) -> int:
        """Payload bytes one DATA frame may carry now (0: wait for credit, or done)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.flow.sendable()

    def send_data(self, stream_id: int, payload: bytes | memoryview) -> bytes | None:
        """The header of one DATA frame carrying ``payload`` (sent right after it)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        stream.state = transition(stream.state, Input.SEND_DATA)
        length = len(payload)
        seq = stream.flow.on_send_data(length)
        if self.keep_unacked:
            self._kept += 1
            stream.unacked.append(Sent(seq, payload, length + FRAME_COST, self._kept))
        return encode_header(FrameType.DATA, stream_id, seq, length)

    def send_eof(self, stream_id: int) -> bytes | None:
        """The EOF frame ending our direction of the stream (queue it behind its DATA)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        stream.state = transition(stream.state, Input.SEND_EOF)
        seq = stream.flow.on_send_eof()
        if self.keep_unacked:
            self._kept += 1
            stream.unacked.append(Sent(seq, None, 0, self._kept))
        if stream.state in DONE:
            self._drop(stream)
        return encode_header(FrameType.EOF, stream_id, seq, 0)

    def reset_stream(self, stream_id: int, code: ResetCode, reason: str) -> bytes | None:
        """The RESET frame ending the stream now, or ``None`` if it is already done."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        transition(stream.state, Input.SEND_RESET)
        self._drop(stream)
        return _reset_frame(stream_id, code, reason)

    def refuse(self, stream_id: int, code: ResetCode, reason: str) -> bytes | None:
        """Refuse a stream the peer opened (unknown tunnel, not active, ...)."""
        return self.reset_stream(stream_id, code, reason)

    def consumed(self, stream_id: int, length: int) -> bytes | None:
        """``length`` payload bytes of the stream were written to TCP: maybe a WINDOW frame."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        increment = stream.flow.on_consumed(length)
        if not increment:
            return None
        transition(stream.state, Input.GRANT)
        stream.granted_total += increment
        return encode_header(FrameType.WINDOW, stream_id, increment, 0)

    def ping(self, nonce: int) -> bytes:
        if self.keep_unacked:
            if len(self._pings) >= _PINGS_REMEMBERED:
                del self._pings[next(iter(self._pings))]
            self._pings[nonce] = self._kept
        return encode_frame(FrameType.PING, 0, nonce)

    # -- resume after a lost WebSocket (keep_unacked) ---------------------------------------
    def resume_marks(self) -> dict[str, object]:
        """What this side holds, for the peer's :meth:`resume`: per live stream the next
        sequence number it expects and the credit it granted in all, and the highest
        stream id of the peer's it has seen. JSON-serialisable."""
        streams = [
            [s.id, s.flow.recv_seq + (1 if s.flow.recv_eof else 0), s.granted_total]
            for s in self._streams.values()
        ]
        return {"last_peer_id": self._last_peer_id, "streams": streams}

    def resume(self, marks: dict[str, object]) -> tuple[list[bytes], list[Event]]:
        """Continue on a new WebSocket, given the peer's :meth:`resume_marks`.

        Returns the frames to send first, in order (OPENs the peer never saw, everything it
        did not take in, RESETs it never got) and the events of streams the peer ended
        while the link was down. Control frames queued for the old link are dropped: the
        marks make them unneeded. Raises ``RemoteProtocolError`` for malformed marks.
        """
        peer_last, peer = _parse_marks(marks)
        self._frames.clear()
        self._pings.clear()
        frames: list[bytes] = []
        events: list[Event] = []
        for stream in [*self._streams.values(), *self._lingering.values()]:
            live = self._streams.get(stream.id) is stream
            mark = peer.get(stream.id)
            if mark is None and stream.local and stream.id > peer_last:
                # The peer never saw the OPEN: open it again, then everything after it.
                frames.append(encode_frame(FrameType.OPEN, stream.id, stream.epoch, stream.tunnel))
                frames += [_retransmission(stream.id, sent) for sent in stream.unacked]
            elif mark is None:
                # The peer ended the stream (its RESET, or our last acknowledgement, was lost).
                if live:
                    self._drop(stream)
                    self._lingering.pop(stream.id, None)
                    reason = "ended by the peer while the link was down"
                    events.append(StreamWasReset(stream.id, ResetCode.SESSION_LOST, reason, True))
                else:
                    del self._lingering[stream.id]
            else:
                expected, granted = mark
                missing = granted - stream.credit_total
                if missing > 0 and live:  # grants lost on the way
                    stream.flow.on_window(missing)
                    stream.credit_total += missing
                    events.append(CreditGranted(stream.id))
                unacked = stream.unacked
                while unacked and unacked[0].seq < expected:
                    unacked.popleft()
                frames += [_retransmission(stream.id, sent) for sent in unacked]
        for stream_id in peer:
            if stream_id in self._streams or stream_id in self._lingering:
                continue
            if stream_id % 2 == self._peer_parity and stream_id > self._last_peer_id:
                continue  # its OPEN never arrived: the peer sends it again
            reason = "ended here while the link was down"
            frames.append(_reset_frame(stream_id, ResetCode.SESSION_LOST, reason))
        return frames, events

    @property
    def lingering_count(self) -> int:
        """Streams done here whose last frames are kept until the peer acknowledges them."""
        return len(self._lingering)

    def control(self, message: dict[str, object]) -> bytes:
        """A CONTROL frame (failover state and requests)."""
        return encode_frame(FrameType.CONTROL, 0, 0, encode_json(message))


_PINGS_REMEMBERED = 16


def _retransmission(stream_id: int, sent: Sent) -> bytes:
    if sent.payload is None:
        return encode_header(FrameType.EOF, stream_id, sent.seq, 0)
    return encode_header(FrameType.DATA, stream_id, sent.seq, len(sent.payload)) + bytes(
        sent.payload
    )


def _parse_marks(marks: dict[str, object]) -> tuple[int, dict[int, tuple[int, int]]]:
    """The peer's marks, checked: they come off the network."""
    last = marks.get("last_peer_id")
    rows = marks.get("streams")
    peer: dict[int, tuple[int, int]] = {}
    valid = type(last) is int and isinstance(rows, list)
    for row in rows if isinstance(rows, list) else ():
        if not (
            isinstance(row, list)
            and len(row) == 3
            and all(type(value) is int and value >= 0 for value in row)
        ):
            valid = False
            break
        peer[row[0]] = (row[1], row[2])
    if not valid or not isinstance(last, int):
        raise RemoteProtocolError(
            f"malformed resume marks {str(marks)[:200]}", close_code=CloseCode.PROTOCOL_ERROR
        )
    return last, peer


def _reset_frame(stream_id: int, code: ResetCode, reason: str) -> bytes:
    text = reason[:MAX_REASON_CHARS]
    return encode_frame(FrameType.RESET, stream_id, int(code), text)


__all__ = ["Connection", "LocalProtocolError", "Sent"]
