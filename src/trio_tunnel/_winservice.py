"""``trio-tunnel service install|remove|start|stop``: run the tunnel as a Windows service.

Needs the ``windows`` extra (``pip install trio-tunnel[windows]``, which brings pywin32).
pywin32 is imported only inside the functions that need it, so this module imports anywhere
and the commands fail with one clear line (exit 2) where Windows or pywin32 is missing.

``install`` checks the config first (a bad config exits 2 naming the key on any platform),
then registers the service with the service control manager (SCM): pywin32's
``pythonservice.exe`` hosts :class:`TunnelService`, which reads the config path from the
service's registry parameters (``HKLM\\SYSTEM\\CurrentControlSet\\Services\\NAME\\Parameters``,
value ``config``); a path given as the first start parameter (``sc start NAME PATH``) wins.
The service runs as ``NT AUTHORITY\\LocalService`` unless ``--username`` says otherwise, starts
automatically with Windows, and the SCM restarts it when it fails.

The tunnel runs under ``trio.run`` in the service's own thread (:class:`TunnelRunner`); the
SCM's stop request arrives on another thread and cancels it through the run's trio token, so
every stream is closed as on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import threading
from typing import Any, Final

import trio

from ._config import Config, load_config, load_environment
from ._errors import ConfigError, ConfigLoadError

__all__ = ["DEFAULT_NAME", "TunnelRunner", "WindowsUnavailable", "register"]

DEFAULT_NAME: Final = "trio-tunnel"
DEFAULT_ACCOUNT: Final = r"NT AUTHORITY\LocalService"
CONFIG_OPTION: Final = "config"
UNAVAILABLE: Final = (
    "the Windows service commands need Windows and pywin32 (pip install trio-tunnel[windows])"
)
# The SCM's limit is 256 characters; '/' and '\\' are never allowed. Stay with plain names.
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_RESTART_DELAYS_MS: Final = (5_000, 15_000, 60_000)
_RESET_FAILURES_AFTER_SECS: Final = 24 * 3600

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2


class WindowsUnavailable(RuntimeError):
    """Not on Windows, or pywin32 is not installed."""


def _on_windows() -> bool:
    return sys.platform == "win32"


def _pywin32(*names: str) -> list[Any]:
    """The pywin32 modules ``names``, or WindowsUnavailable."""
    if not _on_windows():
        raise WindowsUnavailable(UNAVAILABLE)
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as exc:
        raise WindowsUnavailable(UNAVAILABLE) from exc


# --- running the tunnel in a thread that someone else stops -------------------------------


class TunnelRunner:
    """Runs one tunnel process's work in the calling thread until :meth:`stop` is called.

    ``run()`` blocks in ``trio.run``; ``stop()`` may be called from any other thread at any
    time, before, during or after ``run()``, any number of times. ``started`` is set once the
    server or client is up (its ports bound, the ``[metrics]`` endpoint too if configured).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = threading.Event()
        self._lock = threading.Lock()
        self._stop_requested = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

    def run(self) -> None:
        """Serve until stopped. Errors (a port in use, say) propagate as from ``trio.run``."""
        trio.run(self._main)

    def stop(self) -> None:
        """Ask ``run()`` to close every stream and return; does not wait for it."""
        with self._lock:
            self._stop_requested = True
            token, scope = self._token, self._scope
        if token is None or scope is None:
            return  # not running yet (it will not start) or finished already
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(scope.cancel)

    async def _main(self) -> None:
        with trio.CancelScope() as scope:
            with self._lock:
                if self._stop_requested:
                    return
                self._token = trio.lowlevel.current_trio_token()
                self._scope = scope
            try:
                await _serve(self.config, self.started)
            finally:
                with self._lock:
                    self._token = self._scope = None


async def _serve(config: Config, started: threading.Event) -> None:
    from ._client import serve_client
    from ._metrics_http import serve_metrics
    from ._server import serve_server

    async with trio.open_nursery() as nursery:
        running: Any
        if config.is_server:
            running = await nursery.start(serve_server, config)
        else:
            running = await nursery.start(serve_client, config)
        if config.metrics.listen is not None:  # as `trio-tunnel run` does
            await nursery.start(serve_metrics, config.metrics, running)
        started.set()
        await trio.sleep_forever()


# --- the service class, built on first use (pythonservice.exe looks it up by name) --------

_service_class: type | None = None


def __getattr__(name: str) -> Any:
    """``TunnelService``: the ``ServiceFramework`` subclass, built when first asked for."""
    if name == "TunnelService":
        return _tunnel_service_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tunnel_service_class() -> type:
    global _service_class
    if _service_class is None:
        _service_class = _build_service_class()
    return _service_class


def _build_service_class() -> type:
    servicemanager, win32service, win32serviceutil = _pywin32(
        "servicemanager", "win32service", "win32serviceutil"
    )
    framework: Any = win32serviceutil.ServiceFramework

    class TunnelService(framework):  # type: ignore[misc]
        """A trio-tunnel server or client under the Windows service control manager."""

        _svc_name_ = DEFAULT_NAME
        _svc_display_name_ = "trio-tunnel"
        _svc_description_ = "High-availability TCP-over-WebSocket tunnel (trio-tunnel)."

        def __init__(self, args: list[str]) -> None:
            # args: the service's name (as installed, perhaps not DEFAULT_NAME), then any
            # start parameters. The name also names this service's event log source.
            self._svc_name_ = args[0]
            self._start_args = list(args[1:])
            self._runner: TunnelRunner | None = None
            self._stop_requested = threading.Event()
            framework.__init__(self, args)

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
            self._stop_requested.set()
            if self._runner is not None:
                self._runner.stop()

        SvcShutdown = SvcStop  # Windows is shutting down: close the streams the same way

        def SvcDoRun(self) -> None:
            path = self._start_args[0] if self._start_args else None
            if path is None:
                path = win32serviceutil.GetServiceCustomOption(self._svc_name_, CONFIG_OPTION)
            if not path:
                message = (
                    f"{self._svc_name_}: no config path in the service's registry parameters;"
                    " reinstall with `trio-tunnel service install CONFIG`"
                )
                servicemanager.LogErrorMsg(message)
                raise RuntimeError(message)
            try:
                config = load_config(path)
            except ConfigError as exc:
                servicemanager.LogErrorMsg(f"{self._svc_name_}: {exc}")
                raise
            _setup_logging(config)
            runner = TunnelRunner(config)
            self._runner = runner
            if self._stop_requested.is_set():
                runner.stop()
            servicemanager.LogInfoMsg(f"{self._svc_name_}: starting from {path}")
            try:
                runner.run()
            except BaseException as exc:
                # The SCM sees the exception as a failure and applies the recovery actions.
                servicemanager.LogErrorMsg(f"{self._svc_name_}: stopped by an error: {exc!r}")
                raise
            servicemanager.LogInfoMsg(f"{self._svc_name_}: stopped")

    return TunnelService


def _setup_logging(config: Config) -> None:
    from ._logging import process_label, setup

    setup(config.logging, process=process_label(config.role, config.client_id))


# --- the commands ---------------------------------------------------------------------------


def _service_name(text: str) -> str:
    if not _SERVICE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a service name is 1-80 letters, digits, '.', '_' and '-' (got {text!r})"
        )
    return text


def register(subparsers: Any) -> None:
    """Add ``service`` (install, remove, start, stop) to the ``trio-tunnel`` command."""
    service = subparsers.add_parser(
        "service",
        help="install, remove, start or stop trio-tunnel as a Windows service",
        description="Manage trio-tunnel as a Windows service (needs trio-tunnel[windows]).",
    )
    commands = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        parser.add_argument(
            "--name",
            type=_service_name,
            default=DEFAULT_NAME,
            help=f"the service's name (default {DEFAULT_NAME}; one service per config)",
        )
        return parser

    install = add("install", "check a config and register a service that runs it")
    install.add_argument("config", help="the TOML config file (or a directory holding config.toml)")
    install.add_argument(
        "--startup",
        choices=("auto", "delayed", "manual", "disabled"),
        default="auto",
        help="when Windows starts the service (default auto)",
    )
    install.add_argument(
        "--username",
        default=DEFAULT_ACCOUNT,
        help=f"the account to run as (default {DEFAULT_ACCOUNT}, which must be able to read"
        " the config and TLS files and write the log file)",
    )
    install.add_argument("--password", default=None, help="the account's password, if it has one")
    install.set_defaults(handler=_cmd_install)
    add("remove", "unregister a service (stop it first)").set_defaults(handler=_cmd_remove)
    add("start", "start an installed service").set_defaults(handler=_cmd_start)
    add("stop", "stop a running service").set_defaults(handler=_cmd_stop)


def _config_path(argument: str) -> str:
    path = os.path.abspath(argument)
    return os.path.join(path, "config.toml") if os.path.isdir(path) else path


def _unavailable(exc: WindowsUnavailable) -> int:
    print(f"trio-tunnel: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def _failed(action: str, name: str, exc: Exception) -> int:
    detail = getattr(exc, "strerror", None) or exc
    print(f"trio-tunnel: cannot {action} service {name!r}: {detail}", file=sys.stderr)
    return EXIT_FAILURE


def _cmd_install(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    try:
        load_environment(load_config(path), path)  # both steps, as `trio-tunnel check`
    except ConfigError as exc:
        print(f"trio-tunnel: {exc}", file=sys.stderr)
        return EXIT_FAILURE if isinstance(exc, ConfigLoadError) else EXIT_CONFIG
    try:
        win32service, win32serviceutil = _pywin32("win32service", "win32serviceutil")
        service_class = _tunnel_service_class()
    except WindowsUnavailable as exc:
        return _unavailable(exc)
    start_types = {
        "auto": win32service.SERVICE_AUTO_START,
        "delayed": win32service.SERVICE_AUTO_START,
        "manual": win32service.SERVICE_DEMAND_START,
        "disabled": win32service.SERVICE_DISABLED,
    }
    try:
        win32serviceutil.InstallService(
            f"{__name__}.{service_class.__name__}",
            args.name,
            f"trio-tunnel ({args.name})" if args.name != DEFAULT_NAME else "trio-tunnel",
            startType=start_types[args.startup],
            userName=args.username,
            password=args.password,
            description=f"High-availability TCP-over-WebSocket tunnel, config {path}",
            delayedstart=args.startup == "delayed" or None,
        )
    except Exception as exc:  # pywin32 raises pywintypes.error (and RuntimeError)
        return _failed("install", args.name, exc)
    try:
        win32serviceutil.SetServiceCustomOption(args.name, CONFIG_OPTION, path)
    except Exception as exc:  # without its config the service cannot run: undo the install
        win32serviceutil.RemoveService(args.name)
        return _failed("install", args.name, exc)
    if not _restart_on_failure(win32service, args.name):
        print(
            "trio-tunnel: warning: could not set the service to restart on failure;"
            " set it on the Recovery tab in services.msc",
            file=sys.stderr,
        )
    print(f"installed service {args.name!r} running {path} as {args.username}")
    print(f"start it with: trio-tunnel service start --name {args.name}")
    return EXIT_OK


def _restart_on_failure(win32service: Any, name: str) -> bool:
    """Have the SCM restart the service after a crash or a stop with an error."""
    try:
        manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
        try:
            handle = win32service.OpenService(manager, name, win32service.SERVICE_ALL_ACCESS)
            try:
                actions = {
                    "ResetPeriod": _RESET_FAILURES_AFTER_SECS,
                    "RebootMsg": None,
                    "Command": None,
                    "Actions": [(win32service.SC_ACTION_RESTART, ms) for ms in _RESTART_DELAYS_MS],
                }
                win32service.ChangeServiceConfig2(
                    handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS, actions
                )
                # Also when SvcDoRun raised (a stop with an error), not only on a crash.
                win32service.ChangeServiceConfig2(
                    handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True
                )
            finally:
                win32service.CloseServiceHandle(handle)
        finally:
            win32service.CloseServiceHandle(manager)
    except Exception:  # best effort: the service works without it
        return False
    return True


def _control(args: argparse.Namespace, action: str) -> int:
    try:
        (win32serviceutil,) = _pywin32("win32serviceutil")
    except WindowsUnavailable as exc:
        return _unavailable(exc)
    operations = {
        "remove": win32serviceutil.RemoveService,
        "start": win32serviceutil.StartService,
        "stop": win32serviceutil.StopService,
    }
    try:
        operations[action](args.name)
    except Exception as exc:  # pywintypes.error: not installed, access denied, not running
        return _failed(action, args.name, exc)
    done = {
        "remove": "removed",
        "start": "asked to start (errors go to the Windows event log)",
        "stop": "asked to stop",
    }[action]
    print(f"service {args.name!r} {done}")
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace) -> int:
    return _control(args, "remove")


def _cmd_start(args: argparse.Namespace) -> int:
    return _control(args, "start")


def _cmd_stop(args: argparse.Namespace) -> int:
    return _control(args, "stop")
