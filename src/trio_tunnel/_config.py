"""Configuration: frozen attrs classes, one cattrs converter, TOML loading.

Every check lives with the classes, so a ``Config`` built in Python is held to exactly the
same rules as one loaded from a file. Each field declares its check in its metadata, and
each class has cross-field checks; ``__attrs_post_init__`` runs them all and raises one
``ConfigError`` listing *every* problem (attrs validators would stop at the first).

The cattrs converter only shapes the data: it refuses unknown keys, reports missing ones,
insists that tables are tables, and passes scalars through untouched (no ``int("8022")``
coercion) so the classes can say what is wrong with them. When cattrs gives up on a table
before building it (unknown or missing keys), the table hook still runs the field checks
on what is there, so one run reports every problem. ``parse_config`` flattens cattrs'
exception groups and the classes' errors into ``<source>: <key path>: <problem>`` lines.
"""

# No ``from __future__ import annotations``: cattrs reads the field types at runtime, and
# every type used below is defined before it is needed.

import ipaddress
import math
import os
import re
import socket
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time
from logging.handlers import SysLogHandler
from typing import Any, Final, TypeGuard, cast, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from ._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "Config",
    "Connect",
    "FailoverSettings",
    "Listen",
    "LoggingSettings",
    "MetricsSettings",
    "StreamSettings",
    "WebSocketSettings",
    "describe_config",
    "load_config",
    "parse_config",
]

# A key path such as ("listen", 1, "port"), printed as ``listen[1].port``.
_Path = tuple[str | int, ...]
_Problem = tuple[_Path, str]
# A field check returns None when the value is fine, else what is wrong with it.
_Check = Callable[[object], str | None]

MIN_WINDOW_BYTES: Final = 16 * 1024
MAX_WINDOW_BYTES: Final = 16 * 1024 * 1024
MAX_STREAMS_LIMIT: Final = 1_000_000
MAX_TUNNEL_NAME: Final = 64
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_DAYS_TO_KEEP: Final = 14
MAX_DAYS_TO_KEEP: Final = 3650
DEFAULT_SYSLOG_PORT: Final = 514
DEFAULT_SYSLOG_FACILITY: Final = "user"

_CHECK: Final = "trio_tunnel.check"
_TUNNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
# Lenient on underscores (they occur in /etc/hosts and internal DNS), strict on the rest.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_WS_SCHEMES: Final = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}
_WILDCARDS: Final = {"0.0.0.0": 4, "::": 6}


class _InvalidConfig(ConfigError):
    """A ConfigError that keeps its problems, so an enclosing object can prefix the paths."""

    def __init__(self, problems: Iterable[_Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(_format_problem(p) for p in self.problems))


def _format_path(path: _Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else repr(part)
            text += f".{key}" if text else key
    return text


def _format_problem(problem: _Problem) -> str:
    path, message = problem
    return f"{_format_path(path)}: {message}" if path else message


# --- field checks ----------------------------------------------------------------------------


def _show(value: object) -> str:
    """Name a value the way a TOML author would recognise it."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int) -> _Check:
    def check(value: object) -> str | None:
        if not _is_int(value):
            return f"expected an integer (got {_show(value)})"
        if not low <= value <= high:
            return f"must be {low}..{high} (got {value})"
        return None

    return check


def _seconds(*, allow_zero: bool = False) -> _Check:
    def check(value: object) -> str | None:
        if not isinstance(value, float | int) or isinstance(value, bool):
            return f"expected a number of seconds (got {_show(value)})"
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            return f"must be a finite number of seconds (got {value})"
        if seconds < 0 or (seconds == 0 and not allow_zero):
            return f"must be {'0 or more' if allow_zero else 'greater than 0'} (got {value})"
        return None

    return check


def _string(value: object) -> str | None:
    return None if isinstance(value, str) else f"expected a string (got {_show(value)})"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false (got {_show(value)})"


def _readable_file(value: object) -> str | None:
    """None (not set) or the path of a readable, non-empty file."""
    if value is None:
        return None
    if not isinstance(value, str):
        return _string(value)
    try:
        with open(value, "rb") as file:
            if not file.read(1):
                return f"file {value!r} is empty"
    except OSError as exc:
        return f"cannot read {value!r}: {exc.strerror or exc}"
    return None


def _tunnel_name(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if not value:
        return "must not be empty"
    if len(value) > MAX_TUNNEL_NAME:
        return f"must be at most {MAX_TUNNEL_NAME} characters (got {len(value)})"
    if not _TUNNEL_NAME.fullmatch(value):
        return (
            "must start with a letter or digit and contain only letters, digits,"
            f" '.', '_', ':' and '-' (got {value!r})"
        )
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_host(value: str) -> bool:
    """An IP literal or a syntactically valid host name (nothing is resolved here)."""
    if _is_ip(value):
        return True
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        # "999.1.1.1" is neither an address nor a name: top-level labels are never all digits.
        and not labels[-1].isdigit()
    )


def _host(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if not _is_host(value):
        return f"expected an IP address or a host name (got {value!r})"
    return None


def _split_url(url: str) -> SplitResult:
    """Split a WebSocket URL, or raise ValueError saying what is wrong with it."""
    try:
        split = urlsplit(url)
        _ = split.port  # parsed lazily: raises ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc} (got {url!r})") from None
    if split.scheme.lower() not in _WS_SCHEMES:
        shown = f"{split.scheme}://" if split.scheme else "none"
        raise ValueError(f"scheme must be ws://, wss://, http:// or https:// (got {shown})")
    if not split.hostname:
        raise ValueError(f"has no host (got {url!r})")
    if not _is_host(split.hostname):
        raise ValueError(f"host must be an IP address or a host name (got {split.hostname!r})")
    # RFC 6455 section 3: a WebSocket URI has neither user information nor a fragment.
    if "@" in split.netloc:
        raise ValueError("must not contain user information (user@host)")
    if split.fragment or url.endswith("#"):
        raise ValueError("must not contain a fragment (#...)")
    return split


def _websocket_url(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    try:
        _split_url(value)
    except ValueError as exc:
        return str(exc)
    return None


def _log_level(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if value.upper() not in LOG_LEVELS:
        return f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})"
    return None


def _log_file(value: object) -> str | None:
    """None (not set) or a regular file this process may append to, in an existing directory."""
    if value is None:
        return None
    if not isinstance(value, str):
        return _string(value)
    if not value or "\0" in value:
        return f"expected a file name (got {value!r})"
    if os.path.isdir(value):
        return f"{value!r} is a directory (give the name of a file in it)"
    if os.path.exists(value) and not os.path.isfile(value):
        return f"{value!r} is not a regular file (rotation renames it)"
    directory = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(directory):
        return f"directory {directory!r} does not exist"
    # Rotation creates, renames and deletes files beside the log, not just appends to it.
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory!r} is not writable"
    if os.path.exists(value) and not os.access(value, os.W_OK):
        return f"{value!r} is not writable"
    return None


def _syslog_host(value: object) -> str | None:
    """None (not set), an IP address, or a host name that resolves now.

    A name that does not resolve at start-up would only fail on the first log record, and
    ``SysLogHandler`` would then report it on stderr for every record: fail early instead.
    """
    if value is None:
        return None
    problem = _host(value)
    if problem is not None or not isinstance(value, str) or _is_ip(value):
        return problem
    try:
        socket.getaddrinfo(value, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {value!r}: {getattr(exc, 'strerror', None) or exc}"
    return None


def _syslog_facility(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if value not in SysLogHandler.facility_names:
        names = ", ".join(sorted(SysLogHandler.facility_names))
        return f"must be one of {names} (got {value!r})"
    return None


_LOGGER_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
LOG_FORMATS: Final = ("text", "json")


def _log_levels(value: object) -> str | None:
    """A table of logger name = level, such as ``{ "trio_tunnel.stream" = "WARNING" }``."""
    if not isinstance(value, Mapping):
        example = '{ "trio_tunnel.stream" = "WARNING" }'
        return f"expected a table such as {example} (got {_show(value)})"
    for name, level in value.items():
        if not isinstance(name, str) or not _LOGGER_NAME.fullmatch(name):
            return f"expected a logger name such as 'trio_tunnel.stream' (got {name!r})"
        if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
            shown = repr(level) if isinstance(level, str) else _show(level)
            return f"{name!r} must be one of {', '.join(LOG_LEVELS)} (got {shown})"
    return None


def _log_format(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if value not in LOG_FORMATS:
        return f"must be 'text' or 'json' (got {value!r})"
    return None


def _as_upper_values(value: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        return value  # left for the check to report
    return {name: _as_upper(level) for name, level in value.items()}


def _split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[IPv6]:port`` as (host, port); ValueError says what is wrong."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6 address]:port (got {text!r})")
        if not _is_ip(host) or ipaddress.ip_address(host).version != 6:
            raise ValueError(f"expected an IPv6 address in the brackets (got {host!r})")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port (got {text!r})")
        if ":" in host:
            raise ValueError(f"write an IPv6 address in brackets, as [::1]:9108 (got {text!r})")
        if not _is_host(host):
            raise ValueError(f"expected an IP address or a host name before ':' (got {host!r})")
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f"the port must be 0..65535 (got {port!r})")
    return host, int(port)


def _host_port(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return _string(value)
    try:
        _split_host_port(value)
    except ValueError as exc:
        return str(exc)
    return None


def _role(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if value not in ("server", "client"):
        return f"must be 'server' or 'client' (got {value!r})"
    return None


def _client_id(value: object) -> str | None:
    if value is None:
        return None
    if not _is_int(value):
        return f"expected an integer (got {_show(value)})"
    if value not in (1, 2):
        return f"must be 1 (primary) or 2 (secondary) (got {value})"
    return None


def _instance_of(cls: type) -> _Check:
    def check(value: object) -> str | None:
        return None if isinstance(value, cls) else f"expected a {cls.__name__} (got {_show(value)})"

    return check


def _tuple_of(cls: type) -> _Check:
    def check(value: object) -> str | None:
        if not isinstance(value, tuple):
            return f"expected a tuple of {cls.__name__} (got {_show(value)})"
        for index, item in enumerate(value):
            if not isinstance(item, cls):
                return f"expected a tuple of {cls.__name__} (item {index} is {_show(item)})"
        return None

    return check


def _checked(check: _Check) -> dict[str, _Check]:
    """Field metadata declaring the field's check."""
    return {_CHECK: check}


def _field_problems(cls: type, values: Mapping[str, object]) -> list[_Problem]:
    """Run the declared checks of ``cls``'s fields on those of ``values`` that are present."""
    problems: list[_Problem] = []
    for field in attrs.fields(cast("type[attrs.AttrsInstance]", cls)):
        check: _Check | None = field.metadata.get(_CHECK)
        if check is not None and field.name in values:
            problem = check(values[field.name])
            if problem is not None:
                problems.append(((field.name,), problem))
    return problems


def _as_float(value: float) -> float:
    """Store integers given for float fields as floats; leave anything else for the checks."""
    if _is_int(value):
        try:
            return float(value)
        except OverflowError:
            return math.inf  # rejected by the check as not finite
    return value


def _as_upper(value: str) -> str:
    return value.upper() if isinstance(value, str) else value


def _as_lower(value: str) -> str:
    return value.lower() if isinstance(value, str) else value


class _Checked:
    """Base of the config classes: check every field, then across fields; raise all at once."""

    __slots__ = ()

    def __attrs_post_init__(self) -> None:
        cls = cast("type[attrs.AttrsInstance]", type(self))
        values = {field.name: getattr(self, field.name) for field in attrs.fields(cls)}
        problems = _field_problems(cls, values)
        bad = {path[0] for path, _ in problems}
        problems += self._cross_problems(bad)
        if problems:
            raise _InvalidConfig(problems)

    def _cross_problems(self, bad: set[str | int]) -> list[_Problem]:
        """Problems spanning several fields; ``bad`` names the fields that failed their check."""
        return []


# --- the configuration classes -------------------------------------------------------------

_POSITIVE_SECS: Final = _checked(_seconds())


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
    tls_bundle: str | None = attrs.field(default=None, metadata=_checked(_readable_file))
    trusted_ca: str | None = attrs.field(default=None, metadata=_checked(_readable_file))
    trusted_peers: str | None = attrs.field(default=None, metadata=_checked(_readable_file))
    mutual_tls: bool = attrs.field(default=False, metadata=_checked(_boolean))
    auth_token_file: str | None = attrs.field(default=None, metadata=_checked(_readable_file))

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
    """The ``[failover]`` table."""

    standby_socket_close_secs: float = attrs.field(
        default=15.0, converter=_as_float, metadata=_checked(_seconds(allow_zero=True))
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

    Records go to stdout (unless ``stdout = false``), to ``file`` when set (rotated at local
    midnight, the last ``days_to_keep`` old files kept gzip-compressed) and, when
    ``syslog_host`` is set, to that syslog server over UDP with ``syslog_facility``.
    """

    level: str = attrs.field(default="INFO", converter=_as_upper, metadata=_checked(_log_level))
    stdout: bool = attrs.field(default=True, metadata=_checked(_boolean))
    file: str | None = attrs.field(default=None, metadata=_checked(_log_file))
    days_to_keep: int = attrs.field(
        default=DEFAULT_DAYS_TO_KEEP, metadata=_checked(_int_in(1, MAX_DAYS_TO_KEEP))
    )
    syslog_host: str | None = attrs.field(default=None, metadata=_checked(_syslog_host))
    syslog_port: int = attrs.field(
        default=DEFAULT_SYSLOG_PORT, metadata=_checked(_int_in(1, 65535))
    )
    syslog_facility: str = attrs.field(
        default=DEFAULT_SYSLOG_FACILITY, converter=_as_lower, metadata=_checked(_syslog_facility)
    )
    # Per-logger levels; hash=False keeps the frozen class hashable with a dict inside.
    levels: Mapping[str, str] = attrs.field(
        factory=dict, converter=_as_upper_values, metadata=_checked(_log_levels), hash=False
    )
    format: str = attrs.field(default="text", converter=_as_lower, metadata=_checked(_log_format))

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

    @property
    def is_server(self) -> bool:
        """True for the server, False for a client."""
        return self.role == "server"

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
        return problems


_TLS_FILES: Final = ("tls_bundle", "trusted_ca", "trusted_peers")
MIN_TOKEN_CHARS: Final = 16


def _tls_problems(config: Config) -> Iterable[_Problem]:
    """Which TLS files each role and mode needs, and whether they hold what they should."""
    from . import _tls  # the ssl module does the loading; import late to keep this light

    ws = config.websocket
    if ws.scheme != "wss":
        for key in (*_TLS_FILES, "mutual_tls"):
            if getattr(ws, key) not in (None, False):
                yield (key,), "only used with a wss:// url (this one is ws://)"
        yield from _token_problems(ws)
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
    if ws.tls_bundle is not None:
        try:
            ssl.create_default_context().load_cert_chain(ws.tls_bundle)
        except (ssl.SSLError, OSError) as exc:
            yield (
                ("tls_bundle",),
                (
                    f"{ws.tls_bundle!r} must hold a private key that matches its certificate, then "
                    f"the chain, in PEM ({getattr(exc, 'reason', None) or exc})"
                ),
            )
    if ws.trusted_ca is not None:
        try:
            context = ssl.create_default_context(cafile=ws.trusted_ca)
            found = bool(context.get_ca_certs())
        except (ssl.SSLError, OSError, ValueError) as exc:
            found, error = False, f"{getattr(exc, 'reason', None) or exc}"
        else:
            error = "no CA certificate in it"
        if not found:
            yield (
                ("trusted_ca",),
                f"{ws.trusted_ca!r} is not a PEM bundle of CA certificates ({error})",
            )
    if ws.trusted_peers is not None:
        try:
            _tls.load_pins(ws.trusted_peers)
        except (OSError, ValueError) as exc:
            yield ("trusted_peers",), f"{ws.trusted_peers!r}: {exc}"
    yield from _token_problems(ws)


def _token_problems(ws: WebSocketSettings) -> Iterable[_Problem]:
    if ws.auth_token_file is None:
        return
    try:
        token = read_token(ws.auth_token_file)
    except (OSError, UnicodeDecodeError) as exc:
        yield ("auth_token_file",), f"cannot read {ws.auth_token_file!r}: {exc}"
        return
    if len(token) < MIN_TOKEN_CHARS:
        yield (
            ("auth_token_file",),
            (f"the token must be at least {MIN_TOKEN_CHARS} characters (got {len(token)})"),
        )
    elif any(ord(ch) < 33 or ord(ch) > 126 for ch in token):
        yield ("auth_token_file",), "the token must be printable ASCII without spaces"


def read_token(path: str) -> str:
    """The shared secret in ``path``, without surrounding white space."""
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


def _role_problems(config: Config) -> Iterable[_Problem]:
    if config.is_server:
        if config.client_id is not None:
            yield ("client_id",), "not allowed for a server (only clients have an id)"
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


def _bind_key(host: str) -> str:
    """Normalise a bind address so equal addresses compare equal."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower().rstrip(".")


def _binds_overlap(a: str, b: str) -> bool:
    """Whether binding the same port on both addresses would collide.

    A wildcard collides with every address of its family; a host name, unresolved here, is
    assumed to collide with either wildcard.
    """
    a, b = _bind_key(a), _bind_key(b)
    if a == b:
        return True
    for wild, other in ((a, b), (b, a)):
        if wild in _WILDCARDS:
            if other in _WILDCARDS:
                return False  # trio binds "::" with IPV6_V6ONLY, so it leaves IPv4 alone
            if not _is_ip(other):
                return True
            return ipaddress.ip_address(other).version == _WILDCARDS[wild]
    return False


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


# --- the converter ---------------------------------------------------------------------------


def _as_is(value: object, _type: object) -> object:
    """Scalars reach the classes unchanged, so "8022" is reported, not coerced."""
    return value


def _is_array_of_tables(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for scalar in (int, float, str, bool):
        converter.register_structure_hook(scalar, _as_is)
    # logging.levels reaches its check as given, so a non-table is reported by that check.
    converter.register_structure_hook_func(lambda t: t == Mapping[str, str], _as_is)

    def table_hook(cls: type) -> Callable[[Any, Any], Any]:
        structure: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, converter)
        fields = attrs.fields(cast("type[attrs.AttrsInstance]", cls))
        known = {field.name for field in fields}

        def check_what_is_there(value: Mapping[Any, Any], problems: list[_Problem]) -> None:
            # cattrs gives up on a table with unknown or missing keys before building it; check
            # what is there anyway, so that one run reports every problem in the table.
            reported = {path for path, _ in problems}
            if any(key not in known for key in value):
                try:
                    structure({k: v for k, v in value.items() if k in known}, cls)
                except Exception as exc:  # every failure becomes a message
                    problems += [p for p in _problems_from(exc, ()) if p[0] not in reported]
                    reported = {path for path, _ in problems}
            present: dict[str, object] = {}
            for field in fields:
                if field.name in value:
                    try:
                        present[field.name] = converter.structure(value[field.name], field.type)
                    except Exception:  # reported already, by cattrs
                        continue
            problems += [p for p in _field_problems(cls, present) if p[0] not in reported]

        def hook(value: Any, type_: Any) -> Any:
            if not isinstance(value, Mapping):
                raise _InvalidConfig([((), f"expected a table (got {_show(value)})")])
            try:
                return structure(value, type_)
            except Exception as exc:  # every failure becomes a message
                problems = _problems_from(exc, ())
            check_what_is_there(value, problems)
            raise _InvalidConfig(problems)

        return hook

    def array_hook(type_: Any) -> Callable[[Any, Any], Any]:
        (item_type, _) = get_args(type_)

        def hook(value: Any, _type: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise _InvalidConfig([((), f"expected an array of tables (got {_show(value)})")])
            items: list[Any] = []
            problems: list[_Problem] = []
            for index, item in enumerate(value):
                try:
                    items.append(converter.structure(item, item_type))
                except Exception as exc:  # every failure becomes a message
                    problems += _problems_from(exc, (index,))
            if problems:
                raise _InvalidConfig(problems)
            return tuple(items)

        return hook

    converter.register_structure_hook_factory(attrs.has, table_hook)
    converter.register_structure_hook_factory(_is_array_of_tables, array_hook)
    return converter


def _problems_from(exc: BaseException, path: _Path) -> list[_Problem]:
    """Flatten a structuring failure into (key path, message) pairs."""
    if isinstance(exc, _InvalidConfig):
        return [(path + sub_path, message) for sub_path, message in exc.problems]
    if isinstance(exc, ForbiddenExtraKeysError):
        return [((*path, key), "unknown key") for key in sorted(map(str, exc.extra_fields))]
    if isinstance(exc, BaseValidationError):
        problems: list[_Problem] = []
        for sub in exc.exceptions:
            problems += _problems_from(sub, path + _note_path(sub))
        return problems
    if isinstance(exc, KeyError):
        return [(path, f"required {'table' if _missing_table(exc) else 'key'} missing")]
    if isinstance(exc, ConfigError):
        return [(path, str(exc))]
    return [(path, f"invalid value ({type(exc).__name__}: {exc})")]


def _notes(exc: BaseException) -> list[object]:
    notes: list[object] = getattr(exc, "__notes__", [])
    return [
        note for note in notes if isinstance(note, AttributeValidationNote | IterableValidationNote)
    ]


def _note_path(exc: BaseException) -> _Path:
    """The keys cattrs noted on ``exc`` while it passed up through the tables, outermost first."""
    path: list[str | int] = []
    for note in reversed(_notes(exc)):
        if isinstance(note, AttributeValidationNote):
            path.append(note.name)
        elif isinstance(note, IterableValidationNote):
            path.append(note.index)
    return tuple(path)


def _missing_table(exc: BaseException) -> bool:
    """Whether the missing key cattrs noted on ``exc`` names a table rather than a value."""
    notes = _notes(exc)
    type_ = getattr(notes[0], "type", None) if notes else None
    return isinstance(type_, type) and attrs.has(type_)


_converter: Final = _make_converter()


# --- public functions -----------------------------------------------------------------------


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Build a Config from already parsed TOML data.

    Raises ConfigError listing every problem, one per line, as ``<source>: <key path>: ...``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table (got {_show(data)})")
    try:
        return _converter.structure(data, Config)
    except Exception as exc:  # every failure becomes a message
        problems = _problems_from(exc, ())
    lines = [f"{source}: {_format_problem(problem)}" for problem in problems]
    raise ConfigError("\n".join(lines))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a TOML configuration file.

    Raises ConfigError, with a message starting with the file name as given, when the file
    cannot be read, is not valid TOML, or fails any check.
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from exc
    _resolve_relative_paths(data, os.path.dirname(os.path.abspath(path)))
    return parse_config(data, name)


def _resolve_relative_paths(data: dict[str, Any], base: str) -> None:
    """File names in a config file are relative to the file, not to the working directory."""
    file_keys = {"websocket": (*_TLS_FILES, "auth_token_file"), "logging": ("file",)}
    for table_name, keys in file_keys.items():
        table = data.get(table_name)
        if not isinstance(table, dict):
            continue
        for key in keys:
            value = table.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                table[key] = os.path.join(base, value)


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


def describe_config(config: Config) -> str:
    """A human-readable summary of what a process with this config would do."""
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
    streams = config.streams
    lines.append(
        f"streams: window {streams.window_bytes} bytes per stream, at most"
        f" {streams.max_streams_per_session} streams per session, connect timeout"
        f" {streams.connect_timeout_secs:g}s"
    )
    lines.append(f"logging: level {config.logging.level}, {_describe_log_outputs(config.logging)}")
    address = config.metrics.address
    if address is None:
        lines.append("metrics: no endpoint")
    else:
        lines.append(f"metrics: GET /metrics and /health on http://{_address(*address)}/")
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
