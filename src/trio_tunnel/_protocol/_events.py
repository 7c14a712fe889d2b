"""What the core tells its shell: one small immutable event per thing that happened.

Each event is a NamedTuple, cheap on the per-frame path, and matchable by class pattern.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._codes import ResetCode


class StreamOpened(NamedTuple):
    """The peer opened a stream for ``tunnel``; the shell connects it or resets it."""

    stream_id: int
    tunnel: str
    epoch: int


class DataReceived(NamedTuple):
    """Payload of a stream, in sequence. Write it, then call ``Connection.consumed``."""

    stream_id: int
    payload: memoryview | bytes


class EndReceived(NamedTuple):
    """The peer ended its direction of the stream (its TCP EOF): send a FIN."""

    stream_id: int


class StreamWasReset(NamedTuple):
    """The stream is gone. ``remote``: the peer reset it; otherwise the core did (its RESET
    frame is already queued), e.g. for a sequence gap beyond the reorder bound."""

    stream_id: int
    code: ResetCode
    reason: str
    remote: bool


class StreamRefused(NamedTuple):
    """The core refused an OPEN by itself (stream limit); its RESET frame is queued."""

    stream_id: int
    tunnel: str
    code: ResetCode
    reason: str


class FrameIgnored(NamedTuple):
    """The first frame of this connection for a stream that is done or unknown (frames trail
    a reset normally; the core counts the rest in ``Connection.ignored_frames``)."""

    frame_type: str
    stream_id: int


class CreditGranted(NamedTuple):
    """The peer granted more credit on a stream: a sender waiting for it may go on."""

    stream_id: int


class ControlReceived(NamedTuple):
    """A CONTROL message (failover state and requests), as decoded JSON."""

    message: dict[str, Any]


class PingReceived(NamedTuple):
    """A PING; the core already queued its PONG."""

    nonce: int


class PongReceived(NamedTuple):
    nonce: int


Event = (
    StreamOpened
    | DataReceived
    | EndReceived
    | StreamWasReset
    | StreamRefused
    | FrameIgnored
    | CreditGranted
    | ControlReceived
    | PingReceived
    | PongReceived
)
