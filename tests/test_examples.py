"""The service files in examples/: systemd unit, Dockerfile, compose file and its configs.

Neither systemd nor Docker runs here, so these check what can be checked without them: every
config passes ``trio-tunnel check``, the files parse, the pieces agree with one another (the
compose file mounts configs that exist, a client's URL names the server's service and port,
connect targets are compose services), the unit has its restart policy and hardening, and
``systemd-analyze verify`` accepts the unit where it is installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import trio_tunnel as tt

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROOT = EXAMPLES.parent
UNIT = EXAMPLES / "systemd" / "trio-tunnel@.service"
DOCKER = EXAMPLES / "docker"


# --- systemd --------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with all its values (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number} is not key=value in a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_runs_the_instance_config_and_restarts_on_failure() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"] == ["/usr/bin/env trio-tunnel run /etc/trio-tunnel/%i.toml"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"]
    assert service["RestartPreventExitStatus"] == ["2"]  # a config error: restarting won't help
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]


def test_unit_is_hardened() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "DynamicUser": "yes",
        "LogsDirectory": "trio-tunnel",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert service["SystemCallFilter"][0] == "@system-service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    instance = tmp_path / "trio-tunnel@server.service"
    shutil.copy(UNIT, instance)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown or misspelt keys are only warned about: any warning about the unit is a failure.
    assert str(instance) not in output, output
    assert "trio-tunnel@server.service" not in output, output


# --- Docker ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def test_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    instructions = dockerfile_instructions()
    images = [args.split()[0] for word, args in instructions if word == "FROM"]
    assert images and all(image == "python:3.12-slim" for image in images)
    for word, args in instructions:
        if word == "COPY" and "--from=" not in args:
            *sources, _ = args.split()
            for source in sources:  # the build context is the repository root
                assert (ROOT / source).exists(), source
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoint = [args for word, args in instructions if word == "ENTRYPOINT"]
    assert [json.loads(args) for args in entrypoint] == [["trio-tunnel"]]
    assert any(word == "RUN" and "pip install" in args for word, args in instructions)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    rules = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(rules)


def load_compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    compose: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return compose


def _mounted_config(service: dict[str, Any]) -> Path:
    [volume] = service["volumes"]
    source, target, mode = volume.split(":")
    assert (target, mode) == ("/etc/trio-tunnel/config.toml", "ro")
    return (DOCKER / str(source)).resolve()


def test_compose_runs_server_two_clients_and_echo() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"server", "client1", "client2", "echo"}
    for name in ("server", "client1", "client2"):
        service = services[name]
        assert service["command"] == ["run", "/etc/trio-tunnel"]
        assert service["build"] == {"context": "../..", "dockerfile": "examples/docker/Dockerfile"}
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert _mounted_config(service).is_file()
    for name in ("client1", "client2"):
        assert "server" in services[name]["depends_on"]


def test_compose_configs_pass_check_and_agree_with_the_compose_file() -> None:
    services = load_compose()["services"]
    tunnels = ("server", "client1", "client2")
    configs = {name: tt.load_config(_mounted_config(services[name])) for name in tunnels}
    server = configs["server"]
    assert server.is_server
    assert [configs[name].client_id for name in ("client1", "client2")] == [1, 2]
    for name in ("client1", "client2"):
        ws = configs[name].websocket
        assert (ws.host, ws.port, ws.path) == ("server", server.websocket.port, "/")
    for name, config in configs.items():
        for target in config.connect:
            assert target.host in services, f"{name}: {target.host} is not a compose service"
            assert str(target.port) in " ".join(services[target.host]["entrypoint"])
        published = {int(port.rsplit(":", 1)[1]) for port in services[name].get("ports", [])}
        assert published <= {entry.port for entry in config.listen}, name
        assert all(entry.bind == "0.0.0.0" for entry in config.listen), name
        # The health check asks the metrics endpoint inside the container; Prometheus on the
        # compose network can reach it too (tests/test_monitoring.py).
        assert config.metrics.listen == "0.0.0.0:9108"
        assert "http://127.0.0.1:9108/livez" in " ".join(services[name]["healthcheck"]["test"])
    client_tunnels = {entry.tunnel for entry in configs["client1"].connect}
    assert {entry.tunnel for entry in server.listen} <= client_tunnels


def test_compose_echo_service_echoes(tmp_path: Path) -> None:
    """The echo one-liner, run here on a free port, echoes and half-closes like a server."""
    script = load_compose()["services"]["echo"]["entrypoint"][2]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = script.replace('("0.0.0.0", 7000)', f'("127.0.0.1", {port})')
    assert str(port) in script
    with subprocess.Popen([sys.executable, "-c", script]) as proc:
        try:
            for _ in range(500):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    break
                except ConnectionRefusedError:
                    threading.Event().wait(0.02)
            else:
                pytest.fail("the echo service did not start")
            with sock:
                sock.sendall(b"ping " * 1000)
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            assert received == b"ping " * 1000
        finally:
            proc.kill()


@pytest.mark.parametrize("path", sorted((EXAMPLES / "docker").glob("*.toml")), ids=str)
def test_docker_configs_pass_check(path: Path) -> None:
    tt.load_environment(tt.load_config(path), str(path))  # both steps, as check does


# --- the example deployments as a whole -----------------------------------------------------


@pytest.mark.parametrize("directory", [EXAMPLES, DOCKER], ids=["examples", "docker"])
def test_example_server_and_clients_pass_check_together(
    directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_tunnel._cli import main

    files = [str(directory / f"{name}.toml") for name in ("server", "client1", "client2")]
    assert main(["check", *files]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.endswith("together: OK (3 files agree)\n")


def test_unit_restart_policy_matches_the_exit_statuses() -> None:
    """The unit keeps restarting on 1 (the environment) and stops on 2 (the config)."""
    from trio_tunnel import _cli

    service = parse_unit(UNIT.read_text())["Service"]
    assert service["RestartPreventExitStatus"] == [str(_cli.EXIT_CONFIG)]
    assert service["Restart"] == ["on-failure"]  # restarts on EXIT_FAILURE
    assert _cli.EXIT_FAILURE != _cli.EXIT_CONFIG
    readme = (ROOT / "README.md").read_text()
    assert "| 1 | the environment, or a failure while running |" in readme
    assert "| 2 | the config itself |" in readme
