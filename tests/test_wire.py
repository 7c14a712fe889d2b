"""A hand-driven peer speaking the wire protocol: violations close only what they must."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket

from trio_tunnel._protocol import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    Frame,
    FrameType,
    decode_frames,
    decode_json,
    encode_frame,
    encode_json,
)

from .helpers import (
    LOCALHOST,
    client_config,
    echo_handler,
    open_rig,
    read_to_end,
    server_config,
    start_service,
)

WINDOW = 262144


class RawPeer:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.pending: list[Frame] = []

    async def send(self, *frames: bytes) -> None:
        await self.ws.send_message(b"".join(frames))

    async def next_frame(self, *skip: FrameType) -> Frame:
        while True:
            if not self.pending:
                message = await self.ws.get_message()
                assert isinstance(message, bytes)
                self.pending = decode_frames(message)
            frame = self.pending.pop(0)
            if frame.type not in skip and frame.type is not FrameType.PING:
                return frame


@asynccontextmanager
async def raw_client(port: int, client_id: int = 2) -> AsyncIterator[RawPeer]:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        peer = RawPeer(ws)
        hello = {
            "protocol": PROTOCOL_NAME,
            "version": PROTOCOL_VERSION,
            "role": "client",
            "client_id": client_id,
            "window": WINDOW,
            "listen": [],
            "connect": [],
        }
        await peer.send(encode_frame(FrameType.HELLO, 0, 0, encode_json(hello)))
        welcome = await peer.next_frame()
        assert welcome.type is FrameType.WELCOME
        state = await peer.next_frame()
        assert state.type is FrameType.CONTROL
        assert decode_json(state.payload, "state")["type"] == "state"
        yield peer


async def _closed_code(peer: RawPeer) -> int | None:
    with trio.fail_after(5):
        try:
            while True:
                await peer.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code if exc.reason else None


async def _good_client_still_works(port: int) -> None:
    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
        await tcp.send_all(b"still here")
        await tcp.send_eof()
        assert await read_to_end(tcp) == (b"still here", "eof")


async def test_sequence_gap_resets_only_that_stream(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with (
            open_rig(server_config(connect={"up": echo})) as rig,
            raw_client(rig.server.websocket_port) as peer,
        ):
            await peer.send(
                encode_frame(FrameType.OPEN, 1, 1, "up"),
                encode_frame(FrameType.DATA, 1, 0, b"a"),
                encode_frame(FrameType.DATA, 1, 2, b"c"),
            )  # gap: seq 1 missing
            frame = await peer.next_frame(FrameType.DATA, FrameType.WINDOW)
            assert (frame.type, frame.stream_id) == (FrameType.RESET, 1)
            assert "gap" in frame.text()
            # The session carries on: a proper stream on it echoes.
            await peer.send(
                encode_frame(FrameType.OPEN, 3, 1, "up"),
                encode_frame(FrameType.DATA, 3, 0, b"ok"),
                encode_frame(FrameType.EOF, 3, 1),
            )
            frame = await peer.next_frame(FrameType.WINDOW)
            assert (frame.type, frame.stream_id, bytes(frame.payload)) == (FrameType.DATA, 3, b"ok")
            frame = await peer.next_frame(FrameType.WINDOW)
            assert (frame.type, frame.stream_id) == (FrameType.EOF, 3)


async def test_unknown_tunnel_and_stream_limit_refuse_per_stream() -> None:
    config = server_config(connect={})
    with trio.fail_after(20):
        async with open_rig(config) as rig, raw_client(rig.server.websocket_port) as peer:
            await peer.send(encode_frame(FrameType.OPEN, 1, 1, "nope"))
            frame = await peer.next_frame()
            assert (frame.type, frame.stream_id) == (FrameType.RESET, 1)
            assert "unknown tunnel" in frame.text()
            # Frames for streams that do not exist are ignored, not fatal.
            await peer.send(
                encode_frame(FrameType.DATA, 99, 0, b"x"), encode_frame(FrameType.WINDOW, 77, 5)
            )
            await peer.send(encode_frame(FrameType.OPEN, 3, 1, "nope"))
            frame = await peer.next_frame()
            assert (frame.type, frame.stream_id) == (FrameType.RESET, 3)


async def test_window_violation_closes_the_session(nursery: trio.Nursery) -> None:
    async def never_reads(tcp: trio.SocketStream) -> None:
        await trio.sleep(30)

    sink = await start_service(nursery, never_reads)
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}, connect={"sink": sink}),
            [client_config(1, 0, connect={"down": echo})],
        ) as rig:
            async with raw_client(rig.server.websocket_port) as peer:
                chunk = b"z" * 60000
                frames = [encode_frame(FrameType.OPEN, 1, 1, "sink")]
                frames += [encode_frame(FrameType.DATA, 1, seq, chunk) for seq in range(20)]
                await peer.send(*frames)  # 1.2 MB > the 1 MiB window granted
                assert await _closed_code(peer) == 1002
            await _good_client_still_works(rig.server_port("down"))


async def test_garbage_and_text_close_only_that_session(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}),
            [client_config(1, 0, connect={"down": echo})],
        ) as rig:
            async with raw_client(rig.server.websocket_port) as peer:
                await peer.ws.send_message(b"\xff" * 40)
                assert await _closed_code(peer) == 1002
            async with raw_client(rig.server.websocket_port) as peer:
                await peer.ws.send_message("text is not welcome")
                assert await _closed_code(peer) == 1003
            async with raw_client(rig.server.websocket_port) as peer:
                await peer.send(encode_frame(FrameType.HELLO, 0, 0, b"{}"))
                assert await _closed_code(peer) == 1002
            await _good_client_still_works(rig.server_port("down"))
            assert rig.server.state.active == 1


async def test_bad_handshakes_are_refused_with_a_reason() -> None:
    with trio.fail_after(20):
        async with open_rig(server_config()) as rig:
            url = f"ws://127.0.0.1:{rig.server.websocket_port}/"
            cases = [
                (
                    {
                        "protocol": PROTOCOL_NAME,
                        "version": 99,
                        "role": "client",
                        "client_id": 1,
                        "window": WINDOW,
                    },
                    "version",
                ),
                (
                    {
                        "protocol": PROTOCOL_NAME,
                        "version": PROTOCOL_VERSION,
                        "role": "client",
                        "client_id": 3,
                        "window": WINDOW,
                    },
                    "client_id",
                ),
                ({"protocol": "other", "version": 1}, "protocol"),
            ]
            for hello, word in cases:
                async with trio_websocket.open_websocket_url(url) as ws:
                    await ws.send_message(encode_frame(FrameType.HELLO, 0, 0, encode_json(hello)))
                    answer = await ws.get_message()
                    assert isinstance(answer, bytes)
                    (frame,) = decode_frames(answer)
                    assert frame.type is FrameType.WELCOME
                    assert word in decode_json(frame.payload, "welcome")["error"]
            assert rig.server.state.clients == {}


async def test_silent_peer_is_dropped_after_handshake_timeout() -> None:
    config = server_config()
    config = config.__class__(
        role="server",
        websocket=config.websocket.__class__(url="ws://127.0.0.1:0/", handshake_timeout_secs=0.5),
    )
    with trio.fail_after(20):
        async with (
            open_rig(config) as rig,
            trio_websocket.open_websocket_url(f"ws://127.0.0.1:{rig.server.websocket_port}/") as ws,
        ):
            # Upgrade done, no HELLO: closed by the server once the timeout passes.
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None
                assert exc.reason.code == 1008


async def test_half_open_flood_past_the_pending_limit_drops_the_oldest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trio_tunnel import _admission

    monkeypatch.setattr(_admission, "DEFAULT_LIMITS", _admission.Limits(max_pending=5))
    config = server_config()
    config = config.__class__(
        role="server",
        websocket=config.websocket.__class__(url="ws://127.0.0.1:0/", handshake_timeout_secs=1),
    )
    with trio.fail_after(20):
        async with open_rig(config) as rig:
            port = rig.server.websocket_port
            silent = [await trio.open_tcp_stream(LOCALHOST, port) for _ in range(5)]
            await trio.sleep(0.2)  # all five are now waiting in their upgrade
            extra = await trio.open_tcp_stream(LOCALHOST, port)
            with trio.fail_after(0.8):  # the oldest is dropped at once, not the newest
                assert await read_to_end(silent[0]) == (b"", "eof")
            for tcp in [*silent[1:], extra]:  # the others end at the handshake timeout
                assert (await read_to_end(tcp))[0] == b""
            for tcp in [*silent, extra]:
                await tcp.aclose()
            async with raw_client(port, client_id=1):
                assert rig.server.state.connected == (1,)
            assert rig.server.metrics.refused_peers["evicted"] >= 1
    assert "dropped to make room" in caplog.text
