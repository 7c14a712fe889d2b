"""Two processes claiming one client id do not take turns forever (issue 12, item 3).

In process: one server, and two real clients configured with the same id. A quick restart
(a newcomer while the old session still looks alive) replaces the session at once; past a few
replacements within a minute, the server keeps the holder, refuses the newcomer at the tunnel
handshake with a reason the client logs, and logs an ERROR naming both addresses.
"""

from __future__ import annotations

import logging
import os

import pytest
import trio

from trio_tunnel import open_client
from trio_tunnel._server import REPLACEMENTS_BEFORE_BACKOFF

from .helpers import (
    LOCALHOST,
    client_config,
    echo_handler,
    open_rig,
    read_to_end,
    server_config,
    start_client,
    start_service,
)
from .test_hostile import raw_session

MiB = 1024 * 1024


async def echo_through(port: int, size: int) -> None:
    payload = os.urandom(size)

    async def send(tcp: trio.SocketStream) -> None:
        await tcp.send_all(payload)
        await tcp.send_eof()

    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp, trio.open_nursery() as nursery:
        nursery.start_soon(send, tcp)
        data, end = await read_to_end(tcp)
    assert (end, data == payload) == ("eof", True), f"{end} after {len(data)} of {size} bytes"


async def test_two_processes_with_one_id_stop_replacing_each_other(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tunnel")
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(40):
        async with open_rig(server_config(listen={"down": 0})) as rig:
            server = rig.server
            port = server.websocket_port
            await start_client(rig, client_config(1, port, connect={"down": echo}))
            # The second process with the same id (started by hand: the rig keys clients by id).
            second_scope = trio.CancelScope()

            async def run_second() -> None:
                with second_scope:
                    async with open_client(client_config(1, port, connect={"down": echo})):
                        await trio.sleep_forever()

            nursery.start_soon(run_second)
            with trio.fail_after(20):
                while server.metrics.refused_peers["id_in_use"] < 1:
                    await trio.sleep(0.01)
            holder = server.state.clients[1]
            # They took turns a few times, then stopped: the holder stays, newcomers are
            # refused, and a long transfer through the holder completes.
            replacements = sum("replaces the one from" in r.getMessage() for r in caplog.records)
            assert replacements == REPLACEMENTS_BEFORE_BACKOFF
            await echo_through(rig.server_port("down"), 8 * MiB)
            with trio.fail_after(10):
                while server.metrics.refused_peers["id_in_use"] < 3:
                    await trio.sleep(0.01)
            assert server.state.clients[1] == holder
            assert server.state.active == 1
            assert (
                sum("replaces the one from" in r.getMessage() for r in caplog.records)
                == REPLACEMENTS_BEFORE_BACKOFF
            )
            second_scope.cancel()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert holder.remote in errors[0]
    assert errors[0].count("127.0.0.1:") >= 2  # both addresses
    # The refused client logged the server's reason (once: it does not change).
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_tunnel.client" and "is in use by a live session" in r.getMessage()
    ]
    assert refused, "the refused client did not log why"
    assert all("refused by server: client id 1" in line for line in refused)


async def test_a_quick_restart_still_replaces_at_once(nursery: trio.Nursery) -> None:
    """The old session still looks alive (its process hung up without a close): one
    replacement, at once, no refusal."""
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(30):
        async with open_rig(server_config(listen={"down": 0})) as rig:
            port = rig.server.websocket_port
            async with raw_session(port, client_id=1):
                assert rig.server.state.connected == (1,)
                old = rig.server.state.clients[1]
                client = await start_client(rig, client_config(1, port, connect={"down": echo}))
                assert client.connected
                assert rig.server.state.clients[1].remote != old.remote
                await echo_through(rig.server_port("down"), 64 * 1024)
            assert rig.server.metrics.refused_peers["id_in_use"] == 0
            # And restarting it again (its session ended first) connects at once too.
            await rig.stop_client(1)
            with trio.fail_after(10):
                await rig.server.wait_state(lambda state: not state.clients)
            await start_client(rig, client_config(1, port, connect={"down": echo}))
            assert rig.server.metrics.refused_peers["id_in_use"] == 0
