"""Graceful shutdown (``[shutdown] drain_secs``): open streams finish, new ones go elsewhere.

Rules of this module: everything binds 127.0.0.1 (port 0, or a free port for processes);
every test has an absolute ``trio.fail_after``; the drains run on real sockets and real time
with short deadlines (a deadline is a lower bound here, never a measured figure).

As in test_failover_inproc, each client's ``down`` target first answers with its own tag, so a
connection to the server's ``down`` port shows which client carries it; the server's ``up``
target answers ``up`` and then echoes.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

import trio_tunnel as tt
from trio_tunnel._drain import DrainResult

from .helpers import LOCALHOST, free_port, open_rig, read_to_end, start_client, start_service
from .procs import TunnelProcess, port_refuses, toml_config, wait_port_open
from .test_failover_inproc import (
    TAG1,
    TAG2,
    TAG_LEN,
    TAG_UP,
    _client,
    _server,
    _services,
    ask_tag,
    echo_once,
    read_exact,
    tag_handler,
)
from .test_metrics import Family, by_label, scrape_until, value

TAGS = {1: TAG1, 2: TAG2}


async def open_tagged(port: int) -> tuple[trio.SocketStream, bytes]:
    """A new connection to ``port`` and the tag of the service that answered."""
    tcp = await trio.open_tcp_stream(LOCALHOST, port)
    return tcp, await read_exact(tcp, TAG_LEN)


async def finish(tcp: trio.SocketStream) -> str:
    """One more echo, then EOF; how the far side ended ("eof" or "reset")."""
    async with tcp:
        await echo_once(tcp, b"while draining")
        await tcp.send_eof()
        data, end = await read_to_end(tcp)
        assert data == b""
        return end


async def wait_refusing(port: int) -> None:
    """Until new connections to ``port`` are refused by the kernel (the listener closed)."""
    while not await port_refuses(port):
        await trio.sleep(0.01)


async def _drain_into(who: tt.Client | tt.Server, secs: float, out: list[DrainResult]) -> None:
    out.append(await who.drain(secs))


async def _result(out: list[DrainResult]) -> DrainResult:
    while not out:
        await trio.sleep(0.01)
    return out[0]


# -- in one process ------------------------------------------------------------------------


async def test_draining_client_keeps_its_streams_and_new_ones_go_to_the_other(
    nursery: trio.Nursery,
) -> None:
    services = await _services(nursery)
    with trio.fail_after(20):
        async with open_rig(
            _server(services, 1.0), [_client(1, services), _client(2, services)]
        ) as rig:
            await rig.clients[2].wait_for("standby")
            old = rig.clients[1]
            old_port = rig.client_port(1, "up")
            # One stream each way through client 1: opened by the server, and accepted by it.
            down, tag = await open_tagged(rig.server_port("down"))
            assert tag == TAG1
            up, tag = await open_tagged(old_port)
            assert tag == TAG_UP
            epoch = rig.server.state.epoch

            results: list[DrainResult] = []
            rig.nursery.start_soon(_drain_into, old, 10.0, results)
            state = await rig.server.wait_state(lambda s: s.active == 2)
            assert state.epoch == epoch + 1
            assert state.clients[1].draining and not state.clients[2].draining
            assert state.clients[1].streams == 2, "the switch reset the draining client's streams"
            assert await ask_tag(rig.server_port("down")) == TAG2, "a new stream went to client 1"
            await rig.clients[2].wait_for("active")
            await old.wait_for("not listening")
            await wait_refusing(old_port)

            # Both streams still carry data both ways and end cleanly (FIN, not RST).
            assert await finish(down) == "eof"
            assert await finish(up) == "eof"
            result = await _result(results)
            assert (result.streams_open, result.finished, result.reset) == (2, 2, 0)
            assert result.reset_at_deadline == 0
            assert rig.server.metrics.switches["drain"] == 1
            assert sum(rig.server.metrics.stream_resets.values()) == 0
            assert sum(old.metrics.stream_resets.values()) == 0
            assert not old.active and rig.server.state.active == 2


async def test_the_deadline_resets_what_is_left(nursery: trio.Nursery) -> None:
    services = await _services(nursery)
    with trio.fail_after(20):
        async with open_rig(
            _server(services, 1.0), [_client(1, services), _client(2, services)]
        ) as rig:
            await rig.clients[2].wait_for("standby")
            finishing, tag = await open_tagged(rig.server_port("down"))
            assert tag == TAG1
            lingering, tag = await open_tagged(rig.server_port("down"))
            assert tag == TAG1
            results: list[DrainResult] = []
            rig.nursery.start_soon(_drain_into, rig.clients[1], 1.0, results)
            await rig.server.wait_state(lambda s: s.active == 2)
            assert await finish(finishing) == "eof"
            # The other one never ends by itself: at the deadline its TCP peer sees a reset.
            async with lingering:
                await echo_once(lingering, b"still here")
                assert await read_to_end(lingering) == (b"", "reset")
            result = await _result(results)
            assert (result.streams_open, result.finished, result.reset) == (2, 1, 1)
            assert result.reset_at_deadline == 1
            assert result.secs >= 1.0
            # The server's side of it was reset with the typed code, not as a lost session.
            assert rig.server.metrics.stream_resets["shutdown"] == 1
            assert rig.server.state.clients[1].streams == 0


async def test_a_draining_client_alone_refuses_new_connections_at_the_server(
    nursery: trio.Nursery,
) -> None:
    services = await _services(nursery)
    with trio.fail_after(20):
        async with open_rig(_server(services, 1.0), [_client(1, services)]) as rig:
            result = await rig.clients[1].drain(5.0)
            assert result == DrainResult(0, 0, 0, 0, result.secs)
            state = rig.server.state
            assert state.active is None and state.clients[1].draining
            down = rig.server_port("down")
            assert await ask_tag(down) is None
            refused = rig.server.metrics.connections_refused
            assert refused["down", "client_draining"] == 1
            assert refused["down", "no_active_client"] == 0
            # A client that is not draining connects: it becomes active at once.
            await start_client(rig, _client(2, services, rig.server.websocket_port))
            await rig.server.wait_state(lambda s: s.active == 2)
            assert await ask_tag(down) == TAG2


async def test_a_draining_standby_is_never_made_active(nursery: trio.Nursery) -> None:
    services = await _services(nursery)
    with trio.fail_after(20):
        async with open_rig(
            _server(services, 1.0), [_client(1, services), _client(2, services)]
        ) as rig:
            standby = rig.clients[2]
            await standby.wait_for("standby")
            epoch = rig.server.state.epoch
            await standby.drain(5.0)
            state = rig.server.state
            assert (state.active, state.epoch) == (1, epoch)
            assert state.clients[2].draining
            # The active client goes away: the draining one must not take over.
            await rig.stop_client(1)
            state = await rig.server.wait_state(lambda s: s.connected == (2,))
            assert state.active is None
            assert await ask_tag(rig.server_port("down")) is None
            assert rig.server.metrics.connections_refused["down", "client_draining"] == 1
            assert not standby.active


async def test_a_malformed_draining_message_is_a_protocol_error(nursery: trio.Nursery) -> None:
    services = await _services(nursery)
    with trio.fail_after(20):
        async with open_rig(_server(services, 1.0), [_client(1, services)]) as rig:
            client = rig.clients[1]
            session = client._session
            assert session is not None
            session.send_control({"type": "draining", "secs": 3})
            await client.wait_for("disconnected")
            assert session.closing_reason is not None
            assert "malformed draining message" in session.closing_reason
            # It reconnects as a normal client: nothing of a drain was recorded.
            await client.wait_for("active")
            assert not rig.server.state.clients[1].draining


async def test_a_draining_server_refuses_new_streams_and_lets_open_ones_finish(
    nursery: trio.Nursery,
) -> None:
    services = await _services(nursery)
    with trio.fail_after(20):
        async with open_rig(
            _server(services, 1.0), [_client(1, services), _client(2, services)]
        ) as rig:
            client = rig.clients[1]
            down_port = rig.server_port("down")
            down, tag = await open_tagged(down_port)
            assert tag == TAG1
            results: list[DrainResult] = []
            rig.nursery.start_soon(_drain_into, rig.server, 10.0, results)
            await rig.server.wait_state(lambda s: s.draining)
            await wait_refusing(down_port)
            # A stream a client opens is refused with the typed code: its TCP peer sees a reset.
            async with await trio.open_tcp_stream(LOCALHOST, rig.client_port(1, "up")) as tcp:
                assert await read_to_end(tcp) == (b"", "reset")
            assert client.metrics.stream_resets["shutdown"] == 1
            with pytest.raises(trio.BrokenResourceError) as raised:
                rig.server.open_stream("up")
            assert isinstance(raised.value.__cause__, tt.StreamReset)
            assert raised.value.__cause__.code is tt.ResetCode.SHUTDOWN
            # No switch while draining: it would only reset the active client's streams.
            assert rig.server.state.active == 1
            assert await finish(down) == "eof"
            result = await _result(results)
            assert (result.streams_open, result.finished, result.reset) == (1, 1, 0)


def test_drain_secs_config() -> None:
    base = {"role": "server", "websocket": {"url": "ws://127.0.0.1:8080/"}}
    assert tt.parse_config(base).shutdown.drain_secs == 0.0
    assert "shutdown:" not in tt.describe_config(tt.parse_config(base))
    config = tt.parse_config({**base, "shutdown": {"drain_secs": 3}})
    assert config.shutdown.drain_secs == 3.0
    assert "let open streams finish for up to 3s" in tt.describe_config(config)
    for bad, why in ((-1, "must be 0 or more"), ("3", "expected a number of seconds")):
        with pytest.raises(
            tt.ConfigError, match=re.escape(f"server.toml: shutdown.drain_secs: {why}")
        ):
            tt.parse_config({**base, "shutdown": {"drain_secs": bad}}, "server.toml")
    with pytest.raises(tt.ConfigError, match=r"server\.toml: shutdown\.grace: unknown key"):
        tt.parse_config({**base, "shutdown": {"grace": 1}}, "server.toml")


# -- real processes ------------------------------------------------------------------------

# Generous: a drain ends as soon as its streams do, so a long deadline costs nothing when the
# machine is fast, and a loaded CI machine (coverage tracing every process) still finishes
# the transfers inside it (at 3 s, one ended reset with every byte in, once).
DRAIN_SECS = 10
PIECES = 16
PIECE_BYTES = 64 * 1024
PAUSE_SECS = 0.05  # a transfer takes about a second: well inside the deadline


@attrs.frozen
class Transfer:
    tag: bytes  # which client carried it
    sent: bytes  # SHA-256 of what was sent
    received: bytes  # SHA-256 of what came back
    size: int  # bytes that came back
    end: str  # "eof" or "reset"


async def transfer(
    port: int,
    out: list[Transfer],
    *,
    task_status: trio.TaskStatus[bytes] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send PIECES pieces through the echo behind ``port``, spread over about a second, and
    check what comes back; started (with the carrier's tag) once the first piece came back."""
    sent, received = hashlib.sha256(), hashlib.sha256()
    tcp, tag = await open_tagged(port)
    size, end = 0, "eof"
    async with tcp:
        first = os.urandom(PIECE_BYTES)
        await tcp.send_all(first)
        assert await read_exact(tcp, PIECE_BYTES) == first
        sent.update(first)
        received.update(first)
        size += len(first)
        task_status.started(tag)

        async def receive() -> None:
            nonlocal size, end
            try:
                while data := await tcp.receive_some(256 * 1024):
                    received.update(data)
                    size += len(data)
            except trio.BrokenResourceError:
                end = "reset"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for _ in range(PIECES - 1):
                await trio.sleep(PAUSE_SECS)
                piece = os.urandom(PIECE_BYTES)
                await tcp.send_all(piece)
                sent.update(piece)
            await tcp.send_eof()
    out.append(Transfer(tag, sent.digest(), received.digest(), size, end))


def gauge_is(name: str, wanted: int) -> Callable[[dict[str, Family]], bool]:
    return lambda families: value(families, name) == wanted


@pytest.fixture
def procs() -> Iterator[list[TunnelProcess]]:
    started: list[TunnelProcess] = []
    yield started
    for proc in started:
        proc.close()


@attrs.define
class Deployment:
    server: TunnelProcess
    clients: dict[int, TunnelProcess]
    down: int
    metrics: int


async def deploy(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess], drain_secs: float
) -> Deployment:
    tag_services = {cid: await start_service(nursery, tag_handler(TAGS[cid])) for cid in (1, 2)}
    ws, down, metrics = free_port(), free_port(), free_port()
    server = TunnelProcess(
        "server",
        toml_config("server", ws, listen={"down": down})
        + f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n',
        tmp_path,
    )
    procs.append(server)
    await wait_port_open(metrics)
    clients: dict[int, TunnelProcess] = {}
    for cid in (1, 2):
        clients[cid] = TunnelProcess(
            f"client{cid}",
            toml_config("client", ws, client_id=cid, connect={"down": tag_services[cid]})
            + f"\n[shutdown]\ndrain_secs = {drain_secs}\n",
            tmp_path,
        )
        procs.append(clients[cid])
        # Client 1 first, so that it is the active one.
        await scrape_until(metrics, gauge_is("trio_tunnel_connected_clients", cid), 20)
    await scrape_until(metrics, lambda f: value(f, "trio_tunnel_active_client") == 1)
    return Deployment(server, clients, down, metrics)


@pytest.mark.system
async def test_rolling_upgrade_loses_no_stream_that_finishes_within_the_deadline(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(90):
        dep = await deploy(nursery, tmp_path, procs, DRAIN_SECS)
        done: list[Transfer] = []
        for restarted, other in ((1, 2), (2, 1)):
            async with trio.open_nursery() as transfers:
                before = [await transfers.start(transfer, dep.down, done) for _ in range(4)]
                assert before == [TAGS[restarted]] * 4
                dep.clients[restarted].signal(signal.SIGTERM)
                await scrape_until(dep.metrics, gauge_is("trio_tunnel_active_client", other))
                during = [await transfers.start(transfer, dep.down, done) for _ in range(2)]
                assert during == [TAGS[other]] * 2
            assert await dep.clients[restarted].wait_exit(DRAIN_SECS + 10) == 0
            # The upgraded process comes back as the standby.
            dep.clients[restarted].start()
            await scrape_until(
                dep.metrics, lambda f: value(f, "trio_tunnel_connected_clients") == 2
            )
        assert len(done) == 12
        for result in done:
            assert (result.end, result.size) == ("eof", PIECES * PIECE_BYTES)
            assert result.received == result.sent
        families = await scrape_until(dep.metrics, lambda f: True)
        assert value(families, "trio_tunnel_active_client") == 1
        assert by_label(families, "trio_tunnel_switches_total", "reason")["drain"] == 2
        assert set(by_label(families, "trio_tunnel_stream_resets_total", "reason").values()) == {0}
        refused = families["trio_tunnel_connections_refused_total"].samples.values()
        assert set(refused) == {0}
    for proc in procs:
        assert "Traceback" not in proc.log(), f"{proc.name}:\n{proc.log()[-3000:]}"


@pytest.mark.system
async def test_sigint_drains_too_and_a_second_signal_stops_at_once(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    with trio.fail_after(60):
        dep = await deploy(nursery, tmp_path, procs, 600)
        tcp, tag = await open_tagged(dep.down)
        assert tag == TAG1
        async with tcp:
            dep.clients[1].signal(signal.SIGINT)
            await scrape_until(dep.metrics, lambda f: value(f, "trio_tunnel_active_client") == 2)
            await echo_once(tcp, b"still carried while draining")
            dep.clients[1].signal(signal.SIGTERM)
            # Far inside the 600 s deadline: the open stream is reset, the process exits 0.
            assert await dep.clients[1].wait_exit(10) == 0
            assert await read_to_end(tcp) == (b"", "reset")
