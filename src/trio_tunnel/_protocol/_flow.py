"""Per-stream sequencing and credit flow control, as a pure state object.

Each direction of a stream has a window: the receiver grants ``window`` bytes up front and
grants more (WINDOW frames) only after it has written what it received to TCP. A DATA frame
costs its payload plus :data:`FRAME_COST`, so a flood of tiny frames is bounded too: the
receiver never holds more than ``window // FRAME_COST`` frames or ``window`` bytes per stream.
"""

from __future__ import annotations

from .._errors import LocalProtocolError, RemoteProtocolError, SequenceError

FRAME_COST = 64


class StreamFlow:
    """Sequence numbers and credit for both directions of one stream."""

    __slots__ = (
        "_grant_threshold",
        "_ungranted",
        "peer_window",
        "recv_buffered",
        "recv_eof",
        "recv_seq",
        "send_credit",
        "send_eof",
        "send_seq",
        "window",
    )

    def __init__(self, *, window: int, peer_window: int) -> None:
        self.window = window  # what we grant the peer
        self.peer_window = peer_window  # what the peer grants us
        self.send_credit = peer_window
        self.send_seq = 0
        self.send_eof = False
        self.recv_seq = 0
        self.recv_eof = False
        self.recv_buffered = 0  # received, not yet granted back
        self._ungranted = 0  # consumed, not yet granted back
        self._grant_threshold = max(1, window // 4)

    # -- sending -------------------------------------------------------------------------
    def sendable(self) -> int:
        """How many payload bytes one DATA frame may carry now (0: wait for credit)."""
        return max(0, self.send_credit - FRAME_COST)

    def on_send_data(self, length: int) -> int:
        """Account for a DATA frame we send; returns its sequence number."""
        cost = length + FRAME_COST
        if cost > self.send_credit or self.send_eof or length == 0:
            raise LocalProtocolError("DATA sent without credit, after EOF, or empty")
        self.send_credit -= cost
        seq = self.send_seq
        self.send_seq += 1
        return seq

    def on_send_eof(self) -> int:
        """Account for the EOF frame we send; returns its sequence number."""
        self.send_eof = True
        return self.send_seq

    def on_window(self, increment: int) -> None:
        """The peer granted more credit. More than it ever could grant is a protocol error."""
        self.send_credit += increment
        if self.send_credit > self.peer_window:
            raise RemoteProtocolError(
                f"WINDOW raises credit to {self.send_credit}, beyond the window {self.peer_window}"
            )

    # -- receiving -----------------------------------------------------------------------
    def on_data(self, seq: int, length: int) -> None:
        """Check a received DATA frame.

        Raises :class:`SequenceError` for a gap or duplicate (reset the stream) and
        :class:`RemoteProtocolError` for a window violation or data after EOF (close the
        session: the peer broke the protocol).
        """
        if self.recv_eof:
            raise RemoteProtocolError("DATA after EOF")
        if seq != self.recv_seq:
            kind = "duplicate" if seq < self.recv_seq else "gap"
            raise SequenceError(f"sequence {kind}: got {seq}, expected {self.recv_seq}")
        if length == 0:
            raise RemoteProtocolError("empty DATA frame")
        self.recv_buffered += length + FRAME_COST
        if self.recv_buffered > self.window:
            raise RemoteProtocolError(
                f"window violation: {self.recv_buffered} bytes outstanding, window {self.window}"
            )
        self.recv_seq += 1

    def on_eof(self, seq: int) -> None:
        if self.recv_eof:
            raise RemoteProtocolError("second EOF")
        if seq != self.recv_seq:
            kind = "duplicate" if seq < self.recv_seq else "gap"
            raise SequenceError(f"EOF sequence {kind}: got {seq}, expected {self.recv_seq}")
        self.recv_eof = True

    def on_consumed(self, length: int) -> int:
        """We wrote ``length`` payload bytes to TCP. Returns a WINDOW increment to send, or 0.

        Grants are batched: one WINDOW frame per quarter window consumed.
        """
        self._ungranted += length + FRAME_COST
        if self._ungranted < self._grant_threshold or self.recv_eof:
            return 0
        increment = self._ungranted
        self._ungranted = 0
        self.recv_buffered -= increment
        return increment
