"""examples/monitoring: alert rules, their unit tests, the Prometheus config and the dashboard.

Where promtool is installed (Debian's ``prometheus`` package) the rules are checked and their
unit tests (alerts.test.yml) run, and the Prometheus config is checked; where the
``prometheus`` server is installed too, a real Prometheus on 127.0.0.1 scrapes a real
trio-tunnel server and the rules are evaluated against it. Without them those tests skip.
Everywhere: every metric the rules and the dashboard ask for is one trio-tunnel exposes, and
the Prometheus config scrapes exactly the compose example's tunnel containers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_tunnel as tt
from trio_tunnel._metrics import CONNECTION_REFUSAL_REASONS, RESET_KINDS, SWITCH_REASONS, Metrics
from trio_tunnel._metrics_http import render_metrics

from .helpers import LOCALHOST, free_port
from .procs import TunnelProcess, toml_config
from .test_metrics import parse_strict

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MONITORING = EXAMPLES / "monitoring"
DOCKER = EXAMPLES / "docker"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

_METRIC = re.compile(r"\b((?:trio_tunnel|process)_[a-z_]+|up)\b(?!\s*\()")


def exposed_metrics() -> set[str]:
    """Every family a server or a client exposes (process metrics as on this platform)."""
    names = {"up"}  # Prometheus's own, per target
    for role in ("server", "client"):
        names |= set(parse_strict(render_metrics(Metrics(role=role), ["t"])))
    return names


def load_yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(MONITORING / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [
        var["query"]["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"
    ]
    exprs += [note["expr"] for note in dashboard["annotations"]["list"]]
    return exprs


# --- promtool -------------------------------------------------------------------------------


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


@needs_promtool
def test_promtool_checks_the_prometheus_config() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "is valid prometheus config file syntax" in out


@needs_promtool
def test_promtool_accepts_the_exposition() -> None:
    """`promtool check metrics` lints the text format and the naming conventions."""
    assert PROMTOOL is not None
    for role in ("server", "client"):
        metrics = Metrics(role=role)
        metrics.connection_refused("ssh", "no_client")
        result = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=render_metrics(metrics, ["ssh"]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- the pieces agree with what trio-tunnel exposes ----------------------------------------------


def test_every_alert_names_the_metrics_that_exist() -> None:
    exposed = exposed_metrics()
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "TrioTunnelDown",
        "TrioTunnelNoActiveClient",
        "TrioTunnelClientDown",
        "TrioTunnelClientDisconnected",
        "TrioTunnelFailoverFlapping",
        "TrioTunnelConnectionsRefused",
    }
    for rule in rules:
        used = set(_METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= exposed, (rule["alert"], used - exposed)
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        for value in re.findall(r'reason!?="([a-z_]+)"', rule["expr"]):
            assert value in (*SWITCH_REASONS, *CONNECTION_REFUSAL_REASONS, *RESET_KINDS)


def test_the_dashboard_asks_for_metrics_that_exist() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exposed = exposed_metrics()
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(_METRIC.findall(expr))
        assert used, expr
        assert used <= exposed, (expr, used - exposed)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Active client", "Refused connections", "Resident memory"} <= titles


def test_prometheus_scrapes_the_compose_tunnels_on_their_network() -> None:
    """The compose containers' metrics listen on the container's interfaces (not loopback),
    so a Prometheus on the compose network reaches them; nothing extra is published."""
    compose = load_yaml(DOCKER / "compose.yaml")
    config = load_yaml(MONITORING / "prometheus.yml")
    [job] = config["scrape_configs"]
    assert job["job_name"] == "trio-tunnel"
    assert all('job="trio-tunnel"' in rule["expr"] for rule in alert_rules())
    assert config["rule_files"] == ["alerts.yml"]
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    tunnels = {"server", "client1", "client2"}
    expected = set()
    for name in tunnels:
        service = compose["services"][name]
        settings = tt.load_config(DOCKER / service["volumes"][0].split(":")[0]).metrics
        assert settings.address is not None
        host, port = settings.address
        assert host == "0.0.0.0", name  # 127.0.0.1 would be the container's own loopback
        expected.add(f"{name}:{port}")
        published = [str(mapping).rsplit(":", 1)[-1] for mapping in service.get("ports", [])]
        assert str(port) not in published, name
    assert targets == expected


# --- a real Prometheus scraping a real trio-tunnel server ------------------------------------


def _query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://{LOCALHOST}:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        document = json.load(response)
    assert document["status"] == "success", document
    result: list[dict[str, Any]] = document["data"]["result"]
    return result


def _start_prometheus(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """Prometheus on 127.0.0.1 only, its data and log in ``directory``."""
    assert PROMETHEUS is not None
    with (directory / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={LOCALHOST}:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


def _queries(port: int, *exprs: str) -> list[list[dict[str, Any]]]:
    return [_query(port, expr) for expr in exprs]


@pytest.mark.system
@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus server is not installed")
async def test_a_real_prometheus_scrapes_a_server_and_fires_no_active_client(
    tmp_path: Path,
) -> None:
    assert PROMETHEUS is not None
    ws, metrics_port, prometheus_port, down = free_port(), free_port(), free_port(), free_port()
    server = TunnelProcess(
        "server",
        toml_config("server", ws, listen={"down": down})
        + f'\n[metrics]\nlisten = "{LOCALHOST}:{metrics_port}"\n',
        tmp_path,
    )
    rules = (MONITORING / "alerts.yml").read_text().replace("for: 1m", "for: 0s")
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: trio-tunnel\n"
        f"    static_configs: [{{targets: ['{LOCALHOST}:{metrics_port}']}}]\n"
    )
    prometheus = _start_prometheus(tmp_path, prometheus_port)
    try:
        await server.wait_log(r"serving /metrics and /health on")
        # The metrics port is bound first; the tunnel's listen ports open just after.
        await server.wait_log(r"server listening")
        # A connection while no client is connected is refused and counted.
        with trio.fail_after(10):
            try:
                tcp = await trio.open_tcp_stream(LOCALHOST, down)
                await tcp.aclose()
            except OSError:
                pass
        with trio.fail_after(60):
            while True:
                try:
                    up, refused, alerts = await trio.to_thread.run_sync(
                        _queries,
                        prometheus_port,
                        'up{job="trio-tunnel"}',
                        'trio_tunnel_connections_refused_total{tunnel="down",reason="no_client"}',
                        'ALERTS{alertstate="firing"}',
                    )
                except OSError:
                    up, refused, alerts = [], [], []
                firing = {alert["metric"]["alertname"] for alert in alerts}
                if (
                    up
                    and refused
                    and refused[0]["value"][1] == "1"
                    and "TrioTunnelNoActiveClient" in firing
                ):
                    break
                await trio.sleep(0.5)
        assert up[0]["value"][1] == "1"  # the exposition was accepted
        assert "TrioTunnelDown" not in firing
    finally:
        _stop(prometheus)
        server.close()


def test_the_image_health_check_asks_livez_on_the_metrics_port() -> None:
    """Docker's health state means liveness: /livez on the port the compose configs use."""
    lines = (DOCKER / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK "))
    instruction = lines[start].rstrip("\\") + lines[start + 1]
    assert "http://127.0.0.1:9108/livez" in instruction
    assert "CMD [" in instruction
    compose = load_yaml(DOCKER / "compose.yaml")
    for name in ("server", "client1", "client2"):
        assert "/livez" in " ".join(compose["services"][name]["healthcheck"]["test"])
