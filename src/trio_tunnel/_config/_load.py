"""The load step: read what a valid config names, and check it is usable on this machine now.

Parsing (``parse_config``, the classes) is pure; this step is where files are read, TLS
material is loaded and host names are resolved. Its problems are ``ConfigLoadError``: the
config is right but the environment is not (yet), so ``run`` exits 1 and systemd restarts it,
where a ``ConfigError`` from parsing exits 2 and is not retried. ``load_environment`` blocks;
in a running event loop call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hmac
import os
import socket
import ssl
import stat
import sys
from collections.abc import Iterable
from typing import Any

import attrs

from .._errors import ConfigError, ConfigLoadError
from ._checks import MIN_TOKEN_CHARS, _format_problem, _is_ip, _Problem
from ._convert import parse_config
from ._schema import TLS_FILES, Config, WebSocketSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["Environment", "load_config", "load_environment", "read_token"]


@attrs.frozen(eq=False)
class Environment:
    """What a config names, loaded and ready: what a server or client needs to start.

    ``warnings`` are lines (``file: key.path: ...``) worth telling the operator that do not
    stop the process, such as a token file others may read.
    """

    ssl_context: ssl.SSLContext | None = None
    auth_token: bytes | None = None
    warnings: tuple[str, ...] = ()
    # SHA-256 of each certificate in tls_bundle and in trusted_peers (for ``check`` with
    # several files: does each side pin what the other presents?).
    certificates: frozenset[bytes] = frozenset()
    pins: frozenset[bytes] = frozenset()
    # [clients.N] (server): each client id's own token, and the SHA-256 of the certificates
    # it may present.
    client_tokens: tuple[tuple[int, bytes], ...] = ()
    client_certificates: tuple[tuple[int, frozenset[bytes]], ...] = ()

    def token_owner(self, presented: bytes) -> int | None:
        """Which client id's [clients.N] token ``presented`` is (constant-time compare)."""
        owner = None
        for client_id, token in self.client_tokens:
            if hmac.compare_digest(presented, token):
                owner = client_id
        return owner

    def certificates_of(self, client_id: int) -> frozenset[bytes] | None:
        """The certificate digests client ``client_id`` must present, if it has any."""
        for owner, digests in self.client_certificates:
            if owner == client_id:
                return digests
        return None


def load_environment(config: Config, source: str | None = None) -> Environment:
    """Read the token file, load the TLS files, resolve the names and check the log file.

    Raises ConfigLoadError listing every problem, one per line, as ``<source>: <key path>:
    <problem>`` (without the source when it is None, as for a config built in Python).
    Blocking: run it in a thread (``trio.to_thread.run_sync``) inside an event loop.
    """
    problems: list[_Problem] = []
    warnings: list[_Problem] = []
    ws = config.websocket
    readable: set[str] = set()
    for key in (*TLS_FILES, "auth_token_file"):
        problem = _readable_file(getattr(ws, key))
        if problem is not None:
            problems.append((("websocket", key), problem))
        elif getattr(ws, key) is not None:
            readable.add(key)
    if ws.scheme == "wss":
        notes: list[_Problem] = []
        problems += [
            (("websocket", *path), why) for path, why in _tls_file_problems(ws, readable, notes)
        ]
        warnings += [(("websocket", *path), why) for path, why in notes]
    token: str | None = None
    if "auth_token_file" in readable:
        assert ws.auth_token_file is not None
        token, token_problems = _token(ws.auth_token_file)
        problems += [(("websocket", "auth_token_file"), why) for why in token_problems]
        mode = _loose_mode(ws.auth_token_file)
        if mode is not None:
            warnings.append((("websocket", "auth_token_file"), mode))
    client_tokens: list[tuple[int, bytes]] = []
    client_certificates: list[tuple[int, frozenset[bytes]]] = []
    for entry in config.clients:
        path = ("clients", str(entry.client_id))
        if entry.auth_token_file is not None:
            problem = _readable_file(entry.auth_token_file)
            if problem is not None:
                problems.append(((*path, "auth_token_file"), problem))
            else:
                client_token, why = _token(entry.auth_token_file)
                problems += [((*path, "auth_token_file"), text) for text in why]
                if client_token is not None:
                    client_tokens.append((entry.client_id, client_token.encode("ascii")))
                mode = _loose_mode(entry.auth_token_file)
                if mode is not None:
                    warnings.append(((*path, "auth_token_file"), mode))
        if entry.certificate is not None:
            problem = _readable_file(entry.certificate)
            if problem is not None:
                problems.append(((*path, "certificate"), problem))
            else:
                from .. import _tls

                try:
                    _tls.check_trusted(entry.certificate)
                    digests = _tls.load_pins(entry.certificate)
                except (OSError, ValueError) as exc:
                    problems.append(((*path, "certificate"), str(exc)))
                else:
                    client_certificates.append((entry.client_id, digests))
    if len({token for _, token in client_tokens}) < len(client_tokens):
        problems.append((("clients",), "clients 1 and 2 have the same token: give each its own"))
    settings = config.logging
    for key, problem in (
        ("file", _log_file(settings.file)),
        ("syslog_host", _syslog_host(settings.syslog_host)),
    ):
        if problem is not None:
            problems.append((("logging", key), problem))
    context: ssl.SSLContext | None = None
    certificates: frozenset[bytes] = frozenset()
    pins: frozenset[bytes] = frozenset()
    if not problems and ws.scheme == "wss":
        from .. import _tls

        try:
            context = _ssl_context(config)
            if ws.tls_bundle is not None:
                certificates = _tls.bundle_digests(ws.tls_bundle)
            if ws.trusted_peers is not None:
                pins = _tls.load_pins(ws.trusted_peers)
        except (ssl.SSLError, OSError, ValueError) as exc:  # changed since it was checked
            problems.append((("websocket",), f"cannot set up TLS: {exc}"))
    if problems:
        raise ConfigLoadError(_lines(problems, source))
    return Environment(
        ssl_context=context,
        auth_token=None if token is None else token.encode("ascii"),
        warnings=tuple(_lines(warnings, source).splitlines()),
        certificates=certificates,
        pins=pins,
        client_tokens=tuple(client_tokens),
        client_certificates=tuple(client_certificates),
    )


def _lines(problems: Iterable[_Problem], source: str | None) -> str:
    prefix = "" if source is None else f"{source}: "
    return "\n".join(prefix + _format_problem(problem) for problem in problems)


def _ssl_context(config: Config) -> ssl.SSLContext:
    from .. import _tls  # the ssl module does the loading; import late to keep this light

    ws = config.websocket
    if config.is_server:
        assert ws.tls_bundle is not None  # required by the schema
        return _tls.server_context(
            tls_bundle=ws.tls_bundle,
            trusted_ca=ws.trusted_ca,
            trusted_peers=ws.trusted_peers,
            mutual_tls=ws.mutual_tls,
        )
    return _tls.client_context(
        tls_bundle=ws.tls_bundle,
        trusted_ca=ws.trusted_ca,
        trusted_peers=ws.trusted_peers,
        mutual_tls=ws.mutual_tls,
    )


def _tls_file_problems(
    ws: WebSocketSettings, readable: set[str], notes: list[_Problem]
) -> Iterable[_Problem]:
    """Whether the TLS files hold what they should (each one that could be read). PEM blocks
    may come in any order; what was reordered or ignored goes to ``notes``."""
    from .. import _tls  # the ssl module does the loading; import late to keep parsing light

    checks = (
        ("tls_bundle", ws.tls_bundle, _tls.check_bundle),
        ("trusted_ca", ws.trusted_ca, _tls.check_trusted),
        ("trusted_peers", ws.trusted_peers, _tls.check_trusted),
    )
    for key, path, check in checks:
        if path is None or key not in readable:
            continue
        try:
            found = check(path)
        except (OSError, ValueError) as exc:
            yield (key,), str(exc)
        else:
            notes.extend(((key,), note) for note in found)


def _readable_file(value: object) -> str | None:
    """None (not set) or the path of a readable, non-empty file."""
    if value is None:
        return None
    if not isinstance(value, str):
        return None  # not a name: reported by the schema already
    try:
        with open(value, "rb") as file:
            if not file.read(1):
                return f"file {value!r} is empty"
    except OSError as exc:
        return f"cannot read {value!r}: {exc.strerror or exc}"
    return None


def _log_file(value: object) -> str | None:
    """None (not set) or a regular file this process may append to, in an existing directory."""
    if value is None:
        return None
    if not isinstance(value, str):
        return None  # not a name: reported by the schema already
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
    if not isinstance(value, str) or _is_ip(value):
        return None
    try:
        socket.getaddrinfo(value, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {value!r}: {getattr(exc, 'strerror', None) or exc}"
    return None


def read_token(path: str) -> str:
    """The shared secret in ``path``, without surrounding white space."""
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


def _token(path: str) -> tuple[str | None, list[str]]:
    """The token in ``path``, or None and what is wrong with it."""
    try:
        token = read_token(path)
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"cannot read {path!r}: {exc}"]
    if len(token) < MIN_TOKEN_CHARS:
        return None, [f"the token must be at least {MIN_TOKEN_CHARS} characters (got {len(token)})"]
    if any(ord(ch) < 33 or ord(ch) > 126 for ch in token):
        return None, ["the token must be printable ASCII without spaces"]
    return token, []


def _loose_mode(path: str) -> str | None:
    """What is wrong with a secret file others may read, or None (always None on Windows,
    whose files have no such mode bits)."""
    if os.name == "nt":  # pragma: no cover - POSIX mode bits only
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # read a moment ago; a vanished file is reported when it is used
    who = [name for bits, name in ((0o070, "its group"), (0o007, "others")) if mode & bits]
    if not who:
        return None
    return (
        f"{path!r} holds a secret but is open to {' and '.join(who)} (mode {mode:04o}):"
        f" chmod 600 {path}"
    )


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
    file_keys = {"websocket": (*TLS_FILES, "auth_token_file"), "logging": ("file",)}
    for table_name, keys in file_keys.items():
        table = data.get(table_name)
        if not isinstance(table, dict):
            continue
        for key in keys:
            value = table.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                table[key] = os.path.join(base, value)
    clients = data.get("clients")
    if isinstance(clients, dict):
        for table in clients.values():
            if not isinstance(table, dict):
                continue
            for key in ("auth_token_file", "certificate"):
                value = table.get(key)
                if isinstance(value, str) and value and not os.path.isabs(value):
                    table[key] = os.path.join(base, value)
