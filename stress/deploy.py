"""Real ``python -m trio_tunnel run`` processes: a server and two clients on 127.0.0.1.

Each process writes its log to the work directory; the driver reads the logs to know when a
process is ready and which client is active, and reads ``/proc`` for memory figures.
"""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

LOCALHOST = "127.0.0.1"
MiB = 1024 * 1024


def free_port() -> int:
    """A port for a listener configured later, below Linux's ephemeral range (32768-60999),
    where the kernel could meanwhile hand it to an outgoing connection."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


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


class Proc:
    """One tunnel process, restartable, with its log in a file."""

    def __init__(self, name: str, config_text: str, workdir: Path) -> None:
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / f"{name}.log"
        self._log_file = self.log_path.open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.starts = 0
        self.peak_rss = 0  # the highest VmHWM of any run

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

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS") if self.alive else 0

    def hwm(self) -> int:
        if self.alive:
            self.peak_rss = max(self.peak_rss, proc_status(self.pid, "VmHWM"))
        return self.peak_rss

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def new_log(self) -> str:
        return self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")

    async def wait_log(self, pattern: str, timeout: float = 30, *, count: int = 1) -> None:
        regex = re.compile(pattern)
        with trio.fail_after(timeout):
            while len(regex.findall(self.new_log())) < count:
                if not self.alive:
                    raise RuntimeError(f"{self.name} exited:\n{self.new_log()[-3000:]}")
                await trio.sleep(0.05)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.alive:
            self.hwm()
            assert self.proc is not None
            self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 15) -> None:
        with trio.fail_after(timeout):
            while self.alive:  # noqa: ASYNC110 - another process: no event to wait on
                await trio.sleep(0.02)

    def close(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)
        self._log_file.close()


def _config(
    role: str,
    ws_port: int,
    *,
    client_id: int | None = None,
    listen: dict[str, int],
    connect: dict[str, int],
    close_secs: float,
    level: str,
) -> str:
    lines = [f'role = "{role}"']
    if client_id is not None:
        lines.append(f"client_id = {client_id}")
    lines += [
        "",
        "[websocket]",
        f'url = "ws://127.0.0.1:{ws_port}/"',
        "ping_interval_secs = 1",
        "ping_timeout_secs = 4",
        "close_timeout_secs = 1",
        "reconnect_min_secs = 0.1",
        "reconnect_max_secs = 1",
        "",
        "[failover]",
        f"standby_socket_close_secs = {close_secs}",
        "",
    ]
    for tunnel, port in listen.items():
        lines += ["[[listen]]", f'tunnel = "{tunnel}"', f"port = {port}", ""]
    for tunnel, port in connect.items():
        lines += ["[[connect]]", f'tunnel = "{tunnel}"', f'host = "{LOCALHOST}"', f"port = {port}"]
        lines.append("")
    lines += ["[logging]", f'level = "{level}"', ""]
    return "\n".join(lines)


_ACTIVE = re.compile(r"active client (\S+) -> (\S+?):")


class Deployment:
    """Server and clients 1 and 2; ``down`` = the server's listen port (carried by the active
    client), ``up[n]`` = client n's listen port (carried by the server); both reach
    ``service``."""

    def __init__(
        self, workdir: Path, service: int, *, close_secs: float = 1.0, level: str = "INFO"
    ) -> None:
        self.workdir = workdir
        self.ws = free_port()
        self.down = free_port()
        self.up = {1: free_port(), 2: free_port()}
        self.server = Proc(
            "server",
            _config(
                "server",
                self.ws,
                listen={"down": self.down},
                connect={"up": service},
                close_secs=close_secs,
                level=level,
            ),
            workdir,
        )
        self.clients = {
            n: Proc(
                f"client{n}",
                _config(
                    "client",
                    self.ws,
                    client_id=n,
                    listen={"up": self.up[n]},
                    connect={"down": service},
                    close_secs=close_secs,
                    level=level,
                ),
                workdir,
            )
            for n in (1, 2)
        }

    @property
    def procs(self) -> list[Proc]:
        return [self.server, *self.clients.values()]

    async def start(self, clients: tuple[int, ...] = (1, 2)) -> None:
        """Server, then the clients in order (the first becomes active)."""
        self.server.start()
        await self.server.wait_log("server listening")
        for n in clients:
            await self.start_client(n)
        await self.server.wait_log(r"active client None -> 1")

    async def start_client(self, n: int) -> None:
        self.clients[n].start()
        await self.clients[n].wait_log(rf"client {n}: listening")

    async def restart(self, proc: Proc) -> None:
        proc.start()
        if proc is self.server:
            await proc.wait_log("server listening")
        else:
            n = 1 if proc is self.clients[1] else 2
            # Listening needs the server; a dead server is the chaos loop's business.
            await proc.wait_log(rf"client {n}: (connected|cannot connect)")

    def active_client(self) -> int | None:
        """The active client according to the server's log (None: none or unknown)."""
        matches = _ACTIVE.findall(self.server.new_log())
        if not matches:
            return None
        last = matches[-1][1]
        return int(last) if last.isdigit() else None

    def rss(self) -> dict[str, int]:
        return {p.name: p.rss() for p in self.procs}

    def peaks(self) -> dict[str, int]:
        return {p.name: p.hwm() for p in self.procs}

    def tracebacks(self) -> list[str]:
        return [p.name for p in self.procs if "Traceback" in p.log()]

    def close(self) -> None:
        for proc in self.procs:
            proc.close()
