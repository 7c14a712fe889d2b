"""Pure checks shared by the config classes, the converter and ``import-json``.

A field check takes a value and returns None when it is fine, else what is wrong with it, in
words a TOML author recognises. Nothing here reads a file, resolves a name or loads TLS
material: that is the load step's job (``_load.py``).
"""

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime, time
from logging.handlers import SysLogHandler
from typing import Final, TypeGuard, cast
from urllib.parse import SplitResult, urlsplit

import attrs

from .._errors import ConfigError
from .._proxy import parse_proxy_url

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
LOG_FORMATS: Final = ("text", "json")
DEFAULT_DAYS_TO_KEEP: Final = 14
MAX_DAYS_TO_KEEP: Final = 3650
DEFAULT_SYSLOG_PORT: Final = 514
DEFAULT_SYSLOG_FACILITY: Final = "user"
MIN_TOKEN_CHARS: Final = 16

_CHECK: Final = "trio_tunnel.check"
# Metadata key of a check on a table-valued field: it yields (key path, problem) pairs, so a
# problem names the key inside the table (``logging.levels.'trio_tunnel.stream'``).
_CHECK_ITEMS: Final = "trio_tunnel.check_items"
TUNNEL_NAME_CHARS: Final = r"A-Za-z0-9._:-"
_TUNNEL_NAME = re.compile(rf"[A-Za-z0-9][{TUNNEL_NAME_CHARS}]*")
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


def _show(value: object, *, json: bool = False) -> str:
    """Name a value the way a TOML author (or with ``json``, a JSON author) would recognise it."""
    if json:
        return _show_json(value)
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


def _show_json(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return "an array" if isinstance(value, list) else "an object"


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


def _path_name(value: object) -> str | None:
    """None (not set) or a file name; whether the file is there is the load step's question."""
    if value is None:
        return None
    if not isinstance(value, str):
        return _string(value)
    if not value or "\0" in value:
        return f"expected a file name (got {value!r})"
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


def _optional_host(value: object) -> str | None:
    """None (not set) or what ``_host`` accepts (whether it resolves is the load step's)."""
    return None if value is None else _host(value)


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


def _proxy_setting(value: object) -> str | None:
    """None (the environment decides), "" (no proxy) or an http:// proxy URL."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return _string(value)
    try:
        parse_proxy_url(value)
    except ValueError as exc:
        return str(exc)  # never contains the password
    return None


def _log_level(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if value.upper() not in LOG_LEVELS:
        return f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})"
    return None


def _as_upper(value: str) -> str:
    return value.upper() if isinstance(value, str) else value


def _as_lower(value: str) -> str:
    return value.lower() if isinstance(value, str) else value


def _log_format(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if value not in LOG_FORMATS:
        return f"must be one of {', '.join(map(repr, LOG_FORMATS))} (got {value!r})"
    return None


class FrozenLevels(Mapping[str, str]):
    """An immutable, hashable mapping of logger name to level (``[logging] levels``).

    Frozen config classes are hashable, so a plain dict (or a ``MappingProxyType``) will not do.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: dict[str, str] = dict(pairs)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenLevels({self._items!r})"


def _as_levels(value: object) -> object:
    """A table of logger name -> level becomes FrozenLevels, levels upper-cased; anything
    else is left for the check to report."""
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return FrozenLevels({key: _as_upper(level) for key, level in value.items()})
    return value


def _log_levels(value: object) -> Iterable[_Problem]:
    if not isinstance(value, Mapping):
        yield (), f"expected a table of logger name = level (got {_show(value)})"
        return
    for name, level in value.items():
        if not isinstance(name, str) or not name or name != name.strip():
            yield (), f"expected a logger name such as 'trio_tunnel.stream' (got {name!r})"
            continue
        if isinstance(level, Mapping):
            # TOML reads an unquoted trio_tunnel.stream = "..." as nested tables.
            yield (
                (name,),
                (
                    "expected a level (got a table): quote dotted logger names, as"
                    ' levels = { "trio_tunnel.stream" = "WARNING" }'
                ),
            )
            continue
        problem = _log_level(level)
        if problem is not None:
            yield (name,), problem


def _syslog_facility(value: object) -> str | None:
    if not isinstance(value, str):
        return _string(value)
    if value not in SysLogHandler.facility_names:
        names = ", ".join(sorted(SysLogHandler.facility_names))
        return f"must be one of {names} (got {value!r})"
    return None


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


def _checked_items(check: Callable[[object], Iterable[_Problem]]) -> dict[str, object]:
    """Field metadata declaring a check that names keys inside the field's table."""
    return {_CHECK_ITEMS: check}


def _field_problems(cls: type, values: Mapping[str, object]) -> list[_Problem]:
    """Run the declared checks of ``cls``'s fields on those of ``values`` that are present."""
    problems: list[_Problem] = []
    for field in attrs.fields(cast("type[attrs.AttrsInstance]", cls)):
        if field.name not in values:
            continue
        check: _Check | None = field.metadata.get(_CHECK)
        if check is not None:
            problem = check(values[field.name])
            if problem is not None:
                problems.append(((field.name,), problem))
        check_items: Callable[[object], Iterable[_Problem]] | None = field.metadata.get(
            _CHECK_ITEMS
        )
        if check_items is not None:
            problems += [
                ((field.name, *path), why) for path, why in check_items(values[field.name])
            ]
    return problems


def _as_float(value: float) -> float:
    """Store integers given for float fields as floats; leave anything else for the checks."""
    if _is_int(value):
        try:
            return float(value)
        except OverflowError:
            return math.inf  # rejected by the check as not finite
    return value


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
