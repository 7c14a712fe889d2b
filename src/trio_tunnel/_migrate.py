"""``trio-tunnel import-json``: carry a tcp-over-websocket ``config.json`` over to TOML.

The conversion follows what tcp-over-websocket 1.1.1 actually did with each key, not what its
README says: its defaults (``clientId`` 1, ``logToStdout`` false, ``daysToKeep`` 14, TLS files
named ``key-cert-ca-root-chain.pem``, ``trusted-ca-chain.pem`` and ``certs-of-peers.pem`` in its
home directory), its log file (``tcp_over_websocket.log`` in the home directory, rotated at
midnight), TLS only for ``https://`` URLs, a server that listens on every IPv4 interface
whatever host the URL names, and settings it ignored (TLS files without TLS, the pinning and
CA files without mutual TLS), which are left out.

Input that tcp-over-websocket could not have run with (malformed JSON, a missing tunnel key,
a port that is not a number) is a :class:`ConfigError` naming the JSON key. Everything else
converts; what changes meaning on the way is reported in ``Conversion.warnings`` and what is
merely left out in ``Conversion.notes``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import attrs

from ._config import load_environment, parse_config
from ._config._checks import (
    _BARE_KEY,
    LOG_LEVELS,
    MAX_DAYS_TO_KEEP,
    MAX_TUNNEL_NAME,
    TUNNEL_NAME_CHARS,
    _format_path,
    _Path,
    _show,
)
from ._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["Conversion", "convert", "read_json_config", "register", "to_toml"]

EXIT_OK: Final = 0
EXIT_CHECK_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2

OLD_LOG_FILE: Final = "tcp_over_websocket.log"
_DEFAULT_TLS_FILES: Final = {
    "tlsBundleFilePath": "key-cert-ca-root-chain.pem",
    "mutualTLSTrustedCACertificateBundleFilePath": "trusted-ca-chain.pem",
    "mutualTLSTrustedPeerCertificateBundleFilePath": "certs-of-peers.pem",
}
# The keys tcp-over-websocket 1.1.1 reads, per table; anything else it ignored.
_TOP_KEYS: Final = frozenset(
    {
        "dataExchange",
        "tcpTunnelListens",
        "tcpTunnelConnects",
        "weAreServer",
        "clientId",
        "standbySocketCloseDurationSecs",
        "logging",
    }
)
_EXCHANGE_KEYS: Final = frozenset({"serverUrl", "enableMutualTLS", *_DEFAULT_TLS_FILES})
# rotateSizeMb and rotationsToKeep are from its older versions, which it deleted on sight.
_LOGGING_KEYS: Final = frozenset(
    {"level", "logToStdout", "daysToKeep", "syslog", "rotateSizeMb", "rotationsToKeep"}
)
_SYSLOG_KEYS: Final = frozenset({"logToSysloyHost", "logToSysloyPort", "logToSysloyProtocol"})
_LISTEN_KEYS: Final = frozenset({"tunnelName", "listenPort", "listenBindAddress"})
_CONNECT_KEYS: Final = frozenset({"tunnelName", "connectToHost", "connectToPort"})
# Python's level names that are not trio-tunnel's, and the level that means the same.
_LEVEL_ALIASES: Final = {"WARN": "WARNING", "FATAL": "CRITICAL", "NOTSET": "DEBUG"}
_NOT_IN_TUNNEL_NAME = re.compile(rf"[^{TUNNEL_NAME_CHARS}]+")
_NO_CLIENT_AUTH: Final = (
    "without mutual TLS anyone who reaches the server's port can claim to be client 1 or 2:"
    " consider wss:// with mutual_tls, or websocket.auth_token_file"
)


@attrs.frozen
class Conversion:
    """A converted configuration: the TOML document as data, and what to tell the operator.

    ``warnings`` say where the result behaves differently from the old config or needs a
    decision; ``notes`` say what was left out because tcp-over-websocket ignored it too.
    """

    data: dict[str, Any]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


# --- reading the JSON -------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def read_json_config(path: str | os.PathLike[str]) -> tuple[str, Any]:
    """The file name read (``DIR/config.json`` for a directory) and its parsed JSON.

    Raises ConfigError naming the file when it cannot be read or is not valid JSON.
    """
    name = os.fspath(path)
    if os.path.isdir(name):
        name = os.path.join(name, "config.json")
    try:
        with open(name, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        return name, json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{name}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{name}: not valid JSON: {exc}") from exc


class _Reader:
    """Typed access to the JSON with errors that name the key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def fail(self, path: _Path, problem: str) -> NoReturn:
        where = f"{_format_path(path)}: " if path else ""
        raise ConfigError(f"{self.source}: {where}{problem}")

    def table(self, value: object, path: _Path, known: frozenset[str]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected an object (got {_show(value, json=True)})")
        for key in value:
            if key not in known:
                hint = ""
                if key.startswith("logToSyslog"):
                    misspelt = key.replace("Syslog", "Sysloy")
                    hint = f" (tcp-over-websocket reads the misspelt {misspelt!r})"
                where = _format_path((*path, key))
                self.warnings.append(f"{where}: unknown key, not carried over{hint}")
        return value

    def get(
        self, table: Mapping[str, Any], path: _Path, key: str, kind: type, *, required: bool
    ) -> Any:
        """``table[key]`` checked against ``kind``; None when absent (or null) and optional."""
        value = table.get(key)
        where = (*path, key)
        if value is None:
            if required:
                self.fail(where, "required key missing")
            return None
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "an integer"
        elif kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            expected = "a number"
        elif kind is bool:
            ok, expected = isinstance(value, bool), "true or false"
        elif kind is str:
            ok, expected = isinstance(value, str), "a string"
        elif kind is list:
            ok, expected = isinstance(value, list), "an array"
        else:
            ok, expected = isinstance(value, kind), f"a {kind.__name__}"
        if not ok:
            self.fail(where, f"expected {expected} (got {_show(value, json=True)})")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                self.fail(where, "contains an unpaired surrogate escape (not valid Unicode)")
        return value


# --- the conversion -----------------------------------------------------------------------


def convert(old: object, *, home: str, source: str = "config.json") -> Conversion:
    """Convert parsed tcp-over-websocket JSON to trio-tunnel's TOML structure.

    ``home`` is the old service's home directory (where its ``config.json`` was): its default
    TLS file names and its log file are there, and relative paths are taken from there.
    Raises ConfigError, naming ``source`` and the JSON key, for input the old service could
    not have run with.
    """
    reader = _Reader(source)
    top = reader.table(old, (), _TOP_KEYS)
    home = os.path.abspath(home)
    is_server = bool(reader.get(top, (), "weAreServer", bool, required=False))
    data: dict[str, Any] = {"role": "server" if is_server else "client"}
    if not is_server:
        client_id = reader.get(top, (), "clientId", int, required=False)
        if client_id is None:
            reader.notes.append("clientId: not set, so client 1 (tcp-over-websocket's default)")
            client_id = 1
        elif client_id not in (1, 2):
            reader.fail(("clientId",), f"must be 1 or 2 (got {client_id})")
        data["client_id"] = client_id
    # A server's clientId (tcp-over-websocket writes the default into every file) means nothing.

    exchange = reader.table(top.get("dataExchange", {}), ("dataExchange",), _EXCHANGE_KEYS)
    data["websocket"] = _websocket(reader, exchange, is_server=is_server, home=home)

    close_secs = reader.get(top, (), "standbySocketCloseDurationSecs", float, required=False)
    if close_secs is not None:
        data["failover"] = {"standby_socket_close_secs": close_secs}
        if not is_server:
            reader.notes.append(
                "standbySocketCloseDurationSecs: carried over, but a client's value is ignored:"
                " the server's failover.standby_socket_close_secs governs (the server sends it"
                " to each client as it connects), so set the period in the server's config"
            )
    if is_server:
        reader.notes.append(
            "failover: on every switch tcp-over-websocket's server also closed its own listen"
            " ports for standbySocketCloseDurationSecs; trio-tunnel's keeps them open and"
            " sends new connections to the new active client at once. For the old behaviour"
            " add close_server_listeners = true to [failover]"
        )

    listens = _array(reader, top, "tcpTunnelListens")
    connects = _array(reader, top, "tcpTunnelConnects")
    if listens:
        data["listen"] = [_listen(reader, entry, index) for index, entry in enumerate(listens)]
    if connects:
        data["connect"] = [_connect(reader, entry, index) for index, entry in enumerate(connects)]
    old_logging = top.get("logging")
    data["logging"] = _logging(reader, {} if old_logging is None else old_logging, home=home)
    return Conversion(data, tuple(reader.warnings), tuple(reader.notes))


def _array(reader: _Reader, top: Mapping[str, Any], key: str) -> list[Any]:
    value = reader.get(top, (), key, list, required=False)
    return [] if value is None else list(value)


def _websocket(
    reader: _Reader, exchange: Mapping[str, Any], *, is_server: bool, home: str
) -> dict[str, Any]:
    path: _Path = ("dataExchange",)
    url = reader.get(exchange, path, "serverUrl", str, required=True)
    where = (*path, "serverUrl")
    try:
        split = urlsplit(url.strip())
        port = split.port
    except ValueError as exc:
        reader.fail(where, f"not a valid URL: {exc} (got {url!r})")
    scheme = split.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        reader.fail(where, f"expected an http:// or https:// URL (got {url!r})")
    if not split.hostname:
        reader.fail(where, f"has no host (got {url!r})")
    if port is None:
        reader.fail(where, f"has no port, which tcp-over-websocket needs (got {url!r})")
    if scheme == "wss":
        reader.warnings.append(
            f"{_format_path(where)}: tcp-over-websocket used TLS only for https:// URLs, so it"
            " ran this wss:// URL without TLS; trio-tunnel uses TLS for it"
        )
    tls = scheme in ("https", "wss")
    host = split.hostname
    if is_server and host != "0.0.0.0":
        reader.notes.append(
            f"{_format_path(where)}: the server listened on every IPv4 interface whatever host"
            f" the URL names ({host!r}); websocket.url keeps that with 0.0.0.0 (name one"
            " address there to narrow it)"
        )
        host = "0.0.0.0"
    resource = split.path or "/"
    if split.query:
        resource += f"?{split.query}"
    if resource != "/":
        reader.warnings.append(
            f"{_format_path(where)}: tcp-over-websocket ignored the URL's path (it always used"
            f" /vortexws); trio-tunnel uses {resource!r} as given, so give the server and both"
            " clients the same path"
        )
    shown_host = f"[{host}]" if ":" in host else host
    websocket: dict[str, Any] = {"url": f"{'wss' if tls else 'ws'}://{shown_host}:{port}{resource}"}

    mutual = bool(reader.get(exchange, path, "enableMutualTLS", bool, required=False))
    given: dict[str, str | None] = {
        key: reader.get(exchange, path, key, str, required=False) for key in _DEFAULT_TLS_FILES
    }
    if not tls:
        ignored = [key for key, value in given.items() if value is not None]
        ignored += ["enableMutualTLS"] if mutual else []
        if ignored:
            reader.notes.append(
                f"dataExchange: {', '.join(sorted(ignored))} left out: tcp-over-websocket"
                " ignores TLS settings with an http:// URL"
            )
        if is_server:
            reader.notes.append(_NO_CLIENT_AUTH)
        return websocket

    def tls_file(key: str, *, needed: bool) -> str | None:
        """An explicit path as given; the old default file when needed or present."""
        value = given[key]
        if value is None:
            default = os.path.join(home, _DEFAULT_TLS_FILES[key])
            return default if needed or os.path.exists(default) else None
        if not os.path.isabs(value):
            absolute = os.path.join(home, value)
            reader.warnings.append(
                f"dataExchange.{key}: the relative path {value!r} was relative to the old"
                f" service's working directory; taken as {absolute!r}"
            )
            return absolute
        return value

    if is_server:
        websocket["tls_bundle"] = tls_file("tlsBundleFilePath", needed=True)
    if mutual:
        websocket["mutual_tls"] = True
        if not is_server:
            websocket["tls_bundle"] = tls_file("tlsBundleFilePath", needed=True)
        trusted_ca = tls_file("mutualTLSTrustedCACertificateBundleFilePath", needed=is_server)
        trusted_peers = tls_file("mutualTLSTrustedPeerCertificateBundleFilePath", needed=False)
        if trusted_ca is not None:
            websocket["trusted_ca"] = trusted_ca
        if trusted_peers is not None:
            websocket["trusted_peers"] = trusted_peers
    else:
        if is_server:
            reader.notes.append(_NO_CLIENT_AUTH)
        unused = [
            "mutualTLSTrustedCACertificateBundleFilePath",
            "mutualTLSTrustedPeerCertificateBundleFilePath",
        ]
        if not is_server:  # a client presented a certificate only with mutual TLS
            unused.append("tlsBundleFilePath")
        ignored = [key for key in unused if given[key] is not None]
        if ignored:
            reader.notes.append(
                f"dataExchange: {', '.join(sorted(ignored))} left out: tcp-over-websocket"
                " ignores them without enableMutualTLS"
            )
        if not is_server:
            ca_hint = given["mutualTLSTrustedCACertificateBundleFilePath"]
            reader.warnings.append(
                "tcp-over-websocket's client did not verify the server's certificate without"
                " mutual TLS; trio-tunnel verifies it and the host name against the system CAs:"
                " for a private CA add websocket.trusted_ca"
                + (f" (perhaps {ca_hint!r})" if ca_hint else "")
            )
    return websocket


def _tunnel_name(reader: _Reader, value: str, path: _Path) -> str:
    """The tunnel name, made valid for trio-tunnel the same way on every side."""
    if not value:
        reader.fail(path, "must not be empty")
    name = _NOT_IN_TUNNEL_NAME.sub("_", value)
    if not name[0].isalnum():  # only ASCII is left
        name = "t" + name
    if len(name) > MAX_TUNNEL_NAME:
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]
        name = f"{name[: MAX_TUNNEL_NAME - 9]}-{digest}"
    if name != value:
        reader.warnings.append(
            f"{_format_path(path)}: tunnel {value!r} is named {name!r} (trio-tunnel's names are"
            " letters, digits, '.', '_', ':' and '-'); convert every side with import-json so"
            " the names still match"
        )
    return name


def _listen(reader: _Reader, entry: object, index: int) -> dict[str, Any]:
    path: _Path = ("tcpTunnelListens", index)
    table = reader.table(entry, path, _LISTEN_KEYS)
    name = reader.get(table, path, "tunnelName", str, required=True)
    port = reader.get(table, path, "listenPort", int, required=True)
    bind = reader.get(table, path, "listenBindAddress", str, required=False)
    listen: dict[str, Any] = {"tunnel": _tunnel_name(reader, name, (*path, "tunnelName"))}
    if bind is None:
        reader.warnings.append(
            f"{_format_path((*path, 'listenBindAddress'))}: not set; trio-tunnel binds"
            ' 127.0.0.1 (set bind = "0.0.0.0" for every interface)'
        )
    elif bind == "":
        reader.notes.append(
            f"{_format_path((*path, 'listenBindAddress'))}: empty meant every IPv4 interface:"
            ' bind = "0.0.0.0"'
        )
        listen["bind"] = "0.0.0.0"
    else:
        listen["bind"] = bind
    listen["port"] = port
    return listen


def _connect(reader: _Reader, entry: object, index: int) -> dict[str, Any]:
    path: _Path = ("tcpTunnelConnects", index)
    table = reader.table(entry, path, _CONNECT_KEYS)
    name = reader.get(table, path, "tunnelName", str, required=True)
    return {
        "tunnel": _tunnel_name(reader, name, (*path, "tunnelName")),
        "host": reader.get(table, path, "connectToHost", str, required=True),
        "port": reader.get(table, path, "connectToPort", int, required=True),
    }


def _logging(reader: _Reader, value: object, *, home: str) -> dict[str, Any]:
    path: _Path = ("logging",)
    table = reader.table(value, path, _LOGGING_KEYS)
    level = reader.get(table, path, "level", str, required=False)
    if level is None:
        level = "INFO"
    elif level in _LEVEL_ALIASES:
        level = _LEVEL_ALIASES[level]
    elif level not in LOG_LEVELS:
        reader.warnings.append(
            f"logging.level: tcp-over-websocket did not know {level!r} (level names are"
            " upper-case) and logged at INFO; so does this config"
        )
        level = "INFO"
    if level == "DEBUG":
        reader.notes.append(
            "logging.level: DEBUG is carried over: it turns on the debug lines of trio-tunnel"
            " and of the libraries below it, which with the root logger at DEBUG include"
            " trio-websocket's and wsproto's lines for every WebSocket message (most of a busy"
            ' log); for production use "INFO", and to debug one part set [logging] levels,'
            ' such as levels = { "trio_tunnel.stream" = "DEBUG" }'
        )
    reader.notes.append(
        "logging: the line format changed: each line is the time, the level, the logger name"
        " (trio_tunnel.server, trio_tunnel.client, trio_tunnel.stream, ...) and trio-tunnel's"
        " own message, so log filters and alerts written for tcp-over-websocket's lines need"
        ' rewriting (match on logger names and levels, or set [logging] format = "json")'
    )
    stdout = reader.get(table, path, "logToStdout", bool, required=False)
    days = reader.get(table, path, "daysToKeep", int, required=False)
    if days == 0:
        reader.warnings.append(
            f"logging.daysToKeep: 0 kept every old log file; trio-tunnel keeps at most"
            f" {MAX_DAYS_TO_KEEP} days"
        )
        days = MAX_DAYS_TO_KEEP
    logging: dict[str, Any] = {
        "level": level,
        "stdout": bool(stdout),
        "file": os.path.join(home, OLD_LOG_FILE),
        "days_to_keep": 14 if days is None else days,
    }
    syslog_path: _Path = (*path, "syslog")
    old_syslog = table.get("syslog")
    syslog = reader.table({} if old_syslog is None else old_syslog, syslog_path, _SYSLOG_KEYS)
    host = reader.get(syslog, syslog_path, "logToSysloyHost", str, required=False)
    port = reader.get(syslog, syslog_path, "logToSysloyPort", int, required=False)
    facility = reader.get(syslog, syslog_path, "logToSysloyProtocol", str, required=False)
    if host:
        logging["syslog_host"] = host
        logging["syslog_port"] = 514 if port is None else port
        logging["syslog_facility"] = "user" if facility is None else facility
    return logging


# --- TOML out -------------------------------------------------------------------------------

_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
_ESCAPES_MORE: Final = {"\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        escaped = _ESCAPES.get(char) or _ESCAPES_MORE.get(char)
        if escaped is not None:
            out.append(escaped)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"no TOML for the float {value}")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    raise TypeError(f"no TOML for {type(value).__name__}")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in table.items()]


def to_toml(data: Mapping[str, Any], comments: tuple[str, ...] = ()) -> str:
    """TOML text for a document of scalars, tables of scalars and arrays of such tables."""
    lines = [f"# {comment}" for comment in comments]
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
    lines += _toml_pairs(scalars)
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{_toml_key(key)}]", *_toml_pairs(value)]
        elif isinstance(value, list):
            for item in value:
                lines += ["", f"[[{_toml_key(key)}]]", *_toml_pairs(item)]
    return "\n".join(lines) + "\n"


# --- the command --------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``import-json`` to the ``trio-tunnel`` command."""
    parser = subparsers.add_parser(
        "import-json",
        help="print a tcp-over-websocket config.json as trio-tunnel TOML",
        description=(
            "Print the trio-tunnel TOML equivalent of a tcp-over-websocket config.json on"
            " stdout, with warnings on stderr about anything that changes meaning. Exits 0"
            " when the result passes `trio-tunnel check` here, 1 when it is printed but does"
            " not (the problems are listed), 2 when the JSON cannot be converted."
        ),
    )
    parser.add_argument("json", help="the config.json (or the old home directory holding it)")
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="the old service's home directory, for its default TLS file names and its log"
        " file (default: the directory of the config.json)",
    )
    parser.set_defaults(handler=_cmd_import_json)


def _cmd_import_json(args: argparse.Namespace) -> int:
    try:
        source, old = read_json_config(args.json)
        home = args.home or os.path.dirname(os.path.abspath(source))
        conversion = convert(old, home=home, source=source)
    except ConfigError as exc:
        print(f"trio-tunnel: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = to_toml(
        conversion.data,
        (
            f"trio-tunnel config converted from {os.path.abspath(source)}",
            "by `trio-tunnel import-json`; validate it with `trio-tunnel check FILE`.",
        ),
    )
    sys.stdout.write(text)
    sys.stdout.flush()
    for warning in conversion.warnings:
        print(f"trio-tunnel: warning: {warning}", file=sys.stderr)
    for note in conversion.notes:
        print(f"trio-tunnel: note: {note}", file=sys.stderr)
    try:
        name = f"{source} (converted)"
        load_environment(parse_config(tomllib.loads(text), name), name)
    except ConfigError as exc:
        print(
            "trio-tunnel: the converted config does not pass `trio-tunnel check` on this"
            " machine yet:",
            file=sys.stderr,
        )
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK
