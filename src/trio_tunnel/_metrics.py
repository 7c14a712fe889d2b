"""Counters and gauges of one process, kept in plain Python (no I/O here).

The core calls these methods at events (never per data frame: bytes are added when a stream
closes and sampled from open streams when read). The HTTP endpoint renders them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Literal, get_args

import attrs

from ._protocol import ResetCode

# Why a TCP connection to a listen port was refused (reset at once), as a metric label:
#   no_client         server: no client is connected
#   no_active_client  server: clients are connected but none is active (a close period)
#   not_connected     client: no WebSocket to the server
#   session_closed    the WebSocket session was closing when the connection came in
#   stream_limit      the session already carries max_streams_per_session streams
#   shutting_down     the process is stopping (draining) and takes no new streams
#   client_draining   server: the only connected client is draining (planned shutdown)
#   other             anything else (a new reason not given a label of its own yet)
ConnectionRefusal = Literal[
    "no_client",
    "no_active_client",
    "not_connected",
    "session_closed",
    "stream_limit",
    "shutting_down",
    "client_draining",
    "other",
]
CONNECTION_REFUSAL_REASONS: tuple[ConnectionRefusal, ...] = get_args(ConnectionRefusal)


@attrs.define
class TunnelCounters:
    streams_open: int = 0
    streams_total: int = 0
    bytes_out: int = 0  # from this side's TCP into the tunnel (closed streams)
    bytes_in: int = 0  # from the tunnel to this side's TCP (closed streams)


@attrs.define
class Metrics:
    """Everything an operator may want to count in one process."""

    role: str = "server"
    tunnels: dict[str, TunnelCounters] = attrs.field(factory=dict)
    switches: Counter[str] = attrs.field(factory=Counter)  # reason -> count
    refused_peers: Counter[str] = attrs.field(factory=Counter)  # reason -> count
    stream_resets: Counter[str] = attrs.field(factory=Counter)  # reason kind -> count
    # (tunnel, reason) -> TCP connections to a listen port refused
    connections_refused: Counter[tuple[str, ConnectionRefusal]] = attrs.field(factory=Counter)
    reconnects: int = 0
    # Live values the owner provides: connected client ids, active id, connected (client).
    live: Callable[[], dict[str, object]] = attrs.field(default=lambda: {})
    open_stream_bytes: Callable[[], dict[str, tuple[int, int]]] = attrs.field(default=lambda: {})

    def tunnel(self, name: str) -> TunnelCounters:
        counters = self.tunnels.get(name)
        if counters is None:
            counters = self.tunnels[name] = TunnelCounters()
        return counters

    def stream_opened(self, tunnel: str) -> None:
        counters = self.tunnel(tunnel)
        counters.streams_open += 1
        counters.streams_total += 1

    def stream_closed(
        self, tunnel: str, bytes_out: int, bytes_in: int, reset: ResetCode | None
    ) -> None:
        counters = self.tunnel(tunnel)
        counters.streams_open -= 1
        counters.bytes_out += bytes_out
        counters.bytes_in += bytes_in
        if reset is not None:
            self.stream_resets[reset.label] += 1

    def switched(self, reason: str) -> None:
        self.switches[switch_kind(reason)] += 1

    def refused(self, reason: str) -> None:
        self.refused_peers[reason] += 1

    def connection_refused(self, tunnel: str, reason: ConnectionRefusal) -> None:
        """A TCP connection to ``tunnel``'s listen port was refused for ``reason``."""
        if reason not in CONNECTION_REFUSAL_REASONS:  # keep the label values few and known
            reason = "other"
        self.connections_refused[tunnel, reason] += 1

    def reconnected(self) -> None:
        self.reconnects += 1


# Every label value each counter can have, so an exporter can show zeros before the first event
# (a Prometheus rate() over a series that appears mid-way misses its first increment).
RESET_KINDS = tuple(code.label for code in ResetCode)
SWITCH_REASONS = ("first_client", "data", "client_lost", "drain", "other")
REFUSAL_REASONS = (
    "unknown_path",
    "auth_token",
    "credential",  # a credential of the other client id ([clients.N])
    "handshake",
    "tls",
    # before authentication (see _admission): a phase's deadline, a bad request, or dropped
    # to make room (the per-address cap, the total cap)
    "tls_timeout",
    "request_timeout",
    "bad_request",
    "hello_timeout",
    "per_address",
    "evicted",
    # a second process claiming a live client's id, past the quick-restart replacements
    "id_in_use",
)


def switch_kind(reason: str) -> str:
    text = reason.lower()
    if "data arrived" in text:
        return "data"
    if "is draining" in text:
        return "drain"
    if "lost" in text:
        return "client_lost"
    if "connected and no client was active" in text:
        return "first_client"
    return "other"
