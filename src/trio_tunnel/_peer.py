"""Server-side connections that know their peer's address and tell when they have ended.

trio-websocket closes a connection whose upgrade request is malformed (after answering 400),
but gives no sign of it: the server would wait out its handshake timeout and log the wrong
reason. These wrappers let it see the end at once and name the peer in the log.
"""

from __future__ import annotations

import trio


def peer_address(tcp: trio.abc.Stream) -> str:
    sock = getattr(tcp, "socket", None)
    if sock is None:  # an injected in-memory stream (tests): its repr names it
        return repr(tcp)
    try:
        host, port, *_ = sock.getpeername()
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class PeerStream(trio.abc.Stream):
    """Wraps a stream: ``remote`` names the peer, ``ended`` is set once it closes, fails or
    the peer sends EOF (``failure`` keeps the error, ``peer_eof`` tells an EOF), ``refused``
    once a refusal has been logged for it (so it is logged only once)."""

    def __init__(self, stream: trio.abc.Stream, remote: str) -> None:
        self._stream = stream
        self.remote = remote
        self.ended = trio.Event()
        self.refused = False
        self.failure: BaseException | None = None
        self.peer_eof = False
        self._unread: bytes | bytearray = b""

    def __repr__(self) -> str:
        return self.remote

    async def read_head(self, limit: int) -> bytes:
        """Read until an HTTP head is complete (a blank line), ``limit`` bytes are exceeded
        or the peer ends, and keep it all for the next ``receive_some``: until then a
        connection costs no more than this buffer, however slowly it sends (slowloris).
        Returns what was read (empty: the peer ended before sending anything)."""
        head = bytearray(self._unread)
        try:
            while b"\r\n\r\n" not in head and len(head) <= limit:
                data = await self._receive(limit + 1 - len(head))
                if not data:
                    break
                head += data
        finally:
            self._unread = bytes(head)  # kept even when cancelled or broken
        return self._unread

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._unread:
            size = len(self._unread) if max_bytes is None else max_bytes
            data, self._unread = self._unread[:size], self._unread[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._receive(max_bytes)

    async def _receive(self, max_bytes: int | None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
            raise
        if not data:
            self.peer_eof = True
            self.ended.set()
        return data

    def _failed(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self.ended.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self.ended.set()
        await self._stream.aclose()


class PeerListener(trio.abc.Listener[PeerStream]):
    """Accepts plain TCP as :class:`PeerStream`."""

    def __init__(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        self.transport_listener = listener

    async def accept(self) -> PeerStream:
        tcp = await self.transport_listener.accept()
        return PeerStream(tcp, peer_address(tcp))

    async def aclose(self) -> None:
        await self.transport_listener.aclose()
