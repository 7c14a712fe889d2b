"""In-process tunnels through real sockets on 127.0.0.1: data, half-close, reset, fairness."""

from __future__ import annotations

import hashlib
import os
import statistics
import time

import trio

import trio_tunnel as tt

from .helpers import (
    LOCALHOST,
    client_config,
    closed_port,
    drain,
    echo_handler,
    open_rig,
    read_to_end,
    reset_socket,
    send_pattern,
    server_config,
    start_service,
)


async def _one_client_rig_ports(nursery: trio.Nursery) -> int:
    return await start_service(nursery, echo_handler)


async def test_echo_both_directions(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}, connect={"up": echo}),
            [client_config(1, 0, listen={"up": 0}, connect={"down": echo})],
        ) as rig:
            for port in (rig.server_port("down"), rig.client_port(1, "up")):
                async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                    await tcp.send_all(b"hello tunnel")
                    await tcp.send_eof()
                    data, end = await read_to_end(tcp)
                assert (data, end) == (b"hello tunnel", "eof")


async def _sha_transfer(port: int, size: int) -> tuple[float, bool, str]:
    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            sent: list[bytes] = []

            async def send() -> None:
                sent.append(await send_pattern(tcp, size))

            nursery.start_soon(send)
            received, end, digest = await drain(tcp)
        elapsed = time.perf_counter() - started
    return size / elapsed / 1e6, received == size and digest == sent[0], end


async def test_100_mib_each_way_sha256(nursery: trio.Nursery) -> None:
    """100 MiB through each tunnel direction, echoed back, SHA-256 compared at the far end."""
    echo = await start_service(nursery, echo_handler)
    size = 100 * 1024 * 1024
    with trio.fail_after(180):
        async with open_rig(
            server_config(listen={"down": 0}, connect={"up": echo}),
            [client_config(1, 0, listen={"up": 0}, connect={"down": echo})],
        ) as rig:
            for name, port in (
                ("server->client", rig.server_port("down")),
                ("client->server", rig.client_port(1, "up")),
            ):
                rate, ok, end = await _sha_transfer(port, size)
                print(f"\n100 MiB {name} and back: {rate:.1f} MB/s each way (one process)")
                assert ok, f"{name}: data corrupted or truncated"
                assert end == "eof"


async def test_1000_ping_pongs(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(60):
        async with open_rig(
            server_config(listen={"down": 0}),
            [client_config(1, 0, connect={"down": echo})],
        ) as rig:
            message = os.urandom(500)
            times = []
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
                for _ in range(1000):
                    started = time.perf_counter()
                    await tcp.send_all(message)
                    got = b""
                    while len(got) < len(message):
                        got += await tcp.receive_some(len(message) - len(got))
                    times.append(time.perf_counter() - started)
                    assert got == message
            print(
                f"\n1000 x 500 B round trips: median {statistics.median(times) * 1e3:.3f} ms, "
                f"p99 {sorted(times)[989] * 1e3:.3f} ms"
            )


async def test_50_concurrent_1_mib_echoes(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(60):
        async with open_rig(
            server_config(listen={"down": 0}),
            [client_config(1, 0, connect={"down": echo})],
        ) as rig:
            results: list[bool] = []

            async def one() -> None:
                _rate, ok, end = await _sha_transfer(rig.server_port("down"), 1024 * 1024)
                results.append(ok and end == "eof")

            async with trio.open_nursery() as inner:
                for _ in range(50):
                    inner.start_soon(one)
            assert results == [True] * 50


async def test_half_close_keeps_other_direction(nursery: trio.Nursery) -> None:
    """EOF from the application reaches the service as EOF; the service still answers."""
    seen: list[tuple[bytes, str]] = []

    async def reply_after_eof(tcp: trio.SocketStream) -> None:
        data, end = await read_to_end(tcp)
        seen.append((data, end))
        await trio.sleep(0.1)
        for _ in range(5):
            await tcp.send_all(b"answer " + data + b"\n")
        await tcp.send_eof()
        await tcp.aclose()

    service = await start_service(nursery, reply_after_eof)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}, connect={"up": service}),
            [client_config(1, 0, listen={"up": 0}, connect={"down": service})],
        ) as rig:
            for port in (rig.server_port("down"), rig.client_port(1, "up")):
                async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                    await tcp.send_all(b"question")
                    await tcp.send_eof()
                    data, end = await read_to_end(tcp)
                assert end == "eof"
                assert data == b"answer question\n" * 5
                assert seen.pop() == (b"question", "eof")


async def test_refused_target_resets() -> None:
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}),
            [client_config(1, 0, connect={"down": closed_port()})],
        ) as rig:
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
                await tcp.send_all(b"anyone there?")
                _data, end = await read_to_end(tcp)
            assert end == "reset"


async def test_unknown_tunnel_resets_and_session_survives(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"nowhere": 0, "down": 0}),
            [client_config(1, 0, connect={"down": echo})],
        ) as rig:
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("nowhere")) as tcp:
                _data, end = await read_to_end(tcp)
            assert end == "reset"
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
                await tcp.send_all(b"still fine")
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"still fine", "eof")
            assert rig.clients[1].connected


async def test_service_reset_mid_transfer_reaches_app_as_reset(nursery: trio.Nursery) -> None:
    async def reset_after_some(tcp: trio.SocketStream) -> None:
        await tcp.send_all(os.urandom(200_000))
        await tcp.receive_some(10)
        reset_socket(tcp)

    service = await start_service(nursery, reset_after_some)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}),
            [client_config(1, 0, connect={"down": service})],
        ) as rig:
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
                await tcp.send_all(b"go")
                _received, end, _digest = await drain(tcp)
            assert end == "reset"


async def test_lost_websocket_resets_streams(nursery: trio.Nursery) -> None:
    """A transfer cut by the loss of the client must end in a reset, never a clean EOF."""

    async def endless(tcp: trio.SocketStream) -> None:
        block = os.urandom(64 * 1024)
        try:
            while True:
                await tcp.send_all(block)
        except trio.BrokenResourceError:
            pass

    service = await start_service(nursery, endless)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}),
            [client_config(1, 0, connect={"down": service})],
        ) as rig:
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
                await tcp.receive_some(1024)
                await rig.stop_client(1)
                _received, end, _digest = await drain(tcp)
            assert end == "reset"


async def test_slow_reader_does_not_slow_other_streams(nursery: trio.Nursery) -> None:
    """One stream whose application never reads must not stall the WebSocket or its peers."""

    async def firehose(tcp: trio.SocketStream) -> None:
        block = b"x" * 65536
        try:
            while True:
                await tcp.send_all(block)
        except trio.BrokenResourceError:
            pass

    hose = await start_service(nursery, firehose)
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(60):
        async with (
            open_rig(
                server_config(listen={"hose": 0, "echo": 0}),
                [client_config(1, 0, connect={"hose": hose, "echo": echo})],
            ) as rig,
            await trio.open_tcp_stream(LOCALHOST, rig.server_port("hose")) as stuck,
        ):
            await stuck.receive_some(1)  # the stream is flowing; now never read again
            await trio.sleep(0.5)
            session = next(iter(rig.server.state.clients.values()))
            assert session.streams == 1
            # Another stream on the same WebSocket still moves 20 MiB promptly.
            rate, ok, end = await _sha_transfer(rig.server_port("echo"), 20 * 1024 * 1024)
            assert ok and end == "eof"
            print(f"\nsecond stream beside a stalled one: {rate:.1f} MB/s")
            # The stalled stream's buffering is bounded by its window.


async def test_streams_build_on_both_sides_with_many_concurrent(nursery: trio.Nursery) -> None:
    """300 concurrent streams over one WebSocket, each with its own payload, both directions."""
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(60):
        async with open_rig(
            server_config(listen={"down": 0}, connect={"up": echo}),
            [client_config(1, 0, listen={"up": 0}, connect={"down": echo})],
        ) as rig:
            failures: list[str] = []

            async def one(port: int, index: int) -> None:
                payload = hashlib.sha256(str(index).encode()).digest() * 512
                async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                    await tcp.send_all(payload)
                    await tcp.send_eof()
                    data, end = await read_to_end(tcp)
                if data != payload or end != "eof":
                    failures.append(f"stream {index}: {len(data)} bytes, {end}")

            async with trio.open_nursery() as inner:
                for index in range(300):
                    port = rig.server_port("down") if index % 2 else rig.client_port(1, "up")
                    inner.start_soon(one, port, index)
            assert failures == []
            assert rig.server.state.clients[1].streams == 0


def test_public_api_exports() -> None:
    for name in (
        "open_server",
        "open_client",
        "serve_server",
        "serve_client",
        "load_config",
        "Config",
        "ConfigError",
    ):
        assert hasattr(tt, name)


async def test_library_streams_need_no_local_socket(nursery: trio.Nursery) -> None:
    """Server.open_stream and Client.open_stream carry a stream to the far connect entry
    without a listen socket; with no client active the server refuses with a typed reset."""
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(30):
        async with open_rig(
            server_config(connect={"echo": echo}), [client_config(1, 0, connect={"echo": echo})]
        ) as rig:
            for opener in (rig.server, rig.clients[1]):
                stream = opener.open_stream("echo")
                payload = os.urandom(3 * 1024 * 1024)
                received = bytearray()

                async def send(stream: tt.AppStream = stream, payload: bytes = payload) -> None:
                    await stream.send_all(payload)
                    await stream.send_eof()

                async def receive(
                    stream: tt.AppStream = stream, received: bytearray = received
                ) -> None:
                    while chunk := await stream.receive_some():
                        received.extend(chunk)

                async with trio.open_nursery() as inner:
                    inner.start_soon(send)
                    inner.start_soon(receive)
                assert received == payload
                await stream.aclose()
    async with tt.open_server(server_config(connect={"echo": echo})) as lonely:
        try:
            lonely.open_stream("echo")
        except trio.BrokenResourceError as exc:
            assert isinstance(exc.__cause__, tt.StreamReset)
            assert exc.__cause__.code is tt.ResetCode.REFUSED
        else:
            raise AssertionError("opened a stream with no client connected")
