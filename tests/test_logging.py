"""The [logging] table: its checks, and the stdout, rotated-file and syslog outputs."""

from __future__ import annotations

import datetime
import gzip
import logging
import logging.handlers
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_tunnel import _cli, _logging
from trio_tunnel._config import (
    LoggingSettings,
    describe_config,
    load_config,
    load_environment,
    parse_config,
)
from trio_tunnel._errors import ConfigError
from trio_tunnel._logging._outputs import FileSink

from .helpers import LOCALHOST

SERVER: dict[str, Any] = {"role": "server", "websocket": {"url": "ws://127.0.0.1:8080/"}}
# A text line: time, process, level, logger: message.
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([\w-]+) (\w+) ([\w.]+): (.*)$")


def with_logging(**keys: object) -> dict[str, Any]:
    return {**SERVER, "logging": keys}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:  # from parsing, or else from the load step
        load_environment(parse_config(data, "t.toml"), "t.toml")
    return str(info.value).splitlines()


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, given back afterwards with the handlers and level it had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    _logging.shutdown()
    logging.captureWarnings(False)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def rotating_file(pipeline: _logging.Pipeline) -> _logging.RotatingFile:
    [handler] = [o.sink.handler for o in pipeline.outputs.values() if isinstance(o.sink, FileSink)]
    return handler


# --- configuration ----------------------------------------------------------------------------


def test_defaults() -> None:
    settings = parse_config(SERVER).logging
    assert settings == LoggingSettings()
    assert (settings.level, settings.stdout, settings.file) == ("INFO", True, None)
    assert (settings.days_to_keep, settings.syslog_host) == (14, None)
    assert (settings.syslog_port, settings.syslog_facility) == (514, "user")
    assert (settings.levels, settings.format) == ({}, "text")


def test_all_keys(tmp_path: Path) -> None:
    log_file = str(tmp_path / "tunnel.log")
    settings = parse_config(
        with_logging(
            level="debug",
            stdout=False,
            file=log_file,
            days_to_keep=30,
            syslog_host="127.0.0.1",
            syslog_port=5514,
            syslog_facility="LOCAL3",
            levels={"trio_tunnel.stream": "warning", "trio-websocket": "Debug"},
            format="JSON",
        )
    ).logging
    assert settings == LoggingSettings(
        level="DEBUG",
        stdout=False,
        file=log_file,
        days_to_keep=30,
        syslog_host="127.0.0.1",
        syslog_port=5514,
        syslog_facility="local3",
        levels={"trio_tunnel.stream": "WARNING", "trio-websocket": "DEBUG"},
        format="json",
    )
    assert hash(settings) == hash(attrs.evolve(settings))  # still hashable with a table inside


def test_syslog_host_name_resolves() -> None:
    assert parse_config(with_logging(syslog_host="localhost")).logging.syslog_host == "localhost"


def test_relative_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "server.toml"
    path.write_text(
        'role = "server"\n[websocket]\nurl = "ws://127.0.0.1:8080/"\n'
        '[logging]\nfile = "logs/tunnel.log"\n'
    )
    assert load_config(path).logging.file == str(tmp_path / "logs" / "tunnel.log")


BAD = [
    ({"stdout": "yes"}, "logging.stdout: expected true or false (got the string 'yes')"),
    ({"file": 1}, "logging.file: expected a string (got the integer 1)"),
    ({"file": ""}, "logging.file: expected a file name (got '')"),
    ({"file": "/nonexistent-dir/x/tunnel.log"}, "logging.file: directory '/nonexistent-dir/x'"),
    ({"file": "/dev/null"}, "logging.file: '/dev/null' is not a regular file"),
    ({"days_to_keep": 0}, "logging.days_to_keep: must be 1..3650 (got 0)"),
    ({"file": "/tmp/x.log", "days_to_keep": True}, "logging.days_to_keep: expected an integer"),
    ({"syslog_host": "bad host!"}, "logging.syslog_host: expected an IP address or a host name"),
    ({"syslog_host": "no-such-host.invalid"}, "logging.syslog_host: cannot resolve"),
    ({"syslog_host": "::1", "syslog_port": 0}, "logging.syslog_port: must be 1..65535 (got 0)"),
    ({"syslog_host": "::1", "syslog_facility": "local9"}, "logging.syslog_facility: must be one"),
    ({"syslog_port": 5514}, "logging.syslog_port: only used with syslog_host (which is not set)"),
    ({"syslog_facility": "daemon"}, "logging.syslog_facility: only used with syslog_host"),
    ({"days_to_keep": 7}, "logging.days_to_keep: only used with file (which is not set)"),
]


@pytest.mark.parametrize(("keys", "expected"), BAD)
def test_bad_logging_config_names_the_key(keys: dict[str, object], expected: str) -> None:
    lines = problems(with_logging(**keys))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"t.toml: {expected}"), lines


def test_file_that_is_a_directory(tmp_path: Path) -> None:
    [line] = problems(with_logging(file=str(tmp_path)))
    assert (
        line
        == f"t.toml: logging.file: {str(tmp_path)!r} is a directory (give the name of a file in it)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_file_in_read_only_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        [line] = problems(with_logging(file=str(tmp_path / "x.log")))
    finally:
        tmp_path.chmod(0o700)
    assert line == f"t.toml: logging.file: directory {str(tmp_path)!r} is not writable"


def test_every_logging_problem_is_reported_at_once(tmp_path: Path) -> None:
    lines = problems(
        with_logging(file=str(tmp_path / "no" / "x.log"), syslog_host="a..b", stdout=1)
    )
    # The missing directory is the load step's to report, once parsing passes.
    assert [line.split(":")[1].strip() for line in lines] == [
        "logging.stdout",
        "logging.syslog_host",
    ]


def test_python_built_settings_are_checked() -> None:
    settings = LoggingSettings(syslog_host="no-such-host.invalid")  # pure: resolves nothing
    config = attrs.evolve(parse_config(SERVER), logging=settings)
    with pytest.raises(ConfigError, match=r"^logging\.syslog_host: cannot resolve 'no-such-host"):
        load_environment(config)


def test_describe(tmp_path: Path) -> None:
    config = parse_config(
        with_logging(file=str(tmp_path / "t.log"), syslog_host="127.0.0.1", stdout=False)
    )
    text = describe_config(config)
    assert f"to {tmp_path / 't.log'} (rotated daily, 14 old files kept gzipped)" in text
    assert "to syslog at 127.0.0.1:514 (UDP, facility user)" in text
    assert "to stdout" not in text
    assert "logging: level INFO, to stdout\n" in describe_config(
        attrs.evolve(config, logging=LoggingSettings())
    )
    quiet = attrs.evolve(config, logging=LoggingSettings(stdout=False))
    assert "logging: level INFO, nowhere (stdout = false and no file or syslog)" in (
        describe_config(quiet)
    )


# --- outputs ----------------------------------------------------------------------------------


def test_stdout(root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    _cli.setup_logging("WARNING")
    logging.getLogger("trio_tunnel.test").warning("to stdout %d", 1)
    logging.getLogger("trio_tunnel.test").info("below the level")
    _logging.flush()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    match = LINE.match(out[0])
    assert match is not None
    assert match.groups() == ("trio-tunnel", "WARNING", "trio_tunnel.test", "to stdout 1")


def test_nothing_when_every_output_is_off(
    root_logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    pipeline = _logging.setup(LoggingSettings(stdout=False))
    assert pipeline.outputs == {}
    assert root_logger.handlers == [pipeline]  # not the last-resort stderr handler
    logging.getLogger("trio_tunnel.test").error("nowhere")
    _logging.flush()
    assert capfd.readouterr() == ("", "")


def test_file_receives_records(root_logger: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "tunnel.log"
    _cli.setup_logging(LoggingSettings(level="DEBUG", stdout=False, file=str(path)))
    logging.getLogger("trio_tunnel.test").debug("into the file")
    _logging.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    match = LINE.match(lines[0])
    assert match is not None
    assert match.groups() == ("trio-tunnel", "DEBUG", "trio_tunnel.test", "into the file")


def test_setup_replaces_the_previous_outputs(root_logger: logging.Logger, tmp_path: Path) -> None:
    first = _logging.setup(LoggingSettings(stdout=False, file=str(tmp_path / "a.log")))
    old_file = rotating_file(first)
    second = _logging.setup(LoggingSettings(stdout=False, file=str(tmp_path / "b.log")))
    assert root_logger.handlers == [second]
    assert [o.sink.name for o in second.outputs.values()] == [f"the log file {tmp_path / 'b.log'}"]
    logging.getLogger("trio_tunnel.test").warning("only in b")
    _logging.flush()
    assert (tmp_path / "a.log").read_text() == ""
    assert "only in b" in (tmp_path / "b.log").read_text()
    deadline = time.monotonic() + 10
    while old_file.stream is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # the old output's thread closes it once it has written its queue
    assert old_file.stream is None


def test_unchanged_outputs_keep_running_across_setups(
    root_logger: logging.Logger, tmp_path: Path
) -> None:
    settings = LoggingSettings(stdout=False, file=str(tmp_path / "a.log"))
    first = _logging.setup(settings)
    outputs = dict(first.outputs)
    second = _logging.setup(attrs.evolve(settings, level="DEBUG"))
    assert second is first
    assert second.outputs == outputs
    logging.getLogger("trio_tunnel.test").debug("still the same file")
    _logging.flush()
    assert "still the same file" in (tmp_path / "a.log").read_text()


def test_rotation_gzips_the_old_file(root_logger: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "tunnel.log"
    handler = rotating_file(_logging.setup(LoggingSettings(stdout=False, file=str(path))))
    assert (handler.when, handler.backupCount) == ("MIDNIGHT", 14)
    log = logging.getLogger("trio_tunnel.test")
    log.warning("yesterday")
    _logging.flush()
    handler.doRollover()
    rotator = handler.rotator
    assert isinstance(rotator, _logging.GzipRotator)
    assert rotator.join(10)
    log.warning("today")
    _logging.flush()
    archives = sorted(p.name for p in tmp_path.iterdir() if p.name != "tunnel.log")
    assert len(archives) == 1, archives
    assert re.fullmatch(r"tunnel\.log\.\d{4}-\d\d-\d\d\.gz", archives[0])
    with gzip.open(tmp_path / archives[0], "rt") as archive:
        assert archive.read().endswith("yesterday\n")
    assert path.read_text().endswith("today\n")
    assert "yesterday" not in path.read_text()


def test_rotation_keeps_days_to_keep_archives(root_logger: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "tunnel.log"
    today = datetime.date.today()
    old = [f"tunnel.log.{today - datetime.timedelta(days=n)}.gz" for n in range(2, 8)]
    for name in old:
        (tmp_path / name).write_bytes(gzip.compress(b"old\n"))
    (tmp_path / "unrelated.txt").write_text("keep me")
    handler = rotating_file(
        _logging.setup(LoggingSettings(stdout=False, file=str(path), days_to_keep=3))
    )
    logging.getLogger("trio_tunnel.test").warning("last line of the day")
    _logging.flush()
    handler.doRollover()
    rotator = handler.rotator
    assert isinstance(rotator, _logging.GzipRotator)
    assert rotator.join(10)
    left = sorted(p.name for p in tmp_path.iterdir())
    archives = [name for name in left if name.endswith(".gz")]
    # The newest three: the one just rotated and the two most recent old ones.
    assert len(archives) == 3, left
    assert set(old[:2]) < set(archives)
    assert "unrelated.txt" in left
    assert "tunnel.log" in left


def test_syslog_over_udp(root_logger: logging.Logger) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((LOCALHOST, 0))
        receiver.settimeout(10)
        port = receiver.getsockname()[1]
        _logging.setup(
            LoggingSettings(
                stdout=False, syslog_host=LOCALHOST, syslog_port=port, syslog_facility="local3"
            ),
            process="client2",
        )
        logging.getLogger("trio_tunnel.test").warning("to syslog")
        logging.getLogger("trio_tunnel.test").error("an error")
        first, second = receiver.recv(65536), receiver.recv(65536)
    local3 = logging.handlers.SysLogHandler.LOG_LOCAL3
    warning, error = (
        logging.handlers.SysLogHandler.LOG_WARNING,
        logging.handlers.SysLogHandler.LOG_ERR,
    )
    for datagram, severity, text in (
        (first, warning, b"WARNING trio_tunnel.test: to syslog"),
        (second, error, b"ERROR trio_tunnel.test: an error"),
    ):
        # The tag names the process; the receiver stamps the time.
        match = re.fullmatch(rb"<(\d+)>trio-tunnel\[client2\]: (.*)\x00", datagram)
        assert match is not None, datagram
        assert int(match[1]) == local3 * 8 + severity
        assert match[2] == text
