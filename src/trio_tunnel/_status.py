"""``trio-tunnel status URL``: the health and a readable summary of a running process.

It reads the process's ``[metrics]`` endpoint: ``/metrics`` twice, ``--interval`` seconds
apart (throughput per tunnel is the difference over the time between them), then ``/health``.
Exit status: 0 healthy (ready), 1 unhealthy (a server without an active client, a client not
connected to the server), 2 unreachable.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Final, TextIO
from urllib.parse import urlsplit, urlunsplit

import attrs

__all__ = ["EXIT_HEALTHY", "EXIT_UNHEALTHY", "EXIT_UNREACHABLE", "parse_exposition", "register"]

EXIT_HEALTHY: Final = 0
EXIT_UNHEALTHY: Final = 1
EXIT_UNREACHABLE: Final = 2
_MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]


class Unreachable(Exception):
    """The endpoint did not answer, or answered something that is not trio-tunnel's."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` subcommand."""
    parser = subparsers.add_parser(
        "status",
        help="show the health, streams and throughput of a running process "
        "(from its [metrics] endpoint)",
    )
    parser.add_argument("url", help="the process's metrics endpoint, e.g. http://127.0.0.1:9108")
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        help="seconds between the two samples throughput is computed from; 0: no throughput "
        "(default 1)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=5.0, help="seconds to wait for each answer (default 5)"
    )
    parser.set_defaults(handler=_cmd_status)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0..3600 seconds (got {text})")
    return value


def _cmd_status(args: argparse.Namespace) -> int:
    return status(args.url, interval=args.interval, timeout=args.timeout)


def status(
    url: str, *, interval: float = 1.0, timeout: float = 5.0, out: TextIO | None = None
) -> int:
    """Print the status of the process whose endpoint is ``url``; returns the exit status."""
    out = out if out is not None else sys.stdout
    try:
        base = base_url(url)
        first = _fetch_metrics(base, timeout)
        second = None
        if interval > 0:
            time.sleep(interval)
            second = _fetch_metrics(base, timeout)
        code, document = _fetch_health(base, timeout)
    except Unreachable as exc:
        print(f"trio-tunnel status: {url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    healthy = code == 200
    print(f"{base}: {'healthy' if healthy else 'NOT HEALTHY'} (HTTP {code})", file=out)
    for line in summary(document, first, second):
        print(line, file=out)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


def base_url(url: str) -> str:
    """``http://host:port`` from what the user typed (scheme optional, /metrics or /health ok)."""
    text = url if "://" in url else f"http://{url}"
    split = urlsplit(text)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise Unreachable("expected a URL like http://127.0.0.1:9108")
    path = split.path.rstrip("/")
    for route in ("/metrics", "/health"):
        path = path.removesuffix(route)
    return urlunsplit((split.scheme, split.netloc, path, "", ""))


# The endpoint is the operator's own process: never go through an http_proxy from the environment.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status), response.read(_MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:  # an answer all the same (503 from /health)
        with exc:
            return exc.code, exc.read(_MAX_RESPONSE_BYTES)
    except urllib.error.URLError as exc:
        raise Unreachable(f"cannot connect: {_reason(exc.reason)}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise Unreachable(f"no valid answer: {_reason(exc)}") from exc


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


@attrs.frozen
class _Sample:
    at: float
    values: Samples


def _fetch_metrics(base: str, timeout: float) -> _Sample:
    code, body = _get(f"{base}/metrics", timeout)
    at = time.monotonic()
    if code != 200:
        raise Unreachable(f"not a trio-tunnel metrics endpoint (HTTP {code} from /metrics)")
    try:
        values = parse_exposition(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unreachable(f"/metrics is not in the Prometheus text format ({exc})") from exc
    if "trio_tunnel_info" not in values:
        raise Unreachable("not a trio-tunnel metrics endpoint (no trio_tunnel_info)")
    return _Sample(at, values)


def _fetch_health(base: str, timeout: float) -> tuple[int, dict[str, object]]:
    code, body = _get(f"{base}/health", timeout)
    if code not in (200, 503):
        raise Unreachable(f"not a trio-tunnel metrics endpoint (HTTP {code} from /health)")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise Unreachable(f"/health did not answer JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise Unreachable("/health did not answer a JSON object")
    return code, document


# --- the text format, leniently (the endpoint's own tests hold it to the spec) ---------------

_SAMPLE_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+\S+)?")
_LABEL_PAIR = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*,?')
_ESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], value)


def parse_exposition(text: str) -> Samples:
    """Samples of a Prometheus text exposition: {name: {sorted label pairs: value}}."""
    samples: Samples = defaultdict(dict)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"line {number} is not a sample")
        name, label_text, value = match.groups()
        labels: list[tuple[str, str]] = []
        position = 0
        while label_text and position < len(label_text):
            pair = _LABEL_PAIR.match(label_text, position)
            if pair is None or pair.end() == position:
                raise ValueError(f"line {number}: malformed labels")
            labels.append((pair[1], _unescape(pair[2])))
            position = pair.end()
        samples[name][tuple(sorted(labels))] = float(value)
    return dict(samples)


# --- the summary ----------------------------------------------------------------------------


def _value(values: Samples, name: str, **labels: str) -> float:
    return values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def _by_label(values: Samples, name: str, label: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for labels, value in values.get(name, {}).items():
        found[dict(labels).get(label, "")] = value
    return found


def _counts(values: Samples, name: str, label: str) -> str:
    counts = {key: value for key, value in _by_label(values, name, label).items() if value}
    if not counts:
        return "none"
    return ", ".join(f"{key} {value:g}" for key, value in sorted(counts.items()))


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def summary(document: dict[str, object], first: _Sample, second: _Sample | None) -> list[str]:
    """Readable lines: who is connected and active, then per tunnel, then the counters."""
    latest = second or first
    values = latest.values
    lines: list[str] = []
    role = document.get("role")
    if role == "server":
        active = document.get("active_client")
        lines.append(
            f"role: server; connected clients: {document.get('connected_clients')};"
            f" active client: {active if active else 'none'}"
        )
    else:
        connected = "connected" if document.get("connected") else "NOT connected"
        state = "active" if document.get("active") else "standby"
        lines.append(f"role: client {document.get('client_id')}; {connected}; {state}")
    tunnels = sorted(
        set(_by_label(values, "trio_tunnel_streams_total", "tunnel"))
        | set(_by_label(values, "trio_tunnel_bytes_total", "tunnel"))
    )
    elapsed = second.at - first.at if second is not None else 0.0
    header = f"  {'tunnel':<20} {'open':>6} {'total':>8} {'out':>11} {'in':>11}"
    if elapsed > 0:
        header += f" {'out/s':>13} {'in/s':>13}"
    lines.append("tunnels:" if tunnels else "tunnels: none")
    if tunnels:
        lines.append(header)
    for tunnel in tunnels:
        sent = _value(values, "trio_tunnel_bytes_total", tunnel=tunnel, direction="out")
        received = _value(values, "trio_tunnel_bytes_total", tunnel=tunnel, direction="in")
        row = (
            f"  {tunnel:<20}"
            f" {_value(values, 'trio_tunnel_streams_open', tunnel=tunnel):>6.0f}"
            f" {_value(values, 'trio_tunnel_streams_total', tunnel=tunnel):>8.0f}"
            f" {human_bytes(sent):>11} {human_bytes(received):>11}"
        )
        if second is not None and elapsed > 0:
            before = first.values
            out_rate = (
                sent - _value(before, "trio_tunnel_bytes_total", tunnel=tunnel, direction="out")
            ) / elapsed
            in_rate = (
                received - _value(before, "trio_tunnel_bytes_total", tunnel=tunnel, direction="in")
            ) / elapsed
            row += f" {human_bytes(out_rate) + '/s':>13} {human_bytes(in_rate) + '/s':>13}"
        lines.append(row)
    if role == "server":
        lines.append(f"switches: {_counts(values, 'trio_tunnel_switches_total', 'reason')}")
        lines.append(
            f"refused peers: {_counts(values, 'trio_tunnel_refused_peers_total', 'reason')}"
        )
    else:
        reconnects = _value(values, "trio_tunnel_websocket_reconnects_total")
        lines.append(f"websocket reconnects: {reconnects:g}")
    lines.append(f"stream resets: {_counts(values, 'trio_tunnel_stream_resets_total', 'reason')}")
    lines.append(f"refused connections: {_refusals(values)}")
    lines.append(f"process: {_process(values)}")
    return lines


def _refusals(values: Samples) -> str:
    counts: dict[str, float] = {}
    for labels, count in values.get("trio_tunnel_connections_refused_total", {}).items():
        label = dict(labels)
        if count:
            counts[f"{label.get('tunnel', '')} {label.get('reason', '')}"] = count
    return ", ".join(f"{key} {count:g}" for key, count in sorted(counts.items())) or "none"


def _process(values: Samples) -> str:
    parts = []
    start = _value(values, "process_start_time_seconds")
    if start:
        parts.append(f"up {_duration(time.time() - start)}")
    parts.append(f"cpu {_value(values, 'process_cpu_seconds_total'):.1f} s")
    if "process_resident_memory_bytes" in values:
        parts.append(f"memory {human_bytes(_value(values, 'process_resident_memory_bytes'))}")
    if "process_open_fds" in values:
        parts.append(f"open files {_value(values, 'process_open_fds'):g}")
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"
