"""Faults around the tunnel: slow receivers, far services that reset, half-close or never
answer, descriptor exhaustion, and a thousand concurrent streams.

In-process rigs (``tests.helpers``) where the tunnel's own objects are inspected; a real
server process with a low ``ulimit -n`` for descriptor exhaustion.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

import trio_tunnel as tt
from trio_tunnel._protocol import FRAME_COST, FrameType, encode_frame

from .helpers import (
    LOCALHOST,
    Rig,
    client_config,
    closed_port,
    echo_handler,
    free_port,
    open_rig,
    read_to_end,
    reset_socket,
    server_config,
    start_service,
)
from .procs import TunnelProcess, toml_config, wait_active
from .test_hostile import raw_session

KiB = 1024
MiB = 1024 * KiB
WINDOW = 256 * KiB  # pinned where a test measures buffering against the window


def _kernel_buffer_max() -> int:
    """The most the kernel may buffer in one TCP connection (send plus receive side)."""
    total = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            total += 32 * MiB
    return total


def check_buffering(rig: Rig, client: tt.Client) -> int:
    """Assert every stream's inbound buffering is within its window; returns the largest.

    ``recv_buffered`` counts what the peer sent and this side has not granted back yet (it
    includes everything still queued for the TCP socket); the inbound queue holds at most one
    item per FRAME_COST of window; each stream has at most one frame waiting in the writer.
    """
    largest = 0
    sessions = [client._session] + [c.session for c in rig.server._clients.values()]
    for session in sessions:
        assert session is not None
        for stream in list(session._streams.values()):
            flow = stream.flow
            assert flow is not None
            buffered = flow.recv_buffered
            assert 0 <= buffered <= flow.window, (stream, buffered)
            queued = stream.inbound_receive.statistics().current_buffer_used
            assert queued <= flow.window // FRAME_COST + 1
            largest = max(largest, buffered)
        assert len(session.writer._ready) <= max(1, session.streams_total)
        assert len(session.writer._control) <= session.writer._control_limit
    return largest


@attrs.define
class Firehose:
    """A service that sends a known pattern as fast as TCP takes it, counting what it sent."""

    block: bytes = attrs.field(factory=lambda: os.urandom(MiB))
    sent: int = 0

    async def handler(self, tcp: trio.SocketStream) -> None:
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB)
        try:
            while True:
                await tcp.send_all(self.block)
                self.sent += len(self.block)
        except trio.BrokenResourceError:
            pass

    def check_prefix(self, offset: int, data: bytes) -> None:
        expected = (self.block * (len(data) // len(self.block) + 2))[
            offset % len(self.block) : offset % len(self.block) + len(data)
        ]
        assert data == expected, f"slow stream corrupted at offset {offset}"


async def receive_exact(tcp: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await tcp.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


async def echo_sha(port: int, size: int) -> None:
    """Send ``size`` random bytes through ``port`` to an echo service and check them back."""
    payload = os.urandom(size)

    async def send(tcp: trio.SocketStream) -> None:
        await tcp.send_all(payload)
        await tcp.send_eof()

    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp, trio.open_nursery() as nursery:
        nursery.start_soon(send, tcp)
        data, end = await read_to_end(tcp)
    assert end == "eof"
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()


async def test_slow_receiver_is_held_to_its_window_and_does_not_slow_others(
    nursery: trio.Nursery,
) -> None:
    """A firehose service behind the client, an application that reads 64 KiB every 20 ms.

    Stalled completely, it must not stop a 4 MiB echo on the same WebSocket. Reading slowly,
    it must stay within its windows: every stream's buffering within its window, what the
    tunnel and kernels hold between the firehose and the application bounded by the window plus
    the kernel's socket buffers, and no growth of this process's Python memory with the
    transfer (tracemalloc).
    """
    hose = Firehose()
    hose_port = await start_service(nursery, hose.handler)
    echo = await start_service(nursery, echo_handler)
    in_flight_bound = WINDOW + 2 * _kernel_buffer_max() + 2 * MiB
    streams = tt.StreamSettings(window_bytes=WINDOW)
    with trio.fail_after(60):
        async with (
            open_rig(
                attrs.evolve(server_config(listen={"hose": 0, "echo": 0}), streams=streams),
                [
                    attrs.evolve(
                        client_config(1, 0, connect={"hose": hose_port, "echo": echo}),
                        streams=streams,
                    )
                ],
            ) as rig,
            await trio.open_tcp_stream(LOCALHOST, rig.server_port("hose")) as slow,
        ):
            slow.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
            client = rig.clients[1]
            received = 0
            first = await receive_exact(slow, 64 * KiB)
            hose.check_prefix(received, first)
            received += len(first)

            # 1. Stalled: another stream on the same WebSocket still completes.
            await trio.sleep(0.3)  # let the firehose fill every buffer on the way
            check_buffering(rig, client)
            await echo_sha(rig.server_port("echo"), 4 * MiB)
            assert hose.sent - received <= in_flight_bound
            largest = check_buffering(rig, client)

            # 2. Slow: 64 KiB every 20 ms, for 200 reads (12.5 MiB).
            tracemalloc.start()
            try:
                start_memory, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                worst_in_flight = 0
                for _ in range(200):
                    data = await receive_exact(slow, 64 * KiB)
                    hose.check_prefix(received, data)
                    received += len(data)
                    largest = max(largest, check_buffering(rig, client))
                    worst_in_flight = max(worst_in_flight, hose.sent - received)
                    assert hose.sent - received <= in_flight_bound
                    await trio.sleep(0.02)
                _, peak_memory = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            growth = peak_memory - start_memory
            print(
                f"\nslow receiver: {received / MiB:.1f} MiB read, largest stream buffering "
                f"{largest / KiB:.0f} KiB (window {WINDOW / KiB:.0f} KiB), firehose ahead by "
                f"at most {worst_in_flight / MiB:.1f} MiB (tunnel + kernel buffers), "
                f"Python memory peak +{growth / MiB:.2f} MiB"
            )
            # 12.5 MiB went through; the tunnel held a few windows' worth at any time.
            assert growth < 6 * MiB
            assert rig.server.state.clients[1].streams == 1


# --- the far service: reset, half-close, never answering ----------------------------------


@asynccontextmanager
async def both_ways(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> AsyncIterator[tuple[Rig, dict[str, int]]]:
    """A rig where ``handler`` sits behind both tunnels: ``down`` (server listens, client
    connects) and ``up`` (client listens, server connects)."""
    service = await start_service(nursery, handler)
    async with open_rig(
        server_config(listen={"down": 0}, connect={"up": service}),
        [client_config(1, 0, listen={"up": 0}, connect={"down": service})],
    ) as rig:
        yield rig, {"down": rig.server_port("down"), "up": rig.client_port(1, "up")}


@pytest.mark.parametrize("tunnel", ["down", "up"])
async def test_far_service_reset_reaches_the_application_as_reset(
    nursery: trio.Nursery, tunnel: str
) -> None:
    async def reset_midway(tcp: trio.SocketStream) -> None:
        await tcp.send_all(os.urandom(100 * KiB))
        await tcp.receive_some(1000)
        reset_socket(tcp)

    with trio.fail_after(20):
        async with both_ways(nursery, reset_midway) as (_rig, ports):
            async with await trio.open_tcp_stream(LOCALHOST, ports[tunnel]) as tcp:
                await tcp.send_all(b"x" * 1000)
                data, end = await read_to_end(tcp)
            assert end == "reset"
            assert len(data) <= 100 * KiB


@pytest.mark.parametrize("tunnel", ["down", "up"])
async def test_application_reset_reaches_the_far_service_as_reset(
    nursery: trio.Nursery, tunnel: str
) -> None:
    seen: list[tuple[int, str]] = []

    async def record(tcp: trio.SocketStream) -> None:
        data, end = await read_to_end(tcp)
        seen.append((len(data), end))

    with trio.fail_after(20):
        async with both_ways(nursery, record) as (_rig, ports):
            tcp = await trio.open_tcp_stream(LOCALHOST, ports[tunnel])
            await tcp.send_all(os.urandom(300 * KiB))
            await trio.sleep(0.2)
            reset_socket(tcp)
            while not seen:
                await trio.sleep(0.01)
    size, end = seen[0]
    assert end == "reset", f"service saw a clean EOF after {size} bytes of a reset transfer"


@pytest.mark.parametrize("tunnel", ["down", "up"])
@pytest.mark.parametrize("first", ["service", "application"])
async def test_half_close_from_either_end_keeps_the_other_direction(
    nursery: trio.Nursery, tunnel: str, first: str
) -> None:
    """One end sends its last byte and EOF; the other end still sends 2 MiB, all of it
    arrives, then EOF; the connection then closes cleanly at both ends."""
    payload = os.urandom(2 * MiB)
    greeting = b"greeting and goodbye"
    seen: list[tuple[bytes, str]] = []

    async def service(tcp: trio.SocketStream) -> None:
        if first == "service":
            await tcp.send_all(greeting)
            await tcp.send_eof()
            seen.append(await read_to_end(tcp))
        else:
            seen.append(await read_to_end(tcp))
            await tcp.send_all(payload)
            await tcp.send_eof()
        await tcp.aclose()

    with trio.fail_after(30):
        async with (
            both_ways(nursery, service) as (_rig, ports),
            await trio.open_tcp_stream(LOCALHOST, ports[tunnel]) as tcp,
        ):
            if first == "service":
                assert await read_to_end(tcp) == (greeting, "eof")
                await tcp.send_all(payload)
                await tcp.send_eof()
                while not seen:
                    await trio.sleep(0.01)
                assert seen[0][1] == "eof"
                assert seen[0][0] == payload
            else:
                await tcp.send_all(greeting)
                await tcp.send_eof()
                data, end = await read_to_end(tcp)
                assert end == "eof"
                assert data == payload
                assert seen == [(greeting, "eof")]


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that never answers: a listener with backlog 0 whose one queue slot is taken.

    Linux queues backlog + 1 connections and then drops SYNs, so a connect hangs until the
    caller gives up: a far service that never answers, without leaving 127.0.0.1.
    """
    listener = socket.socket()
    listener.bind((LOCALHOST, 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex((LOCALHOST, port))
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect((LOCALHOST, port))
    except TimeoutError:
        pass  # the queue is full: connects hang
    else:  # pragma: no cover - not Linux-like
        pytest.skip("this kernel does not drop SYNs at a full accept queue")
    finally:
        probe.close()
    yield port
    for sock in (*fillers, listener):
        sock.close()


@pytest.mark.parametrize("tunnel", ["down", "up"])
async def test_far_service_never_answering_is_reset_at_the_connect_timeout(
    blackhole: int, tunnel: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tunnel")
    streams = tt.StreamSettings(connect_timeout_secs=0.5)
    server = attrs.evolve(
        server_config(listen={"down": 0}, connect={"up": blackhole}), streams=streams
    )
    client = attrs.evolve(
        client_config(1, 0, listen={"up": 0}, connect={"down": blackhole}), streams=streams
    )
    with trio.fail_after(20):
        async with open_rig(server, [client]) as rig:
            port = rig.server_port("down") if tunnel == "down" else rig.client_port(1, "up")
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                await tcp.send_all(b"hello?")
                started = trio.current_time()
                data, end = await read_to_end(tcp)
                waited = trio.current_time() - started
            assert (data, end) == (b"", "reset")
            assert waited >= 0.4  # a lower bound only: it was the timeout
            await trio.sleep(0.2)
            reason = f"connect to 127.0.0.1:{blackhole} timed out after 0.5s"
            lines = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
            # Once where it happened, once on the side the reset travelled to.
            assert sum(f"reset: {reason}" in line for line in lines) == 1, lines
            assert sum(f"reset by peer: {reason}" in line for line in lines) == 1, lines
            assert len(lines) == 2, lines
            assert rig.clients[1].connected


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
    ],
)
async def test_refused_connect_is_logged_with_its_cause(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tunnel")
    target = tt.Connect(tunnel="down", host=host, port=closed_port())
    client = attrs.evolve(client_config(1, 0), connect=(target,))
    with trio.fail_after(20):
        async with open_rig(server_config(listen={"down": 0}), [client]) as rig:
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
                assert (await read_to_end(tcp))[1] == "reset"
            await trio.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if "reset: connect to" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "Connection refused" in lines[0], lines


# --- descriptor exhaustion in a server process ----------------------------------------------

FD_LIMIT = 64


class LimitedProcess(TunnelProcess):
    """A tunnel process started with ``ulimit -n`` = :data:`FD_LIMIT`."""

    def start(self) -> None:
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_tunnel", "run", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limit_descriptors,
        )


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.system
async def test_descriptor_exhaustion_refuses_streams_and_recovers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A server process with ``ulimit -n 64`` and a client in this process.

    ``up`` (client listens, the server connects out): once the server has no descriptor left,
    new streams are reset with a log line, the process stays up, its session stays up.
    ``down`` (the server accepts): accepting pauses with one log line, the connections wait in
    the backlog and are carried once descriptors are free again.
    """
    held: list[trio.SocketStream] = []
    release = trio.Event()

    async def hold(tcp: trio.SocketStream) -> None:
        held.append(tcp)
        await tcp.send_all(b"!")
        await release.wait()
        await echo_handler(tcp)

    hold_port = await start_service(nursery, hold)
    ws_port, down_port = free_port(), free_port()
    server = LimitedProcess(
        "server",
        toml_config("server", ws_port, listen={"down": down_port}, connect={"up": hold_port}),
        tmp_path,
    )
    apps: list[trio.SocketStream] = []
    try:
        with trio.fail_after(90):
            await server.wait_log("server listening")
            assert server.proc is not None
            pid = server.proc.pid
            config = client_config(1, ws_port, listen={"up": 0}, connect={"down": hold_port})
            client = await nursery.start(_run_client, config)
            await server.wait_log("active client None -> 1")
            up_port = client.listen_ports["up"]

            async def carried(port: int) -> trio.SocketStream | None:
                """Open a stream; the connection if the service answered, None if reset."""
                tcp = await trio.open_tcp_stream(LOCALHOST, port)
                try:
                    with trio.fail_after(10):
                        first = await tcp.receive_some(1)
                except trio.BrokenResourceError:
                    first = b""
                if first == b"!":
                    return tcp
                await tcp.aclose()
                return None

            # 1. up: streams until the server's connects fail for lack of descriptors.
            refused = 0
            for _ in range(FD_LIMIT):
                tcp = await carried(up_port)
                if tcp is None:
                    refused += 1
                    if refused == 3:
                        break
                else:
                    apps.append(tcp)
            assert refused == 3, "the server never ran out of descriptors"
            carried_up = len(apps)
            assert carried_up > FD_LIMIT // 2
            # A clear line per refused stream, naming the cause.
            await server.wait_log(
                r"reset: connect to 127\.0\.0\.1:[0-9]+ failed: Too many open files", count=3
            )
            assert server.proc.poll() is None
            assert client.connected, "the session must survive descriptor exhaustion"

            # 2. down: nothing left to accept with; connections wait in the backlog.
            waiting = [await trio.open_tcp_stream(LOCALHOST, down_port) for _ in range(3)]
            await server.wait_log("Too many open files; pausing new connections")

            # 3. Descriptors freed: the waiting connections are carried, new ones too.
            for tcp in apps[:10]:
                await tcp.aclose()
            del apps[:10]
            release.set()
            for tcp in waiting:
                with trio.fail_after(15):
                    assert await tcp.receive_some(1) == b"!"
                apps.append(tcp)
            await server.wait_log("recovered")
            for port in (up_port, down_port):
                tcp = await trio.open_tcp_stream(LOCALHOST, port)
                apps.append(tcp)
                assert await tcp.receive_some(1) == b"!"
                await tcp.send_all(b"works again")
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"works again", "eof")
            assert server.proc.poll() is None
            log = server.log()
            assert log.count("pausing new connections") == 1, log[-3000:]
            assert "Traceback" not in log
            print(
                f"\nulimit -n {FD_LIMIT}: {carried_up} streams carried, then refused; "
                f"{open_fds(pid)} descriptors open after recovery"
            )
    finally:
        for tcp in apps:
            await trio.aclose_forcefully(tcp)
        server.close()


async def _run_client(config: tt.Config, *, task_status: trio.TaskStatus[tt.Client]) -> None:
    async with tt.open_client(config) as client:
        with trio.fail_after(10):
            await client.wait_for("connected")
            await client.wait_for("listening")
        task_status.started(client)
        await trio.sleep_forever()


# --- a thousand concurrent streams ------------------------------------------------------------


async def test_1000_concurrent_streams_echo_64_kib(nursery: trio.Nursery) -> None:
    count = 1000
    echo = await start_service(nursery, echo_handler)
    failures: list[str] = []
    with trio.fail_after(120):
        async with open_rig(
            server_config(listen={"down": 0}), [client_config(1, 0, connect={"down": echo})]
        ) as rig:
            port = rig.server_port("down")

            async def one(index: int) -> None:
                try:
                    await echo_sha(port, 64 * KiB)
                except (AssertionError, OSError, trio.BrokenResourceError) as exc:
                    failures.append(f"stream {index}: {exc!r}")

            async with trio.open_nursery() as streams:
                for index in range(count):
                    streams.start_soon(one, index)
            assert failures == []
            assert rig.server.metrics.tunnel("down").streams_total == count
            with trio.fail_after(10):
                while rig.server.state.clients[1].streams:
                    await trio.sleep(0.01)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"\n{count} concurrent 64 KiB echoes intact; this process's peak RSS {peak / MiB:.0f} MiB"
    )


# --- a tunnel process killed mid-transfer ------------------------------------------------------


async def _endless_source(tcp: trio.SocketStream) -> None:
    block = os.urandom(64 * KiB)
    try:
        while True:
            await tcp.send_all(block)
    except trio.BrokenResourceError:
        pass


@pytest.mark.system
@pytest.mark.parametrize(
    ("victim", "facing"),
    [("server", "app"), ("server", "service"), ("client", "app"), ("client", "service")],
)
async def test_killed_tunnel_process_resets_the_connections_it_carried(
    tmp_path: Path, victim: str, facing: str
) -> None:
    """SIGKILL the process holding one end of a busy transfer: that end must see a reset.

    ``facing = "app"``: the application downloads through the victim's listen port.
    ``facing = "service"``: the application uploads and the victim holds the connection to
    the far service. Nothing runs in the dead process, so only the kernel can answer for it:
    it sends RST only for a socket with unread input or with SO_LINGER 0 already set.
    """
    ends: list[str] = []

    async def sink(tcp: trio.SocketStream) -> None:
        ends.append((await read_to_end(tcp))[1])

    # The assertion runs outside every nursery, so a failure is a plain AssertionError.
    async with trio.open_nursery() as nursery:
        await _kill_mid_transfer(nursery, tmp_path, victim, facing, sink, ends)
        nursery.cancel_scope.cancel()
    assert ends == ["reset"], f"{facing} saw a clean EOF when the {victim} was killed"


async def _kill_mid_transfer(
    nursery: trio.Nursery,
    tmp_path: Path,
    victim: str,
    facing: str,
    sink: Callable[[trio.SocketStream], Awaitable[None]],
    ends: list[str],
) -> None:
    source = await start_service(nursery, _endless_source)
    sink_port = await start_service(nursery, sink)
    ws_port, down_port, up_port = free_port(), free_port(), free_port()
    service = source if facing == "app" else sink_port
    server = TunnelProcess(
        "server",
        toml_config("server", ws_port, listen={"down": down_port}, connect={"up": service}),
        tmp_path,
    )
    client: TunnelProcess | None = None
    try:
        with trio.fail_after(60):
            await server.wait_log("server listening")
            client = TunnelProcess(
                "client",
                toml_config(
                    "client",
                    ws_port,
                    client_id=1,
                    listen={"up": up_port},
                    connect={"down": service},
                ),
                tmp_path,
            )
            await client.wait_log("client 1: listening")
            # The client listens as soon as its own side of the session is up, which can be
            # before the server has registered it: a connection in between is refused (and
            # on a loaded machine was, as a reset before the kill). Wait for the server too.
            await wait_active(server, 1)
            # The application connects to the victim when it faces it, else to the survivor.
            victim_listens = (victim == "server") == (facing == "app")
            port = down_port if victim_listens else up_port
            killed = server if victim == "server" else client
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                if facing == "app":
                    got = 0
                    while got < 4 * MiB:
                        got += len(await tcp.receive_some(64 * KiB))
                    killed.signal(9)
                    _data, end = await read_to_end(tcp)
                    ends.append(end)
                else:
                    block = os.urandom(64 * KiB)
                    for _ in range(64):
                        await tcp.send_all(block)
                    killed.signal(9)
                    try:
                        while not ends:
                            await tcp.send_all(block)
                    except trio.BrokenResourceError:
                        pass
                    while not ends:
                        await trio.sleep(0.01)
    finally:
        server.close()
        if client is not None:
            client.close()


# --- a stream reset while its far connection is still being opened ------------------------------


async def test_stream_reset_while_connecting_reaches_the_far_service_as_reset() -> None:
    """The peer opens a stream with its first bytes and resets it at once: the far service,
    if it was reached at all, must see a reset, never a clean end of an empty request."""
    ends: list[str] = []

    async def record(tcp: trio.SocketStream) -> None:
        ends.append((await read_to_end(tcp))[1])  # one task: the reset is seen, never hidden

    # The assertion runs outside every nursery, so a failure is a plain AssertionError.
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            service = await start_service(nursery, record)
            connect = tt.Connect(tunnel="svc", host=LOCALHOST, port=service)
            await _open_and_reset(attrs.evolve(server_config(), connect=(connect,)), ends)
            nursery.cancel_scope.cancel()
    assert "eof" not in ends, f"{ends.count('eof')} of {len(ends)} far connections ended cleanly"


async def _open_and_reset(config: tt.Config, ends: list[str]) -> None:
    """Open-then-reset streams until a far connection ends cleanly (or 300 tries)."""
    async with open_rig(config) as rig, raw_session(rig.server.websocket_port) as ws:
        for attempt in range(300):
            stream_id = 2 * attempt + 1
            await ws.send_tunnel(
                encode_frame(FrameType.OPEN, stream_id, 0, "svc"),
                encode_frame(FrameType.DATA, stream_id, 0, b"the start of a request"),
            )
            for _ in range(attempt % 5):  # land the RESET at different points
                await trio.lowlevel.checkpoint()
            await ws.send_tunnel(encode_frame(FrameType.RESET, stream_id, 1, "app gone"))
            await trio.sleep(0.005)
            if "eof" in ends:
                break
        await trio.sleep(0.5)
