"""Blocking-socket traffic for the benchmark: one service process and short-lived workers.

The service listens on 127.0.0.1 and reads a 16-byte header on each connection saying what to
do: SINK (read to EOF, count, optionally SHA-256), ECHO (echo to EOF) or SOURCE (send N bytes
of test data, then close). It prints one JSON line per finished sink or source connection, so
the driver learns what arrived without any reply travelling back through the tunnel under test
(websocat, for one, closes both directions at the first EOF).

The workers (``send``, ``recv``, ``pingpong``, ``newstream``) are separate processes too, so no
traffic competes with the driver for a GIL. Each prints one JSON line with its result. Times
are ``time.monotonic()``, which on Linux is one clock for every process on the machine.

    python bench/netio.py serve
    python bench/netio.py send --port P --size BYTES [--streams K] [--verify] [--until-stdin-eof]
    python bench/netio.py recv --port P --size BYTES [--verify]
    python bench/netio.py pingpong --port P [--count N] [--size B] [--max-seconds S]
    python bench/netio.py newstream --port P [--count N] [--size B]
    python bench/netio.py manyecho --port P [--streams K] [--size B]
    python bench/netio.py send ... --slow   (the SINK reads 64 KiB every 20 ms)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

LOCALHOST = "127.0.0.1"
CHUNK = 1 << 20
HEADER = struct.Struct("!4sQI")  # mode, size (SOURCE only), flags
SINK, ECHO, SOURCE = b"SINK", b"ECHO", b"SRCE"
FLAG_VERIFY = 1
FLAG_SLOW = 2  # SINK: read 64 KiB every 20 ms, a slow receiver
# Verified data carries (chunk index, offset) every 4 KiB, so a tunnel that drops, repeats or
# reorders pieces of an otherwise repeating pattern cannot produce the expected SHA-256.
_STAMP = struct.Struct("!QI")
_STAMP_EVERY = 4096
_BASE = random.Random(20240501).randbytes(CHUNK)
_emit_lock = threading.Lock()


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line; the service's threads share stdout."""
    with _emit_lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def pattern_chunks(total: int, *, stamped: bool) -> Iterator[memoryview]:
    """Yield ``total`` bytes of test data in views of one reused 1 MiB buffer."""
    buf = bytearray(_BASE)
    view = memoryview(buf)
    index = done = 0
    while done < total:
        if stamped:
            for offset in range(0, CHUNK, _STAMP_EVERY):
                _STAMP.pack_into(buf, offset, index, offset)
        size = min(CHUNK, total - done)
        yield view[:size]
        done += size
        index += 1


def pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(total, stamped=True):
        digest.update(chunk)
    return digest.hexdigest()


def connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((LOCALHOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += piece
    return bytes(data)


def drain_to_eof(sock: socket.socket) -> int:
    total = 0
    while piece := sock.recv(65536):
        total += len(piece)
    return total


# --- the service -----------------------------------------------------------------------------


def serve() -> int:
    listener = socket.create_server((LOCALHOST, 0), backlog=1024)
    emit({"port": listener.getsockname()[1]})
    # The driver holds our stdin: when it goes away, so do we.
    threading.Thread(target=_exit_at_stdin_eof, daemon=True).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def _exit_at_stdin_eof() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def _handle(conn: socket.socket) -> None:
    try:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = bytearray()
            while len(head) < HEADER.size:
                piece = conn.recv(65536)
                if not piece:
                    return
                head += piece
            mode, size, flags = HEADER.unpack_from(head)
            rest = bytes(head[HEADER.size :])
            if mode == SINK:
                _sink(conn, rest, verify=bool(flags & FLAG_VERIFY), slow=bool(flags & FLAG_SLOW))
            elif mode == ECHO:
                _echo(conn, rest)
            elif mode == SOURCE:
                _source(conn, size, verify=bool(flags & FLAG_VERIFY))
            else:
                emit({"mode": "error", "error": f"unknown mode {mode!r}"})
    except OSError as exc:
        emit({"mode": "error", "error": repr(exc)})


def _sink(conn: socket.socket, rest: bytes, *, verify: bool, slow: bool = False) -> None:
    digest = hashlib.sha256() if verify else None
    buf = bytearray(64 * 1024 if slow else CHUNK)
    view = memoryview(buf)
    total = len(rest)
    t_first = time.monotonic() if rest else None
    if digest is not None:
        digest.update(rest)
    while n := conn.recv_into(buf):
        if t_first is None:
            t_first = time.monotonic()
        total += n
        if digest is not None:
            digest.update(view[:n])
        if slow:
            time.sleep(0.02)
    emit(
        {
            "mode": "sink",
            "bytes": total,
            "sha256": None if digest is None else digest.hexdigest(),
            "t_first": t_first,
            "t_eof": time.monotonic(),
        }
    )


def _echo(conn: socket.socket, rest: bytes) -> None:
    if rest:
        conn.sendall(rest)
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    while n := conn.recv_into(buf):
        conn.sendall(view[:n])
    conn.shutdown(socket.SHUT_WR)


def _source(conn: socket.socket, size: int, *, verify: bool) -> None:
    t_start = time.monotonic()
    sent = 0
    for chunk in pattern_chunks(size, stamped=verify):
        conn.sendall(chunk)
        sent += len(chunk)
    conn.shutdown(socket.SHUT_WR)
    emit({"mode": "source", "bytes": sent, "t_start": t_start, "t_end": time.monotonic()})


# --- the workers -----------------------------------------------------------------------------


def send(
    port: int,
    size: int,
    *,
    streams: int,
    verify: bool,
    until_stdin_eof: bool,
    timeout: float,
    slow: bool = False,
) -> dict[str, Any]:
    """Send ``size`` bytes on each of ``streams`` connections to a SINK; wait for the peer's EOF.

    With ``until_stdin_eof`` (one stream) keep sending until our stdin closes.
    """
    expected = pattern_sha256(size) if verify else None
    stop = threading.Event()
    if until_stdin_eof:

        def stop_at_stdin_eof() -> None:
            sys.stdin.buffer.read()
            stop.set()

        threading.Thread(target=stop_at_stdin_eof, daemon=True).start()
    results: list[dict[str, Any]] = [{} for _ in range(streams)]

    def one(slot: dict[str, Any]) -> None:
        try:
            slot["t0"] = time.monotonic()
            with connect(port, timeout) as sock:
                flags = (FLAG_VERIFY if verify else 0) | (FLAG_SLOW if slow else 0)
                sock.sendall(HEADER.pack(SINK, size, flags))
                sent = 0
                for chunk in pattern_chunks(size, stamped=verify):
                    if stop.is_set():
                        break
                    sock.sendall(chunk)
                    sent += len(chunk)
                slot["t_sent"] = time.monotonic()
                slot["bytes"] = sent
                sock.shutdown(socket.SHUT_WR)
                drain_to_eof(sock)
                slot["t_closed"] = time.monotonic()
        except OSError as exc:
            slot["error"] = repr(exc)

    threads = [threading.Thread(target=one, args=(slot,)) for slot in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"streams": results, "sha256": expected}


def recv(port: int, size: int, *, verify: bool, timeout: float) -> dict[str, Any]:
    """Ask a SOURCE for ``size`` bytes and read them to EOF."""
    digest = hashlib.sha256() if verify else None
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    t0 = time.monotonic()
    t_first = None
    with connect(port, timeout) as sock:
        # No half-close: some tunnels (websocat -E) close both directions at the first EOF.
        sock.sendall(HEADER.pack(SOURCE, size, FLAG_VERIFY if verify else 0))
        while n := sock.recv_into(buf):
            if t_first is None:
                t_first = time.monotonic()
            total += n
            if digest is not None:
                digest.update(view[:n])
        t_eof = time.monotonic()
    return {
        "t0": t0,
        "t_first": t_first,
        "t_eof": t_eof,
        "bytes": total,
        "sha256": None if digest is None else digest.hexdigest(),
        "expected_sha256": pattern_sha256(size) if verify else None,
    }


def pingpong(
    port: int, *, count: int, size: int, max_seconds: float, timeout: float
) -> dict[str, Any]:
    """``count`` round trips of ``size`` bytes on one ECHO connection (after 20 to warm up)."""
    payload = os.urandom(size)
    rtts: list[float] = []
    deadline = time.monotonic() + max_seconds
    with connect(port, timeout) as sock:
        sock.sendall(HEADER.pack(ECHO, 0, 0))
        for i in range(count + 20):
            start = time.perf_counter()
            sock.sendall(payload)
            if recv_exactly(sock, size) != payload:
                raise ConnectionError("echo returned different bytes")
            if i >= 20:
                rtts.append(time.perf_counter() - start)
            if time.monotonic() > deadline:
                break
        sock.shutdown(socket.SHUT_WR)
        drain_to_eof(sock)
    return {"rtts": rtts, "complete": len(rtts) == count}


def newstream(port: int, *, count: int, size: int, timeout: float) -> dict[str, Any]:
    """``count`` times: connect, one ``size``-byte round trip through ECHO, close."""
    payload = os.urandom(size)
    request = HEADER.pack(ECHO, 0, 0) + payload
    times: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        with connect(port, timeout) as sock:
            sock.sendall(request)
            if recv_exactly(sock, size) != payload:
                raise ConnectionError("echo returned different bytes")
            times.append(time.perf_counter() - start)
    return {"times": times}


def manyecho(port: int, *, streams: int, size: int, timeout: float) -> dict[str, Any]:
    """``streams`` connections open at once, each echoing ``size`` bytes; all must match."""
    payload = os.urandom(size)
    opened = threading.Barrier(streams, timeout=timeout)
    results: list[str | None] = [None] * streams

    def one(index: int) -> None:
        try:
            with connect(port, timeout) as sock:
                sock.sendall(HEADER.pack(ECHO, 0, 0))
                opened.wait()  # every stream is open before any data moves
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                got = recv_exactly(sock, size)
                results[index] = "ok" if got == payload else "echo returned different bytes"
        except (OSError, threading.BrokenBarrierError) as exc:
            results[index] = repr(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failures = [r for r in results if r != "ok"]
    return {
        "ok": len(results) - len(failures),
        "failures": failures[:5],
        "seconds": time.monotonic() - start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    for name in ("send", "recv", "pingpong", "newstream", "manyecho"):
        worker = sub.add_parser(name)
        worker.add_argument("--port", type=int, required=True)
        worker.add_argument("--size", type=int, default=500)
        worker.add_argument("--count", type=int, default=1000)
        worker.add_argument("--streams", type=int, default=1)
        worker.add_argument("--verify", action="store_true")
        worker.add_argument("--until-stdin-eof", action="store_true")
        worker.add_argument("--slow", action="store_true", help="send: the SINK reads slowly")
        worker.add_argument("--max-seconds", type=float, default=60.0)
        worker.add_argument("--timeout", type=float, default=60.0, help="socket timeout")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve()
    try:
        if args.command == "send":
            result = send(
                args.port,
                args.size,
                streams=args.streams,
                verify=args.verify,
                until_stdin_eof=args.until_stdin_eof,
                timeout=args.timeout,
                slow=args.slow,
            )
        elif args.command == "recv":
            result = recv(args.port, args.size, verify=args.verify, timeout=args.timeout)
        elif args.command == "pingpong":
            result = pingpong(
                args.port,
                count=args.count,
                size=args.size,
                max_seconds=args.max_seconds,
                timeout=args.timeout,
            )
        elif args.command == "manyecho":
            result = manyecho(args.port, streams=args.streams, size=args.size, timeout=args.timeout)
        else:
            result = newstream(args.port, count=args.count, size=args.size, timeout=args.timeout)
    except OSError as exc:
        emit({"error": repr(exc)})
        return 1
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
