"""Pure tests of the sans-IO protocol core: frame codec, credit flow control, JSON messages.

Nothing here does I/O. The Hypothesis tests hold the codec to h11's fuzz rule (any input either
decodes or raises :class:`RemoteProtocolError`, whole or cut anywhere) and drive two
:class:`StreamFlow` endpoints through a simulated in-order pipe.

Set ``TRIO_TUNNEL_FUZZ_EXAMPLES=100000`` for a long fuzz run; the default stays at a few seconds.
"""

from __future__ import annotations

import copy
import json
import os
import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from trio_tunnel._errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SequenceError,
)
from trio_tunnel._protocol import (
    FRAME_COST,
    HEADER_SIZE,
    MAX_NAME_BYTES,
    Frame,
    FrameType,
    StreamFlow,
    decode_frames,
    decode_json,
    encode_frame,
    encode_header,
    encode_json,
)
from trio_tunnel._protocol._frames import (
    MAX_ARG,
    MAX_CONTROL_BYTES,
    MAX_REASON_BYTES,
    MAX_STREAM_ID,
)

# -- Hypothesis settings -----------------------------------------------------------------------
# Applied per test (not loaded globally) so this file never changes other modules' settings.
settings.register_profile("protocol", max_examples=200, deadline=None)
_FUZZ_EXAMPLES = os.environ.get("TRIO_TUNNEL_FUZZ_EXAMPLES")
if _FUZZ_EXAMPLES:
    settings.register_profile("protocol-fuzz", max_examples=int(_FUZZ_EXAMPLES), deadline=None)
PROFILE = settings.get_profile("protocol-fuzz" if _FUZZ_EXAMPLES else "protocol")

# -- Wire format, written out independently of the implementation ------------------------------
# type: u8 | stream_id: u32 | arg: u64 | length: u32 | payload
_WIRE = struct.Struct("!BIQI")
_LENGTH_OFFSET = 1 + 4 + 8

SESSION_TYPES = (
    FrameType.HELLO,
    FrameType.WELCOME,
    FrameType.CONTROL,
    FrameType.PING,
    FrameType.PONG,
)
STREAM_TYPES = tuple(t for t in FrameType if t not in SESSION_TYPES)
EMPTY_PAYLOAD_TYPES = (FrameType.PING, FrameType.PONG, FrameType.EOF, FrameType.WINDOW)

# (type, stream_id, arg, payload): the fields of one frame, payload as bytes.
FrameSpec = tuple[FrameType, int, int, bytes]


def raw_frame(
    type_: int, stream_id: int, arg: int, payload: bytes, length: int | None = None
) -> bytes:
    """A frame built by hand, bypassing every check of the codec under test."""
    declared = len(payload) if length is None else length
    return _WIRE.pack(type_, stream_id, arg, declared) + payload


def encode(spec: FrameSpec) -> bytes:
    return encode_frame(*spec)


def fields(frame: Frame) -> FrameSpec:
    return (frame.type, frame.stream_id, frame.arg, bytes(frame.payload))


def decode_or_reject(message: bytes) -> list[Frame] | None:
    """The fuzz rule: decode, or raise RemoteProtocolError; anything else fails the test.

    A message that decodes must be canonical: encoding its frames gives back the same bytes.
    """
    try:
        frames = decode_frames(message)
    except RemoteProtocolError as exc:
        assert str(exc)
        assert exc.close_code == 1002
        return None
    assert frames
    assert b"".join(encode(fields(frame)) for frame in frames) == message
    return frames


# -- Strategies --------------------------------------------------------------------------------
stream_ids = st.one_of(st.just(1), st.just(MAX_STREAM_ID), st.integers(1, MAX_STREAM_ID))
args = st.one_of(st.just(0), st.just(MAX_ARG), st.integers(0, MAX_ARG))
# At most 4 UTF-8 bytes per character, so these stay within the byte limits.
names = st.text(min_size=1, max_size=MAX_NAME_BYTES // 4).map(lambda s: s.encode("utf-8"))
reasons = st.text(max_size=256).map(lambda s: s.encode("utf-8"))

FRAME_STRATEGIES: dict[FrameType, st.SearchStrategy[FrameSpec]] = {
    FrameType.HELLO: st.tuples(st.just(FrameType.HELLO), st.just(0), args, st.binary(max_size=128)),
    FrameType.WELCOME: st.tuples(
        st.just(FrameType.WELCOME), st.just(0), args, st.binary(max_size=128)
    ),
    FrameType.CONTROL: st.tuples(
        st.just(FrameType.CONTROL), st.just(0), args, st.binary(max_size=128)
    ),
    FrameType.PING: st.tuples(st.just(FrameType.PING), st.just(0), args, st.just(b"")),
    FrameType.PONG: st.tuples(st.just(FrameType.PONG), st.just(0), args, st.just(b"")),
    FrameType.OPEN: st.tuples(st.just(FrameType.OPEN), stream_ids, args, names),
    FrameType.DATA: st.tuples(st.just(FrameType.DATA), stream_ids, args, st.binary(max_size=256)),
    FrameType.EOF: st.tuples(st.just(FrameType.EOF), stream_ids, args, st.just(b"")),
    FrameType.WINDOW: st.tuples(
        st.just(FrameType.WINDOW), stream_ids, st.integers(1, MAX_ARG), st.just(b"")
    ),
    FrameType.RESET: st.tuples(st.just(FrameType.RESET), stream_ids, args, reasons),
}
valid_frames = st.one_of(*FRAME_STRATEGIES.values())
valid_frame_lists = st.lists(valid_frames, min_size=1, max_size=6)


@st.composite
def header_soup(draw: st.DrawFn) -> bytes:
    """Frames with plausible but unchecked fields: reaches every branch of the decoder."""
    type_ = draw(st.one_of(st.sampled_from([int(t) for t in FrameType]), st.integers(0, 255)))
    stream_id = draw(
        st.one_of(st.sampled_from([0, 1, MAX_STREAM_ID]), st.integers(0, MAX_STREAM_ID))
    )
    arg = draw(st.one_of(st.sampled_from([0, 1, MAX_ARG]), st.integers(0, MAX_ARG)))
    payload = draw(
        st.one_of(
            st.binary(max_size=40),
            st.text(max_size=10).map(lambda s: s.encode("utf-8")),
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"x" * 256]),
        )
    )
    delta = draw(st.one_of(st.just(0), st.integers(-3, 3)))
    length = min(max(0, len(payload) + delta), 2**32 - 1)
    return raw_frame(type_, stream_id, arg, payload, length)


# -- Codec: layout and round trips -------------------------------------------------------------
EXAMPLES: dict[FrameType, FrameSpec] = {
    FrameType.HELLO: (FrameType.HELLO, 0, 0, b'{"protocol":"trio-tunnel"}'),
    FrameType.WELCOME: (FrameType.WELCOME, 0, 7, b'{"window":65536}'),
    FrameType.CONTROL: (FrameType.CONTROL, 0, 0, b"{}"),
    FrameType.PING: (FrameType.PING, 0, 0xDEADBEEF, b""),
    FrameType.PONG: (FrameType.PONG, 0, MAX_ARG, b""),
    FrameType.OPEN: (FrameType.OPEN, 1, 3, "ssh-é".encode()),
    FrameType.DATA: (FrameType.DATA, MAX_STREAM_ID, 42, bytes(range(256))),
    FrameType.EOF: (FrameType.EOF, 9, 43, b""),
    FrameType.WINDOW: (FrameType.WINDOW, 9, 1, b""),
    FrameType.RESET: (FrameType.RESET, 9, 2, "peer went away ✗".encode()),
}


def test_every_frame_type_has_an_example_and_a_strategy() -> None:
    assert set(EXAMPLES) == set(FrameType)
    assert set(FRAME_STRATEGIES) == set(FrameType)


def test_header_layout_matches_the_documented_wire_format() -> None:
    assert HEADER_SIZE == 17
    encoded = encode_frame(FrameType.DATA, 0x01020304, 0x05060708090A0B0C, b"xy")
    assert encoded == bytes.fromhex("11 01020304 05060708090a0b0c 00000002") + b"xy"
    assert encode_header(FrameType.DATA, 0x01020304, 0x05060708090A0B0C, 2) == encoded[:17]


@pytest.mark.parametrize("type_", list(FrameType), ids=lambda t: t.name)
def test_round_trip_example(type_: FrameType) -> None:
    spec = EXAMPLES[type_]
    encoded = encode(spec)
    assert encoded == raw_frame(*spec)
    [frame] = decode_frames(encoded)
    assert fields(frame) == spec
    assert type(frame.type) is FrameType


def test_str_payload_is_encoded_as_utf8() -> None:
    assert encode_frame(FrameType.OPEN, 1, 0, "naïve") == encode_frame(
        FrameType.OPEN, 1, 0, "naïve".encode()
    )
    [frame] = decode_frames(encode_frame(FrameType.RESET, 5, 1, "délai dépassé"))
    assert frame.text() == "délai dépassé"


def test_decoded_payloads_are_views_into_the_message() -> None:
    message = encode(EXAMPLES[FrameType.DATA]) + encode(EXAMPLES[FrameType.OPEN])
    data, open_ = decode_frames(message)
    assert isinstance(data.payload, memoryview)
    assert data.payload.obj is message
    assert open_.text() == "ssh-é"


@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
def test_decode_accepts_any_bytes_like(container: Any) -> None:
    message = encode(EXAMPLES[FrameType.PING]) + encode(EXAMPLES[FrameType.DATA])
    frames = decode_frames(container(message))
    assert [fields(f) for f in frames] == [EXAMPLES[FrameType.PING], EXAMPLES[FrameType.DATA]]


@pytest.mark.parametrize(
    ("type_", "stream_id", "payload"),
    [
        (FrameType.OPEN, 1, b"n" * MAX_NAME_BYTES),
        (FrameType.RESET, 1, b"r" * MAX_REASON_BYTES),
        (FrameType.HELLO, 0, b" " * MAX_CONTROL_BYTES),
        (FrameType.WELCOME, 0, b" " * MAX_CONTROL_BYTES),
        (FrameType.CONTROL, 0, b" " * MAX_CONTROL_BYTES),
    ],
    ids=lambda v: v.name if isinstance(v, FrameType) else None,
)
def test_payloads_at_the_limit_round_trip(type_: FrameType, stream_id: int, payload: bytes) -> None:
    [frame] = decode_frames(encode_frame(type_, stream_id, 0, payload))
    assert bytes(frame.payload) == payload


@pytest.mark.parametrize("type_", list(FrameType), ids=lambda t: t.name)
@settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 4))  # ten types: share the budget
@given(data=st.data())
def test_round_trip_each_type(type_: FrameType, data: st.DataObject) -> None:
    spec = data.draw(FRAME_STRATEGIES[type_])
    [frame] = decode_frames(encode(spec))
    assert fields(frame) == spec


@PROFILE
@given(specs=valid_frame_lists)
def test_round_trip_concatenated(specs: list[FrameSpec]) -> None:
    message = b"".join(encode(spec) for spec in specs)
    assert [fields(frame) for frame in decode_frames(message)] == specs


# -- Codec: totality (the fuzz rule) -----------------------------------------------------------
@PROFILE
@given(message=st.binary(max_size=512))
def test_any_bytes_decode_or_raise_remote_protocol_error(message: bytes) -> None:
    decode_or_reject(message)


@PROFILE
@given(parts=st.lists(header_soup(), min_size=1, max_size=5))
def test_plausible_garbage_decodes_or_raises_remote_protocol_error(parts: list[bytes]) -> None:
    decode_or_reject(b"".join(parts))


@PROFILE
@given(specs=valid_frame_lists)
def test_truncation_anywhere(specs: list[FrameSpec]) -> None:
    """Every prefix of a valid message is either a whole number of frames or rejected."""
    encoded = [encode(spec) for spec in specs]
    message = b"".join(encoded)
    boundaries = {0}
    offset = 0
    for count, frame in enumerate(encoded, 1):
        offset += len(frame)
        boundaries.add(offset)
        assert [fields(f) for f in decode_frames(message[:offset])] == specs[:count]
    for cut in range(len(message)):
        if cut in boundaries and cut:
            continue
        with pytest.raises(RemoteProtocolError):
            decode_frames(message[:cut])


@PROFILE
@given(specs=valid_frame_lists, data=st.data())
def test_single_byte_changes(specs: list[FrameSpec], data: st.DataObject) -> None:
    message = bytearray(b"".join(encode(spec) for spec in specs))
    index = data.draw(st.integers(0, len(message) - 1), label="index")
    if data.draw(st.booleans(), label="bit flip"):
        message[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    else:
        message[index] = data.draw(st.integers(0, 255), label="value")
    decode_or_reject(bytes(message))


@PROFILE
@given(specs=valid_frame_lists, data=st.data())
def test_inserted_or_deleted_bytes(specs: list[FrameSpec], data: st.DataObject) -> None:
    message = b"".join(encode(spec) for spec in specs)
    start = data.draw(st.integers(0, len(message)), label="start")
    stop = data.draw(st.integers(start, min(len(message), start + 8)), label="stop")
    insert = data.draw(st.binary(max_size=8), label="insert")
    decode_or_reject(message[:start] + insert + message[stop:])


@PROFILE
@given(
    spec=valid_frames,
    tail=st.lists(valid_frames, max_size=2),
    length=st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1), st.just(2**32 - 1)),
)
def test_bogus_length(spec: FrameSpec, tail: list[FrameSpec], length: int) -> None:
    encoded = bytearray(encode(spec))
    struct.pack_into("!I", encoded, _LENGTH_OFFSET, length)
    message = bytes(encoded) + b"".join(encode(s) for s in tail)
    if HEADER_SIZE + length > len(message):
        with pytest.raises(RemoteProtocolError):
            decode_frames(message)
    elif length == len(spec[3]):
        assert [fields(f) for f in decode_frames(message)] == [spec, *tail]
    else:
        decode_or_reject(message)


# -- Codec: specific rejections ----------------------------------------------------------------
def rejected(message: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_frames(message)
    assert info.value.close_code == 1002


def test_reject_empty_message() -> None:
    rejected(b"", "empty message")


@pytest.mark.parametrize("size", [1, HEADER_SIZE - 1])
def test_reject_truncated_header(size: int) -> None:
    rejected(raw_frame(FrameType.PING, 0, 0, b"")[:size], "truncated frame header")


def test_reject_truncated_header_after_a_good_frame() -> None:
    rejected(encode(EXAMPLES[FrameType.PING]) + b"\x04\x00", "truncated frame header at byte 17")


@pytest.mark.parametrize("raw_type", sorted(set(range(256)) - {int(t) for t in FrameType}))
def test_reject_unknown_type(raw_type: int) -> None:
    rejected(raw_frame(raw_type, 1, 0, b""), f"unknown frame type {raw_type}")


@pytest.mark.parametrize("type_", STREAM_TYPES, ids=lambda t: t.name)
def test_reject_stream_frame_on_stream_zero(type_: FrameType) -> None:
    _, _, arg, payload = EXAMPLES[type_]
    rejected(raw_frame(type_, 0, arg, payload), "on stream 0")
    with pytest.raises(LocalProtocolError, match="on stream 0"):
        encode_frame(type_, 0, arg, payload)


@pytest.mark.parametrize("type_", SESSION_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("stream_id", [1, MAX_STREAM_ID])
def test_reject_session_frame_on_a_stream(type_: FrameType, stream_id: int) -> None:
    _, _, arg, payload = EXAMPLES[type_]
    rejected(raw_frame(type_, stream_id, arg, payload), "expected stream 0")
    with pytest.raises(LocalProtocolError, match="expected stream 0"):
        encode_frame(type_, stream_id, arg, payload)


@pytest.mark.parametrize("type_", EMPTY_PAYLOAD_TYPES, ids=lambda t: t.name)
def test_reject_payload_on_empty_frames(type_: FrameType) -> None:
    _, stream_id, arg, _ = EXAMPLES[type_]
    rejected(raw_frame(type_, stream_id, arg, b"x"), "with a payload")
    with pytest.raises(LocalProtocolError, match="with a payload"):
        encode_frame(type_, stream_id, arg, b"x")


def test_reject_window_with_zero_increment() -> None:
    rejected(raw_frame(FrameType.WINDOW, 1, 0, b""), "zero increment")
    with pytest.raises(LocalProtocolError, match="zero increment"):
        encode_frame(FrameType.WINDOW, 1, 0)


def test_reject_open_without_a_name() -> None:
    rejected(raw_frame(FrameType.OPEN, 1, 0, b""), "without a tunnel name")
    with pytest.raises(LocalProtocolError, match="without a tunnel name"):
        encode_frame(FrameType.OPEN, 1, 0, "")


@pytest.mark.parametrize(
    ("type_", "stream_id", "limit"),
    [
        (FrameType.OPEN, 1, MAX_NAME_BYTES),
        (FrameType.RESET, 1, MAX_REASON_BYTES),
        (FrameType.HELLO, 0, MAX_CONTROL_BYTES),
        (FrameType.WELCOME, 0, MAX_CONTROL_BYTES),
        (FrameType.CONTROL, 0, MAX_CONTROL_BYTES),
    ],
    ids=lambda v: v.name if isinstance(v, FrameType) else None,
)
def test_reject_oversized_payload(type_: FrameType, stream_id: int, limit: int) -> None:
    payload = b"a" * (limit + 1)
    rejected(raw_frame(type_, stream_id, 0, payload), f"exceeds {limit}")
    with pytest.raises(LocalProtocolError, match=f"exceeds {limit}"):
        encode_frame(type_, stream_id, 0, payload)


def test_reject_open_name_over_255_bytes_even_when_few_characters() -> None:
    name = "€" * 86  # 258 bytes in 86 characters
    with pytest.raises(LocalProtocolError):
        encode_frame(FrameType.OPEN, 1, 0, name)
    rejected(raw_frame(FrameType.OPEN, 1, 0, name.encode()), "exceeds 255")


@pytest.mark.parametrize("type_", [FrameType.OPEN, FrameType.RESET], ids=lambda t: t.name)
@pytest.mark.parametrize(
    "text",
    [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"],
    ids=["invalid-byte", "truncated", "surrogate", "overlong", "beyond-unicode"],
)
def test_reject_non_utf8_text(type_: FrameType, text: bytes) -> None:
    rejected(raw_frame(type_, 1, 0, text), "not UTF-8")


def test_reject_non_utf8_text_after_good_frames() -> None:
    good = encode(EXAMPLES[FrameType.DATA])
    rejected(good + raw_frame(FrameType.RESET, 1, 0, b"\xff") + good, "RESET frame text")


@pytest.mark.parametrize("declared", [1, 2, 100, 2**32 - 1])
def test_reject_length_beyond_the_message(declared: int) -> None:
    rejected(raw_frame(FrameType.DATA, 1, 0, b"", declared), "declares")
    good = encode(EXAMPLES[FrameType.PING])
    rejected(good + raw_frame(FrameType.HELLO, 0, 0, b"", declared), "present")


@pytest.mark.parametrize(
    ("stream_id", "arg"),
    [(-1, 0), (MAX_STREAM_ID + 1, 0), (1, -1), (1, MAX_ARG + 1)],
)
def test_encode_rejects_fields_out_of_range(stream_id: int, arg: int) -> None:
    with pytest.raises(LocalProtocolError, match="out of range"):
        encode_frame(FrameType.DATA, stream_id, arg, b"x")


def test_local_and_remote_errors_share_the_protocol_error_base() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)


class _LongBytes(bytes):
    """Claims 4 GiB without allocating it: a DATA payload whose length cannot fit a u32."""

    def __len__(self) -> int:
        return 2**32


def test_encode_rejects_payload_longer_than_the_length_field() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(FrameType.DATA, 1, 0, _LongBytes(b"x"))


# -- StreamFlow: sending -----------------------------------------------------------------------
def test_initial_state() -> None:
    flow = StreamFlow(window=4096, peer_window=1000)
    assert flow.send_credit == 1000
    assert flow.sendable() == 1000 - FRAME_COST
    assert (flow.send_seq, flow.recv_seq, flow.recv_buffered) == (0, 0, 0)
    assert not flow.send_eof
    assert not flow.recv_eof


def test_sendable_is_zero_when_credit_only_covers_the_frame_cost() -> None:
    assert StreamFlow(window=1, peer_window=FRAME_COST).sendable() == 0
    assert StreamFlow(window=1, peer_window=FRAME_COST - 1).sendable() == 0
    assert StreamFlow(window=1, peer_window=FRAME_COST + 1).sendable() == 1


def test_on_send_data_numbers_frames_and_charges_the_frame_cost() -> None:
    flow = StreamFlow(window=4096, peer_window=1000)
    assert flow.on_send_data(100) == 0
    assert flow.send_credit == 1000 - 100 - FRAME_COST
    assert flow.on_send_data(1) == 1
    assert flow.send_credit == 1000 - 101 - 2 * FRAME_COST
    rest = flow.sendable()
    assert flow.on_send_data(rest) == 2
    assert flow.send_credit == 0
    assert flow.sendable() == 0
    assert flow.on_send_eof() == 3
    assert flow.send_eof


@pytest.mark.parametrize("length", [0, 1000 - FRAME_COST + 1])
def test_on_send_data_refuses_empty_or_beyond_credit(length: int) -> None:
    flow = StreamFlow(window=4096, peer_window=1000)
    with pytest.raises(LocalProtocolError):
        flow.on_send_data(length)


def test_on_send_data_refuses_data_after_eof() -> None:
    flow = StreamFlow(window=4096, peer_window=1000)
    flow.on_send_eof()
    with pytest.raises(LocalProtocolError):
        flow.on_send_data(1)


def test_on_window_restores_credit_up_to_the_window() -> None:
    flow = StreamFlow(window=4096, peer_window=1000)
    flow.on_send_data(436)  # costs 500
    flow.on_window(200)
    assert flow.send_credit == 700
    flow.on_window(300)
    assert flow.send_credit == 1000
    assert flow.sendable() == 1000 - FRAME_COST


@pytest.mark.parametrize("excess", [1, 2**63])
def test_on_window_past_the_window_is_a_remote_error(excess: int) -> None:
    flow = StreamFlow(window=4096, peer_window=1000)
    flow.on_send_data(436)  # costs 500
    with pytest.raises(RemoteProtocolError, match="beyond the window"):
        flow.on_window(500 + excess)


def test_on_window_with_full_credit_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError):
        StreamFlow(window=4096, peer_window=1000).on_window(1)


# -- StreamFlow: receiving ---------------------------------------------------------------------
def test_on_data_accounts_payload_and_frame_cost() -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    flow.on_data(0, 10)
    flow.on_data(1, 20)
    assert flow.recv_seq == 2
    assert flow.recv_buffered == 30 + 2 * FRAME_COST


def test_on_data_may_fill_the_window_exactly() -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    flow.on_data(0, 1000 - FRAME_COST)
    assert flow.recv_buffered == 1000


@pytest.mark.parametrize("seq", [1, 2, 2**64 - 1])
def test_on_data_gap_is_a_sequence_error(seq: int) -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    with pytest.raises(SequenceError, match="gap"):
        flow.on_data(seq, 1)


def test_on_data_duplicate_is_a_sequence_error() -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    flow.on_data(0, 1)
    flow.on_data(1, 1)
    for seq in (0, 1):
        with pytest.raises(SequenceError, match="duplicate"):
            flow.on_data(seq, 1)


def test_on_data_window_violation_is_a_remote_error() -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    flow.on_data(0, 500)
    with pytest.raises(RemoteProtocolError, match="window violation"):
        flow.on_data(1, 1000 - 500 - 2 * FRAME_COST + 1)


def test_tiny_frames_are_bounded_by_the_frame_cost() -> None:
    flow = StreamFlow(window=10 * FRAME_COST, peer_window=4096)
    for seq in range(9):
        flow.on_data(seq, 1)
    with pytest.raises(RemoteProtocolError, match="window violation"):
        flow.on_data(9, 1)


def test_on_data_empty_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="empty DATA"):
        StreamFlow(window=1000, peer_window=4096).on_data(0, 0)


@pytest.mark.parametrize("seq", [0, 1, 2])
def test_on_data_after_eof_is_a_remote_error(seq: int) -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    flow.on_data(0, 1)
    flow.on_eof(1)
    with pytest.raises(RemoteProtocolError, match="DATA after EOF"):
        flow.on_data(seq, 1)


def test_on_eof_sequencing() -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    flow.on_data(0, 1)
    flow.on_data(1, 1)
    with pytest.raises(SequenceError, match="duplicate"):
        flow.on_eof(1)
    with pytest.raises(SequenceError, match="gap"):
        flow.on_eof(3)
    assert not flow.recv_eof
    flow.on_eof(2)
    assert flow.recv_eof
    with pytest.raises(RemoteProtocolError, match="second EOF"):
        flow.on_eof(2)


def test_on_eof_on_a_fresh_stream() -> None:
    flow = StreamFlow(window=1000, peer_window=4096)
    flow.on_eof(0)
    assert flow.recv_eof


def test_on_consumed_batches_grants_per_quarter_window() -> None:
    window = 4096
    flow = StreamFlow(window=window, peer_window=4096)
    frame_cost = 100 + FRAME_COST
    frames_per_grant = -(-(window // 4) // frame_cost)  # ceil: 1024 / 164 -> 7
    for seq in range(2 * frames_per_grant):
        flow.on_data(seq, 100)
    assert flow.recv_buffered == 2 * frames_per_grant * frame_cost
    for _ in range(frames_per_grant - 1):
        assert flow.on_consumed(100) == 0
    assert flow.recv_buffered == 2 * frames_per_grant * frame_cost  # nothing granted back yet
    assert flow.on_consumed(100) == frames_per_grant * frame_cost
    assert flow.recv_buffered == frames_per_grant * frame_cost
    for _ in range(frames_per_grant - 1):
        assert flow.on_consumed(100) == 0
    assert flow.on_consumed(100) == frames_per_grant * frame_cost
    assert flow.recv_buffered == 0


@pytest.mark.parametrize(("cost", "grant"), [(199, 0), (200, 200), (201, 201)])
def test_on_consumed_grants_from_exactly_the_threshold(cost: int, grant: int) -> None:
    flow = StreamFlow(window=4 * 200, peer_window=4096)  # threshold 200
    flow.on_data(0, cost - FRAME_COST)
    assert flow.on_consumed(cost - FRAME_COST) == grant
    assert flow.recv_buffered == cost - grant


def test_on_consumed_with_a_tiny_window_grants_every_frame() -> None:
    flow = StreamFlow(window=FRAME_COST + 1, peer_window=4096)
    for seq in range(3):
        flow.on_data(seq, 1)
        assert flow.on_consumed(1) == FRAME_COST + 1
        assert flow.recv_buffered == 0


def test_on_consumed_grants_nothing_after_eof() -> None:
    flow = StreamFlow(window=400, peer_window=4096)
    flow.on_data(0, 300)
    flow.on_eof(1)
    assert flow.on_consumed(300) == 0


# -- StreamFlow: two endpoints through an in-order pipe ----------------------------------------
@dataclass(frozen=True)
class _Data:
    seq: int
    payload: bytes


@dataclass(frozen=True)
class _Window:
    increment: int


@dataclass(frozen=True)
class _Eof:
    seq: int


_PipeItem = _Data | _Window | _Eof
_MAX_TEST_WINDOW = 16384
# Sent bytes are a slice of this non-repeating block (prime period), so any loss, duplication or
# reordering of payload bytes shows in the comparison.
_PERIOD = 65521
_PATTERN = random.Random(0).randbytes(_PERIOD + _MAX_TEST_WINDOW)


class _Endpoint:
    def __init__(self, *, window: int, peer_window: int) -> None:
        self.flow = StreamFlow(window=window, peer_window=peer_window)
        self.outbox: deque[_PipeItem] = deque()  # sent to the peer, in flight, in order
        self.inbox: deque[bytes] = deque()  # received DATA not yet written to "TCP"
        self.sent = bytearray()
        self.received = bytearray()
        self.data_frames_sent = 0
        self.ungranted = 0  # model of the batching: consumed cost not yet granted back


windows = st.one_of(
    st.sampled_from([FRAME_COST + 1, FRAME_COST + 2, 259, 260, 263, 264, 4096, _MAX_TEST_WINDOW]),
    st.integers(FRAME_COST + 1, _MAX_TEST_WINDOW),
)
sides = st.sampled_from([0, 1])


class FlowPair(RuleBasedStateMachine):
    """Two StreamFlow endpoints sending DATA both ways and granting WINDOW credit back."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[_Endpoint] = []

    @initialize(window_a=windows, window_b=windows)
    def connect(self, window_a: int, window_b: int) -> None:
        self.ends = [
            _Endpoint(window=window_a, peer_window=window_b),
            _Endpoint(window=window_b, peer_window=window_a),
        ]

    @rule(side=sides, data=st.data())
    def send_data(self, side: int, data: st.DataObject) -> None:
        sender = self.ends[side]
        flow = sender.flow
        limit = flow.sendable()
        if flow.send_eof or limit == 0:
            return
        size = data.draw(st.one_of(st.integers(1, limit), st.just(limit)), label="size")
        credit = flow.send_credit
        assert size + FRAME_COST <= credit  # following sendable() never exceeds credit
        seq = flow.on_send_data(size)
        assert seq == sender.data_frames_sent
        assert flow.send_credit == credit - size - FRAME_COST
        start = len(sender.sent) % _PERIOD
        payload = _PATTERN[start : start + size]
        sender.data_frames_sent += 1
        sender.sent += payload
        sender.outbox.append(_Data(seq, payload))

    @rule(side=sides, chance=st.integers(0, 3))
    def send_eof(self, side: int, chance: int) -> None:
        sender = self.ends[side]
        if sender.flow.send_eof or chance:  # rarely, so that most runs keep exchanging data
            return
        seq = sender.flow.on_send_eof()
        assert seq == sender.data_frames_sent
        sender.outbox.append(_Eof(seq))

    @rule(side=sides, count=st.integers(1, 4))
    def deliver(self, side: int, count: int) -> None:
        """Deliver up to ``count`` frames in flight from ``side`` to its peer."""
        for _ in range(count):
            self._deliver_one(side)

    def _deliver_one(self, side: int) -> bool:
        sender, receiver = self.ends[side], self.ends[1 - side]
        if not sender.outbox:
            return False
        item = sender.outbox.popleft()
        if isinstance(item, _Data):
            receiver.flow.on_data(item.seq, len(item.payload))
            receiver.inbox.append(item.payload)
            receiver.received += item.payload
        elif isinstance(item, _Window):
            receiver.flow.on_window(item.increment)
        else:
            receiver.flow.on_eof(item.seq)
        return True

    @rule(side=sides, count=st.integers(1, 4))
    def consume(self, side: int, count: int) -> None:
        """Write up to ``count`` received DATA payloads to "TCP", one call per frame."""
        for _ in range(count):
            self._consume_one(side)

    def _consume_one(self, side: int) -> bool:
        end = self.ends[side]
        if not end.inbox:
            return False
        payload = end.inbox.popleft()
        end.ungranted += len(payload) + FRAME_COST
        increment = end.flow.on_consumed(len(payload))
        if end.flow.recv_eof or end.ungranted < max(1, end.flow.window // 4):
            assert increment == 0
        else:
            assert increment == end.ungranted
            end.ungranted = 0
        if increment:
            end.outbox.append(_Window(increment))
        return True

    @rule(
        side=sides,
        kind=st.sampled_from(
            [
                "duplicate",
                "gap",
                "excess",
                "window overflow",
                "eof gap",
                "after eof",
                "duplicate in flight",
                "reorder in flight",
            ]
        ),
        extra=st.one_of(st.integers(0, 3), st.integers(0, 2**40)),
    )
    def inject_corruption(self, side: int, kind: str, extra: int) -> None:
        """Corrupt what ``side`` receives, on a copy: the real endpoints carry on."""
        receiver = self.ends[side]
        victim = copy.copy(receiver.flow)
        seq = victim.recv_seq
        if victim.recv_eof and kind != "window overflow":
            # Whatever the sequence number, DATA after EOF is a protocol violation.
            with pytest.raises(RemoteProtocolError, match="DATA after EOF"):
                victim.on_data(seq + extra, 1 + extra)
            with pytest.raises(RemoteProtocolError, match="second EOF"):
                victim.on_eof(seq)
            return
        if kind == "duplicate" and seq > 0:
            with pytest.raises(SequenceError, match="duplicate"):
                victim.on_data(seq - 1 - extra % seq, 1)
        elif kind in ("duplicate", "gap"):
            with pytest.raises(SequenceError, match="gap"):
                victim.on_data(seq + 1 + extra, 1)
        elif kind == "excess":
            length = max(1, victim.window - victim.recv_buffered - FRAME_COST + 1) + extra
            with pytest.raises(RemoteProtocolError, match="window violation"):
                victim.on_data(seq, length)
        elif kind == "window overflow":
            with pytest.raises(RemoteProtocolError, match="beyond the window"):
                victim.on_window(victim.peer_window - victim.send_credit + 1 + extra)
        elif kind == "eof gap":
            with pytest.raises(SequenceError, match="gap"):
                victim.on_eof(seq + 1 + extra)
        elif kind == "after eof":
            victim.on_eof(seq)
            with pytest.raises(RemoteProtocolError, match="DATA after EOF"):
                victim.on_data(seq, 1)
        else:
            self._corrupt_in_flight(side, victim, kind)

    def _corrupt_in_flight(self, side: int, victim: StreamFlow, kind: str) -> None:
        in_flight = [i for i in self.ends[1 - side].outbox if isinstance(i, _Data)]
        if kind == "duplicate in flight" and in_flight:
            first = in_flight[0]
            assert first.seq == victim.recv_seq  # the pipe is in order
            victim.on_data(first.seq, len(first.payload))  # within the window: legitimate
            with pytest.raises(SequenceError, match="duplicate"):
                victim.on_data(first.seq, len(first.payload))
        elif kind == "reorder in flight" and len(in_flight) >= 2:
            with pytest.raises(SequenceError, match="gap"):
                victim.on_data(in_flight[1].seq, len(in_flight[1].payload))

    @invariant()
    def credit_is_conserved(self) -> None:
        """Credit + data in flight + receiver's buffer + grants in flight == the window."""
        for side, sender in enumerate(self.ends):
            receiver = self.ends[1 - side]
            data_in_flight = sum(
                len(i.payload) + FRAME_COST for i in sender.outbox if isinstance(i, _Data)
            )
            grants_in_flight = sum(i.increment for i in receiver.outbox if isinstance(i, _Window))
            assert (
                sender.flow.send_credit
                + data_in_flight
                + receiver.flow.recv_buffered
                + grants_in_flight
                == receiver.flow.window
                == sender.flow.peer_window
            )
            assert 0 <= sender.flow.send_credit <= sender.flow.peer_window
            assert 0 <= receiver.flow.recv_buffered <= receiver.flow.window

    @invariant()
    def bytes_arrive_in_order(self) -> None:
        for side, sender in enumerate(self.ends):
            receiver = self.ends[1 - side]
            assert receiver.received == sender.sent[: len(receiver.received)]
            if not any(isinstance(i, _Data) for i in sender.outbox):
                assert receiver.received == sender.sent

    @invariant()
    def a_quiet_stream_can_always_send(self) -> None:
        """No deadlock: once everything is delivered, consumed and granted, credit is back."""
        for side, sender in enumerate(self.ends):
            receiver = self.ends[1 - side]
            if sender.flow.send_eof or sender.outbox or receiver.outbox or receiver.inbox:
                continue
            assert sender.flow.sendable() > 0

    def teardown(self) -> None:
        """Drain both pipes: every byte sent arrives, and both ends agree on the end state."""
        progress = bool(self.ends)
        while progress:
            progress = False
            for side in (0, 1):
                while self._deliver_one(side) or self._consume_one(side):
                    progress = True
        for side, sender in enumerate(self.ends):
            receiver = self.ends[1 - side]
            assert receiver.received == sender.sent
            assert receiver.flow.recv_seq == sender.flow.send_seq
            assert receiver.flow.recv_eof == sender.flow.send_eof
            if not sender.flow.send_eof:
                assert sender.flow.sendable() > 0


FlowPair.TestCase.settings = settings(PROFILE, stateful_step_count=40)
TestFlowPair = FlowPair.TestCase


# -- Handshake JSON ----------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@PROFILE
@given(message=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_json_round_trip(message: dict[str, Any]) -> None:
    assert decode_json(encode_json(message), "HELLO") == message


def test_encode_json_is_compact_and_sorted() -> None:
    assert encode_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_decode_json_accepts_a_memoryview() -> None:
    [frame] = decode_frames(encode_frame(FrameType.HELLO, 0, 0, b'{"role":"client"}'))
    assert decode_json(frame.payload, "HELLO") == {"role": "client"}


@pytest.mark.parametrize(
    "payload",
    [b"", b" ", b"{", b'{"a":}', b"{'a': 1}", b'{"a":1}x', b"nul", b"\xef\xbb\xbf{}"],
    ids=[
        "empty",
        "blank",
        "unclosed",
        "no-value",
        "single-quotes",
        "trailing",
        "bad-literal",
        "bom",
    ],
)
def test_decode_json_rejects_malformed(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed WELCOME"):
        decode_json(payload, "WELCOME")


@pytest.mark.parametrize("payload", [b"[]", b"[{}]", b"1", b"1.5", b'"x"', b"null", b"true"])
def test_decode_json_rejects_non_objects(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not a JSON object"):
        decode_json(payload, "CONTROL")


@pytest.mark.parametrize("payload", [b'{"a":"\xff"}', b"\xff", b'{"\xc3":1}', b"{\xed\xa0\x80}"])
def test_decode_json_rejects_non_utf8(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed HELLO"):
        decode_json(payload, "HELLO")


@PROFILE
@given(payload=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_decode_json_is_total(payload: bytes) -> None:
    try:
        value = decode_json(payload, "CONTROL")
    except RemoteProtocolError:
        return
    assert isinstance(value, dict)
    assert value == json.loads(payload)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_decode_json_rejects_deep_nesting_within_the_frame_limit(opening: bytes) -> None:
    payload = opening * (MAX_CONTROL_BYTES // len(opening))
    [frame] = decode_frames(encode_frame(FrameType.HELLO, 0, 0, payload))  # the codec passes it
    with pytest.raises(RemoteProtocolError):
        decode_json(frame.payload, "HELLO")
