"""Tests for trio_tunnel._config: loading, defaults, every check, and the summary."""

import copy
import math
import socket
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tunnel._cli import main
from trio_tunnel._config import (
    Config,
    Connect,
    Environment,
    FailoverSettings,
    Listen,
    LoggingSettings,
    Member,
    StreamSettings,
    WebSocketSettings,
    check_together,
    describe_config,
    load_config,
    load_environment,
    parse_config,
)
from trio_tunnel._errors import ConfigError, ConfigLoadError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

SERVER_TOML = """
role = "server"

[websocket]
url = "ws://0.0.0.0:8080/tunnel"
ping_interval_secs = 3
ping_timeout_secs = 9.5

[failover]
standby_socket_close_secs = 0

[streams]
window_bytes = 65536
max_streams_per_session = 100
connect_timeout_secs = 5

[[listen]]
tunnel = "ssh"
port = 8022

[[listen]]
tunnel = "db"
port = 5432
bind = "0.0.0.0"

[[connect]]
tunnel = "web"
host = "intranet.example"
port = 80

[[connect]]
tunnel = "ssh"
host = "::1"
port = 22

[logging]
level = "debug"
levels = { "trio_tunnel.stream" = "warning" }
"""

CLIENT_TOML = """
role = "client"
client_id = {client_id}

[websocket]
url = "wss://tunnel.example.com/tunnel"

[[listen]]
tunnel = "web"
port = 8080

[[connect]]
tunnel = "ssh"
host = "127.0.0.1"
port = 22
"""

MINIMAL_CLIENT = {"role": "client", "client_id": 1, "websocket": {"url": "ws://h"}}


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(data: Any, source: str = "x.toml") -> str:
    """parse_config must fail; return its message after checking every line names the source."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    message = str(info.value)
    for line in message.splitlines():
        assert line.startswith(f"{source}: "), message
    return message


def with_changes(base: dict[str, Any], **tables: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for key, value in tables.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


# --- good configs ---------------------------------------------------------------------------


def test_server_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SERVER_TOML, "server.toml"))
    assert config.is_server
    assert config.role == "server"
    assert config.client_id is None
    assert config.websocket.host == "0.0.0.0"
    assert config.websocket.port == 8080
    assert config.websocket.path == "/tunnel"
    assert config.websocket.ping_interval_secs == 3.0
    assert isinstance(config.websocket.ping_interval_secs, float)
    assert config.failover == FailoverSettings(standby_socket_close_secs=0.0)
    assert config.streams == StreamSettings(
        window_bytes=65536, max_streams_per_session=100, connect_timeout_secs=5.0
    )
    assert config.listen == (
        Listen(tunnel="ssh", port=8022),
        Listen(tunnel="db", port=5432, bind="0.0.0.0"),
    )
    assert config.connect == (
        Connect(tunnel="web", host="intranet.example", port=80),
        Connect(tunnel="ssh", host="::1", port=22),
    )
    assert config.logging.level == "DEBUG"


@pytest.mark.parametrize("client_id", [1, 2])
def test_client_configs_load(tmp_path: Path, client_id: int) -> None:
    path = write(tmp_path, CLIENT_TOML.format(client_id=client_id), f"client{client_id}.toml")
    config = load_config(str(path))
    assert not config.is_server
    assert config.client_id == client_id
    assert config.websocket.scheme == "wss"
    assert config.websocket.port == 443
    assert config.listen == (Listen(tunnel="web", port=8080),)
    assert config.connect == (Connect(tunnel="ssh", host="127.0.0.1", port=22),)


def test_defaults() -> None:
    config = parse_config(MINIMAL_CLIENT)
    ws = config.websocket
    assert (ws.handshake_timeout_secs, ws.close_timeout_secs) == (10.0, 2.0)
    assert (ws.ping_interval_secs, ws.ping_timeout_secs) == (5.0, 10.0)
    assert (ws.reconnect_min_secs, ws.reconnect_max_secs) == (0.2, 5.0)
    assert config.failover.standby_socket_close_secs == 15.0
    assert config.streams.window_bytes == 1024 * 1024
    assert config.streams.max_streams_per_session == 2048
    assert config.streams.connect_timeout_secs == 10.0
    assert config.listen == ()
    assert config.connect == ()
    assert config.logging.level == "INFO"
    assert Listen(tunnel="t", port=1).bind == "127.0.0.1"
    assert config == Config(role="client", client_id=1, websocket=WebSocketSettings(url="ws://h"))


def test_config_is_frozen() -> None:
    config = parse_config(MINIMAL_CLIENT)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.role = "server"  # type: ignore[misc]
    assert hash(config) == hash(parse_config(MINIMAL_CLIENT))


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path"),
    [
        ("ws://example.com", "ws", "example.com", 80, "/"),
        ("wss://example.com", "wss", "example.com", 443, "/"),
        ("http://example.com/a/b", "ws", "example.com", 80, "/a/b"),
        ("https://example.com:8443/t", "wss", "example.com", 8443, "/t"),
        ("HTTPS://Example.COM/", "wss", "example.com", 443, "/"),
        ("ws://10.0.0.1:9000?token=abc", "ws", "10.0.0.1", 9000, "/?token=abc"),
        ("wss://[::1]:7000/p?q=1&r=2", "wss", "::1", 7000, "/p?q=1&r=2"),
        ("ws://host:/x", "ws", "host", 80, "/x"),
    ],
)
def test_url_aliases_and_parts(url: str, scheme: str, host: str, port: int, path: str) -> None:
    ws = WebSocketSettings(url=url)
    assert (ws.scheme, ws.host, ws.port, ws.path) == (scheme, host, port, path)


def test_server_may_listen_on_port_0() -> None:
    config = parse_config(
        {
            "role": "server",
            "websocket": {"url": "ws://127.0.0.1:0"},
            "listen": [{"tunnel": "a", "port": 0}, {"tunnel": "b", "port": 0}],
        }
    )
    assert config.websocket.port == 0
    assert [entry.port for entry in config.listen] == [0, 0]


def test_same_tunnel_may_be_in_listen_and_connect() -> None:
    config = parse_config(
        with_changes(
            MINIMAL_CLIENT,
            listen=[{"tunnel": "ssh", "port": 2222}],
            connect=[{"tunnel": "ssh", "host": "localhost", "port": 22}],
        )
    )
    assert config.listen[0].tunnel == config.connect[0].tunnel == "ssh"


# --- files ----------------------------------------------------------------------------------


def test_error_starts_with_file_name_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, 'role = "server"\n[websocket]\nurl = "ws://h"\n[[listen]]\nport = "8022"\n')
    with pytest.raises(ConfigError) as info:
        load_config("x.toml")
    assert str(info.value).splitlines() == [
        "x.toml: listen[0].tunnel: required key missing",
        "x.toml: listen[0].port: expected an integer (got the string '8022')",
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "server"\n[websocket]\nurl = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(b'role = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_parse_config_default_source_and_non_table() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: websocket: required table missing$"):
        parse_config({"role": "server"})
    with pytest.raises(ConfigError, match=r"^y\.toml: expected a table"):
        parse_config([], "y.toml")  # type: ignore[arg-type]


# --- every check, through parse_config ------------------------------------------------------

SERVER = {
    "role": "server",
    "websocket": {"url": "ws://127.0.0.1:8080"},
    "listen": [{"tunnel": "ssh", "port": 8022}],
    "connect": [{"tunnel": "web", "host": "intranet.example", "port": 80}],
}

L0 = {"tunnel": "a", "port": 8022}

BAD_CASES: list[tuple[str, dict[str, Any], str]] = [
    # unknown keys, at every level
    ("top", with_changes(SERVER, bogus=1), "bogus: unknown key"),
    ("ws", with_changes(SERVER, websocket={"bogus": 1}), "websocket.bogus: unknown key"),
    ("listen", with_changes(SERVER, listen=[L0, {**L0, "x": 1}]), "listen[1].x: unknown key"),
    ("connect", with_changes(SERVER, connect=[{"zz": 0}]), "connect[0].zz: unknown key"),
    ("stream", with_changes(SERVER, streams={"window": 1}), "streams.window: unknown key"),
    ("log", with_changes(SERVER, logging={"files": "x"}), "logging.files: unknown key"),
    ("fail", with_changes(SERVER, failover={"a": 1}), "failover.a: unknown key"),
    ("quoted", with_changes(SERVER, **{"a b": 1}), "'a b': unknown key"),
    # missing keys and tables
    ("no ws", {"role": "server"}, "websocket: required table missing"),
    ("no role", {"websocket": {"url": "ws://h"}}, "role: required key missing"),
    ("no url", with_changes(SERVER, websocket={"url": None}), "websocket.url: expected a string"),
    ("no url2", {"role": "server", "websocket": {}}, "websocket.url: required key missing"),
    ("no port", with_changes(SERVER, listen=[{"tunnel": "a"}]), "listen[0].port: required key"),
    # strict types
    ("str int", with_changes(SERVER, listen=[L0, {"tunnel": "b", "port": "8022"}]),
     "listen[1].port: expected an integer"),
    ("bool int", with_changes(SERVER, listen=[{"tunnel": "b", "port": True}]),
     "listen[0].port: expected an integer"),
    ("float int", with_changes(SERVER, streams={"window_bytes": 65536.0}),
     "streams.window_bytes: expected an integer"),
    ("str float", with_changes(SERVER, websocket={"ping_interval_secs": "5"}),
     "websocket.ping_interval_secs: expected a number"),
    ("bool float", with_changes(SERVER, failover={"standby_socket_close_secs": False}),
     "failover.standby_socket_close_secs: expected a number"),
    ("int str", with_changes(SERVER, role=1), "role: expected a string"),
    ("int host", with_changes(SERVER, connect=[{"tunnel": "a", "host": 1, "port": 1}]),
     "connect[0].host: expected a string"),
    ("table str", with_changes(SERVER, websocket="ws://h"), "websocket: expected a table"),
    ("array", with_changes(SERVER, listen={"tunnel": "a", "port": 1}),
     "listen: expected an array of tables"),
    ("not tables", with_changes(SERVER, listen=[L0, "x"]), "listen[1]: expected a table"),
    ("id str", with_changes(MINIMAL_CLIENT, client_id="1"), "client_id: expected an integer"),
    ("level int", with_changes(SERVER, logging={"level": 10}), "logging.level: expected a string"),
    # role and client id
    ("role", with_changes(SERVER, role="peer"), "role: must be 'server' or 'client'"),
    ("role case", with_changes(SERVER, role="Server"), "role: must be 'server' or 'client'"),
    ("no id", {"role": "client", "websocket": {"url": "ws://h"}},
     "client_id: required for a client"),
    ("id 3", with_changes(MINIMAL_CLIENT, client_id=3), "client_id: must be 1 (primary) or 2"),
    ("id 0", with_changes(MINIMAL_CLIENT, client_id=0), "client_id: must be 1 (primary) or 2"),
    ("id server", with_changes(SERVER, client_id=1), "client_id: not allowed for a server"),
    # url
    ("scheme", with_changes(SERVER, websocket={"url": "ftp://h"}), "websocket.url: scheme"),
    ("no scheme", with_changes(SERVER, websocket={"url": "h:80"}), "websocket.url: scheme"),
    ("no host", with_changes(SERVER, websocket={"url": "ws:///x"}), "websocket.url: has no host"),
    ("bad port", with_changes(SERVER, websocket={"url": "ws://h:99999"}),
     "websocket.url: not a valid URL"),
    ("word port", with_changes(SERVER, websocket={"url": "ws://h:http"}),
     "websocket.url: not a valid URL"),
    ("ipv6", with_changes(SERVER, websocket={"url": "ws://[::1"}), "websocket.url: not a valid"),
    ("bad host", with_changes(SERVER, websocket={"url": "ws://*:80"}), "websocket.url: host"),
    ("num host", with_changes(SERVER, websocket={"url": "ws://999.1.1.1"}),
     "websocket.url: host"),
    ("userinfo", with_changes(SERVER, websocket={"url": "ws://u:p@h/"}),
     "websocket.url: must not contain user information"),
    ("fragment", with_changes(SERVER, websocket={"url": "ws://h/#x"}),
     "websocket.url: must not contain a fragment"),
    ("client 0", with_changes(MINIMAL_CLIENT, websocket={"url": "ws://h:0"}),
     "websocket.url: a client needs a port"),
    # tunnel names
    ("empty", with_changes(SERVER, listen=[{"tunnel": "", "port": 1}]),
     "listen[0].tunnel: must not be empty"),
    ("long", with_changes(SERVER, listen=[{"tunnel": "a" * 65, "port": 1}]),
     "listen[0].tunnel: must be at most 64"),
    ("space", with_changes(SERVER, connect=[{"tunnel": "a b", "host": "h", "port": 1}]),
     "connect[0].tunnel: must start with a letter or digit"),
    ("dash", with_changes(SERVER, listen=[{"tunnel": "-a", "port": 1}]), "listen[0].tunnel: must"),
    ("unicode", with_changes(SERVER, listen=[{"tunnel": "é", "port": 1}]), "listen[0].tunnel"),
    ("dup listen", with_changes(SERVER, listen=[L0, {"tunnel": "b", "port": 1}, {**L0, "port": 2}]),
     "listen[2].tunnel: tunnel 'a' is already used by listen[0]"),
    ("dup connect",
     with_changes(SERVER, connect=[{"tunnel": "c", "host": "h", "port": p} for p in (1, 2)]),
     "connect[1].tunnel: tunnel 'c' is already used by connect[0]"),
    # ports
    ("dup port", with_changes(SERVER, listen=[L0, {"tunnel": "b", "port": 8022}]),
     "listen[1].port: port 8022 on 127.0.0.1 is already used by listen[0]"),
    ("dup wildcard",
     with_changes(SERVER, listen=[{**L0, "bind": "0.0.0.0"}, {"tunnel": "b", "port": 8022}]),
     "listen[1].port: port 8022 on 127.0.0.1 is already used by listen[0] on 0.0.0.0"),
    ("dup v6", with_changes(SERVER, listen=[{**L0, "bind": "::"}, {**L0, "tunnel": "b",
                                                                   "bind": "0:0::1"}]),
     "listen[1].port: port 8022 on 0:0::1 is already used by listen[0] on ::"),
    ("ws port", with_changes(SERVER, listen=[{"tunnel": "a", "port": 8080}]),
     "listen[0].port: port 8080 on 127.0.0.1 is already used by websocket.url"),
    ("ws wildcard",
     with_changes(SERVER, websocket={"url": "ws://0.0.0.0"}, listen=[{"tunnel": "a", "port": 80}]),
     "listen[0].port: port 80 on 127.0.0.1 is already used by websocket.url on 0.0.0.0"),
    ("listen port", with_changes(SERVER, listen=[{"tunnel": "a", "port": 65536}]),
     "listen[0].port: must be 0..65535"),
    ("listen neg", with_changes(SERVER, listen=[{"tunnel": "a", "port": -1}]),
     "listen[0].port: must be 0..65535"),
    ("connect 0", with_changes(SERVER, connect=[{"tunnel": "a", "host": "h", "port": 0}]),
     "connect[0].port: must be 1..65535"),
    ("bind", with_changes(SERVER, listen=[{**L0, "bind": "not a host"}]),
     "listen[0].bind: expected an IP address or a host name"),
    ("host", with_changes(SERVER, connect=[{"tunnel": "a", "host": "", "port": 1}]),
     "connect[0].host: expected an IP address or a host name"),
    # streams
    ("window lo", with_changes(SERVER, streams={"window_bytes": 16383}),
     "streams.window_bytes: must be 16384..16777216"),
    ("window hi", with_changes(SERVER, streams={"window_bytes": 16777217}),
     "streams.window_bytes: must be 16384..16777216"),
    ("streams 0", with_changes(SERVER, streams={"max_streams_per_session": 0}),
     "streams.max_streams_per_session: must be 1..1000000"),
    ("streams hi", with_changes(SERVER, streams={"max_streams_per_session": 1_000_001}),
     "streams.max_streams_per_session: must be 1..1000000"),
    # durations
    ("zero", with_changes(SERVER, streams={"connect_timeout_secs": 0}),
     "streams.connect_timeout_secs: must be greater than 0"),
    ("negative", with_changes(SERVER, websocket={"handshake_timeout_secs": -1.0}),
     "websocket.handshake_timeout_secs: must be greater than 0"),
    ("close 0", with_changes(SERVER, websocket={"close_timeout_secs": 0.0}),
     "websocket.close_timeout_secs: must be greater than 0"),
    ("standby neg", with_changes(SERVER, failover={"standby_socket_close_secs": -0.5}),
     "failover.standby_socket_close_secs: must be 0 or more"),
    ("inf", with_changes(SERVER, websocket={"ping_timeout_secs": math.inf}),
     "websocket.ping_timeout_secs: must be a finite number"),
    ("nan", with_changes(SERVER, websocket={"reconnect_max_secs": math.nan}),
     "websocket.reconnect_max_secs: must be a finite number"),
    ("huge int", with_changes(SERVER, websocket={"reconnect_max_secs": 10**400}),
     "websocket.reconnect_max_secs: must be a finite number"),
    ("backoff", with_changes(SERVER, websocket={"reconnect_min_secs": 6}),
     "websocket.reconnect_min_secs: must not exceed reconnect_max_secs"),
    ("ping", with_changes(SERVER, websocket={"ping_timeout_secs": 5}),
     "websocket.ping_timeout_secs: must be greater than ping_interval_secs"),
    # logging
    ("level", with_changes(SERVER, logging={"level": "verbose"}),
     "logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "expected"), [case[1:] for case in BAD_CASES], ids=[case[0] for case in BAD_CASES]
)
def test_bad_config(data: dict[str, Any], expected: str) -> None:
    message = config_error(data)
    assert f"x.toml: {expected}" in message


def test_bad_config_from_file(tmp_path: Path) -> None:
    text = SERVER_TOML.replace("port = 5432", 'port = "5432"').replace('"debug"', '"loud"')
    path = write(tmp_path, text, "server.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}: listen[1].port: expected an integer (got the string '5432')",
        f"{path}: logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'LOUD')",
    ]


def test_all_problems_are_reported() -> None:
    data = {
        "role": "client",
        "client_id": 1,
        "websocket": {"url": "ftp://h", "bogus": 1, "ping_timeout_secs": True},
        "listen": [{"tunnel": "a b", "port": "8022", "zz": 1}, 5, {"tunnel": "ok", "port": 70000}],
        "streams": {"window_bytes": 1, "max_streams_per_session": 0},
        "extra": {},
    }
    lines = config_error(data).splitlines()
    paths = [line.split(": ")[1] for line in lines]
    assert sorted(paths) == sorted(
        [
            "websocket.bogus",
            "websocket.url",
            "websocket.ping_timeout_secs",
            "listen[0].zz",
            "listen[0].tunnel",
            "listen[0].port",
            "listen[1]",
            "listen[2].port",
            "streams.window_bytes",
            "streams.max_streams_per_session",
            "extra",
        ]
    )


def test_problems_are_reported_even_when_a_table_cannot_be_built() -> None:
    data = {
        "role": "peer",
        "client_id": 7,
        "listen": [{"port": "x", "bogus": 1}],
        "logging": {"level": "loud", "x": 1},
    }
    assert sorted(config_error(data).splitlines()) == [
        "x.toml: client_id: must be 1 (primary) or 2 (secondary) (got 7)",
        "x.toml: listen[0].bogus: unknown key",
        "x.toml: listen[0].port: expected an integer (got the string 'x')",
        "x.toml: listen[0].tunnel: required key missing",
        "x.toml: logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'LOUD')",
        "x.toml: logging.x: unknown key",
        "x.toml: role: must be 'server' or 'client' (got 'peer')",
        "x.toml: websocket: required table missing",
    ]


def test_all_cross_field_problems_are_reported() -> None:
    data = with_changes(
        SERVER,
        client_id=2,
        listen=[L0, L0, {"tunnel": "b", "port": 8080}],
        connect=[{"tunnel": "c", "host": "h", "port": 1}] * 2,
    )
    assert config_error(data).splitlines() == [
        "x.toml: client_id: not allowed for a server (only clients have an id)",
        "x.toml: listen[1].tunnel: tunnel 'a' is already used by listen[0]",
        "x.toml: connect[1].tunnel: tunnel 'c' is already used by connect[0]",
        "x.toml: listen[1].port: port 8022 on 127.0.0.1 is already used by listen[0]",
        "x.toml: listen[2].port: port 8080 on 127.0.0.1 is already used by websocket.url",
    ]


def test_level_is_case_insensitive() -> None:
    assert parse_config(with_changes(SERVER, logging={"level": "wArNiNg"})).logging.level == (
        "WARNING"
    )
    assert LoggingSettings(level="error").level == "ERROR"


def test_client_listen_may_reuse_url_port() -> None:
    # Only a server binds the WebSocket URL's port.
    data = with_changes(MINIMAL_CLIENT, websocket={"url": "ws://127.0.0.1:8022"}, listen=[L0])
    assert parse_config(data).listen == (Listen(tunnel="a", port=8022),)


def test_different_binds_may_share_a_port() -> None:
    listens = [{**L0, "bind": "127.0.0.1"}, {**L0, "tunnel": "b", "bind": "127.0.0.2"}]
    listens.append({**L0, "tunnel": "c", "bind": "::"})  # IPv6 only: leaves 127.x alone
    assert len(parse_config(with_changes(SERVER, listen=listens)).listen) == 3


# --- configs built in Python ----------------------------------------------------------------


def test_python_built_sub_objects_are_checked() -> None:
    bad: Any = "8022"
    with pytest.raises(ConfigError, match=r"^port: must be 0\.\.65535 \(got 70000\)$"):
        Listen(tunnel="a", port=70000)
    with pytest.raises(ConfigError, match=r"^port: expected an integer"):
        Listen(tunnel="a", port=bad)
    with pytest.raises(ConfigError, match=r"^port: must be 1\.\.65535"):
        Connect(tunnel="a", host="h", port=0)
    with pytest.raises(ConfigError, match=r"^url: scheme"):
        WebSocketSettings(url="ftp://h")
    with pytest.raises(ConfigError, match=r"^window_bytes: must be"):
        StreamSettings(window_bytes=1)
    with pytest.raises(ConfigError, match=r"^standby_socket_close_secs: must be 0 or more"):
        FailoverSettings(standby_socket_close_secs=-1)
    with pytest.raises(ConfigError, match=r"^level: must be one of"):
        LoggingSettings(level="x")
    with pytest.raises(ConfigError) as info:
        Listen(tunnel="", port=-1, bind="")
    assert [line.split(":")[0] for line in str(info.value).splitlines()] == [
        "tunnel",
        "port",
        "bind",
    ]


def test_python_built_config_cross_checks_have_full_paths() -> None:
    ws = WebSocketSettings(url="ws://127.0.0.1:9000")
    listens = (Listen(tunnel="a", port=8022), Listen(tunnel="b", port=8022))
    with pytest.raises(ConfigError) as info:
        Config(role="server", websocket=ws, listen=listens)
    assert str(info.value) == "listen[1].port: port 8022 on 127.0.0.1 is already used by listen[0]"
    with pytest.raises(ConfigError, match=r"^client_id: required for a client"):
        Config(role="client", websocket=ws)
    with pytest.raises(ConfigError, match=r"^role: must be 'server' or 'client'"):
        Config(role="both", websocket=ws)
    with pytest.raises(ConfigError, match=r"^websocket: expected a WebSocketSettings"):
        Config(role="server", websocket={"url": "ws://h"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^listen: expected a tuple of Listen"):
        Config(role="server", websocket=ws, listen=list(listens))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^connect: expected a tuple of Connect \(item 0 is"):
        Config(role="server", websocket=ws, connect=listens)  # type: ignore[arg-type]
    config = Config(role="client", client_id=2, websocket=ws, listen=listens[:1])
    assert config.client_id == 2


# --- fuzzing: any input gives a Config or a ConfigError -------------------------------------

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-1, max_value=70000),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["ws://h:1/", "wss://[::1]", "0.0.0.0", "::", "server", "client", "debug"]),
    st.datetimes(),
    st.none(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
KEYS = [
    "role",
    "client_id",
    "websocket",
    "failover",
    "streams",
    "listen",
    "connect",
    "logging",
    "url",
    "tunnel",
    "port",
    "bind",
    "host",
    "level",
    "window_bytes",
    "ping_timeout_secs",
    "reconnect_min_secs",
    "standby_socket_close_secs",
    "close_server_listeners",
    "levels",
    "format",
]


def check_parses_or_config_error(data: Any) -> None:
    try:
        config = parse_config(data, "fuzz.toml")
    except ConfigError as exc:
        lines = str(exc).splitlines()
        assert lines
        assert all(line.startswith("fuzz.toml: ") for line in lines)
    else:
        assert isinstance(config, Config)
        assert describe_config(config)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), toml_values, max_size=6))
def test_random_dicts_give_config_or_config_error(data: dict[str, Any]) -> None:
    check_parses_or_config_error(data)


def all_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            paths += all_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += all_paths(item, (*path, index))
    return paths


VALID = tomllib.loads(SERVER_TOML)


@settings(max_examples=300)
@given(st.data())
def test_mutated_valid_config_gives_config_or_config_error(data: st.DataObject) -> None:
    config = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(all_paths(config)))
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(toml_values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        if not all_paths(config):
            break
    check_parses_or_config_error(config)


# --- describe_config ------------------------------------------------------------------------


def test_describe_server(tmp_path: Path) -> None:
    text = describe_config(load_config(write(tmp_path, SERVER_TOML)))
    assert "role: server" in text
    assert "listen on ws://0.0.0.0:8080/tunnel" in text
    assert "tunnel ssh: accept TCP on 127.0.0.1:8022 and carry it to the peer" in text
    assert "tunnel db: accept TCP on 0.0.0.0:5432 and carry it to the peer" in text
    assert "tunnel web: open TCP to intranet.example:80 for streams from the peer" in text
    assert "tunnel ssh: open TCP to [::1]:22 for streams from the peer" in text
    assert "0s" in text  # standby_socket_close_secs
    assert "window 65536 bytes" in text
    assert "100 streams per session" in text
    assert "level DEBUG" in text


def test_describe_client() -> None:
    config = parse_config(tomllib.loads(CLIENT_TOML.format(client_id=2)))
    text = describe_config(config)
    assert "role: client 2 (secondary)" in text
    assert "connect to wss://tunnel.example.com/tunnel" in text
    assert "tunnel web: accept TCP on 127.0.0.1:8080" in text
    assert "tunnel ssh: open TCP to 127.0.0.1:22" in text
    assert "level INFO" in text


# --- [logging] levels and format ------------------------------------------------------------


def test_logging_levels_and_format() -> None:
    text = (
        'role = "server"\n[websocket]\nurl = "ws://127.0.0.1:8080"\n[logging]\n'
        'levels = { "trio_tunnel.stream" = "warning", trio_websocket = "DEBUG" }\n'
        'format = "JSON"\n'
    )
    settings = parse_config(tomllib.loads(text)).logging
    assert dict(settings.levels) == {"trio_tunnel.stream": "WARNING", "trio_websocket": "DEBUG"}
    assert settings.levels["trio_tunnel.stream"] == "WARNING"
    assert settings.format == "json"
    # Frozen and hashable like the rest of the config, and equal to an equal plain dict.
    assert hash(settings) == hash(parse_config(tomllib.loads(text)).logging)
    assert settings.levels == {"trio_tunnel.stream": "WARNING", "trio_websocket": "DEBUG"}
    assert LoggingSettings(levels={"a": "info"}).levels == {"a": "INFO"}
    defaults = LoggingSettings()
    assert (dict(defaults.levels), defaults.format) == ({}, "text")
    assert "levels of single loggers: trio_tunnel.stream WARNING" in describe_config(
        parse_config(tomllib.loads(text))
    )


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ({"trio_tunnel.stream": "loud"}, "logging.levels.'trio_tunnel.stream': must be one of"),
        ({"trio_tunnel": {"stream": "INFO"}}, "logging.levels.trio_tunnel: expected a level"),
        ({"x": 10}, "logging.levels.x: expected a string (got the integer 10)"),
        ({"": "INFO"}, "logging.levels: expected a logger name"),
        ("INFO", "logging.levels: expected a table of logger name = level"),
    ],
)
def test_bad_logging_levels_name_the_logger(levels: object, expected: str) -> None:
    [line] = config_error(with_changes(SERVER, logging={"levels": levels})).splitlines()
    assert line.startswith(f"x.toml: {expected}"), line


def test_bad_logging_format() -> None:
    [line] = config_error(with_changes(SERVER, logging={"format": "xml"})).splitlines()
    assert line == "x.toml: logging.format: must be one of 'text', 'json' (got 'xml')"
    with pytest.raises(ConfigError, match=r"^format: expected a string"):
        LoggingSettings(format=1)  # type: ignore[arg-type]


# --- the load step: files, TLS, names (parsing itself does no I/O) --------------------------


def _server_with(tmp_path: Path, **ws: Any) -> dict[str, Any]:
    url = ws.pop("url", "ws://127.0.0.1:8080/")
    return {"role": "server", "websocket": {"url": url, **ws}}


def test_parsing_touches_no_file_and_resolves_no_name(tmp_path: Path) -> None:
    """What a config names is not looked at while parsing: only the load step reports it."""
    missing = str(tmp_path / "missing")
    data = _server_with(
        tmp_path, url="wss://127.0.0.1:8443/", tls_bundle=missing + ".pem", mutual_tls=True,
        trusted_ca=missing + "-ca.pem", auth_token_file=missing + ".token",
    )  # fmt: skip
    data["logging"] = {"file": str(tmp_path / "no-dir" / "t.log"), "syslog_host": "x.invalid"}
    config = parse_config(data, "s.toml")  # no ConfigError: each value is well-formed
    with pytest.raises(ConfigLoadError) as info:
        load_environment(config, "s.toml")
    assert [line.split(": ")[1] for line in str(info.value).splitlines()] == [
        "websocket.tls_bundle",
        "websocket.trusted_ca",
        "websocket.auth_token_file",
        "logging.file",
        "logging.syslog_host",
    ]
    assert isinstance(info.value, ConfigError)  # `except ConfigError` still catches it
    # A config built in Python gets paths from the Config down, without a file name.
    with pytest.raises(ConfigLoadError, match=r"^websocket\.tls_bundle: cannot read"):
        load_environment(config)


def test_well_formed_file_names_are_still_checked_when_parsing() -> None:
    for value, expected in ((1, "expected a string"), ("", "expected a file name")):
        message = config_error(with_changes(SERVER, websocket={"auth_token_file": value}))
        assert f"x.toml: websocket.auth_token_file: {expected}" in message


def test_environment_holds_the_token_and_tls_context(tmp_path: Path) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    bundle = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(bundle))
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    token.chmod(0o600)
    data = _server_with(
        tmp_path, url="wss://127.0.0.1:8443/", tls_bundle=str(bundle),
        auth_token_file=str(token),
    )  # fmt: skip
    environment = load_environment(parse_config(data))
    assert isinstance(environment.ssl_context, ssl.SSLContext)
    assert environment.auth_token == b"0123456789abcdef-token"
    assert environment.warnings == ()
    plain = load_environment(parse_config(MINIMAL_CLIENT))
    assert (plain.ssl_context, plain.auth_token, plain.warnings) == (None, None, ())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize(("mode", "who"), [(0o640, "its group"), (0o604, "others"),
                                            (0o644, "its group and others")])  # fmt: skip
def test_a_token_file_others_may_read_is_warned_about(tmp_path: Path, mode: int, who: str) -> None:
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    token.chmod(mode)
    environment = load_environment(
        parse_config(_server_with(tmp_path, auth_token_file=str(token))), "s.toml"
    )
    assert environment.warnings == (
        f"s.toml: websocket.auth_token_file: {str(token)!r} holds a secret but is open to {who}"
        f" (mode {mode:04o}): chmod 600 {token}",
    )
    assert environment.auth_token == b"0123456789abcdef-token"  # a warning, not an error


async def test_a_python_built_config_gets_the_load_step_when_the_server_starts(
    tmp_path: Path,
) -> None:
    import trio_tunnel as tt

    ws = WebSocketSettings(url="ws://127.0.0.1:0/", auth_token_file=str(tmp_path / "none"))
    config = Config(role="server", websocket=ws)  # pure: nothing read yet
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(ConfigLoadError, match=r"^websocket\.auth_token_file: cannot read"),
            flatten_subgroups=True,
        ),
    ):
        async with tt.open_server(config):
            pass  # pragma: no cover - it does not start
    client = Config(role="client", client_id=1, websocket=attrs.evolve(ws, url="ws://h:1/"))
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(ConfigLoadError, match=r"^websocket\.auth_token_file: cannot read"),
            flatten_subgroups=True,
        ),
    ):
        async with tt.open_client(client):
            pass  # pragma: no cover - it does not start


# --- trio-tunnel check and run: exit statuses ------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_check_exits_2_for_the_config_and_1_for_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, 'role = "server"\n[websocket]\nurl = "ws://h"\nbogus = 1\n', "bad.toml")
    status, _, err = _cli(capsys, "check", str(bad))
    assert (status, err) == (2, f"trio-tunnel: {bad}: websocket.bogus: unknown key\n")
    text = f'role = "server"\n[websocket]\nurl = "ws://h"\nauth_token_file = "{tmp_path}/x"\n'
    missing = write(tmp_path, text, "missing.toml")
    status, out, err = _cli(capsys, "check", str(missing))
    assert status == 1
    assert err.startswith(f"trio-tunnel: {missing}: websocket.auth_token_file: cannot read")
    assert out == ""
    assert _cli(capsys, "check", str(tmp_path / "none.toml"))[0] == 2  # the config itself
    assert _cli(capsys, "run", str(missing))[0] == 1  # run does both steps before starting
    assert _cli(capsys, "run", str(bad))[0] == 2


def test_check_prints_the_token_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    token.chmod(0o644)
    path = write(
        tmp_path, SERVER_TOML.replace("[failover]", f'auth_token_file = "{token}"\n[failover]')
    )
    status, out, err = _cli(capsys, "check", str(path))
    assert status == 0
    assert out.startswith(f"{path}: OK\n")
    assert "shared token from" in out
    assert err == (
        f"trio-tunnel: warning: {path}: websocket.auth_token_file: {str(token)!r} holds a"
        f" secret but is open to its group and others (mode 0644): chmod 600 {token}\n"
    )


def _busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("which", ["websocket", "metrics"])
async def test_run_names_a_busy_port_and_exits_1(tmp_path: Path, which: str) -> None:
    """A real process: the exit status and the one line systemd's journal shows. The metrics
    port is bound before the tunnel says it is listening, so nothing claims to listen."""
    busy, port = _busy_port()
    with busy:
        ws_port, metrics_port = (port, 0) if which == "websocket" else (0, port)
        path = write(
            tmp_path,
            f'role = "server"\n[websocket]\nurl = "ws://127.0.0.1:{ws_port}/"\n'
            f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
        )
        with trio.fail_after(60):
            result = await trio.run_process(
                [sys.executable, "-m", "trio_tunnel", "run", str(path)],
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 1, output
    key = "websocket.url" if which == "websocket" else "metrics.listen"
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    assert f"cannot start: {key}: cannot listen on 127.0.0.1:{port}: " in line
    assert "listening" not in output


# --- trio-tunnel check with a server's and its clients' files --------------------------------

TOGETHER_SERVER = """
role = "server"
[websocket]
url = "ws://0.0.0.0:8080/tunnel"
{server_ws}
[[listen]]
tunnel = "ssh"
port = 2222
[[connect]]
tunnel = "web"
host = "127.0.0.1"
port = 8000
"""

TOGETHER_CLIENT = """
role = "client"
client_id = {client_id}
[websocket]
url = "{url}"
{client_ws}
[[connect]]
tunnel = "ssh"
host = "127.0.0.1"
port = 22
[[listen]]
tunnel = "web"
port = {web_port}
"""


def _deployment(
    server_ws: str = "",
    client_ws: str = "",
    url: str = "ws://10.0.0.1:8080/tunnel",
    ids: tuple[int, int] = (1, 2),
    client2: str | None = None,
    scheme: str = "ws",
) -> list[Member]:
    text = TOGETHER_SERVER.format(server_ws=server_ws).replace("ws://", f"{scheme}://")
    server = parse_config(tomllib.loads(text))
    members = [Member("server.toml", server)]
    for index, client_id in enumerate(ids, 1):
        text = TOGETHER_CLIENT.format(
            client_id=client_id, url=url, client_ws=client_ws, web_port=8080 + index
        )
        if index == 2 and client2 is not None:
            text = client2
        members.append(Member(f"client{index}.toml", parse_config(tomllib.loads(text))))
    return members


def test_a_matching_server_and_clients_pass_together() -> None:
    assert check_together(_deployment()) == []
    # A wildcard bind is reached through any address of its family, and names are not
    # resolved (no DNS in a pure check).
    assert check_together(_deployment(url="ws://tunnel.example:8080/tunnel?x=1")) == []


TOGETHER_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("same id", {"ids": (1, 1)},
     "client2.toml: client_id: client 1 is also client1.toml's client_id"),
    ("port", {"url": "ws://10.0.0.1:8081/tunnel"},
     "client1.toml: websocket.url: port 8081 does not reach server.toml's websocket.url"
     " (ws://0.0.0.0:8080/tunnel), port 8080"),
    ("path", {"url": "ws://10.0.0.1:8080/"},
     "client1.toml: websocket.url: path '/' is not the path of server.toml's websocket.url"),
    ("scheme", {"url": "wss://10.0.0.1:8080/tunnel"},
     "client1.toml: websocket.url: uses wss:// but server.toml's websocket.url"),
    ("family", {"url": "ws://[::1]:8080/tunnel"},
     "client1.toml: websocket.url: host ::1 does not reach server.toml's websocket.url"),
    ("token here", {"client_ws": 'auth_token_file = "t"'},
     "client1.toml: websocket.auth_token_file: set, but server.toml checks no token"),
    ("token there", {"server_ws": 'auth_token_file = "t"'},
     "client1.toml: websocket.auth_token_file: server.toml requires a token"),
    ("no connect",
     {"client2": TOGETHER_CLIENT.format(client_id=2, url="ws://10.0.0.1:8080/tunnel",
                                        client_ws="", web_port=8082).replace('"ssh"', '"db"')},
     "server.toml: listen[0].tunnel: tunnel 'ssh' has no [[connect]] entry in client2.toml"),
    ("no server connect",
     {"client2": TOGETHER_CLIENT.format(client_id=2, url="ws://10.0.0.1:8080/tunnel",
                                        client_ws="", web_port=8082).replace('"web"', '"www"')},
     "client2.toml: listen[0].tunnel: tunnel 'www' has no [[connect]] entry in server.toml"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "expected"),
    [case[1:] for case in TOGETHER_CASES],
    ids=[case[0] for case in TOGETHER_CASES],
)
def test_files_that_cannot_work_together(changes: dict[str, Any], expected: str) -> None:
    problems = check_together(_deployment(**changes))
    assert any(problem.startswith(expected) for problem in problems), problems
    # Each problem is reported once per client it concerns, never more.
    assert len(problems) == len(set(problems))


def test_mutual_tls_without_a_client_certificate() -> None:
    server_ws = 'tls_bundle = "s.pem"\nmutual_tls = true\ntrusted_ca = "ca.pem"'
    problems = check_together(
        _deployment(server_ws=server_ws, url="wss://10.0.0.1:8080/tunnel", scheme="wss")
    )
    assert problems == [
        f"client{n}.toml: websocket.mutual_tls: server.toml requires client certificates"
        " (mutual_tls = true), but this client presents none: set mutual_tls = true and"
        " tls_bundle"
        for n in (1, 2)
    ]


def test_different_tokens_are_found_once_loaded() -> None:
    members = _deployment(server_ws='auth_token_file = "s"', client_ws='auth_token_file = "c"')
    assert check_together(members) == []  # not loaded: nothing to compare
    tokens = [b"0123456789abcdef", b"0123456789abcdef", b"0123456789abcdeX"]
    loaded = [
        attrs.evolve(m, environment=Environment(auth_token=token))
        for m, token in zip(members, tokens, strict=True)
    ]
    assert check_together(loaded) == [
        "client2.toml: websocket.auth_token_file: the token in 'c' is not the one in"
        " server.toml's 's': the server answers 403"
    ]


def test_check_with_several_files_exits_2_naming_file_key_and_tunnel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = write(tmp_path, TOGETHER_SERVER.format(server_ws=""), "server.toml")
    clients = [
        write(
            tmp_path,
            TOGETHER_CLIENT.format(
                client_id=n, url="ws://127.0.0.1:8080/tunnel", client_ws="", web_port=8080 + n
            ),
            f"client{n}.toml",
        )
        for n in (1, 2)
    ]
    status, out, err = _cli(capsys, "check", str(server), *map(str, clients))
    assert (status, err) == (0, "")
    assert out.endswith("together: OK (3 files agree)\n")
    assert f"{clients[1]}: OK" in out
    clients[1].write_text(clients[1].read_text().replace('"ssh"', '"db"'))
    status, out, err = _cli(capsys, "check", str(server), *map(str, clients))
    assert status == 2
    assert out == ""
    assert err == (
        f"trio-tunnel: {server}: listen[0].tunnel: tunnel 'ssh' has no [[connect]] entry in"
        f" {clients[1]}: every connection to it would be refused\n"
    )
    # A file that fails on its own is reported as with one file, and stops the cross-check.
    clients[0].write_text("role = 1\n")
    status, _, err = _cli(capsys, "check", str(server), *map(str, clients))
    assert status == 2
    assert f"{clients[0]}: role: expected a string" in err
    assert "[[connect]]" not in err


def test_the_parsing_modules_import_nothing_that_does_io() -> None:
    """Only the load step may read files, resolve names or load TLS material."""
    import ast
    import importlib

    for name in ("_checks", "_schema", "_convert", "_describe", "_together"):
        module = importlib.import_module(f"trio_tunnel._config.{name}")
        assert module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for block in ast.walk(tree):  # imports for type hints only are never run
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING":
                block.body = []
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported |= {alias.name for alias in node.names if node.level == 2}
        assert not imported & {"os", "socket", "ssl", "_tls", "_load", "pathlib"}, name


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
async def test_the_token_warning_is_logged_when_the_server_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import trio_tunnel as tt

    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    token.chmod(0o640)
    ws = WebSocketSettings(url="ws://127.0.0.1:0/", auth_token_file=str(token))
    with trio.fail_after(10):
        async with tt.open_server(Config(role="server", websocket=ws)):
            pass
    [record] = [r for r in caplog.records if "holds a secret" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("websocket.auth_token_file: ")


async def test_a_loaded_environment_is_used_as_given(tmp_path: Path) -> None:
    """What the caller loaded is what runs: the server does not read the files again."""
    import trio_tunnel as tt

    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    token.chmod(0o600)
    ws = WebSocketSettings(url="ws://127.0.0.1:0/", auth_token_file=str(token))
    config = Config(role="server", websocket=ws)
    environment = load_environment(config)
    token.unlink()  # gone now: only the loaded environment still has the token
    with trio.fail_after(10):
        async with tt.open_server(config, environment) as server:
            assert server.websocket_port > 0


def test_pins_that_do_not_match_what_the_other_side_presents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With mutual TLS and pinning, check loads the certificates and compares the pins."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def issue(name: str) -> tuple[Path, Path]:
        leaf = ca.issue_cert("127.0.0.1")
        bundle, cert = tmp_path / f"{name}.pem", tmp_path / f"{name}-cert.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(bundle))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        return bundle, cert

    (server_pem, server_cert), (c1_pem, c1_cert), (c2_pem, _) = map(issue, ("s", "c1", "c2"))
    tls = f'tls_bundle = "{{bundle}}"\nmutual_tls = true\ntrusted_ca = "{ca_file}"\n'
    server_ws = tls.format(bundle=server_pem) + f'trusted_peers = "{c1_cert}"'
    server = write(
        tmp_path,
        TOGETHER_SERVER.format(server_ws=server_ws).replace("ws://", "wss://"),
        "server.toml",
    )

    def client(n: int, bundle: Path, pinned: Path) -> Path:
        client_ws = tls.format(bundle=bundle) + f'trusted_peers = "{pinned}"'
        text = TOGETHER_CLIENT.format(
            client_id=n, url="wss://127.0.0.1:8080/tunnel", client_ws=client_ws, web_port=8080 + n
        )
        return write(tmp_path, text, f"client{n}.toml")

    # Client 1 is pinned by the server and pins it; client 2 neither.
    files = [server, client(1, c1_pem, server_cert), client(2, c2_pem, c1_cert)]
    status, _, err = _cli(capsys, "check", *map(str, files))
    assert status == 2
    assert [line.split(": ")[1:3] for line in err.splitlines()] == [
        [str(files[2]), "websocket.tls_bundle"],
        [str(files[2]), "websocket.trusted_peers"],
    ]
    assert "the server refuses this client's TLS handshake" in err
    assert "this client refuses the server's TLS handshake" in err


def test_cross_file_rules_still_run_when_a_file_names_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server_ws = f'auth_token_file = "{tmp_path}/missing.token"'
    server = write(tmp_path, TOGETHER_SERVER.format(server_ws=server_ws), "server.toml")
    client = TOGETHER_CLIENT.format(
        client_id=1, url="ws://127.0.0.1:8080/tunnel", client_ws="", web_port=8081
    )
    client1 = write(tmp_path, client, "client1.toml")
    status, out, err = _cli(capsys, "check", str(server), str(client1))
    assert status == 2  # the config problem decides: a restart cannot fix it
    lines = err.splitlines()
    assert lines[0].startswith(f"trio-tunnel: {server}: websocket.auth_token_file: cannot read")
    assert lines[1].startswith(
        f"trio-tunnel: {client1}: websocket.auth_token_file: {server} requires a token"
    )
    assert out == ""
    # With the environment the only problem, the status is 1.
    (tmp_path / "t").write_text("0123456789abcdef-token\n")
    (tmp_path / "t").chmod(0o600)
    write(
        tmp_path, client.replace("[[connect]]", 'auth_token_file = "t"\n[[connect]]', 1), "c.toml"
    )
    status, _, err = _cli(capsys, "check", str(server), str(tmp_path / "c.toml"))
    assert (status, len(err.splitlines())) == (1, 1)
