"""The life of one stream, as a transition table (h11's ``_state.py`` is the model).

Everything that can happen to a stream is an :class:`Input`: a frame from the peer or an
action of ours. ``TRANSITIONS`` says, for each state, which inputs are legal and where they
lead. An input missing from the table is a protocol error: a remote one (the peer broke the
protocol, answer with the carried close code) for frames, a local one (our bug) for actions.

Inputs are applied in sequence order: a DATA or EOF frame held by the reorder stage takes
its transition only when it is delivered.
"""

from __future__ import annotations

import enum

from .._errors import LocalProtocolError, RemoteProtocolError
from ._codes import CloseCode


class StreamState(enum.Enum):
    OPEN = "open"  # both directions carry data
    LOCAL_EOF = "local_eof"  # we sent EOF; the peer may still send
    REMOTE_EOF = "remote_eof"  # the peer's EOF was delivered; we may still send
    CLOSED = "closed"  # both directions ended with EOF: the stream is done
    RESET = "reset"  # reset by either side: the stream is done, trailing frames ignored


class Input(enum.Enum):
    RECV_DATA = "DATA"
    RECV_EOF = "EOF"
    RECV_WINDOW = "WINDOW"
    RECV_RESET = "RESET"
    RECV_OPEN = "OPEN"
    SEND_DATA = "send data"
    SEND_EOF = "send EOF"
    SEND_RESET = "send RESET"
    GRANT = "grant credit"


_REMOTE_INPUTS = frozenset(
    {Input.RECV_DATA, Input.RECV_EOF, Input.RECV_WINDOW, Input.RECV_RESET, Input.RECV_OPEN}
)

S = StreamState
I = Input  # noqa: E741 - the table reads best with short names

TRANSITIONS: dict[StreamState, dict[Input, StreamState]] = {
    S.OPEN: {
        I.RECV_DATA: S.OPEN,
        I.RECV_EOF: S.REMOTE_EOF,
        I.RECV_WINDOW: S.OPEN,
        I.RECV_RESET: S.RESET,
        I.SEND_DATA: S.OPEN,
        I.SEND_EOF: S.LOCAL_EOF,
        I.SEND_RESET: S.RESET,
        I.GRANT: S.OPEN,
    },
    S.LOCAL_EOF: {
        I.RECV_DATA: S.LOCAL_EOF,
        I.RECV_EOF: S.CLOSED,
        I.RECV_WINDOW: S.LOCAL_EOF,  # credit for data sent before our EOF
        I.RECV_RESET: S.RESET,
        I.SEND_RESET: S.RESET,
        I.GRANT: S.LOCAL_EOF,
    },
    S.REMOTE_EOF: {
        I.RECV_WINDOW: S.REMOTE_EOF,
        I.RECV_RESET: S.RESET,
        I.SEND_DATA: S.REMOTE_EOF,
        I.SEND_EOF: S.CLOSED,
        I.SEND_RESET: S.RESET,
    },
    # A stream leaves the core when it is CLOSED or RESET; frames for it that still trail
    # (a WINDOW for our last data, DATA the peer sent before it saw our RESET) find no stream
    # and are ignored. These rows say what a shell may still do to a stream it holds.
    S.CLOSED: {I.SEND_RESET: S.CLOSED},
    S.RESET: {I.SEND_RESET: S.RESET, I.SEND_EOF: S.RESET, I.SEND_DATA: S.RESET},
}

DONE = frozenset({S.CLOSED, S.RESET})


def transition(state: StreamState, event: Input) -> StreamState:
    """The state after ``event``, or the protocol error that ``event`` is in ``state``."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        if event in _REMOTE_INPUTS:
            raise RemoteProtocolError(
                f"{event.value} frame on a stream in state {state.value}",
                close_code=CloseCode.PROTOCOL_ERROR,
            ) from None
        raise LocalProtocolError(
            f"cannot {event.value} on a stream in state {state.value}"
        ) from None
