"""TLS: server and client contexts, mutual TLS, and pinning to exact peer certificates.

Pinning hooks the handshake itself: the context's ``sslobject_class`` checks the peer's leaf
certificate (SHA-256 of its DER) against ``trusted_peers`` right after normal chain
verification, so a peer that is not pinned fails the TLS handshake on either side, before it
can say a word of WebSocket or claim a client id.

The server accepts TCP itself and performs the handshake lazily in the connection's own task
(:class:`TlsServerStream`), so a slow or hostile handshake never blocks other accepts, and a
refused peer is logged once with its address and the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import ssl
from collections.abc import Callable, Collection

import trio

from ._peer import PeerStream, peer_address

log = logging.getLogger("trio_tunnel.tls")

_PEM_CERT = "-----BEGIN CERTIFICATE-----"


def load_pins(path: str) -> frozenset[bytes]:
    """SHA-256 digests of every certificate in a PEM file; ``ValueError`` if there is none."""
    with open(path, encoding="ascii", errors="replace") as file:
        text = file.read()
    digests = set()
    for block in text.split(_PEM_CERT)[1:]:
        pem = (
            _PEM_CERT
            + block.split("-----END CERTIFICATE-----")[0]
            + ("-----END CERTIFICATE-----\n")
        )
        try:
            der = ssl.PEM_cert_to_DER_cert(pem)
        except ValueError as exc:
            raise ValueError(f"malformed certificate: {exc}") from None
        digests.add(hashlib.sha256(der).digest())
    if not digests:
        raise ValueError("no PEM certificate found")
    return frozenset(digests)


def _pinning(context: ssl.SSLContext, pins: Collection[bytes]) -> None:
    pinned = frozenset(pins)

    class PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            if der is None or hashlib.sha256(der).digest() not in pinned:
                raise ssl.SSLCertVerificationError(
                    "peer certificate is not among trusted_peers (pinning)"
                )

    context.sslobject_class = PinnedSSLObject


def server_context(
    *, tls_bundle: str, trusted_ca: str | None, trusted_peers: str | None, mutual_tls: bool
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls_bundle)
    if mutual_tls:
        assert trusted_ca is not None  # checked with the config
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=trusted_ca)
        if trusted_peers is not None:
            _pinning(context, load_pins(trusted_peers))
    return context


def client_context(
    *,
    tls_bundle: str | None,
    trusted_ca: str | None,
    trusted_peers: str | None,
    mutual_tls: bool,
) -> ssl.SSLContext:
    """Verifies the server's chain and host name (always), pins it if asked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=trusted_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if mutual_tls:
        assert tls_bundle is not None  # checked with the config
        context.load_cert_chain(tls_bundle)
    if trusted_peers is not None:
        _pinning(context, load_pins(trusted_peers))
    return context


def describe_tls_failure(exc: BaseException) -> str:
    """The root cause of a failed handshake, in words."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
            return f"certificate rejected: {detail or cause}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {getattr(cause, 'reason', None) or cause}"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


class TlsServerStream(PeerStream):
    """A server-side TLS stream that handshakes on first use and logs a refusal once."""

    def __init__(
        self,
        ssl_stream: trio.SSLStream[trio.SocketStream],
        remote: str,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(ssl_stream, remote)
        self._ssl = ssl_stream
        self._on_refused = on_refused
        self.subject = ""
        self._ready = False

    async def _handshake(self) -> None:
        if self._ready:
            return
        try:
            await self._ssl.do_handshake()
        except trio.BrokenResourceError as exc:
            await self._send_alert()
            if not self.refused:
                self.refused = True
                log.warning(
                    "refused %s: TLS handshake failed: %s", self.remote, describe_tls_failure(exc)
                )
                if self._on_refused is not None:
                    self._on_refused("tls")
            self.ended.set()
            raise
        self._ready = True
        cert = self._ssl.getpeercert()
        if cert:
            self.subject = ", ".join(
                f"{key}={value}" for rdn in cert.get("subject", ()) for key, value in rdn
            )

    async def handshake(self) -> str | None:
        """Handshake now: None if it succeeded, else the failure in words, which the caller
        reports (rate-limited); it is not logged here."""
        self.refused = True  # reported by the caller, not by the lazy path below
        try:
            await self._handshake()
        except trio.BrokenResourceError as exc:
            return describe_tls_failure(exc)
        self.refused = False
        return None

    async def _send_alert(self) -> None:
        # trio drops what OpenSSL queued when a handshake fails, the alert telling the client
        # why (unknown CA, bad or missing certificate): send it, so the client can say so at
        # once instead of seeing a bare close. Best effort, bounded.
        outgoing = getattr(self._ssl, "_outgoing", None)
        alert = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
        if alert:
            with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
                await self._ssl.transport_stream.send_all(alert)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._handshake()
        return await super().receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._handshake()
        await super().send_all(data)


class TlsListener(trio.abc.Listener[TlsServerStream]):
    """Accepts TCP and wraps it for TLS without doing any handshake in the accept loop."""

    def __init__(
        self,
        listener: trio.SocketListener,
        context: ssl.SSLContext,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.transport_listener = listener
        self._context = context
        self._on_refused = on_refused

    async def accept(self) -> TlsServerStream:
        tcp = await self.transport_listener.accept()
        remote = peer_address(tcp)
        ssl_stream = trio.SSLStream(tcp, self._context, server_side=True, https_compatible=True)
        return TlsServerStream(ssl_stream, remote, self._on_refused)

    async def aclose(self) -> None:
        await self.transport_listener.aclose()
