"""Where log records go: stdout, a daily-rotated file, a syslog server (standard handlers only).

``setup(settings)`` replaces whatever handlers the root logger had with the ones the
``[logging]`` table asks for, all with one format. The file handler rotates at local midnight;
old files are gzip-compressed through the handler's ``namer``/``rotator`` hooks, in a
background thread so that compressing a day of logs never stalls the event loop (a stall of
a few seconds would be enough to miss WebSocket pings).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import logging.handlers
import os
import shutil
import socket
import sys
import tempfile
import threading
from typing import BinaryIO

from ._config import LoggingSettings

__all__ = ["FORMAT", "GzipRotator", "setup"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_IDENT = "trio-tunnel: "


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


def file_handler(path: str, days_to_keep: int) -> logging.handlers.TimedRotatingFileHandler:
    """A handler writing ``path``, rotated at local midnight, keeping ``days_to_keep`` .gz files."""
    handler = logging.handlers.TimedRotatingFileHandler(
        path, when="midnight", backupCount=days_to_keep, encoding="utf-8"
    )
    handler.namer = gz_namer
    handler.rotator = GzipRotator()
    return handler


def syslog_handler(host: str, port: int, facility: str) -> logging.handlers.SysLogHandler:
    """A handler sending each record as one UDP datagram to the syslog server at host:port."""
    handler = logging.handlers.SysLogHandler(
        address=(host, port),
        facility=logging.handlers.SysLogHandler.facility_names[facility],
        socktype=socket.SOCK_DGRAM,
    )
    handler.ident = SYSLOG_IDENT
    return handler


def setup(settings: LoggingSettings) -> list[logging.Handler]:
    """Install the handlers ``settings`` asks for on the root logger, replacing any others.

    Returns the installed handlers. Raises OSError if a file or socket cannot be opened (the
    config checks make that unlikely, but the file system may have changed since).
    """
    handlers: list[logging.Handler] = []
    try:
        if settings.stdout:
            handlers.append(logging.StreamHandler(sys.stdout))
        if settings.file is not None:
            handlers.append(file_handler(settings.file, settings.days_to_keep))
        if settings.syslog_host is not None:
            handlers.append(
                syslog_handler(settings.syslog_host, settings.syslog_port, settings.syslog_facility)
            )
    except BaseException:
        for handler in handlers:
            handler.close()
        raise
    formatter = logging.Formatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    if not handlers:
        handlers.append(logging.NullHandler())  # "nowhere", not the last-resort stderr handler
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(settings.level)
    return handlers
