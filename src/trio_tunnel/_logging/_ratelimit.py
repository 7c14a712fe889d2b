"""Rate-limiting repeated warnings: a few lines at once, then a trickle, and a summary.

A record is "the same" as another when it comes from the same logger with the same message
template (``record.msg``, before its arguments are filled in), so 1,000 refusals from 1,000
addresses are one kind of line. Each kind has a token bucket: ``burst`` records may pass at
once, then one per ``1 / rate`` seconds. The records held back are counted; ``window`` seconds
after the first of them, one summary record says how many there were and shows the last.
A failover's few state lines pass untouched; a flood gives a handful of lines and a summary
every ``window``. Pure: the caller passes the time.
"""

from __future__ import annotations

import collections
import logging
from typing import Final

WINDOW_SECS: Final = 10.0
BURST: Final = 5
RATE_PER_SEC: Final = 1.0
MAX_KINDS: Final = 1024
# Records flagged with this attribute are summaries and are never limited themselves.
SUMMARY_ATTR: Final = "trio_tunnel_summary"

_Key = tuple[str, str | None]


class _Kind:
    __slots__ = ("key", "last", "last_message", "since", "suppressed", "tokens", "updated")

    def __init__(self, key: _Key, now: float, tokens: float) -> None:
        self.key = key
        self.tokens = tokens
        self.updated = now
        self.suppressed = 0
        self.since = 0.0  # when the first record held back since the last summary came
        # The last record held back: where from and its text (no arguments kept alive).
        self.last: tuple[str, int, str, int] | None = None
        self.last_message = ""


class RateLimiter:
    """Decides which WARNING-or-above records pass, and makes the summaries of the rest.

    Memory is bounded: at most ``max_kinds`` kinds are tracked at once (a kind whose bucket
    is full again and holds nothing back is forgotten when room is needed). Once half the
    slots are taken, records of a new kind are grouped by their logger alone, so a logger
    emitting ever-new message texts (f-strings) is still limited.
    """

    def __init__(
        self,
        *,
        window: float = WINDOW_SECS,
        burst: int = BURST,
        rate: float = RATE_PER_SEC,
        max_kinds: int = MAX_KINDS,
        level: int = logging.WARNING,
    ) -> None:
        self.window = window
        self.burst = burst
        self.rate = rate
        self.max_kinds = max_kinds
        self.level = level
        self._kinds: dict[_Key, _Kind] = {}
        # Kinds holding records back, in the order their summaries fall due.
        self._pending: collections.deque[_Kind] = collections.deque()

    def admit(self, record: logging.LogRecord, now: float) -> bool:
        """Whether ``record`` should be written. Call :meth:`due` first, so that summaries
        come before the records that follow them."""
        if record.levelno < self.level or getattr(record, SUMMARY_ATTR, False):
            return True
        # Half the slots for kinds, the other half for the loggers that overflow them.
        kind = self._kind((record.name, str(record.msg)), now, self.max_kinds // 2)
        if kind is None:
            kind = self._kind((record.name, None), now, self.max_kinds)
            if kind is None:
                return True  # every slot holds records back: let it through rather than grow
        kind.tokens = min(self.burst, kind.tokens + (now - kind.updated) * self.rate)
        kind.updated = now
        if kind.tokens >= 1:
            kind.tokens -= 1
            return True
        if kind.suppressed == 0:
            kind.since = now
            self._pending.append(kind)
        kind.suppressed += 1
        kind.last = (record.name, record.levelno, record.pathname, record.lineno)
        kind.last_message = record.getMessage()
        return False

    def _kind(self, key: _Key, now: float, limit: int) -> _Kind | None:
        kind = self._kinds.get(key)
        if kind is not None:
            return kind
        if len(self._kinds) >= limit:
            self._forget_idle(now)
            if len(self._kinds) >= limit:
                return None
        kind = self._kinds[key] = _Kind(key, now, float(self.burst))
        return kind

    def _forget_idle(self, now: float) -> None:
        """Drop the kinds that hold nothing back and whose bucket has filled up again."""
        for key, kind in list(self._kinds.items()):
            refilled = kind.tokens + (now - kind.updated) * self.rate >= self.burst
            if kind.suppressed == 0 and refilled:
                del self._kinds[key]

    def next_due(self) -> float | None:
        """When the next summary is due, or None if nothing is held back."""
        return self._pending[0].since + self.window if self._pending else None

    def due(self, now: float) -> list[logging.LogRecord]:
        """The summaries whose time has come."""
        summaries: list[logging.LogRecord] = []
        while self._pending and self._pending[0].since + self.window <= now:
            summaries.append(self._summary(self._pending.popleft(), now))
        return summaries

    def end_all(self, now: float) -> list[logging.LogRecord]:
        """Every pending summary (at shutdown)."""
        summaries = [self._summary(kind, now) for kind in self._pending]
        self._pending.clear()
        return summaries

    def _summary(self, kind: _Kind, now: float) -> logging.LogRecord:
        assert kind.last is not None
        name, levelno, pathname, lineno = kind.last
        seconds = min(max(now - kind.since, 0.0), self.window)
        shown = f"{seconds:.0f}" if seconds >= 1 else f"{seconds:.1g}"
        summary = logging.LogRecord(
            name,
            levelno,
            pathname,
            lineno,
            "... %d more like this in the last %s s (the last: %s)",
            (kind.suppressed, shown, kind.last_message),
            None,
        )
        setattr(summary, SUMMARY_ATTR, True)
        kind.suppressed = 0
        kind.last = None
        return summary


__all__ = ["BURST", "MAX_KINDS", "RATE_PER_SEC", "SUMMARY_ATTR", "WINDOW_SECS", "RateLimiter"]
