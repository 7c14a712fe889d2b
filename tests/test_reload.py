"""Reloading a config (what SIGHUP does): tunnels change live, open streams carry on."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio

import trio_tunnel as tt

from .helpers import (
    LOCALHOST,
    client_config,
    echo_handler,
    free_port,
    open_rig,
    read_to_end,
    server_config,
    start_service,
)
from .procs import port_refuses


async def _echo_once(port: int, payload: bytes = b"ping") -> None:
    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
        await tcp.send_all(payload)
        await tcp.send_eof()
        assert await read_to_end(tcp) == (payload, "eof")


async def test_server_reload_adds_and_removes_tunnels_keeping_open_streams(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_tunnel")
    echo = await start_service(nursery, echo_handler)
    old_port, new_port = free_port(), free_port()
    config = server_config(listen={"old": old_port, "kept": 0})
    with trio.fail_after(20):
        async with open_rig(
            config, [client_config(1, 0, connect={"old": echo, "kept": echo, "new": echo})]
        ) as rig:
            kept_port = rig.server_port("kept")
            async with await trio.open_tcp_stream(LOCALHOST, old_port) as open_stream:
                await open_stream.send_all(b"before")
                assert await open_stream.receive_some(6) == b"before"
                reloaded = attrs.evolve(
                    rig.server.config,
                    listen=(
                        tt.Listen(tunnel="kept", port=0),
                        tt.Listen(tunnel="new", port=new_port),
                    ),
                    websocket=attrs.evolve(rig.server.config.websocket, ping_interval_secs=1),
                )
                await rig.server.reload(reloaded)
                assert await port_refuses(old_port)
                assert rig.server_port("kept") == kept_port  # untouched, same port
                await _echo_once(new_port)
                await _echo_once(kept_port)
                # The stream accepted before the reload carries on to a clean end.
                await open_stream.send_all(b"after")
                await open_stream.send_eof()
                assert await read_to_end(open_stream) == (b"after", "eof")
    assert "websocket changed but cannot be applied" in caplog.text
    assert "added ['new'], removed ['old']" in caplog.text


async def test_client_reload_changes_listen_and_connect(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)

    async def upper(tcp: trio.SocketStream) -> None:
        data, _ = await read_to_end(tcp)
        await tcp.send_all(data.upper())
        await tcp.aclose()

    shout = await start_service(nursery, upper)
    with trio.fail_after(20):
        async with open_rig(
            server_config(listen={"down": 0}, connect={"up": echo}),
            [client_config(1, 0, listen={"up": 0}, connect={"down": echo})],
        ) as rig:
            client = rig.clients[1]
            up_port = client.listen_ports["up"]
            extra_port = free_port()
            await client.reload(
                attrs.evolve(
                    client.config,
                    listen=(
                        tt.Listen(tunnel="up", port=0),
                        tt.Listen(tunnel="up2", port=extra_port),
                    ),
                    connect=(tt.Connect(tunnel="down", host=LOCALHOST, port=shout),),
                )
            )
            with trio.fail_after(5):
                while "up2" not in client.listen_ports or await port_refuses(extra_port):
                    await trio.sleep(0.01)
            assert client.listen_ports["up"] == up_port
            await _echo_once(up_port)
            # New streams of "down" now go to the new connect target.
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
                await tcp.send_all(b"quiet")
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"QUIET", "eof")
