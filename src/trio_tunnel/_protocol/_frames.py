"""Binary frame codec.

A WebSocket message carries one or more frames back to back. Each frame is a 17-byte header
followed by its payload::

    type: u8 | stream_id: u32 | arg: u64 | length: u32 | payload: length bytes

``arg`` means: the sequence number (DATA, EOF), the credit increment (WINDOW), the reset code
(RESET), the failover epoch (OPEN), the nonce (PING, PONG); zero otherwise.

Decoding is total: any byte string either decodes into frames or raises
:class:`RemoteProtocolError`; nothing else escapes (a Hypothesis test holds us to that).
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from .._errors import LocalProtocolError, RemoteProtocolError

_HEADER = struct.Struct("!BIQI")
HEADER_SIZE = _HEADER.size
MAX_NAME_BYTES = 255
MAX_REASON_BYTES = 1024
MAX_CONTROL_BYTES = 64 * 1024
MAX_STREAM_ID = 2**32 - 1
MAX_ARG = 2**64 - 1
MAX_LENGTH = 2**32 - 1


class FrameType(enum.IntEnum):
    HELLO = 1  # stream 0, JSON payload: the client's handshake
    WELCOME = 2  # stream 0, JSON payload: the server's answer
    CONTROL = 3  # stream 0, JSON payload: failover state and requests
    PING = 4  # stream 0, arg = nonce
    PONG = 5  # stream 0, arg = nonce
    OPEN = 16  # arg = epoch, payload = tunnel name (UTF-8)
    DATA = 17  # arg = sequence number, payload = bytes
    EOF = 18  # arg = sequence number of the frame after the last DATA
    WINDOW = 19  # arg = credit increment in bytes
    RESET = 20  # arg = reset code, payload = reason (UTF-8)


_TYPES = {member.value: member for member in FrameType}  # faster than FrameType(n) per frame
_SESSION_TYPES = frozenset(
    {FrameType.HELLO, FrameType.WELCOME, FrameType.CONTROL, FrameType.PING, FrameType.PONG}
)
_EMPTY_PAYLOAD_TYPES = frozenset({FrameType.PING, FrameType.PONG, FrameType.EOF, FrameType.WINDOW})
_PAYLOAD_LIMITS = {
    FrameType.HELLO: MAX_CONTROL_BYTES,
    FrameType.WELCOME: MAX_CONTROL_BYTES,
    FrameType.CONTROL: MAX_CONTROL_BYTES,
    FrameType.OPEN: MAX_NAME_BYTES,
    FrameType.RESET: MAX_REASON_BYTES,
}


class Frame(NamedTuple):
    type: FrameType
    stream_id: int
    arg: int
    payload: memoryview | bytes

    def text(self) -> str:
        """The payload as UTF-8 text (tunnel name, reset reason); validated at decode."""
        return bytes(self.payload).decode("utf-8")


def encode_header(type_: FrameType, stream_id: int, arg: int, length: int) -> bytes:
    """The 17-byte header of a frame whose payload the caller sends right after it."""
    return _HEADER.pack(type_, stream_id, arg, length)


def encode_frame(
    type_: FrameType, stream_id: int = 0, arg: int = 0, payload: bytes | str = b""
) -> bytes:
    """One whole frame. Raises :class:`LocalProtocolError` for a frame we must never send."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    _check(type_, stream_id, arg, len(payload), LocalProtocolError)
    return _HEADER.pack(type_, stream_id, arg, len(payload)) + payload


def decode_frames(message: bytes | bytearray | memoryview, limit: int | None = None) -> list[Frame]:
    """Every frame of one WebSocket message, payloads as zero-copy views into ``message``.

    More than ``limit`` frames in one message is a policy violation (close code 1008): a peer
    that packs a message with tiny frames must not buy unbounded work per message.
    """
    view = memoryview(message)
    frames: list[Frame] = []
    offset = 0
    end = len(view)
    if end == 0:
        raise RemoteProtocolError("empty message")
    while offset < end:
        if limit is not None and len(frames) >= limit:
            raise RemoteProtocolError(f"more than {limit} frames in one message", close_code=1008)
        if end - offset < HEADER_SIZE:
            raise RemoteProtocolError(f"truncated frame header at byte {offset}")
        raw_type, stream_id, arg, length = _HEADER.unpack_from(view, offset)
        offset += HEADER_SIZE
        type_ = _TYPES.get(raw_type)
        if type_ is None:
            raise RemoteProtocolError(f"unknown frame type {raw_type}")
        if length > end - offset:
            raise RemoteProtocolError(
                f"{type_.name} frame declares {length} payload bytes, {end - offset} present"
            )
        _check(type_, stream_id, arg, length, RemoteProtocolError)
        payload = view[offset : offset + length]
        offset += length
        if type_ in (FrameType.OPEN, FrameType.RESET):
            try:
                bytes(payload).decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteProtocolError(f"{type_.name} frame text is not UTF-8") from None
        frames.append(Frame(type_, stream_id, arg, payload))
    return frames


def _check(
    type_: FrameType,
    stream_id: int,
    arg: int,
    length: int,
    error: type[LocalProtocolError] | type[RemoteProtocolError],
) -> None:
    if (
        not 0 <= stream_id <= MAX_STREAM_ID
        or not 0 <= arg <= MAX_ARG
        or not 0 <= length <= MAX_LENGTH
    ):
        raise error(f"{type_.name} frame field out of range")
    if type_ in _SESSION_TYPES:
        if stream_id != 0:
            raise error(f"{type_.name} frame on stream {stream_id}, expected stream 0")
    elif stream_id == 0:
        raise error(f"{type_.name} frame on stream 0")
    if type_ in _EMPTY_PAYLOAD_TYPES and length:
        raise error(f"{type_.name} frame with a payload")
    limit = _PAYLOAD_LIMITS.get(type_)
    if limit is not None and length > limit:
        raise error(f"{type_.name} payload of {length} bytes exceeds {limit}")
    if type_ is FrameType.OPEN and length == 0:
        raise error("OPEN frame without a tunnel name")
    if type_ is FrameType.WINDOW and arg == 0:
        raise error("WINDOW frame with zero increment")
