"""The logging pipeline: rate limits, per-logger levels, formats, stuck and failing outputs.

Rules: the rate limiter is pure and gets its time from the test; the pipeline gets a clock the
test advances; real pipes, /dev/full and UDP sockets on 127.0.0.1 stand for stuck, full and
remote outputs; every wait is bounded (a thread joined with a timeout, a socket timeout).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tunnel import _logging
from trio_tunnel._config import LoggingSettings
from trio_tunnel._logging._outputs import FileSink, Output, StdoutSink
from trio_tunnel._logging._ratelimit import SUMMARY_ATTR, RateLimiter

from .helpers import LOCALHOST

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([\w-]+) (\w+) ([\w.-]+): (.*)$")
SUMMARY = re.compile(r"\.\.\. (\d+) more like this in the last (\S+) s \(the last: (.*)\)$")
F_SETPIPE_SZ = 1031  # Linux fcntl: set a pipe's capacity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers, level and the loggers' levels given back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = ["trio_tunnel.stream", "trio_tunnel.server", "trio-websocket", "wsproto"]
    levels = {name: logging.getLogger(name).level for name in named}
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
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    _logging.set_process(_logging.DEFAULT_PROCESS)


def record(
    msg: str = "refused %s: %s",
    args: tuple[object, ...] = ("10.0.0.1:5000", "wrong auth token"),
    *,
    name: str = "trio_tunnel.server",
    level: int = logging.WARNING,
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def refusal(n: int) -> logging.LogRecord:
    return record(args=(f"10.0.{n // 250}.{n % 250}:5000", "wrong auth token"))


# --- the rate limiter (pure) ----------------------------------------------------------------


def test_a_flood_gives_a_handful_of_lines_and_one_summary() -> None:
    limiter = RateLimiter()
    start = 1000.0
    passed = [n for n in range(1000) if limiter.admit(refusal(n), start + n * 0.0002)]
    assert passed == [0, 1, 2, 3, 4]
    assert limiter.due(start + 9.9) == []
    [summary] = limiter.due(start + 10.01)  # 10 s after the first one held back
    assert getattr(summary, SUMMARY_ATTR) is True
    assert (summary.name, summary.levelno) == ("trio_tunnel.server", logging.WARNING)
    assert summary.getMessage() == (
        "... 995 more like this in the last 10 s (the last: refused 10.0.3.249:5000: "
        "wrong auth token)"
    )
    assert limiter.due(start + 100) == []


def test_kinds_are_logger_and_template() -> None:
    limiter = RateLimiter(burst=1)
    assert limiter.admit(record(), 0.0)
    assert not limiter.admit(record(args=("10.9.9.9:1", "other")), 0.0)
    assert limiter.admit(record("unknown path %r"), 0.0)  # another template
    assert limiter.admit(record(name="trio_tunnel.client"), 0.0)  # another logger
    assert limiter.admit(record(level=logging.INFO), 0.0)  # below WARNING: never limited
    assert [s.getMessage() for s in limiter.end_all(0.5)] == [
        "... 1 more like this in the last 0.5 s (the last: refused 10.9.9.9:1: other)"
    ]


def test_after_the_burst_one_record_a_second_passes() -> None:
    limiter = RateLimiter(burst=5, rate=1.0)
    first = [limiter.admit(refusal(n), 0.0) for n in range(10)]
    assert first.count(True) == 5
    assert limiter.admit(refusal(10), 1.0)
    assert not limiter.admit(refusal(11), 1.0)
    # A quiet kind fills its bucket again: a later failover's few lines all pass.
    assert all(limiter.admit(refusal(n), 60.0) for n in range(5))


def test_state_changes_spread_out_are_never_held_back() -> None:
    limiter = RateLimiter()
    state = "state (epoch %d): %s; connected: %s; active: %s"
    times = [0.0, 0.1, 0.2, 3.0, 3.1, 3.2, 3.3, 9.0, 9.1, 9.2]
    assert all(limiter.admit(record(state, (n, "x", "1,2", 1)), t) for n, t in enumerate(times))
    assert limiter.end_all(10.0) == []


def summed_up(summaries: list[logging.LogRecord]) -> int:
    """How many records the summaries say were held back."""
    total = 0
    for summary in summaries:
        match = SUMMARY.search(summary.getMessage())
        assert match is not None, summary.getMessage()
        total += int(match[1])
    return total


def test_ever_new_texts_from_one_logger_are_still_limited() -> None:
    limiter = RateLimiter(max_kinds=10)
    # f-strings: every template differs.
    passed = [limiter.admit(record(f"error number {n}", ()), 0.0) for n in range(1000)]
    assert passed.count(True) <= 5 + 5 + 5  # the bursts of five kinds, then of the logger
    assert summed_up(limiter.end_all(1.0)) == passed.count(False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 0.5, allow_nan=False)), min_size=1, max_size=300
    ),
    st.sampled_from([3, 8]),
)
def test_every_record_is_written_or_counted_once(
    events: list[tuple[int, float]], max_kinds: int
) -> None:
    """Records passed plus the counts in the summaries add up to the records logged: per kind
    while every kind has a slot, in all when kinds overflow into their logger's."""
    limiter = RateLimiter(window=2.0, burst=3, rate=2.0, max_kinds=max_kinds)
    now = 0.0
    logged: dict[str, int] = {}
    accounted: dict[str, int] = {}
    for kind, step in events:
        now += step
        for summary in limiter.due(now):
            match = SUMMARY.search(summary.getMessage())
            assert match is not None
            accounted[match[3]] = accounted.get(match[3], 0) + int(match[1])
        text = f"kind {kind}"
        logged[text] = logged.get(text, 0) + 1
        if limiter.admit(record(text, ()), now):
            accounted[text] = accounted.get(text, 0) + 1
    for summary in limiter.end_all(now):
        match = SUMMARY.search(summary.getMessage())
        assert match is not None
        accounted[match[3]] = accounted.get(match[3], 0) + int(match[1])
    assert sum(accounted.values()) == sum(logged.values())
    if max_kinds // 2 >= 4:
        assert accounted == logged


# --- rate limits through the real outputs ---------------------------------------------------


def test_stdout_and_syslog_both_get_the_handful_and_the_summary(
    root_logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((LOCALHOST, 0))
        receiver.settimeout(10)
        settings_ = LoggingSettings(syslog_host=LOCALHOST, syslog_port=receiver.getsockname()[1])
        pipeline = _logging.Pipeline(clock=clock)
        pipeline.configure(
            _logging.outputs_for(settings_, "server"), process="server", json_format=False
        )
        root_logger.addHandler(pipeline)
        log = logging.getLogger("trio_tunnel.server")
        for n in range(1000):
            log.warning("refused %s: %s", f"127.0.0.{n % 200 + 2}:4000", "unknown path '/x'")
            clock.now += 0.0002
        clock.now += 10
        pipeline.tick()
        pipeline.flush()
        datagrams = [receiver.recv(65536) for _ in range(6)]
        receiver.settimeout(0.2)
        with pytest.raises(TimeoutError):
            receiver.recv(65536)
    lines = capfd.readouterr().out.splitlines()
    assert len(lines) == 6, lines
    for line, datagram in zip(lines, datagrams, strict=True):
        match = TEXT_LINE.match(line)
        assert match is not None, line
        assert match.groups()[:3] == ("server", "WARNING", "trio_tunnel.server")
        assert datagram.startswith(b"<12>trio-tunnel[server]: WARNING trio_tunnel.server: ")
        assert datagram.removesuffix(b"\x00").endswith(match[4].encode())
    assert SUMMARY.search(lines[-1]) is not None
    assert "995 more like this in the last 10 s" in lines[-1]


# --- levels ---------------------------------------------------------------------------------


def test_per_logger_levels(root_logger: logging.Logger, capfd: pytest.CaptureFixture[str]) -> None:
    _logging.setup(LoggingSettings(level="DEBUG", levels={"trio_tunnel.stream": "warning"}))
    logging.getLogger("trio_tunnel.stream").info("stream 1 closed")
    logging.getLogger("trio_tunnel.stream").warning("stream 2 reset")
    logging.getLogger("trio_tunnel.server").debug("server detail")
    logging.getLogger("trio-websocket").debug("per-message line")
    logging.getLogger("trio-websocket").warning("trio-websocket trouble")
    _logging.flush()
    messages = [TEXT_LINE.match(line)[4] for line in capfd.readouterr().out.splitlines()]  # type: ignore[index]
    assert messages == ["stream 2 reset", "server detail", "trio-websocket trouble"]


def test_named_third_party_loggers_follow_levels(
    root_logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    _logging.setup(LoggingSettings(level="DEBUG", levels={"trio-websocket": "DEBUG"}))
    logging.getLogger("trio-websocket").debug("per-message line")
    _logging.flush()
    assert "per-message line" in capfd.readouterr().out


def test_quiet_third_party_loggers_never_go_below_the_level(root_logger: logging.Logger) -> None:
    _logging.setup(LoggingSettings(level="ERROR"))
    assert logging.getLogger("trio-websocket").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("wsproto").getEffectiveLevel() == logging.ERROR


def test_a_reload_undoes_levels_no_longer_named(root_logger: logging.Logger) -> None:
    settings_ = LoggingSettings(levels={"trio_tunnel.stream": "ERROR"})
    _logging.setup(settings_)
    assert logging.getLogger("trio_tunnel.stream").getEffectiveLevel() == logging.ERROR
    _logging.setup(attrs.evolve(settings_, levels={}))
    assert logging.getLogger("trio_tunnel.stream").level == logging.NOTSET
    assert logging.getLogger("trio_tunnel.stream").getEffectiveLevel() == logging.INFO


# --- formats --------------------------------------------------------------------------------


def test_python_warnings_go_through_the_pipeline(
    root_logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    _logging.setup(LoggingSettings(), process="server")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("something deprecated", DeprecationWarning, stacklevel=1)
    _logging.flush()
    out, err = capfd.readouterr()
    assert err == ""
    line = out.splitlines()[0]  # the source line of the warning follows
    match = TEXT_LINE.match(line)
    assert match is not None
    assert match.groups()[:3] == ("server", "WARNING", "py.warnings")
    assert "DeprecationWarning: something deprecated" in match[4]


def test_every_line_names_the_process(
    root_logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    assert _logging.process_label("server", None) == "server"
    assert _logging.process_label("client", 2) == "client2"
    _logging.setup(LoggingSettings(), process="client1")
    logging.getLogger("trio_tunnel.client").warning("client 1: now ACTIVE (epoch 3)")
    _logging.flush()
    [line] = capfd.readouterr().out.splitlines()
    match = TEXT_LINE.match(line)
    assert match is not None
    assert match.groups() == (
        "client1",
        "WARNING",
        "trio_tunnel.client",
        "client 1: now ACTIVE (epoch 3)",
    )


def test_json_lines(root_logger: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "tunnel.log"
    _logging.setup(LoggingSettings(stdout=False, file=str(path), format="json"), process="server")
    log = logging.getLogger("trio_tunnel.server")
    log.warning("state (epoch %d): %s", 2, 'active client 1 -> 2: "lost"')
    try:
        int("bad frame")
    except ValueError:
        log.exception("internal error")
    _logging.flush()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert set(first) == {"time", "level", "logger", "process", "message"}
    assert (first["level"], first["logger"], first["process"]) == (
        "WARNING",
        "trio_tunnel.server",
        "server",
    )
    assert first["message"] == 'state (epoch 2): active client 1 -> 2: "lost"'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", first["time"])
    assert second["message"] == "internal error"
    assert second["exception"].startswith("Traceback (most recent call last):")
    assert second["exception"].endswith(
        "ValueError: invalid literal for int() with base 10: 'bad frame'"
    )


def test_journal_lines_carry_priorities(
    root_logger: logging.Logger, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status = os.fstat(1)
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    _logging.setup(LoggingSettings(level="DEBUG"), process="client2")
    log = logging.getLogger("trio_tunnel.client")
    log.debug("detail")
    log.info("connected")
    log.warning("demoted")
    try:
        os.close(-1)
    except OSError:
        log.exception("lost")
    log.critical("giving up")
    _logging.flush()
    lines = capfd.readouterr().out.splitlines()
    # No time: the journal stamps each line. A traceback's lines all keep the error priority.
    assert lines[:3] == [
        "<7>client2 DEBUG trio_tunnel.client: detail",
        "<6>client2 INFO trio_tunnel.client: connected",
        "<4>client2 WARNING trio_tunnel.client: demoted",
    ]
    assert lines[3] == "<3>client2 ERROR trio_tunnel.client: lost"
    assert lines[4] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines[3:-1])
    assert lines[-1] == "<2>client2 CRITICAL trio_tunnel.client: giving up"


def test_journal_stream_of_another_file_is_ignored(
    root_logger: logging.Logger,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    other = os.stat(tmp_path)  # inherited from a parent whose stdout was the journal
    monkeypatch.setenv("JOURNAL_STREAM", f"{other.st_dev}:{other.st_ino}")
    _logging.setup(LoggingSettings())
    logging.getLogger("trio_tunnel.client").warning("plain")
    _logging.flush()
    [line] = capfd.readouterr().out.splitlines()
    assert TEXT_LINE.match(line) is not None


# --- stuck and failing outputs --------------------------------------------------------------


def small_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    return read_end, write_end


def offer_in_thread(output: Output, records: list[logging.LogRecord]) -> None:
    """Offer every record from another thread; fail if offering ever blocks."""

    def offer_all() -> None:
        for one in records:
            output.offer(one)

    thread = threading.Thread(target=offer_all)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "offer() blocked"


def test_a_pipe_nobody_reads_drops_counts_and_says_so_once_drained() -> None:
    read_end, write_end = small_pipe()
    warnings: list[str] = []
    with os.fdopen(write_end, "w") as stream:
        sink = StdoutSink(stream)
        sink.formatter = logging.Formatter("%(message)s")
        output = Output(sink, lambda _o, r, _w: warnings.append(r.getMessage()), capacity=100)
        try:
            records = [record("line %d " + "x" * 100, (n,), level=logging.INFO) for n in range(500)]
            offer_in_thread(output, records)
            dropped = output.dropped_total
            assert dropped > 0
            assert warnings == [
                "stdout is blocked (100 records waiting): its log records are dropped until "
                "it drains"
            ]
            received = b""
            expected = f"{dropped} log records dropped while stdout was blocked\n".encode()
            deadline = time.monotonic() + 10
            while expected not in received:
                assert time.monotonic() < deadline, received[-500:]
                received += os.read(read_end, 65536)
            lines = received.decode().splitlines()
            written = [line for line in lines if line.startswith("line ")]
            assert len(written) + dropped == 500
            assert written[0].startswith("line 0 ")  # the oldest were kept, in order
        finally:
            output.stop()
            os.set_blocking(read_end, False)
            while True:
                try:
                    if not os.read(read_end, 65536):
                        break
                except BlockingIOError:
                    if not output.join(0.05):
                        continue
                    break
            assert output.join(10)
            os.close(read_end)


def test_a_full_disk_warns_once_and_never_prints_a_traceback(
    root_logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    pipeline = _logging.Pipeline()
    stdout = StdoutSink(os.fdopen(os.dup(1), "w"))
    pipeline.configure(
        {
            ("stdout", 0): lambda: stdout,
            ("file", "/dev/full"): lambda: FileSink(_logging.file_handler("/dev/full", 14)),
        },
        process="server",
        json_format=False,
    )
    log = logging.getLogger("trio_tunnel.test.full")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(pipeline)
    try:
        for n in range(300):
            log.info("stream %d closed", n)
        pipeline.flush()
        assert pipeline.dropped() == {"stdout": 0, "the log file /dev/full": 300}
    finally:
        log.removeHandler(pipeline)
        log.propagate = True
        pipeline.close()
    out, err = capfd.readouterr()
    assert err == ""
    warnings = [line for line in out.splitlines() if "/dev/full" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith(
        "WARNING trio_tunnel.logging: cannot write to the log file /dev/full: [Errno 28] No "
        "space left on device; its log records are dropped until it works again (retried "
        "every 1s)"
    )
    assert len([line for line in out.splitlines() if "closed" in line]) == 300


class FlakySink:
    """A sink whose disk is full while ``full`` is set (the real file case is /dev/full above)."""

    name = "the log file /tmp/flaky.log"

    def __init__(self) -> None:
        self.formatter: logging.Formatter | None = logging.Formatter("%(message)s")
        self.full = True
        self.lines: list[str] = []

    def write(self, records: Sequence[logging.LogRecord]) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        assert self.formatter is not None
        self.lines += [self.formatter.format(record) for record in records]

    def close(self) -> None:
        pass


def test_a_failing_output_reports_what_it_lost_when_it_works_again() -> None:
    sink = FlakySink()
    warnings: list[tuple[str, bool]] = []
    output = Output(
        sink, lambda _o, r, in_writer: warnings.append((r.getMessage(), in_writer)), retry_secs=0
    )
    try:
        for n in range(50):
            output.offer(record("lost %d", (n,), level=logging.INFO))
        assert output.flush(10)
        sink.full = False
        output.offer(record("back", (), level=logging.INFO))
        assert output.flush(10)
    finally:
        output.stop()
        assert output.join(10)
    assert warnings == [
        (
            "cannot write to the log file /tmp/flaky.log: [Errno 28] No space left on device; "
            "its log records are dropped until it works again (retried every 0s)",
            True,
        )
    ]
    assert sink.lines == [
        "back",
        "50 log records dropped while the log file /tmp/flaky.log was failing "
        "([Errno 28] No space left on device)",
    ]
    assert output.dropped_total == 50


def test_close_writes_what_is_queued_and_the_pending_summaries(
    root_logger: logging.Logger, tmp_path: Path
) -> None:
    path = tmp_path / "tunnel.log"
    pipeline = _logging.setup(LoggingSettings(stdout=False, file=str(path)))
    log = logging.getLogger("trio_tunnel.server")
    for n in range(20):
        log.warning("tunnel %s: connection refused: no client is connected", f"t{n}")
    for n in range(200):
        log.info("stream %d closed", n)
    pipeline.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 5 + 200 + 1
    assert "... 15 more like this in the last" in lines[-1]
    assert lines[-2].endswith("stream 199 closed")
