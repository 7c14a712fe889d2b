"""Stress runs against real ``python -m trio_tunnel run`` processes (``nox -s stress``).

Not a test suite: each scenario prints its figures and says PASS or FAIL; the exit status
is 1 if any scenario failed. Scenarios (all by default, ``--only`` to pick):

* ``many``   1,000 concurrent streams through one client, each echoing 64 KiB; peak RSS.
* ``punish`` the max-punishment run of the system trio-tunnel replaces: 100 transfers of
  100 KiB to 250 MiB (weighted 40/25/20/10/5 %), at most 20 at once, no pacing; all verified.
* ``chaos``  20 concurrent transfers of 100 KiB to 100 MiB (log-uniform) through both tunnel
  directions while the server and the clients are killed and restarted at random moments.
  Every transfer must end complete (SHA-256 equal at both ends) or reset; never truncated
  with a clean EOF, never corrupted.
* ``soak``   mixed traffic for 10 minutes with a failover every 30 s (a SIGKILL, a SIGTERM
  or data at the standby, in turn); RSS sampled over time must stay flat.

``--quick`` shortens everything (a smoke run of a few minutes); every size and duration has
its own flag. Logs and configs stay in ``--workdir`` (a new temporary directory by default).
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio
from deploy import LOCALHOST, Deployment, MiB, Proc
from traffic import Kind, Refused, Service, Tally, Transfer, classify, run_transfer

KiB = 1024

# (share of the transfers, smallest, largest) for the max-punishment run.
PUNISH_BUCKETS = [
    (0.40, 100 * KiB, 1 * MiB),
    (0.25, 1 * MiB, 10 * MiB),
    (0.20, 10 * MiB, 50 * MiB),
    (0.10, 50 * MiB, 100 * MiB),
    (0.05, 100 * MiB, 250 * MiB),
]


def say(text: str = "") -> None:
    print(text, flush=True)


def mib(size: float) -> str:
    return f"{size / MiB:.1f} MiB"


def human(size: float) -> str:
    return f"{size / KiB:.0f} KiB" if size < MiB else mib(size)


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def transfer_timeout(size: int) -> float:
    """Generous: a hang, not a slow machine, is what this catches."""
    return 120 + size / MiB


async def start_service(nursery: trio.Nursery, service: Service) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, service.handler, 0, host=LOCALHOST))
    return int(listeners[0].socket.getsockname()[1])


def tally_report(name: str, tally: Tally, seconds: float) -> None:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(tally.outcomes.items()))
    say(f"  {name}: {tally.total} transfers in {seconds:.0f}s: {outcomes}")
    if tally.refused:
        say(f"  connection attempts refused (listen port closed, not counted): {tally.refused}")
    say(f"  bytes verified end to end: {mib(tally.verified_bytes)}")
    routes = sorted({(r, k) for r, k, _ in tally.by_route})
    for route, kind in routes:
        counts = {o: n for (r, k, o), n in tally.by_route.items() if (r, k) == (route, kind)}
        label = {"U": "upload", "D": "download", "E": "echo"}[kind]
        say(
            f"    via {route:5} {label:8}: "
            + ", ".join(f"{o} {n}" for o, n in sorted(counts.items()))
        )
    for line in tally.failures[:20]:
        say(f"  FAILURE {line}")
    if len(tally.failures) > 20:
        say(f"  ... and {len(tally.failures) - 20} more failures")


def verdict(name: str, ok: bool, why: str = "") -> bool:
    say(f"{name}: {'PASS' if ok else 'FAIL'}{(' - ' + why) if why and not ok else ''}")
    say()
    return ok


def route_port(dep: Deployment, route: str) -> int:
    return dep.down if route == "down" else dep.up[int(route[-1])]


# --- many: 1,000 concurrent streams ----------------------------------------------------------


async def scenario_many(args: argparse.Namespace, workdir: Path) -> bool:
    say(f"== many: {args.streams} concurrent streams x {args.stream_bytes // KiB} KiB echo")
    service = Service()
    async with trio.open_nursery() as nursery:
        dep = Deployment(workdir / "many", await start_service(nursery, service))
        try:
            await dep.start(clients=(1,))
            idle = dep.rss()
            tally = Tally()
            transfers = [Transfer(i, "E", args.stream_bytes, "down") for i in range(args.streams)]
            started = time.monotonic()

            async def one(transfer: Transfer) -> None:
                try:
                    await run_transfer(service, transfer, dep.down, 120)
                except Refused:
                    tally.refused += 1
                    return
                tally.add(transfer)

            with trio.fail_after(600):
                async with trio.open_nursery() as streams:
                    for transfer in transfers:
                        streams.start_soon(one, transfer)
            elapsed = time.monotonic() - started
            peaks = dep.peaks()
            tally_report("many", tally, elapsed)
            say(
                f"  idle RSS: server {mib(idle['server'])}, client1 {mib(idle['client1'])}; "
                f"peak RSS: server {mib(peaks['server'])}, client1 {mib(peaks['client1'])}"
            )
            ok = tally.outcomes["complete"] == args.streams and not dep.tracebacks()
        finally:
            dep.close()
            nursery.cancel_scope.cancel()
    return verdict("many", ok, f"{tally.outcomes['complete']}/{args.streams} complete")


# --- punish: the max-punishment run -----------------------------------------------------------


def punish_sizes(rng: random.Random, count: int, scale: float) -> list[int]:
    sizes: list[int] = []
    for share, low, high in PUNISH_BUCKETS:
        n = round(share * count)
        sizes += [max(1024, int(rng.uniform(low, high) * scale)) for _ in range(n)]
    while len(sizes) < count:
        sizes.append(max(1024, int(rng.uniform(100 * KiB, 1 * MiB) * scale)))
    rng.shuffle(sizes)
    return sizes[:count]


async def scenario_punish(args: argparse.Namespace, workdir: Path) -> bool:
    rng = random.Random(args.seed)
    sizes = punish_sizes(rng, args.punish_count, args.punish_scale)
    say(
        f"== punish: {len(sizes)} transfers, {human(min(sizes))} to {human(max(sizes))} "
        f"(total {mib(sum(sizes))}), at most {args.punish_concurrency} at once, no pacing"
    )
    service = Service()
    async with trio.open_nursery() as nursery:
        dep = Deployment(workdir / "punish", await start_service(nursery, service))
        try:
            await dep.start(clients=(1,))
            tally = Tally()
            limit = trio.Semaphore(args.punish_concurrency)
            started = time.monotonic()

            async def one(index: int, size: int) -> None:
                route = "down" if index % 2 == 0 else "up1"
                transfer = Transfer(index, "U" if (index // 2) % 2 == 0 else "D", size, route)
                async with limit:
                    try:
                        await run_transfer(
                            service, transfer, route_port(dep, route), transfer_timeout(size)
                        )
                    except Refused:
                        tally.refused += 1
                        return
                tally.add(transfer)

            async with trio.open_nursery() as transfers:
                for index, size in enumerate(sizes):
                    transfers.start_soon(one, index, size)
            elapsed = time.monotonic() - started
            peaks = dep.peaks()
            tally_report("punish", tally, elapsed)
            say(
                f"  aggregate {sum(sizes) / elapsed / 1e6:.1f} MB/s; peak RSS: server "
                f"{mib(peaks['server'])}, client1 {mib(peaks['client1'])}"
            )
            complete = tally.outcomes["complete"]
            ok = complete == len(sizes) and not dep.tracebacks()
        finally:
            dep.close()
            nursery.cancel_scope.cancel()
    return verdict("punish", ok, f"{complete}/{len(sizes)} complete")


# --- chaos: kills and restarts under load -----------------------------------------------------


async def scenario_chaos(args: argparse.Namespace, workdir: Path) -> bool:
    rng = random.Random(args.seed + 1)
    signum = signal.Signals[f"SIG{args.chaos_signal}"]
    say(
        f"== chaos: {args.chaos_concurrency} concurrent transfers of {human(args.chaos_min)} to "
        f"{human(args.chaos_max)} for {args.chaos_secs:g}s, {signum.name} + restart every "
        f"{args.chaos_kill_min:g}-{args.chaos_kill_max:g}s"
    )
    service = Service()
    async with trio.open_nursery() as nursery:
        dep = Deployment(workdir / "chaos", await start_service(nursery, service))
        try:
            await dep.start()
            tally = Tally()
            kills: dict[str, int] = {p.name: 0 for p in dep.procs}
            stop_at = time.monotonic() + args.chaos_secs
            next_tid = iter(range(10**9))
            started = time.monotonic()

            async def killer() -> None:
                while True:
                    await trio.sleep(rng.uniform(args.chaos_kill_min, args.chaos_kill_max))
                    if time.monotonic() >= stop_at:
                        return
                    victim = rng.choice(dep.procs)
                    victim.signal(signum)
                    await victim.wait_exit()
                    kills[victim.name] += 1
                    await trio.sleep(rng.uniform(0, 2))
                    victim.start()

            async def worker() -> None:
                while time.monotonic() < stop_at:
                    size = log_uniform(rng, args.chaos_min, args.chaos_max)
                    route = rng.choice(["down", "up1", "up2"])
                    transfer = Transfer(next(next_tid), rng.choice(["U", "D"]), size, route)
                    try:
                        await run_transfer(
                            service, transfer, route_port(dep, route), transfer_timeout(size)
                        )
                    except Refused:
                        tally.refused += 1
                        await trio.sleep(0.2)
                        continue
                    tally.add(transfer)

            async with trio.open_nursery() as load:
                load.start_soon(killer)
                for _ in range(args.chaos_concurrency):
                    load.start_soon(worker)
            elapsed = time.monotonic() - started
            # Chaos over: everything restarted and carrying traffic again.
            for proc in dep.procs:
                if not proc.alive:
                    proc.start()
            recovered = await _recovered(dep, service)
            tally_report("chaos", tally, elapsed)
            say(
                "  kills and restarts: "
                + ", ".join(f"{name} {count}" for name, count in kills.items())
            )
            say(f"  after the chaos, both tunnel directions carry a verified transfer: {recovered}")
            ok = tally.failed == 0 and recovered and tally.total > 0
        finally:
            dep.close()
            nursery.cancel_scope.cancel()
    return verdict(
        "chaos",
        ok,
        f"{tally.failed} truncated/corrupted/hung of {tally.total}"
        + ("" if recovered else "; no recovery"),
    )


async def _recovered(dep: Deployment, service: Service) -> bool:
    """Within 30 s, a 1 MiB upload completes via the server and via the active client."""
    deadline = time.monotonic() + 30
    tid = 10**9
    for tunnel in ("down", "up"):
        while True:
            if time.monotonic() > deadline:
                return False
            route = tunnel if tunnel == "down" else f"up{dep.active_client() or 1}"
            tid += 1
            transfer = Transfer(tid, "U", MiB, route)
            try:
                await run_transfer(service, transfer, route_port(dep, route), 30)
            except Refused:
                await trio.sleep(0.3)
                continue
            if classify(transfer) == "complete":
                break
            await trio.sleep(0.3)
    return True


# --- soak: mixed traffic, periodic failovers, RSS over time -----------------------------------


async def scenario_soak(args: argparse.Namespace, workdir: Path) -> bool:
    rng = random.Random(args.seed + 2)
    actions = args.soak_failovers.split(",")
    say(
        f"== soak: {args.soak_secs:g}s of mixed traffic ({args.soak_workers} workers), a "
        f"failover every {args.soak_failover_every:g}s ({', '.join(actions)} in turn), "
        f"RSS sampled every {args.soak_sample_every:g}s"
    )
    service = Service()
    samples: list[tuple[float, dict[str, int]]] = []
    failovers: list[str] = []
    async with trio.open_nursery() as nursery:
        dep = Deployment(workdir / "soak", await start_service(nursery, service))
        try:
            await dep.start()
            tally = Tally()
            started = time.monotonic()
            stop_at = started + args.soak_secs
            next_tid = iter(range(10**9))

            async def worker() -> None:
                while time.monotonic() < stop_at:
                    active = dep.active_client() or 1
                    route = rng.choice(["down", f"up{active}"])
                    size = log_uniform(rng, 1 * KiB, args.soak_max)
                    kinds: list[Kind] = ["U", "D", "E"]
                    transfer = Transfer(next(next_tid), rng.choice(kinds), size, route)
                    try:
                        await run_transfer(
                            service, transfer, route_port(dep, route), transfer_timeout(size)
                        )
                    except Refused:
                        tally.refused += 1
                        await trio.sleep(0.2)
                        continue
                    tally.add(transfer)

            async def failover() -> None:
                turn = 0
                while True:
                    await trio.sleep(args.soak_failover_every)
                    if time.monotonic() >= stop_at - args.soak_failover_every / 2:
                        return
                    action = actions[turn % len(actions)]
                    turn += 1
                    failovers.append(await _fail_over(dep, action))

            async def sampler() -> None:
                last_print = 0.0
                while time.monotonic() < stop_at:
                    now = time.monotonic() - started
                    rss = dep.rss()
                    samples.append((now, rss))
                    if now - last_print >= args.soak_print_every or not last_print:
                        last_print = now or 1e-9
                        say(
                            f"  t={now:6.0f}s  RSS server {mib(rss['server']):>10}  client1 "
                            f"{mib(rss['client1']):>10}  client2 {mib(rss['client2']):>10}  "
                            f"transfers {tally.total} ({tally.outcomes['complete']} complete)"
                        )
                    await trio.sleep(args.soak_sample_every)

            async with trio.open_nursery() as load:
                load.start_soon(sampler)
                load.start_soon(failover)
                for _ in range(args.soak_workers):
                    load.start_soon(worker)
            elapsed = time.monotonic() - started
            tally_report("soak", tally, elapsed)
            say(f"  failovers: {len(failovers)}: " + "; ".join(failovers))
            flat, summary = _flatness([s[1]["server"] for s in samples])
            say(f"  server RSS: {summary}")
            for name in ("client1", "client2"):
                values = [s[1][name] for s in samples if s[1][name]]
                if values:
                    say(
                        f"  {name} RSS (restarted at failovers): min {mib(min(values))}, "
                        f"max {mib(max(values))}"
                    )
            transfers_ok = tally.failed == 0 and tally.outcomes["complete"] > 0
            ok = flat and transfers_ok and not dep.tracebacks()
        finally:
            dep.close()
            nursery.cancel_scope.cancel()
    why = []
    if not flat:
        why.append("server RSS grew")
    if not transfers_ok:
        why.append(f"{tally.failed} truncated/corrupted/hung")
    return verdict("soak", ok, ", ".join(why))


async def _fail_over(dep: Deployment, action: str) -> str:
    active = dep.active_client()
    if active is None:
        return f"{action}: skipped (no active client)"
    standby = 2 if active == 1 else 1
    if action == "data":
        # Data at the standby's listener makes it active.
        try:
            tcp = await trio.open_tcp_stream(LOCALHOST, dep.up[standby])
        except OSError:
            return "data: standby not listening"
        await tcp.send_all(b"\0" * 32)
        await trio.sleep(0.5)
        await trio.aclose_forcefully(tcp)
        return f"data at client {standby}: active {active} -> {dep.active_client()}"
    proc: Proc = dep.clients[active]
    proc.signal(signal.SIGKILL if action == "kill" else signal.SIGTERM)
    await proc.wait_exit()
    await trio.sleep(2)
    proc.start()
    return f"{action} client {active}: active now {dep.active_client()}"


def _flatness(values: list[int]) -> tuple[bool, str]:
    """Flat: the median of the last fifth is within 16 MiB or 15 % of the second fifth's."""
    values = [v for v in values if v]
    if len(values) < 10:
        return True, f"too few samples ({len(values)}) to judge"
    fifth = len(values) // 5
    early = statistics.median(values[fifth : 2 * fifth])
    late = statistics.median(values[-fifth:])
    growth = late - early
    limit = max(16 * MiB, 0.15 * early)
    summary = (
        f"{len(values)} samples, min {mib(min(values))}, max {mib(max(values))}; median "
        f"after warm-up {mib(early)}, at the end {mib(late)} ({growth / MiB:+.1f} MiB, "
        f"limit {mib(limit)})"
    )
    return growth <= limit, summary


# --- main -------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[argparse.Namespace, Path], Awaitable[bool]]] = {
    "many": scenario_many,
    "punish": scenario_punish,
    "chaos": scenario_chaos,
    "soak": scenario_soak,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--quick", action="store_true", help="shortened smoke run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-bytes", type=int, default=64 * KiB)
    parser.add_argument("--punish-count", type=int, default=100)
    parser.add_argument("--punish-scale", type=float, default=1.0, help="size multiplier")
    parser.add_argument("--punish-concurrency", type=int, default=20)
    parser.add_argument("--chaos-secs", type=float, default=60)
    parser.add_argument("--chaos-concurrency", type=int, default=20)
    parser.add_argument("--chaos-min", type=int, default=100 * KiB)
    parser.add_argument("--chaos-max", type=int, default=100 * MiB)
    parser.add_argument("--chaos-kill-min", type=float, default=3)
    parser.add_argument("--chaos-kill-max", type=float, default=8)
    parser.add_argument("--chaos-signal", choices=["KILL", "TERM"], default="KILL")
    parser.add_argument("--soak-secs", type=float, default=600)
    parser.add_argument("--soak-workers", type=int, default=8)
    parser.add_argument("--soak-max", type=int, default=8 * MiB, help="largest transfer")
    parser.add_argument("--soak-failover-every", type=float, default=30)
    parser.add_argument("--soak-failovers", default="kill,term,data")
    parser.add_argument("--soak-sample-every", type=float, default=5)
    parser.add_argument("--soak-print-every", type=float, default=60)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in {
            "punish_scale": 0.1,
            "chaos_secs": 20,
            "chaos_max": 20 * MiB,
            "chaos_kill_min": 2,
            "chaos_kill_max": 5,
            "soak_secs": 60,
            "soak_failover_every": 10,
            "soak_sample_every": 2,
            "soak_print_every": 10,
        }.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


async def amain(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trio-tunnel-stress-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"trio-tunnel stress; logs and configs in {workdir}")
    say()
    results: dict[str, bool] = {}
    for name in args.only.split(","):
        started = time.monotonic()
        (workdir / name).mkdir(exist_ok=True)
        results[name] = await SCENARIOS[name](args, workdir)
        say(f"   ({name} took {time.monotonic() - started:.0f}s)")
        say()
    say("summary: " + ", ".join(f"{n} {'PASS' if ok else 'FAIL'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    return trio.run(amain, parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
