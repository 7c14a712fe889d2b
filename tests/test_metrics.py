"""The [metrics] endpoint (GET /metrics, GET /health) and ``trio-tunnel status``.

The exposition is parsed back with a strict parser of the Prometheus text format 0.0.4 written
here, independent of the one ``status`` uses.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trio_tunnel as tt
from trio_tunnel import _status
from trio_tunnel._config import MetricsSettings, parse_config
from trio_tunnel._errors import ConfigError
from trio_tunnel._metrics import CONNECTION_REFUSAL_REASONS, Metrics
from trio_tunnel._metrics_http import (
    MAX_HEAD_BYTES,
    BadRequest,
    parse_request,
    render_metrics,
    serve_metrics,
)

from .helpers import (
    LOCALHOST,
    client_config,
    closed_port,
    echo_handler,
    free_port,
    open_rig,
    read_to_end,
    server_config,
    start_service,
)
from .procs import TunnelProcess, toml_config

ANY_PORT = MetricsSettings(listen=f"{LOCALHOST}:0")

# --- a strict parser of the text format 0.0.4 -------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
LabelSet = frozenset[tuple[str, str]]


@attrs.define
class Family:
    type: str = ""
    help: str | None = None
    samples: dict[LabelSet, float] = attrs.field(factory=dict)


class FormatError(AssertionError):
    pass


def _unescape(text: str, allowed: str, number: int) -> str:
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        escaped = next(chars, "")
        if escaped not in allowed:
            raise FormatError(f"line {number}: bad escape \\{escaped}")
        out.append("\n" if escaped == "n" else escaped)
    return "".join(out)


def _parse_labels(text: str, number: int) -> tuple[LabelSet, str]:
    """Parse ``{a="x",b="y"}`` at the start of ``text``; returns the labels and the rest."""
    assert text.startswith("{")
    position, labels = 1, dict[str, str]()
    while True:
        if text[position : position + 1] == "}":
            return frozenset(labels.items()), text[position + 1 :]
        name_match = _LABEL_NAME.match(text, position)
        if name_match is None or text[name_match.end() : name_match.end() + 2] != '="':
            raise FormatError(f"line {number}: malformed label at {text[position:]!r}")
        name = name_match[0]
        if name.startswith("__") or name in labels:
            raise FormatError(f"line {number}: reserved or repeated label {name}")
        position = name_match.end() + 2
        value: list[str] = []
        while True:
            if position >= len(text):
                raise FormatError(f"line {number}: unterminated label value")
            char = text[position]
            if char == '"':
                break
            if char == "\\":
                value.append(_unescape(text[position : position + 2], '\\"n', number))
                position += 2
                continue
            if char == "\n":
                raise FormatError(f"line {number}: raw newline in a label value")
            value.append(char)
            position += 1
        labels[name] = "".join(value)
        position += 1
        if text[position : position + 1] == ",":
            position += 1
        elif text[position : position + 1] != "}":
            raise FormatError(f"line {number}: expected ',' or '}}' after a label")


def _parse_value(text: str, number: int) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise FormatError(f"line {number}: bad value {text!r}")
    return float(text)


def parse_strict(text: str) -> dict[str, Family]:
    """Every family, checked against the format: TYPE before samples, a family's lines together,
    no repeated sample, valid names, labels, escapes and values, a final newline."""
    if not text.endswith("\n"):
        raise FormatError("the exposition must end with a newline")
    families: dict[str, Family] = {}
    finished: set[str] = set()
    current: str | None = None

    def enter(name: str, number: int) -> Family:
        nonlocal current
        if name != current:
            if name in finished:
                raise FormatError(f"line {number}: lines of {name} are not together")
            if current is not None:
                finished.add(current)
            current = name
        return families.setdefault(name, Family())

    for number, line in enumerate(text[:-1].split("\n"), 1):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not _NAME.fullmatch(name):
                    raise FormatError(f"line {number}: bad metric name {name!r}")
                family = enter(name, number)
                rest = parts[3] if len(parts) == 4 else ""
                if parts[1] == "HELP":
                    if family.help is not None:
                        raise FormatError(f"line {number}: second HELP for {name}")
                    family.help = _unescape(rest, "\\n", number)
                else:
                    if family.type or family.samples:
                        raise FormatError(f"line {number}: TYPE for {name} too late or twice")
                    if rest not in _TYPES:
                        raise FormatError(f"line {number}: unknown type {rest!r}")
                    family.type = rest
            continue
        name_match = _NAME.match(line)
        if name_match is None:
            raise FormatError(f"line {number}: not a sample: {line!r}")
        name, rest = name_match[0], line[name_match.end() :]
        labels: LabelSet = frozenset()
        if rest.startswith("{"):
            labels, rest = _parse_labels(rest, number)
        fields = rest.split(" ")
        if fields[0] != "" or len(fields) not in (2, 3):
            raise FormatError(f"line {number}: expected ' value [timestamp]' in {line!r}")
        value = _parse_value(fields[1], number)
        if len(fields) == 3 and not re.fullmatch(r"-?\d+", fields[2]):
            raise FormatError(f"line {number}: bad timestamp")
        family = enter(name, number)
        if not family.type:
            raise FormatError(f"line {number}: sample of {name} before its TYPE")
        if labels in family.samples:
            raise FormatError(f"line {number}: repeated sample {line!r}")
        family.samples[labels] = value
    return families


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    return families[name].samples[frozenset(labels.items())]


def by_label(families: dict[str, Family], name: str, label: str) -> dict[str, float]:
    return {dict(key)[label]: v for key, v in families[name].samples.items()}


def test_strict_parser_rejects_what_the_format_forbids() -> None:
    good = '# HELP a_total A\\\\b\\n.\n# TYPE a_total counter\na_total{x="q\\"\\\\\\n"} 1\n'
    families = parse_strict(good)
    assert families["a_total"].help == "A\\b\n."
    assert value(families, "a_total", x='q"\\\n') == 1
    for bad in (
        good[:-1],  # no final newline
        "a 1\n",  # no TYPE
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n",  # a's lines apart
        "# TYPE a gauge\na 1\na 1\n",  # repeated
        '# TYPE a gauge\na{x="\\t"} 1\n',  # bad escape
        '# TYPE a gauge\na{x="1",x="2"} 1\n',  # repeated label
        "# TYPE a gauge\na one\n",  # bad value
        "# TYPE a gauge\n# TYPE a gauge\n",  # TYPE twice
        "# TYPE a gauge\na{x=1} 1\n",  # unquoted
    ):
        with pytest.raises(FormatError):
            parse_strict(bad)


# --- configuration ----------------------------------------------------------------------------

SERVER: dict[str, Any] = {"role": "server", "websocket": {"url": "ws://127.0.0.1:8080/"}}


def with_metrics(address: object, **more: Any) -> dict[str, Any]:
    return {**SERVER, "metrics": {"listen": address}, **more}


def test_metrics_is_optional() -> None:
    assert parse_config(SERVER).metrics == MetricsSettings()
    assert MetricsSettings().address is None


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("[::1]:9108", ("::1", 9108)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_forms(listen: str, address: tuple[str, int]) -> None:
    assert parse_config(with_metrics(listen)).metrics.address == address


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (9108, "expected a string (got the integer 9108)"),
        ("127.0.0.1", "expected host:port (got '127.0.0.1')"),
        ("::1:9108", "write an IPv6 address in brackets, as [::1]:9108 (got '::1:9108')"),
        ("[::1]9108", "expected [IPv6 address]:port (got '[::1]9108')"),
        ("[127.0.0.1]:9108", "expected an IPv6 address in the brackets (got '127.0.0.1')"),
        ("bad host:9108", "expected an IP address or a host name before ':' (got 'bad host')"),
        ("127.0.0.1:70000", "the port must be 0..65535 (got '70000')"),
        ("127.0.0.1:", "the port must be 0..65535 (got '')"),
        ("127.0.0.1:+80", "the port must be 0..65535 (got '+80')"),
    ],
)
def test_bad_listen_names_the_key(listen: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_metrics(listen), "m.toml")
    assert str(info.value) == f"m.toml: metrics.listen: {expected}"


def test_unknown_metrics_key() -> None:
    with pytest.raises(ConfigError, match=r"^m\.toml: metrics\.port: unknown key$"):
        parse_config({**SERVER, "metrics": {"port": 1}}, "m.toml")


def test_listen_port_collisions() -> None:
    ws_clash = with_metrics("127.0.0.1:8080")
    with pytest.raises(ConfigError) as info:
        parse_config(ws_clash, "m.toml")
    assert str(info.value) == (
        "m.toml: metrics.listen: port 8080 on 127.0.0.1 is already used by websocket.url"
    )
    listen_clash = with_metrics("0.0.0.0:8022", listen=[{"tunnel": "ssh", "port": 8022}])
    with pytest.raises(ConfigError) as info:
        parse_config(listen_clash, "m.toml")
    assert str(info.value) == (
        "m.toml: metrics.listen: port 8022 on 0.0.0.0 is already used by listen[0] on 127.0.0.1"
    )
    # Port 0 never clashes; a different address of the same family does not either.
    parse_config(with_metrics("127.0.0.1:0", listen=[{"tunnel": "ssh", "port": 0}]))
    parse_config(with_metrics("127.0.0.2:8080"))


def test_describe() -> None:
    assert "metrics: no endpoint" in tt.describe_config(parse_config(SERVER))
    text = tt.describe_config(parse_config(with_metrics("[::1]:9108")))
    assert "metrics: GET /metrics, /livez, /readyz and /health on http://[::1]:9108/" in text


# --- HTTP helpers -----------------------------------------------------------------------------


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    end: str  # "eof" or "reset"


def parse_response(raw: bytes, end: str, *, head_only: bool = False) -> Response:
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, raw
    status_line, *lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.1 (\d{3}) [A-Za-z -]+", status_line)
    assert match is not None, status_line
    headers = {}
    for line in lines:
        name, _, field = line.partition(": ")
        assert name.lower() not in headers, line
        headers[name.lower()] = field
    assert headers["connection"] == "close"
    assert "date" in headers
    if head_only:
        assert body == b""
    else:
        assert int(headers["content-length"]) == len(body), (headers, body)
    return Response(int(match[1]), headers, body, end)


async def exchange(port: int, request: bytes, *, head_only: bool = False) -> Response:
    """Send ``request`` (in the background, it may be refused half-way) and read the answer."""
    async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:

        async def send() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await tcp.send_all(request)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            raw, end = await read_to_end(tcp)
    return parse_response(raw, end, head_only=head_only)


async def get(port: int, path: str, method: str = "GET") -> Response:
    request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n"
    return await exchange(port, request.encode(), head_only=method == "HEAD")


async def scrape(port: int) -> dict[str, Family]:
    response = await get(port, "/metrics")
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_strict(response.body.decode())


async def scrape_until(
    port: int, predicate: Callable[[dict[str, Family]], bool], timeout: float = 10
) -> dict[str, Family]:
    with trio.fail_after(timeout):
        while not predicate(families := await scrape(port)):
            await trio.sleep(0.02)
    return families


async def health(port: int, path: str = "/health") -> tuple[int, dict[str, Any]]:
    response = await get(port, path)
    assert response.headers["content-type"] == "application/json"
    document = json.loads(response.body)
    assert isinstance(document, dict)
    return response.status, document


# --- the endpoint on a running tunnel ---------------------------------------------------------

REPLY_PREFIX = b"received "


async def count_handler(tcp: trio.SocketStream) -> None:
    """Read to EOF, answer how many bytes arrived, close."""
    async with tcp:
        total = 0
        with trio.fail_after(20):
            while data := await tcp.receive_some(65536):
                total += len(data)
            await tcp.send_all(REPLY_PREFIX + str(total).encode())


async def test_metrics_of_a_server_and_its_client(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    count = await start_service(nursery, count_handler)
    size = 300_000
    with trio.fail_after(30):
        async with open_rig(
            server_config(listen={"count": 0, "echo": 0}),
            [client_config(1, 0, connect={"count": count, "echo": echo})],
        ) as rig:
            client = rig.clients[1]
            await client.wait_for("active")
            server_port = await rig.nursery.start(serve_metrics, ANY_PORT, rig.server)
            client_port = await rig.nursery.start(serve_metrics, ANY_PORT, client)

            # Before any stream, configured tunnels already show zeros.
            families = await scrape(server_port)
            assert by_label(families, "trio_tunnel_streams_total", "tunnel") == {
                "count": 0,
                "echo": 0,
            }

            # One stream through "count", closed: size bytes out, a short reply in.
            async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("count")) as tcp:
                await tcp.send_all(b"x" * size)
                await tcp.send_eof()
                reply, end = await read_to_end(tcp)
            assert (reply, end) == (REPLY_PREFIX + str(size).encode(), "eof")

            # One stream through "echo", left open.
            echo_tcp = await trio.open_tcp_stream(LOCALHOST, rig.server_port("echo"))
            async with echo_tcp:
                await echo_tcp.send_all(b"y" * 5000)
                received = 0
                while received < 5000:
                    received += len(await echo_tcp.receive_some(65536))

                def settled(f: dict[str, Family]) -> bool:
                    return (
                        value(f, "trio_tunnel_streams_open", tunnel="count") == 0
                        and value(f, "trio_tunnel_bytes_total", tunnel="echo", direction="in")
                        == 5000
                    )

                server = await scrape_until(server_port, settled)
                remote = await scrape_until(client_port, settled)

            assert value(server, "trio_tunnel_info", role="server") == 1
            assert value(server, "trio_tunnel_connected_clients") == 1
            assert value(server, "trio_tunnel_active_client") == 1
            assert by_label(server, "trio_tunnel_switches_total", "reason") == {
                "first_client": 1,
                "data": 0,
                "client_lost": 0,
                "drain": 0,
                "other": 0,
            }
            assert set(by_label(server, "trio_tunnel_refused_peers_total", "reason").values()) == {
                0
            }
            assert set(by_label(server, "trio_tunnel_stream_resets_total", "reason").values()) == {
                0
            }
            for families, (out, in_) in ((server, ("out", "in")), (remote, ("in", "out"))):
                # The server's TCP side sends into the tunnel; the client's receives from it.
                assert value(families, "trio_tunnel_streams_total", tunnel="count") == 1
                assert value(families, "trio_tunnel_streams_open", tunnel="count") == 0
                assert value(families, "trio_tunnel_streams_total", tunnel="echo") == 1
                assert value(families, "trio_tunnel_streams_open", tunnel="echo") == 1
                assert value(
                    families, "trio_tunnel_bytes_total", tunnel="count", direction=out
                ) == (size)
                assert value(
                    families, "trio_tunnel_bytes_total", tunnel="count", direction=in_
                ) == len(reply)
                for direction in ("in", "out"):
                    assert (
                        value(
                            families, "trio_tunnel_bytes_total", tunnel="echo", direction=direction
                        )
                        == 5000
                    )
            assert value(remote, "trio_tunnel_info", role="client", client_id="1") == 1
            assert value(remote, "trio_tunnel_client_connected") == 1
            assert value(remote, "trio_tunnel_client_active") == 1
            assert value(remote, "trio_tunnel_websocket_reconnects_total") == 0
            assert "trio_tunnel_switches_total" not in remote
            assert "trio_tunnel_client_connected" not in server
            for families in (server, remote):
                for name, family in families.items():
                    assert family.help, name
                    assert family.type == ("counter" if name.endswith("_total") else "gauge")

            ready_server = {
                "status": "ok",
                "ready": True,
                "role": "server",
                "connected_clients": 1,
                "active_client": 1,
            }
            ready_client = {
                "status": "ok",
                "ready": True,
                "role": "client",
                "client_id": 1,
                "connected": True,
                "active": True,
            }
            for path in ("/health", "/readyz"):
                assert await health(server_port, path) == (200, ready_server)
                assert await health(client_port, path) == (200, ready_client)
            assert await health(server_port, "/livez") == (
                200,
                {"status": "alive", "role": "server"},
            )


async def test_health_of_a_disconnected_client(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        client = await nursery.start(tt.serve_client, client_config(2, closed_port()))
        port = await nursery.start(serve_metrics, ANY_PORT, client)
        not_ready = {
            "status": "disconnected",
            "ready": False,
            "role": "client",
            "client_id": 2,
            "connected": False,
            "active": False,
        }
        for path in ("/health", "/readyz"):
            assert await health(port, path) == (503, not_ready)
        # Alive all the same: a liveness probe must not restart a client whose server is down.
        assert await health(port, "/livez") == (200, {"status": "alive", "role": "client"})
        families = await scrape(port)
        assert value(families, "trio_tunnel_client_connected") == 0
        assert value(families, "trio_tunnel_client_active") == 0


async def test_server_is_not_ready_without_an_active_client(nursery: trio.Nursery) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        server = await nursery.start(tt.serve_server, server_config(listen={"echo": 0}))
        port = await nursery.start(serve_metrics, ANY_PORT, server)
        no_client = {
            "status": "no_client",
            "ready": False,
            "role": "server",
            "connected_clients": 0,
            "active_client": None,
        }
        for path in ("/health", "/readyz"):
            assert await health(port, path) == (503, no_client)
        assert await health(port, "/livez") == (200, {"status": "alive", "role": "server"})
        for method in ("HEAD", "GET"):
            assert (await get(port, "/livez", method)).status == 200
            assert (await get(port, "/readyz", method)).status == 503
        config = client_config(1, server.websocket_port, connect={"echo": echo})
        async with tt.open_client(config) as client:
            await client.wait_for("active")
            status, document = await health(port, "/readyz")
            assert (status, document["status"], document["active_client"]) == (200, "ok", 1)
        while (await health(port, "/readyz"))[0] != 503:
            await trio.sleep(0.02)  # the server notices the client left


async def test_refused_connections_are_counted_by_tunnel_and_reason(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        server = await nursery.start(tt.serve_server, server_config(listen={"echo": 0}))
        port = await nursery.start(serve_metrics, ANY_PORT, server)
        families = await scrape(port)
        assert {
            reason: count
            for (tunnel, reason), count in refusals(families).items()
            if tunnel == "echo"
        } == dict.fromkeys(CONNECTION_REFUSAL_REASONS, 0.0)
        for _ in range(3):  # no client connected: each is reset at once
            await refused_at(server.listen_ports["echo"])
        families = await scrape(port)
        assert refusals(families)["echo", "no_client"] == 3
        assert sum(refusals(families).values()) == 3

        # A client listens only while connected; a connection accepted just as its WebSocket
        # went down is refused and counted.
        client = await nursery.start(tt.serve_client, client_config(2, closed_port()))
        client_port = await nursery.start(serve_metrics, ANY_PORT, client)
        listener = (await trio.open_tcp_listeners(0, host=LOCALHOST))[0]
        async with listener:
            peer = await trio.open_tcp_stream(LOCALHOST, listener.socket.getsockname()[1])
            async with peer:
                client._on_tcp("back", await listener.accept())
                assert (await read_to_end(peer))[1] == "reset"
        families = await scrape(client_port)
        assert refusals(families)["back", "not_connected"] == 1


async def refused_at(port: int) -> None:
    """Connect and see a reset (it may come before or after the connect call returns)."""
    try:
        tcp = await trio.open_tcp_stream(LOCALHOST, port)
    except OSError:
        return
    async with tcp:
        assert (await read_to_end(tcp))[1] == "reset"


def refusals(families: dict[str, Family]) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["tunnel"], dict(labels)["reason"]): count
        for labels, count in families["trio_tunnel_connections_refused_total"].samples.items()
    }


def test_unknown_refusal_reasons_count_as_other() -> None:
    metrics = Metrics(role="server")
    metrics.connection_refused("ssh", "no_client")
    metrics.connection_refused("ssh", "made up")  # type: ignore[arg-type]
    families = parse_strict(render_metrics(metrics))
    assert refusals(families)["ssh", "no_client"] == 1
    assert refusals(families)["ssh", "other"] == 1


def test_process_metrics(tmp_path: Path) -> None:
    families = parse_strict(render_metrics(Metrics()))
    assert families["process_cpu_seconds_total"].type == "counter"
    cpu = value(families, "process_cpu_seconds_total")
    assert cpu > 0
    start = value(families, "process_start_time_seconds")
    assert time.time() - 24 * 3600 < start <= time.time()
    if not sys.platform.startswith("linux"):
        return
    # Linux: memory and file descriptors follow what the process does.
    files = [open(tmp_path / f"f{n}", "w") for n in range(20)]  # noqa: SIM115
    ballast = bytearray(64 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page so it is resident
    try:
        more = parse_strict(render_metrics(Metrics()))
    finally:
        for file in files:
            file.close()
    assert value(more, "process_open_fds") >= value(families, "process_open_fds") + 20
    assert value(more, "process_max_fds") >= value(more, "process_open_fds")
    grown = value(more, "process_resident_memory_bytes") - value(
        families, "process_resident_memory_bytes"
    )
    assert grown >= 48 * 1024 * 1024
    assert value(more, "process_virtual_memory_bytes") > value(
        more, "process_resident_memory_bytes"
    )
    assert value(more, "process_cpu_seconds_total") >= cpu
    del ballast


def test_label_values_are_escaped() -> None:
    metrics = Metrics(role="server")
    weird = 'a "quoted" \\ back\nslash'
    metrics.stream_resets[weird] = 2
    metrics.tunnel("t.1:x-y").streams_total = 3
    metrics.open_stream_bytes = lambda: {"t.1:x-y": (10, 20)}
    families = parse_strict(render_metrics(metrics, ["unused"]))
    assert value(families, "trio_tunnel_stream_resets_total", reason=weird) == 2
    assert value(families, "trio_tunnel_streams_total", tunnel="t.1:x-y") == 3
    assert value(families, "trio_tunnel_streams_total", tunnel="unused") == 0
    assert value(families, "trio_tunnel_bytes_total", tunnel="t.1:x-y", direction="out") == 10
    assert value(families, "trio_tunnel_bytes_total", tunnel="t.1:x-y", direction="in") == 20


# --- HTTP exactness and robustness ------------------------------------------------------------


@pytest.fixture
async def endpoint(nursery: trio.Nursery) -> int:
    port: int = await nursery.start(serve_metrics, ANY_PORT, ready_server_metrics())
    return port


def ready_server_metrics() -> Metrics:
    """A server's metrics with client 1 connected and active, so /health answers 200."""
    metrics = Metrics(role="server")
    metrics.live = lambda: {"connected_clients": 1, "active_client": 1}
    return metrics


async def test_routes_and_methods(endpoint: int) -> None:
    with trio.fail_after(10):
        assert (await get(endpoint, "/nope")).status == 404
        assert (await get(endpoint, "/metrics/x")).status == 404
        assert (await get(endpoint, "/nope", "POST")).status == 404
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            response = await get(endpoint, "/metrics", method)
            assert response.status == 405
            assert response.headers["allow"] == "GET, HEAD"
        full = await get(endpoint, "/metrics")
        head = await get(endpoint, "/metrics", "HEAD")
        assert head.status == 200
        assert head.headers["content-length"] == str(len(full.body))
        assert (await get(endpoint, "/metrics?name[]=x")).status == 200
        assert (await get(endpoint, "/health")).status == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /health HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 needs no Host
        (b"\r\nGET /health HTTP/1.1\nHost: h\n\n", 200),  # a leading CRLF and bare LFs
        (b"GET http://h:1/health?x HTTP/1.1\r\nHost: h:1\r\n\r\n", 200),  # absolute form
        (b"GET /health HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x00\xff\xfe junk \x01\r\n\r\n", 400),
        (b"GET  /health HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET health HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"POST /health HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", 405),
    ],
)
async def test_request_parsing(endpoint: int, request_bytes: bytes, status: int) -> None:
    with trio.fail_after(10):
        response = await exchange(endpoint, request_bytes)
        assert response.status == status
        assert response.end == "eof"
        assert (await get(endpoint, "/health")).status == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"b" * 20_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n", 431),
    ],
)
async def test_huge_requests_are_refused(endpoint: int, request_bytes: bytes, status: int) -> None:
    with trio.fail_after(10):
        response = await exchange(endpoint, request_bytes)
        assert response.status == status
        assert (await get(endpoint, "/health")).status == 200


def test_parse_request_is_pure() -> None:
    request = parse_request(b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: h\r\nX-A:  b c \r\n\r\n")
    assert (request.method, request.path, request.version) == ("HEAD", "/metrics", (1, 1))
    assert request.header("x-a") == ["b c"]
    with pytest.raises(BadRequest) as info:
        parse_request(b"\r\n\r\n")
    assert info.value.status == 400
    assert MAX_HEAD_BYTES == 8192


async def test_silent_client_is_dropped_after_the_timeout(nursery: trio.Nursery) -> None:
    port = await nursery.start(
        partial(serve_metrics, ANY_PORT, ready_server_metrics(), request_timeout=0.3)
    )
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
            await tcp.send_all(b"GET /health HTTP/1.1\r\n")  # and never the rest
            started = trio.current_time()
            assert await read_to_end(tcp) == (b"", "eof")
            assert trio.current_time() - started < 5
        assert (await get(port, "/health")).status == 200


async def test_a_full_endpoint_drops_its_oldest_idle_connection(nursery: trio.Nursery) -> None:
    """At the cap the newest request is served: the oldest idle connection makes room."""
    port = await nursery.start(
        partial(
            serve_metrics, ANY_PORT, ready_server_metrics(), max_connections=2, request_timeout=30
        )
    )
    with trio.fail_after(10):
        oldest = await trio.open_tcp_stream(LOCALHOST, port)
        await oldest.send_all(b"G")
        # A whole exchange after it: by then the server has taken `oldest` in (accepts are FIFO).
        assert (await get(port, "/livez")).status == 200
        younger = await trio.open_tcp_stream(LOCALHOST, port)
        await younger.send_all(b"G")
        # Both slots are held: this request still gets its answer...
        assert (await get(port, "/health")).status == 200
        # ...because the oldest idle connection was closed for it,
        _, end = await read_to_end(oldest)
        assert end in ("eof", "reset")
        # while the younger one was kept and is still served when its head comes.
        await younger.send_all(b"ET /health HTTP/1.1\r\nHost: h\r\n\r\n")
        raw, end = await read_to_end(younger)
        assert parse_response(raw, end).status == 200
        await oldest.aclose()
        await younger.aclose()


async def test_serve_metrics_needs_an_address() -> None:
    with pytest.raises(ValueError, match="listen"):
        await serve_metrics(MetricsSettings(), Metrics())


# --- trio-tunnel status -----------------------------------------------------------------------


def test_summary_computes_throughput() -> None:
    metrics = Metrics(role="server")
    metrics.live = lambda: {"connected_clients": 2, "active_client": 2}
    metrics.tunnel("ssh").bytes_out = 1024
    first = _status._Sample(10.0, _status.parse_exposition(render_metrics(metrics)))
    metrics.tunnel("ssh").bytes_out += 4 * 1024 * 1024
    metrics.tunnel("ssh").bytes_in += 2048
    metrics.tunnel("ssh").streams_total = 7
    metrics.switched("client 1 connected and no client was active")
    second = _status._Sample(12.0, _status.parse_exposition(render_metrics(metrics)))
    document: dict[str, object] = {
        "status": "ok",
        "role": "server",
        "connected_clients": 2,
        "active_client": 2,
    }
    lines = _status.summary(document, first, second)
    assert lines[0] == "role: server; connected clients: 2; active client: 2"
    row = next(line for line in lines if line.strip().startswith("ssh"))
    assert row.split() == [
        "ssh",
        "0",
        "7",
        "4.0",
        "MiB",
        "2.0",
        "KiB",
        "2.0",
        "MiB/s",
        "1.0",
        "KiB/s",
    ]
    assert "switches: first_client 1" in lines
    assert "stream resets: none" in lines
    assert "refused connections: none" in lines
    process = next(line for line in lines if line.startswith("process: up "))
    assert "; cpu " in process
    metrics.connection_refused("ssh", "no_client")
    metrics.connection_refused("ssh", "no_client")
    metrics.connection_refused("db", "no_active_client")
    third = _status._Sample(13.0, _status.parse_exposition(render_metrics(metrics)))
    lines = _status.summary(document, second, third)
    assert "refused connections: db no_active_client 1, ssh no_client 2" in lines


async def run_status(url: str, *extra: str) -> tuple[int, str, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "trio_tunnel", "status", url, "--interval", "0.2", *extra],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    # Only our own lines of stderr: a dependency may warn on import.
    errors = [line for line in result.stderr.decode().splitlines() if "trio-tunnel" in line]
    return result.returncode, result.stdout.decode(), "".join(f"{line}\n" for line in errors)


async def test_status_in_process(endpoint: int) -> None:
    out = io.StringIO()
    code = await trio.to_thread.run_sync(
        partial(_status.status, f"127.0.0.1:{endpoint}/metrics", interval=0.05, out=out)
    )
    assert code == 0
    assert out.getvalue().startswith(f"http://127.0.0.1:{endpoint}: healthy (HTTP 200)\n")


@pytest.fixture
def procs() -> Iterator[list[TunnelProcess]]:
    started: list[TunnelProcess] = []
    yield started
    for proc in started:
        proc.close()


METRICS_TOML = '\n[metrics]\nlisten = "127.0.0.1:0"\n'


async def metrics_url(proc: TunnelProcess) -> str:
    await proc.wait_log(r"serving /metrics and /health on http://127\.0\.0\.1:\d+/")
    match = re.search(r"serving /metrics and /health on (http://127\.0\.0\.1:\d+)/", proc.new_log())
    assert match is not None
    return match[1]


@pytest.mark.system
async def test_status_of_running_processes(
    nursery: trio.Nursery, tmp_path: Path, procs: list[TunnelProcess]
) -> None:
    echo = await start_service(nursery, echo_handler)
    ws, down = free_port(), free_port()
    server = TunnelProcess(
        "server", toml_config("server", ws, listen={"down": down}) + METRICS_TOML, tmp_path
    )
    procs.append(server)
    client = TunnelProcess(
        "client1",
        toml_config("client", ws, client_id=1, connect={"down": echo}) + METRICS_TOML,
        tmp_path,
    )
    procs.append(client)
    with trio.fail_after(60):
        server_url, client_url = await metrics_url(server), await metrics_url(client)
        await server.wait_log("client 1 connected")
        async with await trio.open_tcp_stream(LOCALHOST, down) as tcp:
            await tcp.send_all(b"z" * 10_000)
            await tcp.send_eof()
            data, end = await read_to_end(tcp)
        assert (len(data), end) == (10_000, "eof")

        code, out, err = await run_status(server_url)
        assert (code, err) == (0, ""), out
        assert out.startswith(f"{server_url}: healthy (HTTP 200)\n")
        assert "role: server; connected clients: 1; active client: 1" in out
        row = next(line for line in out.splitlines() if line.strip().startswith("down"))
        assert row.split()[:7] == ["down", "0", "1", "9.8", "KiB", "9.8", "KiB"]
        assert row.split()[7:] == ["0", "B/s", "0", "B/s"]
        assert "switches: first_client 1" in out

        code, out, err = await run_status(client_url)
        assert (code, err) == (0, ""), out
        assert "role: client 1; connected; active" in out

        server.kill()
        while (result := await run_status(client_url))[0] != 1:
            await trio.sleep(0.05)
        code, out, err = result
        assert out.startswith(f"{client_url}: NOT HEALTHY (HTTP 503)\n")
        assert "role: client 1; NOT connected; standby" in out

        code, out, err = await run_status(server_url)
        assert (code, out) == (2, "")
        assert err.startswith(f"trio-tunnel status: {server_url}: cannot connect: ")


@pytest.mark.system
async def test_status_with_nothing_listening() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with trio.fail_after(20):
        code, out, err = await run_status(url)
    assert (code, out) == (2, "")
    assert err == f"trio-tunnel status: {url}: cannot connect: Connection refused\n"


@pytest.mark.system
async def test_status_of_something_else(nursery: trio.Nursery) -> None:
    async def not_ours(tcp: trio.SocketStream) -> None:
        async with tcp:
            await tcp.receive_some(65536)
            await tcp.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    port = await start_service(nursery, not_ours)
    with trio.fail_after(20):
        code, out, err = await run_status(f"127.0.0.1:{port}")
    assert (code, out) == (2, "")
    assert "not a trio-tunnel metrics endpoint (HTTP 404 from /metrics)" in err


@pytest.mark.parametrize("role", ["server", "client"])
def test_a_draining_process_is_not_ready(role: str) -> None:
    """During a drain the process still carries its open streams, but load balancers and
    readiness probes must stop sending it new ones: /readyz says 503 "draining"."""
    from trio_tunnel._metrics_http import liveness, readiness

    metrics = Metrics(role=role)
    up = {"connected_clients": 2, "active_client": 1, "connected": 1, "active": 1, "client_id": 1}
    metrics.live = lambda: {**up, "draining": 0}
    assert readiness(metrics)[0] == 200
    metrics.live = lambda: {**up, "draining": 1}
    status, document = readiness(metrics)
    assert (status, document["status"], document["ready"]) == (503, "draining", False)
    assert liveness(metrics)[0] == 200
