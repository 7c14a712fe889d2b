"""Processes for the benchmark: the traffic service, a trio-tunnel pair, a websocat pair.

Also the /proc readings (CPU seconds, VmRSS, VmHWM, host CPU busy) and an RSS sampler.
Everything listens on 127.0.0.1 only, and every process started here is ended by ``close()``.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import netio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared rig: tunnelrig/

from tunnelrig import (
    RigError,
    TunnelProcess,
    cpu_seconds,
    free_port,
    host_busy,
    proc_status,
    toml_config,
)
from tunnelrig import wait_port as _wait_port

__all__ = ["cpu_seconds", "free_port", "host_busy"]

NETIO = str(Path(netio.__file__).resolve())


class PhaseError(Exception):
    """One phase failed; the bench reports it and goes on."""


# --- /proc -----------------------------------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in bytes; nothing for a dead process."""
    found = {key: proc_status(pid, key) for key in ("VmRSS", "VmHWM")}
    return {key: value for key, value in found.items() if value}


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


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    try:
        _wait_port(port, timeout, proc)
    except RigError as exc:
        raise PhaseError(str(exc)) from None


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


class TunnelPair:
    """``python -m trio_tunnel run`` as server and client 1, both tunnels ending at ``target``.

    ``up_port`` (the client's listen port) carries client->server; ``down_port`` (the
    server's listen port) carries server->client. ``extra`` is whole config tables.
    """

    def __init__(self, workdir: Path, target: int, extra: str = "") -> None:
        self.ws_port, self.down_port, self.up_port = free_port(), free_port(), free_port()
        self.procs: dict[str, TunnelProcess] = {}
        try:
            self._start(workdir, target, extra)
        except BaseException:
            self.close()
            raise

    def _start(self, workdir: Path, target: int, extra: str) -> None:
        server = self.procs["server"] = TunnelProcess(
            "tunnel-server",
            toml_config(
                "server",
                self.ws_port,
                listen={"down": self.down_port},
                connect={"up": target},
                sections=extra,
                level="WARNING",
            ),
            workdir,
        )
        wait_port(self.ws_port, 20, server.proc)
        self.procs["client"] = TunnelProcess(
            "tunnel-client",
            toml_config(
                "client",
                self.ws_port,
                client_id=1,
                listen={"up": self.up_port},
                connect={"down": target},
                sections=extra,
                level="WARNING",
            ),
            workdir,
        )
        popens = [p.proc for p in self.procs.values() if p.proc is not None]
        echo_probe(self.up_port, 20, popens)
        echo_probe(self.down_port, 20, popens)

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if not proc.alive]

    def log_tail(self, name: str, chars: int = 2000) -> str:
        return self.procs[name].log()[-chars:]

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
            proc.close()


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
