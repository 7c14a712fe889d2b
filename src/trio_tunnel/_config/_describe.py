"""``describe_config``: what a process with this config would do, in words (``check``)."""

from collections.abc import Mapping

from .._proxy import ProxyError, choose_proxy
from ._schema import Config, LoggingSettings, WebSocketSettings


def _address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else f"{shown}:<any free port>"


def _describe_security(config: Config) -> str:
    ws = config.websocket
    parts: list[str] = []
    if ws.scheme == "wss":
        if config.is_server:
            parts.append(f"TLS with {ws.tls_bundle}")
            if ws.mutual_tls:
                parts.append(f"client certificates required, verified against {ws.trusted_ca}")
        else:
            parts.append(f"TLS, server verified against {ws.trusted_ca or 'the system CAs'}")
            if ws.mutual_tls:
                parts.append(f"presenting {ws.tls_bundle}")
        if ws.trusted_peers:
            parts.append(f"peer pinned to the certificates in {ws.trusted_peers}")
    else:
        parts.append("no TLS (ws://)")
    if ws.auth_token_file:
        parts.append(f"shared token from {ws.auth_token_file}")
    return "; ".join(parts)


def _describe_proxy(ws: WebSocketSettings, environ: Mapping[str, str] | None) -> str:
    if ws.proxy is None and environ is None:
        variable = "HTTPS_PROXY" if ws.scheme == "wss" else "HTTP_PROXY"
        return f"from the environment: {variable} (or lower case) unless NO_PROXY matches"
    try:
        choice = str(choose_proxy(ws.proxy, ws.scheme, ws.host, ws.port, environ or {}))
    except ProxyError as exc:
        choice = f"unusable: {exc}"
    if ws.proxy is None:
        # The environment of `check` may not be the service's own.
        return f"by this shell's environment (the service's may differ): {choice}"
    return choice


def describe_config(config: Config, environ: Mapping[str, str] | None = None) -> str:
    """A human-readable summary of what a process with this config would do.

    ``environ`` (``check`` passes ``os.environ``) shows which proxy a client without
    ``websocket.proxy`` would use; without it the summary says the environment decides.
    """
    ws = config.websocket
    where = f"({_address(ws.host, ws.port)}, path {ws.path})"
    lines: list[str] = []
    if config.is_server:
        lines.append("role: server")
        lines.append(f"websocket: listen on {ws.url} {where}")
    else:
        kind = {1: "primary", 2: "secondary"}.get(config.client_id or 0, "?")
        lines.append(f"role: client {config.client_id} ({kind})")
        lines.append(f"websocket: connect to {ws.url} {where}")
        lines.append(
            f"  reconnect after {ws.reconnect_min_secs:g}s, backing off to"
            f" {ws.reconnect_max_secs:g}s"
        )
        lines.append(f"  proxy: {_describe_proxy(ws, environ)}")
    lines.append(
        f"  handshake timeout {ws.handshake_timeout_secs:g}s, close timeout"
        f" {ws.close_timeout_secs:g}s, ping every {ws.ping_interval_secs:g}s"
        f" (timeout {ws.ping_timeout_secs:g}s)"
    )
    lines.append(f"  security: {_describe_security(config)}")
    lines.append(f"listen: {len(config.listen) or 'none'}")
    for entry in config.listen:
        lines.append(
            f"  tunnel {entry.tunnel}: accept TCP on {_address(entry.bind, entry.port)}"
            " and carry it to the peer"
        )
    lines.append(f"connect: {len(config.connect) or 'none'}")
    for target in config.connect:
        lines.append(
            f"  tunnel {target.tunnel}: open TCP to {_address(target.host, target.port)}"
            " for streams from the peer"
        )
    lines.append(
        f"failover: standby sockets closed after {config.failover.standby_socket_close_secs:g}s"
    )
    if config.failover.close_server_listeners and config.is_server:
        lines.append(
            "  the server's own listen ports close for as long after every switch"
            " (close_server_listeners)"
        )
    streams = config.streams
    lines.append(
        f"streams: window {streams.window_bytes} bytes per stream, at most"
        f" {streams.max_streams_per_session} streams per session, connect timeout"
        f" {streams.connect_timeout_secs:g}s"
    )
    if streams.idle_timeout_secs:
        lines.append(
            f"  streams idle for {streams.idle_timeout_secs:g}s are reset (idle_timeout_secs)"
        )
    lines.append(f"logging: level {config.logging.level}, {_describe_log_outputs(config.logging)}")
    if config.logging.levels:
        levels = ", ".join(f"{name} {level}" for name, level in config.logging.levels.items())
        lines.append(f"  levels of single loggers: {levels}")
    if config.logging.format != "text":
        lines.append(f"  format: {config.logging.format} (one object per line)")
    drain_secs = config.shutdown.drain_secs
    if drain_secs > 0:
        lines.append(
            f"shutdown: on SIGTERM or SIGINT stop accepting and let open streams finish for up"
            f" to {drain_secs:g}s, then reset the rest (a second signal stops at once)"
        )
    address = config.metrics.address
    if address is None:
        lines.append("metrics: no endpoint")
    else:
        lines.append(
            f"metrics: GET /metrics, /livez, /readyz and /health on http://{_address(*address)}/"
        )
    return "\n".join(lines)


def _describe_log_outputs(settings: LoggingSettings) -> str:
    outputs: list[str] = []
    if settings.stdout:
        outputs.append("to stdout")
    if settings.file is not None:
        outputs.append(
            f"to {settings.file} (rotated daily, {settings.days_to_keep} old files kept gzipped)"
        )
    if settings.syslog_host is not None:
        where = _address(settings.syslog_host, settings.syslog_port)
        outputs.append(f"to syslog at {where} (UDP, facility {settings.syslog_facility})")
    return ", ".join(outputs) or "nowhere (stdout = false and no file or syslog)"
