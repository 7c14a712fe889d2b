"""Sessions and failover timing in virtual time: a real server and real clients over real
trio-websocket on in-memory links (``tests/memory.py``), with ``autojump_clock``.

Rules for this module: every test takes ``autojump_clock`` and has an absolute ``fail_after``
(virtual seconds, so a hang fails at once in real time); nothing binds or connects TCP except
the clients' own listen sockets, whose open/closed state is watched but never connected to.
Times asserted here are exact virtual times, not measurements.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
import trio_websocket

import trio_tunnel as tt

from .memory import Link, MemoryDeployment, client_config, open_memory_deployment, server_config

# Virtual time is exact, up to float rounding.
EXACT = 1e-6


def approx(value: float) -> object:
    return pytest.approx(value, abs=EXACT)


async def _settled() -> None:
    """Let every task run until all are blocked (nothing in flight, no time passes)."""
    await trio.testing.wait_all_tasks_blocked()


async def _activate(deployment: MemoryDeployment, client_id: int) -> None:
    """Ask for the active role as data on the client's standby listener would (the data
    path itself is tested over TCP elsewhere), once the client knows the current epoch."""
    await _settled()
    client = deployment.client(client_id)
    session = client._session
    assert session is not None
    session.send_control({"type": "activate", "epoch": client.epoch})


# --- the harness itself ------------------------------------------------------------------------


async def test_link_ends_are_well_behaved_trio_streams() -> None:
    """The links keep trio's stream contract (busy, closed, EOF, half-close, cancellation),
    so what the tests below show is the tunnel's behaviour, not the harness's."""

    async def pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        link = Link("check")
        return link.client_end, link.server_end

    with trio.fail_after(10):
        await trio.testing.check_half_closeable_stream(pair, None)


async def test_a_cut_link_fails_both_ends_at_once(autojump_clock: trio.testing.MockClock) -> None:
    link = Link("cut")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def blocked_receive() -> None:
                with pytest.raises(trio.BrokenResourceError):
                    await link.server_end.receive_some()

            nursery.start_soon(blocked_receive)
            await _settled()
            link.cut()
        with pytest.raises(trio.BrokenResourceError):
            await link.client_end.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError):
            await link.client_end.receive_some()


# --- ping timeout ------------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "timeout"), [(5.0, 10.0), (1.0, 2.5)])
async def test_silent_peer_is_declared_dead_at_the_ping_timeout_on_both_sides(
    autojump_clock: trio.testing.MockClock, interval: float, timeout: float
) -> None:
    with trio.fail_after(120):
        async with open_memory_deployment(
            server_config(ping_interval_secs=interval, ping_timeout_secs=timeout),
            [client_config(1, ping_interval_secs=interval, ping_timeout_secs=timeout)],
        ) as deployment:
            client = deployment.client(1)
            await trio.sleep(3 * interval + 0.3)  # pings flow; nothing is declared dead
            assert deployment.server.state.connected == (1,)
            assert client.connected
            link = deployment.link(1)
            link.silence()  # a frozen peer: nothing reaches either side any more
            heard = {
                "server": link.to_server.delivered_at,
                "client": link.to_client.delivered_at,
            }
            assert None not in heard.values()

            async def server_gives_up() -> float:
                await deployment.server.wait_state(lambda s: 1 not in s.clients)
                return trio.current_time()

            async def client_gives_up() -> float:
                await client.wait_for("disconnected")
                return trio.current_time()

            dead: dict[str, float] = {}
            async with trio.open_nursery() as nursery:

                async def record(side: str, wait: object) -> None:
                    dead[side] = await wait()  # type: ignore[operator]

                nursery.start_soon(record, "server", server_gives_up)
                nursery.start_soon(record, "client", client_gives_up)
            for side in ("server", "client"):
                last = heard[side]
                assert last is not None
                assert dead[side] == approx(last + timeout), (side, heard, dead)
            assert deployment.server.state.active is None
            assert deployment.server.metrics.switches["client_lost"] == 1


async def test_pings_keep_an_idle_session_up(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(4000):
        async with open_memory_deployment(server_config(), [client_config(1)]) as deployment:
            link = deployment.link(1)
            await trio.sleep(3600)  # an hour with no tunnel traffic at all
            assert deployment.server.state.connected == (1,)
            assert deployment.link(1) is link, "the session was replaced"
            assert deployment.client(1).connections == 1


# --- reconnect backoff -------------------------------------------------------------------------


async def test_reconnect_backoff_doubles_up_to_its_cap_then_resets_after_a_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    low, high = 0.5, 8.0
    with trio.fail_after(600):
        async with open_memory_deployment(server_config()) as deployment:
            deployment.refusing = True  # the server is down
            config = client_config(1, reconnect_min_secs=low, reconnect_max_secs=high)
            client = await deployment.start_client(config, wait=None)
            slot = deployment.slots[1]
            while len(slot.dials) < 10:
                await trio.sleep(1)
            gaps = [b - a for a, b in zip(slot.dials, slot.dials[1:], strict=False)]
            # Attempt k waits a jittered delay in [d/2, d], d = low * 2**k capped at high.
            for k, gap in enumerate(gaps[:9]):
                cap = min(low * 2**k, high)
                assert cap / 2 - EXACT <= gap <= cap + EXACT, (k, gaps)
            assert max(gaps[:9]) > high / 2, "never reached the cap"

            # The server comes back: the next attempt connects; after losing that connection
            # the client retries at the minimum delay again, not at the cap.
            deployment.refusing = False
            await client.wait_for("connected")
            connected_at = trio.current_time()
            assert connected_at - slot.dials[-2] <= high + EXACT
            deployment.cut(1)
            await client.wait_for("disconnected")
            lost_at = trio.current_time()
            await client.wait_for("connected")
            assert low / 2 - EXACT <= slot.dials[-1] - lost_at <= low + EXACT
            assert client.metrics.reconnects == 1


# --- handshake timeouts ------------------------------------------------------------------------


async def test_server_closes_a_connection_that_never_upgrades_at_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handshake = 4.0
    config = server_config(handshake_timeout_secs=handshake)
    with trio.fail_after(60):
        async with open_memory_deployment(config) as deployment:
            link = await deployment.listener.connect("mute")
            started = trio.current_time()
            await link.client_end.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert await link.client_end.receive_some() == b""
            assert trio.current_time() - started == approx(handshake)


async def test_server_answers_a_plain_http_request_400_at_once_not_at_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_memory_deployment(server_config(handshake_timeout_secs=5.0)) as deployment:
            link = await deployment.listener.connect("plain-http")
            started = trio.current_time()
            await link.client_end.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while chunk := await link.client_end.receive_some():
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert trio.current_time() == approx(started), "it waited for the handshake timeout"


async def test_server_refuses_a_websocket_that_never_says_hello_at_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handshake = 3.0
    config = server_config(handshake_timeout_secs=handshake)
    with trio.fail_after(60):
        async with open_memory_deployment(config) as deployment:
            link = await deployment.listener.connect("no-hello")
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    link.client_end,  # type: ignore[arg-type]
                    "127.0.0.1:1",
                    "/",
                )
                upgraded = trio.current_time()
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()  # the refusal, then the close
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1008
                assert trio.current_time() - upgraded == approx(handshake)
                nursery.cancel_scope.cancel()
            assert deployment.server.metrics.refused_peers["hello_timeout"] == 1
            assert deployment.server.state.connected == ()


async def test_client_gives_up_on_a_server_that_never_answers_at_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handshake, backoff = 6.0, 1.0
    with trio.fail_after(120):
        async with open_memory_deployment(server_config()) as deployment:
            # The server process is frozen: connections are accepted by the kernel, never
            # answered. Every link the client makes is silent.
            original = deployment.listener.connect

            async def frozen(name: str) -> Link:
                link = await original(name)
                link.silence()
                return link

            deployment.listener.connect = frozen  # type: ignore[method-assign]
            config = client_config(
                1,
                handshake_timeout_secs=handshake,
                reconnect_min_secs=backoff,
                reconnect_max_secs=backoff,
            )
            client = await deployment.start_client(config, wait=None)
            slot = deployment.slots[1]
            while len(slot.dials) < 3:
                await trio.sleep(0.5)
            assert not client.connected
            for first, second in zip(slot.dials, slot.dials[1:], strict=False):
                assert handshake + backoff / 2 - EXACT <= second - first <= handshake + backoff
            # Each abandoned link was closed by the client, not left for the GC.
            assert all(link.to_server.eof for link in slot.links[:-1]), slot.links

            # The server thaws: the next attempt connects.
            deployment.listener.connect = original  # type: ignore[method-assign]
            await client.wait_for("connected")
            assert deployment.server.state.active == 1


# --- failover ----------------------------------------------------------------------------------


async def test_losing_the_active_client_makes_the_other_active_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_memory_deployment(
            server_config(close_secs=30.0),
            [client_config(1, listen=True), client_config(2, listen=True)],
        ) as deployment:
            server = deployment.server
            one, two = deployment.client(1), deployment.client(2)
            await two.wait_for("standby")
            await two.wait_for("listening")
            assert server.state.active == 1
            await trio.sleep(7)
            cut_at = trio.current_time()
            deployment.cut(1)
            state = await server.wait_state(lambda s: s.active == 2)
            assert state.since == approx(cut_at)
            assert state.connected == (2,)
            await two.wait_for("active")
            assert trio.current_time() == approx(cut_at)
            assert two.listening, "the survivor stopped listening"
            assert server.metrics.switches["client_lost"] == 1
            await one.wait_for("disconnected")
            assert trio.current_time() == approx(cut_at)
            assert not one.listening, "a client without a server must not accept"


async def test_silent_active_client_fails_over_at_the_ping_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def ping(config: Callable[..., tt.Config], *args: int) -> tt.Config:
        return config(*args, ping_interval_secs=2.0, ping_timeout_secs=6.0)

    with trio.fail_after(120):
        async with open_memory_deployment(
            ping(server_config), [ping(client_config, 1), ping(client_config, 2)]
        ) as deployment:
            server = deployment.server
            await deployment.client(2).wait_for("standby")
            await trio.sleep(5.1)
            link = deployment.link(1)
            link.silence()
            last_heard = link.to_server.delivered_at
            assert last_heard is not None
            state = await server.wait_state(lambda s: s.active == 2)
            assert state.since == approx(last_heard + 6.0)
            assert state.epoch == 2
            await deployment.client(2).wait_for("active")
            assert deployment.client(2).epoch == 2


async def test_demoted_client_keeps_its_listeners_closed_for_the_close_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    close_secs = 12.5
    with trio.fail_after(120):
        async with open_memory_deployment(
            server_config(close_secs=close_secs),
            [client_config(1, listen=True), client_config(2, listen=True)],
        ) as deployment:
            server = deployment.server
            old, new = deployment.client(1), deployment.client(2)
            await new.wait_for("listening")
            port = old.listen_ports["up"]
            await _activate(deployment, 2)
            state = await server.wait_state(lambda s: s.active == 2)
            demoted_at = state.since
            assert server.metrics.switches["data"] == 1
            await old.wait_for("not listening")
            assert trio.current_time() == approx(demoted_at)
            assert state.clients[1].demoted_until == approx(demoted_at + close_secs)

            # Its own activation request (one already on its way when the demotion arrived)
            # is refused by the server for the whole close period.
            await trio.sleep(close_secs - 1)
            await _activate(deployment, 1)
            await _settled()
            assert (server.state.active, server.state.epoch) == (2, state.epoch)
            assert not old.listening

            await old.wait_for("listening")
            assert trio.current_time() == approx(demoted_at + close_secs)
            assert old.connected and not old.active
            assert old.listen_ports["up"] == port, "reopened on another port"
            # After the period the same request switches back.
            await _activate(deployment, 1)
            state = await server.wait_state(lambda s: s.active == 1)
            assert state.epoch == 3
            await new.wait_for("not listening")
            await old.wait_for("active")


async def test_losing_the_active_client_reopens_the_demoted_one_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    close_secs = 30.0  # far longer than what follows: the loss must override it
    with trio.fail_after(120):
        async with open_memory_deployment(
            server_config(close_secs=close_secs),
            [client_config(1, listen=True), client_config(2, listen=True)],
        ) as deployment:
            server, survivor = deployment.server, deployment.client(1)
            await deployment.client(2).wait_for("listening")
            await _activate(deployment, 2)
            await survivor.wait_for("not listening")
            await trio.sleep(3)
            lost_at = trio.current_time()
            await deployment.stop_client(2)
            state = await server.wait_state(lambda s: s.connected == (1,))
            assert state.active == 1
            await survivor.wait_for("active")
            await survivor.wait_for("listening")
            assert trio.current_time() == approx(lost_at)


async def test_first_client_is_active_and_a_returning_primary_does_not_take_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_memory_deployment(server_config(), [client_config(2)]) as deployment:
            server = deployment.server
            state = server.state
            assert (state.active, state.epoch) == (2, 1)
            assert server.metrics.switches["first_client"] == 1
            await deployment.start_client(client_config(1))
            await deployment.client(1).wait_for("standby")
            await trio.sleep(30)
            state = server.state
            assert (state.active, state.epoch, state.connected) == (2, 1, (1, 2))
            assert deployment.client(2).active


async def test_epoch_increases_on_every_switch(autojump_clock: trio.testing.MockClock) -> None:
    close_secs = 2.0
    seen: list[tuple[int, int | None]] = []

    def record(state: tt.ServerState) -> bool:
        if not seen or seen[-1] != (state.epoch, state.active):
            seen.append((state.epoch, state.active))
        return False

    with trio.fail_after(120):
        async with open_memory_deployment(
            server_config(close_secs=close_secs),
            [client_config(1, listen=True), client_config(2, listen=True)],
        ) as deployment:
            server = deployment.server
            async with trio.open_nursery() as watcher:
                watcher.start_soon(server.wait_state, record)
                await _activate(deployment, 2)  # 1 -> 2
                await server.wait_state(lambda s: s.active == 2)
                await deployment.client(1).wait_for("not listening")
                await deployment.client(1).wait_for("listening")  # after its close period
                await _activate(deployment, 1)  # 2 -> 1
                await server.wait_state(lambda s: s.active == 1)
                await deployment.client(1).wait_for("active")
                assert deployment.client(1).epoch == 3
                await deployment.stop_client(1)  # loss: 1 -> 2
                state = await server.wait_state(lambda s: s.connected == (2,))
                await deployment.client(2).wait_for("active")
                assert deployment.client(2).epoch == state.epoch == 4
                watcher.cancel_scope.cancel()
    assert seen == [(1, 1), (2, 2), (3, 1), (4, 2)]


async def test_after_a_server_restart_both_clients_return_and_the_first_back_is_active(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fast = client_config(1, reconnect_min_secs=0.1, reconnect_max_secs=0.1)
    slow = client_config(2, reconnect_min_secs=4.0, reconnect_max_secs=4.0)
    with trio.fail_after(120):
        async with open_memory_deployment(server_config(), [fast, slow]) as deployment:
            one, two = deployment.client(1), deployment.client(2)
            await _activate(deployment, 2)
            await two.wait_for("active")
            assert two.epoch == 2
            await deployment.stop_server()
            await one.wait_for("disconnected")
            await two.wait_for("disconnected")
            await trio.sleep(10)  # down for a while: the clients keep retrying
            attempts = len(deployment.slots[1].dials)
            server = await deployment.start_server()
            state = await server.wait_state(lambda s: s.connected == (1, 2))
            # Client 1 retries every 0.05-0.1 s, client 2 every 2-4 s: client 1 is back first
            # and active at the new server's epoch 1, client 2 standby beside it.
            assert (state.active, state.epoch) == (1, 1)
            assert len(deployment.slots[1].dials) > attempts
            await one.wait_for("active")
            await two.wait_for("standby")
            await _settled()
            assert two.epoch == 1, "client 2 kept the old server's epoch"
            # Epochs restarted: client 2's activation at the new epoch 1 is honoured.
            await _activate(deployment, 2)
            state = await server.wait_state(lambda s: s.active == 2)
            assert state.epoch == 2


# --- a second connection with the same id ------------------------------------------------------


async def test_second_connection_with_the_same_id_replaces_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = 3.0  # each replaced client stays away this long (jittered to 1.5-3 s)
    config = client_config(1, reconnect_min_secs=slow, reconnect_max_secs=slow)
    with trio.fail_after(120):
        async with open_memory_deployment(server_config(), [config]) as deployment:
            server = deployment.server
            old = deployment.client(1)
            before = server.state
            first_remote = before.clients[1].remote
            # A second process with the same id (a copy started by mistake, or a restart
            # before the old connection is known to be dead).
            new = tt.Client(
                config, tt.load_environment(config), open_transport=deployment.dialer("twin")
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(new.serve)
                await new.wait_for("connected")
                await old.wait_for("disconnected")
                replaced_at = trio.current_time()
                state = server.state
                assert state.connected == (1,)
                assert state.clients[1].remote != first_remote
                assert state.active == 1
                await new.wait_for("active")
                twin_remote = state.clients[1].remote
                assert twin_remote.startswith("twin#")
                # The old one reconnects after its backoff and replaces the new one in turn.
                await old.wait_for("connected")
                assert slow / 2 - EXACT <= trio.current_time() - replaced_at <= slow + EXACT
                await new.wait_for("disconnected")
                state = server.state
                assert state.clients[1].remote not in (first_remote, twin_remote)
                assert state.clients[1].remote.startswith("client1#")
                assert state.active == 1
                await old.wait_for("active")
                nursery.cancel_scope.cancel()


async def test_a_demoted_client_that_restarts_keeps_its_close_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Restarting (a new connection, the session replaced) must not let a demoted client
    skip the close period that keeps it from re-activating."""
    close_secs = 20.0
    with trio.fail_after(120):
        async with open_memory_deployment(
            server_config(close_secs=close_secs),
            [client_config(1, listen=True), client_config(2, listen=True)],
        ) as deployment:
            server = deployment.server
            await deployment.client(2).wait_for("listening")
            await _activate(deployment, 2)
            state = await server.wait_state(lambda s: s.active == 2)
            demoted_at = state.since
            await trio.sleep(2)
            await deployment.restart_client(1)
            await server.wait_state(lambda s: 1 in s.clients)
            assert server.state.clients[1].demoted_until == approx(demoted_at + close_secs)
            await _activate(deployment, 1)
            await _settled()
            assert server.state.active == 2  # refused: still in its close period
            await trio.sleep_until(demoted_at + close_secs + 0.1)
            await _activate(deployment, 1)
            await server.wait_state(lambda s: s.active == 1)
