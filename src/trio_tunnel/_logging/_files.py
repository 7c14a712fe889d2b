"""The log file: rotated at local midnight, old files gzip-compressed in a background thread.

Rotation happens inside the handler's ``emit``, which runs in the file's writer thread (see
``_outputs``), never in the event loop. Compressing a day of logs takes a second thread so that
even the writer thread is not held up for long.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import logging.handlers
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import BinaryIO


class GzipRotator:
    """The ``rotator`` of a rotating file handler: gzip the closed file in a thread.

    The handler names the rotated file ``<log>.<date>.gz`` (see :func:`gz_namer`). At once
    (so the handler can reopen the log) the rotator moves the closed log to a hidden staging
    name that carries no date, and creates the archive; a thread then fills the archive and
    removes the staging file. That way the cleanup that follows a rotation counts the new
    archive and never the staging file, on every Python version's idea of which files are
    old logs. If compressing fails (disk full) the log is put back as ``<log>.<date>``.
    """

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, source: str, dest: str) -> None:
        directory, name = os.path.split(source)
        handle, staging = tempfile.mkstemp(prefix=f".{name}.", suffix=".rotating", dir=directory)
        os.close(handle)
        os.replace(source, staging)
        archive = open(dest, "wb")  # noqa: SIM115 - the thread closes it
        # Not a daemon: an exiting interpreter waits for the archive to be complete.
        thread = threading.Thread(
            target=_compress,
            args=(staging, archive, dest),
            name="trio-tunnel log gzip",
            daemon=False,
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for compressions in progress; True when none is left running."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in threads)


def gz_namer(default_name: str) -> str:
    return default_name + ".gz"


def _compress(staging: str, archive: BinaryIO, dest: str) -> None:
    plain_name = os.path.basename(dest).removesuffix(".gz")
    try:
        # Closed in reverse: the gzip trailer is written before the file is closed.
        with (
            archive,
            open(staging, "rb") as source,
            gzip.GzipFile(plain_name, "wb", fileobj=archive) as target,
        ):
            shutil.copyfileobj(source, target, 1024 * 1024)
        os.remove(staging)
    except OSError as exc:
        # Logging from here could recurse into the handler that is rotating: say it on stderr.
        print(f"trio-tunnel: cannot compress the log into {dest!r}: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError):
            os.remove(dest)
        with contextlib.suppress(OSError):
            os.replace(staging, dest.removesuffix(".gz"))


class RotatingFile(logging.handlers.TimedRotatingFileHandler):
    """The standard midnight-rotating handler, writing batches and *reporting* failures.

    The standard ``emit`` prints a traceback on stderr for every record it cannot write
    (9,734 of them in 15 s on a full disk). :meth:`write` raises the error instead, so that
    the writer thread can warn once and count what it drops. It also writes a whole batch
    with one write and one flush: each system call lets the event loop's thread take the
    interpreter lock back for up to a switch interval (5 ms), so a writer doing one call per
    record would manage only a few hundred records a second next to a busy event loop.
    """

    def write(self, records: Sequence[logging.LogRecord]) -> None:
        """Write ``records`` (rotating when one is due), or raise what prevented it."""
        try:
            pending: list[str] = []
            for record in records:
                if self.shouldRollover(record):
                    self._write_out(pending)
                    self.doRollover()
                pending.append(self.format(record) + self.terminator)
            self._write_out(pending)
        except BaseException:
            # What a failed write left in the buffer would be retried (and fail) with every
            # later batch: drop it with the stream; the next batch reopens the file.
            self._discard_stream()
            raise

    def _write_out(self, pending: list[str]) -> None:
        if not pending:
            return
        if self.stream is None:
            self.stream = self._open()
        self.stream.write("".join(pending))
        self.stream.flush()
        pending.clear()

    def _discard_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the final flush on a full disk: nothing more can be done
            self._discard_stream()


def file_handler(path: str, days_to_keep: int) -> RotatingFile:
    """A handler writing ``path``, rotated at local midnight, keeping ``days_to_keep`` .gz files."""
    handler = RotatingFile(path, when="midnight", backupCount=days_to_keep, encoding="utf-8")
    handler.namer = gz_namer
    handler.rotator = GzipRotator()
    return handler


__all__ = ["GzipRotator", "RotatingFile", "file_handler", "gz_namer"]
