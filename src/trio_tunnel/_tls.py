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
import os
import ssl
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable

import trio
from cryptography.hazmat.primitives import serialization

from . import _pem
from ._peer import PeerStream, peer_address

log = logging.getLogger("trio_tunnel.tls")


def _log_notes(path: str, notes: Iterable[_pem.Note]) -> None:
    for note in notes:
        log.log(logging.WARNING if note.warning else logging.INFO, "%s: %s", path, note)


def load_pins(path: str) -> frozenset[bytes]:
    """SHA-256 digests of every certificate in a PEM file; ``ValueError`` if there is none.

    Private keys in the file are ignored (with a log line): a bundle reused as a pin file works.
    """
    trusted = _pem.load_trusted(path)
    _log_notes(path, trusted.notes)
    return frozenset(hashlib.sha256(der).digest() for der in trusted.der_certs())


def bundle_digests(path: str) -> frozenset[bytes]:
    """SHA-256 digests of the certificates of a ``tls_bundle`` (what this side presents),
    without logging its notes (the config step reports them)."""
    bundle = _pem.load_bundle(path)
    return frozenset(
        hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
        for cert in bundle.chain
    )


def load_bundle_into(context: ssl.SSLContext, path: str, *, log_notes: bool = True) -> _pem.Bundle:
    """Load a key-and-certificates bundle whose PEM blocks may come in any order.

    The ssl module reads a chain only from a file, in the order leaf, chain: the ordered copy
    goes to a private file that is gone again before this returns (an anonymous memory file
    on Linux, so the key never touches a disk; elsewhere a mode-0600 temporary file).
    """
    try:
        bundle = _pem.load_bundle(path)
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None
    if log_notes:
        _log_notes(path, bundle.notes)
    data = bundle.pem()
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and sys.platform == "linux" and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("trio-tunnel-bundle", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as file:  # write it all, however large
                file.write(data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return bundle
    fd, temporary = tempfile.mkstemp(prefix="trio-tunnel-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        context.load_cert_chain(temporary)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return bundle


def load_trusted_ca_into(context: ssl.SSLContext, path: str) -> None:
    """Trust the CA certificates of ``path``; keys and other blocks in it are ignored."""
    context.load_verify_locations(cadata=_trusted_pem(path))


def _trusted_pem(path: str) -> str:
    try:
        trusted = _pem.load_trusted(path)
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None
    _log_notes(path, trusted.notes)
    return trusted.pem()


def check_bundle(path: str) -> list[str]:
    """Validate a ``tls_bundle`` file for the config step, loading it as a run would.

    Raises ``ValueError`` with a message naming the file when it cannot work (no key, several
    keys, an encrypted key, no certificate matching the key, a broken block, a key type
    OpenSSL refuses); otherwise returns notes (blocks reordered or ignored) for ``check``.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        bundle = load_bundle_into(context, path, log_notes=False)
    except ssl.SSLError as exc:
        raise ValueError(f"{path!r}: {getattr(exc, 'reason', None) or exc}") from None
    return [str(note) for note in bundle.notes]


def check_trusted(path: str) -> list[str]:
    """Validate a ``trusted_ca`` or ``trusted_peers`` file: ``ValueError`` naming the file, or
    notes (private keys or other blocks in it that are ignored) for ``check``."""
    try:
        trusted = _pem.load_trusted(path)
        ssl.create_default_context(cadata=trusted.pem())
    except ssl.SSLError as exc:
        raise ValueError(f"{path!r}: {getattr(exc, 'reason', None) or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None
    return [str(note) for note in trusted.notes]


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
    load_bundle_into(context, tls_bundle)
    if mutual_tls:
        assert trusted_ca is not None  # checked with the config
        context.verify_mode = ssl.CERT_REQUIRED
        load_trusted_ca_into(context, trusted_ca)
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
    cadata = None
    if trusted_ca is not None:  # then only these CAs, not the system's
        cadata = _trusted_pem(trusted_ca)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cadata)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if mutual_tls:
        assert tls_bundle is not None  # checked with the config
        load_bundle_into(context, tls_bundle)
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
        ssl_stream: trio.SSLStream[trio.abc.Stream],
        remote: str,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(ssl_stream, remote)
        self._ssl = ssl_stream
        self._on_refused = on_refused
        self.subject = ""
        self.peer_certificate: bytes | None = None  # DER, after the handshake
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
        self.peer_certificate = self._ssl.getpeercert(binary_form=True)
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
        listener: trio.abc.Listener[trio.abc.Stream],
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
