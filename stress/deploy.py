"""Real ``python -m trio_tunnel run`` processes: a server and two clients on 127.0.0.1.

Each process writes its log to the work directory; the driver reads the logs to know when a
process is ready and which client is active, and reads ``/proc`` for memory figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared rig: tunnelrig/

from tunnelrig import ACTIVE_LINE, LOCALHOST, MiB, free_port, toml_config
from tunnelrig import TunnelProcess as Proc

__all__ = ["LOCALHOST", "Deployment", "MiB", "Proc"]

_TIMINGS = "\n".join(
    [
        "ping_interval_secs = 1",
        "ping_timeout_secs = 4",
        "close_timeout_secs = 1",
        "reconnect_min_secs = 0.1",
        "reconnect_max_secs = 1",
    ]
)


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
    return toml_config(
        role,
        ws_port,
        client_id=client_id,
        listen=listen,
        connect=connect,
        extra=_TIMINGS,
        sections=f"[failover]\nstandby_socket_close_secs = {close_secs}\n",
        level=level,
    )


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
            start=False,
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
                start=False,
            )
            for n in (1, 2)
        }

    @property
    def procs(self) -> list[Proc]:
        return [self.server, *self.clients.values()]

    async def start(self, clients: tuple[int, ...] = (1, 2)) -> None:
        """Server, then the clients in order (the first becomes active)."""
        self.server.start()
        await self.server.wait_log("server listening", timeout=30)
        for n in clients:
            await self.start_client(n)
        await self.server.wait_log(r"active client None -> 1", timeout=30)

    async def start_client(self, n: int) -> None:
        self.clients[n].start()
        await self.clients[n].wait_log(rf"client {n}: listening", timeout=30)

    async def restart(self, proc: Proc) -> None:
        proc.start()
        if proc is self.server:
            await proc.wait_log("server listening", timeout=30)
        else:
            n = 1 if proc is self.clients[1] else 2
            # Listening needs the server; a dead server is the chaos loop's business.
            await proc.wait_log(rf"client {n}: (connected|cannot connect)", timeout=30)

    def active_client(self) -> int | None:
        """The active client according to the server's log (None: none or unknown)."""
        matches = ACTIVE_LINE.findall(self.server.new_log())
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
