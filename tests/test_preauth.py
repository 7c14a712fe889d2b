"""Nothing before authentication can lock a client out (issue 12, item 1).

Floods of idle connections against an in-process server, from other source addresses
(127.0.0.2 and up: the attacking sockets bind their source address before connecting) and from
the client's own. The deadlines are set long (30 s) so that a flood is still held when the
real client arrives; every test is bounded far below that, so a client that could only get in
once the flood expired fails the test. The pure parts (which connection is dropped, how
refusals are logged) run on trio's autojump clock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import trio_tunnel as tt
from trio_tunnel import _admission
from trio_tunnel._admission import Admission, Limits, RefusalLog

from .helpers import (
    LOCALHOST,
    Rig,
    client_config,
    open_rig,
    read_to_end,
    server_config,
    start_client,
)
from .test_hostile import raw_websocket

LONG = 30.0  # every deadline of the flooded server: far longer than any test may take


def flooded_server(**websocket: Any) -> tt.Config:
    config = server_config()
    settings = attrs.evolve(config.websocket, handshake_timeout_secs=LONG, **websocket)
    return attrs.evolve(config, websocket=settings)


def long_limits(**limits: int) -> Limits:
    return Limits(tls_handshake_secs=LONG, request_head_secs=LONG, hello_secs=LONG, **limits)


@asynccontextmanager
async def idle_flood(port: int, sources: list[str]) -> AsyncIterator[list[trio.SocketStream]]:
    """One idle connection from each address in ``sources`` (in order), held for the block."""
    sockets: list[trio.SocketStream] = []
    try:
        for source in sources:
            sockets.append(await trio.open_tcp_stream(LOCALHOST, port, local_address=source))
        yield sockets
    finally:
        for tcp in sockets:
            await trio.aclose_forcefully(tcp)


def refused(rig: Rig, reason: str) -> int:
    return rig.server.metrics.refused_peers[reason]


async def wait_refused(rig: Rig, reason: str, count: int) -> None:
    with trio.fail_after(10):
        while refused(rig, reason) < count:
            await trio.sleep(0.01)
    assert refused(rig, reason) == count


async def test_300_idle_connections_from_other_addresses_do_not_delay_a_new_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        _admission, "DEFAULT_LIMITS", long_limits(max_pending=100, max_pending_per_address=50)
    )
    with trio.fail_after(40):
        async with open_rig(flooded_server(), [client_config(1, 0)]) as rig:
            port = rig.server.websocket_port
            connected_at = rig.server.state.clients[1].connected_at
            # 150 from one address: past its cap of 50, each newcomer drops that address's
            # oldest; then 150 from three more: past the total of 100, the oldest of all.
            async with idle_flood(port, ["127.0.0.2"] * 150) as first:
                await wait_refused(rig, "per_address", 100)
                others = [f"127.0.0.{3 + i % 3}" for i in range(150)]
                async with idle_flood(port, others) as second:
                    await wait_refused(rig, "evicted", 100)
                    # The oldest were dropped (closed at once: all the first address's, then
                    # the first 50 of the others); the newest are still held.
                    with trio.fail_after(5):
                        assert await first[-1].receive_some(1) == b""
                        assert await second[0].receive_some(1) == b""
                    with trio.move_on_after(0.2) as held:
                        await second[-1].receive_some(1)
                    assert held.cancelled_caught, "a newer connection was dropped"
                    # A restarted client gets in at once, far inside the 30 s deadlines.
                    with trio.fail_after(5):
                        client = await start_client(rig, client_config(2, port))
                    assert client.connected
                    assert set(rig.server.state.clients) == {1, 2}
                    assert rig.server.state.clients[1].connected_at == connected_at
                    assert refused(rig, "evicted") == 101  # the client's room, made at once
    assert refused(rig, "request_timeout") == 0


async def test_idle_flood_from_the_clients_own_address_does_not_delay_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_admission, "DEFAULT_LIMITS", long_limits(max_pending_per_address=50))
    with trio.fail_after(40):
        async with open_rig(flooded_server(), [client_config(1, 0)]) as rig:
            port = rig.server.websocket_port
            async with idle_flood(port, [LOCALHOST] * 150):
                await wait_refused(rig, "per_address", 100)
                with trio.fail_after(5):
                    client = await start_client(rig, client_config(2, port))
                assert client.connected
                assert refused(rig, "per_address") == 101


async def test_a_client_mid_handshake_outlives_a_flood_of_silent_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that sent a complete upgrade request is dropped only after every silent
    one: a flood can never push out a client between its upgrade and its HELLO."""
    monkeypatch.setattr(_admission, "DEFAULT_LIMITS", long_limits(max_pending=10))
    with trio.fail_after(40):
        async with open_rig(flooded_server(), [client_config(1, 0)]) as rig:
            port = rig.server.websocket_port
            async with raw_websocket(port) as ws:
                assert (await ws.upgrade()).startswith(b"HTTP/1.1 101")
                sources = [f"127.0.0.{2 + i % 5}" for i in range(60)]
                async with idle_flood(port, sources):
                    await wait_refused(rig, "evicted", 51)
                    await ws.hello(client_id=2)  # still there: it becomes client 2
                    assert set(rig.server.state.clients) == {1, 2}


async def test_each_phase_has_its_own_deadline_below_the_handshake_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The request head and the HELLO are each cut at their own (short) deadline, though
    handshake_timeout_secs is long."""
    caplog.set_level(logging.WARNING, logger="trio_tunnel")
    monkeypatch.setattr(_admission, "DEFAULT_LIMITS", Limits(request_head_secs=0.3, hello_secs=0.3))
    with trio.fail_after(20):
        async with open_rig(flooded_server()) as rig:
            port = rig.server.websocket_port
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                await tcp.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
                with trio.fail_after(5):
                    assert await tcp.receive_some(1) == b""
            await wait_refused(rig, "request_timeout", 1)
            async with raw_websocket(port) as ws:
                assert (await ws.upgrade()).startswith(b"HTTP/1.1 101")
                assert await ws.close_code(timeout=5) == 1008  # no HELLO: refused
            await wait_refused(rig, "hello_timeout", 1)
    assert "no complete WebSocket upgrade request within 0.3s" in caplog.text


async def test_tls_handshake_has_its_own_deadline(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import trustme

    ca = trustme.CA()
    bundle = tmp_path_factory.mktemp("pki") / "server.pem"
    cert = ca.issue_cert("127.0.0.1")
    bundle.write_bytes(b"".join(b.bytes() for b in (cert.private_key_pem, *cert.cert_chain_pems)))
    monkeypatch.setattr(_admission, "DEFAULT_LIMITS", Limits(tls_handshake_secs=0.3))
    config = flooded_server(url="wss://127.0.0.1:0/", tls_bundle=str(bundle))
    with trio.fail_after(20):
        async with open_rig(config) as rig:
            async with await trio.open_tcp_stream(LOCALHOST, rig.server.websocket_port) as tcp:
                with trio.fail_after(5):  # no ClientHello ever: closed at the TLS deadline
                    assert await tcp.receive_some(1) == b""
            await wait_refused(rig, "tls_timeout", 1)


# --- the pure parts, on the autojump clock -----------------------------------------------------


async def test_admission_drops_the_oldest_unproven_first(autojump_clock: trio.abc.Clock) -> None:
    dropped: list[str] = []
    admission = Admission(Limits(max_pending=3), RefusalLog(dropped.append), 10.0)
    proven = admission.enter("10.0.0.1:1", grace=1)
    admission.prove(proven)
    await trio.sleep(1)
    silent = [admission.enter(f"10.0.0.{i}:1", grace=1) for i in (2, 3)]
    newest = admission.enter("10.0.0.4:1", grace=1)
    assert dropped == ["evicted"]
    assert silent[0].scope.cancel_called and silent[0].dropped == "evicted"
    assert not proven.scope.cancel_called  # older, but proven: dropped after the silent ones
    fifth = admission.enter("10.0.0.5:1", grace=1)
    sixth = admission.enter("10.0.0.6:1", grace=1)
    assert newest.dropped == "evicted" and silent[1].dropped == "evicted"
    seventh = admission.enter("10.0.0.7:1", grace=1)
    assert fifth.dropped == "evicted" and proven.dropped is None
    # Only proven connections left: then the oldest of them goes.
    admission.prove(sixth)
    admission.prove(seventh)
    admission.enter("10.0.0.8:1", grace=1)
    assert proven.dropped == "evicted" and sixth.dropped is None
    assert admission.pending == 3


async def test_admission_caps_each_address_and_admits_for_good(
    autojump_clock: trio.abc.Clock,
) -> None:
    dropped: list[str] = []
    admission = Admission(Limits(max_pending_per_address=2), RefusalLog(dropped.append), 10.0)
    first, second = (admission.enter("10.0.0.1:1", grace=1) for _ in range(2))
    other = admission.enter("10.0.0.2:1", grace=1)
    third = admission.enter("10.0.0.1:2", grace=1)
    assert dropped == ["per_address"] and first.dropped == "per_address"
    assert admission.pending_from("10.0.0.1") == 2 and admission.pending == 3
    admission.admit(second)
    assert second.scope.deadline == float("inf")  # no deadline once authenticated
    assert admission.pending_from("10.0.0.1") == 1
    for _ in range(5):
        admission.enter("10.0.0.1:3", grace=1)
    assert second.dropped is None and other.dropped is None and third.dropped == "per_address"
    assert admission.pending == 3


async def test_refusals_are_logged_once_per_interval_with_a_count(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_tunnel")
    counted: list[str] = []
    log = RefusalLog(counted.append, interval=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        for i in range(500):
            log.note("request_timeout", f"127.0.0.{2 + i % 4}:{1000 + i}", "no request within 5s")
        log.note("tls", "127.0.0.9:1", "TLS handshake failed: unknown CA")
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "refused 127.0.0.2:1000: no request within 5s",
            "refused 127.0.0.9:1: TLS handshake failed: unknown CA",
        ]
        await trio.sleep(12)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3
        assert lines[2].startswith("refused 499 more connections (request_timeout) in the last")
        assert "from 4 addresses (most from 127.0.0.3: 125)" in lines[2]
        # Quiet for a while: the next refusal is logged at once again.
        await trio.sleep(25)
        log.note("request_timeout", "127.0.0.2:9", "no request within 5s")
        assert caplog.records[-1].getMessage() == "refused 127.0.0.2:9: no request within 5s"
        nursery.cancel_scope.cancel()
    assert len(counted) == 502


async def test_slowloris_and_oversized_request_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head sent a byte at a time ends at the request-head deadline, however steadily it
    drips; one longer than any upgrade request is refused at once."""
    monkeypatch.setattr(_admission, "DEFAULT_LIMITS", Limits(request_head_secs=0.5))
    with trio.fail_after(20):
        async with open_rig(flooded_server()) as rig:
            port = rig.server.websocket_port
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                await tcp.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                with trio.fail_after(5):
                    with contextlib.suppress(trio.BrokenResourceError):
                        while True:
                            await tcp.send_all(b"x")
                            with trio.move_on_after(0.05):
                                if await tcp.receive_some(1) == b"":
                                    break
            await wait_refused(rig, "request_timeout", 1)
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                await tcp.send_all(b"GET / HTTP/1.1\r\nX-Big: " + b"y" * 20000)
                with trio.fail_after(5):
                    answer, _end = await read_to_end(tcp)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:80]
            # Refused as a bad request, not at the deadline.
            await wait_refused(rig, "bad_request", 1)
            assert refused(rig, "request_timeout") == 1
