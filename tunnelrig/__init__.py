"""The process rig shared by the system tests, the benchmark and the stress runs.

Real ``python -m trio_tunnel run CONFIG`` processes on 127.0.0.1, driven as an operator would:
a config file written from a few arguments, the log in a file (readiness and state are read
from it, since another process has no event to wait on), signals, restarts, and the
``/proc`` readings (CPU seconds, VmRSS, VmHWM) the bench and stress runs report.

The tests import it as ``tunnelrig`` (the repository root is on their path); ``bench/`` and
``stress/`` scripts put the repository root on ``sys.path`` first. Waits come in two kinds:
``async`` ones for trio drivers (tests, stress) and plain ones for the threaded bench.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

LOCALHOST = "127.0.0.1"
MiB = 1024 * 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- ports -------------------------------------------------------------------------------------


def free_port() -> int:
    """A port to configure a listener on later, chosen below Linux's ephemeral range
    (32768-60999): a kernel-assigned port there could be handed to an outgoing connection
    in the meantime, and the later bind would fail."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


async def wait_port_open(port: int, timeout: float = 15) -> None:
    """Wait until something accepts on ``port`` (trio)."""
    with trio.fail_after(timeout):
        while True:
            try:
                tcp = await trio.open_tcp_stream(LOCALHOST, port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await tcp.aclose()
            return


async def port_refuses(port: int) -> bool:
    try:
        tcp = await trio.open_tcp_stream(LOCALHOST, port)
    except OSError:
        return True
    await tcp.aclose()
    return False


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts on ``port`` (blocking); fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LOCALHOST, port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                message = f"process exited {proc.returncode} before port {port} opened"
                raise RigError(message) from None
            if time.monotonic() > deadline:
                raise RigError(f"port {port} not open after {timeout} s") from None
            time.sleep(0.02)


class RigError(AssertionError):
    """A process of the rig did not do what it was started for (exited, never ready)."""


# --- configs -----------------------------------------------------------------------------------


def toml_config(
    role: str,
    ws_port: int,
    *,
    client_id: int | None = None,
    listen: dict[str, int] | None = None,
    connect: dict[str, int] | None = None,
    extra: str = "",
    sections: str = "",
    level: str = "INFO",
) -> str:
    """A config file's text: ``extra`` goes into ``[websocket]`` (one ``key = value`` a
    line), ``sections`` is whole tables (``[failover]``, ``[streams]``, ...)."""
    lines = [f'role = "{role}"']
    if client_id is not None:
        lines.append(f"client_id = {client_id}")
    lines += ["", "[websocket]", f'url = "ws://127.0.0.1:{ws_port}/"', extra, "", sections, ""]
    for tunnel, port in (listen or {}).items():
        lines += ["[[listen]]", f'tunnel = "{tunnel}"', f"port = {port}", ""]
    for tunnel, port in (connect or {}).items():
        lines += ["[[connect]]", f'tunnel = "{tunnel}"', f'host = "{LOCALHOST}"', f"port = {port}"]
        lines.append("")
    lines += ["[logging]", f'level = "{level}"', ""]
    return "\n".join(lines)


# --- /proc -------------------------------------------------------------------------------------


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` size field (VmRSS, VmHWM) in bytes; 0 if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds that process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def host_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


# --- processes ---------------------------------------------------------------------------------


class TunnelProcess:
    """One ``python -m trio_tunnel run CONFIG`` process, restartable, its log in a file.

    Every run appends to the same log; :meth:`new_log` is the part written since the last
    start, which is what readiness waits look at.
    """

    def __init__(self, name: str, config_text: str, workdir: Path, *, start: bool = True):
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / f"{name}.log"
        self._log_file = self.log_path.open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0
        self.peak_rss = 0  # the highest VmHWM seen over every run
        if start:
            self.start()

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_tunnel", "run", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def new_log(self) -> str:
        """The log written since the last (re)start."""
        return self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        return self.new_log()[-chars:]

    async def wait_log(self, pattern: str, timeout: float = 15, *, count: int = 1) -> float:
        """Wait until ``pattern`` occurs ``count`` times in this run's log; returns when
        (``time.monotonic()``). Fails at once if the process exits meanwhile."""
        regex = re.compile(pattern)
        with trio.fail_after(timeout):
            while len(regex.findall(self.new_log())) < count:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RigError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")
                await trio.sleep(0.02)
        return time.monotonic()

    def signal(self, signum: int) -> None:
        """Send ``signum`` (noting the peak memory first: a killed process has none)."""
        if self.alive:
            self.hwm()
            os.kill(self.pid, signum)

    async def wait_exit(self, timeout: float = 10) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.02)
        return self.proc.returncode

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (blocking)."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL and reap (a stopped process is continued first, so it can die)."""
        if self.alive:
            assert self.proc is not None
            self.hwm()
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self._log_file.close()

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS") if self.alive else 0

    def hwm(self) -> int:
        if self.alive:
            self.peak_rss = max(self.peak_rss, proc_status(self.pid, "VmHWM"))
        return self.peak_rss


# The server's log line for every change of the active client (``active client 1 -> 2:``).
ACTIVE_LINE = re.compile(r"active client (\S+) -> (\S+?):")


async def wait_active(server: TunnelProcess, client_id: int, timeout: float = 15) -> None:
    """Wait until the server process has made ``client_id`` active (a client's own
    "listening" line comes before the server has registered it: a connection to the server
    in between is refused)."""
    await server.wait_log(rf"active client \S+ -> {client_id}:", timeout)


__all__ = [
    "ACTIVE_LINE",
    "LOCALHOST",
    "MiB",
    "RigError",
    "TunnelProcess",
    "cpu_seconds",
    "free_port",
    "host_busy",
    "port_refuses",
    "proc_status",
    "toml_config",
    "wait_active",
    "wait_port",
    "wait_port_open",
]
