"""Rate-limiting repeated warnings: a few lines, then one summary per window.

A record is "the same" as another when it comes from the same logger with the same message
template (``record.msg``, before its arguments are filled in), so 1,000 refusals from 1,000
addresses are one kind of line. Per kind and per window (10 s from the first of them), the
first ``burst`` records pass; the rest are counted, and when the window ends one summary
record says how many there were and shows the last. Pure: the caller passes the time.
"""

from __future__ import annotations

import collections
import logging
from typing import Final

WINDOW_SECS: Final = 10.0
BURST: Final = 5
MAX_KINDS: Final = 1024
# Records flagged with this attribute are summaries and are never limited themselves.
SUMMARY_ATTR: Final = "trio_tunnel_summary"

_Key = tuple[str, str | None]


class _Window:
    __slots__ = ("key", "last", "last_message", "passed", "start", "suppressed")

    last: tuple[str, int, str, int] | None

    def __init__(self, key: _Key, start: float) -> None:
        self.key = key
        self.start = start
        self.passed = 0
        self.suppressed = 0
        # The last record held back: where from and its text (no arguments kept alive).
        self.last = None
        self.last_message = ""


class RateLimiter:
    """Decides which WARNING-or-above records pass, and makes the summaries of the rest.

    Memory is bounded: at most ``max_kinds`` kinds are tracked at once; past that, records of
    a new kind are grouped by their logger alone (a logger emitting ever-new message texts,
    such as f-strings, is still limited).
    """

    def __init__(
        self,
        *,
        window: float = WINDOW_SECS,
        burst: int = BURST,
        max_kinds: int = MAX_KINDS,
        level: int = logging.WARNING,
    ) -> None:
        self.window = window
        self.burst = burst
        self.max_kinds = max_kinds
        self.level = level
        self._windows: dict[_Key, _Window] = {}
        # Windows all last `window` seconds, so the oldest start is always the first to end.
        self._order: collections.deque[_Window] = collections.deque()

    def admit(self, record: logging.LogRecord, now: float) -> bool:
        """Whether ``record`` should be written. Call :meth:`due` first, so windows that
        ended are summed up before a record of their kind starts a new one."""
        if record.levelno < self.level or getattr(record, SUMMARY_ATTR, False):
            return True
        key: _Key = (record.name, str(record.msg))
        window = self._windows.get(key)
        if window is None and len(self._windows) >= self.max_kinds:
            key = (record.name, None)
            window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_kinds:
                return True  # every slot taken by a live window: let it through rather than grow
            window = _Window(key, now)
            self._windows[key] = window
            self._order.append(window)
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.suppressed += 1
        window.last_message = record.getMessage()
        window.last = (record.name, record.levelno, record.pathname, record.lineno)
        return False

    def next_due(self) -> float | None:
        """When the oldest window ends, or None if there is none."""
        return self._order[0].start + self.window if self._order else None

    def due(self, now: float) -> list[logging.LogRecord]:
        """End the windows that are over; return the summaries of those that held records back."""
        summaries: list[logging.LogRecord] = []
        while self._order and self._order[0].start + self.window <= now:
            summaries += self._end(self._order.popleft(), now)
        return summaries

    def end_all(self, now: float) -> list[logging.LogRecord]:
        """End every window (at shutdown); return the summaries."""
        summaries: list[logging.LogRecord] = []
        while self._order:
            summaries += self._end(self._order.popleft(), now)
        return summaries

    def _end(self, window: _Window, now: float) -> list[logging.LogRecord]:
        del self._windows[window.key]
        last = window.last
        if last is None:
            return []
        seconds = min(max(now - window.start, 0.0), self.window)
        shown = f"{seconds:.0f}" if seconds >= 1 else f"{seconds:.1g}"
        name, levelno, pathname, lineno = last
        summary = logging.LogRecord(
            name,
            levelno,
            pathname,
            lineno,
            "... %d more like this in the last %s s (the last: %s)",
            (window.suppressed, shown, window.last_message),
            None,
        )
        setattr(summary, SUMMARY_ATTR, True)
        return [summary]


__all__ = ["BURST", "MAX_KINDS", "SUMMARY_ATTR", "WINDOW_SECS", "RateLimiter"]
