"""Verified transfers through the tunnel and the service at its far end.

Every connection starts with a 32-byte header naming the transfer (kind, id, size):

* ``U`` upload: the application sends ``size`` bytes and EOF; the service hashes what it
  got, and on EOF answers ``OK`` or ``BAD`` and EOF.
* ``D`` download: the application sends the header and EOF; the service sends ``size``
  bytes and EOF.
* ``E`` echo: the service echoes until EOF, then sends EOF.

Both ends live in this process, so each side's SHA-256 is compared directly. Each chunk of
64 KiB carries the transfer id and its own index, so a chunk lost, repeated, reordered or
delivered to the wrong connection changes the digest.

Outcomes: ``complete`` (every byte, same digest, clean EOF everywhere), ``reset`` (the
application saw a reset: the tunnel said the transfer failed), ``refused`` (could not
connect: not a transfer), and the failures ``truncated`` (a clean EOF before the last
byte, at either end), ``corrupted`` (all bytes there, wrong digest) and ``hung``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections import Counter
from typing import Literal

import attrs
import trio

LOCALHOST = "127.0.0.1"
CHUNK = 64 * 1024
_HEADER = struct.Struct("!4sc3xQQ8x")
_MAGIC = b"TTST"
_POOL = os.urandom(4 * 1024 * 1024)
FAR_END_WAIT = 30.0  # how long the far end may stay open after the application's end closed

Kind = Literal["U", "D", "E"]
FAILURES = ("truncated", "corrupted", "hung", "left open")


def make_chunk(tid: int, index: int, length: int) -> bytes:
    """Chunk ``index`` (``length`` <= CHUNK bytes) of transfer ``tid``: unique, cheap to make."""
    offset = (index * 7919 * 64) % (len(_POOL) - CHUNK)
    return (struct.pack("!QQ", tid, index) + _POOL[offset : offset + CHUNK - 16])[:length]


def chunks(size: int) -> list[tuple[int, int]]:
    """(index, length) of each chunk of a transfer of ``size`` bytes."""
    return [(i, min(CHUNK, size - i * CHUNK)) for i in range((size + CHUNK - 1) // CHUNK)]


@attrs.define
class End:
    """What one end saw: bytes, digest, and how it ended (eof, reset, or None: unfinished)."""

    count: int = 0
    digest: bytes = b""
    end: str | None = None


@attrs.define
class Transfer:
    tid: int
    kind: Kind
    size: int
    route: str  # "down" or "up1"/"up2"
    sent: End = attrs.field(factory=End)  # what the sender sent (digest when complete)
    app: End = attrs.field(factory=End)  # what the application received
    service: End = attrs.field(factory=End)  # what the service received
    verdict: bytes = b""
    outcome: str = ""
    seconds: float = 0.0
    local_port: int = 0  # the application's port, as the tunnel logs it
    service_open: bool = False  # the far end's connection is still open
    events: list[str] = attrs.field(factory=list)  # how the application's end failed


class Service:
    """The far end of every transfer: one handler, results recorded by transfer id."""

    def __init__(self) -> None:
        self.transfers: dict[int, Transfer] = {}
        self.connections = 0

    async def handler(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        transfer: Transfer | None = None
        try:
            header = await _receive_exact(tcp, _HEADER.size)
            if header is None:
                return
            magic, kind, tid, _ = _HEADER.unpack(header)
            transfer = self.transfers.get(tid)
            if magic != _MAGIC or transfer is None:
                return
            transfer.service_open = True
            if kind == b"U":
                await _receive_all(tcp, transfer.service)
                if transfer.service.end == "eof":
                    good = (transfer.service.count, transfer.service.digest) == (
                        transfer.sent.count,
                        transfer.sent.digest,
                    )
                    await tcp.send_all(b"OK" if good else b"BAD")
                    await tcp.send_eof()
            elif kind == b"D":
                await _send_all(tcp, transfer, transfer.sent)
                await tcp.send_eof()
                await _receive_all(tcp, End())
            elif kind == b"E":
                await _echo(tcp, transfer.service)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            if transfer is not None:
                transfer.service_open = False
            await trio.aclose_forcefully(tcp)


async def _receive_exact(tcp: trio.SocketStream, size: int) -> bytes | None:
    data = b""
    try:
        while len(data) < size:
            more = await tcp.receive_some(size - len(data))
            if not more:
                return None
            data += more
    except trio.BrokenResourceError:
        return None
    return data


async def _receive_all(tcp: trio.SocketStream, end: End) -> None:
    """Hash everything until EOF or reset into ``end`` (the service: one task per socket)."""
    digest = hashlib.sha256()
    try:
        while data := await tcp.receive_some(256 * 1024):
            digest.update(data)
            end.count += len(data)
        end.end = "eof"
    except trio.BrokenResourceError:
        end.end = "reset"
    finally:
        end.digest = digest.digest()


async def _send_all(tcp: trio.SocketStream, transfer: Transfer, record: End) -> None:
    """Send the transfer's bytes, hashing them into ``record`` (complete once end is set)."""
    digest = hashlib.sha256()
    for index, length in chunks(transfer.size):
        data = make_chunk(transfer.tid, index, length)
        digest.update(data)
        record.count += len(data)
        await tcp.send_all(data)
    record.digest = digest.digest()
    record.end = "eof"


async def _echo(tcp: trio.SocketStream, record: End) -> None:
    digest = hashlib.sha256()
    try:
        while data := await tcp.receive_some(256 * 1024):
            digest.update(data)
            record.count += len(data)
            await tcp.send_all(data)
        record.end = "eof"
        await tcp.send_eof()
    except trio.BrokenResourceError:
        record.end = "reset"
    finally:
        record.digest = digest.digest()


class Refused(Exception):
    """The tunnel's listen port did not accept the connection."""


class Reset(Exception):
    """The application's connection was reset."""


class AppSocket:
    """The application's end: a plain non-blocking socket, so a reset is seen exactly.

    The kernel reports a reset once, to whichever call asks first; after that a receive just
    returns end-of-stream. trio's socket methods pass a scheduling point between the failing
    call and raising, so with one task sending and one receiving, the receiver can see that
    end-of-stream before the sender has reported the reset. Here every call records a reset
    the moment it fails, so a receive that returns nothing after a reset is known for one.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reset = False

    @classmethod
    async def connect(cls, port: int) -> AppSocket:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect((LOCALHOST, port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                sock.close()
                raise Refused(os.strerror(error)) from None
        except OSError as exc:
            sock.close()
            raise Refused(str(exc)) from None
        return cls(sock)

    def _failed(self, exc: OSError) -> Reset:
        self.reset = True
        return Reset(str(exc))

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await trio.lowlevel.wait_writable(self.sock)
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._failed(exc) from None
            view = view[sent:]

    def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise self._failed(exc) from None

    async def receive(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(256 * 1024)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._failed(exc) from None
            if not data and self.reset:
                raise Reset("end of stream after a reset")
            return data

    def close(self) -> None:
        self.sock.close()


async def run_transfer(service: Service, transfer: Transfer, port: int, timeout: float) -> None:
    """Carry one transfer through ``port``; fills in what each end saw (not the outcome)."""
    service.transfers[transfer.tid] = transfer
    app = await AppSocket.connect(port)
    transfer.local_port = app.sock.getsockname()[1]
    started = trio.current_time()
    with trio.move_on_after(timeout) as scope:
        try:
            await app.send_all(_HEADER.pack(_MAGIC, transfer.kind.encode(), transfer.tid, 0))
            if transfer.kind == "D":
                app.send_eof()
        except Reset:
            transfer.app.end = "reset"
        else:
            # Each task handles its own errors: nothing escapes as an exception group.
            async with trio.open_nursery() as nursery:
                if transfer.kind != "D":
                    nursery.start_soon(_app_send, app, transfer)
                head = await _app_receive(app, transfer)
                if transfer.kind == "U":
                    transfer.verdict = head
    if scope.cancelled_caught:
        transfer.app.end = "hung"
    transfer.seconds = trio.current_time() - started
    app.close()
    # The far end must be closed too (cleanly or reset); give the tunnel time to say so.
    with trio.move_on_after(FAR_END_WAIT):
        while transfer.service_open:  # noqa: ASYNC110 - set by another connection's task
            await trio.sleep(0.01)


async def _app_send(app: AppSocket, transfer: Transfer) -> None:
    digest = hashlib.sha256()
    try:
        for index, length in chunks(transfer.size):
            data = make_chunk(transfer.tid, index, length)
            digest.update(data)
            transfer.sent.count += len(data)
            await app.send_all(data)
        transfer.sent.digest = digest.digest()
        transfer.sent.end = "eof"
        app.send_eof()
    except Reset as exc:
        transfer.events.append(f"send: {exc}")


async def _app_receive(app: AppSocket, transfer: Transfer) -> bytes:
    """Hash everything until EOF or reset into ``transfer.app``; returns the first bytes."""
    digest = hashlib.sha256()
    head = b""
    end = transfer.app
    try:
        while data := await app.receive():
            digest.update(data)
            end.count += len(data)
            if len(head) < 8:
                head += data[: 8 - len(head)]
        end.end = "eof"
    except Reset as exc:
        transfer.events.append(f"receive: {exc}")
        end.end = "reset"
    finally:
        end.digest = digest.digest()
    return head


def classify(transfer: Transfer) -> str:
    """The outcome of a finished transfer (see the module docstring)."""
    app, service, sent = transfer.app, transfer.service, transfer.sent
    if app.end == "hung":
        return "hung"
    if transfer.service_open:
        return "left open"
    # What arrived at each receiving end must never end cleanly but short or wrong.
    receivers: list[tuple[End, End]] = []
    if transfer.kind == "U":
        receivers.append((service, sent))
    elif transfer.kind == "D":
        receivers.append((app, sent))
    else:
        receivers += [(service, sent), (app, service)]
    for received, expected in receivers:
        if received.end != "eof":
            continue
        if expected.end != "eof" or received.count < expected.count:
            return "truncated"
        if received.count != expected.count or received.digest != expected.digest:
            return "corrupted"
    if transfer.kind == "U" and app.end == "eof":
        if transfer.verdict == b"OK":
            return "complete"
        if transfer.verdict == b"BAD":
            return "corrupted"
        return "truncated"  # the application saw a clean end without the answer
    if app.end == "eof":
        if transfer.kind == "E" and service.end != "eof":
            return "truncated"
        return "complete"
    return "reset"


@attrs.define
class Tally:
    outcomes: Counter[str] = attrs.field(factory=Counter)
    by_route: Counter[tuple[str, str, str]] = attrs.field(factory=Counter)
    refused: int = 0
    verified_bytes: int = 0
    failures: list[str] = attrs.field(factory=list)

    def add(self, transfer: Transfer) -> str:
        outcome = classify(transfer)
        transfer.outcome = outcome
        self.outcomes[outcome] += 1
        self.by_route[(transfer.route, transfer.kind, outcome)] += 1
        if outcome == "complete":
            self.verified_bytes += transfer.size * (2 if transfer.kind == "E" else 1)
        if outcome in FAILURES:
            self.failures.append(
                f"transfer {transfer.tid} {transfer.kind} {transfer.size} B via "
                f"{transfer.route} from port {transfer.local_port}: {outcome} "
                f"(application got {transfer.app.count} B/{transfer.app.end}, service got "
                f"{transfer.service.count} B/{transfer.service.end}, sender sent "
                f"{transfer.sent.count} B/{'all' if transfer.sent.end else 'unfinished'}; "
                f"application events: {'; '.join(transfer.events)})"
            )
        return outcome

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(self.outcomes[f] for f in FAILURES)
