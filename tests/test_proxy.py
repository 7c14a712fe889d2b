"""HTTP CONNECT proxies: the pure rules (URL, environment, NO_PROXY, the answer), then a client
going through a real proxy server (pproxy, a subprocess on 127.0.0.1) and through small
in-process proxies that misbehave.

Rules: everything binds 127.0.0.1; every I/O test has an absolute ``trio.fail_after``; waits
for another process poll its log with a bound. The pproxy tests are skipped when pproxy is
not installed (it is in the ``test`` dependency group).
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

import trio_tunnel as tt
from trio_tunnel._proxy import (
    MAX_HEAD_BYTES,
    ConnectExchange,
    PrefixedStream,
    ProxyError,
    ProxyURL,
    bypasses,
    choose_proxy,
    open_tunnel,
    parse_proxy_url,
)

from .helpers import (
    LOCALHOST,
    Rig,
    client_config,
    closed_port,
    echo_handler,
    free_port,
    open_rig,
    read_to_end,
    server_config,
    start_client,
    start_service,
)

HAVE_PPROXY = importlib.util.find_spec("pproxy") is not None
needs_pproxy = pytest.mark.skipif(not HAVE_PPROXY, reason="pproxy is not installed")
PASSWORD = "s3cret-Pa55"
# Quick retries, so a test sees several attempts within its bound.
FAST: dict[str, Any] = {"reconnect_min_secs": 0.05, "reconnect_max_secs": 0.2}


# --- the proxy URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://proxy.example:3128", ProxyURL("proxy.example", 3128)),
        ("HTTP://proxy.example:3128/", ProxyURL("proxy.example", 3128)),
        ("http://u:p@10.0.0.1:8080", ProxyURL("10.0.0.1", 8080, "u", "p")),
        ("http://u%40corp:p%3Aw%2F@h:1", ProxyURL("h", 1, "u@corp", "p:w/")),
        ("http://u@h:1", ProxyURL("h", 1, "u", None)),
        ("http://[::1]:3128", ProxyURL("::1", 3128)),
    ],
)
def test_proxy_urls_that_parse(text: str, expected: ProxyURL) -> None:
    assert parse_proxy_url(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("https://u:pw@proxy:443", "https:// proxies (TLS to the proxy) are not supported"),
        ("socks5://proxy:1080", "the scheme must be http:// (got socks5://)"),
        ("proxy:3128", "the scheme must be http://"),
        (
            "http://u:pw@proxy",
            "needs a port, as http://proxy.example:3128 (got 'http://u:***@proxy')",
        ),
        ("http://proxy:0", "needs a port"),
        ("http://proxy:99999", "not a valid proxy URL"),
        ("http://proxy:31x", "not a valid proxy URL"),
        ("http://:3128", "has no host"),
        ("http://pro xy:3128", "the host must be an IP address or a host name"),
        ("http://proxy:3128/path", "nothing after"),
        ("http://proxy:3128?x=1", "nothing after"),
    ],
)
def test_proxy_urls_that_do_not_parse(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_proxy_url(text)
    assert problem in str(caught.value)
    assert "pw" not in str(caught.value)


def test_host_port_without_a_scheme_is_http_in_the_environment() -> None:
    assert parse_proxy_url("proxy:3128", scheme_optional=True) == ProxyURL("proxy", 3128)


_SECRET = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=",
    min_size=6,
    max_size=30,
)


@given(
    user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
    secret=_SECRET,
    port=st.integers(0, 70000),
)
def test_the_password_never_shows(user: str, secret: str, port: int) -> None:
    """Whether it parses or not, nothing this module says contains the password."""
    password = "PW" + secret  # upper case: cannot occur in the user name or the host
    text = f"http://{user}:{password}@proxy.example:{port}"
    try:
        proxy = parse_proxy_url(text)
    except ValueError as exc:
        assert "PW" not in str(exc)  # not even a part of the password
        return
    assert (proxy.username, proxy.password) == (user, password)
    assert "PW" not in f"{proxy} {proxy!r}"
    assert str(proxy) == f"http://{user}:***@proxy.example:{port}"
    assert proxy.authorization == b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@given(
    user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
    secret=st.text(alphabet="ab12@/:#?%[] ", min_size=1, max_size=12),
    port=st.sampled_from(["3128", "", "x", "0"]),
    scheme_optional=st.booleans(),
)
def test_the_password_never_shows_even_unencoded(
    user: str, secret: str, port: str, scheme_optional: bool
) -> None:
    """A password with an unencoded @, /, # or : confuses URL parsing: still nothing leaks."""
    password = "PW" + secret
    text = f"{'' if scheme_optional else 'http://'}{user}:{password}@proxy.example:{port}"
    try:
        proxy = parse_proxy_url(text, scheme_optional=scheme_optional)
    except ValueError as exc:
        assert "PW" not in str(exc)  # not even a part of the password
        return
    assert "PW" not in f"{proxy} {proxy!r}"


# --- which proxy applies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "scheme", "environ", "expected"),
    [
        # The key wins over the environment, and NO_PROXY does not apply to it.
        ("http://p:1", "wss", {"HTTPS_PROXY": "http://q:2", "NO_PROXY": "*"}, "http://p:1"),
        ("", "wss", {"HTTPS_PROXY": "http://q:2"}, None),
        (None, "wss", {"HTTPS_PROXY": "http://q:2"}, "http://q:2"),
        (None, "wss", {"HTTPS_PROXY": "http://q:2", "https_proxy": "http://r:3"}, "http://r:3"),
        (None, "wss", {"https_proxy": "", "HTTPS_PROXY": "http://q:2"}, "http://q:2"),
        (None, "wss", {"HTTP_PROXY": "http://q:2"}, None),  # ws's variable is not wss's
        (None, "ws", {"http_proxy": "q:2"}, "http://q:2"),
        (None, "ws", {"HTTPS_PROXY": "http://q:2"}, None),
        (None, "ws", {"HTTP_PROXY": "http://q:2", "no_proxy": "server.example"}, None),
        (None, "ws", {"HTTP_PROXY": "http://q:2", "NO_PROXY": "other.example"}, "http://q:2"),
        (None, "ws", {}, None),
    ],
)
def test_choose_proxy(
    setting: str | None, scheme: str, environ: dict[str, str], expected: str | None
) -> None:
    choice = choose_proxy(setting, scheme, "server.example", 443, environ)
    assert (None if choice.proxy is None else str(choice.proxy)) == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "localhost", "a.localhost"])
def test_the_environment_never_proxies_loopback(host: str) -> None:
    environ = {"HTTPS_PROXY": "http://q:2", "HTTP_PROXY": "http://q:2"}
    assert choose_proxy(None, "wss", host, 443, environ).proxy is None
    assert choose_proxy(None, "ws", host, 80, environ).proxy is None
    assert choose_proxy("http://p:1", "ws", host, 80, environ).proxy == ProxyURL("p", 1)


def test_an_unusable_environment_proxy_names_the_variable() -> None:
    with pytest.raises(ProxyError, match=r"^environment variable https_proxy: .*https://"):
        choose_proxy(None, "wss", "h", 443, {"https_proxy": "https://u:pw@p:443"})
    with pytest.raises(ProxyError, match="HTTP_PROXY: needs a port") as caught:
        choose_proxy(None, "ws", "h", 80, {"HTTP_PROXY": "http://u:pw@p"})
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "expected"),
    [
        ("*", "anything.example", 443, True),
        ("example.com", "example.com", 443, True),
        ("example.com", "api.Example.COM", 443, True),
        (".example.com", "api.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "api.example.com", 443, True),
        ("example.com", "notexample.com", 443, False),
        ("example.com.", "api.example.com.", 443, True),
        (" other.example , example.com ", "example.com", 443, True),
        ("other.example example.com", "example.com", 443, True),
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("10.1.2.3", "10.1.2.3", 443, True),
        ("10.1.2.3", "host.example", 443, False),  # names are not resolved, as with curl
        ("fd00::/8", "fd12::1", 443, True),
        ("::1", "::1", 443, True),
        ("[::1]:443", "::1", 443, True),
        ("[::1]:443", "::1", 80, False),
        ("10.0.0.0/8", "fd12::1", 443, False),
        ("", "example.com", 443, False),
        (",,", "example.com", 443, False),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, expected: bool) -> None:
    assert bypasses(no_proxy, host, port) is expected


# --- the CONNECT exchange ---------------------------------------------------------------------


def _verdict(proxy: ProxyURL, pieces: list[bytes]) -> tuple[str, object]:
    exchange = ConnectExchange(proxy, "server.example", 443)
    try:
        for index, piece in enumerate(pieces):
            if exchange.receive_data(piece):
                # What the exchange kept, then what the stream would read next: nothing lost.
                return "open", exchange.leftover + b"".join(pieces[index + 1 :])
    except ProxyError as exc:
        return "refused", (exc.status_code, exc.status_line)
    return "waiting", None


def test_the_request_names_the_target_and_the_credentials() -> None:
    exchange = ConnectExchange(ProxyURL("p", 1, "user", "pass word"), "::1", 8443)
    assert exchange.request == (
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n"
        b"Proxy-Authorization: Basic " + base64.b64encode(b"user:pass word") + b"\r\n\r\n"
    )
    assert b"Proxy-Authorization" not in ConnectExchange(ProxyURL("p", 1), "h", 1).request


_HEAD = b"HTTP/1.1 200 Connection established\r\nConnection: close\r\n\r\n"
_ANSWERS = [
    ([_HEAD], ("open", b"")),
    ([_HEAD + b"\x16\x03early"], ("open", b"\x16\x03early")),
    ([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n"], ("open", b"")),
    (
        [
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="x"\r\n\r\n'
        ],
        ("refused", (407, "HTTP/1.1 407 Proxy Authentication Required")),
    ),
    (
        [b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!"],
        ("refused", (403, "HTTP/1.1 403 Forbidden")),
    ),
    ([b"HTTP/1.1 502 Bad\x07 Gateway\r\n\r\n"], ("refused", (502, "HTTP/1.1 502 Bad? Gateway"))),
    ([b"HTTP/1.1 200 OK\r\n"], ("waiting", None)),
    ([b"HTTP/1.1 200 OK\r\n", b""], ("refused", (None, None))),
    ([b""], ("refused", (None, None))),
    ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], ("refused", (None, None))),
    (
        [b"HTTP/1.1 200 OK\r\n" + b"X-Filler: y\r\n" * (MAX_HEAD_BYTES // 13)],
        ("refused", (None, None)),
    ),
    ([b"HTTP/1.1 100 Continue\r\n\r\n" * 20], ("refused", (None, None))),
]


@pytest.mark.parametrize(("pieces", "expected"), _ANSWERS)
def test_answers(pieces: list[bytes], expected: tuple[str, object]) -> None:
    assert _verdict(ProxyURL("p", 1), pieces) == expected


@given(answer=st.sampled_from(_ANSWERS), cuts=st.lists(st.integers(0, 20000), max_size=8))
def test_answers_split_anywhere_give_the_same_verdict(
    answer: tuple[list[bytes], tuple[str, object]], cuts: list[int]
) -> None:
    """h11's rule: the verdict does not depend on how the bytes arrive."""
    pieces, expected = answer
    data, closed = b"".join(pieces), pieces[-1] == b""
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    split = [data[a:b] for a, b in itertools.pairwise(edges)]
    assert _verdict(ProxyURL("p", 1), split + ([b""] if closed else [])) == expected


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", b"garbage\r\n\r\n", b""],
)
def test_errors_never_show_the_password(answer: bytes) -> None:
    exchange = ConnectExchange(ProxyURL("p", 1, "user", PASSWORD), "h", 1)
    with pytest.raises(ProxyError) as caught:
        exchange.receive_data(answer)
    assert PASSWORD not in str(caught.value)
    assert str(caught.value).startswith("the proxy ")


# --- config -----------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


_CLIENT_TOML = """\
role = "client"
client_id = 1
[websocket]
url = "wss://server.example:443/"
proxy = {proxy}
"""


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = _write(tmp_path, "client.toml", _CLIENT_TOML.format(proxy=f'"https://u:{PASSWORD}@p:1"'))
    with pytest.raises(tt.ConfigError) as caught:
        tt.load_config(bad)
    assert str(caught.value).startswith(f"{bad}: websocket.proxy: https:// proxies")
    assert PASSWORD not in str(caught.value)
    no_port = _write(tmp_path, "c2.toml", _CLIENT_TOML.format(proxy=f'"http://u:{PASSWORD}@p"'))
    with pytest.raises(tt.ConfigError, match=r"c2\.toml: websocket\.proxy: needs a port") as c2:
        tt.load_config(no_port)
    assert PASSWORD not in str(c2.value)
    server = _write(
        tmp_path,
        "server.toml",
        'role = "server"\n[websocket]\nurl = "ws://0.0.0.0:8080/"\nproxy = "http://p:1"\n',
    )
    with pytest.raises(
        tt.ConfigError, match=r"server\.toml: websocket\.proxy: only used by a client"
    ):
        tt.load_config(server)


def test_check_shows_the_proxy_without_the_password(tmp_path: Path) -> None:
    config = tt.load_config(
        _write(tmp_path, "c.toml", _CLIENT_TOML.format(proxy=f'"http://u:{PASSWORD}@p:3128"'))
    )
    assert PASSWORD not in repr(config)
    text = tt.describe_config(config, {})
    assert "proxy: http://u:***@p:3128 (from websocket.proxy)" in text
    assert PASSWORD not in text
    absent = attrs.evolve(config, websocket=attrs.evolve(config.websocket, proxy=None))
    environ = {"HTTPS_PROXY": f"http://v:{PASSWORD}@q:8080"}
    assert "proxy: from the environment: HTTPS_PROXY" in tt.describe_config(absent)
    shown = tt.describe_config(absent, environ)
    assert "http://v:***@q:8080 (from HTTPS_PROXY)" in shown
    assert PASSWORD not in shown
    bypassed = tt.describe_config(absent, {**environ, "NO_PROXY": ".example"})
    assert "none (NO_PROXY matches server.example)" in bypassed


def test_check_prints_the_proxy_the_environment_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_tunnel._cli import main

    path = _write(
        tmp_path,
        "c.toml",
        'role = "client"\nclient_id = 1\n[websocket]\nurl = "ws://tunnel.example:8080/"\n',
    )
    for name in ("http_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://bob:{PASSWORD}@proxy.example:3128")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "proxy: by this shell's environment" in out
    assert "http://bob:***@proxy.example:3128 (from HTTP_PROXY)" in out
    monkeypatch.setenv("NO_PROXY", "tunnel.example")
    assert main(["check", str(path)]) == 0
    assert "none (NO_PROXY matches tunnel.example)" in capsys.readouterr().out
    assert PASSWORD not in out


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_answer_opens_waits_or_is_a_proxy_error(data: bytes, cuts: list[int]) -> None:
    """h11's fuzz rule for the exchange: nothing but ProxyError ever escapes."""
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(edges)] + [b""]
    assert _verdict(ProxyURL("p", 1), pieces)[0] in ("open", "refused")
    prefixed = b"HTTP/1.1 200 OK\r\n\r\n" + data
    assert _verdict(ProxyURL("p", 1), [prefixed]) == ("open", data)


# --- through proxies in this process ---------------------------------------------------------


async def _read_head(tcp: trio.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        data = await tcp.receive_some(4096)
        if not data:
            break
        head += data
    return head


async def test_bytes_after_the_answer_are_kept(nursery: trio.Nursery) -> None:
    heads: list[bytes] = []

    async def proxy(tcp: trio.SocketStream) -> None:
        heads.append(await _read_head(tcp))
        await tcp.send_all(b"HTTP/1.1 200 Connection established\r\n\r\nearly")
        while data := await tcp.receive_some(4096):
            await tcp.send_all(data)

    port = await start_service(nursery, proxy)
    with trio.fail_after(10):
        stream = await open_tunnel(ProxyURL(LOCALHOST, port, "u", "p w"), "target.example", 9)
        async with stream:
            assert isinstance(stream, PrefixedStream)
            assert await stream.receive_some(2) == b"ea"
            assert await stream.receive_some() == b"rly"
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
    assert heads == [
        b"CONNECT target.example:9 HTTP/1.1\r\nHost: target.example:9\r\n"
        b"Proxy-Authorization: Basic " + base64.b64encode(b"u:p w") + b"\r\n\r\n"
    ]


async def test_an_unreachable_proxy_is_a_proxy_error() -> None:
    port = closed_port()
    with (
        trio.fail_after(10),
        pytest.raises(ProxyError, match=r"^cannot reach the proxy: "),
    ):
        await open_tunnel(ProxyURL(LOCALHOST, port), "h", 1)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_a_proxy_that_never_answers_is_bounded_by_the_handshake_timeout(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    accepted = 0

    async def silent(tcp: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await trio.sleep_forever()

    port = await start_service(nursery, silent)
    config = client_config(
        1, closed_port(), handshake_timeout_secs=0.3, proxy=f"http://{LOCALHOST}:{port}", **FAST
    )
    with trio.fail_after(15):
        async with tt.open_client(config) as client:
            while accepted < 3:  # each attempt ended at the time-out, and was retried
                await trio.sleep(0.05)
            assert not client.connected
    failures = _warnings(caplog, "cannot connect")
    assert len(failures) == 1, failures
    assert f"via proxy http://{LOCALHOST}:{port}: handshake timed out" in failures[0]


class Relay:
    """A minimal CONNECT proxy that carries every target to 127.0.0.1 on the target's port,
    so a client can be given a server *name* that nothing needs to resolve."""

    def __init__(self) -> None:
        self.targets: list[bytes] = []

    async def handle(self, tcp: trio.SocketStream) -> None:
        head = await _read_head(tcp)
        target = head.split(b" ")[1]
        self.targets.append(target)
        async with await trio.open_tcp_stream(LOCALHOST, int(target.rsplit(b":", 1)[1])) as up:
            await tcp.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
            async with trio.open_nursery() as pumps:

                async def pump(a: trio.SocketStream, b: trio.SocketStream) -> None:
                    with contextlib.suppress(trio.BrokenResourceError):  # reset as a rig stops
                        while data := await a.receive_some(65536):
                            await b.send_all(data)
                    pumps.cancel_scope.cancel()

                pumps.start_soon(pump, tcp, up)
                pumps.start_soon(pump, up, tcp)


def _clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _named_client(server_port: int, echo: int, **websocket: Any) -> tt.Config:
    config = client_config(1, server_port, connect={"up": echo}, **websocket)
    url = f"ws://tunnel.test:{server_port}/"  # .test is reserved: it never resolves
    return attrs.evolve(config, websocket=attrs.evolve(config.websocket, url=url))


async def _first_failure(caplog: pytest.LogCaptureFixture) -> str:
    while not (failures := _warnings(caplog, "cannot connect")):
        await trio.sleep(0.05)
    return failures[0]


async def test_an_environment_proxy_is_used_unless_no_proxy_or_loopback(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay()
    echo = await start_service(nursery, echo_handler)
    _clean_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{await start_service(nursery, relay.handle)}")
    with trio.fail_after(20):
        async with open_rig(server_config(listen={"up": 0})) as rig:
            port = rig.server.websocket_port
            # A name only the proxy resolves: reached through HTTP_PROXY.
            await start_client(rig, _named_client(port, echo, **FAST))
            await _echo_through(rig)
            assert relay.targets == [f"tunnel.test:{port}".encode()]
            await rig.stop_client(1)
            # A loopback server is always reached directly.
            await start_client(rig, client_config(1, port, connect={"up": echo}))
            await _echo_through(rig)
            assert len(relay.targets) == 1
            await rig.stop_client(1)
            # NO_PROXY: the client goes directly, and fails to resolve the name itself.
            monkeypatch.setenv("NO_PROXY", "other.example, .test")
            caplog.clear()
            async with tt.open_client(_named_client(port, echo, handshake_timeout_secs=1)):
                failure = await _first_failure(caplog)
            assert failure.startswith(f"client 1: cannot connect to ws://tunnel.test:{port}/: ")
            assert len(relay.targets) == 1


async def test_an_empty_proxy_setting_ignores_the_environment(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay()
    _clean_proxy_environment(monkeypatch)
    monkeypatch.setenv(
        "http_proxy", f"http://127.0.0.1:{await start_service(nursery, relay.handle)}"
    )
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with tt.open_client(
            _named_client(free_port(), echo, proxy="", handshake_timeout_secs=1)
        ):
            failure = await _first_failure(caplog)
    assert "via proxy" not in failure
    assert relay.targets == []


async def _echo_through(rig: Rig, tunnel: str = "up") -> None:
    async with await trio.open_tcp_stream(LOCALHOST, rig.server_port(tunnel)) as tcp:
        await tcp.send_all(b"through the proxy")
        await tcp.send_eof()
        assert await read_to_end(tcp) == (b"through the proxy", "eof")


# --- through pproxy ---------------------------------------------------------------------------


@attrs.frozen
class PProxy:
    port: int
    log: Path
    auth: str | None

    def url(self, password: str | None = None) -> str:
        if self.auth is None:
            return f"http://{LOCALHOST}:{self.port}"
        user, _, right = self.auth.partition(":")
        return f"http://{user}:{password or right}@{LOCALHOST}:{self.port}"

    def lines(self, text: str) -> int:
        return self.log.read_text(encoding="utf-8", errors="replace").count(text)


def _start_pproxy(tmp_path: Path, auth: str | None) -> Iterator[PProxy]:
    port = free_port()
    log = tmp_path / f"pproxy-{port}.log"
    listen = f"http://{LOCALHOST}:{port}" + (f"#{auth}" if auth else "")
    with log.open("wb") as out:
        # --auth=-1: pproxy otherwise lets an address that authenticated once in without
        # credentials for 30 days, which would hide a wrong password.
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "pproxy", "-l", listen, "-v", "--auth=-1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        proxy = PProxy(port, log, auth)
        deadline = time.monotonic() + 15
        while not proxy.lines("Serving on"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pproxy did not start: {log.read_text()}")
            time.sleep(0.05)
        yield proxy
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def pproxy(tmp_path: Path) -> Iterator[PProxy]:
    yield from _start_pproxy(tmp_path, None)


@pytest.fixture
def pproxy_auth(tmp_path: Path) -> Iterator[PProxy]:
    yield from _start_pproxy(tmp_path, f"alice:{PASSWORD}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(CA file, server bundle for 127.0.0.1)."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert(LOCALHOST)
    ca_path, bundle = d / "ca.pem", d / "server.pem"
    ca_path.write_bytes(ca.cert_pem.bytes())
    bundle.write_bytes(
        cert.private_key_pem.bytes() + b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    )
    return ca_path, bundle


@needs_pproxy
async def test_ws_through_pproxy(nursery: trio.Nursery, pproxy: PProxy) -> None:
    echo = await start_service(nursery, echo_handler)
    client = client_config(1, 0, connect={"up": echo}, proxy=pproxy.url())
    with trio.fail_after(20):
        async with open_rig(server_config(listen={"up": 0}), [client]) as rig:
            await _echo_through(rig)
            assert pproxy.lines(f"-> {LOCALHOST}:{rig.server.websocket_port}") == 1


@needs_pproxy
async def test_wss_through_pproxy_with_basic_auth(
    nursery: trio.Nursery, pproxy_auth: PProxy, pki: tuple[Path, Path]
) -> None:
    ca, bundle = pki
    echo = await start_service(nursery, echo_handler)
    server = tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(url="wss://127.0.0.1:0/", tls_bundle=str(bundle)),
        listen=(tt.Listen(tunnel="up", port=0),),
    )
    client = tt.Config(
        role="client",
        client_id=1,
        websocket=tt.WebSocketSettings(
            url="wss://127.0.0.1:1/", trusted_ca=str(ca), proxy=pproxy_auth.url()
        ),
        connect=(tt.Connect(tunnel="up", host=LOCALHOST, port=echo),),
    )
    with trio.fail_after(20):
        async with open_rig(server, [client]) as rig:
            await _echo_through(rig)
            assert pproxy_auth.lines(f"-> {LOCALHOST}:{rig.server.websocket_port}") == 1
            assert pproxy_auth.lines("Unauthorized") == 0


@needs_pproxy
async def test_a_wrong_password_is_logged_once_and_retried(
    nursery: trio.Nursery, pproxy_auth: PProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = client_config(1, closed_port(), proxy=pproxy_auth.url("wrong-password"), **FAST)
    with trio.fail_after(20):
        async with tt.open_client(config) as client:
            while pproxy_auth.lines("Unauthorized") < 3:  # refused, and tried again
                await trio.sleep(0.05)
            assert not client.connected
    failures = _warnings(caplog, "cannot connect")
    assert len(failures) == 1, failures
    assert "refused CONNECT 127.0.0.1:" in failures[0]
    assert failures[0].endswith(
        ": HTTP/1.1 407 Proxy Authentication Required (retrying with backoff up to 0.2s;"
        " logged again only if the error changes)"
    )
    assert f"via proxy http://alice:***@127.0.0.1:{pproxy_auth.port}" in failures[0]
    assert "wrong-password" not in caplog.text
    assert PASSWORD not in caplog.text


@needs_pproxy
async def test_a_proxy_that_cannot_reach_the_server_is_reported(
    pproxy: PProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # pproxy closes without an answer when the server's port refuses it.
    config = client_config(1, closed_port(), proxy=pproxy.url(), **FAST)
    with trio.fail_after(20):
        async with tt.open_client(config):
            while pproxy.lines("Connect call failed") < 2:
                await trio.sleep(0.05)
    failures = _warnings(caplog, "cannot connect")
    assert len(failures) == 1, failures
    assert "closed the connection without answering CONNECT 127.0.0.1:" in failures[0]
