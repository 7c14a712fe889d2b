"""Logging in real ``trio-tunnel run`` processes: a stdout nobody reads, a flood of refusals.

Rules: processes on 127.0.0.1 only, every load bounded in count and under an absolute
``trio.fail_after``; assertions are on what the processes did, never on how fast.
"""

from __future__ import annotations

import fcntl
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .helpers import LOCALHOST, echo_handler, free_port, read_to_end, start_service
from .procs import TunnelProcess, toml_config, wait_port_open

pytestmark = pytest.mark.system

F_SETPIPE_SZ = 1031  # Linux fcntl: set a pipe's capacity
STREAMS = 300
PARALLEL = 30
REFUSALS = 1000
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} server [A-Z]+ [\w.-]+: ")
SUMMARY = re.compile(r"\.\.\. (\d+) more like this in the last \S+ s \(the last: ")


@pytest.fixture
def procs() -> Iterator[list[TunnelProcess]]:
    started: list[TunnelProcess] = []
    yield started
    for proc in started:
        proc.close()


async def round_trip(port: int, payload: bytes) -> tuple[bytes, str]:
    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
        await tcp.send_all(payload)
        await tcp.send_eof()
        return await read_to_end(tcp)


async def refused_connection(port: int) -> None:
    """Connect and see the reset: no client is connected, so the server refuses (and logs it)."""
    try:
        tcp = await trio.open_tcp_stream(LOCALHOST, port)
    except OSError:
        return  # reset so quickly that the connect itself saw it
    async with tcp:
        assert await read_to_end(tcp) == (b"", "reset")


async def http_get(port: int, path: str) -> bytes:
    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
        await tcp.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data, _ = await read_to_end(tcp)
    return data


def start_run(
    config: Path, output: int, *, max_file_bytes: int | None = None
) -> subprocess.Popen[bytes]:
    """``trio-tunnel run CONFIG`` with stdout and stderr on the descriptor ``output``.

    With ``max_file_bytes``, every file the process writes fails past that size (EFBIG from
    RLIMIT_FSIZE, Python ignores SIGXFSZ): a real disk-full for its log file.
    """

    def limit_file_size() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = dict(os.environ)
    if max_file_bytes is not None:
        # Under coverage (nox -s tests) the child would save its data at exit, past the
        # limit, and print coverage's own traceback: measure this one process without it.
        env.pop("COVERAGE_PROCESS_CONFIG", None)
        env.pop("COVERAGE_PROCESS_START", None)
    return subprocess.Popen(
        [sys.executable, "-m", "trio_tunnel", "run", str(config)],
        stdout=output,
        stderr=output,
        stdin=subprocess.DEVNULL,
        preexec_fn=limit_file_size,
        env=env,
    )


def unread_bytes(read_end: int) -> int:
    waiting = bytearray(4)
    fcntl.ioctl(read_end, termios.FIONREAD, waiting)
    return int.from_bytes(waiting, sys.byteorder)


async def test_tunnel_and_health_keep_working_while_nobody_reads_stdout(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    echo = await start_service(nursery, echo_handler)
    ws, up, metrics = free_port(), free_port(), free_port()
    config = tmp_path / "server.toml"
    config.write_text(
        toml_config("server", ws, connect={"up": echo})
        + f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
    )
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # full after a few dozen lines
    server = start_run(config, write_end)
    os.close(write_end)
    try:
        client = TunnelProcess(
            "client1", toml_config("client", ws, client_id=1, listen={"up": up}), tmp_path
        )
        procs.append(client)
        with trio.fail_after(30):
            await wait_port_open(ws)
            await client.wait_log(r"client 1: now ACTIVE")
            await wait_port_open(up)

        payloads = [os.urandom(1000) + n.to_bytes(4, "big") for n in range(STREAMS)]
        results: dict[int, tuple[bytes, str]] = {}
        limit = trio.CapacityLimiter(PARALLEL)

        async def one(n: int) -> None:
            async with limit:
                results[n] = await round_trip(up, payloads[n])

        with trio.fail_after(60):  # on main the server froze after ~250 streams
            async with trio.open_nursery() as streams:
                for n in range(STREAMS):
                    streams.start_soon(one, n)
        assert results == {n: (payloads[n], "eof") for n in range(STREAMS)}

        # The pipe filled long ago (nobody ever read it), and the process still answers.
        assert unread_bytes(read_end) > 0
        with trio.fail_after(10):
            response = await http_get(metrics, "/health")
        assert response.startswith(b"HTTP/1.1 200 "), response[:200]
        assert server.poll() is None

        server.send_signal(signal.SIGTERM)
        with trio.fail_after(15):  # the queued lines get a bounded time, then it exits
            while server.poll() is None:
                await trio.sleep(0.05)
        assert server.returncode == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
        output = b""
        os.set_blocking(read_end, False)
        try:
            while chunk := os.read(read_end, 65536):
                output += chunk
        except BlockingIOError:
            pass
        os.close(read_end)
    lines = output.decode(errors="replace").splitlines()
    assert lines, "nothing was written before the pipe filled"
    # What got through is whole lines, naming the process...
    for line in lines:
        assert TEXT_LINE.match(line), line
    # ... and only a few of the streams' lines fitted: the rest met a stdout that was full.
    closed = [line for line in lines if re.search(r"stream \d+ tunnel up .* closed", line)]
    assert len(closed) < STREAMS // 2, len(closed)
    print(f"{len(closed)} of {STREAMS} streams' closing lines fitted in the pipe nobody read")


async def test_a_flood_of_refusals_gives_a_handful_of_lines_on_stdout_and_syslog(
    tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    ws, down = free_port(), free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((LOCALHOST, 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        syslog = f'syslog_host = "127.0.0.1"\nsyslog_port = {receiver.getsockname()[1]}\n'
        server = TunnelProcess(
            "server", toml_config("server", ws, listen={"down": down}) + syslog, tmp_path
        )
        procs.append(server)
        await server.wait_log("server listening")
        limit = trio.CapacityLimiter(50)

        async def refused() -> None:
            async with limit:
                await refused_connection(down)

        with trio.fail_after(60):
            async with trio.open_nursery() as flood:
                for _ in range(REFUSALS):
                    flood.start_soon(refused)
        server.signal(signal.SIGTERM)
        assert await server.wait_exit(15) == 0
        receiver.settimeout(0)
        datagrams: list[bytes] = []
        try:
            while True:
                datagrams.append(receiver.recv(65536))
        except BlockingIOError:
            pass

    marker = "tunnel down: connection refused: no client is connected"
    log = server.log()
    assert "SIGTERM received" in log  # the last lines were written out before the exit
    from_file = [line.split(": ", 1)[1] for line in log.splitlines() if marker in line]
    from_syslog = [
        d.decode().removesuffix("\x00").split(": ", 2)[2] for d in datagrams if marker.encode() in d
    ]
    assert from_syslog == from_file
    summaries = [int(m[1]) for line in from_file if (m := SUMMARY.search(line))]
    written = len(from_file) - len(summaries)
    assert summaries, from_file
    assert written + sum(summaries) == REFUSALS
    assert written <= 30, from_file  # 5 at once, then one a second: a handful, not 1,000
    print(f"{REFUSALS} refusals: {written} lines and {len(summaries)} summaries")


async def test_a_log_file_that_cannot_grow_gives_one_warning_and_no_tracebacks(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    echo = await start_service(nursery, echo_handler)
    ws, up = free_port(), free_port()
    log_file = tmp_path / "server-file.log"
    config = tmp_path / "server.toml"
    config.write_text(toml_config("server", ws, connect={"up": echo}) + f'file = "{log_file}"\n')
    read_end, write_end = os.pipe()  # 64 KiB: room for everything this test logs
    server = start_run(config, write_end, max_file_bytes=2048)
    os.close(write_end)
    try:
        client = TunnelProcess(
            "client1", toml_config("client", ws, client_id=1, listen={"up": up}), tmp_path
        )
        procs.append(client)
        with trio.fail_after(30):
            await wait_port_open(ws)
            await client.wait_log(r"client 1: now ACTIVE")
            await wait_port_open(up)
            for n in range(40):  # two INFO lines each: far past 2 KiB
                payload = n.to_bytes(4, "big") * 100
                assert await round_trip(up, payload) == (payload, "eof")
        server.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            while server.poll() is None:
                await trio.sleep(0.05)
        assert server.returncode == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
        with os.fdopen(read_end, "rb") as pipe:
            output = pipe.read().decode(errors="replace")
    assert "Traceback" not in output
    warnings = [line for line in output.splitlines() if "cannot write to the log file" in line]
    assert len(warnings) == 1, output[-3000:]
    assert warnings[0].endswith(
        f"WARNING trio_tunnel.logging: cannot write to the log file {log_file}: [Errno 27] "
        "File too large; its log records are dropped until it works again (retried every 1s)"
    )
    assert log_file.stat().st_size <= 2048
    # stdout, which could be written, has every stream's lines (and the port probe's).
    assert len(re.findall(r"stream \d+ tunnel up peer \S+ closed", output)) >= 40
