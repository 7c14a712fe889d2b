"""The metrics endpoint: ``GET /metrics`` (Prometheus text format 0.0.4), ``/livez``,
``/readyz`` and ``/health`` (the same as ``/readyz``).

A deliberately small, exact HTTP/1.1 server. The protocol part is pure: ``parse_request``
turns a request head into a ``Request`` or raises ``BadRequest`` with the status to answer,
and ``respond`` turns a request into response bytes. The I/O shell reads one request head,
answers, and closes (no keep-alive).

Nothing can starve it (a monitor that cannot read /readyz restarts a healthy tunnel):
- a connection must deliver its whole request head within ``REQUEST_TIMEOUT_SECS`` (2 s) of
  being accepted, and is closed silently otherwise: a scraper sends its head at once, and 2 s
  still allows one lost packet's retransmission (the initial TCP retransmit timeout is 1 s);
- at most ``MAX_CONNECTIONS`` (64) are served at once; when a new one arrives at the cap,
  the *oldest idle* connection (still waiting for its head, or lingering after its answer) is
  closed to make room, so holding connections open cannot lock out the newest request; only
  when every slot is busy writing an answer is the newcomer answered 503 at once;
- writing the answer is bounded too (``ANSWER_TIMEOUT_SECS``), for a client that never reads.
A failure while answering is logged and contained to its connection.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import json
import logging
import re
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Final, Protocol

import attrs
import trio

from ._config import Config, MetricsSettings
from ._metrics import (
    CONNECTION_REFUSAL_REASONS,
    REFUSAL_REASONS,
    RESET_KINDS,
    SWITCH_REASONS,
    Metrics,
)
from ._process import ProcessSample, sample_process

__all__ = [
    "BadRequest",
    "MetricsOwner",
    "MetricsSource",
    "Request",
    "health",
    "liveness",
    "parse_request",
    "readiness",
    "render_metrics",
    "respond",
    "serve_metrics",
]

log = logging.getLogger("trio_tunnel.metrics")

MAX_HEAD_BYTES: Final = 8192
REQUEST_TIMEOUT_SECS: Final = 2.0  # from accept to the end of the request head
ANSWER_TIMEOUT_SECS: Final = 10.0  # to hand the answer to a client that reads slowly
MAX_CONNECTIONS: Final = 64
# After answering a request we stopped reading mid-way, keep reading (and discarding) a little
# before closing: closing with unread data makes the kernel send a reset, which can destroy
# the answer before the client has read it.
LINGER_SECS: Final = 1.0
LINGER_BYTES: Final = 64 * 1024

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE: Final = "application/json"
ROUTES: Final = ("/metrics", "/health", "/readyz", "/livez")
ALLOWED_METHODS: Final = ("GET", "HEAD")


class MetricsOwner(Protocol):
    """A running ``Server`` or ``Client``: something that keeps a ``Metrics``."""

    @property
    def metrics(self) -> Metrics: ...


MetricsSource = Metrics | MetricsOwner


def _metrics_of(source: MetricsSource) -> Metrics:
    return source if isinstance(source, Metrics) else source.metrics


def _configured_tunnels(source: MetricsSource) -> set[str]:
    """The tunnels the owner's config names, so they show zeros before their first stream."""
    config = getattr(source, "config", None)
    if not isinstance(config, Config):
        return set()
    return {entry.tunnel for entry in config.listen} | {entry.tunnel for entry in config.connect}


# --- Prometheus text format 0.0.4 -----------------------------------------------------------


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


_Sample = tuple[dict[str, str], int | float]


def _family(name: str, kind: str, help_text: str, samples: Iterable[_Sample]) -> Iterator[str]:
    yield f"# HELP {name} {_escape_help(help_text)}"
    yield f"# TYPE {name} {kind}"
    for labels, value in samples:
        if labels:
            pairs = ",".join(f'{key}="{_escape_label_value(v)}"' for key, v in labels.items())
            yield f"{name}{{{pairs}}} {value}"
        else:
            yield f"{name} {value}"


def _process_families(sample: ProcessSample) -> Iterator[str]:
    """The standard process metrics; a figure the platform does not give is left out."""
    yield from _family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        [({}, round(sample.cpu_seconds, 6))],
    )
    optional: list[tuple[str, str, int | None]] = [
        ("process_resident_memory_bytes", "Resident memory size in bytes.", sample.resident_bytes),
        ("process_virtual_memory_bytes", "Virtual memory size in bytes.", sample.virtual_bytes),
        ("process_open_fds", "Number of open file descriptors.", sample.open_fds),
        ("process_max_fds", "Maximum number of open file descriptors.", sample.max_fds),
    ]
    for name, help_text, figure in optional:
        if figure is not None:
            yield from _family(name, "gauge", help_text, [({}, figure)])
    yield from _family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        [({}, round(sample.start_time, 2))],
    )


def _by_label(label: str, counts: dict[str, int], known: Iterable[str]) -> list[_Sample]:
    values = dict.fromkeys(known, 0) | counts
    return [({label: key}, values[key]) for key in sorted(values)]


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | bool) else 0


def render_metrics(metrics: Metrics, tunnels: Iterable[str] = ()) -> str:
    """The exposition of ``metrics``; ``tunnels`` are shown (as zeros) even before any stream.

    Bytes count closed streams plus what open streams have moved so far.
    """
    live = metrics.live()
    open_bytes = metrics.open_stream_bytes()
    names = sorted(set(tunnels) | set(metrics.tunnels) | set(open_bytes))
    counters = {name: metrics.tunnels.get(name) for name in names}
    lines: list[str] = []
    info = {"role": metrics.role}
    if metrics.role == "client" and "client_id" in live:
        info["client_id"] = str(live["client_id"])
    lines += _family(
        "trio_tunnel_info", "gauge", "Always 1; the labels describe the process.", [(info, 1)]
    )
    if metrics.role == "server":
        lines += _family(
            "trio_tunnel_connected_clients",
            "gauge",
            "Clients with an open WebSocket to this server.",
            [({}, _int(live.get("connected_clients")))],
        )
        lines += _family(
            "trio_tunnel_active_client",
            "gauge",
            "The id of the active client (1 or 2); 0 when no client is active.",
            [({}, _int(live.get("active_client")))],
        )
        lines += _family(
            "trio_tunnel_switches_total",
            "counter",
            "Changes of the active client, by reason.",
            _by_label("reason", dict(metrics.switches), SWITCH_REASONS),
        )
        lines += _family(
            "trio_tunnel_refused_peers_total",
            "counter",
            "WebSocket peers refused, by reason.",
            _by_label("reason", dict(metrics.refused_peers), REFUSAL_REASONS),
        )
    else:
        lines += _family(
            "trio_tunnel_client_connected",
            "gauge",
            "1 while this client has a WebSocket to the server, else 0.",
            [({}, _int(live.get("connected")))],
        )
        lines += _family(
            "trio_tunnel_client_active",
            "gauge",
            "1 while this client is the active one, else 0.",
            [({}, _int(live.get("active")))],
        )
        lines += _family(
            "trio_tunnel_websocket_reconnects_total",
            "counter",
            "WebSocket connections to the server after the first.",
            [({}, metrics.reconnects)],
        )
    lines += _family(
        "trio_tunnel_streams_open",
        "gauge",
        "Tunnel streams open now, by tunnel.",
        [({"tunnel": n}, c.streams_open if c else 0) for n, c in counters.items()],
    )
    lines += _family(
        "trio_tunnel_streams_total",
        "counter",
        "Tunnel streams opened, by tunnel.",
        [({"tunnel": n}, c.streams_total if c else 0) for n, c in counters.items()],
    )
    byte_samples: list[_Sample] = []
    for name, c in counters.items():
        still_open = open_bytes.get(name, (0, 0))
        byte_samples.append(
            ({"tunnel": name, "direction": "in"}, (c.bytes_in if c else 0) + still_open[1])
        )
        byte_samples.append(
            ({"tunnel": name, "direction": "out"}, (c.bytes_out if c else 0) + still_open[0])
        )
    lines += _family(
        "trio_tunnel_bytes_total",
        "counter",
        "Bytes carried, by tunnel; out = from this side's TCP into the tunnel, in = the reverse.",
        byte_samples,
    )
    lines += _family(
        "trio_tunnel_stream_resets_total",
        "counter",
        "Tunnel streams ended by a reset, by reason.",
        _by_label("reason", dict(metrics.stream_resets), RESET_KINDS),
    )
    refused_tunnels = sorted(set(names) | {tunnel for tunnel, _ in metrics.connections_refused})
    lines += _family(
        "trio_tunnel_connections_refused_total",
        "counter",
        "TCP connections to a listen port refused (reset at once), by tunnel and reason.",
        [
            ({"tunnel": tunnel, "reason": reason}, metrics.connections_refused[tunnel, reason])
            for tunnel in refused_tunnels
            for reason in CONNECTION_REFUSAL_REASONS
        ],
    )
    lines += _process_families(sample_process())
    return "\n".join(lines) + "\n"


def readiness(metrics: Metrics) -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON document) for ``/readyz`` and ``/health``: 200 while this process can
    carry streams, else 503. A server is ready while an active client is connected; a client
    while it is connected to the server (as the active client or the standby). A draining
    process (``[shutdown] drain_secs``, after SIGTERM) is never ready: load balancers stop
    sending to it while its open streams finish."""
    live = metrics.live()
    draining = bool(live.get("draining"))
    if metrics.role == "server":
        active = _int(live.get("active_client"))
        connected = _int(live.get("connected_clients"))
        status = "ok" if active else ("no_active_client" if connected else "no_client")
        ready = bool(active) and not draining
        return (200 if ready else 503), {
            "status": "draining" if draining else status,
            "ready": ready,
            "role": "server",
            "connected_clients": connected,
            "active_client": active or None,
        }
    connected_to_server = bool(live.get("connected"))
    ready = connected_to_server and not draining
    document: dict[str, object] = {
        "status": "draining" if draining else ("ok" if connected_to_server else "disconnected"),
        "ready": ready,
        "role": "client",
        "client_id": live.get("client_id"),
        "connected": connected_to_server,
        "active": bool(live.get("active")),
    }
    return (200 if ready else 503), document


health = readiness  # /health is /readyz, kept for the configs and probes that use it


def liveness(metrics: Metrics) -> tuple[int, dict[str, object]]:
    """(200, JSON document) for ``/livez``: answered at all means the event loop is running.

    Never 503 because of the far side: a liveness probe that restarts a process whose peer is
    down (both clients, during a server outage) turns one outage into a restart loop.
    """
    return 200, {"status": "alive", "role": metrics.role}


# --- HTTP/1.1, sans I/O ---------------------------------------------------------------------

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# Field values: visible characters, obs-text, spaces and tabs; no other control characters.
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_ABSOLUTE_TARGET = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*([^#]*)")


class BadRequest(Exception):
    """The request cannot be answered normally; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@attrs.frozen
class Request:
    method: str
    target: str
    path: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def find_head_end(buffer: bytes | bytearray) -> int | None:
    """Where the head ends (after its empty line), or None if it has not ended yet."""
    start = len(buffer) - len(bytes(buffer).lstrip(b"\r\n"))  # leading empty lines are allowed
    match = _HEAD_END.search(buffer, start)
    return None if match is None else match.end()


def parse_request(head: bytes) -> Request:
    """Parse a request head (request line and fields, up to and including the empty line)."""
    lines = [line.removesuffix(b"\r") for line in head.lstrip(b"\r\n").split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise BadRequest(400, "empty request")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise BadRequest(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != b"1":
        raise BadRequest(505, "only HTTP/1.x is supported")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        field = _HEADER_LINE.fullmatch(line)
        if field is None:  # includes obsolete line folding, which a server must reject
            raise BadRequest(400, "malformed header field")
        name, value = field.groups()
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    hosts = [value for name, value in headers if name == "host"]
    if len(hosts) > 1 or (minor != b"0" and not hosts):
        raise BadRequest(400, "an HTTP/1.1 request needs exactly one Host header")
    if target.startswith(b"/"):
        path = target.split(b"?", 1)[0]
    elif absolute := _ABSOLUTE_TARGET.fullmatch(target):
        path = absolute.group(1).split(b"?", 1)[0] or b"/"
    else:
        raise BadRequest(400, "malformed request target")
    return Request(
        method=method.decode("ascii"),
        target=target.decode("ascii"),
        path=path.decode("ascii"),
        version=(1, int(minor)),
        headers=tuple(headers),
    )


def _response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    head_only: bool = False,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    fields = [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *extra,
    ]
    head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    return head.encode("latin-1") + (b"" if head_only else body)


def error_response(status: int, why: str, *, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    body = f"{status} {http.HTTPStatus(status).phrase}: {why}\n".encode()
    return _response(status, body, "text/plain; charset=utf-8", extra=extra)


def respond(request: Request, source: MetricsSource) -> bytes:
    """The whole response to ``request``."""
    if request.path not in ROUTES:
        return error_response(404, f"no such resource (try {' or '.join(ROUTES)})")
    if request.method not in ALLOWED_METHODS:
        allow = ", ".join(ALLOWED_METHODS)
        return error_response(405, f"only {allow}", extra=[("Allow", allow)])
    head_only = request.method == "HEAD"
    metrics = _metrics_of(source)
    if request.path == "/metrics":
        text = render_metrics(metrics, _configured_tunnels(source))
        return _response(200, text.encode(), PROMETHEUS_CONTENT_TYPE, head_only=head_only)
    status, document = liveness(metrics) if request.path == "/livez" else readiness(metrics)
    body = (json.dumps(document) + "\n").encode()
    return _response(status, body, JSON_CONTENT_TYPE, head_only=head_only)


# --- the I/O shell --------------------------------------------------------------------------


@attrs.define(eq=False)
class _Slot:
    """One connection being served; ``idle`` while it waits for its head or lingers."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    idle: bool = True


@attrs.define
class _Endpoint:
    source: MetricsSource
    max_connections: int
    request_timeout: float
    # Connections being served, oldest first (dicts keep insertion order).
    slots: dict[_Slot, None] = attrs.field(factory=dict)
    evicted: int = 0

    @property
    def connections(self) -> int:
        return len(self.slots)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if len(self.slots) >= self.max_connections and not self._evict_oldest_idle():
                with trio.move_on_after(self.request_timeout):
                    await _send_quietly(
                        stream,
                        error_response(503, "too many connections", extra=[("Retry-After", "1")]),
                    )
                return
            slot = _Slot()
            self.slots[slot] = None
            try:
                with slot.scope:
                    await self._converse(stream, slot)
            finally:
                self.slots.pop(slot, None)

    def _evict_oldest_idle(self) -> bool:
        """Close the oldest idle connection to make room; False if every one is busy."""
        oldest = next((slot for slot in self.slots if slot.idle), None)
        if oldest is None:
            return False
        del self.slots[oldest]  # its slot is free now; its task ends at its next checkpoint
        oldest.scope.cancel()
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 1000 == 0:
            log.warning(
                "metrics endpoint full (%d connections): closed the oldest idle one"
                " (%d so far; a client holding connections open?)",
                self.max_connections,
                self.evicted,
            )
        return True

    async def _converse(self, stream: trio.SocketStream, slot: _Slot) -> None:
        linger = False
        response: bytes | None = None
        with trio.move_on_after(self.request_timeout):
            try:
                head, rest = await _read_head(stream)
            except BadRequest as exc:
                log.debug("bad request from %s: %s", _peer(stream), exc.why)
                response, linger = error_response(exc.status, exc.why), True
            except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                return
            else:
                response, linger = self._answer(stream, head, rest)
        if response is None:
            return  # no whole head in time: close without a word (a slow or idle client)
        slot.idle = False
        with trio.move_on_after(ANSWER_TIMEOUT_SECS):
            await _send_quietly(stream, response)
        slot.idle = True
        if linger:
            await _linger(stream)

    def _answer(self, stream: trio.SocketStream, head: bytes, rest: bytes) -> tuple[bytes, bool]:
        """The response, and whether the client may still be sending (a body, say)."""
        try:
            request = parse_request(head)
        except BadRequest as exc:
            log.debug("bad request from %s: %s", _peer(stream), exc.why)
            return error_response(exc.status, exc.why), True
        try:
            response = respond(request, self.source)
        except Exception:  # a bug must not take the endpoint (or the tunnel) down
            log.exception("failed to answer %s %s", request.method, request.target)
            response = error_response(500, "internal error (see the log)")
        has_body = bool(rest) or any(
            name in ("content-length", "transfer-encoding") and value.strip() not in ("", "0")
            for name, value in request.headers
        )
        return response, has_body


async def _read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """The request head and whatever followed it; BadRequest when it is too large."""
    buffer = bytearray()
    while (end := find_head_end(buffer)) is None:
        if len(buffer) >= MAX_HEAD_BYTES:
            if b"\n" not in buffer:
                raise BadRequest(414, f"request line longer than {MAX_HEAD_BYTES} bytes")
            raise BadRequest(431, f"request head longer than {MAX_HEAD_BYTES} bytes")
        data = await stream.receive_some(MAX_HEAD_BYTES - len(buffer))
        if not data:
            raise EOFError
        buffer += data
    return bytes(buffer[:end]), bytes(buffer[end:])


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then discard what the client still sends, briefly, before closing."""
    with trio.move_on_after(LINGER_SECS):
        try:
            await stream.send_eof()
            discarded = 0
            while discarded < LINGER_BYTES and (data := await stream.receive_some(16384)):
                discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_metrics(
    settings: MetricsSettings,
    source: MetricsSource,
    *,
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT_SECS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics``, ``/livez``, ``/readyz`` and ``/health`` for ``source`` until
    cancelled.

    ``source`` is a running ``Server`` or ``Client`` (or just its ``Metrics``). Use with
    ``nursery.start``: it reports the bound port (useful with port 0).
    """
    address = settings.address
    if address is None:
        raise ValueError("serve_metrics needs [metrics] listen to be set")
    host, port = address
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        # Every address of a name would get its own free port: keep one, so one port answers.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound = int(listeners[0].socket.getsockname()[1])
    endpoint = _Endpoint(source, max_connections, request_timeout)
    shown = f"[{host}]" if ":" in host else host
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, endpoint.handle, listeners))
        log.info("serving /metrics and /health on http://%s:%d/", shown, bound)
        task_status.started(bound)
