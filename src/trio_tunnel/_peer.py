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
    """Wraps an accepted stream: ``remote`` names the peer, ``ended`` is set once it closes or
    fails, ``refused`` once a refusal has been logged for it (so it is logged only once)."""

    def __init__(self, stream: trio.abc.Stream, remote: str) -> None:
        self._stream = stream
        self.remote = remote
        self.ended = trio.Event()
        self.refused = False

    def __repr__(self) -> str:
        return self.remote

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
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
