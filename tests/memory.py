"""In-memory links for real servers and clients, for tests on a virtual clock.

The real :class:`~trio_tunnel.Server` and :class:`~trio_tunnel.Client` run in one trio run and
talk real trio-websocket over :class:`Link`\\ s instead of TCP: the server gets a
:class:`MemoryListener` (``Server.serve(listener=...)``), each client a dialer
(``Client(open_transport=...)``). Nothing touches the kernel, so ``autojump_clock`` turns
every ping timeout, backoff and close period into virtual time with exact results.

A link can be *cut* (both ends fail at once, as after a reset or a dead route), made *silent*
in either direction (bytes are held, as on a frozen peer or a black-holed route; released by
``resume``), and each client, and the server, can be stopped and started again. Tunnel data
over real TCP does not belong here: the clock jumps while the kernel works.
"""

from __future__ import annotations

import errno
import itertools
import operator
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio
import trio.testing
from trio.lowlevel import ParkingLot

import trio_tunnel as tt

# Held bytes are bounded: a test that keeps a link silent for long while traffic flows is
# wrong, and should fail loudly rather than grow without limit.
MAX_HELD_BYTES = 16 * 1024 * 1024


class _Direction:
    """Bytes travelling one way along a link."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.held = False
        self.broken = False
        self.reader_closed = False
        self.delivered_at: float | None = None  # when the reader last got bytes
        self.lot = ParkingLot()

    def wake(self) -> None:
        self.lot.unpark_all()


class LinkEnd(trio.abc.HalfCloseableStream):
    """One end of a :class:`Link`: a byte stream like a TCP connection."""

    def __init__(self, name: str, incoming: _Direction, outgoing: _Direction) -> None:
        self.name = name
        self._in = incoming
        self._out = outgoing
        self._closed = False
        self._sending = False  # trio's rule: one task sends, one receives, at a time
        self._receiving = False

    def __repr__(self) -> str:
        return self.name

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        self._sending = True
        try:
            await self._send_all(data)
        finally:
            self._sending = False

    async def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        if self._out.broken:
            raise trio.BrokenResourceError("link cut")
        if self._out.eof:
            raise trio.ClosedResourceError("this end already sent EOF")
        if self._out.reader_closed:
            # The peer closed its end: like TCP, writing there fails.
            raise trio.BrokenResourceError("peer closed")
        if len(self._out.buffer) + len(data) > MAX_HELD_BYTES:
            raise AssertionError(f"{self.name}: more than {MAX_HELD_BYTES} bytes held")
        self._out.buffer += data
        self._out.wake()

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        self._out.eof = True
        self._out.wake()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)  # a TypeError for 1.5, as trio's streams
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving")
        self._receiving = True
        try:
            return await self._receive_some(max_bytes)
        finally:
            self._receiving = False

    async def _receive_some(self, max_bytes: int | None) -> bytes:
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
            if self._in.broken:
                raise trio.BrokenResourceError("link cut")
            if not self._in.held:
                if self._in.buffer:
                    size = len(self._in.buffer) if max_bytes is None else max_bytes
                    data = bytes(self._in.buffer[:size])
                    del self._in.buffer[:size]
                    self._in.delivered_at = trio.current_time()
                    return data
                if self._in.eof:
                    return b""
            await self._in.lot.park()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.reader_closed = True
            self._in.buffer.clear()
            self._in.wake()
            self._out.wake()
        await trio.lowlevel.checkpoint()


class Link:
    """A connection between a dialing end (``client_end``) and an accepted end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.to_server = _Direction()
        self.to_client = _Direction()
        self.client_end = LinkEnd(f"{name}/client", self.to_client, self.to_server)
        self.server_end = LinkEnd(f"{name}/server", self.to_server, self.to_client)

    def cut(self) -> None:
        """Both ends fail at once, pending calls included (a reset, a dead route)."""
        for direction in (self.to_server, self.to_client):
            direction.broken = True
            direction.buffer.clear()
            direction.wake()

    def silence(self, *, to_server: bool = True, to_client: bool = True) -> None:
        """Stop delivering bytes (held, not lost) in the chosen directions."""
        self.to_server.held |= to_server
        self.to_client.held |= to_client

    def resume(self) -> None:
        for direction in (self.to_server, self.to_client):
            direction.held = False
            direction.wake()


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts the server ends of links made by :meth:`connect` (as trio-websocket's own
    tests do, but with :class:`Link`\\ s that can be cut or silenced)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[LinkEnd](16)
        self.closed = False
        self.accepted: list[LinkEnd] = []

    async def connect(self, name: str) -> Link:
        if self.closed:
            raise OSError(errno.ECONNREFUSED, "connection refused (listener closed)")
        link = Link(name)
        await self._send.send(link.server_end)
        return link

    async def accept(self) -> trio.abc.Stream:
        if self.closed:
            raise trio.ClosedResourceError("listener closed")
        try:
            end = await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("listener closed") from None
        self.accepted.append(end)
        return end

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


@attrs.define
class ClientSlot:
    """One client id's runs: the current :class:`Client`, its links and when it dialed."""

    config: tt.Config
    client: tt.Client | None = None
    scope: trio.CancelScope | None = None
    links: list[Link] = attrs.field(factory=list)
    dials: list[float] = attrs.field(factory=list)  # times of every connection attempt

    @property
    def link(self) -> Link:
        """The newest link (the one in use, if connected)."""
        return self.links[-1]


class MemoryDeployment:
    """A real server and real clients in this trio run, joined by in-memory links."""

    def __init__(self, nursery: trio.Nursery, server_config: tt.Config) -> None:
        self._nursery = nursery
        self.server_config = server_config
        self._server: tt.Server | None = None
        self._server_scope: trio.CancelScope | None = None
        self.listener = MemoryListener()
        self.slots: dict[int, ClientSlot] = {}
        # While set, every connection attempt fails with ECONNREFUSED (no server there).
        self.refusing = False
        self._serial = itertools.count(1)

    @property
    def server(self) -> tt.Server:
        assert self._server is not None, "the server is not running"
        return self._server

    async def start_server(self) -> tt.Server:
        """Start a (new) server process: a fresh listener, a fresh Server, epochs from 0."""
        self.listener = listener = MemoryListener()
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[tt.Server]) -> None:
            # The load step is given here: run in a worker thread, it would let the
            # autojump clock leap while the thread works.
            server = tt.Server(self.server_config, tt.load_environment(self.server_config))
            with scope:
                await server.serve(listener=listener, task_status=task_status)

        self._server = await self._nursery.start(run)
        self._server_scope = scope
        return self._server

    async def stop_server(self) -> None:
        """Stop the server as a process exit would: its connections close, and connection
        attempts are refused until :meth:`start_server`."""
        assert self._server_scope is not None
        self.listener.closed = True
        self._server_scope.cancel()
        self._server = self._server_scope = None
        await trio.testing.wait_all_tasks_blocked()

    def client(self, client_id: int) -> tt.Client:
        client = self.slots[client_id].client
        assert client is not None, f"client {client_id} is not running"
        return client

    def link(self, client_id: int) -> Link:
        return self.slots[client_id].link

    async def start_client(self, config: tt.Config, *, wait: str | None = "connected") -> tt.Client:
        """Start a client with ``config`` (its slot is kept across restarts); by default
        returns once it is connected."""
        assert config.client_id is not None
        slot = self.slots.setdefault(config.client_id, ClientSlot(config))
        slot.config = config
        client = tt.Client(
            config, tt.load_environment(config), open_transport=partial(self._dial, slot)
        )
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[tt.Client]) -> None:
            with scope:
                await client.serve(task_status=task_status)

        await self._nursery.start(run)
        slot.client, slot.scope = client, scope
        if wait is not None:
            await client.wait_for(wait)
        return client

    async def stop_client(self, client_id: int) -> None:
        """Cancel the client (its links close as in a clean shutdown)."""
        slot = self.slots[client_id]
        assert slot.scope is not None and slot.client is not None
        slot.scope.cancel()
        slot.client = slot.scope = None
        await trio.testing.wait_all_tasks_blocked()

    async def restart_client(self, client_id: int, *, wait: str | None = "connected") -> tt.Client:
        await self.stop_client(client_id)
        return await self.start_client(self.slots[client_id].config, wait=wait)

    def cut(self, client_id: int) -> None:
        self.link(client_id).cut()

    def silence(self, client_id: int, *, to_server: bool = True, to_client: bool = True) -> None:
        self.link(client_id).silence(to_server=to_server, to_client=to_client)

    def dialer(self, name: str) -> Callable[[], Awaitable[trio.abc.Stream]]:
        """An ``open_transport`` for a client run outside the slots (links named ``name``)."""

        async def dial() -> trio.abc.Stream:
            return (await self._connect(name)).client_end

        return dial

    async def _dial(self, slot: ClientSlot) -> trio.abc.Stream:
        slot.dials.append(trio.current_time())
        link = await self._connect(f"client{slot.config.client_id}")
        slot.links.append(link)
        return link.client_end

    async def _connect(self, name: str) -> Link:
        await trio.lowlevel.checkpoint()
        if self.refusing:
            raise OSError(errno.ECONNREFUSED, "connection refused")
        return await self.listener.connect(f"{name}#{next(self._serial)}")


@asynccontextmanager
async def open_memory_deployment(
    server: tt.Config, clients: list[tt.Config] | None = None
) -> AsyncIterator[MemoryDeployment]:
    """Run ``server`` on a :class:`MemoryListener`, then each client in turn (the first to
    connect becomes active); everything is cancelled when the block ends."""
    async with trio.open_nursery() as nursery:
        deployment = MemoryDeployment(nursery, server)
        srv = await deployment.start_server()
        for config in clients or []:
            await deployment.start_client(config)
            client_id = config.client_id
            assert client_id is not None
            await srv.wait_state(lambda s: client_id in s.clients)  # noqa: B023 - awaited here
        yield deployment
        nursery.cancel_scope.cancel()


def server_config(*, close_secs: float | None = None, **websocket: Any) -> tt.Config:
    """A server with no tunnels (none are needed to test sessions and failover);
    ``close_secs`` is ``standby_socket_close_secs``, ``websocket`` the ``[websocket]`` timings."""
    failover = (
        tt.FailoverSettings()
        if close_secs is None
        else tt.FailoverSettings(standby_socket_close_secs=close_secs)
    )
    return tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(url="ws://127.0.0.1:1/", **websocket),
        failover=failover,
    )


def client_config(client_id: int, *, listen: bool = False, **websocket: Any) -> tt.Config:
    """A client; with ``listen`` it has one tunnel listener on 127.0.0.1 (port 0), whose
    open/closed state the failover tests watch (nothing ever connects to it)."""
    return tt.Config(
        role="client",
        client_id=client_id,
        websocket=tt.WebSocketSettings(url="ws://127.0.0.1:1/", **websocket),
        listen=(tt.Listen(tunnel="up", port=0),) if listen else (),
    )
