"""``trio-tunnel demo``: the whole product in one process on 127.0.0.1, in a few seconds.

A server, client 1, client 2 and an echo service; one tunnel each way. It shows the config
files such a deployment uses, pushes traffic through both tunnels, shows the `trio-tunnel
status` table, then two failovers: data arriving at client 2's listener (client 2 takes
over), and the loss of the active client (the common case: client 1 takes over at once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
import sys
import textwrap
import time
from functools import partial

import trio

from ._client import Client, open_client
from ._config import Config, parse_config
from ._metrics_http import readiness, render_metrics
from ._server import Server, open_server
from ._status import _Sample, parse_exposition, summary

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

_PAYLOAD_BYTES = 8 * 1024 * 1024
_PING_COUNT = 200
_PING_BYTES = 500


def run_demo(*, verbose: bool = False) -> int:
    logging.basicConfig(
        # The demo checks every result itself; its expected failover warnings would only
        # confuse a first look, so the log shows errors unless asked for more.
        level=logging.INFO if verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    trio.run(_demo)
    return 0


async def _echo(tcp: trio.SocketStream) -> None:
    try:
        while data := await tcp.receive_some(65536):
            await tcp.send_all(data)
        await tcp.send_eof()
    except trio.BrokenResourceError:
        pass
    finally:
        await tcp.aclose()


async def _transfer(port: int) -> tuple[int, int, float, bool]:
    """Send a payload to the echo service through ``port``; returns bytes out, in, secs, ok."""
    block = os.urandom(64 * 1024)
    sent_hash, received_hash = hashlib.sha256(), hashlib.sha256()
    received = 0
    started = time.perf_counter()
    async with await trio.open_tcp_stream("127.0.0.1", port) as tcp:

        async def send() -> None:
            for _ in range(_PAYLOAD_BYTES // len(block)):
                await tcp.send_all(block)
                sent_hash.update(block)
            await tcp.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await tcp.receive_some(256 * 1024):
                received_hash.update(data)
                received += len(data)
    elapsed = time.perf_counter() - started
    return _PAYLOAD_BYTES, received, elapsed, sent_hash.digest() == received_hash.digest()


async def _ping_pong(port: int) -> list[float]:
    message = os.urandom(_PING_BYTES)
    times = []
    async with await trio.open_tcp_stream("127.0.0.1", port) as tcp:
        for _ in range(_PING_COUNT):
            started = time.perf_counter()
            await tcp.send_all(message)
            got = 0
            while got < len(message):
                got += len(await tcp.receive_some(len(message) - got))
            times.append(time.perf_counter() - started)
        # Close in order (our FIN, the echo's FIN), so the stream ends cleanly before the
        # next step of the demo.
        await tcp.send_eof()
        while await tcp.receive_some(65536):
            pass
    return times


SERVER_TOML = """\
role = "server"

[websocket]
url = "ws://127.0.0.1:{ws_port}/"

[failover]
standby_socket_close_secs = 2

[[listen]]                 # applications at the hub connect here ...
tunnel = "to-site"
port = {listen_port}

[[connect]]                # ... and streams from the sites go to this service
tunnel = "to-hub"
host = "127.0.0.1"
port = {echo_port}
"""

CLIENT_TOML = """\
role = "client"
client_id = {client_id}              # 1 = primary, 2 = secondary

[websocket]
url = "ws://127.0.0.1:{ws_port}/"

[[listen]]
tunnel = "to-hub"
port = {listen_port}

[[connect]]
tunnel = "to-site"
host = "127.0.0.1"
port = {echo_port}
"""


def _config(name: str, text: str) -> Config:
    print(f"--- {name}")
    print(textwrap.indent(text.rstrip(), "    "))
    return parse_config(tomllib.loads(text), name)


def _status(server: Server) -> None:
    """The table `trio-tunnel status` prints (the server's /metrics and /health)."""
    _, document = readiness(server.metrics)
    sample = _Sample(time.monotonic(), parse_exposition(render_metrics(server.metrics)))
    print("\n$ trio-tunnel status http://127.0.0.1:9108/   # the server's [metrics] endpoint")
    for line in summary(document, sample, None):
        print(f"  {line}")


def _active(server: Server) -> str:
    active = server.state.active
    return f"client {active}" if active is not None else "none"


async def _demo() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            echo_listeners = await nursery.start(
                partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")
            )
            echo_port = echo_listeners[0].socket.getsockname()[1]
            print("A deployment is three files, one per process (`trio-tunnel run FILE`):")
            print("(port 0 asks for a free port; a real deployment names its ports)\n")
            server_config = _config(
                "server.toml",
                SERVER_TOML.format(ws_port=0, listen_port=0, echo_port=echo_port),
            )
            async with open_server(server_config) as server:
                clients: list[Client] = []
                scopes: list[trio.CancelScope] = []
                for client_id in (1, 2):
                    text = CLIENT_TOML.format(
                        client_id=client_id,
                        ws_port=server.websocket_port,
                        listen_port=0,
                        echo_port=echo_port,
                    )
                    config = (
                        _config(f"client{client_id}.toml", text)
                        if client_id == 1
                        else parse_config(tomllib.loads(text), "client2.toml")
                    )
                    scope = trio.CancelScope()
                    client = await nursery.start(_run_client, config, scope)
                    await client.wait_for("listening")
                    clients.append(client)
                    scopes.append(scope)
                print("--- client2.toml: the same with client_id = 2\n")
                print(
                    f"server: WebSocket on 127.0.0.1:{server.websocket_port}, tunnel "
                    f"'to-site' listening on 127.0.0.1:{server.listen_ports['to-site']}"
                )
                for client in clients:
                    print(
                        f"client {client.client_id}: connected, tunnel 'to-hub' listening on "
                        f"127.0.0.1:{client.listen_ports['to-hub']}"
                    )
                await server.wait_state(lambda s: len(s.clients) == 2)
                print(f"active client: {_active(server)} (the first to connect)")

                await _report("server -> active client -> echo", server.listen_ports["to-site"])
                await _report("client 1 -> server -> echo", clients[0].listen_ports["to-hub"])
                _status(server)

                print("\nfailover 1: data arrives at client 2's listener ...")
                started = time.perf_counter()
                async with await trio.open_tcp_stream(
                    "127.0.0.1", clients[1].listen_ports["to-hub"]
                ) as tcp:
                    await tcp.send_all(b"hello from site 2")
                    await server.wait_state(lambda s: s.active == 2)
                    switched = time.perf_counter() - started
                    echoed = await tcp.receive_some(100)
                print(
                    f"active client: {_active(server)} after {switched * 1000:.1f} ms; the "
                    f"triggering stream carried on (echoed {echoed!r})"
                )
                await clients[0].wait_for("not listening")
                print(
                    "client 1: demoted to standby, its listen sockets closed for "
                    f"{server_config.failover.standby_socket_close_secs:g}s"
                )
                await _report("server -> active client -> echo", server.listen_ports["to-site"])

                print("\nfailover 2: the active client (client 2) is lost ...")
                started = time.perf_counter()
                scopes[1].cancel()
                await server.wait_state(lambda s: s.active == 1)
                switched = time.perf_counter() - started
                print(
                    f"active client: {_active(server)} after {switched * 1000:.1f} ms, its close "
                    "period overridden: the only client left must carry the traffic"
                )
                await _report("server -> active client -> echo", server.listen_ports["to-site"])
                _status(server)
                print("\ndemo finished: all transfers verified with SHA-256")
            nursery.cancel_scope.cancel()


async def _run_client(
    config: Config, scope: trio.CancelScope, *, task_status: trio.TaskStatus[Client]
) -> None:
    with scope:
        async with open_client(config) as client:
            task_status.started(client)
            await trio.sleep_forever()


async def _report(label: str, port: int) -> None:
    sent, received, elapsed, ok = await _transfer(port)
    times = await _ping_pong(port)
    print(f"\n{label}:")
    print(
        f"  {sent / 2**20:.0f} MiB out, {received / 2**20:.0f} MiB back in "
        f"{elapsed:.2f}s ({(sent + received) / elapsed / 1e6:.0f} MB/s both ways), "
        f"SHA-256 {'match' if ok else 'MISMATCH'}"
    )
    print(
        f"  {len(times)} x {_PING_BYTES} B round trips: median "
        f"{statistics.median(times) * 1000:.2f} ms, p99 "
        f"{sorted(times)[int(len(times) * 0.99) - 1] * 1000:.2f} ms"
    )
    if not ok or received != sent:
        raise RuntimeError(f"{label}: transfer corrupted")
