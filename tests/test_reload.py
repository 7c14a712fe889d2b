"""Reloading a config (what SIGHUP does): tunnels change live, open streams carry on."""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import pytest
import trio

import trio_tunnel as tt
from trio_tunnel import _cli
from trio_tunnel._reload import reread

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


async def test_sighup_reload_does_both_config_steps_and_refuses_a_broken_environment(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What SIGHUP runs (_cli._reload): the file and then the files it names are read (off
    the event loop); a config that parses but names a missing file changes nothing."""
    echo = await start_service(nursery, echo_handler)
    config = server_config(listen={"a": 0})
    path = tmp_path / "server.toml"
    text = 'role = "server"\n[websocket]\nurl = "ws://127.0.0.1:0/"\n{extra}\n'
    text += '[[listen]]\ntunnel = "b"\nport = 0\n'
    with trio.fail_after(20):
        async with open_rig(config, [client_config(1, 0, connect={"a": echo, "b": echo})]) as rig:
            path.write_text(text.format(extra=f'auth_token_file = "{tmp_path}/missing"'))
            await _cli._reload(rig.server, path)
            assert rig.server.config.listen == config.listen  # refused: nothing changed
            assert "websocket.auth_token_file: cannot read" in caplog.text
            path.write_text(text.format(extra=""))
            await _cli._reload(rig.server, path)
            assert [entry.tunnel for entry in rig.server.config.listen] == ["b"]
            await _echo_once(rig.server_port("b"))


async def test_reread_reports_each_step_as_its_own_error(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('role = "client"\nclient_id = 3\n[websocket]\nurl = "ws://h:1/"\n')
    with pytest.raises(tt.ConfigError) as info:
        await reread(path)
    assert not isinstance(info.value, tt.ConfigLoadError)  # the config itself: exit 2
    path.write_text(
        'role = "client"\nclient_id = 1\n[websocket]\nurl = "ws://h:1/"\n'
        f'auth_token_file = "{tmp_path}/none"\n'
    )
    with pytest.raises(tt.ConfigLoadError, match=rf"^{path}: websocket\.auth_token_file"):
        await reread(path)
