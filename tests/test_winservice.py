"""The Windows service wrapper, as far as it can be tested without Windows.

Command wiring and argument parsing, the config check before install (it comes before the
platform check, so a bad config exits 2 naming the key on any platform), the one-line message
where Windows or pywin32 is missing, importing without pywin32, the thread runner the service
uses, and the service class itself against a stand-in for pywin32 that runs a real tunnel.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import trio_tunnel
import trio_tunnel as tt
from trio_tunnel import _winservice
from trio_tunnel._cli import _parser, main
from trio_tunnel._winservice import UNAVAILABLE, TunnelRunner

from .helpers import LOCALHOST, free_port

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

not_windows = pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows path")
WAIT = 10.0


def server_toml(directory: Path, port: int, name: str = "server.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f'role = "server"\n\n[websocket]\nurl = "ws://{LOCALHOST}:{port}/"\n')
    return path


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(WAIT)
        return sock.connect_ex((LOCALHOST, port)) == 0


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --- importing and the commands where Windows is missing ------------------------------------


def test_importing_needs_no_pywin32() -> None:
    source = Path(trio_tunnel.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), *sys.path])}
    code = (
        "import sys, trio_tunnel._winservice, trio_tunnel._cli\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in"
        " ('win32service', 'win32serviceutil', 'servicemanager', 'pywintypes', 'win32api')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


@not_windows
def test_install_says_what_is_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = server_toml(tmp_path, free_port())
    status, out, err = run_main(capsys, "service", "install", str(config))
    assert (status, out) == (2, "")
    assert err == f"trio-tunnel: {UNAVAILABLE}\n"
    assert UNAVAILABLE == (
        "the Windows service commands need Windows and pywin32 (pip install trio-tunnel[windows])"
    )


@not_windows
@pytest.mark.parametrize("action", ["remove", "start", "stop"])
def test_control_commands_say_what_is_missing(
    capsys: pytest.CaptureFixture[str], action: str
) -> None:
    status, _, err = run_main(capsys, "service", action, "--name", "tunnel-a")
    assert status == 2
    assert err == f"trio-tunnel: {UNAVAILABLE}\n"


def test_install_checks_the_config_first(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('role = "server"\n[websocket]\nurl = "ws://127.0.0.1:8080/"\nport = 1\n')
    status, _, err = run_main(capsys, "service", "install", str(bad))
    assert status == 2
    assert f"{bad}: websocket.port: unknown key" in err
    assert "pywin32" not in err
    status, _, err = run_main(capsys, "service", "install", str(tmp_path / "missing.toml"))
    assert status == 2
    assert "missing.toml: cannot read the file" in err


@not_windows
def test_install_accepts_a_directory_holding_config_toml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server_toml(tmp_path, free_port(), name="config.toml")
    status, _, err = run_main(capsys, "service", "install", str(tmp_path))
    assert status == 2
    assert err == f"trio-tunnel: {UNAVAILABLE}\n"  # the config was found and passed the check


# --- argument parsing ---------------------------------------------------------------------


def test_parsing_defaults() -> None:
    args = _parser().parse_args(["service", "install", "x.toml"])
    assert (args.service_command, args.config, args.name, args.startup) == (
        "install",
        "x.toml",
        "trio-tunnel",
        "auto",
    )
    assert args.username == r"NT AUTHORITY\LocalService"
    assert args.password is None
    args = _parser().parse_args(["service", "stop", "--name", "tunnel.site-2"])
    assert (args.service_command, args.name) == ("stop", "tunnel.site-2")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["service"], "required: ACTION"),
        (["service", "install"], "required: config"),
        (["service", "pause"], "invalid choice: 'pause'"),
        (["service", "start", "--name", "a/b"], "a service name is 1-80 letters"),
        (["service", "start", "--name", ""], "a service name is 1-80 letters"),
        (["service", "install", "x.toml", "--startup", "sometimes"], "invalid choice"),
    ],
)
def test_parsing_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    assert expected in capsys.readouterr().err


@not_windows
def test_service_class_needs_windows() -> None:
    with pytest.raises(_winservice.WindowsUnavailable, match="pywin32"):
        _ = _winservice.TunnelService
    with pytest.raises(AttributeError):
        _ = _winservice.NoSuchThing


# --- the runner the service thread uses ----------------------------------------------------


def _run_in_thread(runner: TunnelRunner) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def test_runner_serves_until_stopped_from_another_thread(tmp_path: Path) -> None:
    port = free_port()
    runner = TunnelRunner(tt.load_config(server_toml(tmp_path, port)))
    thread, errors = _run_in_thread(runner)
    assert runner.started.wait(WAIT)
    assert accepts(port)
    runner.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert not accepts(port)
    runner.stop()  # after the end: nothing happens


def test_runner_stopped_before_it_runs_does_not_start(tmp_path: Path) -> None:
    runner = TunnelRunner(tt.load_config(server_toml(tmp_path, free_port())))
    runner.stop()
    thread, errors = _run_in_thread(runner)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert not runner.started.is_set()


def test_runner_start_up_error_propagates(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        runner = TunnelRunner(tt.load_config(server_toml(tmp_path, port)))
        thread, errors = _run_in_thread(runner)
        thread.join(WAIT)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert not runner.started.is_set()
    error = errors[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, OSError)


# --- the service class and the install command against a stand-in for pywin32 -------------


class FakeError(Exception):
    """Like pywintypes.error: the message is in ``strerror``."""

    def __init__(self, strerror: str) -> None:
        super().__init__(strerror)
        self.strerror = strerror


@attrs.define
class FakeScm:
    """Records what the code asks of pywin32; ``registry`` holds the services' parameters."""

    registry: dict[tuple[str, str], str] = attrs.field(factory=dict)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = attrs.field(factory=list)
    events: list[tuple[str, str]] = attrs.field(factory=list)
    failing: set[str] = attrs.field(factory=set)

    def record(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if name in self.failing:
                raise FakeError("Access is denied.")
            if name == "SetServiceCustomOption":
                self.registry[(args[0], args[1])] = args[2]
            return name

        return call

    def called(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@pytest.fixture
def scm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeScm]:
    fake = FakeScm()

    class ServiceFramework:
        def __init__(self, args: list[str]) -> None:
            self.statuses: list[int] = []

        def ReportServiceStatus(self, status: int, *rest: object) -> None:
            self.statuses.append(status)

    def get_option(name: str, option: str, default: object = None) -> object:
        return fake.registry.get((name, option), default)

    win32serviceutil = _module(
        "win32serviceutil",
        ServiceFramework=ServiceFramework,
        GetServiceCustomOption=get_option,
        **{
            name: fake.record(name)
            for name in (
                "InstallService",
                "SetServiceCustomOption",
                "RemoveService",
                "StartService",
                "StopService",
            )
        },
    )
    constants = {
        "SERVICE_STOP_PENDING": 3,
        "SERVICE_AUTO_START": 2,
        "SERVICE_DEMAND_START": 3,
        "SERVICE_DISABLED": 4,
        "SC_MANAGER_ALL_ACCESS": 0xF003F,
        "SERVICE_ALL_ACCESS": 0xF01FF,
        "SC_ACTION_RESTART": 1,
        "SERVICE_CONFIG_FAILURE_ACTIONS": 2,
        "SERVICE_CONFIG_FAILURE_ACTIONS_FLAG": 4,
    }
    win32service = _module(
        "win32service",
        **constants,
        **{
            name: fake.record(name)
            for name in ("OpenSCManager", "OpenService", "ChangeServiceConfig2")
        },
        CloseServiceHandle=lambda handle: None,
    )
    servicemanager = _module(
        "servicemanager",
        LogInfoMsg=lambda text: fake.events.append(("info", text)),
        LogErrorMsg=lambda text: fake.events.append(("error", text)),
    )
    for module in (win32serviceutil, win32service, servicemanager):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(_winservice, "_on_windows", lambda: True)
    monkeypatch.setattr(_winservice, "_service_class", None)
    monkeypatch.setattr(_winservice, "_setup_logging", lambda config: None)
    yield fake


def test_install_registers_the_service_and_its_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, scm: FakeScm
) -> None:
    config = server_toml(tmp_path, free_port())
    status, out, err = run_main(
        capsys, "service", "install", str(config), "--name", "tunnel-a", "--startup", "manual"
    )
    assert (status, err) == (0, "")
    assert "installed service 'tunnel-a'" in out
    [(args, kwargs)] = scm.called("InstallService")
    assert args == ("trio_tunnel._winservice.TunnelService", "tunnel-a", "trio-tunnel (tunnel-a)")
    assert kwargs["startType"] == 3
    assert kwargs["userName"] == r"NT AUTHORITY\LocalService"
    assert str(config) in kwargs["description"]
    assert scm.registry == {("tunnel-a", "config"): str(config)}
    # Restart on failure, also when the service stops with an error.
    changes = [args[1:] for args, _ in scm.called("ChangeServiceConfig2")]
    assert changes[0][0] == 2
    assert changes[0][1]["Actions"][0] == (1, 5000)
    assert changes[1] == (4, True)


def test_install_undoes_itself_when_the_config_cannot_be_stored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, scm: FakeScm
) -> None:
    scm.failing.add("SetServiceCustomOption")
    status, _, err = run_main(capsys, "service", "install", str(server_toml(tmp_path, 1)))
    assert status == 1
    assert "cannot install service 'trio-tunnel': Access is denied." in err
    assert scm.called("RemoveService") == [(("trio-tunnel",), {})]


def test_install_reports_the_scm_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, scm: FakeScm
) -> None:
    scm.failing.add("InstallService")
    status, _, err = run_main(capsys, "service", "install", str(server_toml(tmp_path, 1)))
    assert status == 1
    assert "cannot install service 'trio-tunnel': Access is denied." in err
    assert scm.registry == {}


def test_install_warns_when_recovery_cannot_be_set(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, scm: FakeScm
) -> None:
    scm.failing.add("ChangeServiceConfig2")
    status, _, err = run_main(capsys, "service", "install", str(server_toml(tmp_path, 1)))
    assert status == 0
    assert "could not set the service to restart on failure" in err


@pytest.mark.parametrize(
    ("action", "function"),
    [("remove", "RemoveService"), ("start", "StartService"), ("stop", "StopService")],
)
def test_control_commands_call_the_scm(
    capsys: pytest.CaptureFixture[str], scm: FakeScm, action: str, function: str
) -> None:
    status, out, _ = run_main(capsys, "service", action, "--name", "tunnel-a")
    assert status == 0
    assert "service 'tunnel-a'" in out
    assert scm.called(function) == [(("tunnel-a",), {})]
    scm.failing.add(function)
    status, _, err = run_main(capsys, "service", action)
    assert status == 1
    assert f"cannot {action} service 'trio-tunnel': Access is denied." in err


def _service(args: list[str]) -> Any:
    return _winservice.TunnelService(args)


def test_service_runs_the_registered_config_and_stops_on_request(
    tmp_path: Path, scm: FakeScm
) -> None:
    port = free_port()
    scm.registry[("tunnel-a", "config")] = str(server_toml(tmp_path, port))
    service = _service(["tunnel-a"])
    assert service._svc_name_ == "tunnel-a"
    thread = threading.Thread(target=service.SvcDoRun, daemon=True)
    thread.start()
    wait_until(lambda: service._runner is not None and service._runner.started.is_set())
    assert accepts(port)
    service.SvcStop()  # what the SCM's stop request calls, on another thread
    thread.join(WAIT)
    assert not thread.is_alive()
    assert not accepts(port)
    assert service.statuses == [3]  # SERVICE_STOP_PENDING
    assert [kind for kind, _ in scm.events] == ["info", "info"]
    assert scm.events[-1][1] == "tunnel-a: stopped"


def test_service_start_parameter_overrides_the_registry(tmp_path: Path, scm: FakeScm) -> None:
    port = free_port()
    scm.registry[("tunnel-a", "config")] = str(tmp_path / "not-this.toml")
    service = _service(["tunnel-a", str(server_toml(tmp_path, port))])
    thread = threading.Thread(target=service.SvcDoRun, daemon=True)
    thread.start()
    wait_until(lambda: service._runner is not None and service._runner.started.is_set())
    assert accepts(port)
    service.SvcShutdown()  # Windows shutting down: the same clean stop
    thread.join(WAIT)
    assert not thread.is_alive()


def test_service_stopped_before_it_runs(tmp_path: Path, scm: FakeScm) -> None:
    scm.registry[("trio-tunnel", "config")] = str(server_toml(tmp_path, free_port()))
    service = _service(["trio-tunnel"])
    service.SvcStop()
    service.SvcDoRun()  # returns at once
    assert not service._runner.started.is_set()


def test_service_without_config_or_with_a_bad_one_logs_and_fails(
    tmp_path: Path, scm: FakeScm
) -> None:
    with pytest.raises(RuntimeError, match="no config path"):
        _service(["tunnel-a"]).SvcDoRun()
    bad = tmp_path / "bad.toml"
    bad.write_text('role = "server"\n')
    scm.registry[("tunnel-a", "config")] = str(bad)
    with pytest.raises(tt.ConfigError):
        _service(["tunnel-a"]).SvcDoRun()
    assert [kind for kind, _ in scm.events] == ["error", "error"]
    assert "websocket: required table missing" in scm.events[1][1]


# --- the metrics endpoint under the service, and `run` where there is no SIGHUP -------------


def _livez(port: int) -> int:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{LOCALHOST}:{port}/livez", timeout=WAIT) as response:
        return int(response.status)


def test_service_serves_the_metrics_endpoint(tmp_path: Path, scm: FakeScm) -> None:
    port, metrics_port = free_port(), free_port()
    config = server_toml(tmp_path, port)
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "{LOCALHOST}:{metrics_port}"\n')
    scm.registry[("tunnel-a", "config")] = str(config)
    service = _service(["tunnel-a"])
    thread = threading.Thread(target=service.SvcDoRun, daemon=True)
    thread.start()
    wait_until(lambda: service._runner is not None and service._runner.started.is_set())
    assert _livez(metrics_port) == 200  # bound before `started` is set
    service.SvcStop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert not accepts(metrics_port)


def test_run_signals_without_sighup(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from trio_tunnel._cli import _run_signals

    assert signal.SIGHUP in _run_signals()
    monkeypatch.delattr(signal, "SIGHUP")
    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)  # as on Windows
    assert _run_signals() == [signal.SIGINT, signal.SIGTERM, 21]


@not_windows
def test_run_works_where_there_is_no_sighup(tmp_path: Path) -> None:
    """`trio-tunnel run` in a Python whose signal module has no SIGHUP (as on Windows)."""
    import signal

    port, metrics_port = free_port(), free_port()
    config = server_toml(tmp_path, port)
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "{LOCALHOST}:{metrics_port}"\n')
    code = (
        "import signal, sys\n"
        "del signal.SIGHUP\n"
        "from trio_tunnel._cli import main\n"
        f"sys.exit(main(['run', {str(config)!r}]))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        try:

            def answering() -> bool:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                try:
                    return _livez(metrics_port) == 200
                except OSError:
                    return False

            wait_until(answering)
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=WAIT)
        finally:
            proc.kill()
    text = output.decode()
    assert proc.returncode == 0, text
    assert "SIGINT received: closing all streams and exiting" in text
    assert "Traceback" not in text
