"""[clients.N]: each client id bound to its own credential (the config and load step)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

from trio_tunnel._config import load_config, load_environment, parse_config
from trio_tunnel._errors import ConfigError, ConfigLoadError

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
