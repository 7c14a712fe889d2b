"""The ``trio-tunnel`` command: run, check, demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import _migrate, _status, _winservice
from ._client import Client, serve_client
from ._config import Config, LoggingSettings, describe_config, load_config
from ._errors import ConfigError
from ._server import Server, serve_server

log = logging.getLogger("trio_tunnel")

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


def _load(argument: str) -> Config | None:
    try:
        return load_config(_config_path(argument))
    except ConfigError as exc:
        print(f"trio-tunnel: {exc}", file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    print(f"{args.config}: OK")
    print(describe_config(config))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from . import _logging

    _logging.set_process(_logging.process_label(config.role, config.client_id))
    setup_logging(config.logging.level)
    try:
        trio.run(_run, config, _config_path(args.config))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before trio installed its handler
        pass
    except Exception as exc:
        startup = _os_errors(exc)
        if not startup:
            raise
        log.error("cannot start: %s", "; ".join(str(e) for e in startup))
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
    check = sub.add_parser("check", help="validate a config and print what it would do")
    check.add_argument("config", help="the TOML config file (or a directory holding config.toml)")
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


async def _run(config: Config, path: Path) -> None:
    from ._metrics_http import serve_metrics

    # The caller logged to stdout only, so that a failure here is still reported; now the
    # configured outputs (file, syslog) replace that.
    setup_logging(config.logging)
    async with trio.open_nursery() as nursery:
        running: Server | Client
        if config.role == "server":
            running = await nursery.start(serve_server, config)
        else:
            running = await nursery.start(serve_client, config)
        if config.metrics.listen is not None:
            await nursery.start(serve_metrics, config.metrics, running)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await _reload(running, path)
                    continue
                log.info(
                    "%s received: closing all streams and exiting", signal.Signals(signum).name
                )
                break
        nursery.cancel_scope.cancel()


async def _reload(running: Server | Client, path: Path) -> None:
    """SIGHUP: re-read the config; apply what can change live, log what cannot."""
    log.info("SIGHUP received: reloading %s", path)
    try:
        config = load_config(path)
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
