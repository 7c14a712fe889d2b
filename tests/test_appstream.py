"""Tunnel streams driven by the application: two real sessions over real trio-websocket
connections on in-memory streams (no sockets), in virtual time.

The application stream is a trio ``HalfCloseableStream``: trio's own conformance check
(``check_half_closeable_stream``) runs against it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from trio_tunnel import _ws
from trio_tunnel._errors import StreamReset
from trio_tunnel._protocol import ResetCode
from trio_tunnel._session import Refusal, Session, SessionSettings
from trio_tunnel._stream import AppStream

WINDOW = 64 * 1024

pytestmark = pytest.mark.trio


class Acceptor:
    """A session owner that hands every stream the peer opens to the test."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[AppStream](100)
        self.refuse: dict[str, Refusal] = {}

    def resolve_open(
        self, session: Session, tunnel: str, epoch: int
    ) -> Refusal | Callable[[AppStream], None]:
        if tunnel in self.refuse:
            return self.refuse[tunnel]
        return self.send.send_nowait

    def on_control(self, session: Session, message: dict[str, Any]) -> None:
        pass

    def session_ended(self, session: Session) -> None:
        pass


LINKS: list[
    trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]
] = []


def silence(stream: trio.StapledStream[Any, Any]) -> None:
    """Whatever this end sends from now on never arrives (a link that went silent)."""
    stream.send_stream.send_all_hook = None


@asynccontextmanager
async def websocket_pair() -> AsyncIterator[tuple[_ws.WebSocket, _ws.WebSocket]]:
    """A real trio-websocket client and server joined by a trio memory stream pair; the
    raw server end is left in ``LINKS`` for tests that cut or silence it."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    LINKS.append(server_stream)
    async with trio.open_nursery() as nursery:
        accepted: list[trio_websocket.WebSocketConnection] = []

        async def serve() -> None:
            request = await trio_websocket.wrap_server_stream(
                nursery, server_stream, max_message_size=_ws.MAX_MESSAGE_SIZE
            )
            accepted.append(await request.accept())

        nursery.start_soon(serve)
        client = await trio_websocket.wrap_client_stream(
            nursery,
            client_stream,  # type: ignore[arg-type]  # any trio stream works
            "tunnel.test",
            "/",
            max_message_size=_ws.MAX_MESSAGE_SIZE,
        )
        await trio.testing.wait_all_tasks_blocked()
        (server,) = accepted
        yield _ws.WebSocket(client, close_timeout=1), _ws.WebSocket(server, close_timeout=1)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def session_pair(
    window: int = WINDOW, max_streams: int = 100, idle_timeout: float = 0.0
) -> AsyncIterator[tuple[Session, Session, Acceptor]]:
    settings = SessionSettings(
        window=window,
        peer_window=window,
        max_streams=max_streams,
        connect_timeout=5,
        ping_interval=5,
        ping_timeout=10,
        idle_timeout=idle_timeout,
    )
    acceptor = Acceptor()
    async with websocket_pair() as (ws_client, ws_server), trio.open_nursery() as nursery:
        client = Session(ws_client, acceptor, settings, is_server=False, name="client")
        server = Session(ws_server, acceptor, settings, is_server=True, name="server")
        await nursery.start(client.run)
        await nursery.start(server.run)
        yield client, server, acceptor
        client.close("test over")
        server.close("test over")


async def open_pair(client: Session, acceptor: Acceptor) -> tuple[AppStream, AppStream]:
    near = client.open_app_stream("t")
    far = await acceptor.receive.receive()
    return near, far


@pytest.mark.parametrize("window", [WINDOW, 1024])  # 1024: credit runs out within a read
async def test_application_stream_is_a_conforming_half_closeable_stream(
    autojump_clock: trio.testing.MockClock, window: int
) -> None:
    with trio.fail_after(600):
        async with session_pair(window=window) as (client, _server, acceptor):

            async def maker() -> tuple[AppStream, AppStream]:
                return await open_pair(client, acceptor)

            await trio.testing.check_half_closeable_stream(maker, None)
            # Every stream the check opened has ended and left both sessions.
            await trio.testing.wait_all_tasks_blocked()
            assert client.stream_count == 0
            assert client.conn.stream_count == 0


async def test_more_than_a_window_flows_both_ways_under_credit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data = bytes(range(256)) * (4 * WINDOW // 256)
    with trio.fail_after(60):
        async with session_pair() as (client, _server, acceptor):
            near, far = await open_pair(client, acceptor)

            async def pump(stream: AppStream, payload: bytes) -> None:
                await stream.send_all(payload)
                await stream.send_eof()

            async def drain(stream: AppStream, into: bytearray) -> None:
                while chunk := await stream.receive_some(10_000):
                    into += chunk
                    flow = stream.flow
                    assert flow is not None and flow.recv_buffered <= WINDOW

            got_far, got_near = bytearray(), bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, near, data)
                nursery.start_soon(pump, far, data[::-1])
                nursery.start_soon(drain, far, got_far)
                nursery.start_soon(drain, near, got_near)
            assert got_far == data and got_near == data[::-1]
            assert near.done.is_set() and far.done.is_set()
            assert client.metrics.tunnel("t").streams_total == 1
            assert client.metrics.tunnel("t").streams_open == 0


async def test_a_reset_reaches_the_application_as_broken_with_its_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with session_pair() as (client, server, acceptor):
            near, far = await open_pair(client, acceptor)
            server.reset_stream(far, ResetCode.CONNECT_TIMEOUT, "far service is slow")
            with pytest.raises(trio.BrokenResourceError) as info:
                await near.receive_some()
            cause = info.value.__cause__
            assert isinstance(cause, StreamReset)
            assert (cause.code, cause.reason, cause.remote) == (
                ResetCode.CONNECT_TIMEOUT,
                "reset by peer: far service is slow",
                True,
            )
            with pytest.raises(trio.BrokenResourceError):
                await near.send_all(b"late")
            assert client.metrics.stream_resets["connect_timeout"] == 1


async def test_refused_open_and_session_limit_are_typed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with session_pair(max_streams=1) as (client, _server, acceptor):
            acceptor.refuse["nowhere"] = (ResetCode.UNKNOWN_TUNNEL, "no such tunnel")
            refused = client.open_app_stream("nowhere")
            with pytest.raises(trio.BrokenResourceError) as info:
                await refused.receive_some()
            assert isinstance(info.value.__cause__, StreamReset)
            assert info.value.__cause__.code is ResetCode.UNKNOWN_TUNNEL
            await trio.testing.wait_all_tasks_blocked()
            kept = client.open_app_stream("t")
            with pytest.raises(trio.BrokenResourceError) as info:
                client.open_app_stream("t")
            assert isinstance(info.value.__cause__, StreamReset)
            assert info.value.__cause__.code is ResetCode.LIMIT
            await kept.aclose()


async def test_closing_with_unread_data_resets_like_tcp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with session_pair() as (client, _server, acceptor):
            near, far = await open_pair(client, acceptor)
            await far.send_all(b"never read")
            await trio.testing.wait_all_tasks_blocked()
            await near.aclose()
            with pytest.raises(trio.BrokenResourceError) as info:
                await far.receive_some()
            assert isinstance(info.value.__cause__, StreamReset)
            assert info.value.__cause__.code is ResetCode.CANCELLED


async def test_a_silent_peer_is_declared_dead_at_the_ping_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Virtual time: the peer's reader stops (its session is cancelled without a close),
    and the other session ends itself at ping_timeout with its streams reset."""
    with trio.fail_after(60):
        async with session_pair() as (client, _server, acceptor):
            near, _far = await open_pair(client, acceptor)
            start = trio.current_time()
            silence(LINKS[-1])  # the server keeps running, but nothing it sends arrives
            with pytest.raises(trio.BrokenResourceError) as info:
                await near.receive_some()
            elapsed = trio.current_time() - start
            assert 10 <= elapsed < 10.5
            assert client.closing_reason is not None and "ping timeout" in client.closing_reason
            assert isinstance(info.value.__cause__, StreamReset)
            assert info.value.__cause__.code is ResetCode.SESSION_LOST


async def test_a_message_packed_with_tiny_frames_closes_that_session_with_1008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The flood of the hostile-networks table (246,720 frames in one 4 MiB message): the
    receiving session refuses it whole, closing with the policy code."""
    from trio_tunnel._protocol import FrameType, encode_frame

    flood = encode_frame(FrameType.PING, 0, 1) * 246_720
    with trio.fail_after(60):
        async with session_pair() as (client, server, _acceptor):
            await client.ws.send(flood)
            while not server.closed:
                await trio.sleep(0.01)
            assert server.closing_reason is not None, server.closing_reason
            assert server._close_code == 1008, server.closing_reason
            assert "more than 4096 frames in one message" in server.closing_reason


async def test_a_big_batch_is_handled_in_slices_with_yields_between(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """4,000 frames in one message (under the bound) are fed to the core 256 at a time, the
    event loop running other tasks in between; every PING is still answered, in order."""
    from trio_tunnel._protocol import FrameType, encode_frame
    from trio_tunnel._session import SLICE_FRAMES

    slices: list[int] = []
    ran_between: list[int] = []
    with trio.fail_after(60):
        async with session_pair() as (client, server, _acceptor):
            feed = server.conn.receive_frames

            def spy(frames: Any, now: float, size: int) -> Any:
                slices.append(len(frames))
                return feed(frames, now, size)

            server.conn.receive_frames = spy  # type: ignore[method-assign, assignment]
            pongs: list[int] = []
            client_feed = client.conn.receive_frames

            def count_pongs(frames: Any, now: float, size: int) -> Any:
                pongs.extend(f.arg for f in frames if f.type is FrameType.PONG)
                return client_feed(frames, now, size)

            client.conn.receive_frames = count_pongs  # type: ignore[method-assign, assignment]

            async def other_work() -> None:
                while len(slices) < 4000 // SLICE_FRAMES + 1:
                    ran_between.append(len(slices))
                    await trio.lowlevel.checkpoint()

            await trio.testing.wait_all_tasks_blocked()
            slices.clear()  # the keepalives' first PING and PONG went before
            pongs.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(other_work)
                await client.ws.send(
                    b"".join(encode_frame(FrameType.PING, 0, n) for n in range(4000))
                )
            while len(pongs) < 4000:
                await trio.sleep(0.01)
    assert slices == [SLICE_FRAMES] * (4000 // SLICE_FRAMES) + [4000 % SLICE_FRAMES]
    assert pongs == list(range(4000))
    # The other task ran while the message was being handled, not only before or after.
    assert any(0 < n < len(slices) for n in ran_between)


async def test_idle_streams_are_reset_at_idle_timeout_and_busy_ones_are_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with session_pair(idle_timeout=30) as (client, _server, acceptor):
            idle_near, _idle_far = await open_pair(client, acceptor)
            busy_near, busy_far = await open_pair(client, acceptor)
            start = trio.current_time()

            async def chatter() -> None:
                for _ in range(12):  # a byte every 10 s for 2 minutes: never idle
                    await busy_near.send_all(b".")
                    assert await busy_far.receive_some() == b"."
                    await trio.sleep(10)

            ended: list[BaseException | None] = []

            async def wait_idle() -> None:
                try:
                    await idle_near.receive_some()
                except trio.BrokenResourceError as exc:
                    ended.append(exc.__cause__)
                    ended.append(trio.current_time() - start)  # type: ignore[arg-type]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(chatter)
                nursery.start_soon(wait_idle)
            cause, when = ended
            assert isinstance(cause, StreamReset) and cause.code is ResetCode.IDLE
            assert 30 <= when < 31  # type: ignore[operator]
            await busy_near.send_all(b"still here")
            assert await busy_far.receive_some() == b"still here"
