"""``flood``: 2,000 idle or slowloris connections held against the WebSocket port while client 1
is killed and restarted; how long until it is connected again, and the server's RSS.

The attacker lives in this process. Each of its slots connects (from its own source address,
bound before connecting: 127.0.0.2 and up, or the client's own 127.0.0.1), then stays silent
(``idle``) or sends a header line a byte a second (``slowloris``); when the server closes it,
the slot reconnects a second later, so the flood stays held for the whole phase. Targets
(issue 12): from other addresses the client is back within 2 s of its restart; from its own
address within the request-head deadline plus 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import sys
import time
from pathlib import Path

import attrs
import trio
from deploy import LOCALHOST, Deployment, MiB

REQUEST_HEAD_SECS = 5.0  # trio_tunnel._admission.REQUEST_HEAD_SECS (its default)
OTHER_ADDRESS_TARGET = 2.0
OWN_ADDRESS_TARGET = REQUEST_HEAD_SECS + 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flood-connections", type=int, default=2000)
    parser.add_argument("--flood-addresses", type=int, default=40, help="127.0.0.2 and up")
    parser.add_argument("--flood-hold-secs", type=float, default=8, help="before the restart")


def say(text: str = "") -> None:
    print(text, flush=True)


def raise_fd_limit(needed: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return f"fd limit {soft} (enough)"
    new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))  # inherited by the processes
    return f"fd limit raised from {soft} to {new}" + (" (the hard limit!)" if new < needed else "")


@attrs.define
class Attack:
    port: int
    sources: list[str]  # one per slot
    slowloris: bool
    opened: int = 0
    closed_by_server: int = 0
    failed: int = 0
    held: int = 0
    handshake: float = 0.0  # a fresh WebSocket's upgrade and HELLO during the flood

    async def slot(self, source: str) -> None:
        while True:
            try:
                tcp = await trio.open_tcp_stream(LOCALHOST, self.port, local_address=source)
            except OSError:
                self.failed += 1
                await trio.sleep(1)
                continue
            self.opened += 1
            self.held += 1
            try:
                await self._hold(tcp)
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                self.held -= 1
                self.closed_by_server += 1
                await trio.aclose_forcefully(tcp)
            await trio.sleep(1)

    async def _hold(self, tcp: trio.SocketStream) -> None:
        if not self.slowloris:
            await tcp.receive_some(1)  # returns (EOF) or raises when the server closes it
            return
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                try:
                    await tcp.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    while True:
                        await trio.sleep(1)
                        await tcp.send_all(b"x")
                except (trio.BrokenResourceError, OSError):
                    nursery.cancel_scope.cancel()

            async def watch() -> None:
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await tcp.receive_some(1)
                nursery.cancel_scope.cancel()

            nursery.start_soon(drip)
            nursery.start_soon(watch)


_PROBE = """
import sys, time, trio, trio_websocket
from trio_tunnel._protocol import (
    PROTOCOL_NAME, PROTOCOL_VERSION, FrameType, encode_frame, encode_json,
)
hello = {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION, "role": "client",
         "client_id": 2, "window": 262144, "listen": [], "connect": []}
async def main():
    started = time.monotonic()
    with trio.fail_after(float(sys.argv[2])):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{sys.argv[1]}/") as ws:
            await ws.send_message(encode_frame(FrameType.HELLO, 0, 0, encode_json(hello)))
            await ws.get_message()
            print(time.monotonic() - started)
trio.run(main)
"""


async def _handshake_time(port: int) -> float:
    """Seconds for a fresh WebSocket from 127.0.0.1 to get its WELCOME (as client 2, which
    this deployment does not run), timed inside a process of its own once it has started:
    the server's side of a reconnect, without the attacker's scheduling or a restart."""
    result = await trio.run_process(
        [sys.executable, "-c", _PROBE, str(port), str(RESTART_WAIT_SECS)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    try:
        return float(result.stdout.decode().strip())
    except ValueError:
        return math.inf


RESTART_WAIT_SECS = 20.0  # a restarted client not connected by then counts as locked out


async def _restart_time(dep: Deployment) -> float:
    """Kill client 1, start it again; seconds from the start until it is connected (inf if
    not within RESTART_WAIT_SECS)."""
    client = dep.clients[1]
    client.kill()  # SIGKILL
    await client.wait_exit()
    started = time.monotonic()
    client.start()
    try:
        await client.wait_log(r"client 1: connected to", timeout=RESTART_WAIT_SECS)
    except trio.TooSlowError:
        return math.inf
    return time.monotonic() - started


def cpu_secs(pid: int | None = None) -> float:
    """CPU time (user + system) of ``pid``, or of this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(
    dep: Deployment, sources: list[str], slowloris: bool, hold_secs: float
) -> tuple[float, Attack, int]:
    attack = Attack(dep.ws, sources, slowloris)
    async with trio.open_nursery() as nursery:
        for source in sources:
            nursery.start_soon(attack.slot, source)
        # Build the flood up, then hold it past the request-head deadline: a steady state of
        # connections opened, held, dropped and opened again.
        await trio.sleep(hold_secs)
        held_at_restart = attack.held
        attack.handshake = await _handshake_time(dep.ws)
        seconds = await _restart_time(dep)
        nursery.cancel_scope.cancel()
    return seconds, attack, held_at_restart


async def scenario_flood(args: argparse.Namespace, workdir: Path) -> bool:
    count = args.flood_connections
    others = [f"127.0.0.{2 + i % args.flood_addresses}" for i in range(count)]
    say(
        f"== flood: {count} idle or slowloris connections held on the WebSocket port (from "
        f"{args.flood_addresses} other addresses, or from the client's own) while client 1 "
        "restarts"
    )
    say(f"  {raise_fd_limit(2 * count + 1024)}")
    dep = Deployment(workdir / "flood", service=9)  # the tunnels carry nothing here
    ok = True
    try:
        await dep.start(clients=(1,))
        idle_rss = dep.server.rss()
        baseline = await _restart_time(dep)
        say(f"  no flood: client 1 connected {baseline:.2f}s after its restart")
        phases = [
            ("idle, other addresses", others, False, OTHER_ADDRESS_TARGET),
            ("slowloris, other addresses", others, True, OTHER_ADDRESS_TARGET),
            ("idle, the client's own address", [LOCALHOST] * count, False, OWN_ADDRESS_TARGET),
        ]
        for name, sources, slowloris, target in phases:
            started = time.monotonic()
            server_cpu, own_cpu = cpu_secs(dep.server.pid), cpu_secs()
            seconds, attack, held = await _phase(dep, sources, slowloris, args.flood_hold_secs)
            wall = time.monotonic() - started
            server_cpu = cpu_secs(dep.server.pid) - server_cpu
            own_cpu = cpu_secs() - own_cpu
            passed = seconds <= target and dep.server.alive
            ok = ok and passed
            say(
                f"  {name}: client 1 connected {seconds:.2f}s after its restart (target "
                f"{target:g}s) {'ok' if passed else 'MISSED'}; a fresh WebSocket got its "
                f"WELCOME in {attack.handshake * 1000:.0f} ms; attacker held {held} at the "
                f"restart, opened {attack.opened}, closed by the server {attack.closed_by_server}"
                f", connect failures {attack.failed}; server RSS {dep.server.rss() / MiB:.1f} MiB"
                f"; CPU over the phase: server {server_cpu / wall:.0%}, attacker "
                f"{own_cpu / wall:.0%}"
            )
            await trio.sleep(REQUEST_HEAD_SECS + 1)  # the leftovers expire before the next
        say(
            f"  server RSS: {idle_rss / MiB:.1f} MiB idle, peak {dep.server.hwm() / MiB:.1f} MiB, "
            f"now {dep.server.rss() / MiB:.1f} MiB"
        )
        summaries = dep.server.log().count("more connections (")
        say(f"  server log: {summaries} rate-limited refusal summaries")
        if dep.tracebacks():
            say(f"  tracebacks in: {', '.join(dep.tracebacks())}")
            ok = False
    finally:
        dep.close()
    say(f"flood: {'PASS' if ok else 'FAIL'}")
    say()
    return ok
