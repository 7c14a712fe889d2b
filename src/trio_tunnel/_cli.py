"""The ``trio-tunnel`` command: run, check, demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import _migrate, _status, _winservice
from ._client import Client
from ._config import (
    Config,
    Environment,
    LoggingSettings,
    describe_config,
    load_config,
    load_environment,
)
from ._errors import ConfigError, ConfigLoadError
from ._reload import reread
from ._server import Server

log = logging.getLogger("trio_tunnel")

# Exit statuses, for systemd's RestartPreventExitStatus=2 and the like: 2 means the config
# itself is wrong (restarting cannot help); 1 means the environment (a file the config names,
# a name that does not resolve, a busy port) or a failure while running (a restart may help).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

# Modules adding subcommands: each has register(subparsers), whose parsers set `handler`.
_EXTENSIONS: list[Any] = [_status, _migrate, _winservice]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_CONFIG
    return handler(args)


def _load(argument: str) -> tuple[Config, Environment] | int:
    """Both steps for one file: the config and its environment, or the exit status."""
    config = _parse(argument)
    if config is None:
        return EXIT_CONFIG
    environment = _load_environment(config, argument)
    if environment is None:
        return EXIT_FAILURE
    return config, environment


def _parse(argument: str) -> Config | None:
    """The config in the file (step 1, pure but for reading the file), or None if reported."""
    try:
        return load_config(_config_path(argument))
    except ConfigError as exc:
        print(f"trio-tunnel: {exc}", file=sys.stderr)
        return None


def _load_environment(config: Config, argument: str) -> Environment | None:
    """What the config names (step 2), with its warnings printed; None if reported."""
    try:
        environment = load_environment(config, str(_config_path(argument)))
    except ConfigLoadError as exc:
        print(f"trio-tunnel: {exc}", file=sys.stderr)
        return None
    for warning in environment.warnings:
        print(f"trio-tunnel: warning: {warning}", file=sys.stderr)
    return environment


def _cmd_check(args: argparse.Namespace) -> int:
    if len(args.config) > 1:
        return _check_together(args.config)
    loaded = _load(args.config[0])
    if isinstance(loaded, int):
        return loaded
    config, _environment = loaded
    print(f"{args.config[0]}: OK")
    print(describe_config(config, os.environ))
    return EXIT_OK


def _check_together(arguments: Sequence[str]) -> int:
    """``check server.toml client1.toml client2.toml``: each file, then the set of them.

    The cross-file rules run whenever every file parses, even if one's environment does not
    load (they then compare what the configs say, without the tokens and certificates).
    """
    from ._config import Member, check_together

    members: list[Member] = []
    status = EXIT_OK
    for argument in arguments:
        config = _parse(argument)
        if config is None:
            status = EXIT_CONFIG
            continue
        environment = _load_environment(config, argument)
        if environment is None:
            status = max(status, EXIT_FAILURE)
        members.append(Member(str(_config_path(argument)), config, environment))
    if len(members) == len(arguments):
        problems = check_together(members)
        for problem in problems:
            print(f"trio-tunnel: {problem}", file=sys.stderr)
        if problems:
            status = EXIT_CONFIG
    if status != EXIT_OK:
        return status
    for argument, member in zip(arguments, members, strict=True):
        print(f"{argument}: OK")
        print("  " + describe_config(member.config, os.environ).replace("\n", "\n  "))
    print(f"together: OK ({len(members)} files agree)")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    config, environment = loaded
    from . import _logging

    _logging.set_process(_logging.process_label(config.role, config.client_id))
    setup_logging(config.logging.level)
    try:
        trio.run(_run, config, environment, _config_path(args.config))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before trio installed its handler
        pass
    except Exception as exc:
        startup = _os_errors(exc)
        if not startup:
            raise
        # The messages name what failed (key, address:port); the "[Errno N]" adds nothing.
        log.error("cannot start: %s", "; ".join(e.strerror or str(e) for e in startup))
        return EXIT_FAILURE
    return EXIT_OK


def _os_errors(exc: BaseException) -> list[OSError]:
    """The OSErrors ``exc`` consists of (through exception groups), or [] if anything else."""
    if isinstance(exc, OSError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found = [_os_errors(inner) for inner in exc.exceptions]
        if all(found):
            return [e for errors in found for e in errors]
    return []


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(verbose=args.verbose)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-tunnel",
        description="High-availability TCP-over-WebSocket tunnel: one server, two clients.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"trio-tunnel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a server or client from a TOML config")
    run.add_argument("config", help="the TOML config file (or a directory holding config.toml)")
    run.set_defaults(handler=_cmd_run)
    check = sub.add_parser(
        "check",
        help="validate a config and print what it would do; given a server's and its clients'"
        " files, also check that they work together",
        description="Exit status: 0 all good, 2 an error in a config (or between the files),"
        " 1 a problem of this machine (a file the config names, a name that does not resolve).",
    )
    check.add_argument(
        "config",
        nargs="+",
        help="the TOML config file (or a directory holding config.toml); several files are"
        " checked together (a server and its clients)",
    )
    check.set_defaults(handler=_cmd_check)
    demo = sub.add_parser(
        "demo",
        help="run a server, two clients and an echo service in one process and show "
        "traffic and a failover",
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="show the tunnel's log")
    demo.set_defaults(handler=_cmd_demo)
    for module in _EXTENSIONS:
        module.register(sub)
    return parser


def _config_path(argument: str) -> Path:
    path = Path(argument)
    if path.is_dir():
        return path / "config.toml"
    return path


def setup_logging(settings: LoggingSettings | str) -> None:
    """Send log records where the ``[logging]`` table says; a bare level logs to stdout only."""
    from . import _logging

    if isinstance(settings, str):
        settings = LoggingSettings(level=settings)
    _logging.setup(settings)


async def _run(config: Config, environment: Environment, path: Path) -> None:
    from ._metrics_http import serve_metrics

    # The caller logged to stdout only, so that a failure here is still reported; now the
    # configured outputs (file, syslog) replace that.
    setup_logging(config.logging)
    running: Server | Client = (
        Server(config, environment) if config.is_server else Client(config, environment)
    )
    async with trio.open_nursery() as nursery:
        address = config.metrics.address
        if address is not None:
            # Bound before the tunnel says it is listening, so "listening" means all of it.
            try:
                await nursery.start(serve_metrics, config.metrics, running)
            except OSError as exc:
                host, port = address
                shown = f"[{host}]" if ":" in host else host
                raise OSError(
                    exc.errno,
                    f"metrics.listen: cannot listen on {shown}:{port}: {exc.strerror or exc}",
                ) from exc
        await nursery.start(running.serve)
        draining = False
        with trio.open_signal_receiver(*_run_signals()) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == getattr(signal, "SIGHUP", None):
                    await _reload(running, path)
                    continue
                drain_secs = running.config.shutdown.drain_secs
                if drain_secs > 0 and not draining:
                    draining = True
                    log.warning(
                        "%s received: draining for up to %gs, then exiting", name, drain_secs
                    )
                    nursery.start_soon(_drain_then_stop, running, drain_secs, nursery.cancel_scope)
                    continue
                if draining:
                    log.warning("%s received again: drain cut short, resetting all streams", name)
                else:
                    log.info("%s received: closing all streams and exiting", name)
                break
        nursery.cancel_scope.cancel()


async def _drain_then_stop(running: Server | Client, secs: float, scope: trio.CancelScope) -> None:
    """``[shutdown] drain_secs``: stop taking streams, let open ones finish (bounded), then
    end the process's nursery (which closes the WebSockets)."""
    await running.drain(secs)
    scope.cancel()


def _run_signals() -> list[int]:
    """Stop on SIGINT and SIGTERM (and Ctrl+Break on Windows); reload on SIGHUP where it
    exists (Windows has none: there, restart the service to apply a changed config).

    With ``[shutdown] drain_secs > 0`` a stop signal drains first, as hypercorn and uvicorn
    do for both SIGTERM and SIGINT (a service manager may send either); a second stop
    signal of any kind stops at once, so Ctrl+C twice never waits."""
    names = ("SIGINT", "SIGTERM", "SIGBREAK", "SIGHUP")
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


async def _reload(running: Server | Client, path: Path) -> None:
    """SIGHUP: re-read the config; apply what can change live, log what cannot."""
    log.info("SIGHUP received: reloading %s", path)
    try:
        # Both steps read files (and may resolve names): off the event loop, so pings and
        # streams carry on meanwhile.
        config, _environment = await reread(path)
    except ConfigError as exc:
        log.error("reload refused, running config kept: %s", exc)
        return
    if (config.role, config.client_id) != (running.config.role, running.config.client_id):
        log.error("reload refused: role and client_id cannot change in a running process")
        return
    if config.logging != running.config.logging:
        setup_logging(config.logging)
        log.info("reload: logging settings applied")
    await running.reload(config)
