"""Checks across files: a server's config and its clients' configs, as one deployment.

Each file can be right on its own and the set still not work: a tunnel the server listens for
that a client cannot connect, a client whose url misses the server's port or path, TLS or
token settings one side expects and the other lacks, two clients claiming one id. These
checks are pure (no DNS: host names are compared only when both sides are IP addresses).
Every problem names the file and key to look at, and the tunnel where there is one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from ._checks import _format_path, _is_ip, _Path
from ._schema import Config

if TYPE_CHECKING:
    from ._load import Environment

__all__ = ["Member", "check_together"]


@attrs.frozen
class Member:
    """One file of the set: its name, its config and, once loaded, what the load step read
    (the token and certificate digests are then compared too)."""

    source: str
    config: Config
    environment: Environment | None = None


def check_together(members: Sequence[Member]) -> list[str]:
    """The problems of ``members`` as a deployment, as ``file: key.path: problem`` lines."""
    problems: list[tuple[str, _Path, str]] = []
    servers = [m for m in members if m.config.is_server]
    clients = [m for m in members if not m.config.is_server]
    for extra in servers[1:]:
        problems.append(
            (extra.source, ("role",), f"a second server ({servers[0].source} is one): check one"
             " server together with its clients")
        )  # fmt: skip
    first_with_id: dict[int, Member] = {}
    for client in clients:
        client_id = client.config.client_id
        assert client_id is not None  # the schema requires it for a client
        if client_id in first_with_id:
            other = first_with_id[client_id]
            problems.append(
                (client.source, ("client_id",), f"client {client_id} is also {other.source}'s"
                 " client_id: the server would let each replace the other; give one 2 (or 1)")
            )  # fmt: skip
        else:
            first_with_id[client_id] = client
    if servers:
        server = servers[0]
        for client in clients:
            problems += _tunnel_problems(server, client)
            problems += _url_problems(server, client)
            problems += _security_problems(server, client)
    return [f"{source}: {_format_path(path)}: {why}" for source, path, why in problems]


def _tunnel_problems(server: Member, client: Member) -> Iterable[tuple[str, _Path, str]]:
    """Streams go both ways: what one side listens for, the other must connect."""
    for listener, connector in ((server, client), (client, server)):
        targets = {entry.tunnel for entry in connector.config.connect}
        for index, entry in enumerate(listener.config.listen):
            if entry.tunnel not in targets:
                yield (
                    listener.source,
                    ("listen", index, "tunnel"),
                    f"tunnel {entry.tunnel!r} has no [[connect]] entry in {connector.source}:"
                    " every connection to it would be refused",
                )


def _url_problems(server: Member, client: Member) -> Iterable[tuple[str, _Path, str]]:
    ours, theirs = client.config.websocket, server.config.websocket
    key: _Path = ("websocket", "url")
    where = f"{server.source}'s websocket.url ({theirs.url})"
    if ours.scheme != theirs.scheme:
        yield (
            client.source,
            key,
            f"uses {ours.scheme}:// but {where} is {theirs.scheme}://: with TLS on one"
            " side only, no connection can succeed",
        )
    if theirs.port != 0 and ours.port != theirs.port:
        yield client.source, key, f"port {ours.port} does not reach {where}, port {theirs.port}"
    if ours.path.split("?")[0] != theirs.path.split("?")[0]:
        yield (
            client.source,
            key,
            f"path {ours.path.split('?')[0]!r} is not the path of {where}: the server answers 404",
        )
    if not _may_reach(ours.host, theirs.host):
        yield client.source, key, f"host {ours.host} does not reach {where}, host {theirs.host}"


def _may_reach(host: str, bind: str) -> bool:
    """Whether a client connecting to ``host`` may reach a server bound to ``bind``.

    Only addresses are compared: a name could resolve to anything without DNS.
    """
    if not (_is_ip(host) and _is_ip(bind)):
        return True
    target, bound = ipaddress.ip_address(host), ipaddress.ip_address(bind)
    if bound.is_unspecified:
        return target.version == bound.version
    return target == bound


def _security_problems(server: Member, client: Member) -> Iterable[tuple[str, _Path, str]]:
    ours, theirs = client.config.websocket, server.config.websocket
    if theirs.scheme == "wss" == ours.scheme and theirs.mutual_tls and not ours.mutual_tls:
        yield (
            client.source,
            ("websocket", "mutual_tls"),
            f"{server.source} requires client certificates (mutual_tls = true), but this"
            " client presents none: set mutual_tls = true and tls_bundle",
        )
    key: _Path = ("websocket", "auth_token_file")
    if theirs.auth_token_file is not None and ours.auth_token_file is None:
        yield (
            client.source,
            key,
            f"{server.source} requires a token (auth_token_file), but this client sends none:"
            " the server answers 401",
        )
    elif theirs.auth_token_file is None and ours.auth_token_file is not None:
        yield (
            client.source,
            key,
            f"set, but {server.source} checks no token: set the same auth_token_file on the"
            " server, or remove it here",
        )
    elif (
        server.environment is not None
        and client.environment is not None
        and server.environment.auth_token != client.environment.auth_token
    ):
        yield (
            client.source,
            key,
            f"the token in {ours.auth_token_file!r} is not the one in {server.source}'s"
            f" {theirs.auth_token_file!r}: the server answers 403",
        )
    if theirs.scheme == "wss" == ours.scheme:
        yield from _pin_problems(server, client)


def _pin_problems(server: Member, client: Member) -> Iterable[tuple[str, _Path, str]]:
    """With pinning, each side must pin a certificate the other presents (its leaf)."""
    if server.environment is None or client.environment is None:
        return
    ours, theirs = client.config.websocket, server.config.websocket
    if (
        theirs.mutual_tls
        and theirs.trusted_peers is not None
        and ours.tls_bundle is not None
        and not client.environment.certificates & server.environment.pins
    ):
        yield (
            client.source,
            ("websocket", "tls_bundle"),
            f"no certificate in {ours.tls_bundle!r} is among {server.source}'s trusted_peers"
            f" ({theirs.trusted_peers!r}): the server refuses this client's TLS handshake",
        )
    if ours.trusted_peers is not None and not (
        server.environment.certificates & client.environment.pins
    ):
        yield (
            client.source,
            ("websocket", "trusted_peers"),
            f"no certificate in {server.source}'s tls_bundle ({theirs.tls_bundle!r}) is pinned"
            f" in {ours.trusted_peers!r}: this client refuses the server's TLS handshake",
        )
