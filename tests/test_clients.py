"""[clients.N]: each client id bound to its own credential (the config and load step)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs
import pytest
import trio

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

import trio_tunnel as tt
from trio_tunnel._config import load_config, load_environment, parse_config
from trio_tunnel._credentials import Credentials, Refused
from trio_tunnel._errors import ConfigError, ConfigLoadError

from .helpers import LOCALHOST, echo_handler, open_rig, start_service
from .test_tls import Pki, _echo_through, pki  # noqa: F401 - pki is the fixture

SERVER = """role = "server"
[websocket]
url = "ws://127.0.0.1:8080/"
"""


def tokens(tmp_path: Path, *values: str) -> list[Path]:
    paths = []
    for index, value in enumerate(values, 1):
        path = tmp_path / f"client{index}.token"
        path.write_text(value + "\n")
        path.chmod(0o600)
        paths.append(path)
    return paths


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "s.toml")
    return str(info.value)


def test_per_client_tokens_load_relative_to_the_file(tmp_path: Path) -> None:
    tokens(tmp_path, "a" * 32, "b" * 32)
    path = tmp_path / "s.toml"
    path.write_text(
        SERVER + '[clients.1]\nauth_token_file = "client1.token"\n'
        '[clients.2]\nauth_token_file = "client2.token"\n'
    )
    config = load_config(path)
    assert [c.client_id for c in config.clients] == [1, 2]
    credentials = config.credentials_of(2)
    assert credentials is not None and credentials.auth_token_file == str(
        tmp_path / "client2.token"
    )
    environment = load_environment(config, "s.toml")
    assert environment.token_owner(b"a" * 32) == 1
    assert environment.token_owner(b"b" * 32) == 2
    assert environment.token_owner(b"c" * 32) is None
    assert environment.warnings == ()


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ('[clients.3]\nauth_token_file = "t"\n', "s.toml: clients.3: unknown client id"),
        ("[clients.1]\n", "s.toml: clients.1: give auth_token_file, certificate, or both"),
        (
            '[clients.1]\nauth_token_file = "t"\n',
            "s.toml: clients.2.auth_token_file: required: clients.1.auth_token_file is given",
        ),
        (
            '[clients.1]\ncertificate = "c"\n[clients.2]\ncertificate = "d"\n',
            "s.toml: clients.1.certificate: needs mutual_tls = true on a wss:// url",
        ),
        ('[clients.1]\nauth_token_file = "t"\nbogus = 1\n', "s.toml: clients.1.bogus: unknown key"),
    ],
)
def test_bad_clients_tables_name_the_key(tables: str, expected: str) -> None:
    assert expected in problem(SERVER + tables)
    assert "s.toml: clients: expected a table" in problem("clients = 3\n" + SERVER)


def test_a_shared_token_cannot_be_combined_with_per_client_tokens() -> None:
    text = SERVER.replace("[websocket]\n", '[websocket]\nauth_token_file = "shared"\n')
    text += '[clients.1]\nauth_token_file = "a"\n[clients.2]\nauth_token_file = "b"\n'
    assert "s.toml: websocket.auth_token_file: a shared token cannot be combined" in problem(text)


def test_only_a_server_has_clients_tables() -> None:
    text = 'role = "client"\nclient_id = 1\n[websocket]\nurl = "ws://127.0.0.1:8080/"\n'
    text += '[clients.1]\nauth_token_file = "a"\n'
    assert "s.toml: clients: only a server has [clients.N] tables" in problem(text)


def test_the_load_step_refuses_one_token_for_both_and_warns_of_loose_modes(
    tmp_path: Path,
) -> None:
    first, second = tokens(tmp_path, "s" * 32, "s" * 32)
    text = SERVER + f'[clients.1]\nauth_token_file = "{first}"\n'
    text += f'[clients.2]\nauth_token_file = "{second}"\n'
    config = parse_config(tomllib.loads(text), "s.toml")
    with pytest.raises(ConfigLoadError, match="clients 1 and 2 have the same token"):
        load_environment(config, "s.toml")
    second.write_text("t" * 32)
    os.chmod(second, 0o644)
    environment = load_environment(config, "s.toml")
    (warning,) = environment.warnings
    assert warning.startswith("s.toml: clients.2.auth_token_file:")
    assert "0o644" in warning or "644" in warning


# --- the server holds each id to its own credential (real sockets, real TLS) -------------------


async def _stays_out(rig: object, config: tt.Config, scheme: str) -> None:
    """``config`` never gets a session; the live client 1 is not disturbed."""
    server = rig.server  # type: ignore[attr-defined]
    before = server.state.clients[1]
    url = f"{scheme}://127.0.0.1:{server.websocket_port}/"
    config = attrs.evolve(config, websocket=attrs.evolve(config.websocket, url=url))
    async with tt.open_client(config) as impostor:
        with trio.move_on_after(1.5):
            await impostor.wait_for("connected")
        assert not impostor.connected
    after = server.state
    assert after.active == 1 and after.clients[1] == before  # same session, untouched


async def test_a_token_claims_only_its_own_client_id(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    echo = await start_service(nursery, echo_handler)
    first, second = tokens(tmp_path, "1" * 32, "2" * 32)
    server = tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(url="ws://127.0.0.1:0/"),
        listen=(tt.Listen(tunnel="down", port=0),),
        clients=(
            tt.ClientCredentials(client_id=1, auth_token_file=str(first)),
            tt.ClientCredentials(client_id=2, auth_token_file=str(second)),
        ),
    )

    def client(client_id: int, token: Path) -> tt.Config:
        return tt.Config(
            role="client",
            client_id=client_id,
            websocket=tt.WebSocketSettings(url="ws://127.0.0.1:1/", auth_token_file=str(token)),
            connect=(tt.Connect(tunnel="down", host=LOCALHOST, port=echo),),
        )

    with trio.fail_after(30):
        async with open_rig(server, [client(1, first)]) as rig:
            await _echo_through(rig)
            await _stays_out(rig, client(1, second), "ws")  # client 2's token claiming id 1
            assert rig.server.metrics.refused_peers["auth_token"] >= 1
            await _echo_through(rig)
    assert "claims client id '1' with client 2's token" in caplog.text
    assert "rejected with HTTP 403" in caplog.text


async def test_a_certificate_claims_only_its_own_client_id(
    nursery: trio.Nursery,
    pki: Pki,  # noqa: F811 - the fixture from test_tls
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = await start_service(nursery, echo_handler)
    server = tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(
            url="wss://127.0.0.1:0/",
            tls_bundle=str(pki.server),
            mutual_tls=True,
            trusted_ca=str(pki.ca),
        ),
        listen=(tt.Listen(tunnel="down", port=0),),
        clients=(
            tt.ClientCredentials(client_id=1, certificate=str(pki.pins_client1)),
            tt.ClientCredentials(client_id=2, certificate=str(pki.client2)),  # keys ignored
        ),
    )

    def client(client_id: int, bundle: Path) -> tt.Config:
        ws = tt.WebSocketSettings(
            url="wss://127.0.0.1:1/",
            trusted_ca=str(pki.ca),
            mutual_tls=True,
            tls_bundle=str(bundle),
        )
        return tt.Config(
            role="client",
            client_id=client_id,
            websocket=ws,
            connect=(tt.Connect(tunnel="down", host=LOCALHOST, port=echo),),
            failover=tt.FailoverSettings(standby_socket_close_secs=0),
        )

    with trio.fail_after(30):
        async with open_rig(server, [client(1, pki.client1)]) as rig:
            await _echo_through(rig)
            await _stays_out(rig, client(1, pki.client2), "wss")
            assert rig.server.metrics.refused_peers["credential"] >= 1
            await _echo_through(rig)
    assert "claims client id 1 with a certificate that is not clients.1.certificate" in caplog.text


def test_credentials_at_the_handshake_whatever_the_upgrade_said() -> None:
    """An old client sends no id header: the HELLO's claim is checked all the same."""
    credentials = Credentials(None, ((1, b"a" * 32), (2, b"b" * 32)), ())
    owner = credentials.at_upgrade(b"Bearer " + b"b" * 32, None)
    assert owner == 2
    assert credentials.at_hello(1, owner, None) == "claims client id 1 with client 2's token"
    assert credentials.at_hello(2, owner, None) is None
    assert credentials.at_upgrade(b"Bearer " + b"c" * 32, b"1") == Refused(403, "wrong auth token")
    assert credentials.at_upgrade(None, b"1") == Refused(401, "no auth token")
    shared = Credentials(b"s" * 32, (), ())
    assert shared.at_upgrade(b"Bearer " + b"s" * 32, b"2") is None  # either id may claim
    assert shared.at_hello(1, None, None) is None
