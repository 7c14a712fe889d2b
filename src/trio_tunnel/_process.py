"""The standard process metrics (the names and meanings every Prometheus client library uses).

``process_cpu_seconds_total`` comes from ``os.times()`` and ``process_start_time_seconds``
from the kernel where it says (Linux), so both work everywhere. Memory and file descriptors
are read from ``/proc/self`` on Linux; where that is missing (macOS, Windows) those samples
are left out rather than faked, as the official clients do.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Final

import attrs

__all__ = ["ProcessSample", "sample_process"]

# When this module was first imported: the start time where the kernel does not tell it.
_IMPORTED_AT: Final = time.time()
_PROC: Final = "/proc/self"


@attrs.frozen
class ProcessSample:
    cpu_seconds: float
    start_time: float  # seconds since the epoch
    resident_bytes: int | None = None
    virtual_bytes: int | None = None
    open_fds: int | None = None
    max_fds: int | None = None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except (OSError, ValueError):
        return None


def _linux_start_time() -> float | None:
    """From the process's start in clock ticks after boot (/proc/self/stat field 22)."""
    stat, system = _read(f"{_PROC}/stat"), _read("/proc/stat")
    if stat is None or system is None:
        return None
    try:
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 counted from 1, minus the first two
        boot = next(
            int(line.split()[1]) for line in system.splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, StopIteration, OSError):
        return None


_START_TIME: Final = _linux_start_time() or _IMPORTED_AT


def _memory() -> tuple[int | None, int | None]:
    statm = _read(f"{_PROC}/statm")
    if statm is None:
        return None, None
    try:
        size, resident = (int(field) for field in statm.split()[:2])
    except ValueError:
        return None, None
    page = os.sysconf("SC_PAGE_SIZE")
    return resident * page, size * page


def _open_fds() -> int | None:
    try:
        return len(os.listdir(f"{_PROC}/fd"))
    except OSError:
        return None


def _max_fds() -> int | None:
    if sys.platform == "win32":
        return None
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def sample_process() -> ProcessSample:
    """The process's figures now (a few small reads from /proc; cheap enough per scrape)."""
    times = os.times()
    resident, virtual = _memory()
    return ProcessSample(
        cpu_seconds=times.user + times.system,
        start_time=_START_TIME,
        resident_bytes=resident,
        virtual_bytes=virtual,
        open_fds=_open_fds(),
        max_fds=_max_fds(),
    )
