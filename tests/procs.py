"""Real ``trio-tunnel run`` processes for system tests, driven as a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from .helpers import LOCALHOST, free_port


def toml_config(
    role: str,
    ws_port: int,
    *,
    client_id: int | None = None,
    listen: dict[str, int] | None = None,
    connect: dict[str, int] | None = None,
    extra: str = "",
    level: str = "INFO",
) -> str:
    lines = [f'role = "{role}"']
    if client_id is not None:
        lines.append(f"client_id = {client_id}")
    lines += ["", "[websocket]", f'url = "ws://127.0.0.1:{ws_port}/"', extra, ""]
    for tunnel, port in (listen or {}).items():
        lines += ["[[listen]]", f'tunnel = "{tunnel}"', f"port = {port}", ""]
    for tunnel, port in (connect or {}).items():
        lines += ["[[connect]]", f'tunnel = "{tunnel}"', 'host = "127.0.0.1"', f"port = {port}", ""]
    lines += ["[logging]", f'level = "{level}"', ""]
    return "\n".join(lines)


class TunnelProcess:
    """One ``python -m trio_tunnel run CONFIG`` process with its log in a file."""

    def __init__(self, name: str, config_text: str, workdir: Path) -> None:
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / f"{name}.log"
        self._log_file = self.log_path.open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_tunnel", "run", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def new_log(self) -> str:
        """The log written since the last (re)start."""
        return self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")

    async def wait_log(self, pattern: str, timeout: float = 15, *, count: int = 1) -> float:
        """Wait until ``pattern`` occurs ``count`` times in this run's log; returns when."""
        regex = re.compile(pattern)
        with trio.fail_after(timeout):
            while len(regex.findall(self.new_log())) < count:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited {self.proc.returncode}:\n{self.new_log()[-3000:]}"
                    )
                await trio.sleep(0.02)
        return time.monotonic()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    async def wait_exit(self, timeout: float = 10) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.02)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        self.kill()
        self._log_file.close()


async def wait_port_open(port: int, timeout: float = 15) -> None:
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


__all__ = ["TunnelProcess", "free_port", "port_refuses", "toml_config", "wait_port_open"]
