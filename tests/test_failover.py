"""Failover system tests: a server and two clients as real processes, driven with plain sockets.

Client 1 and client 2 connect the server's ``down`` tunnel to different services, each of which
first answers with its own tag (``c1``/``c2``), so a new connection to the server's ``down``
port shows which client carried it. The server connects ``up`` (the clients' listeners) to a
service that answers ``up`` and then echoes. Timing figures are printed (run with ``-s``).
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from .helpers import LOCALHOST, drain, free_port, read_to_end, start_service
from .procs import TunnelProcess, port_refuses, toml_config
from .test_failover_inproc import (
    TAG1,
    TAG2,
    TAG_LEN,
    TAG_UP,
    ask_tag,
    echo_once,
    read_exact,
    tag_handler,
)

pytestmark = pytest.mark.system

CLOSE_SECS = 2
MiB = 1024 * 1024
DOWNLOAD_BYTES = 500 * MiB


@attrs.define
class Deployment:
    server: TunnelProcess
    clients: dict[int, TunnelProcess]
    down: int  # the server's listen port: new streams go to the active client
    up: dict[int, int]  # each client's listen port
    big: int  # the server's listen port for the 500 MiB download

    def assert_no_tracebacks(self) -> None:
        for proc in (self.server, *self.clients.values()):
            assert "Traceback" not in proc.log(), f"{proc.name}:\n{proc.log()[-3000:]}"


@pytest.fixture
def procs() -> Iterator[list[TunnelProcess]]:
    started: list[TunnelProcess] = []
    yield started
    for proc in started:
        proc.close()


async def _download_handler(tcp: trio.SocketStream) -> None:
    """Send DOWNLOAD_BYTES then EOF; a reset from the peer just ends it."""
    block = bytes(range(256)) * 1024
    sent = 0
    try:
        while sent < DOWNLOAD_BYTES:
            piece = block[: DOWNLOAD_BYTES - sent]
            await tcp.send_all(piece)
            sent += len(piece)
        await tcp.send_eof()
        await tcp.receive_some(1)
    except trio.BrokenResourceError:
        pass
    finally:
        await tcp.aclose()


async def deploy(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess], *, websocket: str = ""
) -> Deployment:
    """Server, then client 1 (which becomes active), then client 2 (standby); ``websocket``
    adds lines to every process's [websocket] table."""
    up_service = await start_service(nursery, tag_handler(TAG_UP))
    tag_services = {
        1: await start_service(nursery, tag_handler(TAG1)),
        2: await start_service(nursery, tag_handler(TAG2)),
    }
    download = await start_service(nursery, _download_handler)
    ws, down, big = free_port(), free_port(), free_port()
    up = {1: free_port(), 2: free_port()}
    server_toml = toml_config(
        "server", ws, listen={"down": down, "big": big}, connect={"up": up_service}, extra=websocket
    )
    server = TunnelProcess("server", server_toml + _failover(CLOSE_SECS), tmp_path)
    procs.append(server)
    await server.wait_log("server listening")
    clients: dict[int, TunnelProcess] = {}
    for client_id in (1, 2):
        client_toml = toml_config(
            "client",
            ws,
            client_id=client_id,
            listen={"up": up[client_id]},
            connect={"down": tag_services[client_id], "big": download},
            extra=websocket,
        )
        # One template for all three configs: the clients' own value must lose to the server's.
        clients[client_id] = TunnelProcess(
            f"client{client_id}", client_toml + _failover(30), tmp_path
        )
        procs.append(clients[client_id])
        await server.wait_log(rf"client {client_id} connected from")
        await clients[client_id].wait_log(rf"client {client_id}: listening:")
    await server.wait_log(r"active client None -> 1")
    await clients[2].wait_log(r"client 2: standby \(epoch")
    return Deployment(server, clients, down, up, big)


def _failover(close_secs: float) -> str:
    return f"\n[failover]\nstandby_socket_close_secs = {close_secs}\n"


async def _trigger(port: int) -> trio.SocketStream:
    """A stream on a client's listener that has sent data (so it asked to become active)."""
    tcp = await trio.open_tcp_stream(LOCALHOST, port)
    assert await read_exact(tcp, TAG_LEN) == TAG_UP
    await echo_once(tcp, b"trigger")
    return tcp


async def test_both_clients_up_and_client_1_active_without_activation(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(30):
        dep = await deploy(nursery, tmp_path, procs)
        await dep.clients[1].wait_log(r"client 1: now ACTIVE \(epoch")
        # No data has gone through any client listener: traffic still flows to client 1.
        for _ in range(3):
            assert await ask_tag(dep.down) == TAG1
        assert "now ACTIVE" not in dep.clients[2].log()
        for client_id in (1, 2):
            # Health checks (connect, no data) on either listener are carried, switch nothing.
            assert await ask_tag(dep.up[client_id]) == TAG_UP
        assert await ask_tag(dep.down) == TAG1
        assert "active client 1 -> 2" not in dep.server.log()
    dep.assert_no_tracebacks()


async def test_data_on_the_standby_listener_switches_and_the_stream_survives(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(30):
        dep = await deploy(nursery, tmp_path, procs)
        switched: list[float] = []

        async def poll_until_client_2() -> None:
            while (await ask_tag(dep.down, 1.0)) != TAG2:
                await trio.sleep(0.01)
            switched.append(time.monotonic())

        async with await trio.open_tcp_stream(LOCALHOST, dep.up[2]) as tcp:
            assert await read_exact(tcp, TAG_LEN) == TAG_UP
            assert await ask_tag(dep.down) == TAG1  # connected, no data yet: no switch
            async with trio.open_nursery() as polls:
                first_data_at = time.monotonic()
                polls.start_soon(poll_until_client_2)
                for i in range(20):
                    await echo_once(tcp, f"message {i:02d} ".encode() * 50)
                    await trio.sleep(0.02)  # spread the 20 round trips over the switch
            await tcp.send_eof()
            assert await read_to_end(tcp) == (b"", "eof")
        took = switched[0] - first_data_at
        print(
            f"\ndata-triggered switch: new server streams reach client 2 "
            f"{took * 1000:.0f} ms after the first byte on its listener"
        )
        assert took < 2.0
        await dep.server.wait_log(r"active client 1 -> 2: data arrived at client 2")
        await dep.clients[2].wait_log(r"client 2: now ACTIVE")
    dep.assert_no_tracebacks()


async def test_old_client_streams_reset_and_its_listener_closed_then_reopened(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(30):
        dep = await deploy(nursery, tmp_path, procs)
        # Two streams through client 1: one the server sent it, one accepted on its listener.
        via_server = await trio.open_tcp_stream(LOCALHOST, dep.down)
        assert await read_exact(via_server, TAG_LEN) == TAG1
        via_client = await trio.open_tcp_stream(LOCALHOST, dep.up[1])
        assert await read_exact(via_client, TAG_LEN) == TAG_UP
        await echo_once(via_client, b"before the switch")

        trigger = await _trigger(dep.up[2])
        switched_at = time.monotonic()
        await dep.server.wait_log(r"active client 1 -> 2")
        with trio.fail_after(5):
            for name, tcp in (("server-side", via_server), ("client-side", via_client)):
                _, end = await read_to_end(tcp)
                assert end == "reset", f"{name} stream through the old client ended with {end}"
                await tcp.aclose()

        await dep.clients[1].wait_log(r"client 1: demoted to standby")
        await dep.clients[1].wait_log(r"client 1: listen sockets closed")
        refusals = 0
        while await port_refuses(dep.up[1]):
            refusals += 1
            await trio.sleep(0.02)
        closed_for = time.monotonic() - switched_at
        print(
            f"\nold client's listener refused {refusals} connections, reopened after "
            f"{closed_for:.2f}s (standby_socket_close_secs = {CLOSE_SECS})"
        )
        assert refusals > 0
        assert CLOSE_SECS - 0.5 < closed_for < CLOSE_SECS + 3
        await dep.clients[1].wait_log(r"client 1: listening:", count=2)
        # Reopened as standby: carries a connection, and did not take the role back.
        assert await ask_tag(dep.up[1]) == TAG_UP
        await echo_once(trigger, b"still carried by client 2")
        await trigger.aclose()
        assert await ask_tag(dep.down) == TAG2
        assert "active client 2 -> 1" not in dep.server.log()
    dep.assert_no_tracebacks()


async def test_sigkill_of_the_active_client_new_stream_gap(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(40):
        dep = await deploy(nursery, tmp_path, procs)
        successes: list[tuple[float, bytes]] = []

        async def probe() -> None:
            started = time.monotonic()
            tag = await ask_tag(dep.down, 2.0)
            if tag is not None:
                successes.append((started, tag))

        async def probe_every_10_ms(probes: trio.Nursery) -> None:
            while True:
                probes.start_soon(probe)
                await trio.sleep(0.01)

        async with trio.open_nursery() as probes:
            probes.start_soon(probe_every_10_ms, probes)
            while len(successes) < 20:
                await trio.sleep(0.01)
            killed_at = time.monotonic()
            dep.clients[1].signal(signal.SIGKILL)
            await dep.server.wait_log(r"active client 1 -> 2: active client 1 lost")
            while not any(t > killed_at + 0.5 and tag == TAG2 for t, tag in successes):
                await trio.sleep(0.01)
            probes.cancel_scope.cancel()

    times = sorted(t for t, _ in successes)
    gap, gap_end = max((b - a, b) for a, b in itertools.pairwise(times))
    print(
        f"\nSIGKILL of the active client: longest gap without a successful new stream "
        f"{gap * 1000:.0f} ms, ending {(gap_end - killed_at) * 1000:.0f} ms after the kill "
        f"({len(successes)} successful probes)"
    )
    assert gap < 5.0
    late = [tag for t, tag in successes if t > killed_at + 0.5]
    assert late and set(late) == {TAG2}, set(late)


async def test_sigstop_of_the_active_client_then_sigcont_comes_back_standby(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(50):
        # Short pings: the exact timing is the in-memory tier's (test_inmemory.py); this shows
        # a real frozen process is declared dead and comes back as standby.
        pings = "ping_interval_secs = 1\nping_timeout_secs = 3"
        dep = await deploy(nursery, tmp_path, procs, websocket=pings)
        stopped_at = time.monotonic()
        dep.clients[1].signal(signal.SIGSTOP)
        switched_at = await dep.server.wait_log(r"active client 1 -> 2", timeout=25)
        took = switched_at - stopped_at
        print(
            f"\nSIGSTOP of the active client: client 2 active after {took:.2f}s "
            f"(ping_timeout_secs 3)"
        )
        assert took < 8
        assert await ask_tag(dep.down) == TAG2

        dep.clients[1].signal(signal.SIGCONT)
        await dep.server.wait_log(r"client 1 connected from", count=2, timeout=15)
        await dep.clients[1].wait_log(r"client 1: connected to", count=2)
        await dep.clients[1].wait_log(r"client 1: standby \(epoch")
        await dep.clients[1].wait_log(r"client 1: listening:", count=2)
        for _ in range(3):
            assert await ask_tag(dep.down) == TAG2
        assert "active client 2 -> 1" not in dep.server.log()
        assert dep.clients[1].log().count("now ACTIVE") == 1
    dep.assert_no_tracebacks()


async def test_server_killed_and_restarted_clients_recover(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(40):
        dep = await deploy(nursery, tmp_path, procs)
        killed_at = time.monotonic()
        dep.server.signal(signal.SIGKILL)
        await dep.server.wait_exit()
        for client_id in (1, 2):
            # No WebSocket: the clients close their listeners so applications fail over.
            await dep.clients[client_id].wait_log(rf"client {client_id}: listen sockets closed")
        dep.server.start()
        while (tag := await ask_tag(dep.down, 1.0)) is None:
            await trio.sleep(0.02)
        recovered = time.monotonic() - killed_at
        for client_id in (1, 2):
            await dep.server.wait_log(rf"client {client_id} connected from")
            await dep.clients[client_id].wait_log(rf"client {client_id}: listening:", count=2)
        print(
            f"\nserver SIGKILLed and restarted: new streams flow again {recovered:.2f}s "
            f"after the kill (answer: {tag!r})"
        )
        assert recovered < 10
        active = 1 if tag == TAG1 else 2
        assert dep.server.new_log().count("active client None ->") == 1
        await dep.server.wait_log(rf"active client None -> {active}")
        # Both directions flow: through the server and through the active client's listener.
        for _ in range(3):
            assert await ask_tag(dep.down) == tag
        async with await trio.open_tcp_stream(LOCALHOST, dep.up[active]) as tcp:
            assert await read_exact(tcp, TAG_LEN) == TAG_UP
            await echo_once(tcp, b"after the restart")
    assert "Traceback" not in dep.server.new_log()
    for client in dep.clients.values():
        assert "Traceback" not in client.log()


async def test_download_cut_by_a_failover_ends_in_a_reset(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(60):
        dep = await deploy(nursery, tmp_path, procs)
        async with await trio.open_tcp_stream(LOCALHOST, dep.big) as tcp:
            received = 0
            started = time.monotonic()
            while received < 20 * MiB:
                data = await tcp.receive_some(256 * 1024)
                assert data, "download ended early"
                received += len(data)
            rate = received / (time.monotonic() - started) / 1e6
            # Mid-way (and not reading meanwhile): data on client 2's listener.
            trigger = await _trigger(dep.up[2])
            await dep.server.wait_log(r"active client 1 -> 2")
            rest, end, _ = await drain(tcp)
            received += rest
        await trigger.aclose()
    print(
        f"\n500 MiB download cut by a failover: {received / MiB:.1f} MiB arrived, then {end} "
        f"({rate:.0f} MB/s before the cut)"
    )
    assert end == "reset", "a cut download ended in a clean EOF"
    assert received < DOWNLOAD_BYTES
    dep.assert_no_tracebacks()
