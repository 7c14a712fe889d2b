"""Reaching the server through an HTTP forward proxy (``CONNECT host:port``).

Pure parts first: the proxy URL (``http://[user:password@]host:port``), which proxy applies
(``websocket.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY`` as curl and pip
read them) and the CONNECT exchange as an h11 client state machine. Then the I/O shell,
:func:`open_tunnel`, which ``_ws.connect`` calls in place of ``trio.open_tcp_stream``; TLS to
the server then runs inside the tunnel as usual.

The proxy's answer is parsed by h11 rather than by hand: it is the Trio world's HTTP/1.1
state machine (already installed with trio-websocket, through wsproto), it knows the CONNECT
switch (``SWITCHED_PROTOCOL`` and ``trailing_data``, so bytes the proxy sent after its head are
kept), 1xx answers, and it bounds the head's size (``max_incomplete_event_size``).

Credentials never leave this module in text: :class:`ProxyURL` shows itself as
``http://user:***@host:port``, and error messages do not name the proxy at all (the client's
log line does, in that form: ``cannot connect to wss://... via proxy http://user:***@...``).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from typing import Final, cast
from urllib.parse import unquote, urlsplit

import attrs
import h11
import trio

from ._errors import HandshakeError

MAX_HEAD_BYTES: Final = 16 * 1024
_READ_BYTES: Final = 4096
_MAX_INFORMATIONAL: Final = 8
_STATUS_TEXT_CHARS: Final = 120
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")


class ProxyError(HandshakeError):
    """The proxy could not be reached or refused the CONNECT.

    ``status_code`` is the proxy's HTTP status (407, 403, 502, ...) when it answered, and
    ``status_line`` that answer's first line; both are None when it closed or spoke garbage.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, status_line: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.status_line = status_line


@attrs.frozen
class ProxyURL:
    """An HTTP proxy: where it is and, for basic auth, who we are."""

    host: str
    port: int
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def __str__(self) -> str:
        """``http://user:***@host:port``: the form for logs, errors and ``check``."""
        user = ""
        if self.username is not None:
            user = f"{self.username}:***@" if self.password is not None else f"{self.username}@"
        return f"http://{user}{_authority(self.host, self.port)}"

    @property
    def authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` value, or None without credentials."""
        if self.username is None:
            return None
        secret = f"{self.username}:{self.password or ''}".encode()
        return b"Basic " + base64.b64encode(secret)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redacted(text: str) -> str:
    """``text`` with everything between the user name and the last ``@`` replaced by ***.

    Deliberately cruder than URL parsing: a password with an unencoded ``@``, ``/`` or ``#``
    must not leak through a URL that then fails to parse.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def parse_proxy_url(text: str, *, scheme_optional: bool = False) -> ProxyURL:
    """Parse ``http://[user:password@]host:port``; ValueError says what is wrong.

    ``scheme_optional`` reads ``host:port`` as http, as curl and pip do for the environment
    variables. The message never contains the password.
    """
    shown = redacted(text)
    if scheme_optional and "://" not in text:
        text = "http://" + text
    try:
        split = urlsplit(text)
        port = split.port  # parsed lazily: ValueError when not a number or out of range
    except ValueError:
        raise ValueError(f"not a valid proxy URL (got {shown!r})") from None
    scheme = split.scheme.lower()
    if scheme == "https":
        raise ValueError(
            "https:// proxies (TLS to the proxy) are not supported: give the proxy's"
            " http:// address (TLS to the server still runs inside the CONNECT tunnel)"
        )
    if scheme != "http":
        got = f"{split.scheme}://" if split.scheme else "none"
        raise ValueError(f"the scheme must be http:// (got {got})")
    host = split.hostname
    if not host:
        raise ValueError(f"has no host (got {shown!r})")
    if _ip(host) is None and not _HOST_NAME.fullmatch(host):
        raise ValueError(f"the host must be an IP address or a host name (got {host!r})")
    if port is None or port == 0:
        raise ValueError(f"needs a port, as http://proxy.example:3128 (got {shown!r})")
    if split.path not in ("", "/") or split.query or split.fragment:
        raise ValueError(f"must be http://[user:password@]host:port, nothing after (got {shown!r})")
    username = None if split.username is None else unquote(split.username)
    password = None if split.password is None else unquote(split.password)
    if not username and password is None:
        username = None  # "http://@host:port"
    return ProxyURL(host=host, port=port, username=username, password=password)


# --- which proxy applies ---------------------------------------------------------------------


@attrs.frozen
class ProxyChoice:
    """The outcome of :func:`choose_proxy`: the proxy (or None: connect directly) and why."""

    proxy: ProxyURL | None
    source: str  # "websocket.proxy", an environment variable's name, or why there is none

    def __str__(self) -> str:
        if self.proxy is None:
            return f"none ({self.source})"
        return f"{self.proxy} (from {self.source})"


def _env_value(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    # Lower case first, as curl and Python's urllib prefer it; an empty value is unset.
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return key, value
    return None


def choose_proxy(
    setting: str | None, scheme: str, host: str, port: int, environ: Mapping[str, str]
) -> ProxyChoice:
    """Which proxy a client connecting to ``scheme://host:port`` goes through.

    ``setting`` is ``websocket.proxy``: a URL uses that proxy always (NO_PROXY does not
    apply to an explicit setting), ``""`` means no proxy at all; None (the key is absent)
    leaves it to ``HTTPS_PROXY`` (wss) or ``HTTP_PROXY`` (ws) and ``NO_PROXY``, which never
    apply to a loopback server (``localhost``, 127.0.0.0/8, ::1). Raises
    :class:`ProxyError` naming the variable when the environment's value is not usable.
    """
    if setting is not None:
        if setting == "":
            return ProxyChoice(None, 'proxy = "" in the config')
        return ProxyChoice(parse_proxy_url(setting), "websocket.proxy")
    variable = "https_proxy" if scheme == "wss" else "http_proxy"
    found = _env_value(environ, variable)
    if found is None:
        return ProxyChoice(None, f"no {variable.upper()} or {variable} set")
    name, value = found
    if _is_loopback(host):
        # As Go's ProxyFromEnvironment: a proxy elsewhere cannot reach this machine's
        # loopback, and one here reaches what a direct connection does.
        return ProxyChoice(None, f"{host} is a loopback address: {name} does not apply")
    no_proxy = _env_value(environ, "no_proxy")
    if no_proxy is not None and bypasses(no_proxy[1], host, port):
        return ProxyChoice(None, f"{no_proxy[0]} matches {host}")
    try:
        return ProxyChoice(parse_proxy_url(value, scheme_optional=True), name)
    except ValueError as exc:
        raise ProxyError(f"environment variable {name}: {exc}") from None


def bypasses(no_proxy: str, host: str, port: int) -> bool:
    """Whether the NO_PROXY list ``no_proxy`` says to reach ``host:port`` directly.

    Entries are separated by commas (or spaces): ``*`` (everything), a host name that also
    covers its subdomains (``example.com``, ``.example.com`` or ``*.example.com``), an IP
    address or CIDR range (matched against IP literals only: nothing is resolved, as with
    curl), each optionally with ``:port`` (``[v6]:port`` for IPv6).
    """
    host = host.lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    address = _ip(host)
    for entry in re.split(r"[,\s]+", no_proxy.strip().lower()):
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = _split_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            network = _network(name)
            if network is not None and address.version == network.version and address in network:
                return True
            continue
        name = name.removeprefix("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _ip(host.strip("[]"))
    return address is not None and address.is_loopback


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 address, or a CIDR."""
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inside, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


# --- the CONNECT exchange (pure) -------------------------------------------------------------


class ConnectExchange:
    """One CONNECT request and the proxy's answer, as bytes in and a verdict out.

    ``request`` is what to send; feed what the proxy sends to :meth:`receive_data` until it
    returns True (done: then :attr:`leftover` holds any bytes after the head), or it raises
    :class:`ProxyError`.
    """

    def __init__(self, proxy: ProxyURL, host: str, port: int) -> None:
        self._target = _authority(host, port)
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        headers = [("Host", self._target)]
        if proxy.authorization is not None:
            headers.append(("Proxy-Authorization", proxy.authorization.decode("ascii")))
        request = h11.Request(method="CONNECT", target=self._target, headers=headers)
        self.request: bytes = (self._h11.send(request) or b"") + (
            self._h11.send(h11.EndOfMessage()) or b""
        )
        self.leftover = b""
        self._informational = 0

    def receive_data(self, data: bytes) -> bool:
        """Take bytes from the proxy (``b""`` when it closed); True once the tunnel is open."""
        if not data:
            raise ProxyError(
                f"the proxy closed the connection without answering CONNECT {self._target}"
            )
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProxyError(
                    f"the proxy sent no valid HTTP answer to CONNECT {self._target}:"
                    f" {_printable(str(exc))}"
                ) from None
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.InformationalResponse):
                self._informational += 1
                if self._informational > _MAX_INFORMATIONAL:
                    raise ProxyError(f"the proxy sent only 1xx answers to CONNECT {self._target}")
                continue
            if isinstance(event, h11.Response):
                return self._answered(event)
            # Anything else before the response head is impossible for a client.
            raise ProxyError(f"the proxy: unexpected {type(event).__name__}")

    def _answered(self, response: h11.Response) -> bool:
        line = (
            f"HTTP/{response.http_version.decode('ascii', 'replace')} {response.status_code}"
            f" {_printable(response.reason.decode('latin-1'))}"
        ).rstrip()
        if not 200 <= response.status_code < 300:
            raise ProxyError(
                f"the proxy refused CONNECT {self._target}: {line}",
                status_code=response.status_code,
                status_line=line,
            )
        assert self._h11.their_state is h11.SWITCHED_PROTOCOL  # a 2xx to CONNECT switches
        self.leftover = bytes(self._h11.trailing_data[0])
        return True


def _printable(text: str) -> str:
    """Text from the network made safe for one log line."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text)
    return clean if len(clean) <= _STATUS_TEXT_CHARS else clean[: _STATUS_TEXT_CHARS - 3] + "..."


# --- the I/O shell ---------------------------------------------------------------------------


async def open_tcp_stream(host: str, port: int, proxy: ProxyURL | None) -> trio.SocketStream:
    """TCP to ``host:port``, directly or (with ``proxy``) through a CONNECT tunnel.

    Typed as a ``SocketStream`` because trio-websocket's annotation asks for one: in the rare
    case that the proxy sent bytes after its answer this is a :class:`PrefixedStream`, which
    offers the same API (``socket``, ``setsockopt``, ``getsockopt``).
    """
    if proxy is None:
        return await trio.open_tcp_stream(host, port)
    return cast("trio.SocketStream", await open_tunnel(proxy, host, port))


async def open_tunnel(proxy: ProxyURL, host: str, port: int) -> trio.SocketStream | PrefixedStream:
    """Open TCP to ``proxy`` and CONNECT through it to ``host:port``.

    Returns the connected stream (the plain ``SocketStream`` unless the proxy sent bytes
    after its answer). Raises :class:`ProxyError`. Unbounded in time on its own: the caller
    bounds it (``_ws.connect`` by the handshake timeout).
    """
    try:
        tcp = await trio.open_tcp_stream(proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyError(f"cannot reach the proxy: {exc.strerror or exc}") from exc
    try:
        exchange = ConnectExchange(proxy, host, port)
        await tcp.send_all(exchange.request)
        while not exchange.receive_data(await tcp.receive_some(_READ_BYTES)):
            pass
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(tcp)
        raise ProxyError(f"the proxy broke the connection during CONNECT: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    if exchange.leftover:
        return PrefixedStream(tcp, exchange.leftover)
    return tcp


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first yields ``prefix`` (bytes already read), then ``stream``'s own."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.transport_stream = stream
        self.socket = stream.socket
        self.setsockopt = stream.setsockopt
        self.getsockopt = stream.getsockopt
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()

    def __repr__(self) -> str:
        return f"PrefixedStream({self.transport_stream!r}, {len(self._prefix)} bytes ahead)"
