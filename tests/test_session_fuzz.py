"""Two real :class:`Session` endpoints under random operations and random corruption.

A Hypothesis state machine drives two sessions joined by an in-memory WebSocket pair (the
``_ws.WebSocket`` interface: ``send``, ``receive``, ``aclose``, ``remote``). Every stream
runs between real TCP sockets on 127.0.0.1: the test holds the application end (whose
connection the opening session carries) and the far end (which the other session connects
to), so each stream is ``app <-> session <-> memory WebSocket <-> session <-> far``.

Operations: open streams from either side, send random sizes either way, half-close, reset
from either end, pause and resume readers (slow consumption), let time pass, and corrupt
the next WebSocket message in either direction: drop it, duplicate it, cut it short, or
flip one byte. When a link dies (a protocol error), a new pair of sessions replaces it.

Invariants:

* no exception escapes a session, an owner callback or ``open_stream``;
* each direction of each stream ends complete and identical (EOF only after the sender's
  EOF and only with every byte), or reset: never truncated with EOF, never corrupted;
* with no corruption on the link, every stream the test did not reset completes;
* memory is bounded: every stream's receive buffering within its window, its inbound queue
  within ``window // FRAME_COST + 1`` items, at most one frame per stream in the writer.

The tunnel protocol has no checksum: it relies on TCP (and TLS) below the WebSocket for
integrity, as every protocol on TCP does. A flipped byte that still decodes (inside a DATA
payload, or in a header the checks cannot tell from a valid one) is therefore invisible by
design; the test works out from the frames which streams such a flip touched and leaves
those streams out of the byte checks (every other invariant still applies). Drops,
duplicates, truncation and every flip that breaks the framing must be caught by the
protocol's own checks.

A fixed bug's signature can be tolerated for diagnosis (TOLERATE_FIN_FROM_CANCELLED_CONNECT).

``TRIO_TUNNEL_FUZZ_EXAMPLES`` scales the budget: each example here runs real sockets for
a second or so, so it takes 1/200 of that budget (20000 -> 100 examples).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import attrs
import trio
import trio_websocket
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trio_tunnel import _ws
from trio_tunnel._errors import RemoteProtocolError, WebSocketClosed
from trio_tunnel._protocol import FRAME_COST, ResetCode, decode_frames
from trio_tunnel._session import Refusal, Session, SessionSettings
from trio_tunnel._stream import TunnelStream

from .helpers import LOCALHOST

T = TypeVar("T")

WINDOW = 16 * 1024  # small, so credit runs out often
MAX_STREAMS = 4  # per session, so refusals happen
MAX_MODEL_STREAMS = 10  # per example
STEP_TIMEOUT = 10.0
DRAIN_SECS = 15.0  # generous: only a hang waits this long

# Once a known bug (fixed; tested on its own in test_faults.py): a stream reset while the far
# side was still connecting closed the just-accepted far connection with a FIN. Setting this
# True would tolerate that exact signature again.
TOLERATE_FIN_FROM_CANCELLED_CONNECT = False

_FUZZ = os.environ.get("TRIO_TUNNEL_FUZZ_EXAMPLES")
EXAMPLES = max(1, int(_FUZZ) // 200) if _FUZZ else 8


# --- the in-memory WebSocket pair with a corrupting link --------------------------------------


@attrs.define
class Corruption:
    kind: str  # "drop", "dup", "cut", "flip"
    position: float  # where in the message (cut, flip), 0..1
    xor: int  # the flip, 1..255


@attrs.define(eq=False)
class Link:
    """Both directions between two sessions; corruption is armed per direction."""

    number: int
    armed: dict[str, deque[Corruption]] = attrs.field(
        factory=lambda: {"ab": deque(), "ba": deque()}
    )
    close_reason: trio_websocket.CloseReason | None = None
    corrupted: int = 0  # corruptions applied
    tainted_ids: set[int] = attrs.field(factory=set)
    tainted_names: set[str] = attrs.field(factory=set)

    def transform(self, direction: str, message: bytes) -> list[bytes]:
        armed = self.armed[direction]
        if not armed:
            return [message]
        corruption = armed.popleft()
        self.corrupted += 1
        if corruption.kind == "drop":
            return []
        if corruption.kind == "dup":
            return [message, message]
        if corruption.kind == "cut":
            return [message[: int(corruption.position * len(message))]]
        damaged = bytearray(message)
        damaged[min(len(message) - 1, int(corruption.position * len(message)))] ^= corruption.xor
        self._taint_undetectable(message, bytes(damaged))
        return [bytes(damaged)]

    def _taint_undetectable(self, original: bytes, damaged: bytes) -> None:
        """Mark the streams a flip changed without breaking the framing (see module doc)."""
        try:
            after = decode_frames(damaged)
        except RemoteProtocolError:
            return  # the receiver rejects the message and ends the session
        before = decode_frames(original)
        old = {(f.type, f.stream_id, f.arg, bytes(f.payload)) for f in before}
        new = {(f.type, f.stream_id, f.arg, bytes(f.payload)) for f in after}
        for kind, stream_id, _arg, payload in old ^ new:
            self.tainted_ids.add(stream_id)
            if kind == 16:  # OPEN: its tunnel name picks the far end
                self.tainted_names.add(payload.decode("utf-8", "replace"))


class MemoryWebSocket(_ws.WebSocket):
    """One end of an in-memory WebSocket; messages queue one deep, as in ``_ws``."""

    def __init__(
        self,
        link: Link,
        direction: str,
        outbound: trio.MemorySendChannel[bytes],
        inbound: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        self._link = link
        self._direction = direction
        self._outbound = outbound
        self._inbound = inbound

    @property
    def remote(self) -> str:
        return f"memory:{self._direction}"

    def _closed(self) -> WebSocketClosed:
        reason = self._link.close_reason
        if reason is None:
            return WebSocketClosed(None, None)
        return WebSocketClosed(reason.code, reason.reason)

    async def send(self, message: bytes) -> None:
        if self._link.close_reason is not None:
            raise self._closed()
        for piece in self._link.transform(self._direction, message):
            try:
                await self._outbound.send(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._closed() from None

    async def receive(self) -> bytes:
        try:
            return await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed() from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self._link.close_reason is None:
            self._link.close_reason = trio_websocket.CloseReason(code, reason)
        self._outbound.close()
        self._inbound.close()
        await trio.lowlevel.checkpoint()


def memory_pair(link: Link) -> tuple[MemoryWebSocket, MemoryWebSocket]:
    ab_send, ab_receive = trio.open_memory_channel[bytes](1)
    ba_send, ba_receive = trio.open_memory_channel[bytes](1)
    return (
        MemoryWebSocket(link, "ab", ab_send, ba_receive),
        MemoryWebSocket(link, "ba", ba_send, ab_receive),
    )


# --- the model: streams, their directions, the application and far sockets ---------------------


EOF = object()
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Closed(Exception):
    """The test closed this end itself."""


class RawEnd:
    """One test-held end of a stream: a non-blocking socket whose reset is seen exactly.

    The kernel reports a reset once, to whichever call asks first, and a receive after that
    returns end-of-stream. trio's own socket methods pass a scheduling point between a failed
    call and raising, so with a reader and a writer on one socket the reader could see that
    end-of-stream before the writer reports the reset. Here each call records the reset the
    moment it fails, so the oracle never mistakes a reset for an EOF.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reset = False
        self.closed = False

    @classmethod
    async def connect(cls, port: int) -> RawEnd:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect((LOCALHOST, port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        return cls(sock)

    def _check(self) -> None:
        if self.closed:
            raise Closed

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._check()
            try:
                await trio.lowlevel.wait_writable(self.sock)
                sent = self.sock.send(view)
            except BlockingIOError:
                continue
            except trio.ClosedResourceError:
                raise Closed from None
            except OSError:
                self._check()
                self.reset = True
                raise
            view = view[sent:]

    def send_eof(self) -> None:
        self._check()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.reset = True
            raise

    async def receive(self) -> bytes:
        """Bytes, b"" at a clean EOF; OSError for a reset; Closed if the test closed it."""
        while True:
            self._check()
            try:
                await trio.lowlevel.wait_readable(self.sock)
                data = self.sock.recv(64 * 1024)
            except BlockingIOError:
                continue
            except trio.ClosedResourceError:
                raise Closed from None
            except OSError:
                self._check()
                self.reset = True
                raise
            if not data and self.reset:
                raise ConnectionResetError("end of stream after a reset")
            return data

    def close(self, *, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if abort:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


@attrs.define(eq=False)
class Direction:
    """One direction of a stream: what the test sent into one end, what came out the other."""

    sent: bytearray = attrs.field(factory=bytearray)
    eof_sent: bool = False  # send_eof completed
    eof_queued: bool = False
    received: bytearray = attrs.field(factory=bytearray)
    end: str | None = None  # "eof", "reset", or "local" (the test closed the receiver)
    reader_started: bool = False
    resume: trio.Event = attrs.field(factory=trio.Event)
    paused: bool = False
    ops: deque[bytes | object] = attrs.field(factory=deque)
    wakeup: trio.Event = attrs.field(factory=trio.Event)

    def queue(self, item: bytes | object) -> None:
        self.ops.append(item)
        self.wakeup.set()


@attrs.define(eq=False)
class ModelStream:
    index: int
    link: Link
    opener: str  # "A" or "B": the session carrying the application end
    tunnel: str
    app: RawEnd
    tunnel_stream: TunnelStream | None  # the opener's stream; None: refused at once
    far: RawEnd | None = None
    forward: Direction = attrs.field(factory=Direction)  # app -> far
    backward: Direction = attrs.field(factory=Direction)  # far -> app
    reset_by_test: bool = False

    @property
    def tainted(self) -> bool:
        return (
            self.tunnel_stream is not None and self.tunnel_stream.id in self.link.tainted_ids
        ) or self.tunnel in self.link.tainted_names


class Owner:
    """The session owner: peer-opened streams connect to that stream's far listener."""

    def __init__(self, targets: dict[str, int]) -> None:
        self.targets = targets
        self.controls: list[dict[str, Any]] = []

    def resolve_open(self, session: Session, tunnel: str, epoch: int) -> tuple[str, int] | Refusal:
        port = self.targets.get(tunnel)
        if port is None:
            return ResetCode.UNKNOWN_TUNNEL, f"unknown tunnel {tunnel!r}"
        return LOCALHOST, port

    def on_control(self, session: Session, message: dict[str, Any]) -> None:
        self.controls.append(message)

    def session_ended(self, session: Session) -> None:
        pass


# --- trio in a thread, so Hypothesis can drive it step by step -----------------------------------


class TrioThread:
    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=self._main, name="fuzz-trio", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("trio thread did not start")

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[[], Awaitable[T]], timeout: float = STEP_TIMEOUT) -> T:
        async def bounded() -> T:
            with trio.fail_after(timeout):
                return await fn()

        if self.error is not None:
            raise AssertionError("the trio thread died") from self.error
        assert self._token is not None
        return trio.from_thread.run(bounded, trio_token=self._token)

    def stop(self) -> None:
        if self._token is not None and self._stop is not None and self.error is None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)
        assert not self._thread.is_alive(), "trio thread did not stop"


# --- the state machine ----------------------------------------------------------------------------


class SessionPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        self.streams: list[ModelStream] = []
        self.targets: dict[str, int] = {}
        self.listeners: list[socket.socket] = []
        self.links: list[Link] = []
        self.sessions: dict[str, Session] = {}
        self.session_done: dict[str, trio.Event] = {}
        self.escaped: list[BaseException] = []
        self.trio.run(self._new_link)

    @property
    def link(self) -> Link:
        return self.links[-1]

    @property
    def nursery(self) -> trio.Nursery:
        assert self.trio.nursery is not None
        return self.trio.nursery

    def _link_alive(self) -> bool:
        return not any(s.closed for s in self.sessions.values())

    async def _new_link(self) -> None:
        link = Link(len(self.links))
        self.links.append(link)
        ws_a, ws_b = memory_pair(link)
        settings = SessionSettings(
            window=WINDOW,
            peer_window=WINDOW,
            max_streams=MAX_STREAMS,
            connect_timeout=5.0,
            ping_interval=3600.0,
            ping_timeout=7200.0,
        )
        owner = Owner(self.targets)
        self.sessions = {
            "A": Session(ws_a, owner, settings, is_server=False, name=f"A{link.number}"),
            "B": Session(ws_b, owner, settings, is_server=True, name=f"B{link.number}"),
        }
        self.session_done = {}
        for side, session in self.sessions.items():
            done = self.session_done[side] = trio.Event()
            await self.nursery.start(self._run_session, session, done)

    async def _run_session(
        self, session: Session, done: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            reason = await session.run(task_status=task_status)
            assert isinstance(reason, str)
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self.escaped.append(exc)
            raise
        finally:
            done.set()

    # -- rules ------------------------------------------------------------------------------
    # Preconditions depend only on the rules run so far, never on what the sessions did
    # (that varies from run to run, and Hypothesis must replay the same choices).
    @precondition(lambda self: len(self.streams) < MAX_MODEL_STREAMS)
    @rule(opener=st.sampled_from(["A", "B"]))
    def open_stream(self, opener: str) -> None:
        self.trio.run(partial(self._open_stream, opener))

    async def _open_stream(self, opener: str) -> None:
        index = len(self.streams)
        tunnel = f"s{index}"
        far_listener = socket.socket()
        far_listener.bind((LOCALHOST, 0))
        far_listener.listen(1)
        far_listener.setblocking(False)
        self.listeners.append(far_listener)
        self.targets[tunnel] = far_listener.getsockname()[1]
        app_listener = (await trio.open_tcp_listeners(0, host=LOCALHOST))[0]
        app = await RawEnd.connect(app_listener.socket.getsockname()[1])
        carried = await app_listener.accept()
        await app_listener.aclose()
        try:
            tunnel_stream = self.sessions[opener].open_stream(tunnel, carried)
        except BaseException as exc:
            self.escaped.append(exc)
            raise
        stream = ModelStream(index, self.link, opener, tunnel, app, tunnel_stream)
        self.streams.append(stream)
        self.nursery.start_soon(self._writer, app, stream.forward)
        self.nursery.start_soon(self._reader, app, stream.backward)
        self.nursery.start_soon(self._accept_far, far_listener, stream)

    async def _accept_far(self, listener: socket.socket, stream: ModelStream) -> None:
        """Accept the one connection the far side of the tunnel makes for this stream."""
        while True:
            try:
                await trio.lowlevel.wait_readable(listener)
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            except (trio.ClosedResourceError, OSError):
                return
            break
        far = stream.far = RawEnd(sock)
        self.nursery.start_soon(self._writer, far, stream.backward)
        self.nursery.start_soon(self._reader, far, stream.forward)

    async def _writer(self, end: RawEnd, direction: Direction) -> None:
        try:
            while True:
                while not direction.ops:
                    direction.wakeup = trio.Event()
                    await direction.wakeup.wait()
                item = direction.ops.popleft()
                if item is EOF:
                    end.send_eof()
                    direction.eof_sent = True
                    return
                assert isinstance(item, bytes)
                direction.sent += item
                await end.send_all(item)
        except (Closed, OSError):
            pass

    async def _reader(self, end: RawEnd, direction: Direction) -> None:
        direction.reader_started = True
        try:
            while True:
                if direction.paused:
                    await direction.resume.wait()
                data = await end.receive()
                if not data:
                    direction.end = "eof"
                    return
                direction.received += data
        except Closed:
            direction.end = "local"
        except OSError:
            direction.end = "reset"

    def _pick(self, index: int) -> ModelStream:
        return self.streams[index % len(self.streams)]

    @precondition(lambda self: self.streams)
    @rule(
        index=st.integers(0, 100),
        forward=st.booleans(),
        size=st.one_of(st.integers(1, 2000), st.integers(2000, 200_000)),
        seed=st.integers(0, 2**32 - 1),
    )
    def send(self, index: int, forward: bool, size: int, seed: int) -> None:
        stream = self._pick(index)
        direction = stream.forward if forward else stream.backward
        if direction.eof_queued:
            return
        block = seed.to_bytes(4, "big") * (size // 4 + 1)
        self.trio.run(partial(_sync, direction.queue, block[:size]))

    @precondition(lambda self: self.streams)
    @rule(index=st.integers(0, 100), forward=st.booleans())
    def half_close(self, index: int, forward: bool) -> None:
        stream = self._pick(index)
        direction = stream.forward if forward else stream.backward
        if not direction.eof_queued:
            direction.eof_queued = True
            self.trio.run(partial(_sync, direction.queue, EOF))

    @precondition(lambda self: self.streams)
    @rule(index=st.integers(0, 100), app_end=st.booleans())
    def reset(self, index: int, app_end: bool) -> None:
        stream = self._pick(index)
        end = stream.app if app_end else stream.far
        if end is None:
            return
        stream.reset_by_test = True
        self.trio.run(partial(_sync, partial(end.close, abort=True)))

    @precondition(lambda self: self.streams)
    @rule(index=st.integers(0, 100), forward=st.booleans(), pause=st.booleans())
    def slow_consumer(self, index: int, forward: bool, pause: bool) -> None:
        """Pause a reader (its window fills and its sender must wait) or resume it."""
        stream = self._pick(index)
        direction = stream.forward if forward else stream.backward
        self.trio.run(partial(_sync, _set_paused, direction, pause))

    @rule(seconds=st.sampled_from([0.0, 0.01, 0.05, 0.2]))
    def let_time_pass(self, seconds: float) -> None:
        self.trio.run(partial(trio.sleep, seconds))

    @rule(
        towards_b=st.booleans(),
        kind=st.sampled_from(["drop", "dup", "cut", "flip"]),
        position=st.floats(0, 1, exclude_max=True),
        xor=st.integers(1, 255),
    )
    def corrupt_next_message(self, towards_b: bool, kind: str, position: float, xor: int) -> None:
        corruption = Corruption(kind, position, xor)
        self.trio.run(
            partial(_sync, self.link.armed["ab" if towards_b else "ba"].append, corruption)
        )

    @rule()
    def reconnect(self) -> None:
        """If the link died (a protocol error), carry on with a new pair of sessions."""
        self.trio.run(self._replace_link)

    async def _replace_link(self) -> None:
        if self._link_alive():
            return
        for session in self.sessions.values():
            session.close("replaced")
        for done in self.session_done.values():
            await done.wait()
        await self._new_link()

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def nothing_escaped(self) -> None:
        assert self.trio.error is None, repr(self.trio.error)
        assert not self.escaped, self.escaped

    @invariant()
    def memory_is_bounded(self) -> None:
        self.trio.run(self._check_memory)

    async def _check_memory(self) -> None:
        for session in self.sessions.values():
            for stream in list(session._streams.values()):
                flow = stream.flow
                assert flow is not None
                assert 0 <= flow.recv_buffered <= flow.window, stream
                queued = stream.inbound_receive.statistics().current_buffer_used
                assert queued <= flow.window // FRAME_COST + 1, stream
            assert len(session.writer._ready) <= max(1, session.streams_total)
            assert len(session.writer._control) <= session.writer._control_limit

    # -- the end: finish every stream, then check every byte ------------------------------------
    def teardown(self) -> None:
        try:
            if self.trio.error is None:
                self.trio.run(self._finish, timeout=2 * DRAIN_SECS + 20)
                self._check_outcomes()
            self.nothing_escaped()
        finally:
            self.trio.stop()

    async def _finish(self) -> None:
        for stream in self.streams:
            for direction in (stream.forward, stream.backward):
                _set_paused(direction, False)
                if not direction.eof_queued:
                    direction.eof_queued = True
                    direction.queue(EOF)
        # Streams on clean links must complete on their own.
        with trio.move_on_after(DRAIN_SECS):
            while not all(_finished(s) for s in self.streams if not s.link.corrupted):
                await trio.sleep(0.01)
        for session in self.sessions.values():
            session.close("fuzz example over")
        with trio.fail_after(10):
            for done in self.session_done.values():
                await done.wait()
        # Every tunnel-side socket is closed or reset now, so every reader ends.
        with trio.move_on_after(10):
            while not all(_finished(s) for s in self.streams):
                await trio.sleep(0.01)
        for stream in self.streams:
            for end in (stream.app, stream.far):
                if end is not None:
                    end.close()
        for listener in self.listeners:
            trio.lowlevel.notify_closing(listener)
            listener.close()

    def _check_outcomes(self) -> None:
        event(f"links: {len(self.links)}")
        for stream in self.streams:
            event(
                f"stream: {stream.forward.end}/{stream.backward.end}"
                + (" corrupted link" if stream.link.corrupted else "")
                + (" tainted" if stream.tainted else "")
                + (" reset by test" if stream.reset_by_test else "")
            )
            for name, direction in (("forward", stream.forward), ("backward", stream.backward)):
                where = f"stream {stream.index} ({stream.tunnel}, opened by {stream.opener}) {name}"
                if not direction.reader_started or direction.end == "local":
                    continue
                assert direction.end is not None, f"{where}: never ended (a socket left open)"
                if stream.tainted:
                    continue  # a flip the framing cannot detect (see the module docstring)
                got = bytes(direction.received)
                sent = bytes(direction.sent)
                if (
                    TOLERATE_FIN_FROM_CANCELLED_CONNECT
                    and name == "forward"
                    and direction.end == "eof"
                    and not got
                    and not direction.eof_sent
                ):
                    event("known bug: a clean, empty far end from a connect cut by a reset")
                    continue
                assert got == sent[: len(got)], f"{where}: corrupted"
                if direction.end == "eof":
                    assert direction.eof_sent, f"{where}: EOF the sender never sent"
                    assert got == sent, f"{where}: truncated ({len(got)} of {len(sent)}) with EOF"
            clean = not stream.link.corrupted and not stream.reset_by_test
            refused = stream.tunnel_stream is None or "too many streams" in (
                stream.tunnel_stream.reset_reason or ""
            )
            if clean and not refused:
                assert (stream.forward.end, stream.backward.end) == ("eof", "eof"), (
                    f"stream {stream.index}: did not complete on a clean link "
                    f"({stream.forward.end}, {stream.backward.end}; "
                    f"reset reason {stream.tunnel_stream and stream.tunnel_stream.reset_reason})"
                )


def _finished(stream: ModelStream) -> bool:
    ends = [stream.backward.end]
    if stream.far is not None or stream.forward.reader_started:
        ends.append(stream.forward.end)
    return all(end is not None for end in ends)


async def _sync(fn: Callable[..., object], *args: object) -> None:
    fn(*args)
    await trio.lowlevel.checkpoint()


def _set_paused(direction: Direction, pause: bool) -> None:
    if pause and not direction.paused:
        direction.paused = True
        direction.resume = trio.Event()
    elif not pause and direction.paused:
        direction.paused = False
        direction.resume.set()


SessionPair.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSessionPair = SessionPair.TestCase


def test_memory_pair_behaves_like_a_websocket() -> None:
    """The stand-in raises WebSocketClosed with the closer's code, like ``_ws.WebSocket``."""

    async def main() -> None:
        link = Link(0)
        a, b = memory_pair(link)
        await a.send(b"one")
        assert await b.receive() == b"one"
        await b.aclose(1002, "protocol error: test")
        for call in (a.receive(), a.send(b"two")):
            try:
                await call
            except WebSocketClosed as exc:
                assert exc.code == 1002
            else:
                raise AssertionError("no WebSocketClosed")

    trio.run(main)


def test_link_taints_only_flips_the_framing_cannot_see() -> None:
    from trio_tunnel._protocol import FrameType, encode_frame

    message = encode_frame(FrameType.DATA, 3, 0, b"payload") + encode_frame(FrameType.EOF, 3, 1)
    link = Link(0)
    link.armed["ab"].append(Corruption("flip", 0.9 * 24 / len(message), 0x01))  # in the payload
    assert link.transform("ab", message) != [message]
    assert link.tainted_ids == {3}
    link = Link(0)
    link.armed["ab"].append(Corruption("flip", 0.0, 0x80))  # the type byte: 145 is no type
    link.transform("ab", message)
    assert link.tainted_ids == set()
