"""How a record becomes a line: text or JSON, naming the process, for each kind of output."""

from __future__ import annotations

import datetime
import json
import logging
import os

DEFAULT_PROCESS = "trio-tunnel"

# sd-daemon(3) priority prefixes, by logging level (the syslog severities).
_SEVERITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def process_label(role: str, client_id: int | None) -> str:
    """``server``, ``client1`` or ``client2``: what every line and the syslog tag call us."""
    return "server" if role == "server" or client_id is None else f"client{client_id}"


def syslog_ident(process: str) -> str:
    """The syslog tag, ``trio-tunnel[client1]: `` (or ``trio-tunnel: `` before the config)."""
    return "trio-tunnel: " if process == DEFAULT_PROCESS else f"trio-tunnel[{process}]: "


def severity(levelno: int) -> int:
    """The syslog severity of a logging level (levels between the standard ones round up)."""
    for level in sorted(_SEVERITY, reverse=True):
        if levelno >= level:
            return _SEVERITY[level]
    return _SEVERITY[logging.DEBUG]


def stdout_is_journal(fd: int) -> bool:
    """Whether ``fd`` is the systemd journal's stream, as ``$JOURNAL_STREAM`` (dev:inode) says.

    systemd sets the variable for a service whose stdout or stderr goes to the journal; a child
    that inherited the variable but has its stdout redirected elsewhere does not match.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(fd)
    except OSError:
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, process, message (and exception)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created).astimezone()
        line: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": self.process,
            "message": record.getMessage(),
        }
        exception = record.exc_text
        if exception is None and record.exc_info:
            exception = self.formatException(record.exc_info)
        if exception:
            line["exception"] = exception
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    """Every line of a record prefixed with its priority, ``<4>``, for the systemd journal.

    The journal stamps each line itself, so the inner format carries no time.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{severity(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def _text(fmt: str) -> logging.Formatter:
    return logging.Formatter(fmt)


def formatter_for(
    output: str, *, process: str, json_format: bool, journal: bool = False
) -> logging.Formatter:
    """The formatter of one output kind: ``"stdout"``, ``"file"`` or ``"syslog"``.

    Text lines read ``2026-01-31 12:00:00,000 client1 WARNING trio_tunnel.client: ...``.
    Syslog text leaves out the time and the process: the receiver stamps the time, and the
    tag (``trio-tunnel[client1]:``) names the process.
    """
    if json_format:
        inner: logging.Formatter = JsonFormatter(process)
    elif output == "syslog":
        return _text("%(levelname)s %(name)s: %(message)s")
    else:
        name = process.replace("%", "%%")
        stamp = "" if journal else "%(asctime)s "
        inner = _text(f"{stamp}{name} %(levelname)s %(name)s: %(message)s")
    return JournalFormatter(inner) if journal else inner


__all__ = [
    "DEFAULT_PROCESS",
    "JournalFormatter",
    "JsonFormatter",
    "formatter_for",
    "process_label",
    "severity",
    "stdout_is_journal",
    "syslog_ident",
]
