"""Hostile input at every door: the WebSocket port before, during and after the handshake.

Each attack runs against an in-process server that also carries a real, well-behaved client
(client 1: the server's ``down`` tunnel goes through it to an echo service). Every test asserts
that the attack closes only what it must, that the good client keeps carrying traffic (a
transfer loops through it for the whole attack), and that the server logs the reason once.

The attacker speaks raw bytes: :class:`RawWebSocket` does the HTTP upgrade and the WebSocket
framing by hand (masking included), so it can send what no WebSocket library would (a frame
header declaring 1 TiB, a request line that never ends). The 1 TiB case runs against a real
server process, whose RSS is read from ``/proc``.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

import trio_tunnel as tt
from trio_tunnel._protocol import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    Frame,
    FrameType,
    decode_frames,
    decode_json,
    encode_frame,
    encode_header,
    encode_json,
)

from .helpers import (
    LOCALHOST,
    Rig,
    client_config,
    echo_handler,
    free_port,
    open_rig,
    read_to_end,
    server_config,
    start_client,
    start_service,
)
from .procs import TunnelProcess, toml_config

# An xfail for a known bug must fail on its assertion, not on some other error. pytest-trio
# runs each test in a nursery, so the AssertionError may arrive inside exception groups.
BUG_ASSERTION = pytest.RaisesGroup(AssertionError, allow_unwrapped=True, flatten_subgroups=True)

HANDSHAKE_TIMEOUT = 0.5
MAX_STREAMS = 16
PEER_WINDOW = 262144  # what the raw peer grants the server per stream
SERVER_WINDOW = 262144  # what the server grants the peer per stream (pinned)
MiB = 1024 * 1024

# --- a raw WebSocket client, framed by hand --------------------------------------------


class PeerClosed(Exception):
    """The server closed the WebSocket (``code``: the close frame's code, None: no frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed with code {code}: {reason}")
        self.code = code
        self.reason = reason


def ws_frame(
    payload: bytes, *, opcode: int = 0x2, fin: bool = True, declared: int | None = None
) -> bytes:
    """A masked client frame; ``declared`` overrides the length in the header (lies allowed)."""
    length = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def upgrade_request(path: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")


class RawWebSocket:
    """A WebSocket client over a plain TCP stream, every byte under the test's control."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self.tcp = tcp
        self._buffer = bytearray()
        self.pending: list[Frame] = []

    async def _fill(self) -> None:
        try:
            data = await self.tcp.receive_some(256 * 1024)
        except trio.BrokenResourceError:
            raise PeerClosed(None, "reset") from None
        if not data:
            raise PeerClosed(None, "EOF")
        self._buffer += data

    async def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def upgrade(self, path: str = "/") -> bytes:
        """Send the upgrade request; returns the response head (status line and headers)."""
        await self.tcp.send_all(upgrade_request(path))
        while b"\r\n\r\n" not in self._buffer:
            await self._fill()
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer = bytearray(rest)
        return head

    async def send_message(self, payload: bytes, opcode: int = 0x2) -> None:
        await self.tcp.send_all(ws_frame(payload, opcode=opcode))

    async def send_tunnel(self, *frames: bytes) -> None:
        await self.send_message(b"".join(frames))

    async def next_message(self) -> bytes:
        """The next binary message; :class:`PeerClosed` at a close frame or end of stream."""
        while True:
            first, second = await self._take(2)
            opcode = first & 0x0F
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self._take(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self._take(8))
            payload = await self._take(length)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise PeerClosed(code, payload[2:].decode("utf-8", "replace"))
            if opcode == 0x2:
                return payload
            # Pings and pongs of the WebSocket layer: the server sends none; ignore them.

    async def next_frame(self, *skip: FrameType) -> Frame:
        """The next tunnel frame, skipping PING and the types in ``skip``."""
        while True:
            if not self.pending:
                self.pending = decode_frames(await self.next_message())
            frame = self.pending.pop(0)
            if frame.type not in skip and frame.type is not FrameType.PING:
                return frame

    async def hello(self, client_id: int = 2) -> None:
        """The tunnel handshake: HELLO, then WELCOME and the first state message."""
        body = {
            "protocol": PROTOCOL_NAME,
            "version": PROTOCOL_VERSION,
            "role": "client",
            "client_id": client_id,
            "window": PEER_WINDOW,
            "listen": [],
            "connect": [],
        }
        await self.send_tunnel(encode_frame(FrameType.HELLO, 0, 0, encode_json(body)))
        welcome = await self.next_frame()
        assert welcome.type is FrameType.WELCOME, welcome
        assert "error" not in decode_json(welcome.payload, "WELCOME")
        state = await self.next_frame()
        assert state.type is FrameType.CONTROL, state

    async def close_code(self, timeout: float = 10) -> int | None:
        """Read (and drop) everything until the server closes; returns the close code."""
        with trio.fail_after(timeout):
            try:
                while True:
                    await self.next_message()
            except PeerClosed as closed:
                return closed.code


@asynccontextmanager
async def raw_websocket(port: int) -> AsyncIterator[RawWebSocket]:
    tcp = await trio.open_tcp_stream(LOCALHOST, port)
    try:
        yield RawWebSocket(tcp)
    finally:
        await trio.aclose_forcefully(tcp)


@asynccontextmanager
async def raw_session(port: int, client_id: int = 2) -> AsyncIterator[RawWebSocket]:
    """A raw WebSocket past the upgrade and the tunnel handshake (as standby client 2)."""
    async with raw_websocket(port) as ws:
        head = await ws.upgrade()
        assert head.startswith(b"HTTP/1.1 101"), head
        await ws.hello(client_id)
        yield ws


async def read_all(tcp: trio.SocketStream) -> tuple[bytes, str]:
    """Everything the server sends until it closes ("eof") or resets ("reset")."""
    data, end = await read_to_end(tcp)
    return data, end


# --- the rig: a server, a good client, services, and traffic that must keep flowing ----------


@attrs.define
class Hostile:
    rig: Rig
    echo: int
    held: list[trio.SocketStream]  # connections accepted by the "hold" service
    release: trio.Event  # set: the hold service closes what it holds

    @property
    def ws_port(self) -> int:
        return self.rig.server.websocket_port

    def good_client_unchanged(self, connected_at: float) -> None:
        state = self.rig.server.state
        assert state.active == 1
        assert state.clients[1].connected_at == connected_at, "the good client was replaced"


async def echo_through(port: int, size: int) -> None:
    payload = os.urandom(size)

    async def send(tcp: trio.SocketStream) -> None:
        await tcp.send_all(payload)
        await tcp.send_eof()

    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp, trio.open_nursery() as nursery:
        nursery.start_soon(send, tcp)
        data, end = await read_to_end(tcp)
    assert end == "eof", f"good stream ended with {end} after {len(data)} of {size} bytes"
    assert data == payload, "good stream corrupted"


@asynccontextmanager
async def good_traffic(hostile: Hostile) -> AsyncIterator[list[int]]:
    """Loop echo transfers through the good client for the whole block; all must succeed."""
    done: list[int] = []
    connected_at = hostile.rig.server.state.clients[1].connected_at
    stop = trio.Event()

    async def loop() -> None:
        size = 64 * 1024
        while not stop.is_set():
            await echo_through(hostile.rig.server_port("down"), size)
            done.append(size)
            size = min(size * 2, 2 * MiB)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        yield done
        stop.set()
    # At least one transfer overlapped the attack and one more ran after it.
    await echo_through(hostile.rig.server_port("down"), 256 * 1024)
    assert done, "no good transfer completed during the attack"
    hostile.good_client_unchanged(connected_at)


def hostile_server(handshake_timeout: float) -> tt.Config:
    config = server_config(listen={"down": 0})
    ws = attrs.evolve(config.websocket, handshake_timeout_secs=handshake_timeout)
    return attrs.evolve(
        config,
        websocket=ws,
        streams=tt.StreamSettings(window_bytes=SERVER_WINDOW, max_streams_per_session=MAX_STREAMS),
    )


@asynccontextmanager
async def open_hostile(handshake_timeout: float = HANDSHAKE_TIMEOUT) -> AsyncIterator[Hostile]:
    held: list[trio.SocketStream] = []
    release = trio.Event()

    async def hold(tcp: trio.SocketStream) -> None:
        """Accept, never read, close when released."""
        held.append(tcp)
        await release.wait()

    async with trio.open_nursery() as nursery:
        echo = await start_service(nursery, echo_handler)
        hold_port = await start_service(nursery, hold)
        config = hostile_server(handshake_timeout)
        config = attrs.evolve(
            config,
            connect=(
                tt.Connect(tunnel="up", host=LOCALHOST, port=echo),
                tt.Connect(tunnel="hold", host=LOCALHOST, port=hold_port),
            ),
        )
        async with open_rig(config, [client_config(1, 0, connect={"down": echo})]) as rig:
            yield Hostile(rig, echo, held, release)
            release.set()
        nursery.cancel_scope.cancel()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="trio_tunnel")
    yield caplog


def matching(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.INFO) -> int:
    return sum(
        1 for record in caplog.records if record.levelno >= level and text in record.getMessage()
    )


async def wait_logged(
    caplog: pytest.LogCaptureFixture,
    text: str,
    count: int = 1,
    *,
    level: int = logging.INFO,
    timeout: float = 10,
) -> None:
    """Wait until ``text`` was logged ``count`` times, then check it is not logged again."""
    with trio.fail_after(timeout):
        while matching(caplog, text, level) < count:
            await trio.sleep(0.02)
    await trio.sleep(0.2)
    assert matching(caplog, text, level) == count, [
        r.getMessage() for r in caplog.records if text in r.getMessage()
    ]


# --- before the upgrade --------------------------------------------------------------


async def test_random_bytes_are_closed(logs: pytest.LogCaptureFixture) -> None:
    """Garbage instead of HTTP: answered 400 (h11 gives up) or closed at the handshake timeout."""
    rng = random.Random(7)
    sizes = [1, 100, 4096, 20000, 70000]
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            for size in sizes:
                async with await trio.open_tcp_stream(LOCALHOST, hostile.ws_port) as tcp:
                    await tcp.send_all(rng.randbytes(size))
                    with trio.fail_after(5):
                        answer, _end = await read_all(tcp)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
            # One line per connection, naming the peer, whatever ended it (a 400 answered by
            # the WebSocket layer, or the handshake timeout).
            await wait_logged(logs, "refused 127.0.0.1:", len(sizes))


async def test_plain_http_get_is_answered_4xx_and_closed(logs: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with await trio.open_tcp_stream(LOCALHOST, hostile.ws_port) as tcp:
                await tcp.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                with trio.fail_after(5):
                    answer, end = await read_all(tcp)
            assert answer.startswith(b"HTTP/1.1 4"), answer
            assert end == "eof"
            await wait_logged(logs, "not a valid WebSocket upgrade request", 1)


async def test_unfinished_request_line_is_closed_after_the_handshake_timeout(
    logs: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with await trio.open_tcp_stream(LOCALHOST, hostile.ws_port) as tcp:
                await tcp.send_all(b"GET / HTT")
                started = trio.current_time()
                with trio.fail_after(10):
                    answer, _end = await read_all(tcp)
                waited = trio.current_time() - started
            assert answer == b""
            # Only a lower bound: it was the timeout that closed it, not a parse error.
            assert waited >= HANDSHAKE_TIMEOUT * 0.8
            await wait_logged(logs, f"no WebSocket upgrade within {HANDSHAKE_TIMEOUT:g}s", 1)


async def test_200_half_open_connections_while_clients_keep_working(
    nursery: trio.Nursery, logs: pytest.LogCaptureFixture
) -> None:
    """A flood of unfinished upgrades: the good client carries streams and a new client
    connects while they hang; every one of them is closed at the handshake timeout."""
    flood = 200
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(40):
        async with open_hostile(handshake_timeout=3.0) as hostile:
            sockets: list[trio.SocketStream] = []
            try:
                for index in range(flood):
                    tcp = await trio.open_tcp_stream(LOCALHOST, hostile.ws_port)
                    sockets.append(tcp)
                    await tcp.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-N: %d" % index)
                async with good_traffic(hostile) as done:
                    # A second real client completes its handshake through the flood.
                    client = await start_client(
                        hostile.rig,
                        client_config(
                            2, hostile.ws_port, connect={"down": echo}, handshake_timeout_secs=3.0
                        ),
                    )
                    assert client.connected
                    with trio.fail_after(10):
                        while len(done) < 2:
                            await trio.sleep(0.01)
                ends: list[str] = []

                async def closed(tcp: trio.SocketStream) -> None:
                    answer, end = await read_all(tcp)
                    assert answer == b""
                    ends.append(end)

                with trio.fail_after(20):
                    async with trio.open_nursery() as waiters:
                        for tcp in sockets:
                            waiters.start_soon(closed, tcp)
                assert len(ends) == flood
            finally:
                for tcp in sockets:
                    await trio.aclose_forcefully(tcp)
            await wait_logged(logs, "no WebSocket upgrade within 3s", flood)
            assert set(hostile.rig.server.state.clients) == {1, 2}


async def test_unknown_path_is_refused_with_404(logs: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_websocket(hostile.ws_port) as ws:
                head = await ws.upgrade("/not/the/tunnel")
                assert head.startswith(b"HTTP/1.1 404"), head
            await wait_logged(logs, "unknown path '/not/the/tunnel'", 1, level=logging.WARNING)
            assert hostile.rig.server.metrics.refused_peers["unknown_path"] == 1


async def test_refused_upgrades_are_logged_with_the_peer_and_the_cause(
    logs: pytest.LogCaptureFixture,
) -> None:
    """STYLE: a refused peer is logged with who and why."""
    with trio.fail_after(30):
        async with open_hostile() as hostile:
            async with await trio.open_tcp_stream(LOCALHOST, hostile.ws_port) as tcp:
                local_port = tcp.socket.getsockname()[1]
                await tcp.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer, _end = await read_all(tcp)
            await trio.sleep(HANDSHAKE_TIMEOUT + 0.3)
    # Asserted outside the rig's nursery, so a failure is a plain AssertionError.
    assert answer.startswith(b"HTTP/1.1 400")
    lines = [r.getMessage() for r in logs.records if r.name.startswith("trio_tunnel.websocket")]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{local_port}" in lines[0], lines
    assert "no WebSocket upgrade within" not in lines[0], lines


# --- after a valid handshake ---------------------------------------------------------


def _undecodable(rng: random.Random, count: int) -> list[bytes]:
    """Random messages the frame decoder rejects (almost all random messages)."""
    found: list[bytes] = []
    while len(found) < count:
        message = rng.randbytes(rng.choice([1, 5, 16, 17, 18, 40, 300, 5000]))
        try:
            decode_frames(message)
        except tt.RemoteProtocolError:
            found.append(message)
    return found


async def test_random_binary_messages_close_that_session_with_1002(
    logs: pytest.LogCaptureFixture,
) -> None:
    messages = _undecodable(random.Random(11), 12)
    with trio.fail_after(40):
        async with open_hostile() as hostile, good_traffic(hostile):
            for message in messages:
                async with raw_session(hostile.ws_port) as ws:
                    await ws.send_message(message)
                    assert await ws.close_code() == 1002
            await wait_logged(
                logs, "client 2: protocol error from peer", len(messages), level=logging.WARNING
            )


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"\x11\x00\x00", id="3-byte-header"),
        pytest.param(encode_header(FrameType.DATA, 1, 0, 10) + b"abc", id="short-payload"),
        pytest.param(
            encode_frame(FrameType.PING, 0, 1) + encode_header(FrameType.PING, 0, 2, 0)[:9],
            id="frame-then-half-a-header",
        ),
        pytest.param(
            encode_frame(FrameType.OPEN, 1, 0, "up") + encode_header(FrameType.DATA, 1, 0, 5),
            id="open-then-data-header-only",
        ),
    ],
)
async def test_truncated_frames_close_that_session_with_1002(
    message: bytes, logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                await ws.send_message(message)
                assert await ws.close_code() == 1002
            await wait_logged(logs, "protocol error from peer", 1, level=logging.WARNING)
            # A truncated frame is never half-acted upon: no stream was opened to "up".
            assert hostile.rig.server.metrics.tunnel("up").streams_total == 0


async def test_frames_for_streams_that_do_not_exist_are_ignored(
    logs: pytest.LogCaptureFixture,
) -> None:
    junk = [
        encode_frame(FrameType.DATA, 99, 0, b"x" * 100),
        encode_frame(FrameType.EOF, 97, 3),
        encode_frame(FrameType.WINDOW, 77, 1000),
        encode_frame(FrameType.RESET, 75, 1, "nothing"),
        encode_frame(FrameType.DATA, 2, 5, b"even ids are the server's"),
    ]
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                for _ in range(50):
                    await ws.send_tunnel(*junk)
                # The session is kept: a ping is answered, and a real stream echoes.
                await ws.send_tunnel(encode_frame(FrameType.PING, 0, 4242))
                pong = await ws.next_frame()
                assert (pong.type, pong.arg) == (FrameType.PONG, 4242)
                await ws.send_tunnel(
                    encode_frame(FrameType.OPEN, 1, 0, "up"),
                    encode_frame(FrameType.DATA, 1, 0, b"still a session"),
                    encode_frame(FrameType.EOF, 1, 1),
                )
                data = await ws.next_frame(FrameType.WINDOW)
                assert (data.type, bytes(data.payload)) == (FrameType.DATA, b"still a session")
                eof = await ws.next_frame(FrameType.WINDOW)
                assert (eof.type, eof.stream_id) == (FrameType.EOF, 1)
            await wait_logged(logs, "ignoring DATA for closed or unknown stream 99", 1)
            assert matching(logs, "logged once per session") == 1


@pytest.mark.parametrize(
    "frame_type", [FrameType.DATA, FrameType.OPEN, FrameType.CONTROL, FrameType.RESET]
)
async def test_frame_header_declaring_4_gib_then_silence_closes_with_1002(
    frame_type: FrameType, logs: pytest.LogCaptureFixture
) -> None:
    """A tunnel frame cannot span messages: the message ends, so the frame is truncated."""
    stream = 0 if frame_type is FrameType.CONTROL else 1
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                await ws.send_tunnel(encode_header(frame_type, stream, 0, 2**32 - 1))
                assert await ws.close_code() == 1002
            await wait_logged(logs, "protocol error from peer", 1, level=logging.WARNING)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(encode_frame(FrameType.CONTROL, 0, 0, b"{not json"), id="control-not-json"),
        pytest.param(encode_frame(FrameType.CONTROL, 0, 0, b"[1, 2]"), id="control-not-object"),
        pytest.param(
            encode_frame(FrameType.CONTROL, 0, 0, encode_json({"type": "bogus"})),
            id="control-unknown-type",
        ),
        pytest.param(
            encode_frame(FrameType.HELLO, 0, 0, encode_json({"protocol": PROTOCOL_NAME})),
            id="hello-again",
        ),
        pytest.param(encode_frame(FrameType.OPEN, 2, 0, "up"), id="open-with-the-server-parity"),
        pytest.param(
            encode_frame(FrameType.OPEN, 5, 0, "up") + encode_frame(FrameType.OPEN, 3, 0, "up"),
            id="open-reusing-an-old-id",
        ),
        pytest.param(
            encode_header(FrameType.RESET, 1, 1, 2) + b"\xff\xfe", id="reset-reason-not-utf8"
        ),
        pytest.param(encode_header(FrameType.DATA, 0, 0, 1) + b"x", id="data-on-stream-0"),
        pytest.param(encode_header(FrameType.PING, 0, 1, 1) + b"x", id="ping-with-payload"),
        pytest.param(struct.pack("!BIQI", 99, 1, 0, 0), id="unknown-frame-type"),
    ],
)
async def test_session_level_violations_close_that_session_with_1002(
    message: bytes, logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                await ws.send_message(message)
                assert await ws.close_code() == 1002
            await wait_logged(logs, "client 2: protocol error from peer", 1, level=logging.WARNING)


async def test_text_messages_close_that_session_with_1003(logs: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                await ws.send_message(b'{"type": "activate"}', opcode=0x1)
                assert await ws.close_code() == 1003
            await wait_logged(
                logs,
                "protocol error from peer: text message on a binary tunnel",
                1,
                level=logging.WARNING,
            )


async def test_open_flood_beyond_max_streams_is_refused_per_stream(
    logs: pytest.LogCaptureFixture,
) -> None:
    extra = 200
    with trio.fail_after(40):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                ids = list(range(1, 2 * (MAX_STREAMS + extra), 2))
                for batch in range(0, len(ids), 20):
                    await ws.send_tunnel(
                        *(
                            encode_frame(FrameType.OPEN, i, 0, "hold")
                            for i in ids[batch : batch + 20]
                        )
                    )
                refused: set[int] = set()
                with trio.fail_after(20):
                    while len(refused) < extra:
                        frame = await ws.next_frame(FrameType.WINDOW)
                        assert frame.type is FrameType.RESET, frame
                        assert "max_streams_per_session" in frame.text()
                        refused.add(frame.stream_id)
                assert refused == set(ids[MAX_STREAMS:])
                with trio.fail_after(10):
                    while len(hostile.held) < MAX_STREAMS:
                        await trio.sleep(0.01)
                # The session is kept, and once streams end new ones are accepted again.
                await ws.send_tunnel(
                    *(encode_frame(FrameType.RESET, i, 1, "done") for i in ids[:MAX_STREAMS])
                )
                with trio.fail_after(10):
                    while hostile.rig.server.state.clients[2].streams:
                        await trio.sleep(0.01)
                next_id = ids[-1] + 2
                await ws.send_tunnel(
                    encode_frame(FrameType.OPEN, next_id, 0, "up"),
                    encode_frame(FrameType.DATA, next_id, 0, b"after the flood"),
                    encode_frame(FrameType.EOF, next_id, 1),
                )
                data = await ws.next_frame(FrameType.WINDOW)
                assert (data.type, data.stream_id) == (FrameType.DATA, next_id)
                assert bytes(data.payload) == b"after the flood"
            assert len(hostile.held) == MAX_STREAMS  # refused streams never reached the service
            # One line per refused stream, none for the session.
            await wait_logged(logs, "refused: too many streams", extra, level=logging.WARNING)
            assert matching(logs, "protocol error from peer") == 0


async def test_open_flood_in_one_message_past_the_frame_bound_closes_with_1008(
    logs: pytest.LogCaptureFixture,
) -> None:
    """Thousands of refusals owed at once: more frames in one message than a peer may send
    (4,096): the peer floods, the session ends (policy). Under the bound the refusals are
    answered in slices, the writer draining between them."""
    count = 4097
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                await ws.send_tunnel(
                    *(encode_frame(FrameType.OPEN, 2 * i + 1, 0, "hold") for i in range(count))
                )
                assert await ws.close_code() == 1008
            await wait_logged(
                logs, "protocol error from peer: more than 4096 frames", 1, level=logging.WARNING
            )


async def test_data_beyond_the_window_closes_that_session_with_1002(
    logs: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                chunk = b"w" * 60000
                frames = [encode_frame(FrameType.OPEN, 1, 0, "hold")]
                frames += [encode_frame(FrameType.DATA, 1, seq, chunk) for seq in range(5)]
                # 300 kB > the 256 KiB granted, and the service reads none of it
                await ws.send_tunnel(*frames)
                assert await ws.close_code() == 1002
            await wait_logged(
                logs, "protocol error from peer: window violation", 1, level=logging.WARNING
            )
            assert matching(logs, "protocol error from peer") == 1


async def test_window_grant_beyond_the_window_closes_that_session_with_1002(
    logs: pytest.LogCaptureFixture,
) -> None:
    """WINDOW raising the server's credit above what the peer ever granted."""
    with trio.fail_after(30):
        async with open_hostile() as hostile, good_traffic(hostile):
            async with raw_session(hostile.ws_port) as ws:
                await ws.send_tunnel(
                    encode_frame(FrameType.OPEN, 1, 0, "hold"),
                    encode_frame(FrameType.WINDOW, 1, 1),
                )
                assert await ws.close_code() == 1002
            await wait_logged(
                logs, "protocol error from peer: WINDOW raises credit", 1, level=logging.WARNING
            )


# --- a WebSocket frame declaring 1 TiB, against a server process --------------------------


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident (VmRSS) or peak resident (VmHWM) size of a process, from Linux /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[TunnelProcess, int]]:
    port = free_port()
    extra = "handshake_timeout_secs = 1\nping_interval_secs = 0.5\nping_timeout_secs = 2\n"
    proc = TunnelProcess("server", toml_config("server", port, extra=extra), tmp_path)
    yield proc, port
    proc.close()


@pytest.mark.system
async def test_websocket_frame_declaring_1_tib_is_never_allocated(
    server_process: tuple[TunnelProcess, int],
) -> None:
    """Before the tunnel handshake (closed by its timeout), after it with silence (closed by
    the ping timeout), and after it followed by data (closed at the 4 MiB message size): the
    server's RSS stays flat, and 1 TiB is never asked of the allocator."""
    proc, port = server_process
    assert proc.proc is not None
    pid = proc.proc.pid
    tib = 1 << 40
    with trio.fail_after(60):
        await proc.wait_log("server listening")
        baseline = rss_bytes(pid)

        # 1. Before HELLO: the tunnel handshake times out (1 s) and the server says so.
        async with raw_websocket(port) as ws:
            assert (await ws.upgrade()).startswith(b"HTTP/1.1 101")
            await ws.tcp.send_all(ws_frame(b"", declared=tib))
            assert await ws.close_code() == 1008
        await proc.wait_log("refused 127.0.0.1:[0-9]+: handshake timed out")

        # 2. After the handshake, silence: the ping timeout (2 s) ends the session.
        async with raw_websocket(port) as ws:
            assert (await ws.upgrade()).startswith(b"HTTP/1.1 101")
            await ws.hello(client_id=1)
            await ws.tcp.send_all(ws_frame(b"", declared=tib))
            assert await ws.close_code() == 1001
        await proc.wait_log("client 1: peer silent for")

        # 3. After the handshake, 12 MiB of the 1 TiB: closed at the maximum message size.
        async with raw_websocket(port) as ws:
            assert (await ws.upgrade()).startswith(b"HTTP/1.1 101")
            await ws.hello(client_id=1)
            await ws.tcp.send_all(ws_frame(b"", declared=tib))
            block = bytes(64 * 1024)
            sent = 0
            try:
                while sent < 12 * MiB:
                    await ws.tcp.send_all(block)
                    sent += len(block)
            except trio.BrokenResourceError:
                pass  # the server closed and reset the rest
            assert await ws.close_code() in (1009, None)  # None: the close frame lost to RST
        await proc.wait_log("1009")
        await trio.sleep(0.3)
        after = rss_bytes(pid)
        peak = rss_bytes(pid, "VmHWM")
    print(
        f"\nserver RSS: {baseline / MiB:.1f} MiB before, {after / MiB:.1f} MiB after, "
        f"peak {peak / MiB:.1f} MiB"
    )
    # At most one 4 MiB message was ever buffered; allow for allocator slack.
    assert peak - baseline < 24 * MiB
    assert after - baseline < 16 * MiB
    log = proc.log()
    assert "Traceback" not in log
    assert log.count("handshake timed out") == 1
    assert log.count("peer silent for") == 1
    assert proc.proc.poll() is None
