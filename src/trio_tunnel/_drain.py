"""Graceful shutdown (``[shutdown] drain_secs``): let open streams finish, bounded.

The owner (server or client) first stops taking new streams; then :func:`drain_sessions`
waits until every stream of its sessions has ended, but no later than the deadline (as
hypercorn does: the handler nursery's deadline set to now plus the graceful timeout). What is
still open then is reset (RST to the TCP peer, RESET ``SHUTDOWN`` to the tunnel peer), never
closed with a FIN: a transfer cut by the deadline must not look complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import attrs
import trio

from ._metrics import Metrics
from ._protocol import ResetCode
from ._session import Session

log = logging.getLogger("trio_tunnel.drain")

# Resetting is immediate; this only bounds the wait for the stream tasks to finish closing.
_RESET_WAIT_SECS = 2.0


@attrs.frozen
class DrainResult:
    """What a drain did: ``streams_open`` were open at its start or opened during it (sent
    by a peer that had not heard of the drain yet); of those, ``finished`` ended with both
    directions at EOF and ``reset`` by a reset (``reset_at_deadline`` of them because the
    deadline came, the others by a peer or a TCP error during the drain)."""

    streams_open: int
    finished: int
    reset: int
    reset_at_deadline: int
    secs: float


def _reset_total(metrics: Metrics) -> int:
    return sum(metrics.stream_resets.values())


def _opened_total(metrics: Metrics) -> int:
    return sum(counters.streams_total for counters in metrics.tunnels.values())


async def drain_sessions(
    sessions: Callable[[], Sequence[Session]],
    metrics: Metrics,
    deadline: float,
    who: str,
) -> DrainResult:
    """Wait (until ``deadline``) for the streams of ``sessions()`` to end, then reset the rest.

    ``sessions`` is called again as the drain goes on: sessions come and go meanwhile. The
    caller has already stopped taking new streams of its own.
    """
    started = trio.current_time()
    secs = max(0.0, deadline - started)
    streams_open = sum(session.stream_count for session in sessions())
    resets_before = _reset_total(metrics)
    opened_before = _opened_total(metrics)
    log.warning(
        "%s: draining: %d streams open, new connections refused; they have %.1fs to finish"
        " (a second SIGTERM or SIGINT stops at once)",
        who,
        streams_open,
        secs,
    )
    with trio.move_on_at(deadline):
        while busy := [session for session in sessions() if session.stream_count]:
            for session in busy:
                await session.wait_streams_done()
    cut: list[int] = []

    async def reset_rest(session: Session) -> None:
        cut.append(
            await session.reset_all_streams(
                "shutdown: the drain deadline passed",
                ResetCode.SHUTDOWN,
                timeout=_RESET_WAIT_SECS,
            )
        )

    async with trio.open_nursery() as nursery:
        for session in sessions():
            if session.stream_count:
                nursery.start_soon(reset_rest, session)
    streams_open += _opened_total(metrics) - opened_before
    reset = min(streams_open, _reset_total(metrics) - resets_before)
    result = DrainResult(
        streams_open=streams_open,
        finished=streams_open - reset,
        reset=reset,
        reset_at_deadline=sum(cut),
        secs=trio.current_time() - started,
    )
    log.warning(
        "%s: drain done after %.1fs: %d of %d streams finished, %d reset (%d at the deadline)",
        who,
        result.secs,
        result.finished,
        result.streams_open,
        result.reset,
        result.reset_at_deadline,
    )
    return result
