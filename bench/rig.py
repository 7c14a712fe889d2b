"""Processes for the benchmark: the traffic service, a trio-tunnel pair, a websocat pair.

Also the /proc readings (CPU seconds, VmRSS, VmHWM, host CPU busy) and an RSS sampler.
Everything listens on 127.0.0.1 only, and every process started here is ended by ``close()``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import netio

NETIO = str(Path(netio.__file__).resolve())
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class PhaseError(Exception):
    """One phase failed; the bench reports it and goes on."""


# --- /proc -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds that process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in bytes; nothing for a dead process."""
    found: dict[str, int] = {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def host_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


class RssSampler:
    """Samples VmRSS of named processes every ``interval`` seconds; keeps the peak per phase."""

    def __init__(self, interval: float = 0.05) -> None:
        self._interval = interval
        self._pids: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def track(self, pids: dict[str, int]) -> None:
        with self._lock:
            self._pids = dict(pids)
            self._peak = {}

    def reset(self) -> None:
        with self._lock:
            self._peak = {}

    def peaks(self) -> dict[str, int]:
        self._sample()
        with self._lock:
            return dict(self._peak)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        with self._lock:
            for name, pid in self._pids.items():
                try:
                    rss = memory(pid)["VmRSS"]
                except (OSError, KeyError):
                    continue
                self._peak[name] = max(rss, self._peak.get(name, 0))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    """A port for a listener configured later, below Linux's ephemeral range (32768-60999),
    where the kernel could meanwhile hand it to an outgoing connection."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind((netio.LOCALHOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((netio.LOCALHOST, port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                message = f"process exited {proc.returncode} before port {port} opened"
                raise PhaseError(message) from None
            if time.monotonic() > deadline:
                raise PhaseError(f"port {port} not open after {timeout} s") from None
            time.sleep(0.02)


def echo_probe(port: int, timeout: float, procs: Iterable[subprocess.Popen[bytes]] = ()) -> None:
    """Retry one 500-byte round trip through ``port`` until it works or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            netio.newstream(port, count=1, size=500, timeout=2)
            return
        except OSError as exc:
            for proc in procs:
                if proc.poll() is not None:
                    raise PhaseError(f"process exited {proc.returncode}") from exc
            if time.monotonic() > deadline:
                raise PhaseError(f"no echo through port {port} after {timeout} s: {exc!r}") from exc
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_worker(args: list[str], timeout: float) -> dict[str, Any]:
    """Run one netio worker; its JSON result, or PhaseError on failure or timeout."""
    try:
        done = subprocess.run(
            [sys.executable, NETIO, *args, "--timeout", str(timeout)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise PhaseError(f"netio {args[0]} timed out after {timeout:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or "error" in result:
        detail = result.get("error") or done.stderr.strip()[-500:]
        raise PhaseError(f"netio {args[0]} failed ({done.returncode}): {detail}")
    return result


class Service:
    """The netio service process: SINK / ECHO / SOURCE on one port, records as JSON lines."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, NETIO, "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise PhaseError("the netio service did not start")
        self.port: int = json.loads(first)["port"]
        self._records: queue.Queue[dict[str, Any]] = queue.Queue()
        self._errors: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            record = json.loads(line)
            if record.get("mode") == "error":
                self._errors.append(record["error"])
            else:
                self._records.put(record)

    def drain(self) -> None:
        """Forget records and errors left over from earlier phases."""
        while True:
            try:
                self._records.get_nowait()
            except queue.Empty:
                break
        self._errors.clear()

    def records(self, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        found = []
        for _ in range(count):
            try:
                found.append(self._records.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                errors = "; ".join(self._errors[-3:])
                raise PhaseError(
                    f"{len(found)} of {count} service records after {timeout:.0f} s {errors}"
                ) from None
        return found

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop_process(self.proc)


class _Pair:
    """Two long-running processes (a server and a client) with logs in ``workdir``."""

    def __init__(self, workdir: Path, label: str) -> None:
        self.workdir = workdir
        self.label = label
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{self.label}-{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.procs[name] = proc
        return proc

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.workdir / f"{self.label}-{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            stop_process(proc)
        for log in self._logs:
            log.close()
        self._logs.clear()


def tunnel_config(
    role: str, ws_port: int, listen: tuple[str, int], connect: tuple[str, int], extra: str
) -> str:
    identity = 'role = "client"\nclient_id = 1' if role == "client" else 'role = "server"'
    return (
        f'{identity}\n\n[websocket]\nurl = "ws://127.0.0.1:{ws_port}/"\n\n{extra}\n'
        f'[[listen]]\ntunnel = "{listen[0]}"\nport = {listen[1]}\n\n'
        f'[[connect]]\ntunnel = "{connect[0]}"\nhost = "127.0.0.1"\nport = {connect[1]}\n\n'
        '[logging]\nlevel = "WARNING"\n'
    )


class TunnelPair(_Pair):
    """``python -m trio_tunnel run`` as server and client 1, both tunnels ending at ``target``.

    ``up_port`` (the client's listen port) carries client->server; ``down_port`` (the
    server's listen port) carries server->client.
    """

    def __init__(self, workdir: Path, target: int, extra: str = "") -> None:
        super().__init__(workdir, "tunnel")
        self.ws_port, self.down_port, self.up_port = free_port(), free_port(), free_port()
        configs = {
            "server": tunnel_config(
                "server", self.ws_port, ("down", self.down_port), ("up", target), extra
            ),
            "client": tunnel_config(
                "client", self.ws_port, ("up", self.up_port), ("down", target), extra
            ),
        }
        for name, text in configs.items():
            path = workdir / f"{name}.toml"
            path.write_text(text)
            proc = self._spawn(name, [sys.executable, "-m", "trio_tunnel", "run", str(path)])
            if name == "server":
                wait_port(self.ws_port, 20, proc)
        echo_probe(self.up_port, 20, self.procs.values())
        echo_probe(self.down_port, 20, self.procs.values())


class WebsocatPair(_Pair):
    """websocat as WebSocket server (to ``target``) and client (TCP listener on ``in_port``)."""

    def __init__(self, workdir: Path, binary: str, target: int) -> None:
        super().__init__(workdir, "websocat")
        self.ws_port, self.in_port = free_port(), free_port()
        common = [binary, "--binary", "-E", "-q"]
        server = self._spawn(
            "server", [*common, f"ws-l:127.0.0.1:{self.ws_port}", f"tcp:127.0.0.1:{target}"]
        )
        wait_port(self.ws_port, 20, server)
        client = self._spawn(
            "client",
            [*common, f"tcp-l:127.0.0.1:{self.in_port}", f"ws://127.0.0.1:{self.ws_port}/"],
        )
        wait_port(self.in_port, 20, client)
        echo_probe(self.in_port, 20, self.procs.values())


def find_websocat(explicit: str | None) -> tuple[str | None, str]:
    """The websocat binary to use and its version line (or why there is none)."""
    binary = explicit or shutil.which("websocat")
    if binary is None:
        return None, "not installed"
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"not usable ({exc})"
    return binary, version
