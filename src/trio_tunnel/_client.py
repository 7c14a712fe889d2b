"""A client: holds one WebSocket to the server, reconnecting forever with capped backoff.

Its listen sockets are open only while it is connected and outside a standby close period,
so applications at this site fail over elsewhere while this side cannot carry them.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, NoReturn

import trio
import trio_websocket

from . import _proxy, _ws
from ._config import Config, Environment, Listen, load_environment
from ._credentials import CLIENT_ID_HEADER
from ._drain import DrainResult, drain_sessions
from ._errors import HandshakeError, RemoteProtocolError, StreamReset
from ._hello import client_handshake
from ._listen import ListenerSet
from ._metrics import Metrics
from ._protocol import ResetCode
from ._reload import reload_tunnels as _reload_tunnels
from ._session import Refusal, Session, SessionSettings
from ._stream import AppStream, TunnelStream, reset_tcp
from ._tls import describe_tls_failure

log = logging.getLogger("trio_tunnel.client")

_BIND_RETRY_SECS = 1.0


class Client:
    """A running client. Get one from :func:`open_client` or ``nursery.start(serve_client)``."""

    def __init__(
        self,
        config: Config,
        environment: Environment | None = None,
        *,
        open_transport: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        """``environment`` is what ``load_environment(config)`` returned; without it the
        client runs that load step (in a thread) when it starts serving. ``open_transport``
        replaces the TCP connect to the server (tests inject in-memory streams); TLS, the
        upgrade and everything above run over it unchanged."""
        if config.role != "client" or config.client_id is None:
            raise ValueError("Client needs a config with role = 'client' and a client_id")
        self.config = config
        self.client_id: int = config.client_id
        self._open_transport = open_transport
        self._connects = {c.tunnel: (c.host, c.port) for c in config.connect}
        self._session: Session | None = None
        self.active = False
        self.epoch = 0
        self._closed_until = 0.0
        self._activation_sent_epoch = -1
        self.draining = False
        self._told_draining: Session | None = None  # the session the server heard it from
        self._drain_acked = False  # the server answered it (with a state message)
        self._changed = trio.Event()
        self._listeners = ListenerSet(self._on_tcp)
        self.listening = False
        self.connections = 0
        self.metrics = Metrics(role="client")
        self.metrics.live = lambda: {
            "connected": int(self.connected),
            "active": int(self.connected and self.active),
            "client_id": self.client_id,
            "draining": int(self.draining),
        }
        self.metrics.open_stream_bytes = self._open_stream_bytes
        self._environment = environment
        self._ssl_context: ssl.SSLContext | None = None
        self._headers: list[tuple[bytes, bytes]] = []

    # -- public --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._session is not None and not self._session.closed

    async def wait_for(self, what: str) -> None:
        """Wait until ``what`` holds: "connected", "disconnected", "active", "standby",
        "listening" or "not listening" (callers bound this with a timeout)."""
        checks: dict[str, Callable[[], bool]] = {
            "connected": lambda: self.connected,
            "disconnected": lambda: not self.connected,
            "active": lambda: self.connected and self.active,
            "standby": lambda: self.connected and not self.active,
            "listening": lambda: self.listening,
            "not listening": lambda: not self.listening,
        }
        check = checks[what]
        while not check():
            await self._changed.wait()

    def _open_stream_bytes(self) -> dict[str, tuple[int, int]]:
        totals: dict[str, tuple[int, int]] = {}
        if self._session is not None:
            self._session.open_bytes_by_tunnel(totals)
        return totals

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(
        self, *, task_status: trio.TaskStatus[Client] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        environment = self._environment
        if environment is None:
            # Side-effect free, so a cancel (SIGTERM during a slow DNS answer) need not wait.
            environment = await trio.to_thread.run_sync(
                load_environment, self.config, abandon_on_cancel=True
            )
        for warning in environment.warnings:
            log.warning("%s", warning)
        self._ssl_context = environment.ssl_context
        self._headers = [(CLIENT_ID_HEADER.encode("ascii"), str(self.client_id).encode("ascii"))]
        if environment.auth_token is not None:
            self._headers.append((b"Authorization", b"Bearer " + environment.auth_token))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._manage_listeners)
            task_status.started(self)
            await self._connect_forever()
        raise AssertionError("unreachable")

    # -- connection ----------------------------------------------------------------------
    async def _connect_forever(self) -> NoReturn:
        ws_settings = self.config.websocket
        delay = ws_settings.reconnect_min_secs
        last_failure: str | None = None
        base_url = (
            f"{ws_settings.scheme}://{_host_for_url(ws_settings.host)}:{ws_settings.port}"
            f"{ws_settings.path}"
        )
        while True:
            url = base_url
            try:
                proxy = self._choose_proxy()  # ProxyError for an unusable HTTPS_PROXY
                if proxy is not None:
                    url = f"{base_url} via proxy {proxy}"  # never shows the password
                reason = await self._run_connection(url, proxy)
                log.warning("client %d: disconnected from %s: %s", self.client_id, url, reason)
                last_failure = None
                delay = ws_settings.reconnect_min_secs
            except (
                OSError,
                HandshakeError,
                trio_websocket.HandshakeError,
                _ws.ConnectionClosed,
                RemoteProtocolError,
                trio.TooSlowError,
                trio.BrokenResourceError,
            ) as exc:
                failure = _describe_failure(exc)
                if failure != last_failure:
                    log.warning(
                        "client %d: cannot connect to %s: %s (retrying with backoff "
                        "up to %gs; logged again only if the error changes)",
                        self.client_id,
                        url,
                        failure,
                        ws_settings.reconnect_max_secs,
                    )
                    last_failure = failure
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, ws_settings.reconnect_max_secs)

    def _choose_proxy(self) -> _proxy.ProxyURL | None:
        ws = self.config.websocket
        return _proxy.choose_proxy(ws.proxy, ws.scheme, ws.host, ws.port, os.environ).proxy

    async def _run_connection(self, url: str, proxy: _proxy.ProxyURL | None = None) -> str:
        ws_settings = self.config.websocket
        streams = self.config.streams
        async with _ws.connect(
            ws_settings.host,
            ws_settings.port,
            ws_settings.path,
            ssl_context=self._ssl_context,
            headers=self._headers,
            connect_timeout=ws_settings.handshake_timeout_secs,
            close_timeout=ws_settings.close_timeout_secs,
            open_transport=self._open_transport,
            proxy=proxy,
        ) as ws:
            peer_window, _welcome = await client_handshake(
                ws,
                client_id=self.client_id,
                window=streams.window_bytes,
                listen=[entry.tunnel for entry in self.config.listen],
                connect=[entry.tunnel for entry in self.config.connect],
                timeout=ws_settings.handshake_timeout_secs,
            )
            settings = SessionSettings(
                window=streams.window_bytes,
                peer_window=peer_window,
                max_streams=streams.max_streams_per_session,
                connect_timeout=streams.connect_timeout_secs,
                idle_timeout=streams.idle_timeout_secs,
                ping_interval=ws_settings.ping_interval_secs,
                ping_timeout=ws_settings.ping_timeout_secs,
            )
            session = Session(
                ws, self, settings, is_server=False, name="server", metrics=self.metrics
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                if session.closed:  # ended before it could be used
                    return session.closing_reason or "closed"
                self._session = session
                # Epochs restart with a restarted server: an old "already asked" must not
                # silence the first activation request of this session.
                self._activation_sent_epoch = -1
                self.connections += 1
                if self.connections > 1:
                    self.metrics.reconnected()
                log.warning("client %d: connected to %s", self.client_id, url)
                self._notify()
            return session.closing_reason or "closed"

    # -- SessionOwner --------------------------------------------------------------------
    def resolve_open(self, session: Session, tunnel: str, epoch: int) -> tuple[str, int] | Refusal:
        if self.draining and self._drain_acked:
            # The server answered our "draining": it opens nothing here after that. Opens
            # that were on their way before it heard are carried and drained like the rest.
            return ResetCode.SHUTDOWN, f"client {self.client_id} is shutting down"
        target = self._connects.get(tunnel)
        if target is None:
            return (
                ResetCode.UNKNOWN_TUNNEL,
                f"unknown tunnel {tunnel!r}: no connect entry on client {self.client_id}",
            )
        return target

    def session_ended(self, session: Session) -> None:
        if self._session is session:
            self._session = None
            self.active = False
            self._notify()

    def on_control(self, session: Session, message: dict[str, Any]) -> None:
        if message.get("type") != "state":
            raise RemoteProtocolError(f"unknown CONTROL message type {message.get('type')!r}")
        epoch, active = message.get("epoch"), message.get("active")
        draining = message.get("draining", False)
        if type(epoch) is not int or type(active) is not bool or type(draining) is not bool:
            raise RemoteProtocolError(f"malformed state message {message!r}")
        self.epoch = epoch
        self.active = active
        if self.draining and self._told_draining is not session:
            # A session opened during the drain (a reconnect): the server must hear it too.
            self._tell_draining(session)
        elif self.draining and draining:
            # The server's answer: every stream it opened here before is in the session now.
            self._drain_acked = True
        if active:
            self._closed_until = 0.0
            log.warning("client %d: now ACTIVE (epoch %d)", self.client_id, epoch)
        elif message.get("demoted"):
            close_secs = message.get("standby_socket_close_secs")
            if not isinstance(close_secs, (int, float)) or not 0 <= close_secs < 1e6:
                raise RemoteProtocolError(f"malformed state message {message!r}")
            self._closed_until = trio.current_time() + close_secs
            log.warning(
                "client %d: demoted to standby (epoch %d): resetting streams, listen "
                "sockets closed for %gs",
                self.client_id,
                epoch,
                close_secs,
            )
            session.start_reset_all_streams("demoted to standby")
        else:
            log.warning("client %d: standby (epoch %d)", self.client_id, epoch)
        self._notify()

    def _on_first_data(self, stream: TunnelStream) -> None:
        session = self._session
        if session is None or self.active or self._activation_sent_epoch == self.epoch:
            return
        if self.draining:
            return
        if trio.current_time() < self._closed_until:
            return
        self._activation_sent_epoch = self.epoch
        log.warning(
            "client %d: data on standby listener (tunnel %s): asking to become active",
            self.client_id,
            stream.tunnel,
        )
        session.send_control({"type": "activate", "epoch": self.epoch})

    # -- listen sockets ------------------------------------------------------------------
    def _want_listeners(self) -> bool:
        return not self.draining and self.connected and trio.current_time() >= self._closed_until

    # -- drain ---------------------------------------------------------------------------
    def _tell_draining(self, session: Session) -> None:
        self._told_draining = session
        self._drain_acked = False
        session.send_control({"type": "draining"})

    async def drain(self, secs: float) -> DrainResult:
        """Shut down gracefully: tell the server (which sends new streams to the other
        client at once), close the listen sockets, let open streams finish for up to
        ``secs``, then reset the rest. The session stays up for them (the caller ends it
        by cancelling the client)."""
        self.draining = True
        session = self._session
        if session is not None and not session.closed:
            self._tell_draining(session)
        self._listeners.close_all()
        self._notify()
        deadline = trio.current_time() + secs
        with trio.move_on_at(deadline):
            # Until the server answers, streams it opened before it heard may still arrive:
            # leaving now would cut them.
            while self.connected and not self._drain_acked:
                await self._changed.wait()
        return await drain_sessions(
            lambda: [] if self._session is None else [self._session],
            self.metrics,
            deadline,
            f"client {self.client_id}",
        )

    async def _manage_listeners(self) -> NoReturn:
        bind_failures: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            while True:
                failures: list[tuple[Listen, OSError]] = []
                if self._want_listeners():
                    failures = await self._listeners.apply(nursery, self.config.listen)
                    now_failing = {
                        entry.tunnel: f"{entry.bind}:{entry.port}: {exc.strerror or exc}"
                        for entry, exc in failures
                    }
                    for tunnel, why in now_failing.items():
                        if bind_failures.get(tunnel) != why:  # once per state change
                            log.warning(
                                "client %d: cannot listen for tunnel %s on %s (retrying every "
                                "%gs; logged again only if the error changes)",
                                self.client_id,
                                tunnel,
                                why,
                                _BIND_RETRY_SECS,
                            )
                    for tunnel in set(bind_failures) - set(now_failing):
                        log.warning(
                            "client %d: listening for tunnel %s again", self.client_id, tunnel
                        )
                    bind_failures = now_failing
                else:
                    self._listeners.close_all()
                    bind_failures = {}
                self._set_listening(
                    bool(self._listeners.open_tunnels)
                    or (self._want_listeners() and not self.config.listen)
                )
                if failures:
                    await self._wait_change_or(trio.current_time() + _BIND_RETRY_SECS)
                elif self.connected and trio.current_time() < self._closed_until:
                    await self._wait_change_or(self._closed_until)
                else:
                    await self._wait_change_or(None)

    def _set_listening(self, listening: bool) -> None:
        if listening == self.listening:
            return
        self.listening = listening
        if listening:
            log.info(
                "client %d: listening: %s",
                self.client_id,
                ", ".join(f"{t} on {p}" for t, p in self.listen_ports.items()) or "none",
            )
        else:
            log.info("client %d: listen sockets closed", self.client_id)
        self._notify()

    async def _wait_change_or(self, deadline: float | None) -> None:
        with trio.move_on_at(deadline if deadline is not None else float("inf")):
            await self._changed.wait()

    @property
    def listen_ports(self) -> dict[str, int]:
        """The port each listen tunnel is (or was last) bound to."""
        return self._listeners.ports

    async def reload(self, config: Config) -> None:
        """Apply a re-read config: tunnel additions, removals and changes take effect at
        once (open streams are untouched); other changes are logged and left unchanged."""
        self.config = _reload_tunnels(self.config, config, "client")
        self._connects = {c.tunnel: (c.host, c.port) for c in self.config.connect}
        self._notify()

    def open_stream(self, tunnel: str) -> AppStream:
        """A stream to the server's ``[[connect]]`` entry for ``tunnel``, driven by the
        caller as a trio ``HalfCloseableStream`` (no local socket needed).

        Raises ``trio.BrokenResourceError`` (its ``__cause__`` a :class:`StreamReset`) while
        not connected or at the session's stream limit.
        """
        session = self._session
        if self.draining:
            error = StreamReset(ResetCode.SHUTDOWN, "the client is shutting down", remote=False)
            raise trio.BrokenResourceError(str(error)) from error
        if session is None:
            error = StreamReset(ResetCode.REFUSED, "not connected to the server", remote=False)
            raise trio.BrokenResourceError(str(error)) from error
        return session.open_app_stream(tunnel, epoch=self.epoch)

    def _on_tcp(self, tunnel: str, tcp: trio.SocketStream) -> None:
        session = self._session
        if self.draining:  # accepted just before the listen sockets closed
            self.metrics.connection_refused(tunnel, "shutting_down")
            reset_tcp(tcp)
            return
        if session is None:
            self.metrics.connection_refused(tunnel, "not_connected")
            reset_tcp(tcp)
            return
        session.open_stream(tunnel, tcp, epoch=self.epoch, on_first_data=self._on_first_data)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"rejected with HTTP {exc.status_code}"
    if isinstance(exc, trio_websocket.HandshakeError) and exc.__cause__ is not None:
        return _describe_failure(exc.__cause__)
    if isinstance(exc, trio.BrokenResourceError):
        refusal = _server_tls_refusal(exc)
        return refusal or describe_tls_failure(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, trio.TooSlowError):
        return "handshake timed out"
    return str(exc) or type(exc).__name__


# TLS alerts a server sends when it refuses this client's certificate, in words.
_CERTIFICATE_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown CA (the server's trusted_ca did not sign it)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no certificate sent (the server requires mutual_tls)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate not accepted",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
}


def _server_tls_refusal(exc: BaseException) -> str | None:
    """``the server refused this client's certificate: why`` if ``exc`` carries such an alert."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            reason = str(getattr(cause, "reason", "") or "")
            why = _CERTIFICATE_ALERTS.get(reason)
            return (
                f"the server refused this client's TLS certificate: {why} ({reason})"
                if why
                else None
            )
        cause = cause.__cause__ or cause.__context__
    return None


@asynccontextmanager
async def open_client(
    config: Config, environment: Environment | None = None
) -> AsyncIterator[Client]:
    """Run a client for the duration of the ``async with`` block.

    ``environment`` is what ``load_environment(config)`` returned, if the caller ran the load
    step already; without it the client runs it (in a thread) as it starts.
    """
    async with trio.open_nursery() as nursery:
        client: Client = await nursery.start(partial(serve_client, config, environment=environment))
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


async def serve_client(
    config: Config,
    *,
    environment: Environment | None = None,
    task_status: trio.TaskStatus[Client] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run a client until cancelled; ``nursery.start`` returns the :class:`Client`."""
    await Client(config, environment).serve(task_status=task_status)
