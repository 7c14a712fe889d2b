"""The pure multiplexer core (:class:`trio_tunnel._protocol.Connection`) under Hypothesis.

No trio, no sockets, no clock: two cores exchange frames over a modelled link, time is a
number the test advances. Thousands of examples run in seconds.

* ``CorePair`` (a ``RuleBasedStateMachine``): random opens from both sides (some to an
  unknown tunnel, some past the stream limit), data of random sizes under credit, half-closes,
  resets from either side, consumption in random amounts, delivery in random batches, and a
  link that may reorder or duplicate a stream's DATA/EOF frames (the reorder stage must put
  them back in sequence and drop duplicates) or lose one (the gap must end in a reset on both
  ends, after the reorder time bound). Every direction of every stream ends complete and
  byte-identical, or reset; never truncated with an EOF, never reordered or duplicated; the
  receiver never holds more than its window.
* h11's rule: any frame, legal or not, fed to a copy of either core in any stream state,
  either yields events or raises ``RemoteProtocolError``; so does any byte string. Which
  (stream state, frame type) pairs were reached is recorded, and the last test checks that
  every pair was.

``TRIO_TUNNEL_FUZZ_EXAMPLES`` raises the example budget (``nox -s fuzz``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trio_tunnel._errors import LocalProtocolError, RemoteProtocolError
from trio_tunnel._protocol import (
    FRAME_COST,
    TRANSITIONS,
    Connection,
    ControlReceived,
    CreditGranted,
    DataReceived,
    EndReceived,
    FrameIgnored,
    FrameType,
    Input,
    PingReceived,
    PongReceived,
    ResetCode,
    StreamOpened,
    StreamRefused,
    StreamState,
    StreamWasReset,
    decode_frames,
    encode_frame,
    encode_header,
    encode_json,
)
from trio_tunnel._protocol._connection import REORDER_SECS

_FUZZ = os.environ.get("TRIO_TUNNEL_FUZZ_EXAMPLES")
EXAMPLES = int(_FUZZ) if _FUZZ else 3000
WINDOW = 2048  # small, so credit runs out often
MAX_STREAMS = 5

# (state before the frame or None for no live stream, frame type) pairs any test reached.
REACHED: set[tuple[StreamState | None, FrameType]] = set()


@dataclass
class Half:
    """One direction of one stream, as the applications at both ends see it."""

    sent: bytearray = field(default_factory=bytearray)
    eof_sent: bool = False
    got: bytearray = field(default_factory=bytearray)
    eof_got: bool = False


@dataclass
class End:
    """One core and what its application holds."""

    name: str
    conn: Connection
    outbox: list[bytes] = field(default_factory=list)  # frames on the way to the other end
    unconsumed: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    reset: set[int] = field(default_factory=set)  # streams this end saw reset or refused
    opened: set[int] = field(default_factory=set)  # streams this end knows (either opener)


def _stream_of(frame: bytes) -> tuple[FrameType, int, int]:
    (parsed,) = decode_frames(frame)
    return parsed.type, parsed.stream_id, parsed.arg


class CorePair(RuleBasedStateMachine):
    KEEP_UNACKED = False  # the resume machine below keeps what was sent

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ends = {
            name: End(
                name,
                Connection(
                    is_server=name == "s",
                    window=WINDOW,
                    peer_window=WINDOW,
                    max_streams=MAX_STREAMS,
                    keep_unacked=self.KEEP_UNACKED,
                ),
            )
            for name in "cs"
        }
        self.halves: dict[tuple[int, str], Half] = {}  # (stream id, sender name)
        self.lossy: set[int] = set()  # streams whose frames the link lost
        self.counter = 0

    def other(self, end: End) -> End:
        return self.ends["s" if end.name == "c" else "c"]

    def half(self, stream_id: int, sender: str) -> Half:
        return self.halves.setdefault((stream_id, sender), Half())

    def live(self, end: End) -> list[int]:
        return sorted(i for i in end.opened if end.conn.state_of(i) is not None)

    def sending(self, end: End, pick: int) -> int | None:
        """One of ``end``'s streams whose sending direction is open, or None."""
        open_ = [
            i
            for i in self.live(end)
            if end.conn.state_of(i) in (StreamState.OPEN, StreamState.REMOTE_EOF)
        ]
        return open_[pick % len(open_)] if open_ else None

    # -- actions ---------------------------------------------------------------------------
    @rule(side=st.sampled_from("cs"), known=st.booleans())
    def open(self, side: str, known: bool) -> None:
        end = self.ends[side]
        opened = end.conn.open_stream("up" if known else "nowhere", epoch=7)
        if opened is None:
            assert end.conn.stream_count >= MAX_STREAMS
            return
        stream_id, frame = opened
        end.opened.add(stream_id)
        end.outbox.append(frame)

    @rule(side=st.sampled_from("cs"), pick=st.integers(0, 9), size=st.integers(1, 3000))
    def send(self, side: str, pick: int, size: int) -> None:
        end = self.ends[side]
        stream_id = self.sending(end, pick)
        if stream_id is None:
            return
        sendable = end.conn.sendable(stream_id)
        if sendable <= 0:
            return
        self.counter += 1
        payload = bytes([(self.counter + k) % 251 for k in range(min(size, sendable))])
        header = end.conn.send_data(stream_id, payload)
        assert header is not None
        end.outbox.append(header + payload)
        self.half(stream_id, side).sent += payload

    @rule(side=st.sampled_from("cs"), pick=st.integers(0, 9))
    def eof(self, side: str, pick: int) -> None:
        end = self.ends[side]
        stream_id = self.sending(end, pick)
        if stream_id is None:
            return
        frame = end.conn.send_eof(stream_id)
        assert frame is not None
        end.outbox.append(frame)
        self.half(stream_id, side).eof_sent = True

    @rule(side=st.sampled_from("cs"), pick=st.integers(0, 9), code=st.sampled_from(ResetCode))
    def reset(self, side: str, pick: int, code: ResetCode) -> None:
        end = self.ends[side]
        live = self.live(end)
        if not live:
            return
        stream_id = live[pick % len(live)]
        frame = end.conn.reset_stream(stream_id, code, "test reset")
        assert frame is not None
        assert end.conn.state_of(stream_id) is None
        end.reset.add(stream_id)
        end.outbox.append(frame)

    @rule(side=st.sampled_from("cs"), pick=st.integers(0, 9), amount=st.integers(1, 4000))
    def consume(self, side: str, pick: int, amount: int) -> None:
        end = self.ends[side]
        waiting = sorted(i for i, n in end.unconsumed.items() if n)
        if not waiting:
            return
        stream_id = waiting[pick % len(waiting)]
        length = min(amount, end.unconsumed[stream_id])
        end.unconsumed[stream_id] -= length
        grant = end.conn.consumed(stream_id, length)
        if grant is not None:
            end.outbox.append(grant)

    @rule(side=st.sampled_from("cs"), nonce=st.integers(0, 2**64 - 1))
    def ping(self, side: str, nonce: int) -> None:
        end = self.ends[side]
        end.outbox.append(end.conn.ping(nonce))

    @rule(side=st.sampled_from("cs"))
    def control(self, side: str) -> None:
        end = self.ends[side]
        end.outbox.append(end.conn.control({"type": "state", "epoch": 1}))

    # -- the link --------------------------------------------------------------------------
    @rule(side=st.sampled_from("cs"), count=st.integers(1, 12), batch=st.integers(1, 5))
    def deliver(self, side: str, count: int, batch: int) -> None:
        """Frames from ``side`` reach the other end, ``batch`` frames per message."""
        sender = self.ends[side]
        frames, sender.outbox[:] = sender.outbox[:count], sender.outbox[count:]
        for start in range(0, len(frames), batch):
            self._receive(self.other(sender), sender, frames[start : start + batch])

    @rule(side=st.sampled_from("cs"), first=st.integers(0, 30), second=st.integers(0, 30))
    def reorder(self, side: str, first: int, second: int) -> None:
        """Swap two in-flight DATA/EOF frames of one stream (as a resume's retransmission
        may deliver them): the receiver must deliver them in sequence anyway."""
        outbox = self.ends[side].outbox
        sequenced = [
            (i, _stream_of(f)[1])
            for i, f in enumerate(outbox)
            if _stream_of(f)[0] in (FrameType.DATA, FrameType.EOF)
        ]
        if len(sequenced) < 2:
            return
        i, stream_a = sequenced[first % len(sequenced)]
        j, stream_b = sequenced[second % len(sequenced)]
        if i != j and stream_a == stream_b:
            outbox[i], outbox[j] = outbox[j], outbox[i]

    @rule(side=st.sampled_from("cs"), pick=st.integers(0, 30))
    def duplicate(self, side: str, pick: int) -> None:
        """Send an in-flight DATA/EOF frame twice: the copy must be dropped."""
        outbox = self.ends[side].outbox
        sequenced = [
            i for i, f in enumerate(outbox) if _stream_of(f)[0] in (FrameType.DATA, FrameType.EOF)
        ]
        if sequenced:
            index = sequenced[pick % len(sequenced)]
            outbox.insert(index + 1, outbox[index])

    @rule(side=st.sampled_from("cs"), pick=st.integers(0, 30))
    def lose(self, side: str, pick: int) -> None:
        """Lose an in-flight DATA frame: the stream must end reset on both ends."""
        outbox = self.ends[side].outbox
        data = [i for i, f in enumerate(outbox) if _stream_of(f)[0] is FrameType.DATA]
        if data:
            index = data[pick % len(data)]
            self.lossy.add(_stream_of(outbox[index])[1])
            del outbox[index]

    @rule(seconds=st.floats(0, 3))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        for end in self.ends.values():
            self._handle(end, self.other(end), end.conn.expire(self.now))

    # -- h11's rule on a copy --------------------------------------------------------------
    @rule(
        side=st.sampled_from("cs"),
        pick=st.integers(0, 12),
        arg=st.sampled_from([0, 1, 2, 5, 2**32, 2**64 - 1]),
        payload=st.sampled_from([b"", b"x", b"up", b"\xff", b"{}", encode_json({"type": "a"})]),
    )
    def inject(self, side: str, pick: int, arg: int, payload: bytes) -> None:
        """Every frame type, on a stream in a state picked evenly among those present (or
        none), fed to a copy of the core."""
        end = self.ends[side]
        by_state: dict[StreamState | None, list[int]] = defaultdict(list)
        for stream_id in [*sorted(end.opened), 0, 99]:
            by_state[end.conn.state_of(stream_id)].append(stream_id)
        states = sorted(by_state, key=str)
        ids = by_state[states[pick % len(states)]]
        stream_id = ids[pick % len(ids)]
        for kind in FrameType:
            target = 0 if kind.value < FrameType.OPEN.value and pick % 3 else stream_id
            REACHED.add((end.conn.state_of(target), kind))
            frame = encode_header(kind, target, arg, len(payload)) + payload
            probe = copy.deepcopy(end.conn)
            try:
                events = probe.receive_message(frame, self.now)
            except RemoteProtocolError as exc:
                assert 1000 <= exc.close_code <= 4999
            else:
                assert isinstance(events, list)

    # -- receiving -------------------------------------------------------------------------
    def _receive(self, end: End, sender: End, frames: list[bytes]) -> None:
        if not frames:
            return
        for frame in frames:
            kind, stream_id, _ = _stream_of(frame)
            REACHED.add((end.conn.state_of(stream_id), kind))
        events = end.conn.receive_message(b"".join(frames), self.now)
        self._handle(end, sender, events)

    def _handle(self, end: End, sender: End, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, StreamOpened):
                assert event.epoch == 7
                end.opened.add(event.stream_id)
                if event.tunnel == "nowhere":
                    frame = end.conn.refuse(
                        event.stream_id, ResetCode.UNKNOWN_TUNNEL, "no such tunnel"
                    )
                    if frame is not None:  # None: a RESET later in the same message ended it
                        end.outbox.append(frame)
                    end.reset.add(event.stream_id)
            elif isinstance(event, DataReceived):
                half = self.half(event.stream_id, sender.name)
                assert not half.eof_got
                half.got += event.payload
                assert half.got == half.sent[: len(half.got)], "reordered, duplicated or corrupted"
                end.unconsumed[event.stream_id] += len(event.payload)
            elif isinstance(event, EndReceived):
                half = self.half(event.stream_id, sender.name)
                assert half.eof_sent and half.got == half.sent, "EOF before every byte"
                half.eof_got = True
            elif isinstance(event, StreamWasReset | StreamRefused):
                end.reset.add(event.stream_id)
                end.unconsumed.pop(event.stream_id, None)
                if isinstance(event, StreamRefused):
                    assert event.code is ResetCode.LIMIT
                    end.opened.add(event.stream_id)
            else:
                assert isinstance(
                    event,
                    CreditGranted | ControlReceived | PingReceived | PongReceived | FrameIgnored,
                )
        end.outbox.extend(end.conn.take_frames())

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def bounded(self) -> None:
        for end in self.ends.values():
            for stream_id in self.live(end):
                flow = end.conn.flow_of(stream_id)
                assert flow is not None
                assert 0 <= flow.recv_buffered <= flow.window
                assert 0 <= flow.send_credit <= flow.peer_window
                assert end.conn.held_of(stream_id) <= end.conn.reorder_frames
            assert end.conn.stream_count <= MAX_STREAMS

    def _sweep(self) -> None:
        """Probe each state present whose pairs are not all reached yet."""
        for side in "cs":
            end = self.ends[side]
            present = {end.conn.state_of(i) for i in end.opened}
            if any((state, kind) not in REACHED for state in present for kind in FrameType):
                for pick in range(4):
                    self.inject(side, pick, pick, b"x")

    def teardown(self) -> None:
        """Quiesce: end every stream, deliver and consume everything, let gaps expire.

        On the way, while the server side's streams stand half-closed by the client, every
        frame type is probed in every state present (``inject``), so the state/frame pairs
        are all reached whatever the random steps did.
        """
        client = self.ends["c"]
        for stream_id in self.live(client):
            if client.conn.state_of(stream_id) in (StreamState.OPEN, StreamState.REMOTE_EOF):
                frame = client.conn.send_eof(stream_id)
                assert frame is not None
                client.outbox.append(frame)
                self.half(stream_id, "c").eof_sent = True
        self._sweep()
        self.deliver("c", len(client.outbox), 3)
        self._sweep()
        for _ in range(50):
            busy = False
            for end in self.ends.values():
                for stream_id in self.live(end):
                    if end.conn.state_of(stream_id) in (StreamState.OPEN, StreamState.REMOTE_EOF):
                        frame = end.conn.send_eof(stream_id)
                        assert frame is not None
                        end.outbox.append(frame)
                        self.half(stream_id, end.name).eof_sent = True
                for stream_id, n in list(end.unconsumed.items()):
                    if n:
                        end.unconsumed[stream_id] = 0
                        grant = end.conn.consumed(stream_id, n)
                        if grant is not None:
                            end.outbox.append(grant)
            for end in self.ends.values():
                if end.outbox:
                    busy = True
                    self.deliver(end.name, len(end.outbox), 4)
            if not busy:
                self.tick(REORDER_SECS + 0.01)
                if not any(end.outbox for end in self.ends.values()):
                    break
        for end in self.ends.values():
            assert not self.live(end), f"{end.name}: streams never ended: {self.live(end)}"
        for (stream_id, sender), half in self.halves.items():
            receiver = self.ends["s" if sender == "c" else "c"]
            reset = stream_id in receiver.reset
            # A stream its opener reset while its OPEN was lost (a resume) never reached the
            # other side at all: no application there saw it.
            unseen = stream_id not in receiver.opened and stream_id in self.ends[sender].reset
            assert half.eof_got or reset or unseen, (
                f"stream {stream_id} from {sender}: neither EOF nor reset"
            )
            if stream_id in self.lossy:
                assert not half.eof_got or half.got == half.sent
            if half.eof_got:
                assert half.got == half.sent


class ResumePair(CorePair):
    """Two cores that keep what they sent: the link is cut at random points (every frame in
    flight lost, both ways), then the sessions resume by exchanging their marks (through
    JSON, as on the wire). Every stream continues with no byte lost, duplicated or reordered,
    including half-closed streams, streams whose OPEN or first data was in flight, and lost
    credit grants; a stream one side reset while the link was down ends reset on both."""

    KEEP_UNACKED = True

    @rule()
    def cut_and_resume(self) -> None:
        for end in self.ends.values():
            end.outbox.clear()  # everything in flight is lost
            end.conn.take_frames()
        marks = {
            name: json.loads(json.dumps(end.conn.resume_marks())) for name, end in self.ends.items()
        }
        for end in self.ends.values():
            peer = self.other(end)
            frames, events = end.conn.resume(marks[peer.name])
            end.outbox.extend(frames)
            self._handle(end, peer, events)

    def teardown(self) -> None:
        super().teardown()
        # A PING each way acknowledges the tails grants never cover (the last EOFs): nothing
        # is kept once the peer has everything.
        for end in self.ends.values():
            end.outbox.append(end.conn.ping(77))
        for _ in range(3):
            for end in self.ends.values():
                self.deliver(end.name, len(end.outbox), 4)
        for end in self.ends.values():
            assert end.conn.lingering_count == 0, end.name


CorePair.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCorePair = CorePair.TestCase
ResumePair.TestCase.settings = settings(
    max_examples=EXAMPLES // 3,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestResumePair = ResumePair.TestCase


# -- h11's rule on whole messages --------------------------------------------------------------
@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(message=st.binary(min_size=0, max_size=200), server=st.booleans())
def test_any_bytes_yield_events_or_a_remote_protocol_error(message: bytes, server: bool) -> None:
    conn = Connection(is_server=server, window=WINDOW, peer_window=WINDOW, max_streams=2)
    try:
        conn.receive_message(message, 0.0)
    except RemoteProtocolError as exc:
        assert 1000 <= exc.close_code <= 4999


def test_every_state_and_frame_type_is_reached() -> None:
    """Run after the machines above: each frame type was fed in every stream state."""
    states: list[StreamState | None] = [
        StreamState.OPEN,
        StreamState.LOCAL_EOF,
        StreamState.REMOTE_EOF,
        None,
    ]
    stream_types = [
        FrameType.OPEN,
        FrameType.DATA,
        FrameType.EOF,
        FrameType.WINDOW,
        FrameType.RESET,
    ]
    wanted = {(s, t) for s in states for t in stream_types}
    wanted |= {(None, t) for t in FrameType if t not in stream_types}
    missing = wanted - REACHED
    if not REACHED:
        pytest.skip("run with the state machine tests")
    assert not missing, sorted((str(s), t.name) for s, t in missing)


# -- examples of the rules, one each -----------------------------------------------------------
def _pair() -> tuple[Connection, Connection]:
    return (
        Connection(is_server=False, window=WINDOW, peer_window=WINDOW, max_streams=MAX_STREAMS),
        Connection(is_server=True, window=WINDOW, peer_window=WINDOW, max_streams=MAX_STREAMS),
    )


def test_transition_table_covers_every_live_state() -> None:
    for state in (StreamState.OPEN, StreamState.LOCAL_EOF, StreamState.REMOTE_EOF):
        assert Input.RECV_RESET in TRANSITIONS[state]
        assert Input.RECV_OPEN not in TRANSITIONS[state]


def test_open_data_eof_round_trip() -> None:
    client, server = _pair()
    opened = client.open_stream("up", 3)
    assert opened is not None
    stream_id, frame = opened
    assert stream_id == 1
    header = client.send_data(1, b"hello")
    assert header is not None
    eof = client.send_eof(1)
    assert eof is not None
    events = server.receive_message(frame + header + b"hello" + eof, 0.0)
    assert events == [StreamOpened(1, "up", 3), DataReceived(1, b"hello"), EndReceived(1)]
    assert server.state_of(1) is StreamState.REMOTE_EOF
    assert client.state_of(1) is StreamState.LOCAL_EOF


def test_out_of_order_frames_are_delivered_in_sequence() -> None:
    client, server = _pair()
    opened = client.open_stream("up", 0)
    assert opened is not None
    frames = [opened[1]]
    for chunk in (b"a", b"b", b"c"):
        header = client.send_data(1, chunk)
        assert header is not None
        frames.append(header + chunk)
    server.receive_message(frames[0], 0.0)
    assert server.receive_message(frames[3] + frames[2], 0.0) == []
    assert server.held_of(1) == 2
    events = server.receive_message(frames[1] + frames[1], 0.0)  # the gap, and a duplicate
    assert events == [DataReceived(1, b"a"), DataReceived(1, b"b"), DataReceived(1, b"c")]
    assert server.held_of(1) == 0 and server.duplicates_dropped == 1


def test_a_gap_not_filled_in_time_resets_the_stream() -> None:
    client, server = _pair()
    opened = client.open_stream("up", 0)
    assert opened is not None
    server.receive_message(opened[1], 0.0)
    client.send_data(1, b"lost")
    header = client.send_data(1, b"held")
    assert header is not None
    assert server.receive_message(header + b"held", 10.0) == []
    assert server.expire(10.0 + REORDER_SECS - 0.01) == []
    (event,) = server.expire(10.0 + REORDER_SECS)
    assert isinstance(event, StreamWasReset) and event.code is ResetCode.PROTOCOL_ERROR
    assert not event.remote
    (reset,) = server.take_frames()
    assert client.receive_message(reset, 0.0) == [
        StreamWasReset(1, ResetCode.PROTOCOL_ERROR, event.reason, True)
    ]


def test_reset_codes_travel_and_unknown_codes_read_as_unspecified() -> None:
    client, server = _pair()
    opened = client.open_stream("up", 0)
    assert opened is not None
    server.receive_message(opened[1], 0.0)
    frame = server.reset_stream(1, ResetCode.CONNECT_TIMEOUT, "slow")
    assert frame is not None
    assert client.receive_message(frame, 0.0) == [
        StreamWasReset(1, ResetCode.CONNECT_TIMEOUT, "slow", True)
    ]
    assert ResetCode.from_wire(999) is ResetCode.UNSPECIFIED


def test_open_past_the_limit_is_refused_by_the_core() -> None:
    client = Connection(is_server=False, window=WINDOW, peer_window=WINDOW, max_streams=10)
    server = Connection(is_server=True, window=WINDOW, peer_window=WINDOW, max_streams=1)
    frames = []
    for _ in range(2):
        opened = client.open_stream("up", 0)
        assert opened is not None
        frames.append(opened[1])
    events = server.receive_message(b"".join(frames), 0.0)
    assert isinstance(events[1], StreamRefused) and events[1].code is ResetCode.LIMIT
    (reset,) = server.take_frames()
    (event,) = client.receive_message(reset, 0.0)
    assert isinstance(event, StreamWasReset) and event.code is ResetCode.LIMIT


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (lambda c: [encode_frame(FrameType.OPEN, 2, 0, "up")], "parity"),
        (
            lambda c: [
                encode_frame(FrameType.OPEN, 5, 0, "up"),
                encode_frame(FrameType.OPEN, 3, 0, "up"),
            ],
            "reuses",
        ),
        (
            lambda c: [
                encode_frame(FrameType.OPEN, 1, 0, "up"),
                encode_frame(FrameType.OPEN, 1, 0, "up"),
            ],
            "OPEN frame",
        ),
        (
            lambda c: [
                encode_frame(FrameType.OPEN, 1, 0, "up"),
                encode_frame(FrameType.EOF, 1, 0),
                encode_frame(FrameType.DATA, 1, 1, b"x"),
            ],
            "DATA frame on a stream in state remote_eof",
        ),
        (
            lambda c: [
                encode_frame(FrameType.OPEN, 1, 0, "up"),
                encode_frame(FrameType.DATA, 1, 0, b"x" * WINDOW),
            ],
            "window",
        ),
        (
            lambda c: [
                encode_frame(FrameType.OPEN, 1, 0, "up"),
                encode_frame(FrameType.WINDOW, 1, 1),
            ],
            "beyond the window",
        ),
        (lambda c: [encode_frame(FrameType.HELLO, 0, 0, b"{}")], "after the handshake"),
    ],
)
def test_rule_violations_raise_with_a_close_code(frames: object, match: str) -> None:
    server = Connection(is_server=True, window=WINDOW, peer_window=WINDOW, max_streams=4)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        server.receive_message(b"".join(frames(None)), 0.0)  # type: ignore[operator]
    assert info.value.close_code == 1002


def test_local_misuse_is_a_local_protocol_error() -> None:
    client, _ = _pair()
    opened = client.open_stream("up", 0)
    assert opened is not None
    client.send_eof(1)
    with pytest.raises(LocalProtocolError):
        client.send_data(1, b"after EOF")
    assert client.send_data(99, b"unknown stream") is None


def test_stream_ids_wrap_before_the_u32_runs_out_and_skip_live_ids() -> None:
    client, server = _pair()
    client._next_id = 2**32 - 3  # the last odd ids
    server._last_peer_id = 0
    ids = []
    frames = []
    for _ in range(3):
        opened = client.open_stream("up", 0)
        assert opened is not None
        ids.append(opened[0])
        frames.append(opened[1])
    assert ids == [2**32 - 3, 2**32 - 1, 1]
    events = server.receive_message(b"".join(frames), 0.0)
    assert [e.stream_id for e in events if isinstance(e, StreamOpened)] == ids
    client.reset_stream(2**32 - 3, ResetCode.CANCELLED, "")
    client._next_id = 1  # 1 is live: the next id skips it
    opened = client.open_stream("up", 0)
    assert opened is not None and opened[0] == 3


def test_unacked_record_is_released_by_grants() -> None:
    client = Connection(
        is_server=False, window=WINDOW, peer_window=WINDOW, max_streams=4, keep_unacked=True
    )
    server = Connection(is_server=True, window=WINDOW, peer_window=WINDOW, max_streams=4)
    opened = client.open_stream("up", 0)
    assert opened is not None
    frames = [opened[1]]
    for _ in range(4):
        header = client.send_data(1, b"y" * 200)
        assert header is not None
        frames.append(header + b"y" * 200)
    assert [s.seq for s in client.unacked_of(1)] == [0, 1, 2, 3]
    server.receive_message(b"".join(frames), 0.0)
    grant = None
    for _ in range(4):
        grant = grant or server.consumed(1, 200)
    assert grant is not None
    client.receive_message(grant, 0.0)
    # The grant covers the frames consumed when it was made (a quarter window at least).
    assert len(client.unacked_of(1)) < 4
    assert all(s.cost == 200 + FRAME_COST for s in client.unacked_of(1))


# -- h11's rule, whole or in pieces ------------------------------------------------------------
@st.composite
def _exchange(draw: st.DrawFn) -> list[bytes]:
    """The frames one honest client core sends: opens, data, EOFs, resets, pings."""
    client = Connection(is_server=False, window=WINDOW, peer_window=WINDOW, max_streams=50)
    frames: list[bytes] = []
    live: list[int] = []
    for op in draw(st.lists(st.sampled_from("oodderp"), max_size=30)):
        if op == "o" or not live:
            opened = client.open_stream("up", 1)
            assert opened is not None
            live.append(opened[0])
            frames.append(opened[1])
            continue
        stream_id = live[draw(st.integers(0, len(live) - 1))]
        if op == "d" and client.sendable(stream_id) > 0:
            payload = draw(st.binary(min_size=1, max_size=min(300, client.sendable(stream_id))))
            header = client.send_data(stream_id, payload)
            assert header is not None
            frames.append(header + payload)
        elif op == "e":
            frames.append(client.send_eof(stream_id) or b"")
            live.remove(stream_id)
        elif op == "r":
            frames.append(client.reset_stream(stream_id, ResetCode.CANCELLED, "r") or b"")
            live.remove(stream_id)
        elif op == "p":
            frames.append(client.ping(draw(st.integers(0, 2**64 - 1))))
    return [f for f in frames if f]


def _events_as_bytes(events: Sequence[object]) -> list[object]:
    return [
        DataReceived(e.stream_id, bytes(e.payload)) if isinstance(e, DataReceived) else e
        for e in events
    ]


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(frames=_exchange(), cuts=st.sets(st.integers(1, 40)))
def test_fed_whole_or_in_pieces_the_events_are_the_same(
    frames: list[bytes], cuts: set[int]
) -> None:
    """A message boundary is only a batching choice: any split at frame boundaries gives the
    same events in the same order, and the same frames to send back."""
    if not frames:
        return
    whole = Connection(is_server=True, window=WINDOW, peer_window=WINDOW, max_streams=50)
    expected = _events_as_bytes(whole.receive_message(b"".join(frames), 0.0))
    pieces = Connection(is_server=True, window=WINDOW, peer_window=WINDOW, max_streams=50)
    got: list[object] = []
    bounds = [0, *sorted(c for c in cuts if c < len(frames)), len(frames)]
    for start, end in itertools.pairwise(bounds):
        got += _events_as_bytes(pieces.receive_message(b"".join(frames[start:end]), 0.0))
    assert got == expected
    assert pieces.take_frames() == whole.take_frames()


@pytest.mark.parametrize(
    "marks",
    [
        {},
        {"last_peer_id": "1", "streams": []},
        {"last_peer_id": 0, "streams": {}},
        {"last_peer_id": 0, "streams": [[1, 2]]},
        {"last_peer_id": 0, "streams": [[1, -2, 3]]},
        {"last_peer_id": 0, "streams": [[1, 2, True]]},
    ],
)
def test_malformed_resume_marks_are_a_remote_protocol_error(marks: dict[str, object]) -> None:
    client, _ = _pair()
    with pytest.raises(RemoteProtocolError, match="malformed resume marks"):
        client.resume(marks)
