"""Admission: what an unauthenticated connection may hold on the server, and for how long.

A connection is *pending* from its TCP accept until its tunnel handshake (HELLO) is accepted.
Pending connections are bounded three ways, so nothing a stranger does before authenticating
can lock a real client out:

* **time**: each phase has its own short deadline (the TLS handshake, the HTTP request head,
  the HELLO after the upgrade), and ``handshake_timeout_secs`` bounds them all together;
* **per source address**: at most ``max_pending_per_address`` from one address; a newcomer
  beyond that drops the oldest pending connection *of that address*, so one address's flood
  only churns its own slots;
* **in total**: at most ``max_pending``; a newcomer beyond that drops the oldest pending
  connection of all.

Dropping the *oldest* rather than refusing the newest is what keeps a restarted client able to
get in: an idle or slowloris flood holds old connections, while the client's is new and
finishes in milliseconds. Connections that have shown they are a real client (a complete
upgrade request, or a verified client certificate) are dropped only when no connection that
has not is left, so a flood of silent sockets can never push out a client mid-handshake.

Refusals are counted by reason (the metrics) and logged through :class:`RefusalLog`: the first
of each reason at once with the peer's address, then at most one summary line per reason every
``REFUSAL_LOG_INTERVAL_SECS`` with the count and the addresses.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable

import attrs
import trio

# Deadlines of the phases before authentication (each also capped by handshake_timeout_secs).
TLS_HANDSHAKE_SECS = 5.0
REQUEST_HEAD_SECS = 5.0
HELLO_SECS = 5.0
# Pending (unauthenticated) connections: all of them, and from one source address. The
# per-address cap leaves room for the two clients behind one NAT many times over.
MAX_PENDING = 1024
MAX_PENDING_PER_ADDRESS = 64
REFUSAL_LOG_INTERVAL_SECS = 10.0
_MAX_ADDRESSES_COUNTED = 256  # per summary line, so a spoofing flood cannot grow the counter

log = logging.getLogger("trio_tunnel.websocket")


@attrs.frozen
class Limits:
    """The bounds above; the server uses the module's defaults (tests pass smaller ones)."""

    max_pending: int = MAX_PENDING
    max_pending_per_address: int = MAX_PENDING_PER_ADDRESS
    tls_handshake_secs: float = TLS_HANDSHAKE_SECS
    request_head_secs: float = REQUEST_HEAD_SECS
    hello_secs: float = HELLO_SECS


DEFAULT_LIMITS = Limits()


def source_address(remote: str) -> str:
    """The address part of ``host:port`` or ``[v6]:port``."""
    return remote.rsplit(":", 1)[0] if ":" in remote else remote


@attrs.define(eq=False)
class Ticket:
    """One pending connection. ``scope`` wraps its whole handling: dropping cancels it."""

    remote: str
    address: str
    accepted_at: float
    deadline: float  # accepted_at + handshake_timeout_secs: every phase ends by then
    scope: trio.CancelScope
    proven: bool = False  # sent a complete upgrade request or a verified certificate
    dropped: str | None = None  # the refusal reason, once dropped to make room
    admitted: bool = False

    def phase_deadline(self, secs: float) -> float:
        """A phase starting now and allowed ``secs`` ends then, or at the overall deadline."""
        return min(trio.current_time() + secs, self.deadline)


class Admission:
    """Tracks pending connections and makes room by dropping the oldest (see module doc)."""

    def __init__(self, limits: Limits, refusals: RefusalLog, handshake_timeout: float) -> None:
        self.limits = limits
        self.refusals = refusals
        self.handshake_timeout = handshake_timeout
        # Two ages: not yet proven (dropped first), then proven; dicts keep insertion order.
        self._all: tuple[dict[Ticket, None], dict[Ticket, None]] = ({}, {})
        self._by_address: dict[str, tuple[dict[Ticket, None], dict[Ticket, None]]] = {}

    @property
    def pending(self) -> int:
        return len(self._all[0]) + len(self._all[1])

    def pending_from(self, address: str) -> int:
        queues = self._by_address.get(address)
        return 0 if queues is None else len(queues[0]) + len(queues[1])

    def enter(self, remote: str, grace: float) -> Ticket:
        """Admit a new connection, dropping others to make room. Its scope's deadline is the
        overall one plus ``grace`` (time to send a refusal and close), a backstop: each phase
        ends itself by ``ticket.deadline``."""
        now = trio.current_time()
        address = source_address(remote)
        deadline = now + self.handshake_timeout
        ticket = Ticket(remote, address, now, deadline, trio.CancelScope(deadline=deadline + grace))
        mine = self._by_address.setdefault(address, ({}, {}))
        if len(mine[0]) + len(mine[1]) >= self.limits.max_pending_per_address:
            self._drop(
                _oldest(mine),
                "per_address",
                f"dropped to make room: {self.limits.max_pending_per_address} unauthenticated "
                f"connections pending from {address} (the per-address limit)",
            )
        if self.pending >= self.limits.max_pending:
            self._drop(
                _oldest(self._all),
                "evicted",
                f"dropped to make room: {self.limits.max_pending} unauthenticated connections "
                "pending (the limit)",
            )
        self._all[0][ticket] = None
        # Fetched again: a drop above may have removed an emptied entry.
        self._by_address.setdefault(address, ({}, {}))[0][ticket] = None
        return ticket

    def prove(self, ticket: Ticket) -> None:
        """``ticket`` has shown it is likely a real client: drop it only after the others."""
        if ticket.proven or not self._holds(ticket):
            return
        self._remove(ticket)
        ticket.proven = True
        self._all[1][ticket] = None
        self._by_address.setdefault(ticket.address, ({}, {}))[1][ticket] = None

    def admit(self, ticket: Ticket) -> None:
        """Authenticated: no longer pending, no deadline, never dropped."""
        ticket.admitted = True
        ticket.scope.deadline = math.inf
        self.leave(ticket)

    def leave(self, ticket: Ticket) -> None:
        if self._holds(ticket):
            self._remove(ticket)

    def _holds(self, ticket: Ticket) -> bool:
        return ticket in self._all[ticket.proven]

    def _remove(self, ticket: Ticket) -> None:
        del self._all[ticket.proven][ticket]
        mine = self._by_address[ticket.address]
        del mine[ticket.proven][ticket]
        if not mine[0] and not mine[1]:
            del self._by_address[ticket.address]

    def _drop(self, ticket: Ticket, reason: str, why: str) -> None:
        self._remove(ticket)
        ticket.dropped = reason
        ticket.scope.cancel()
        self.refusals.note(reason, ticket.remote, why)


def _oldest(queues: tuple[dict[Ticket, None], dict[Ticket, None]]) -> Ticket:
    unproven, proven = queues
    return next(iter(unproven or proven))


@attrs.define
class _Window:
    until: float  # refusals of this reason before then are summarised, not logged one by one
    suppressed: int = 0
    last_why: str = ""
    addresses: Counter[str] = attrs.field(factory=Counter)


class RefusalLog:
    """Counts refusals by reason and logs them rate-limited (see the module doc).

    ``run`` writes the summaries; without it, a summary is written with the next refusal of
    that reason after its window.
    """

    def __init__(
        self,
        count: Callable[[str], None] | None = None,
        interval: float = REFUSAL_LOG_INTERVAL_SECS,
    ) -> None:
        self._count = count
        self.interval = interval
        self._windows: dict[str, _Window] = {}

    def note(self, reason: str, remote: str, why: str, *, kind: str = "") -> None:
        """Count ``reason``; log unless this reason (and ``kind``, one of a few fixed values
        that deserve a line of their own) was logged within the interval."""
        if self._count is not None:
            self._count(reason)
        now = trio.current_time()
        key = f"{reason} {kind}" if kind else reason
        window = self._windows.get(key)
        if window is not None and now < window.until:
            window.suppressed += 1
            window.last_why = why
            address = source_address(remote)
            if address in window.addresses or len(window.addresses) < _MAX_ADDRESSES_COUNTED:
                window.addresses[address] += 1
            else:
                window.addresses["others"] += 1
            return
        if window is not None and window.suppressed:
            self._summarise(key, window, now)
        log.warning("refused %s: %s", remote, why)
        self._windows[key] = _Window(until=now + self.interval)

    def flush(self) -> None:
        """Summarise every reason whose window has passed; forget quiet ones."""
        now = trio.current_time()
        for key, window in list(self._windows.items()):
            if now < window.until:
                continue
            if window.suppressed:
                self._summarise(key, window, now)
                self._windows[key] = _Window(until=now + self.interval)
            else:
                del self._windows[key]

    def _summarise(self, key: str, window: _Window, now: float) -> None:
        top, top_count = window.addresses.most_common(1)[0]
        log.warning(
            "refused %d more connections (%s) in the last %.0fs, from %d addresses (most from "
            "%s: %d); the last: %s",
            window.suppressed,
            key,
            now - (window.until - self.interval),
            len(window.addresses),
            top,
            top_count,
            window.last_why,
        )

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval / 2)
            self.flush()
