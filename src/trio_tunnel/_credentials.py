"""Who may claim which client id: the server's checks of a connection's credentials.

With a shared ``websocket.auth_token_file`` (and ``trusted_peers``), any client's credential
can claim either id. With ``[clients.N]``, a connection claiming id N must present N's own
token and/or N's exact certificate: checked at the upgrade where the id is known from the
``X-Trio-Tunnel-Client-Id`` header (an HTTP 403), and again at the tunnel handshake against
the id the HELLO claims (the header is only a hint; the HELLO is what counts).
"""

from __future__ import annotations

import hashlib
import hmac

import attrs

from ._config import Config, Environment

CLIENT_ID_HEADER = "X-Trio-Tunnel-Client-Id"


@attrs.frozen
class Refused:
    status: int  # the HTTP status for the upgrade
    reason: str


@attrs.frozen
class Credentials:
    """The server's view of the credentials it accepts."""

    shared_token: bytes | None
    client_tokens: tuple[tuple[int, bytes], ...]
    client_certificates: tuple[tuple[int, frozenset[bytes]], ...]

    @classmethod
    def of(cls, config: Config, environment: Environment) -> Credentials:
        del config  # everything needed is loaded into the environment
        return cls(
            environment.auth_token, environment.client_tokens, environment.client_certificates
        )

    @property
    def bound(self) -> bool:
        """True when credentials are tied to client ids ([clients.N])."""
        return bool(self.client_tokens or self.client_certificates)

    def at_upgrade(
        self, authorization: bytes | None, claimed: bytes | None
    ) -> Refused | int | None:
        """Check the HTTP upgrade: a refusal, or the client id the token belongs to (None
        when tokens are not per client)."""
        if self.shared_token is None and not self.client_tokens:
            return None
        if authorization is None:
            return Refused(401, "no auth token")
        scheme, _, offered = authorization.partition(b" ")
        offered = offered.strip()
        if scheme.lower() != b"bearer":
            return Refused(403, "wrong auth token")
        if self.shared_token is not None:
            if not hmac.compare_digest(offered, self.shared_token):
                return Refused(403, "wrong auth token")
            return None
        owner = None
        for client_id, token in self.client_tokens:
            if hmac.compare_digest(offered, token):
                owner = client_id
        if owner is None:
            return Refused(403, "wrong auth token")
        if claimed is not None and claimed.strip() != str(owner).encode():
            return Refused(
                403,
                f"claims client id {claimed.decode('ascii', 'replace')[:8]!r} with client"
                f" {owner}'s token",
            )
        return owner

    def at_hello(
        self, client_id: int, token_owner: int | None, certificate: bytes | None
    ) -> str | None:
        """Check the id the HELLO claims against the credentials shown: the reason to refuse,
        or None."""
        if self.client_tokens and token_owner != client_id:
            return f"claims client id {client_id} with client {token_owner}'s token"
        expected = dict(self.client_certificates).get(client_id)
        if self.client_certificates:
            if certificate is None or expected is None:
                return f"claims client id {client_id} without a client certificate"
            if hashlib.sha256(certificate).digest() not in expected:
                return (
                    f"claims client id {client_id} with a certificate that is not"
                    f" clients.{client_id}.certificate"
                )
        return None
