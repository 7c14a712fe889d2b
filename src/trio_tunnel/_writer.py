"""The single writer of one WebSocket: control frames first, then stream data round-robin.

Only this task sends on the WebSocket, and it is cancelled only when the session is torn
down, so a send is never cut mid-frame. Each stream may have at most one data frame queued
(its slot), so the queue is bounded by the number of streams, streams are served in turn,
and a small message never waits behind more than one quantum of each busy stream.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from ._errors import RemoteProtocolError

if TYPE_CHECKING:
    from ._ws import WebSocket

BATCH_BYTES = 256 * 1024
# Frames per message, well under what a receiver accepts (MAX_FRAMES_PER_MESSAGE, 4096):
# control frames beyond it wait for the next message.
BATCH_FRAMES = 1024


class StreamSlot:
    """A stream's place in the writer's queue: at most one frame waiting."""

    __slots__ = ("_free",)

    def __init__(self) -> None:
        self._free = trio.Semaphore(1)


class Writer:
    def __init__(self, ws: WebSocket, *, control_limit: int) -> None:
        self._ws = ws
        self._control: deque[bytes] = deque()
        self._control_limit = control_limit
        self._ready: deque[tuple[StreamSlot, bytes, bytes | memoryview]] = deque()
        self._wakeup = trio.Event()

    def send_control(self, frame: bytes) -> None:
        """Queue a control frame (never blocks).

        Control frames are a bounded answer to what the peer sends (PONG, WINDOW) or one per
        stream event; a queue past its limit means the peer floods us or stopped reading.
        """
        if len(self._control) >= self._control_limit:
            raise RemoteProtocolError(
                f"control queue full ({self._control_limit} frames): the peer floods or "
                "does not read",
                close_code=1008,
            )
        self._control.append(frame)
        self._wakeup.set()

    async def reserve(self, slot: StreamSlot) -> None:
        """Wait until the stream's previous frame has left the queue.

        A pump reserves before it reads from TCP, so each stream holds at most one chunk of
        data in memory on its way out, however slow the WebSocket.
        """
        await slot._free.acquire()

    def try_reserve(self, slot: StreamSlot) -> bool:
        """Reserve without waiting; ``False`` if the stream's previous frame is still queued."""
        try:
            slot._free.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def unreserve(self, slot: StreamSlot) -> None:
        """Give back a reservation that will not be used."""
        slot._free.release()

    def submit(self, slot: StreamSlot, header: bytes, payload: bytes | memoryview = b"") -> None:
        """Queue one frame of a stream, under the reservation taken with :meth:`reserve`."""
        self._ready.append((slot, header, payload))
        self._wakeup.set()

    async def run(self) -> None:
        """Send until cancelled or the WebSocket closes (raises :class:`WebSocketClosed`)."""
        control = self._control
        ready = self._ready
        while True:
            if not control and not ready:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            parts: list[bytes | memoryview] = []
            size = 0
            while control and len(parts) < BATCH_FRAMES:
                frame = control.popleft()
                parts.append(frame)
                size += len(frame)
            frames = len(parts)
            while ready and size < BATCH_BYTES and frames < 2 * BATCH_FRAMES:
                frames += 1
                slot, header, payload = ready.popleft()
                parts.append(header)
                if payload:
                    parts.append(payload)
                size += len(header) + len(payload)
                slot._free.release()
            message = parts[0] if len(parts) == 1 else b"".join(parts)
            await self._ws.send(bytes(message))
