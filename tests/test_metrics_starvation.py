"""The metrics endpoint cannot be starved (issue 12.7): real sockets on 127.0.0.1.

Slowloris clients open connections, send a request head a few bytes at a time and never end
it; when the endpoint closes one, its client opens another at once. Against today's limits
(64 connections, a 2 s head deadline) twice as many such clients as the cap are held while
/health is asked 20 times: every check must be answered 200, never 503 "too many
connections". A second case sets the head deadline far beyond the test, so only dropping the
oldest idle connection (not the deadline) can make room.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import trio

from trio_tunnel._config import MetricsSettings
from trio_tunnel._metrics import Metrics
from trio_tunnel._metrics_http import MAX_CONNECTIONS, serve_metrics

from .helpers import LOCALHOST
from .test_metrics import get

ANY_PORT = MetricsSettings(listen=f"{LOCALHOST}:0")
CHECKS = 20


def _ready() -> Metrics:
    metrics = Metrics(role="server")
    metrics.live = lambda: {"connected_clients": 1, "active_client": 1}
    return metrics


async def _slowloris(port: int, held: list[int], stop: trio.Event) -> None:
    """Hold one unfinished request open, reopening it whenever the endpoint closes it."""
    while not stop.is_set():
        try:
            tcp = await trio.open_tcp_stream(LOCALHOST, port)
        except OSError:
            await trio.sleep(0.05)
            continue
        held[0] += 1
        try:
            async with tcp:
                await tcp.send_all(b"GET /health HTTP/1.1\r\nHost: h\r\n")
                while not stop.is_set():
                    await tcp.send_all(b"X-Slow: y\r\n")
                    with trio.move_on_after(0.3):
                        if not await tcp.receive_some(1024):
                            break  # closed by the endpoint: come back
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            held[0] -= 1
        await trio.sleep(0.05)  # a held load, not a connect flood


async def _checks_under_attack(
    port: int, attackers: int, cap: int = MAX_CONNECTIONS
) -> list[tuple[int, float]]:
    """(status, seconds) of CHECKS /health requests made while ``attackers`` are held."""
    held, stop = [0], trio.Event()
    results: list[tuple[int, float]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(attackers):
            nursery.start_soon(_slowloris, port, held, stop)
        with trio.fail_after(10):
            while held[0] < min(attackers, cap):
                await trio.sleep(0.02)
        for _ in range(CHECKS):
            started = trio.current_time()
            with trio.fail_after(10):
                response = await get(port, "/health")
            results.append((response.status, trio.current_time() - started))
            await trio.sleep(0.05)
        stop.set()
    return results


def _report(results: list[tuple[int, float]]) -> str:
    worst = max(seconds for _, seconds in results)
    return f"{len(results)} checks, worst {math.ceil(worst * 1000)} ms"


@pytest.mark.system
async def test_health_answers_while_slowloris_clients_hold_the_endpoint(
    nursery: trio.Nursery,
) -> None:
    port = await nursery.start(serve_metrics, ANY_PORT, _ready())
    with trio.fail_after(60):
        results = await _checks_under_attack(port, attackers=2 * MAX_CONNECTIONS)
    assert [status for status, _ in results] == [200] * CHECKS, _report(results)
    print(_report(results))  # the figure for the report (pytest -s shows it)


async def test_dropping_the_oldest_idle_makes_room_without_any_deadline(
    nursery: trio.Nursery,
) -> None:
    port = await nursery.start(
        partial(serve_metrics, ANY_PORT, _ready(), max_connections=16, request_timeout=3600)
    )
    with trio.fail_after(60):
        results = await _checks_under_attack(port, attackers=50, cap=16)
    assert [status for status, _ in results] == [200] * CHECKS, _report(results)
    print(_report(results))
