"""``trio-tunnel import-json``: tcp-over-websocket config.json files carried over to TOML.

The three configs below are shaped exactly like the examples in tcp-over-websocket's README
(client 1, client 2, server). Every converted config is written to a file and loaded with
``load_config``, i.e. it must pass ``trio-tunnel check``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from hypothesis import given
from hypothesis import strategies as st

import trio_tunnel as tt
from trio_tunnel._cli import main
from trio_tunnel._migrate import OLD_LOG_FILE, convert, read_json_config, to_toml

from .helpers import (
    LOCALHOST,
    client_config,
    echo_handler,
    free_port,
    open_rig,
    read_to_end,
    server_config,
    start_service,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

OLD_PATHS = "/Users/jchesney/Downloads/tcp_svr"

README_CLIENT_1: dict[str, Any] = {
    "dataExchange": {
        "enableMutualTLS": False,
        "mutualTLSTrustedCACertificateBundleFilePath": f"{OLD_PATHS}/trusted-ca.pem",
        "mutualTLSTrustedPeerCertificateBundleFilePath": f"{OLD_PATHS}/certs-of-peers.pem",
        "serverUrl": "http://localhost:8080",
        "tlsBundleFilePath": f"{OLD_PATHS}/key-cert-ca-root-chain.pem",
    },
    "logging": {
        "daysToKeep": 14,
        "level": "DEBUG",
        "logToStdout": True,
        "syslog": {"logToSysloyHost": None},
    },
    "tcpTunnelConnects": [
        {"connectToHost": "search.brave.com", "connectToPort": 80, "tunnelName": "brave"},
        {"connectToHost": "127.0.0.1", "connectToPort": 22, "tunnelName": "test_ssh"},
    ],
    "tcpTunnelListens": [
        {"listenBindAddress": "127.0.0.1", "listenPort": 8091, "tunnelName": "duckduckgo"}
    ],
    "weAreServer": False,
    "clientId": 1,
}

README_CLIENT_2: dict[str, Any] = {
    "dataExchange": {"serverUrl": "http://localhost:8080"},
    "tcpTunnelListens": [
        {"listenBindAddress": "127.0.0.1", "listenPort": 8094, "tunnelName": "duckduckgo"}
    ],
    "weAreServer": False,
    "clientId": 2,
}

README_SERVER: dict[str, Any] = {
    "dataExchange": {
        "enableMutualTLS": False,
        "mutualTLSTrustedCACertificateBundleFilePath": f"{OLD_PATHS}/trusted-ca.pem",
        "mutualTLSTrustedPeerCertificateBundleFilePath": f"{OLD_PATHS}/certs-of-peers.pem",
        "serverUrl": "http://localhost:8080",
        "tlsBundleFilePath": f"{OLD_PATHS}/key-cert-ca-root-chain.pem",
    },
    "logging": {
        "daysToKeep": 14,
        "level": "DEBUG",
        "logToStdout": True,
        "syslog": {"logToSysloyHost": None},
    },
    "tcpTunnelConnects": [
        {"connectToHost": "duckduckgo.com", "connectToPort": 80, "tunnelName": "duckduckgo"}
    ],
    "tcpTunnelListens": [
        {"listenBindAddress": "127.0.0.1", "listenPort": 8092, "tunnelName": "brave"},
        {"listenBindAddress": "127.0.0.1", "listenPort": 8022, "tunnelName": "test_ssh"},
    ],
    "weAreServer": True,
}


def write_json(home: Path, data: object) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.json"
    path.write_text(json.dumps(data, indent=4), encoding="utf-8")
    return path


def import_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``trio-tunnel import-json ARGV``: (exit status, stdout, stderr)."""
    status = main(["import-json", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def converted(
    capsys: pytest.CaptureFixture[str], home: Path, data: object, *extra: str
) -> tuple[tt.Config, str]:
    """Convert ``data`` through the CLI, save the TOML beside it, load it: (config, stderr)."""
    status, out, err = import_json(capsys, str(write_json(home, data)), *extra)
    assert status == 0, err
    toml_path = home / "config.toml"
    toml_path.write_text(out, encoding="utf-8")
    return tt.load_config(toml_path), err


# --- the README's three configs --------------------------------------------------------------


def test_readme_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config, err = converted(capsys, tmp_path / "server", README_SERVER)
    assert config.role == "server"
    assert config.client_id is None
    # The old server listened on every IPv4 interface whatever host the URL named.
    assert config.websocket.url == "ws://0.0.0.0:8080/"
    assert [(e.tunnel, e.bind, e.port) for e in config.listen] == [
        ("brave", "127.0.0.1", 8092),
        ("test_ssh", "127.0.0.1", 8022),
    ]
    assert [(c.tunnel, c.host, c.port) for c in config.connect] == [
        ("duckduckgo", "duckduckgo.com", 80)
    ]
    # TLS files with an http:// URL were ignored: left out, with a note.
    assert config.websocket.tls_bundle is None
    assert config.websocket.trusted_ca is None
    assert "left out" in err
    assert "0.0.0.0" in err
    assert config.logging.level == "DEBUG"
    assert config.logging.stdout is True
    assert config.logging.file == str(tmp_path / "server" / OLD_LOG_FILE)
    assert config.logging.days_to_keep == 14
    assert config.logging.syslog_host is None


def test_readme_client_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config, _ = converted(capsys, tmp_path / "c1", README_CLIENT_1)
    assert (config.role, config.client_id) == ("client", 1)
    assert config.websocket.url == "ws://localhost:8080/"
    assert [(c.tunnel, c.host, c.port) for c in config.connect] == [
        ("brave", "search.brave.com", 80),
        ("test_ssh", "127.0.0.1", 22),
    ]
    assert [(e.tunnel, e.bind, e.port) for e in config.listen] == [
        ("duckduckgo", "127.0.0.1", 8091)
    ]
    assert config.websocket.tls_bundle is None
    assert config.websocket.mutual_tls is False
    assert config.logging.level == "DEBUG"


def test_readme_client_2_takes_the_old_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, err = converted(capsys, tmp_path / "c2", README_CLIENT_2)
    assert (config.role, config.client_id) == ("client", 2)
    assert [(e.tunnel, e.bind, e.port) for e in config.listen] == [
        ("duckduckgo", "127.0.0.1", 8094)
    ]
    assert config.connect == ()
    # tcp-over-websocket's defaults: INFO, no stdout (as a service), its log file, 14 days.
    assert config.logging.level == "INFO"
    assert config.logging.stdout is False
    assert config.logging.file == str(tmp_path / "c2" / OLD_LOG_FILE)
    assert config.logging.days_to_keep == 14
    # Only the note every conversion gets: the log lines look different now.
    assert err.splitlines() == [line for line in err.splitlines() if "line format changed" in line]
    assert len(err.splitlines()) == 1


def test_check_and_run_accept_the_old_home_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """import-json DIR reads DIR/config.json; its output saved as DIR/config.toml passes
    ``trio-tunnel check DIR`` (the form ``trio-tunnel run DIR`` takes too)."""
    home = tmp_path / "tcp-over-websocket.home"
    write_json(home, README_CLIENT_2)
    status, out, _ = import_json(capsys, str(home))
    assert status == 0
    (home / "config.toml").write_text(out, encoding="utf-8")
    assert main(["check", str(home)]) == 0
    assert "role: client 2 (secondary)" in capsys.readouterr().out


async def test_converted_server_and_client_carry_traffic(tmp_path: Path) -> None:
    """README-shaped configs on free ports: the converted pair tunnels an echo both ways."""
    ws_port, server_listen, client_listen = free_port(), free_port(), free_port()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo_port = await start_service(nursery, echo_handler)
            server_json = copy.deepcopy(README_SERVER)
            server_json["dataExchange"]["serverUrl"] = f"http://localhost:{ws_port}"
            server_json["tcpTunnelListens"] = [
                {"listenBindAddress": LOCALHOST, "listenPort": server_listen, "tunnelName": "a"}
            ]
            server_json["tcpTunnelConnects"] = [
                {"connectToHost": LOCALHOST, "connectToPort": echo_port, "tunnelName": "b"}
            ]
            client_json = copy.deepcopy(README_CLIENT_1)
            client_json["dataExchange"]["serverUrl"] = f"http://127.0.0.1:{ws_port}"
            client_json["tcpTunnelConnects"] = [
                {"connectToHost": LOCALHOST, "connectToPort": echo_port, "tunnelName": "a"}
            ]
            client_json["tcpTunnelListens"] = [
                {"listenBindAddress": LOCALHOST, "listenPort": client_listen, "tunnelName": "b"}
            ]
            configs = []
            for name, data in (("server", server_json), ("client", client_json)):
                conversion = convert(data, home=str(tmp_path / name), source=name)
                if name == "server":  # tests bind 127.0.0.1 only (the old server bound all)
                    conversion.data["websocket"]["url"] = f"ws://127.0.0.1:{ws_port}/"
                (tmp_path / name).mkdir()
                path = tmp_path / name / "config.toml"
                path.write_text(to_toml(conversion.data), encoding="utf-8")
                configs.append(tt.load_config(path))
            server_config, client_config = configs
            async with tt.open_server(server_config), tt.open_client(client_config) as client:
                await client.wait_for("active")
                await client.wait_for("listening")
                for port in (server_listen, client_listen):
                    tcp = await trio.open_tcp_stream(LOCALHOST, port)
                    await tcp.send_all(b"through the tunnel %d" % port)
                    await tcp.send_eof()
                    assert await read_to_end(tcp) == (b"through the tunnel %d" % port, "eof")
                    await tcp.aclose()
            nursery.cancel_scope.cancel()


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files as tcp-over-websocket's README describes them, from one trustme CA."""
    directory = tmp_path_factory.mktemp("old-pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client-1.example")

    def write(name: str, *blobs: trustme.Blob) -> Path:
        path = directory / name
        path.write_bytes(b"".join(blob.bytes() for blob in blobs))
        return path

    return {
        "server_bundle": write("server.pem", server.private_key_pem, *server.cert_chain_pems),
        "client_bundle": write("client.pem", client.private_key_pem, *client.cert_chain_pems),
        "ca": write("trusted-ca.pem", ca.cert_pem),
        "client_cert": write("client-cert.pem", client.cert_chain_pems[0]),
        "server_cert": write("server-cert.pem", server.cert_chain_pems[0]),
    }


def _with_exchange(base: dict[str, Any], **exchange: object) -> dict[str, Any]:
    data = copy.deepcopy(base)
    data["dataExchange"] = {"serverUrl": "https://localhost:8443", **exchange}
    return data


def test_https_server_with_mutual_tls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: dict[str, Path]
) -> None:
    data = _with_exchange(
        README_SERVER,
        enableMutualTLS=True,
        tlsBundleFilePath=str(pki["server_bundle"]),
        mutualTLSTrustedCACertificateBundleFilePath=str(pki["ca"]),
        mutualTLSTrustedPeerCertificateBundleFilePath=str(pki["client_cert"]),
    )
    config, _ = converted(capsys, tmp_path, data)
    ws = config.websocket
    assert ws.url == "wss://0.0.0.0:8443/"
    assert ws.mutual_tls is True
    assert (ws.tls_bundle, ws.trusted_ca, ws.trusted_peers) == (
        str(pki["server_bundle"]),
        str(pki["ca"]),
        str(pki["client_cert"]),
    )


def test_https_client_with_mutual_tls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: dict[str, Path]
) -> None:
    data = _with_exchange(
        README_CLIENT_1,
        enableMutualTLS=True,
        tlsBundleFilePath=str(pki["client_bundle"]),
        mutualTLSTrustedCACertificateBundleFilePath=str(pki["ca"]),
        mutualTLSTrustedPeerCertificateBundleFilePath=str(pki["server_cert"]),
    )
    config, err = converted(capsys, tmp_path, data)
    ws = config.websocket
    assert ws.url == "wss://localhost:8443/"
    assert ws.mutual_tls is True
    assert (ws.tls_bundle, ws.trusted_ca, ws.trusted_peers) == (
        str(pki["client_bundle"]),
        str(pki["ca"]),
        str(pki["server_cert"]),
    )
    assert "warning" not in err


def test_https_server_uses_the_old_default_file_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: dict[str, Path]
) -> None:
    """Without the keys, tcp-over-websocket read key-cert-ca-root-chain.pem etc. in its home."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "key-cert-ca-root-chain.pem").write_bytes(pki["server_bundle"].read_bytes())
    (home / "trusted-ca-chain.pem").write_bytes(pki["ca"].read_bytes())
    data = _with_exchange(README_SERVER, enableMutualTLS=True)
    config, _ = converted(capsys, home, data)
    assert config.websocket.tls_bundle == str(home / "key-cert-ca-root-chain.pem")
    assert config.websocket.trusted_ca == str(home / "trusted-ca-chain.pem")
    assert config.websocket.trusted_peers is None  # certs-of-peers.pem is not there


def test_https_client_without_mutual_tls_leaves_files_out_and_warns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: dict[str, Path]
) -> None:
    data = _with_exchange(
        README_CLIENT_2,
        tlsBundleFilePath=str(pki["client_bundle"]),
        mutualTLSTrustedCACertificateBundleFilePath=str(pki["ca"]),
    )
    config, err = converted(capsys, tmp_path, data)
    ws = config.websocket
    assert ws.scheme == "wss"
    assert (ws.tls_bundle, ws.trusted_ca, ws.trusted_peers, ws.mutual_tls) == (
        None,
        None,
        None,
        False,
    )
    assert "did not verify the server's certificate" in err
    assert str(pki["ca"]) in err  # suggested as websocket.trusted_ca


def test_relative_tls_paths_are_taken_from_the_home_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: dict[str, Path]
) -> None:
    home = tmp_path / "home"
    (home / "certs").mkdir(parents=True)
    (home / "certs" / "server.pem").write_bytes(pki["server_bundle"].read_bytes())
    data = _with_exchange(README_SERVER, tlsBundleFilePath="certs/server.pem")
    config, err = converted(capsys, home, data)
    assert config.websocket.tls_bundle == str(home / "certs" / "server.pem")
    assert "relative path 'certs/server.pem'" in err


def test_missing_tls_file_prints_the_toml_but_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _with_exchange(README_SERVER, tlsBundleFilePath=str(tmp_path / "nowhere.pem"))
    status, out, err = import_json(capsys, str(write_json(tmp_path, data)))
    assert status == 1
    assert "tls_bundle = " in out
    assert "does not pass `trio-tunnel check`" in err
    assert "websocket.tls_bundle: cannot read" in err


def test_home_option_moves_defaults_and_log_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "old-home"
    elsewhere.mkdir()
    status, out, _ = import_json(
        capsys, str(write_json(tmp_path / "copy", README_CLIENT_2)), "--home", str(elsewhere)
    )
    assert status == 0
    assert tomllib.loads(out)["logging"]["file"] == str(elsewhere / OLD_LOG_FILE)


# --- other keys ----------------------------------------------------------------------------


def test_failover_syslog_and_levels(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = copy.deepcopy(README_CLIENT_1)
    data["standbySocketCloseDurationSecs"] = 30
    data["logging"] = {
        "level": "WARN",
        "daysToKeep": 3,
        "logToStdout": False,
        "syslog": {
            "logToSysloyHost": "127.0.0.1",
            "logToSysloyPort": 5514,
            "logToSysloyProtocol": "local3",
        },
    }
    config, _ = converted(capsys, tmp_path, data)
    assert config.failover.standby_socket_close_secs == 30
    assert config.logging.level == "WARNING"
    assert config.logging.days_to_keep == 3
    assert config.logging.stdout is False
    assert (
        config.logging.syslog_host,
        config.logging.syslog_port,
        config.logging.syslog_facility,
    ) == ("127.0.0.1", 5514, "local3")


def test_level_the_old_service_did_not_know_stays_info(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = copy.deepcopy(README_CLIENT_2)
    data["logging"] = {"level": "debug"}  # not a Python level name: it logged at INFO
    config, err = converted(capsys, tmp_path, data)
    assert config.logging.level == "INFO"
    assert "logging.level" in err


def test_server_client_id_is_dropped_and_client_id_defaults_to_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = copy.deepcopy(README_SERVER)
    server["clientId"] = 1  # tcp-over-websocket writes its defaults into every file
    config, _ = converted(capsys, tmp_path / "server", server)
    assert config.client_id is None
    client = copy.deepcopy(README_CLIENT_2)
    del client["clientId"]
    config, err = converted(capsys, tmp_path / "client", client)
    assert config.client_id == 1
    assert "clientId" in err


def test_bind_address_missing_or_empty(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = copy.deepcopy(README_CLIENT_2)
    data["tcpTunnelListens"] = [
        {"listenPort": 8094, "tunnelName": "a"},
        {"listenBindAddress": "", "listenPort": 8095, "tunnelName": "b"},
    ]
    config, err = converted(capsys, tmp_path, data)
    assert [(e.tunnel, e.bind) for e in config.listen] == [("a", "127.0.0.1"), ("b", "0.0.0.0")]
    assert "tcpTunnelListens[0].listenBindAddress: not set" in err


def test_tunnel_names_are_made_valid_the_same_way_everywhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    long_name = "x" * 80
    client = copy.deepcopy(README_CLIENT_2)
    client["tcpTunnelListens"] = [
        {"listenBindAddress": "127.0.0.1", "listenPort": 8094, "tunnelName": "my tunnel/1"},
        {"listenBindAddress": "127.0.0.1", "listenPort": 8095, "tunnelName": "_private"},
        {"listenBindAddress": "127.0.0.1", "listenPort": 8096, "tunnelName": long_name},
    ]
    server = copy.deepcopy(README_SERVER)
    server["tcpTunnelListens"] = []
    server["tcpTunnelConnects"] = [
        {"connectToHost": "h", "connectToPort": 1, "tunnelName": entry["tunnelName"]}
        for entry in client["tcpTunnelListens"]
    ]
    client_config, err = converted(capsys, tmp_path / "client", client)
    server_config, _ = converted(capsys, tmp_path / "server", server)
    names = [entry.tunnel for entry in client_config.listen]
    assert names[:2] == ["my_tunnel_1", "t_private"]
    assert len(names[2]) == 64
    assert names == [target.tunnel for target in server_config.connect]
    assert "'my tunnel/1' is named 'my_tunnel_1'" in err


def test_unknown_keys_are_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = copy.deepcopy(README_CLIENT_2)
    data["surprise"] = 1
    data["logging"] = {"syslog": {"logToSyslogHost": "10.0.0.1"}, "rotateSizeMb": 5}
    config, err = converted(capsys, tmp_path, data)
    assert config.logging.syslog_host is None  # the old service never read that key
    assert "surprise: unknown key" in err
    assert "misspelt 'logToSysloyHost'" in err
    assert "rotateSizeMb" not in err  # an old version's key, which it deleted silently


def test_path_in_the_url_is_kept_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _with_exchange(README_CLIENT_2)
    data["dataExchange"]["serverUrl"] = "http://tunnel.example:80/ws"
    config, err = converted(capsys, tmp_path, data)
    assert config.websocket.url == "ws://tunnel.example:80/ws"
    assert "ignored the URL's path" in err


# --- input that tcp-over-websocket could not have run with: exit 2 --------------------------


def _without(data: dict[str, Any], *path: str | int) -> dict[str, Any]:
    data = copy.deepcopy(data)
    table: Any = data
    for key in path[:-1]:
        table = table[key]
    del table[path[-1]]
    return data


def _changed(data: dict[str, Any], value: object, *path: str | int) -> dict[str, Any]:
    data = copy.deepcopy(data)
    table: Any = data
    for key in path[:-1]:
        table = table[key]
    table[path[-1]] = value
    return data


BAD_INPUTS: list[tuple[str, object, str]] = [
    ("not an object", [1, 2], "expected an object (got an array)"),
    ("no serverUrl", _without(README_CLIENT_2, "dataExchange", "serverUrl"),
     "dataExchange.serverUrl: required key missing"),
    ("no dataExchange", _without(README_CLIENT_2, "dataExchange"),
     "dataExchange.serverUrl: required key missing"),
    ("dataExchange null", _changed(README_CLIENT_2, None, "dataExchange"),
     "dataExchange: expected an object (got null)"),
    ("no tunnelName", _without(README_SERVER, "tcpTunnelListens", 1, "tunnelName"),
     "tcpTunnelListens[1].tunnelName: required key missing"),
    ("no listenPort", _without(README_SERVER, "tcpTunnelListens", 0, "listenPort"),
     "tcpTunnelListens[0].listenPort: required key missing"),
    ("no connectToHost", _without(README_SERVER, "tcpTunnelConnects", 0, "connectToHost"),
     "tcpTunnelConnects[0].connectToHost: required key missing"),
    ("no connectToPort", _without(README_SERVER, "tcpTunnelConnects", 0, "connectToPort"),
     "tcpTunnelConnects[0].connectToPort: required key missing"),
    ("port as text", _changed(README_SERVER, "8022", "tcpTunnelListens", 1, "listenPort"),
     "tcpTunnelListens[1].listenPort: expected an integer (got the string '8022')"),
    ("empty name", _changed(README_SERVER, "", "tcpTunnelListens", 0, "tunnelName"),
     "tcpTunnelListens[0].tunnelName: must not be empty"),
    ("listens not array", _changed(README_SERVER, {}, "tcpTunnelListens"),
     "tcpTunnelListens: expected an array (got an object)"),
    ("entry not object", _changed(README_SERVER, [8022], "tcpTunnelListens"),
     "tcpTunnelListens[0]: expected an object (got the number 8022)"),
    ("client 3", _changed(README_CLIENT_2, 3, "clientId"), "clientId: must be 1 or 2 (got 3)"),
    ("client id bool", _changed(README_CLIENT_2, True, "clientId"),
     "clientId: expected an integer (got true)"),
    ("server flag text", _changed(README_SERVER, "yes", "weAreServer"),
     "weAreServer: expected true or false (got the string 'yes')"),
    ("ftp url", _changed(README_CLIENT_2, "ftp://h:21", "dataExchange", "serverUrl"),
     "dataExchange.serverUrl: expected an http:// or https:// URL"),
    ("no port", _changed(README_CLIENT_2, "http://h", "dataExchange", "serverUrl"),
     "dataExchange.serverUrl: has no port"),
    ("bad port", _changed(README_CLIENT_2, "http://h:99999", "dataExchange", "serverUrl"),
     "dataExchange.serverUrl: not a valid URL"),
    ("mtls text", _changed(README_CLIENT_2, "true", "dataExchange", "enableMutualTLS"),
     "dataExchange.enableMutualTLS: expected true or false"),
    ("days text", _changed(README_CLIENT_1, "14", "logging", "daysToKeep"),
     "logging.daysToKeep: expected an integer"),
    ("syslog not object", _changed(README_CLIENT_1, "host", "logging", "syslog"),
     "logging.syslog: expected an object"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "expected"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: object, expected: str
) -> None:
    path = write_json(tmp_path, data)
    status, out, err = import_json(capsys, str(path))
    assert status == 2
    assert out == ""
    assert err.startswith(f"trio-tunnel: {path}: ")
    assert expected in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"weAreServer": true,', "not valid JSON: Expecting property name"),
        ("{}\n{}", "not valid JSON: Extra data (line 2, column 1)"),
        ('{"standbySocketCloseDurationSecs": NaN}', "not valid JSON: NaN is not a JSON number"),
        ("", "not valid JSON"),
    ],
)
def test_malformed_json_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    status, out, err = import_json(capsys, str(path))
    assert (status, out) == (2, "")
    assert f"{path}: {expected}" in err


def test_unreadable_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = import_json(capsys, str(tmp_path / "missing.json"))
    assert status == 2
    assert "missing.json: cannot read the file" in err
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    status, _, err = import_json(capsys, str(tmp_path / "latin1.json"))
    assert status == 2
    assert "not valid UTF-8" in err
    status, _, err = import_json(capsys, str(tmp_path))  # a directory without config.json
    assert status == 2
    assert "config.json: cannot read the file" in err


def test_lone_surrogate_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    data = _changed(README_SERVER, "\\ud800", "tcpTunnelConnects", 0, "connectToHost")
    path.write_text(json.dumps(data).replace("\\\\ud800", "\\ud800"), encoding="utf-8")
    _, old = read_json_config(path)
    with pytest.raises(tt.ConfigError, match="unpaired surrogate"):
        convert(old, home=str(tmp_path))


# --- the TOML writer ------------------------------------------------------------------------


@given(
    st.text(st.characters(exclude_categories=["Cs"])),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
def test_to_toml_round_trips(text: str, number: int, real: float, flag: bool) -> None:
    data = {
        "top": text,
        text or "k": number,
        "table": {"text": text, "real": real, "flag": flag},
        "rows": [{"a": text}, {"b": number}],
    }
    assert tomllib.loads(to_toml(data, ("a comment",))) == data


# --- migration notes ------------------------------------------------------------------------


def _notes(err: str) -> dict[str, str]:
    """The ``note:`` lines of import-json's stderr, by the key they start with."""
    prefix = "trio-tunnel: note: "
    notes = [line[len(prefix) :] for line in err.splitlines() if line.startswith(prefix)]
    return {note.split(":")[0]: note for note in notes}


def test_notes_for_a_client_close_period_debug_and_the_log_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = copy.deepcopy(README_CLIENT_1)  # DEBUG, as all of the old tool's configs
    data["standbySocketCloseDurationSecs"] = 30
    config, err = converted(capsys, tmp_path, data)
    notes = _notes(err)
    assert "a client's value is ignored" in notes["standbySocketCloseDurationSecs"]
    assert "the server's failover.standby_socket_close_secs governs" in err
    assert "trio-websocket's and wsproto's lines for every WebSocket message" in err
    assert 'levels = { "trio_tunnel.stream" = "DEBUG" }' in notes["logging.level"]
    assert "the line format changed" in notes["logging"]
    assert "close_server_listeners" not in err  # a server-only option
    assert config.logging.level == "DEBUG"  # carried over, as the note says


def test_server_conversion_offers_close_server_listeners(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = copy.deepcopy(README_SERVER)
    data["logging"]["level"] = "INFO"
    config, err = converted(capsys, tmp_path, data)
    assert "add close_server_listeners = true to [failover]" in _notes(err)["failover"]
    assert config.failover.close_server_listeners is False  # offered, not imposed
    assert "logging.level" not in _notes(err)  # INFO needs no note
    # The option it names is one the converted config accepts.
    text = to_toml({**convert(data, home=str(tmp_path)).data,
                    "failover": {"close_server_listeners": True}})  # fmt: skip
    assert tt.parse_config(tomllib.loads(text)).failover.close_server_listeners is True


async def _connects(port: int) -> bool:
    try:
        tcp = await trio.open_tcp_stream(LOCALHOST, port)
    except OSError:
        return False
    await tcp.aclose()
    return True


@pytest.mark.parametrize("close_server_listeners", [True, False])
async def test_close_server_listeners_closes_the_server_ports_for_the_close_period(
    nursery: trio.Nursery, close_server_listeners: bool
) -> None:
    """As tcp-over-websocket's server did: after a switch away from an active client, the
    server's own listen ports refuse connections for the close period, then serve the new
    active client. Off (the default), they stay open throughout."""
    echo = await start_service(nursery, echo_handler)
    failover = tt.FailoverSettings(
        standby_socket_close_secs=1, close_server_listeners=close_server_listeners
    )
    server = server_config(listen={"down": 0}, failover=failover)
    clients = [client_config(cid, 0, connect={"down": echo}) for cid in (1, 2)]
    with trio.fail_after(30):
        async with open_rig(server, clients) as rig:
            port = rig.server_port("down")
            assert rig.server.state.active == 1
            await rig.stop_client(1)
            await rig.server.wait_state(lambda state: state.active == 2)
            await trio.testing.wait_all_tasks_blocked()  # the listener tasks saw the close
            assert await _connects(port) is not close_server_listeners
            while not await _connects(port):
                await trio.sleep(0.05)
            assert rig.server_port("down") == port  # reopened on the same port
            async with await trio.open_tcp_stream(LOCALHOST, port) as tcp:
                await tcp.send_all(b"after")
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"after", "eof")
