"""``nox -s bench``: trio-tunnel's throughput, latency, memory and CPU, beside websocat's.

Starts a real server and client 1 (``python -m trio_tunnel run``) from TOML configs in a temp
dir, a traffic service (sink / echo / source, bench/netio.py) as their common target, and a
websocat pair on the same path when websocat is on PATH. Every transfer is driven by a separate
worker process with 1 MiB blocking sends and reads, so this driver is never the bottleneck.
Prints a table on stdout and writes everything it measured to bench-results/bench-*.json.

    python bench/bench.py [--quick] [--size-mib 1024] [--runs 3] [--long-mib 5120] ...

MB here is 10^6 bytes, MiB and GiB are powers of two. Each phase is bounded in time: one that
fails or times out is reported as FAILED and the bench goes on. All processes are ended at
the end, on error or on SIGINT/SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rig import (
    NETIO,
    PhaseError,
    RssSampler,
    Service,
    TunnelPair,
    WebsocatPair,
    cpu_seconds,
    find_websocat,
    host_busy,
    memory,
    run_worker,
)

MIB = 1 << 20
GIB = 1 << 30
REPO = Path(__file__).resolve().parent.parent
Result = dict[str, Any]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark trio-tunnel (and websocat, when installed) on loopback."
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes, one run: a smoke test in ~1 minute")
    add(
        "--size-mib",
        type=int,
        default=int(os.environ.get("BENCH_SIZE_MIB", "1024")),
        help="bytes per one-stream run (default 1024, or $BENCH_SIZE_MIB)",
    )
    add("--runs", type=int, default=3, help="runs per one-stream figure; the median is shown")
    add("--parallel-streams", type=int, default=8)
    add("--parallel-mib", type=int, default=128, help="MiB per parallel stream")
    add("--long-mib", type=int, default=5120, help="the SHA-256-verified long transfer")
    add("--latency-count", type=int, default=1000, help="500-byte round trips per figure")
    add("--newstream-count", type=int, default=200)
    add("--bulk-seconds", type=float, default=60, help="cap on the ping-pong under bulk")
    add("--min-rate-mib", type=float, default=8, help="a transfer slower than this times out")
    add("--many-streams", type=int, default=1000, help="concurrent 64 KiB echoes (memory)")
    add("--slow-seconds", type=float, default=10, help="how long to feed the slow receiver")
    add("--window-bytes", type=int, help="set [streams] window_bytes in both configs")
    add("--websocat", help="the websocat binary (default: websocat on PATH)")
    add("--no-websocat", action="store_true")
    add("--out-dir", type=Path, default=REPO / "bench-results")
    return parser


def _settings(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    if parser.parse_known_args(argv)[0].quick:
        # Small defaults; sizes given explicitly on the command line still win.
        parser.set_defaults(
            size_mib=64,
            runs=1,
            parallel_mib=16,
            long_mib=256,
            bulk_seconds=5,
            many_streams=200,
            slow_seconds=3,
        )
    return parser.parse_args(argv)


# --- figures ---------------------------------------------------------------------------------


def _ms_summary(seconds: list[float]) -> Result:
    if not seconds:
        raise PhaseError("no samples")
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "count": len(ordered),
        "median_ms": statistics.median(ordered) * 1e3,
        "p99_ms": p99 * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.results: dict[str, Result] = {}
        self.sampler = RssSampler()
        self.service = Service()
        self.procs: dict[str, int] = {}

    def close(self) -> None:
        self.service.close()
        self.sampler.close()

    def track(self, pids: dict[str, int]) -> None:
        self.procs = pids
        self.sampler.track(pids)

    def timeout(self, nbytes: int) -> float:
        return 30 + nbytes / (float(self.args.min_rate_mib) * MIB)

    def phase(self, name: str, run: Callable[[], Result]) -> Result:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        busy0, _ = host_busy()
        ours0 = self._our_cpu()
        start = time.monotonic()
        try:
            result = {"ok": True, **run()}
        except PhaseError as exc:
            result = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug here must not stop the other phases
            traceback.print_exc()
            result = {"ok": False, "error": repr(exc)}
        wall = time.monotonic() - start
        busy1, _ = host_busy()
        result["wall_s"] = wall
        # Whole-machine CPU use during the phase, in cores (2 = both cores fully busy), and
        # the part of it that was not the bench's own processes: other work on the machine.
        result["host_busy_cores"] = (busy1 - busy0) / wall
        result["other_busy_cores"] = max(0.0, (busy1 - busy0 - self._our_cpu() + ours0) / wall)
        self.results[name] = result
        status = "ok" if result["ok"] else f"FAILED: {result['error']}"
        print(f"[bench] {name}: {status} ({wall:.1f} s)", file=sys.stderr, flush=True)
        return result

    def _our_cpu(self) -> float:
        """CPU seconds of this process, its waited-for workers, the service and the pair."""
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        for pid in [self.service.proc.pid, *self.procs.values()]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += cpu_seconds(pid)
        return total

    # --- measurements ------------------------------------------------------------------------

    def _cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.procs.items()}

    def _figures(
        self, moved: int, seconds: float, cpu0: dict[str, float], verified: bool
    ) -> Result:
        cpu1 = self._cpu()
        used = {name: cpu1[name] - cpu0[name] for name in cpu0}
        return {
            "bytes": moved,
            "seconds": seconds,
            "mb_s": moved / seconds / 1e6,
            "cpu_s": used,
            "cpu_s_per_gib": {name: value / (moved / GIB) for name, value in used.items()},
            "rss_peak": self.sampler.peaks(),
            "sha256_verified": verified,
        }

    def send_to_sink(
        self, port: int, size: int, *, streams: int = 1, verify: bool = False
    ) -> Result:
        """``streams`` x ``size`` bytes into ``port``; timed from connect to the sink's EOF."""
        self.service.drain()
        self.sampler.reset()
        cpu0 = self._cpu()
        cmd = ["send", "--port", str(port), "--size", str(size), "--streams", str(streams)]
        sent = run_worker([*cmd, "--verify"] if verify else cmd, self.timeout(size * streams))
        failed = [s["error"] for s in sent["streams"] if "error" in s]
        if failed:
            raise PhaseError(f"sender: {failed[0]}")
        sinks = self.service.records(streams, timeout=30)
        for sink in sinks:
            if sink["bytes"] != size:
                raise PhaseError(f"the sink got {sink['bytes']} of {size} bytes")
            if verify and sink["sha256"] != sent["sha256"]:
                raise PhaseError("SHA-256 mismatch: the data arrived corrupted")
        seconds = max(s["t_eof"] for s in sinks) - min(s["t0"] for s in sent["streams"])
        return self._figures(size * streams, seconds, cpu0, verify)

    def recv_from_source(self, port: int, size: int, *, verify: bool = False) -> Result:
        """``size`` bytes from the SOURCE behind ``port``; timed from connect to our EOF."""
        self.service.drain()
        self.sampler.reset()
        cpu0 = self._cpu()
        cmd = ["recv", "--port", str(port), "--size", str(size)]
        got = run_worker([*cmd, "--verify"] if verify else cmd, self.timeout(size))
        self.service.records(1, timeout=30)
        if got["bytes"] != size:
            raise PhaseError(f"received {got['bytes']} of {size} bytes")
        if verify and got["sha256"] != got["expected_sha256"]:
            raise PhaseError("SHA-256 mismatch: the data arrived corrupted")
        return self._figures(size, got["t_eof"] - got["t0"], cpu0, verify)

    def throughput(self, transfer: Callable[[bool], Result]) -> Result:
        """``--runs`` transfers, the first one SHA-256 verified; medians of the figures."""
        runs = [transfer(i == 0) for i in range(self.args.runs)]
        names = runs[0]["cpu_s_per_gib"].keys()
        return {
            "runs": runs,
            "mb_s": statistics.median(r["mb_s"] for r in runs),
            "mb_s_min": min(r["mb_s"] for r in runs),
            "mb_s_max": max(r["mb_s"] for r in runs),
            "cpu_s_per_gib": {
                n: statistics.median(r["cpu_s_per_gib"][n] for r in runs) for n in names
            },
            "rss_peak": {n: max(r["rss_peak"].get(n, 0) for r in runs) for n in names},
        }

    def latency(self, port: int, count: int | None = None, max_seconds: float = 60) -> Result:
        count = count or self.args.latency_count
        cmd = ["pingpong", "--port", str(port), "--count", str(count), "--size", "500"]
        out = run_worker([*cmd, "--max-seconds", str(max_seconds)], max_seconds + 60)
        return {**_ms_summary(out["rtts"]), "complete": out["complete"]}

    def latency_under_bulk(self, ping_port: int, bulk_port: int) -> Result:
        """Ping-pong on one stream while another stream of the same tunnel sends flat out."""
        self.service.drain()
        cmd = ["send", "--port", str(bulk_port), "--size", str(1 << 40), "--until-stdin-eof"]
        bulk = subprocess.Popen(
            [sys.executable, NETIO, *cmd, "--timeout", "60"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)  # let the bulk stream fill its window and the socket buffers
            if bulk.poll() is not None:
                raise PhaseError(f"the bulk sender exited {bulk.returncode}")
            result = self.latency(ping_port, max_seconds=self.args.bulk_seconds)
        finally:
            try:
                bulk.communicate(timeout=60)  # closes its stdin: the sender stops and closes
            except subprocess.TimeoutExpired:
                bulk.kill()
                bulk.communicate()
        sink = self.service.records(1, timeout=30)[0]
        result["bulk_mb_s"] = sink["bytes"] / (sink["t_eof"] - sink["t_first"]) / 1e6
        return result

    def newstream(self, port: int) -> Result:
        count = self.args.newstream_count
        out = run_worker(
            ["newstream", "--port", str(port), "--count", str(count), "--size", "500"],
            60 + count * 0.5,
        )
        return _ms_summary(out["times"])

    def many_streams(self, port: int) -> Result:
        """``--many-streams`` concurrent streams each echoing 64 KiB; peak RSS while they run."""
        count = self.args.many_streams
        self.sampler.reset()
        cmd = ["manyecho", "--port", str(port), "--streams", str(count), "--size", "65536"]
        out = run_worker(cmd, 180)
        if out["ok"] != count:
            raise PhaseError(f"{count - out['ok']} of {count} echoes failed: {out['failures']}")
        return {"streams": count, "seconds": out["seconds"], "rss_peak": self.sampler.peaks()}

    def slow_receiver(self, port: int) -> Result:
        """A sink reading 64 KiB every 20 ms behind the tunnel, fed flat out for a while:
        the tunnel's memory must stay within its windows (RSS sampled throughout)."""
        self.service.drain()
        self.sampler.reset()
        cmd = ["send", "--port", str(port), "--size", str(1 << 40), "--until-stdin-eof", "--slow"]
        sender = subprocess.Popen(
            [sys.executable, NETIO, *cmd, "--timeout", "120"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(self.args.slow_seconds)
            peaks = self.sampler.peaks()
        finally:
            try:
                sender.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                sender.kill()
                sender.communicate()
        sink = self.service.records(1, timeout=120)[0]
        return {
            "seconds": self.args.slow_seconds,
            "sink_mb_s": sink["bytes"] / max(1e-9, sink["t_eof"] - sink["t_first"]) / 1e6,
            "rss_peak": peaks,
        }

    def memory(self, pair_pids: dict[str, int]) -> Result:
        return {name: memory(pid) for name, pid in pair_pids.items()}

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        size = a.size_mib * MIB
        raw_port = self.service.port

        self.track({})
        self.phase("raw", lambda: self.throughput(lambda v: self.send_to_sink(raw_port, size)))

        tunnel = self._start_tunnel()
        if tunnel is not None:
            try:
                self._tunnel_phases(tunnel, size)
            finally:
                tunnel.close()

        binary, version = (None, "skipped (--no-websocat)")
        if not a.no_websocat:
            binary, version = find_websocat(a.websocat)
        # A missing websocat is not a failure: the websocat column just stays empty.
        self.results["websocat_version"] = {"ok": True, "version": version}
        if binary is None:
            print(f"websocat: {version}", file=sys.stderr, flush=True)
            return
        pair: WebsocatPair | None = None

        def start() -> Result:
            nonlocal pair
            pair = WebsocatPair(self.workdir, binary, self.service.port)
            return {"pids": pair.pids}

        try:
            if self.phase("websocat_start", start)["ok"] and pair is not None:
                self._websocat_phases(pair, size)
        finally:
            if pair is not None:
                pair.close()

    def _start_tunnel(self) -> TunnelPair | None:
        tunnel: TunnelPair | None = None
        extra = ""
        if self.args.window_bytes:
            extra = f"[streams]\nwindow_bytes = {self.args.window_bytes}\n"

        def start() -> Result:
            nonlocal tunnel
            tunnel = TunnelPair(self.workdir, self.service.port, extra)
            return {"pids": tunnel.pids}

        if not self.phase("tunnel_start", start)["ok"]:
            for name in ("server", "client"):
                path = self.workdir / f"tunnel-{name}.log"
                if path.exists():
                    print(f"--- {name} log:\n{path.read_text()[-3000:]}", file=sys.stderr)
        return tunnel

    def _tunnel_phases(self, tunnel: TunnelPair, size: int) -> None:
        a = self.args
        up, down = tunnel.up_port, tunnel.down_port
        self.track(tunnel.pids)
        steps: list[tuple[str, Callable[[], Result]]] = [
            (
                "tunnel_c2s",
                lambda: self.throughput(lambda v: self.send_to_sink(up, size, verify=v)),
            ),
            (
                "tunnel_s2c",
                lambda: self.throughput(lambda v: self.send_to_sink(down, size, verify=v)),
            ),
            (
                "tunnel_parallel_s2c",
                lambda: self.send_to_sink(
                    down, a.parallel_mib * MIB, streams=a.parallel_streams, verify=False
                ),
            ),
            ("tunnel_latency_idle_up", lambda: self.latency(up)),
            ("tunnel_latency_idle_down", lambda: self.latency(down)),
            ("tunnel_latency_bulk_c2s", lambda: self.latency_under_bulk(up, up)),
            ("tunnel_latency_bulk_s2c", lambda: self.latency_under_bulk(up, down)),
            ("tunnel_newstream_up", lambda: self.newstream(up)),
            ("tunnel_newstream_down", lambda: self.newstream(down)),
            ("tunnel_long_c2s", lambda: self.send_to_sink(up, a.long_mib * MIB, verify=True)),
            # The slow receiver first: RSS does not shrink after the 1,000 streams.
            ("tunnel_slow_receiver", lambda: self.slow_receiver(down)),
            ("tunnel_many_streams", lambda: self.many_streams(down)),
        ]
        for name, step in steps:
            dead = tunnel.dead()
            if dead:
                self.results[name] = {"ok": False, "error": f"tunnel {', '.join(dead)} died"}
                continue
            self.phase(name, step)
        self.results["tunnel_memory"] = {"ok": True, **self.memory(tunnel.pids)}
        self.results["tunnel_memory"]["dead"] = tunnel.dead()
        for name in tunnel.dead():
            print(f"--- {name} died; log:\n{tunnel.log_tail(name)}", file=sys.stderr)

    def _websocat_phases(self, pair: WebsocatPair, size: int) -> None:
        port = pair.in_port
        self.track(pair.pids)
        self.phase(
            "websocat_c2s",
            lambda: self.throughput(lambda v: self.send_to_sink(port, size, verify=v)),
        )
        self.phase(
            "websocat_s2c",
            lambda: self.throughput(lambda v: self.recv_from_source(port, size, verify=v)),
        )
        self.phase("websocat_latency_idle", lambda: self.latency(port))
        self.phase("websocat_newstream", lambda: self.newstream(port))
        self.results["websocat_memory"] = {"ok": True, **self.memory(pair.pids)}


# --- output ----------------------------------------------------------------------------------


def _cell(result: Result | None, show: Callable[[Result], str], *, detail: bool = True) -> str:
    if result is None:
        return "-"
    if not result.get("ok"):
        return "FAILED: " + str(result.get("error", "?"))[:44] if detail else "-"
    try:
        return show(result)
    except (KeyError, TypeError):
        return "-"


def _rate(r: Result) -> str:
    text = f"{r['mb_s']:.1f} MB/s"
    if r.get("sha256_verified"):
        text += ", SHA-256 ok"
    if "mb_s_min" in r and len(r.get("runs", ())) > 1:
        text += f" ({r['mb_s_min']:.0f}-{r['mb_s_max']:.0f})"
    return text


def _cpu(r: Result) -> str:
    per = r["cpu_s_per_gib"]
    return f"srv {per['server']:.1f} + cli {per['client']:.1f} s/GiB"


def _lat(r: Result) -> str:
    text = f"{r['median_ms']:.2f} / {r['p99_ms']:.2f} ms"
    if r.get("complete") is False:
        text += f" (n={r['count']})"
    if "bulk_mb_s" in r:
        text += f", bulk {r['bulk_mb_s']:.0f} MB/s"
    return text


def _mib(value: int) -> str:
    return f"{value / MIB:.0f}"


def _rss(r: Result) -> str:
    return f"srv {_mib(r['rss_peak']['server'])} / cli {_mib(r['rss_peak']['client'])} MiB"


def _hwm(r: Result) -> str:
    server, client = (r[name].get("VmHWM") for name in ("server", "client"))
    return f"srv {_mib(server) if server else '?'} / cli {_mib(client) if client else '?'} MiB"


def table(results: dict[str, Result], args: argparse.Namespace) -> str:
    g = results.get
    long_label = f"{args.long_mib / 1024:g} GiB client->server, SHA-256"
    rows: list[tuple[str, str, str, str]] = [
        ("raw loopback TCP, 1 stream", _cell(g("raw"), _rate), "", ""),
        (
            "client->server, 1 stream",
            _cell(g("tunnel_c2s"), _rate),
            _cell(g("websocat_c2s"), _rate),
            ">= websocat, 200+ MB/s",
        ),
        (
            "server->client, 1 stream",
            _cell(g("tunnel_s2c"), _rate),
            _cell(g("websocat_s2c"), _rate),
            ">= websocat, 200+ MB/s",
        ),
        (
            f"server->client, {args.parallel_streams} streams",
            _cell(g("tunnel_parallel_s2c"), _rate),
            "",
            "",
        ),
        (
            "CPU client->server",
            _cell(g("tunnel_c2s"), _cpu),
            _cell(g("websocat_c2s"), _cpu),
            "websocat ~8 s/GiB",
        ),
        (
            "CPU server->client",
            _cell(g("tunnel_s2c"), _cpu),
            _cell(g("websocat_s2c"), _cpu),
            "",
        ),
        (
            "500 B RTT idle, enter client (med/p99)",
            _cell(g("tunnel_latency_idle_up"), _lat),
            _cell(g("websocat_latency_idle"), _lat),
            "median < 0.5 ms",
        ),
        ("500 B RTT idle, enter server", _cell(g("tunnel_latency_idle_down"), _lat), "", ""),
        (
            "500 B RTT under bulk client->server",
            _cell(g("tunnel_latency_bulk_c2s"), _lat),
            "",
            "median < 5 ms",
        ),
        (
            "500 B RTT under bulk server->client",
            _cell(g("tunnel_latency_bulk_s2c"), _lat),
            "",
            "median < 5 ms",
        ),
        (
            "new stream + 500 B RTT, enter client",
            _cell(g("tunnel_newstream_up"), _lat),
            _cell(g("websocat_newstream"), _lat),
            "median < 2 ms",
        ),
        ("new stream + 500 B RTT, enter server", _cell(g("tunnel_newstream_down"), _lat), "", ""),
        (long_label, _cell(g("tunnel_long_c2s"), _rate), "", ""),
        ("  CPU during it", _cell(g("tunnel_long_c2s"), _cpu, detail=False), "", ""),
        (
            "  RSS during it (sampled peak)",
            _cell(g("tunnel_long_c2s"), _rss, detail=False),
            "",
            "< 100 MB",
        ),
        (
            f"{args.many_streams} concurrent streams x 64 KiB echo",
            _cell(g("tunnel_many_streams"), _rss),
            "",
            "RSS < 150 MB",
        ),
        (
            f"slow receiver ({args.slow_seconds:g} s, 64 KiB / 20 ms)",
            _cell(g("tunnel_slow_receiver"), _rss),
            "",
            "bounded by windows",
        ),
        (
            "peak RSS, whole run (VmHWM)",
            _cell(g("tunnel_memory"), _hwm),
            _cell(g("websocat_memory"), _hwm),
            "",
        ),
    ]
    header = ("figure", "trio-tunnel", "websocat", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def environment() -> Result:
    probe = (
        "import json, trio, trio_websocket, wsproto, trio_tunnel; print(json.dumps({"
        "'trio_tunnel': trio_tunnel.__version__, 'trio_tunnel_path': trio_tunnel.__file__, "
        "'trio': trio.__version__, 'trio_websocket': trio_websocket.__version__, "
        "'wsproto': wsproto.__version__}))"
    )
    env: Result = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
        )
        env.update(json.loads(out.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        env["versions_error"] = repr(exc)
    try:
        rev = _git("rev-parse", "--short", "HEAD")
        env["git"] = rev + ("+dirty" if _git("status", "--porcelain", "src") else "")
    except (OSError, subprocess.SubprocessError):
        env["git"] = None
    # What the rest of the machine was doing just before the bench: busy cores over one second.
    busy0, _ = host_busy()
    time.sleep(1)
    env["host_busy_cores_before"] = host_busy()[0] - busy0
    return env


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _settings(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.datetime.now()
    env = environment()
    bench: Bench | None = None
    with tempfile.TemporaryDirectory(prefix="trio-tunnel-bench-") as workdir:
        try:
            bench = Bench(args, Path(workdir))
            bench.run()
        finally:
            if bench is not None:
                bench.close()
    assert bench is not None
    env["loadavg_end"] = os.getloadavg()
    env["seconds"] = (datetime.datetime.now() - started).total_seconds()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"bench-{started:%Y%m%d-%H%M%S}.json"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "settings": settings,
                "environment": env,
                "results": bench.results,
            },
            indent=2,
        )
        + "\n"
    )
    ws = bench.results.get("websocat_version", {})
    print(
        f"trio-tunnel {env.get('trio_tunnel', '?')} ({env.get('git')}), trio {env.get('trio')}, "
        f"trio-websocket {env.get('trio_websocket')}, wsproto {env.get('wsproto')}, "
        f"Python {env['python']}; websocat: {ws.get('version', '-')}"
    )
    print(
        f"{env['cpus']} CPUs; busy cores before start {env['host_busy_cores_before']:.2f}; "
        f"load average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}; "
        f"{args.size_mib} MiB x {args.runs} runs (median, range), first run SHA-256 verified; "
        f"MB = 10^6 bytes; latency median / p99"
    )
    others = [r["other_busy_cores"] for r in bench.results.values() if "other_busy_cores" in r]
    if others:
        print(
            f"other processes on the machine used {statistics.mean(others):.2f} cores on "
            f"average during the phases (max {max(others):.2f} in one phase)"
        )
    print()
    print(table(bench.results, args))
    print()
    failed = [name for name, r in bench.results.items() if not r.get("ok")]
    if failed:
        print(f"failed phases: {', '.join(failed)}")
    print(f"results: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
