"""Failover in one process over real TCP: routing to the active client, data-triggered
switches, epochs across switches and server restarts.

Timing (close periods, loss of the active client, replacement of a session with the same id,
ping timeouts) is tested in virtual time in ``test_inmemory.py``; this module keeps what needs
tunnel data on real sockets.

Each client's ``down`` connect target is a service that first answers with its own tag, so a
new connection to the server's ``down`` port tells which client carried it. The server's
``up`` connect target answers ``up`` and then echoes, so a connection to a client's listener
is carried (the tag comes back) without the application sending any data.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import trio

import trio_tunnel as tt

from .helpers import (
    LOCALHOST,
    Rig,
    client_config,
    free_port,
    open_rig,
    server_config,
    start_client,
    start_service,
)

TAG_LEN = 3
TAG1 = b"c1\n"
TAG2 = b"c2\n"
TAG_UP = b"up\n"


def tag_handler(tag: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A service that sends ``tag`` at once, then echoes until EOF (FIN back)."""

    async def handler(tcp: trio.SocketStream) -> None:
        try:
            await tcp.send_all(tag)
            while data := await tcp.receive_some(256 * 1024):
                await tcp.send_all(data)
            await tcp.send_eof()
        except trio.BrokenResourceError:
            pass
        finally:
            await tcp.aclose()

    return handler


async def read_exact(tcp: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await tcp.receive_some(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


async def ask_tag(port: int, timeout: float = 2.0) -> bytes | None:
    """Open a new connection, send nothing, read the tag of whoever answers (None: nobody)."""
    with trio.move_on_after(timeout):
        try:
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                return await read_exact(tcp, TAG_LEN)
        except (OSError, trio.BrokenResourceError, AssertionError):
            return None
    return None


async def echo_once(tcp: trio.SocketStream, message: bytes) -> None:
    await tcp.send_all(message)
    assert await read_exact(tcp, len(message)) == message


async def _services(nursery: trio.Nursery) -> dict[str, int]:
    return {
        "up": await start_service(nursery, tag_handler(TAG_UP)),
        "tag1": await start_service(nursery, tag_handler(TAG1)),
        "tag2": await start_service(nursery, tag_handler(TAG2)),
    }


def _server(services: dict[str, int], close_secs: float) -> tt.Config:
    return server_config(
        listen={"down": 0},
        connect={"up": services["up"]},
        failover=tt.FailoverSettings(standby_socket_close_secs=close_secs),
    )


def _client(client_id: int, services: dict[str, int], ws_port: int = 0, **ws: float) -> tt.Config:
    return client_config(
        client_id, ws_port, listen={"up": 0}, connect={"down": services[f"tag{client_id}"]}, **ws
    )


async def _switch_by_data(rig: Rig, client_id: int) -> trio.SocketStream:
    """Send data into ``client_id``'s listener; returns the (still open) triggering stream."""
    tcp = await trio.open_tcp_stream(LOCALHOST, rig.client_port(client_id, "up"))
    assert await read_exact(tcp, TAG_LEN) == TAG_UP
    await echo_once(tcp, b"first data")
    await rig.server.wait_state(lambda s: s.active == client_id)
    return tcp


async def test_first_client_to_connect_becomes_active(nursery: trio.Nursery) -> None:
    services = await _services(nursery)
    with trio.fail_after(15):
        async with open_rig(_server(services, 1.0), [_client(1, services)]) as rig:
            # No data has been sent anywhere: connecting alone made client 1 active.
            state = await rig.server.wait_state(lambda s: s.active is not None)
            assert (state.active, state.connected) == (1, (1,))
            await rig.clients[1].wait_for("active")
            assert await ask_tag(rig.server_port("down")) == TAG1
            await start_client(rig, _client(2, services, rig.server.websocket_port))
            await rig.clients[2].wait_for("standby")
            state = rig.server.state
            assert (state.active, state.connected) == (1, (1, 2))
            assert await ask_tag(rig.server_port("down")) == TAG1


async def test_client_2_first_stays_active_when_client_1_connects(
    nursery: trio.Nursery,
) -> None:
    services = await _services(nursery)
    with trio.fail_after(15):
        async with open_rig(_server(services, 1.0)) as rig:
            ws_port = rig.server.websocket_port
            await start_client(rig, _client(2, services, ws_port))
            state = await rig.server.wait_state(lambda s: s.active is not None)
            assert state.active == 2
            epoch = state.epoch
            await start_client(rig, _client(1, services, ws_port))
            await rig.server.wait_state(lambda s: s.connected == (1, 2))
            await rig.clients[1].wait_for("standby")
            state = rig.server.state
            assert (state.active, state.epoch) == (2, epoch), "the primary took the role back"
            assert rig.clients[2].active
            assert await ask_tag(rig.server_port("down")) == TAG2


async def test_standby_listener_carries_streams_and_bare_connect_does_not_switch(
    nursery: trio.Nursery,
) -> None:
    services = await _services(nursery)
    with trio.fail_after(15):
        async with open_rig(
            _server(services, 1.0), [_client(1, services), _client(2, services)]
        ) as rig:
            await rig.clients[2].wait_for("standby")
            epoch = rig.server.state.epoch
            standby_port = rig.client_port(2, "up")
            # Health checks: connect, get the service's greeting, close without sending.
            for _ in range(3):
                assert await ask_tag(standby_port) == TAG_UP
            async with await trio.open_tcp_stream(LOCALHOST, standby_port) as tcp:
                assert await read_exact(tcp, TAG_LEN) == TAG_UP
                await tcp.send_eof()
                assert await tcp.receive_some(10) == b""
            # Every answer above came after the server handled that stream's OPEN and EOF on
            # client 2's WebSocket, so a switch they caused would already show here.
            state = rig.server.state
            assert (state.active, state.epoch) == (1, epoch), "a bare connect switched"
            assert await ask_tag(rig.server_port("down")) == TAG1

            # Data does switch, and the stream that carried it works normally.
            with trio.fail_after(1):
                tcp = await _switch_by_data(rig, 2)
            async with tcp:
                for i in range(5):
                    await echo_once(tcp, f"after the switch {i}".encode())
                await tcp.send_eof()
                assert await tcp.receive_some(10) == b""
            assert rig.server.state.epoch == epoch + 1
            assert await ask_tag(rig.server_port("down")) == TAG2


async def test_epoch_increases_on_every_switch(nursery: trio.Nursery) -> None:
    services = await _services(nursery)
    seen: list[tuple[int, int | None]] = []

    def record(state: tt.ServerState) -> bool:
        if not seen or seen[-1] != (state.epoch, state.active):
            seen.append((state.epoch, state.active))
        return False

    with trio.fail_after(20):
        async with open_rig(
            _server(services, 0.3), [_client(1, services), _client(2, services)]
        ) as rig:
            watcher = trio.CancelScope()

            async def watch() -> None:
                with watcher:
                    await rig.server.wait_state(record)

            nursery.start_soon(watch)
            epochs = [rig.server.state.epoch]
            await (await _switch_by_data(rig, 2)).aclose()  # data: 1 -> 2
            epochs.append(rig.server.state.epoch)
            await rig.clients[1].wait_for("listening")  # after its close period
            await (await _switch_by_data(rig, 1)).aclose()  # data: 2 -> 1
            epochs.append(rig.server.state.epoch)
            assert rig.clients[1].epoch == epochs[-1]
            await rig.stop_client(1)  # loss: 1 -> 2
            state = await rig.server.wait_state(lambda s: s.connected == (2,))
            assert state.active == 2
            epochs.append(state.epoch)
            await rig.clients[2].wait_for("active")
            assert rig.clients[2].epoch == epochs[-1]
            watcher.cancel()
    print(f"\nepochs after each switch: {epochs}; states seen (epoch, active): {seen}")
    assert all(a < b for a, b in itertools.pairwise(epochs)), epochs
    assert [e for e, _ in seen] == sorted(e for e, _ in seen), seen
    for (e1, a1), (e2, a2) in itertools.pairwise(seen):
        assert a1 == a2 or e2 > e1, f"active changed {a1} -> {a2} without a new epoch"


async def test_data_switch_still_works_after_a_server_restart(nursery: trio.Nursery) -> None:
    """Client 2 asked for the role at epoch 1 before the restart; the new server counts
    epochs from the start again, so client 2 meets epoch 1 again and must still ask."""
    services = await _services(nursery)
    ws_port = free_port()
    config = server_config(
        connect={"up": services["up"]},
        websocket=tt.WebSocketSettings(url=f"ws://127.0.0.1:{ws_port}/"),
    )

    async def run_server(
        scope: trio.CancelScope, *, task_status: trio.TaskStatus[tt.Server]
    ) -> None:
        with scope:
            async with tt.open_server(config) as server:
                task_status.started(server)
                await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            first = trio.CancelScope()
            server = await inner.start(run_server, first)
            # Client 1 reconnects at once, client 2 only after 0.5-1 s: client 1 is first back.
            fast = client_config(
                1,
                ws_port,
                listen={"up": 0},
                connect={"down": services["tag1"]},
                reconnect_min_secs=0.05,
                reconnect_max_secs=0.1,
            )
            slow = client_config(
                2,
                ws_port,
                listen={"up": 0},
                connect={"down": services["tag2"]},
                reconnect_min_secs=1.0,
                reconnect_max_secs=1.0,
            )
            client1: tt.Client = await inner.start(tt.serve_client, fast)
            await server.wait_state(lambda s: s.active == 1)
            client2: tt.Client = await inner.start(tt.serve_client, slow)
            await client2.wait_for("listening")
            rig = Rig(server, {1: client1, 2: client2}, inner, {})
            await (await _switch_by_data(rig, 2)).aclose()

            first.cancel()
            await client1.wait_for("disconnected")
            await client2.wait_for("disconnected")
            server = await inner.start(run_server, trio.CancelScope())
            rig.server = server
            state = await server.wait_state(lambda s: s.connected == (1, 2))
            assert state.active == 1, "precondition: client 1 reconnected first"
            await client2.wait_for("standby")
            await client2.wait_for("listening")
            with trio.move_on_after(2):
                await _switch_by_data(rig, 2)
            assert server.state.active == 2, (
                f"data on standby client 2's listener did not switch after the server restart "
                f"(server epoch {server.state.epoch}, client 2 epoch {client2.epoch})"
            )
            inner.cancel_scope.cancel()
