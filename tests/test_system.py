"""System tests: real ``trio-tunnel run`` processes from TOML files, driven with plain sockets."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .helpers import LOCALHOST, echo_handler, free_port, read_to_end, start_service
from .procs import TunnelProcess, toml_config, wait_port_open

pytestmark = pytest.mark.system


@pytest.fixture
def procs() -> Iterator[list[TunnelProcess]]:
    started: list[TunnelProcess] = []
    yield started
    for proc in started:
        proc.close()


async def test_server_and_two_clients_carry_both_directions(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    echo = await start_service(nursery, echo_handler)
    ws, down, up1, up2 = free_port(), free_port(), free_port(), free_port()
    server = TunnelProcess(
        "server", toml_config("server", ws, listen={"down": down}, connect={"up": echo}), tmp_path
    )
    procs.append(server)
    await server.wait_log("server listening")
    for client_id, up in ((1, up1), (2, up2)):
        procs.append(
            TunnelProcess(
                f"client{client_id}",
                toml_config(
                    "client", ws, client_id=client_id, listen={"up": up}, connect={"down": echo}
                ),
                tmp_path,
            )
        )
        await server.wait_log(rf"client {client_id} connected")
    await server.wait_log(r"active client None -> 1")
    await wait_port_open(up1)
    with trio.fail_after(20):
        for port in (down, up1):
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                await tcp.send_all(b"x" * 100_000)
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"x" * 100_000, "eof")
    assert "Traceback" not in server.log()


async def test_sigterm_exits_zero_promptly(tmp_path: Path, procs: list[TunnelProcess]) -> None:
    ws = free_port()
    server = TunnelProcess("server", toml_config("server", ws), tmp_path)
    client = TunnelProcess("client1", toml_config("client", ws, client_id=1), tmp_path)
    procs += [server, client]
    await server.wait_log(r"active client None -> 1")
    for proc in (client, server):
        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit(5) == 0
        assert "Traceback" not in proc.log()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_tunnel", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_accepts_the_examples() -> None:
    examples = Path(__file__).parent.parent / "examples"
    for name in ("server.toml", "client1.toml", "client2.toml"):
        result = _cli("check", str(examples / name))
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout


def test_check_names_file_and_key_of_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "server.toml"
    bad.write_text(
        'role = "server"\n[websocket]\nurl = "ws://127.0.0.1:8080/"\n'
        '[[listen]]\ntunnel = "a"\nport = 1\n[[listen]]\ntunnel = "b"\nport = "x"\n'
    )
    result = _cli("check", str(bad))
    assert result.returncode == 2
    assert "server.toml: listen[1].port:" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("run", str(bad))
    assert result.returncode == 2
    assert "listen[1].port" in result.stderr


def test_run_accepts_a_directory_with_config_toml(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('role = "client"\n[websocket]\nurl = "ws://x/"\n')
    result = _cli("check", str(tmp_path))
    assert result.returncode == 2
    assert "config.toml: client_id" in result.stderr


def test_demo_exits_zero() -> None:
    result = _cli("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SHA-256 match" in result.stdout
    assert "active client: client 2" in result.stdout
    # A newcomer sees the files a deployment uses, the status table and both failovers.
    assert "--- server.toml" in result.stdout and "--- client1.toml" in result.stdout
    assert "$ trio-tunnel status" in result.stdout
    assert "switches: client_lost 1, data 1, first_client 1" in result.stdout
    assert "failover 2: the active client (client 2) is lost" in result.stdout


async def test_sighup_reloads_tunnels(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    echo = await start_service(nursery, echo_handler)
    ws, first, second = free_port(), free_port(), free_port()
    server = TunnelProcess("server", toml_config("server", ws, listen={"a": first}), tmp_path)
    client = TunnelProcess(
        "client1", toml_config("client", ws, client_id=1, connect={"a": echo, "b": echo}), tmp_path
    )
    procs += [server, client]
    await server.wait_log(r"active client None -> 1")
    await wait_port_open(first)
    async with await trio.open_tcp_stream(LOCALHOST, first) as kept:
        await kept.send_all(b"before")
        assert await kept.receive_some(6) == b"before"
        server.config_path.write_text(toml_config("server", ws, listen={"b": second}))
        server.signal(signal.SIGHUP)
        await server.wait_log(r"added \['b'\], removed \['a'\]")
        await wait_port_open(second)
        with trio.fail_after(10):
            async with await trio.open_tcp_stream(LOCALHOST, second) as tcp:
                await tcp.send_all(b"new tunnel")
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"new tunnel", "eof")
            # The stream accepted before the reload is untouched.
            await kept.send_all(b"after")
            await kept.send_eof()
            assert await read_to_end(kept) == (b"after", "eof")
    # A broken config on SIGHUP is refused and the process keeps running.
    server.config_path.write_text("role = 'server'\n[websocket]\nurl = 3\n")
    server.signal(signal.SIGHUP)
    await server.wait_log(r"reload refused, running config kept: .*websocket.url")
    assert server.proc is not None and server.proc.poll() is None
