"""Accept loops that hand each TCP connection straight to its owner.

``trio.serve_listeners`` closes a connection when its handler returns; a tunnel hands the
connection over to a session that outlives the handler, so we accept ourselves. The hand-off
is synchronous: no checkpoint between ``accept`` and the new owner taking the connection.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import NoReturn

import trio

from ._config import Listen
from ._peer import peer_address
from ._stream import reset_tcp

log = logging.getLogger("trio_tunnel.listen")

# Out of descriptors or memory: keep the listener, pause, and try again.
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_PAUSE_SECS = 0.1


async def serve_accepts(
    listeners: list[trio.SocketListener], on_accept: Callable[[trio.SocketStream], None]
) -> NoReturn:
    """Accept on every listener until cancelled; the listeners are closed on exit."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, on_accept)
    raise AssertionError("unreachable")


async def _accept_loop(
    listener: trio.SocketListener, on_accept: Callable[[trio.SocketStream], None]
) -> None:
    logged = False
    async with listener:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    raise
                if not logged:
                    log.error(
                        "accept on %s failed: %s; pausing new connections until it recovers",
                        listener.socket.getsockname(),
                        exc,
                    )
                    logged = True
                await trio.sleep(_PAUSE_SECS)
                continue
            if logged:
                log.warning("accept on %s recovered", listener.socket.getsockname())
                logged = False
            try:
                on_accept(tcp)
            except Exception:
                # A bug in handing one connection on must not end the listener: reset that
                # connection, log it (with the traceback: it is a bug), keep accepting.
                log.exception("tunnel connection from %s: internal error", peer_address(tcp))
                reset_tcp(tcp)


class ListenerSet:
    """The accept loops of a set of ``[[listen]]`` entries, changeable while running.

    ``apply`` opens what is new or changed and closes what is gone, leaving the rest (and
    every stream already accepted, which belongs to a session) untouched. The port bound for
    an entry with port 0 is remembered, so closing and reopening keeps it.
    """

    def __init__(self, on_accept: Callable[[str, trio.SocketStream], None]) -> None:
        self._on_accept = on_accept
        self._running: dict[str, tuple[Listen, trio.CancelScope]] = {}
        self._sockets: dict[str, list[trio.SocketListener]] = {}
        self.ports: dict[str, int] = {}

    @property
    def open_tunnels(self) -> set[str]:
        return set(self._running)

    async def apply(
        self, nursery: trio.Nursery, entries: Sequence[Listen]
    ) -> list[tuple[Listen, OSError]]:
        """Make the running set match ``entries``; returns the entries that failed to bind."""
        wanted = {entry.tunnel: entry for entry in entries}
        for tunnel, (entry, _scope) in list(self._running.items()):
            if wanted.get(tunnel) != entry:
                self.close(tunnel)
                if tunnel in wanted:
                    self.ports.pop(tunnel, None)  # changed: bind what the entry now says
        failures: list[tuple[Listen, OSError]] = []
        for entry in entries:
            if entry.tunnel in self._running:
                continue
            try:
                await self._open(nursery, entry)
            except OSError as exc:
                failures.append((entry, exc))
        for tunnel in set(self.ports) - set(wanted):
            del self.ports[tunnel]
        return failures

    async def _open(self, nursery: trio.Nursery, entry: Listen) -> None:
        port = self.ports.get(entry.tunnel, entry.port)
        listeners = await trio.open_tcp_listeners(port, host=entry.bind)
        self.ports[entry.tunnel] = int(listeners[0].socket.getsockname()[1])
        scope = trio.CancelScope()
        self._running[entry.tunnel] = (entry, scope)
        self._sockets[entry.tunnel] = listeners
        nursery.start_soon(self._serve, scope, listeners, entry.tunnel)

    async def _serve(
        self, scope: trio.CancelScope, listeners: list[trio.SocketListener], tunnel: str
    ) -> None:
        try:
            with scope:
                await serve_accepts(listeners, partial(self._on_accept, tunnel))
        finally:
            for listener in listeners:  # also when cancelled before the loop ever ran
                listener.socket.close()

    def close(self, tunnel: str) -> None:
        _entry, scope = self._running.pop(tunnel)
        scope.cancel()
        # Closed now, not when the cancelled accept loop next runs: once the caller logs
        # "listen sockets closed", connections must be refused.
        for listener in self._sockets.pop(tunnel, []):
            listener.socket.close()

    def close_all(self) -> None:
        for tunnel in list(self._running):
            self.close(tunnel)
