"""Where log records go, without the event loop ever waiting on them.

``setup(settings)`` puts one handler, the :class:`Pipeline`, on the root logger. In the calling
thread it only rate-limits repeated warnings and puts each record on the bounded queue of each
output (stdout, a daily-rotated file, a syslog server); a thread per output formats and writes
(see ``_outputs``). Per-logger levels from ``levels`` are applied to the loggers themselves, and
trio-websocket's and wsproto's loggers are held at WARNING unless ``levels`` names them.
"""

from __future__ import annotations

import atexit
import copy
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

from .._config import LoggingSettings
from ._files import GzipRotator, RotatingFile, file_handler, gz_namer
from ._formats import (
    DEFAULT_PROCESS,
    JsonFormatter,
    formatter_for,
    process_label,
    severity,
    stdout_is_journal,
    syslog_ident,
)
from ._outputs import NOTICE_LOGGER, FileSink, Output, Sink, StdoutSink, SyslogSink
from ._ratelimit import RateLimiter

__all__ = [
    "DEFAULT_PROCESS",
    "NOTICE_LOGGER",
    "GzipRotator",
    "JsonFormatter",
    "Pipeline",
    "RateLimiter",
    "RotatingFile",
    "dropped",
    "file_handler",
    "flush",
    "gz_namer",
    "outputs_for",
    "process_label",
    "set_process",
    "setup",
    "severity",
    "shutdown",
    "stdout_is_journal",
    "syslog_ident",
]

FLUSH_SECS: Final = 2.0
TICK_SECS: Final = 0.5
# Third-party loggers kept at WARNING unless `levels` names them: at DEBUG, trio-websocket
# logs every message (203k of 206k lines in one run).
QUIET_LOGGERS: Final = ("trio-websocket", "wsproto")

_OutputKey = tuple[object, ...]
_SinkFactory = Callable[[], Sink]

_process = DEFAULT_PROCESS
_pipeline: Pipeline | None = None
_levels_set: set[str] = set()
_state_lock = threading.Lock()


class Pipeline(logging.Handler):
    """The root logger's one handler: rate-limit, then queue each record for every output.

    ``emit`` never blocks and never writes. Summaries of rate-limited records are queued when
    the next record arrives or by a ticker thread (every ``TICK_SECS``), whichever is first.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, limiter: RateLimiter | None = None
    ) -> None:
        super().__init__()
        self.clock = clock
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.outputs: dict[_OutputKey, Output] = {}
        self.closed = False
        self._ticker_stop = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick_forever, name="trio-tunnel log summaries", daemon=True
        )
        self._ticker.start()

    def configure(
        self, wanted: Mapping[_OutputKey, _SinkFactory], *, process: str, json_format: bool
    ) -> None:
        """Make the outputs those of ``wanted``: keep the ones already there (with the new
        format), start the new ones, stop the others. If opening a new one raises OSError,
        nothing changes."""
        created: dict[_OutputKey, Sink] = {}
        try:
            for key, make in wanted.items():
                if key not in self.outputs:
                    created[key] = make()
        except BaseException:
            for sink in created.values():
                sink.close()
            raise
        with self._guard:
            old = dict(self.outputs)
            outputs: dict[_OutputKey, Output] = {}
            for key in wanted:
                output = old.pop(key, None)
                if output is None:
                    output = Output(created[key], self._warn_others)
                sink = output.sink
                sink.formatter = formatter_for(
                    str(key[0]),
                    process=process,
                    json_format=json_format,
                    journal=isinstance(sink, StdoutSink) and sink.journal,
                )
                outputs[key] = output
            self.outputs = outputs
        for output in old.values():
            output.stop()  # it writes what it has queued, closes its sink and ends

    @property
    def _guard(self) -> threading.RLock:
        """The handler's own lock, which ``handle`` holds around ``emit``."""
        assert self.lock is not None
        return self.lock

    def emit(self, record: logging.LogRecord) -> None:
        now = self.clock()
        self._queue_summaries(now)
        if self.limiter.admit(record, now):
            self._offer_all(_prepare(record))

    def tick(self) -> None:
        """Queue the summaries of rate-limit windows that have ended."""
        with self._guard:
            self._queue_summaries(self.clock())

    def flush(self, timeout: float = FLUSH_SECS) -> None:
        """Wait until what is queued is written, at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        for output in list(self.outputs.values()):
            output.flush(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = FLUSH_SECS) -> None:
        """Write the pending summaries and what is queued (at most ``timeout``), then stop."""
        with self._guard:
            if self.closed:
                return
            self.closed = True
            for summary in self.limiter.end_all(self.clock()):
                self._offer_all(_prepare(summary))
            outputs, self.outputs = list(self.outputs.values()), {}
        self._ticker_stop.set()
        deadline = time.monotonic() + timeout
        for output in outputs:
            output.stop()
        for output in outputs:
            output.join(max(0.0, deadline - time.monotonic()))
        super().close()

    def dropped(self) -> dict[str, int]:
        """Records dropped so far, by output name (stuck or failing outputs)."""
        return {output.sink.name: output.dropped_total for output in self.outputs.values()}

    def _queue_summaries(self, now: float) -> None:
        due = self.limiter.next_due()
        if due is not None and due <= now:
            for summary in self.limiter.due(now):
                self._offer_all(_prepare(summary))

    def _offer_all(self, record: logging.LogRecord, *, skip: Output | None = None) -> None:
        outputs = [output for output in self.outputs.values() if output is not skip]
        # Each writer thread formats its own copy (formatting sets attributes on it); the
        # copies are taken before any thread can start on the record.
        records = [record] + [copy.copy(record) for _ in outputs[1:]]
        for output, own in zip(outputs, records, strict=False):
            output.offer(own)

    def _warn_others(self, failing: Output, record: logging.LogRecord, in_writer: bool) -> None:
        others = [output for output in list(self.outputs.values()) if output is not failing]
        if others:
            self._offer_all(record, skip=failing)
        elif in_writer:
            # Nowhere else to say it: one line on stderr, from the writer thread (if stderr
            # is stuck too, only that thread waits).
            print(f"trio-tunnel: {record.getMessage()}", file=sys.stderr, flush=True)

    def _tick_forever(self) -> None:
        while not self._ticker_stop.wait(TICK_SECS):
            self.tick()


_PLAIN: Final = logging.Formatter()


def _prepare(record: logging.LogRecord) -> logging.LogRecord:
    """A copy fixed in time: the message filled in now (its arguments may change later), the
    exception formatted now, so the writer threads hold no references into running code."""
    prepared = copy.copy(record)
    prepared.msg = prepared.message = record.getMessage()
    prepared.args = None
    if record.exc_info:
        prepared.exc_text = record.exc_text or _PLAIN.formatException(record.exc_info)
        prepared.exc_info = None
    return prepared


def set_process(process: str) -> None:
    """Name the process in every line and the syslog tag from the next :func:`setup` on."""
    global _process
    _process = process


def setup(settings: LoggingSettings, *, process: str | None = None) -> Pipeline:
    """Send records where ``settings`` says, replacing the root logger's other handlers.

    ``process`` (else what :func:`set_process` gave, else ``trio-tunnel``) names the process.
    Outputs unchanged since the last call keep running (no records are lost or reordered on a
    reload). Raises OSError if a file or socket cannot be opened, leaving logging as it was.
    """
    global _pipeline, _levels_set
    if process is not None:
        set_process(process)
    wanted = outputs_for(settings, _process)
    root = logging.getLogger()
    with _state_lock:
        pipeline = _pipeline
        fresh = pipeline is None or pipeline.closed or pipeline not in root.handlers
        if fresh:
            pipeline = Pipeline()
        assert pipeline is not None
        try:
            pipeline.configure(wanted, process=_process, json_format=settings.format == "json")
        except BaseException:
            if fresh:
                pipeline.close()
            raise
        for old in list(root.handlers):
            if old is not pipeline:
                root.removeHandler(old)
                old.close()
        if pipeline not in root.handlers:
            root.addHandler(pipeline)
        root.setLevel(settings.level)
        _levels_set = _apply_levels(settings, _levels_set)
        # Python's warnings would be written to stderr by the thread that warns, which may be
        # the event loop and may be the same stuck pipe as stdout: log them instead.
        logging.captureWarnings(True)
        _pipeline = pipeline
    return pipeline


def outputs_for(settings: LoggingSettings, process: str) -> dict[_OutputKey, _SinkFactory]:
    """The outputs ``settings`` asks for, by a key that changes when the output must be
    reopened, each with the function that opens it."""
    wanted: dict[_OutputKey, _SinkFactory] = {}
    if settings.stdout:
        stream = sys.stdout
        wanted[("stdout", id(stream))] = lambda: StdoutSink(stream)
    if settings.file is not None:
        path, days = settings.file, settings.days_to_keep
        wanted[("file", path, days)] = lambda: FileSink(file_handler(path, days))
    if settings.syslog_host is not None:
        host, port, facility = settings.syslog_host, settings.syslog_port, settings.syslog_facility
        ident = syslog_ident(process)
        wanted[("syslog", host, port, facility, ident)] = lambda: SyslogSink(
            host, port, facility, ident
        )
    return wanted


def _apply_levels(settings: LoggingSettings, previous: set[str]) -> set[str]:
    """Set the per-logger levels; undo those a previous setup set and this one does not."""
    levels = dict(settings.levels)
    quiet = logging.getLevelName(max(logging.WARNING, logging.getLevelName(settings.level)))
    for name in QUIET_LOGGERS:
        levels.setdefault(name, quiet)
    for name in previous - levels.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    return set(levels)


def flush(timeout: float = FLUSH_SECS) -> None:
    """Wait (at most ``timeout``) until every record logged so far is written."""
    pipeline = _pipeline
    if pipeline is not None:
        pipeline.flush(timeout)


def dropped() -> dict[str, int]:
    """Log records dropped so far by each output (it was stuck or failing), for metrics."""
    pipeline = _pipeline
    return {} if pipeline is None else pipeline.dropped()


def shutdown(timeout: float = FLUSH_SECS) -> None:
    """Write what is queued (at most ``timeout``) and stop the writer threads."""
    pipeline = _pipeline
    if pipeline is not None:
        pipeline.close(timeout)


# Registered after the logging module's own exit hook, so it runs first: the queues are
# written out while the outputs are still open.
atexit.register(shutdown)
