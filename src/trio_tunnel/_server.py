"""The server: accepts the two clients' WebSockets, routes streams, supervises failover.

State changes (who is connected, who is active) are synchronous, so they are atomic with
respect to every other task: the moment a switch is decided, new streams go to the new
active client. The slow part of a switch, resetting the old client's streams and waiting for
them to close, runs in the supervisor nursery.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, NoReturn

import attrs
import trio

from . import _ws
from ._config import Config, Environment, load_environment
from ._credentials import CLIENT_ID_HEADER, Credentials, Refused
from ._drain import DrainResult, drain_sessions
from ._errors import HandshakeError, RemoteProtocolError, StreamReset
from ._hello import send_refusal, send_welcome, server_handshake
from ._listen import ListenerSet
from ._metrics import Metrics
from ._protocol import ResetCode
from ._reload import reload_tunnels
from ._session import Refusal, Session, SessionSettings
from ._stream import AppStream, reset_tcp

log = logging.getLogger("trio_tunnel.server")

# A new connection with a live client's id replaces that session (a quick restart), but not
# forever: after this many replacements within the window, two processes are fighting over
# one id, and newcomers are refused while the holder lives, until the back-off has passed
# since the last refused attempt.
REPLACEMENTS_BEFORE_BACKOFF = 3
REPLACEMENT_WINDOW_SECS = 60.0
REPLACEMENT_BACKOFF_SECS = 60.0


@attrs.define
class _IdConflict:
    """The replacement history of one client id."""

    replaced_at: list[float] = attrs.field(factory=list)  # within the window
    backoff_until: float = 0.0
    refused: int = 0  # newcomers refused for this id, in all
    logged_at: float = -math.inf


class _Replacements:
    """Decides whether a newcomer may replace the live session holding its client id."""

    def __init__(self) -> None:
        self._ids: dict[int, _IdConflict] = {}

    def replaced(self, client_id: int, now: float) -> None:
        conflict = self._ids.setdefault(client_id, _IdConflict())
        conflict.replaced_at = [
            t for t in conflict.replaced_at if now - t < REPLACEMENT_WINDOW_SECS
        ]
        conflict.replaced_at.append(now)

    def refuse(self, client_id: int, now: float) -> _IdConflict | None:
        """None: the newcomer may replace the holder; else the conflict it is refused for
        (its back-off starts, or is extended, now)."""
        conflict = self._ids.get(client_id)
        if conflict is None:
            return None
        recent = [t for t in conflict.replaced_at if now - t < REPLACEMENT_WINDOW_SECS]
        conflict.replaced_at = recent
        if now >= conflict.backoff_until and len(recent) < REPLACEMENTS_BEFORE_BACKOFF:
            return None
        conflict.backoff_until = now + REPLACEMENT_BACKOFF_SECS
        conflict.refused += 1
        return conflict


@attrs.frozen
class ClientInfo:
    client_id: int
    remote: str
    connected_at: float
    streams: int
    demoted_until: float
    draining: bool = False  # it said it is shutting down: no new streams go to it


@attrs.frozen
class ServerState:
    """A snapshot of who is connected and who is active (times are ``trio.current_time()``)."""

    clients: dict[int, ClientInfo]
    active: int | None
    epoch: int
    since: float
    reason: str
    draining: bool = False  # this server is shutting down: it takes no new streams

    @property
    def connected(self) -> tuple[int, ...]:
        return tuple(sorted(self.clients))


@attrs.define
class _Client:
    client_id: int
    session: Session
    remote: str
    connected_at: float
    demoted_until: float = 0.0
    demoted_epoch: int | None = None
    draining: bool = False


class Server:
    """A running server. Get one from :func:`open_server` or ``nursery.start(serve_server)``."""

    def __init__(self, config: Config, environment: Environment | None = None) -> None:
        """``environment`` is what ``load_environment(config)`` returned; without it the
        server runs that load step (in a thread) when it starts serving."""
        if config.role != "server":
            raise ValueError("Server needs a config with role = 'server'")
        self.config = config
        self._connects = {c.tunnel: (c.host, c.port) for c in config.connect}
        self._clients: dict[int, _Client] = {}
        self._close_until: dict[int, float] = {}  # client id -> end of its close period
        self._active: int | None = None
        self._epoch = 0
        self._since = trio.current_time()
        self._reason = "started"
        self._changed = trio.Event()
        self._supervisor: trio.Nursery | None = None
        self._draining = False
        self.websocket_port = 0
        self._environment = environment
        self._ssl_context: ssl.SSLContext | None = None
        self._credentials = Credentials(None, (), ())
        self._listeners = ListenerSet(self._on_tcp)
        # [failover] close_server_listeners: the listen ports stay closed until then.
        self._listeners_closed_until = float("-inf")
        self.listen_ports = self._listeners.ports
        self._replacements = _Replacements()
        self.metrics = Metrics(role="server")
        self.metrics.live = lambda: {
            "connected_clients": len(self._clients),
            "active_client": self._active or 0,
            "draining": int(self._draining),
        }
        self.metrics.open_stream_bytes = self._open_stream_bytes

    # -- public --------------------------------------------------------------------------
    @property
    def state(self) -> ServerState:
        return ServerState(
            clients={
                cid: ClientInfo(
                    cid,
                    c.remote,
                    c.connected_at,
                    c.session.stream_count,
                    c.demoted_until,
                    c.draining,
                )
                for cid, c in sorted(self._clients.items())
            },
            active=self._active,
            epoch=self._epoch,
            since=self._since,
            reason=self._reason,
            draining=self._draining,
        )

    async def wait_state(self, predicate: Callable[[ServerState], bool]) -> ServerState:
        """Wait until ``predicate(state)`` holds (callers bound this with a timeout)."""
        while True:
            state = self.state
            if predicate(state):
                return state
            await self._changed.wait()

    async def serve(
        self,
        *,
        listener: trio.abc.Listener[trio.abc.Stream] | None = None,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Serve until cancelled. ``listener`` replaces binding the configured WebSocket
        address (tests inject an in-memory listener); tunnel listen ports are bound as usual."""
        ws_settings = self.config.websocket
        environment = self._environment
        if environment is None:
            # Side-effect free, so a cancel (SIGTERM during a slow DNS answer) need not wait.
            environment = await trio.to_thread.run_sync(
                load_environment, self.config, abandon_on_cancel=True
            )
        for warning in environment.warnings:
            log.warning("%s", warning)
        self._ssl_context = environment.ssl_context
        self._credentials = Credentials.of(self.config, environment)
        if self._credentials.bound:
            log.info("client ids are bound to their own credentials ([clients.N])")
        elif environment.auth_token is not None or self.config.websocket.trusted_peers:
            log.warning(
                "either client's credential can claim either client id (a shared token or"
                " trusted_peers); give each its own with [clients.1] and [clients.2]"
            )
        async with trio.open_nursery() as nursery:
            self._supervisor = nursery
            try:
                self.websocket_port = await nursery.start(
                    partial(
                        _ws.serve,
                        self._on_websocket,
                        ws_settings.host,
                        ws_settings.port,
                        ssl_context=self._ssl_context,
                        handshake_timeout=ws_settings.handshake_timeout_secs,
                        close_timeout=ws_settings.close_timeout_secs,
                        on_refused=self.metrics.refused,
                        listener=listener,
                    )
                )
            except OSError as bind_error:  # a busy port: say which, as for the tunnel ports
                host = ws_settings.host
                shown = f"[{host}]" if ":" in host else host
                raise OSError(
                    bind_error.errno,
                    f"websocket.url: cannot listen on {shown}:{ws_settings.port}:"
                    f" {bind_error.strerror or bind_error}",
                ) from bind_error
            failures = await self._listeners.apply(nursery, self.config.listen)
            if failures:
                entry, exc = failures[0]
                raise OSError(
                    exc.errno,
                    f"tunnel {entry.tunnel}: cannot listen on {entry.bind}:"
                    f"{entry.port}: {exc.strerror or exc}",
                )
            log.info(
                "server listening for clients on %s://%s:%d%s; tunnels: %s",
                ws_settings.scheme,
                ws_settings.host,
                self.websocket_port,
                ws_settings.path,
                ", ".join(f"{t} on {self.listen_ports[t]}" for t in self.listen_ports) or "none",
            )
            if self._ssl_context is None and not _is_loopback(ws_settings.host):
                log.warning(
                    "SECURITY: the WebSocket listens on %s without TLS (ws://): tunnel traffic "
                    "and client ids travel in clear text; use wss:// with tls_bundle (and "
                    "mutual_tls or auth_token_file to keep strangers out)",
                    ws_settings.host,
                )
            task_status.started(self)
            await trio.sleep_forever()
        raise AssertionError("unreachable")

    # -- TCP side ------------------------------------------------------------------------
    def open_stream(self, tunnel: str) -> AppStream:
        """A stream through the active client to its ``[[connect]]`` entry for ``tunnel``,
        driven by the caller as a trio ``HalfCloseableStream`` (no local socket needed).

        Raises ``trio.BrokenResourceError`` (its ``__cause__`` a :class:`StreamReset`) when no
        client is active or the session is at its stream limit.
        """
        if self._draining:
            error = StreamReset(ResetCode.SHUTDOWN, "the server is shutting down", remote=False)
            raise trio.BrokenResourceError(str(error)) from error
        client = self._clients.get(self._active) if self._active is not None else None
        if client is None:
            error = StreamReset(ResetCode.REFUSED, "no client is active", remote=False)
            raise trio.BrokenResourceError(str(error)) from error
        return client.session.open_app_stream(tunnel, epoch=self._epoch)

    def _on_tcp(self, tunnel: str, tcp: trio.SocketStream) -> None:
        client = self._clients.get(self._active) if self._active is not None else None
        if self._draining:  # accepted just before the listeners closed
            log.warning("tunnel %s: connection refused: the server is shutting down", tunnel)
            self.metrics.connection_refused(tunnel, "shutting_down")
            reset_tcp(tcp)
            return
        if client is None:
            if any(c.draining for c in self._clients.values()):
                log.warning(
                    "tunnel %s: connection refused: the only connected client is draining",
                    tunnel,
                )
                self.metrics.connection_refused(tunnel, "client_draining")
            elif self._clients:
                log.warning("tunnel %s: connection refused: no client is active", tunnel)
                self.metrics.connection_refused(tunnel, "no_active_client")
            else:
                log.warning("tunnel %s: connection refused: no client is connected", tunnel)
                self.metrics.connection_refused(tunnel, "no_client")
            reset_tcp(tcp)
            return
        client.session.open_stream(tunnel, tcp, epoch=self._epoch)

    # -- SessionOwner --------------------------------------------------------------------
    def resolve_open(self, session: Session, tunnel: str, epoch: int) -> tuple[str, int] | Refusal:
        if self._draining:
            return ResetCode.SHUTDOWN, "the server is shutting down"
        client = self._client_of(session)
        if client is None:
            return ResetCode.REFUSED, "client no longer registered"
        if client.draining:
            return ResetCode.SHUTDOWN, f"client {client.client_id} said it is draining"
        if client.demoted_epoch is not None and epoch < client.demoted_epoch:
            return (
                ResetCode.REFUSED,
                f"opened at epoch {epoch}, before this client's demotion at {client.demoted_epoch}",
            )
        target = self._connects.get(tunnel)
        if target is None:
            return (
                ResetCode.UNKNOWN_TUNNEL,
                f"unknown tunnel {tunnel!r}: no connect entry on the server",
            )
        return target

    def on_control(self, session: Session, message: dict[str, Any]) -> None:
        client = self._client_of(session)
        if client is None:
            return
        kind = message.get("type")
        if kind == "draining":
            if set(message) != {"type"}:
                raise RemoteProtocolError(f"malformed draining message {message!r}")
            self._client_draining(client)
            return
        if kind != "activate":
            raise RemoteProtocolError(f"unknown CONTROL message type {kind!r}")
        epoch = message.get("epoch")
        if self._active == client.client_id:
            return
        if client.draining or self._draining:
            # A switch now would only reset the old client's streams: no new ones may start.
            log.info(
                "client %d: activation request ignored: %s is draining",
                client.client_id,
                f"client {client.client_id}" if client.draining else "the server",
            )
            return
        if epoch != self._epoch:
            log.info(
                "client %d: stale activation request (epoch %r, now %d) ignored",
                client.client_id,
                epoch,
                self._epoch,
            )
            return
        now = trio.current_time()
        if now < client.demoted_until:
            log.warning(
                "client %d: activation refused: its close period after demotion has %.1fs left",
                client.client_id,
                client.demoted_until - now,
            )
            return
        self._switch(client.client_id, f"data arrived at client {client.client_id}'s listener")

    def _open_stream_bytes(self) -> dict[str, tuple[int, int]]:
        totals: dict[str, tuple[int, int]] = {}
        for client in self._clients.values():
            client.session.open_bytes_by_tunnel(totals)
        return totals

    async def reload(self, config: Config) -> None:
        """Apply a re-read config: tunnel additions, removals and changes, and the failover
        settings, take effect at once (open streams are untouched); other changes are logged
        and left unchanged."""
        self.config = reload_tunnels(self.config, config, "server")
        self._connects = {c.tunnel: (c.host, c.port) for c in self.config.connect}
        assert self._supervisor is not None
        if self._draining or trio.current_time() < self._listeners_closed_until:
            return  # closed after a switch (they reopen with the new entries) or for good
        for entry, exc in await self._listeners.apply(self._supervisor, self.config.listen):
            log.error(
                "reload: cannot listen for tunnel %s on %s:%d: %s; it stays closed",
                entry.tunnel,
                entry.bind,
                entry.port,
                exc.strerror or exc,
            )

    def _client_of(self, session: Session) -> _Client | None:
        for client in self._clients.values():
            if client.session is session:
                return client
        return None

    # -- drain ---------------------------------------------------------------------------
    def _client_draining(self, client: _Client) -> None:
        """A client is shutting down: send new streams to the other one at once, and leave
        the draining client's open streams alone so that they can finish."""
        if client.draining:
            return
        client.draining = True
        if self._active != client.client_id:
            # The answer tells it that no stream is on its way to it any more.
            client.session.send_control(
                {"type": "state", "epoch": self._epoch, "active": False, "draining": True}
            )
            self._log_state(f"client {client.client_id} is draining (it was not active)")
            return
        others = [c.client_id for c in self._clients.values() if not c.draining]
        self._switch(
            others[0] if others else None,
            f"client {client.client_id} is draining (planned shutdown)",
            reset_old=False,
        )

    async def drain(self, secs: float) -> DrainResult:
        """Stop accepting (listen ports closed, new streams from clients refused with
        ``ResetCode.SHUTDOWN``), let open streams finish for up to ``secs``, then reset the
        rest. The sessions stay up (the caller ends them by cancelling the server)."""
        self._draining = True
        self._listeners.close_all()
        self._log_state("the server is draining")
        return await drain_sessions(
            lambda: [c.session for c in self._clients.values()],
            self.metrics,
            trio.current_time() + secs,
            "server",
        )

    # -- failover ------------------------------------------------------------------------
    def _switch(self, new_active: int | None, reason: str, *, reset_old: bool = True) -> None:
        """Make ``new_active`` the active client. The old one is demoted (its streams reset,
        its listen sockets closed for the close period) unless ``reset_old`` is false: a
        client that is draining keeps its open streams and is only told it is standby."""
        if new_active is not None and self._clients[new_active].draining:
            new_active = None  # a draining client takes no new streams: better none active
        old_active = self._active
        if old_active == new_active:
            return
        now = trio.current_time()
        self._epoch += 1
        self._active = new_active
        self._since = now
        self._reason = reason
        self.metrics.switched(reason)
        if new_active is not None:
            self._clients[new_active].session.send_control(
                {"type": "state", "epoch": self._epoch, "active": True}
            )
        old = self._clients.get(old_active) if old_active is not None else None
        if old is not None and not reset_old:
            old.session.send_control(
                {"type": "state", "epoch": self._epoch, "active": False, "draining": True}
            )
        elif old is not None:
            close_secs = self.config.failover.standby_socket_close_secs
            old.demoted_until = self._close_until[old.client_id] = now + close_secs
            old.demoted_epoch = self._epoch
            old.session.send_control(
                {
                    "type": "state",
                    "epoch": self._epoch,
                    "active": False,
                    "demoted": True,
                    "standby_socket_close_secs": close_secs,
                }
            )
            assert self._supervisor is not None
            self._supervisor.start_soon(self._reset_streams_of, old, reason)
        failover = self.config.failover
        if (
            old_active is not None
            and reset_old  # a drain cuts nothing: no blackout for applications to notice
            and failover.close_server_listeners
            and failover.standby_socket_close_secs > 0
        ):
            self._close_listeners_for(failover.standby_socket_close_secs)
        self._log_state(f"active client {old_active} -> {new_active}: {reason}")

    def _close_listeners_for(self, secs: float) -> None:
        """``close_server_listeners``: as tcp-over-websocket's server did, refuse connections
        on the server's own listen ports for the close period after a switch away from an
        active client, so applications see the failover and reconnect later."""
        self._listeners_closed_until = trio.current_time() + secs
        self._listeners.close_all()
        log.info(
            "server listen ports closed for %gs after the switch (close_server_listeners)", secs
        )
        assert self._supervisor is not None
        self._supervisor.start_soon(self._reopen_listeners)

    async def _reopen_listeners(self) -> None:
        await trio.sleep_until(self._listeners_closed_until)
        if trio.current_time() < self._listeners_closed_until:
            return  # a later switch extended the period; its own task reopens them
        if self._draining:
            return  # closed for good
        assert self._supervisor is not None
        for entry, exc in await self._listeners.apply(self._supervisor, self.config.listen):
            log.error(
                "cannot reopen the listener of tunnel %s on %s:%d: %s; it stays closed",
                entry.tunnel,
                entry.bind,
                entry.port,
                exc.strerror or exc,
            )
        log.info("server listen ports reopened: %s", ", ".join(sorted(self.listen_ports)))

    async def _reset_streams_of(self, client: _Client, reason: str) -> None:
        count = await client.session.reset_all_streams(f"failover: {reason}")
        log.warning("client %d: %d streams reset by the failover", client.client_id, count)

    def _log_state(self, what: str) -> None:
        connected = ",".join(str(c) for c in sorted(self._clients)) or "none"
        log.warning(
            "state (epoch %d): %s; connected: %s; active: %s",
            self._epoch,
            what,
            connected,
            self._active,
        )
        self._changed.set()
        self._changed = trio.Event()

    def _register(self, client_id: int, session: Session, remote: str) -> None:
        if session.closed:  # it ended before it could be registered: nothing to route to
            return
        old = self._clients.get(client_id)
        if old is not None:
            log.warning(
                "client %d: new connection from %s replaces the one from %s",
                client_id,
                remote,
                old.remote,
            )
            self._replacements.replaced(client_id, trio.current_time())
            self._unregister(old, "replaced by a new connection")
        now = trio.current_time()
        # A demoted client's close period outlives its connection: reconnecting (or a quick
        # restart replacing the session) does not let it ask to be active again any sooner.
        close_until = self._close_until.get(client_id, 0.0)
        self._clients[client_id] = _Client(
            client_id, session, remote, now, demoted_until=close_until if close_until > now else 0.0
        )
        self._log_state(f"client {client_id} connected from {remote}")
        if self._active is None:
            self._switch(client_id, f"client {client_id} connected and no client was active")
        else:
            session.send_control({"type": "state", "epoch": self._epoch, "active": False})

    def _unregister(self, client: _Client, reason: str) -> None:
        if self._clients.get(client.client_id) is not client:
            return
        del self._clients[client.client_id]
        client.session.close(reason)
        if self._active == client.client_id:
            others = [cid for cid in self._clients if cid != client.client_id]
            self._switch(
                others[0] if others else None,
                f"active client {client.client_id} lost (disconnected: {reason})",
            )
        else:
            self._log_state(f"client {client.client_id} disconnected: {reason}")

    # -- WebSocket side ------------------------------------------------------------------
    async def _on_websocket(self, request: _ws.Request) -> None:
        remote = request.remote
        ws_settings = self.config.websocket
        if request.path.split("?")[0] != ws_settings.path.split("?")[0]:
            request.refuse("unknown_path", f"unknown path {request.path!r}")
            await request.reject(404, "unknown path\n")
            return
        token_owner = self._credentials.at_upgrade(
            request.header("authorization"), request.header(CLIENT_ID_HEADER)
        )
        if isinstance(token_owner, Refused):
            status, why = token_owner.status, token_owner.reason
            request.refuse("auth_token", why, kind=str(status))
            await request.reject(status, f"{why}\n")
            return
        ws = await request.accept()
        try:
            hello = await server_handshake(
                ws, timeout=max(0.0, request.hello_deadline - trio.current_time())
            )
        except (
            HandshakeError,
            RemoteProtocolError,
            trio.TooSlowError,
            _ws.ConnectionClosed,
        ) as exc:
            timed_out = isinstance(exc, trio.TooSlowError)
            why = "handshake timed out" if timed_out else str(exc) or type(exc).__name__
            request.refuse("hello_timeout" if timed_out else "handshake", why)
            if not isinstance(exc, _ws.ConnectionClosed):
                await send_refusal(ws, why)
            await ws.aclose(1008, why)
            return
        mismatch = self._credentials.at_hello(
            hello.client_id,
            token_owner if isinstance(token_owner, int) else None,
            request.peer_certificate,
        )
        if mismatch is not None:
            # The live client of that id is left alone: the impostor never gets a session.
            request.refuse("credential", mismatch, kind=str(hello.client_id))
            await send_refusal(ws, mismatch)
            await ws.aclose(1008, "credential of another client id")
            return
        request.admitted()
        conflict = self._id_conflict(hello.client_id, remote)
        if conflict is not None:
            request.refuse("id_in_use", conflict, kind=str(hello.client_id))
            await send_refusal(ws, conflict)
            await ws.aclose(1008, "client id in use")
            return
        streams = self.config.streams
        settings = SessionSettings(
            window=streams.window_bytes,
            peer_window=hello.window,
            max_streams=streams.max_streams_per_session,
            connect_timeout=streams.connect_timeout_secs,
            idle_timeout=streams.idle_timeout_secs,
            ping_interval=ws_settings.ping_interval_secs,
            ping_timeout=ws_settings.ping_timeout_secs,
        )
        await send_welcome(
            ws,
            window=streams.window_bytes,
            standby_socket_close_secs=self.config.failover.standby_socket_close_secs,
        )
        session = Session(
            ws,
            self,
            settings,
            is_server=True,
            name=f"client {hello.client_id}",
            metrics=self.metrics,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            self._register(hello.client_id, session, remote)

    def _id_conflict(self, client_id: int, remote: str) -> str | None:
        """Why a newcomer claiming ``client_id`` is refused, or None if it may connect (no
        live holder, or a quick restart replacing it)."""
        holder = self._clients.get(client_id)
        if holder is None or holder.session.closed:
            return None
        now = trio.current_time()
        conflict = self._replacements.refuse(client_id, now)
        if conflict is None:
            return None
        if now - conflict.logged_at >= REPLACEMENT_BACKOFF_SECS:
            log.error(
                "client %d: connections from %s and %s both claim this client id and kept "
                "replacing each other (%d times within %gs): keeping the session from %s and "
                "refusing newcomers for this id while it lives (%d refused so far); are two "
                "processes configured as client %d?",
                client_id,
                holder.remote,
                remote,
                REPLACEMENTS_BEFORE_BACKOFF,
                REPLACEMENT_WINDOW_SECS,
                holder.remote,
                conflict.refused,
                client_id,
            )
            conflict.logged_at = now
        return (
            f"client id {client_id} is in use by a live session from {holder.remote}, which "
            f"new connections replaced {REPLACEMENTS_BEFORE_BACKOFF} times within "
            f"{REPLACEMENT_WINDOW_SECS:g}s (two processes configured as client {client_id}?); "
            f"refused until {REPLACEMENT_BACKOFF_SECS:g}s after the last attempt, or that "
            "session ends"
        )

    def session_ended(self, session: Session) -> None:
        client = self._client_of(session)
        if client is not None:
            self._unregister(client, session.closing_reason or "closed")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@asynccontextmanager
async def open_server(
    config: Config, environment: Environment | None = None
) -> AsyncIterator[Server]:
    """Run a server for the duration of the ``async with`` block.

    ``environment`` is what ``load_environment(config)`` returned, if the caller ran the load
    step already; without it the server runs it (in a thread) as it starts.

    >>> async with open_server(config) as server:  # doctest: +SKIP
    ...     print(server.websocket_port, server.listen_ports)
    """
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve_server, config, environment=environment))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def serve_server(
    config: Config,
    *,
    environment: Environment | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run a server until cancelled; ``nursery.start`` returns the :class:`Server`."""
    await Server(config, environment).serve(task_status=task_status)
