"""Outputs that never make the event loop wait: a bounded queue and a writer thread each.

Each output (stdout, the log file, syslog) has its own queue and thread, so one that is stuck
(a pipe nobody reads) or failing (a full disk) holds up neither the tunnel nor the others.
``offer`` never blocks: when the queue is full the record is dropped and counted, and once the
output drains one line says how many were lost. A failing output warns once (through the
others), drops and counts while it fails (trying again every ``retry_secs``), and says how many
it lost when it works again: never a traceback per record.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TextIO

from ._files import RotatingFile
from ._formats import stdout_is_journal

QUEUE_RECORDS: Final = 1000
BATCH_RECORDS: Final = 200
RETRY_SECS: Final = 1.0
IDLE_SECS: Final = 0.5
NOTICE_LOGGER: Final = "trio_tunnel.logging"


class Sink(Protocol):
    """Where an output writes: ``write`` raises (OSError) when the records could not be written.

    Records come in batches: everything queued at the moment, up to ``BATCH_RECORDS``.
    """

    name: str  # "stdout", "the log file /var/log/tunnel.log", "syslog at 10.0.0.5:514"
    formatter: logging.Formatter | None

    def write(self, records: Sequence[logging.LogRecord]) -> None: ...

    def close(self) -> None: ...


class StdoutSink:
    """stdout through ``os.write`` on its file descriptor.

    Not through ``sys.stdout``: a thread blocked inside the buffered stream would hold its lock,
    and the interpreter aborts at exit when it cannot take that lock to flush.
    """

    name = "stdout"

    def __init__(self, stream: TextIO) -> None:
        self.formatter: logging.Formatter | None = None
        self._stream = stream
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a stream without a descriptor (tests)
            self.fd = None
        self.journal = self.fd is not None and stdout_is_journal(self.fd)

    def write(self, records: Sequence[logging.LogRecord]) -> None:
        formatter = self.formatter
        assert formatter is not None
        # One write per batch (see RotatingFile for why).
        text = "".join(formatter.format(record) + "\n" for record in records)
        if self.fd is None:
            self._stream.write(text)
            self._stream.flush()
            return
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(self.fd, data) :]

    def close(self) -> None:
        pass  # stdout stays open for the rest of the process


class FileSink:
    """The rotated log file."""

    def __init__(self, handler: RotatingFile) -> None:
        self.handler = handler
        self.name = f"the log file {handler.baseFilename}"

    @property
    def formatter(self) -> logging.Formatter | None:
        return self.handler.formatter

    @formatter.setter
    def formatter(self, formatter: logging.Formatter | None) -> None:
        self.handler.setFormatter(formatter)

    def write(self, records: Sequence[logging.LogRecord]) -> None:
        self.handler.write(records)

    def close(self) -> None:
        self.handler.close()


class _Syslog(logging.handlers.SysLogHandler):
    failure: BaseException | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        self.failure = sys.exc_info()[1]


class SyslogSink:
    """One UDP datagram per record to a syslog server."""

    def __init__(self, host: str, port: int, facility: str, ident: str) -> None:
        self.handler = _Syslog(
            address=(host, port),
            facility=logging.handlers.SysLogHandler.facility_names[facility],
            socktype=socket.SOCK_DGRAM,
        )
        self.handler.ident = ident
        self.name = f"syslog at {host}:{port}"

    @property
    def formatter(self) -> logging.Formatter | None:
        return self.handler.formatter

    @formatter.setter
    def formatter(self, formatter: logging.Formatter | None) -> None:
        self.handler.setFormatter(formatter)

    def write(self, records: Sequence[logging.LogRecord]) -> None:
        for record in records:  # one datagram each: that is the protocol
            self.handler.failure = None
            self.handler.emit(record)
            failure, self.handler.failure = self.handler.failure, None
            if failure is not None:
                raise failure

    def close(self) -> None:
        self.handler.close()


_STOP: Final = logging.LogRecord("", 0, "", 0, "stop", None, None)


def notice(message: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    """A record about the logging itself, from the ``trio_tunnel.logging`` logger."""
    return logging.LogRecord(NOTICE_LOGGER, level, __file__, 0, message, args, None)


class Output:
    """One sink behind a bounded queue and its writer thread.

    ``warn_others(output, record, in_writer)`` is called to tell the other outputs that this
    one stopped working: from the thread that offered a record (``in_writer`` false), or from
    this output's writer thread (true); it must not block the former.
    """

    def __init__(
        self,
        sink: Sink,
        warn_others: Callable[[Output, logging.LogRecord, bool], None],
        *,
        capacity: int = QUEUE_RECORDS,
        retry_secs: float = RETRY_SECS,
    ) -> None:
        self.sink = sink
        self._warn_others = warn_others
        self._capacity = capacity
        self._retry_secs = retry_secs
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(capacity)
        self._lock = threading.Lock()
        self._dropped_full = 0  # offered while the queue was full (the output is too slow)
        self._dropped_failing = 0  # taken from the queue while the sink was failing
        self._failure: str | None = None
        self._retry_at = 0.0
        self._stopping = threading.Event()
        self.dropped_total = 0
        self._thread = threading.Thread(
            target=self._run, name=f"trio-tunnel log to {sink.name}", daemon=True
        )
        self._thread.start()

    # -- any thread --------------------------------------------------------------------
    def offer(self, record: logging.LogRecord) -> None:
        """Queue ``record`` for writing, or drop and count it if the queue is full."""
        try:
            self._queue.put_nowait(record)
            return
        except queue.Full:
            pass
        with self._lock:
            self._dropped_full += 1
            self.dropped_total += 1
            first = self._dropped_full == 1
        if first and record.name != NOTICE_LOGGER:
            self._warn_others(
                self,
                notice(
                    "%s is blocked (%d records waiting): its log records are dropped until "
                    "it drains",
                    self.sink.name,
                    self._capacity,
                ),
                False,
            )

    def flush(self, timeout: float) -> bool:
        """Wait until every queued record is written (or ``timeout``); True if it was."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: self._queue.unfinished_tasks == 0, timeout
            )

    def stop(self) -> None:
        """Let the thread write what is queued, close the sink and end (does not wait)."""
        self._stopping.set()
        # When the queue is full, the thread sees the event once it has emptied it.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                try:
                    record = self._queue.get(timeout=IDLE_SECS)
                except queue.Empty:
                    if self._stopping.is_set():
                        break
                    self._report_blocked()
                    continue
                batch = [record]
                while record is not _STOP and len(batch) < BATCH_RECORDS:
                    try:
                        record = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(record)
                try:
                    self._write([r for r in batch if r is not _STOP])
                    if record is _STOP:
                        break
                    if self._queue.empty():  # what was queued before the drops is written
                        self._report_blocked()
                finally:
                    for _ in batch:
                        self._queue.task_done()
            self._report_blocked()
            self._report_failing()
        finally:
            self._close_sink()

    def _write(self, records: list[logging.LogRecord]) -> None:
        if not records:
            return
        now = time.monotonic()
        if self._failure is not None and now < self._retry_at:
            self._count_failing_drops(len(records))
            return
        try:
            self.sink.write(records)
        except Exception as exc:  # every failure of an output is reported the same way
            self._retry_at = now + self._retry_secs
            self._count_failing_drops(len(records))
            if self._failure is None:
                self._failure = _describe(exc)
                self._warn_others(
                    self,
                    notice(
                        "cannot write to %s: %s; its log records are dropped until it works "
                        "again (retried every %gs)",
                        self.sink.name,
                        self._failure,
                        self._retry_secs,
                    ),
                    True,
                )
            return
        self._report_failing()

    def _count_failing_drops(self, count: int) -> None:
        self._dropped_failing += count
        with self._lock:
            self.dropped_total += count

    def _report_blocked(self) -> None:
        with self._lock:
            count, self._dropped_full = self._dropped_full, 0
        if count:
            self._write_notice(
                notice("%d log records dropped while %s was blocked", count, self.sink.name)
            )

    def _report_failing(self) -> None:
        if self._failure is None:
            return
        failure, self._failure = self._failure, None
        count, self._dropped_failing = self._dropped_failing, 0
        self._write_notice(
            notice(
                "%d log records dropped while %s was failing (%s)",
                count,
                self.sink.name,
                failure,
            )
        )

    def _write_notice(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write([record])
        except Exception:  # failing again: the next record finds out and reports it
            return

    def _close_sink(self) -> None:
        try:
            self.sink.close()
        except Exception:  # closing a broken output: nothing left to report it to
            return


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


__all__ = [
    "NOTICE_LOGGER",
    "QUEUE_RECORDS",
    "FileSink",
    "Output",
    "Sink",
    "StdoutSink",
    "SyslogSink",
    "notice",
]
