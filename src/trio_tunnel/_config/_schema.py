"""The configuration classes and the rules across their fields.

Every rule lives with the classes, so a ``Config`` built in Python is held to exactly the same
rules as one parsed from a file. Each field declares its check in its metadata, and each class
has cross-field checks; ``__attrs_post_init__`` runs them all and raises one ``ConfigError``
listing *every* problem (attrs validators would stop at the first). All of it is pure: the
files a config names are read by the load step (``_load.py``), not here.
"""

# No ``from __future__ import annotations``: cattrs reads the field types at runtime, and
# every type used below is defined before it is needed.

from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from .._proxy import redacted
from ._checks import (
    _DEFAULT_PORTS,
    _WS_SCHEMES,
    DEFAULT_DAYS_TO_KEEP,
    DEFAULT_SYSLOG_FACILITY,
    DEFAULT_SYSLOG_PORT,
    MAX_DAYS_TO_KEEP,
    MAX_STREAMS_LIMIT,
    MAX_WINDOW_BYTES,
    MIN_WINDOW_BYTES,
    FrozenLevels,
    _as_float,
    _as_levels,
    _as_lower,
    _as_upper,
    _bind_key,
    _binds_overlap,
    _boolean,
    _Checked,
    _checked,
    _checked_items,
    _client_id,
    _host,
    _host_port,
    _instance_of,
    _int_in,
    _log_format,
    _log_level,
    _log_levels,
    _optional_host,
    _path_name,
    _Problem,
    _proxy_setting,
    _role,
    _seconds,
    _split_host_port,
    _split_url,
    _syslog_facility,
    _tunnel_name,
    _tuple_of,
    _websocket_url,
)

_POSITIVE_SECS: Final = _checked(_seconds())


def _redacted_repr(value: object) -> str:
    """A proxy URL's repr without its password (a Config may end up in a log or traceback)."""
    return repr(redacted(value) if isinstance(value, str) else value)


TLS_FILES: Final = ("tls_bundle", "trusted_ca", "trusted_peers")


@attrs.frozen(kw_only=True)
class WebSocketSettings(_Checked):
    """The ``[websocket]`` table: where a server listens, or where a client connects."""

    url: str = attrs.field(metadata=_checked(_websocket_url))
    handshake_timeout_secs: float = attrs.field(
        default=10.0, converter=_as_float, metadata=_POSITIVE_SECS
    )
    close_timeout_secs: float = attrs.field(
        default=2.0, converter=_as_float, metadata=_POSITIVE_SECS
    )
    ping_interval_secs: float = attrs.field(
        default=5.0, converter=_as_float, metadata=_POSITIVE_SECS
    )
    ping_timeout_secs: float = attrs.field(
        default=10.0, converter=_as_float, metadata=_POSITIVE_SECS
    )
    reconnect_min_secs: float = attrs.field(
        default=0.2, converter=_as_float, metadata=_POSITIVE_SECS
    )
    reconnect_max_secs: float = attrs.field(
        default=5.0, converter=_as_float, metadata=_POSITIVE_SECS
    )
    tls_bundle: str | None = attrs.field(default=None, metadata=_checked(_path_name))
    trusted_ca: str | None = attrs.field(default=None, metadata=_checked(_path_name))
    trusted_peers: str | None = attrs.field(default=None, metadata=_checked(_path_name))
    mutual_tls: bool = attrs.field(default=False, metadata=_checked(_boolean))
    auth_token_file: str | None = attrs.field(default=None, metadata=_checked(_path_name))
    # A client's HTTP CONNECT proxy: None leaves it to HTTPS_PROXY/HTTP_PROXY and NO_PROXY,
    # "" means none at all (see _proxy.choose_proxy).
    proxy: str | None = attrs.field(
        default=None, repr=_redacted_repr, metadata=_checked(_proxy_setting)
    )

    def _cross_problems(self, bad: set[str | int]) -> list[_Problem]:
        problems: list[_Problem] = []
        if (
            not bad & {"reconnect_min_secs", "reconnect_max_secs"}
            and self.reconnect_min_secs > self.reconnect_max_secs
        ):
            problems.append(
                (
                    ("reconnect_min_secs",),
                    f"must not exceed reconnect_max_secs = {self.reconnect_max_secs:g}"
                    f" (got {self.reconnect_min_secs:g})",
                )
            )
        if (
            not bad & {"ping_interval_secs", "ping_timeout_secs"}
            and self.ping_timeout_secs <= self.ping_interval_secs
        ):
            problems.append(
                (
                    ("ping_timeout_secs",),
                    f"must be greater than ping_interval_secs = {self.ping_interval_secs:g}"
                    f" (got {self.ping_timeout_secs:g})",
                )
            )
        return problems

    @property
    def scheme(self) -> str:
        """``"ws"`` or ``"wss"`` (``http`` and ``https`` are aliases)."""
        return _WS_SCHEMES[_split_url(self.url).scheme.lower()]

    @property
    def host(self) -> str:
        """The host name or address, without IPv6 brackets."""
        host = _split_url(self.url).hostname
        assert host is not None  # checked at construction
        return host

    @property
    def port(self) -> int:
        """The port given in the URL, else 80 for ws and 443 for wss."""
        port = _split_url(self.url).port
        return _DEFAULT_PORTS[self.scheme] if port is None else port

    @property
    def path(self) -> str:
        """The resource path, ``"/"`` by default, with the query string if there is one."""
        split = _split_url(self.url)
        path = split.path or "/"
        return f"{path}?{split.query}" if split.query else path


@attrs.frozen(kw_only=True)
class FailoverSettings(_Checked):
    """The ``[failover]`` table.

    ``standby_socket_close_secs``: how long a demoted client keeps its listen ports closed
    (and may not become active again). ``close_server_listeners = true``: the server closes
    its own listen ports for that long too, after every switch away from an active client.
    """

    standby_socket_close_secs: float = attrs.field(
        default=15.0, converter=_as_float, metadata=_checked(_seconds(allow_zero=True))
    )
    # tcp-over-websocket's server also closed its own listen ports for the close period on
    # every switch; off by default, since applications at the server then see a blackout.
    close_server_listeners: bool = attrs.field(default=False, metadata=_checked(_boolean))


@attrs.frozen(kw_only=True)
class ShutdownSettings(_Checked):
    """The ``[shutdown]`` table: what SIGTERM (or SIGINT) does to open streams.

    ``drain_secs = 0`` (the default): every open stream is reset at once and the process
    exits. With ``drain_secs > 0`` the process drains: it stops accepting (its listen ports
    close; a client first has the server send new streams to the other client), lets open
    streams finish for up to that long, then resets the rest and exits 0. A second signal
    during the drain stops at once.
    """

    drain_secs: float = attrs.field(
        default=0.0, converter=_as_float, metadata=_checked(_seconds(allow_zero=True))
    )


@attrs.frozen(kw_only=True)
class StreamSettings(_Checked):
    """The ``[streams]`` table: per-stream credit window and per-session limits."""

    window_bytes: int = attrs.field(
        default=1024 * 1024, metadata=_checked(_int_in(MIN_WINDOW_BYTES, MAX_WINDOW_BYTES))
    )
    max_streams_per_session: int = attrs.field(
        default=2048, metadata=_checked(_int_in(1, MAX_STREAMS_LIMIT))
    )
    connect_timeout_secs: float = attrs.field(
        default=10.0, converter=_as_float, metadata=_POSITIVE_SECS
    )
    # Reset a stream that carried nothing either way for this long; 0 = never.
    idle_timeout_secs: float = attrs.field(
        default=0.0, converter=_as_float, metadata=_checked(_seconds(allow_zero=True))
    )


@attrs.frozen(kw_only=True)
class Listen(_Checked):
    """A ``[[listen]]`` entry: accept TCP here and carry each connection to the peer.

    ``port = 0`` binds any free port.
    """

    tunnel: str = attrs.field(metadata=_checked(_tunnel_name))
    port: int = attrs.field(metadata=_checked(_int_in(0, 65535)))
    bind: str = attrs.field(default="127.0.0.1", metadata=_checked(_host))


@attrs.frozen(kw_only=True)
class Connect(_Checked):
    """A ``[[connect]]`` entry: for streams the peer opens on ``tunnel``, connect to host:port."""

    tunnel: str = attrs.field(metadata=_checked(_tunnel_name))
    host: str = attrs.field(metadata=_checked(_host))
    port: int = attrs.field(metadata=_checked(_int_in(1, 65535)))


@attrs.frozen(kw_only=True)
class LoggingSettings(_Checked):
    """The ``[logging]`` table. ``level`` is accepted in any case and stored upper-case.

    ``levels`` sets the level of single loggers (``{ "trio_tunnel.stream" = "WARNING" }``),
    each checked like ``level``; ``format`` is ``"text"`` (the default) or ``"json"``.

    Records go to stdout (unless ``stdout = false``), to ``file`` when set (rotated at local
    midnight, the last ``days_to_keep`` old files kept gzip-compressed) and, when
    ``syslog_host`` is set, to that syslog server over UDP with ``syslog_facility``.
    """

    level: str = attrs.field(default="INFO", converter=_as_upper, metadata=_checked(_log_level))
    levels: Mapping[str, str] = attrs.field(
        factory=FrozenLevels, converter=_as_levels, metadata=_checked_items(_log_levels)
    )
    format: str = attrs.field(default="text", converter=_as_lower, metadata=_checked(_log_format))
    stdout: bool = attrs.field(default=True, metadata=_checked(_boolean))
    file: str | None = attrs.field(default=None, metadata=_checked(_path_name))
    days_to_keep: int = attrs.field(
        default=DEFAULT_DAYS_TO_KEEP, metadata=_checked(_int_in(1, MAX_DAYS_TO_KEEP))
    )
    syslog_host: str | None = attrs.field(default=None, metadata=_checked(_optional_host))
    syslog_port: int = attrs.field(
        default=DEFAULT_SYSLOG_PORT, metadata=_checked(_int_in(1, 65535))
    )
    syslog_facility: str = attrs.field(
        default=DEFAULT_SYSLOG_FACILITY, converter=_as_lower, metadata=_checked(_syslog_facility)
    )

    def _cross_problems(self, bad: set[str | int]) -> list[_Problem]:
        unused: list[tuple[str, object, str]] = []
        if self.file is None:
            unused.append(("days_to_keep", DEFAULT_DAYS_TO_KEEP, "file"))
        if self.syslog_host is None:
            unused.append(("syslog_port", DEFAULT_SYSLOG_PORT, "syslog_host"))
            unused.append(("syslog_facility", DEFAULT_SYSLOG_FACILITY, "syslog_host"))
        return [
            ((key,), f"only used with {needed} (which is not set)")
            for key, default, needed in unused
            if key not in bad and getattr(self, key) != default
        ]


@attrs.frozen(kw_only=True)
class MetricsSettings(_Checked):
    """The ``[metrics]`` table: where to serve ``GET /metrics`` and ``GET /health``.

    ``listen`` is ``host:port`` (``[::1]:9108`` for IPv6; port 0 binds any free port).
    Without it the process serves no endpoint.
    """

    listen: str | None = attrs.field(default=None, metadata=_checked(_host_port))

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, the host without IPv6 brackets; None when not configured."""
        return None if self.listen is None else _split_host_port(self.listen)


@attrs.frozen(kw_only=True)
class ClientCredentials(_Checked):
    """A ``[clients.N]`` table (server only): the credential that client N, and only it, must
    present. With these, a connection claiming id N is refused unless it shows N's token
    and/or certificate, so one client's key can never claim the other's id."""

    client_id: int = attrs.field(metadata=_checked(_client_id))
    auth_token_file: str | None = attrs.field(default=None, metadata=_checked(_path_name))
    certificate: str | None = attrs.field(default=None, metadata=_checked(_path_name))

    def _cross_problems(self, bad: set[str | int]) -> list[_Problem]:
        if self.auth_token_file is None and self.certificate is None:
            return [((), "give auth_token_file, certificate, or both")]
        return []


@attrs.frozen(kw_only=True)
class Config(_Checked):
    """A whole trio-tunnel configuration, for one server or one client process."""

    role: str = attrs.field(metadata=_checked(_role))
    websocket: WebSocketSettings = attrs.field(metadata=_checked(_instance_of(WebSocketSettings)))
    client_id: int | None = attrs.field(default=None, metadata=_checked(_client_id))
    failover: FailoverSettings = attrs.field(
        factory=FailoverSettings, metadata=_checked(_instance_of(FailoverSettings))
    )
    streams: StreamSettings = attrs.field(
        factory=StreamSettings, metadata=_checked(_instance_of(StreamSettings))
    )
    listen: tuple[Listen, ...] = attrs.field(default=(), metadata=_checked(_tuple_of(Listen)))
    connect: tuple[Connect, ...] = attrs.field(default=(), metadata=_checked(_tuple_of(Connect)))
    logging: LoggingSettings = attrs.field(
        factory=LoggingSettings, metadata=_checked(_instance_of(LoggingSettings))
    )
    metrics: MetricsSettings = attrs.field(
        factory=MetricsSettings, metadata=_checked(_instance_of(MetricsSettings))
    )
    shutdown: ShutdownSettings = attrs.field(
        factory=ShutdownSettings, metadata=_checked(_instance_of(ShutdownSettings))
    )
    # ``[clients.1]`` and ``[clients.2]``: per-client credentials (server only).
    clients: tuple[ClientCredentials, ...] = attrs.field(
        default=(), metadata=_checked(_tuple_of(ClientCredentials))
    )

    @property
    def is_server(self) -> bool:
        """True for the server, False for a client."""
        return self.role == "server"

    def credentials_of(self, client_id: int) -> ClientCredentials | None:
        """The ``[clients.N]`` table of ``client_id``, if the server has one."""
        for entry in self.clients:
            if entry.client_id == client_id:
                return entry
        return None

    def _cross_problems(self, bad: set[str | int]) -> list[_Problem]:
        problems: list[_Problem] = []
        if not bad & {"role", "client_id", "websocket"}:
            problems += _role_problems(self)
        if "listen" not in bad:
            problems += _unique_problems("listen", [entry.tunnel for entry in self.listen])
        if "connect" not in bad:
            problems += _unique_problems("connect", [entry.tunnel for entry in self.connect])
        if not bad & {"role", "websocket", "listen"}:
            problems += _port_problems(self)
        if not bad & {"role", "websocket", "listen", "metrics"}:
            problems += _metrics_port_problems(self)
        if not bad & {"role", "websocket"}:
            problems += [(("websocket", *path), why) for path, why in _tls_problems(self)]
        if not bad & {"role", "websocket", "clients"}:
            problems += _clients_problems(self)
        return problems


def _tls_problems(config: Config) -> Iterable[_Problem]:
    """Which TLS files each role and mode needs (what the files hold is the load step's)."""
    ws = config.websocket
    if ws.scheme != "wss":
        for key in (*TLS_FILES, "mutual_tls"):
            if getattr(ws, key) not in (None, False):
                yield (key,), "only used with a wss:// url (this one is ws://)"
        return
    needed: list[str] = []
    if config.is_server:
        needed.append("tls_bundle")
        if ws.mutual_tls:
            needed.append("trusted_ca")
        elif ws.trusted_peers is not None:
            yield ("trusted_peers",), "a server pins client certificates only with mutual_tls"
    elif ws.mutual_tls:
        needed.append("tls_bundle")
    for key in needed:
        if getattr(ws, key) is None:
            why = (
                "with mutual_tls = true"
                if key == "trusted_ca" or not config.is_server
                else ("for a wss:// server")
            )
            yield (key,), f"required {why}"


def _clients_problems(config: Config) -> Iterable[_Problem]:
    """``[clients.N]``: server only, each id once, the same kind of credential for both
    clients, and a certificate only where a server checks client certificates."""
    if not config.clients:
        return
    if not config.is_server:
        yield ("clients",), "only a server has [clients.N] tables (a client keeps its own keys)"
        return
    seen: set[int] = set()
    for entry in config.clients:
        key = str(entry.client_id)
        if entry.client_id in seen:
            yield ("clients", key), "given twice"
        seen.add(entry.client_id)
        ws = config.websocket
        if entry.certificate is not None and not (ws.scheme == "wss" and ws.mutual_tls):
            yield (
                ("clients", key, "certificate"),
                "needs mutual_tls = true on a wss:// url (only then do clients present one)",
            )
    for kind in ("auth_token_file", "certificate"):
        having = [e.client_id for e in config.clients if getattr(e, kind) is not None]
        for client_id in (1, 2):
            if having and client_id not in having:
                yield (
                    ("clients", str(client_id), kind),
                    f"required: clients.{having[0]}.{kind} is given, so each client id needs"
                    " its own (otherwise that id could be claimed without one)",
                )
    if any(e.auth_token_file is not None for e in config.clients) and (
        config.websocket.auth_token_file is not None
    ):
        yield (
            ("websocket", "auth_token_file"),
            "a shared token cannot be combined with [clients.N] tokens: remove one of them",
        )


def _role_problems(config: Config) -> Iterable[_Problem]:
    if config.is_server:
        if config.client_id is not None:
            yield ("client_id",), "not allowed for a server (only clients have an id)"
        if config.websocket.proxy is not None:
            yield ("websocket", "proxy"), "only used by a client (a server does not connect out)"
        return
    if config.client_id is None:
        yield ("client_id",), "required for a client (1 = primary, 2 = secondary)"
    if config.websocket.port == 0:
        yield ("websocket", "url"), "a client needs a port to connect to (got port 0)"


def _unique_problems(key: str, names: list[str]) -> Iterable[_Problem]:
    first_seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first_seen:
            yield (
                (key, index, "tunnel"),
                f"tunnel {name!r} is already used by {key}[{first_seen[name]}]",
            )
        else:
            first_seen[name] = index


def _port_problems(config: Config) -> Iterable[_Problem]:
    taken: list[tuple[str, int, str]] = []  # (bind address, port, who has it)
    if config.is_server and config.websocket.port != 0:
        taken.append((config.websocket.host, config.websocket.port, "websocket.url"))
    for index, entry in enumerate(config.listen):
        if entry.port == 0:
            continue
        for other_bind, other_port, who in taken:
            if other_port == entry.port and _binds_overlap(entry.bind, other_bind):
                if _bind_key(entry.bind) != _bind_key(other_bind):
                    who = f"{who} on {other_bind}"
                yield (
                    ("listen", index, "port"),
                    f"port {entry.port} on {entry.bind} is already used by {who}",
                )
                break
        taken.append((entry.bind, entry.port, f"listen[{index}]"))


def _metrics_port_problems(config: Config) -> Iterable[_Problem]:
    address = config.metrics.address
    if address is None or address[1] == 0:
        return
    host, port = address
    taken = [(entry.bind, entry.port, f"listen[{i}]") for i, entry in enumerate(config.listen)]
    if config.is_server:
        taken.insert(0, (config.websocket.host, config.websocket.port, "websocket.url"))
    for bind, other_port, who in taken:
        if other_port == port and _binds_overlap(host, bind):
            if _bind_key(host) != _bind_key(bind):
                who = f"{who} on {bind}"
            yield ("metrics", "listen"), f"port {port} on {host} is already used by {who}"
            return
