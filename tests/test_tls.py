"""TLS, mutual TLS, pinning and the shared token, with real certificates from trustme."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio
import trustme

import trio_tunnel as tt

from .helpers import LOCALHOST, Rig, echo_handler, open_rig, read_to_end, start_service


@attrs.frozen
class Pki:
    ca: Path
    other_ca: Path
    server: Path  # key + cert + chain, for 127.0.0.1
    server_other: Path  # another server certificate from the same CA
    server_wrong_name: Path  # valid chain, but for another host name
    client1: Path
    client2: Path
    client_other_ca: Path
    pins_client1: Path
    pins_server: Path


def _write(path: Path, *blobs: trustme.Blob) -> Path:
    path.write_bytes(b"".join(blob.bytes() for blob in blobs))
    return path


def _bundle(path: Path, cert: trustme.LeafCert) -> Path:
    return _write(path, cert.private_key_pem, *cert.cert_chain_pems)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client1 = ca.issue_cert("client-1.example")
    return Pki(
        ca=_write(d / "ca.pem", ca.cert_pem),
        other_ca=_write(d / "other-ca.pem", other.cert_pem),
        server=_bundle(d / "server.pem", server),
        server_other=_bundle(d / "server-other.pem", ca.issue_cert("127.0.0.1")),
        server_wrong_name=_bundle(d / "server-wrong.pem", ca.issue_cert("elsewhere.example")),
        client1=_bundle(d / "client1.pem", client1),
        client2=_bundle(d / "client2.pem", ca.issue_cert("client-2.example")),
        client_other_ca=_bundle(d / "client-x.pem", other.issue_cert("client-1.example")),
        pins_client1=_write(d / "pins-client1.pem", client1.cert_chain_pems[0]),
        pins_server=_write(d / "pins-server.pem", server.cert_chain_pems[0]),
    )


def _server(pki: Pki, listen_port: int = 0, **ws: object) -> tt.Config:
    settings: dict[str, object] = {"tls_bundle": str(pki.server), **ws}
    return tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(url="wss://127.0.0.1:0/", **settings),  # type: ignore[arg-type]
        listen=(tt.Listen(tunnel="down", port=listen_port),),
    )


def _client(client_id: int, echo: int, **ws: object) -> tt.Config:
    return tt.Config(
        role="client",
        client_id=client_id,
        websocket=tt.WebSocketSettings(url="wss://127.0.0.1:1/", **ws),  # type: ignore[arg-type]
        connect=(tt.Connect(tunnel="down", host=LOCALHOST, port=echo),),
        failover=tt.FailoverSettings(standby_socket_close_secs=0),
    )


async def _echo_through(rig: Rig) -> None:
    async with await trio.open_tcp_stream(LOCALHOST, rig.server_port("down")) as tcp:
        await tcp.send_all(b"secret")
        await tcp.send_eof()
        assert await read_to_end(tcp) == (b"secret", "eof")


async def _refused(rig: Rig, config: tt.Config) -> None:
    """``config`` must never get connected; the good client 1 keeps working meanwhile."""
    url = f"wss://127.0.0.1:{rig.server.websocket_port}/"
    config = attrs.evolve(config, websocket=attrs.evolve(config.websocket, url=url))
    async with tt.open_client(config) as stranger:
        with trio.move_on_after(1.5):
            await stranger.wait_for("connected")
        assert not stranger.connected
        assert rig.server.state.connected == (1,)
        await _echo_through(rig)


ConfigMaker = Callable[[], tt.Config]


async def test_wss_with_trusted_ca_carries_streams(nursery: trio.Nursery, pki: Pki) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with open_rig(_server(pki), [_client(1, echo, trusted_ca=str(pki.ca))]) as rig:
            await _echo_through(rig)


async def test_client_refuses_untrusted_ca_and_wrong_host_name(
    nursery: trio.Nursery, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    echo = await start_service(nursery, echo_handler)
    with trio.fail_after(20):
        async with open_rig(_server(pki), [_client(1, echo, trusted_ca=str(pki.ca))]) as rig:
            await _refused(rig, _client(2, echo, trusted_ca=str(pki.other_ca)))
            # No silent "don't verify" mode: the default (system CAs) refuses a private CA.
            await _refused(rig, _client(2, echo))
        assert "certificate rejected" in caplog.text
        async with open_rig(
            _server(pki, tls_bundle=str(pki.server_wrong_name)),
            [],
        ) as rig:
            url = f"wss://127.0.0.1:{rig.server.websocket_port}/"
            config = _client(1, echo, trusted_ca=str(pki.ca))
            config = attrs.evolve(config, websocket=attrs.evolve(config.websocket, url=url))
            async with tt.open_client(config) as client:
                with trio.move_on_after(1.5):
                    await client.wait_for("connected")
                assert not client.connected
        assert "match" in caplog.text  # "hostname mismatch" / "doesn't match"


async def test_mutual_tls_accepts_good_and_refuses_missing_or_foreign_certs(
    nursery: trio.Nursery, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    echo = await start_service(nursery, echo_handler)
    server = _server(pki, mutual_tls=True, trusted_ca=str(pki.ca))
    good = _client(1, echo, trusted_ca=str(pki.ca), mutual_tls=True, tls_bundle=str(pki.client1))
    with trio.fail_after(30):
        async with open_rig(server, [good]) as rig:
            await _echo_through(rig)
            await _refused(rig, _client(2, echo, trusted_ca=str(pki.ca)))  # no certificate
            await _refused(
                rig,
                _client(
                    2,
                    echo,
                    trusted_ca=str(pki.ca),
                    mutual_tls=True,
                    tls_bundle=str(pki.client_other_ca),
                ),
            )
    assert "refused 127.0.0.1" in caplog.text


async def test_server_pins_client_certificates(nursery: trio.Nursery, pki: Pki) -> None:
    echo = await start_service(nursery, echo_handler)
    server = _server(
        pki, mutual_tls=True, trusted_ca=str(pki.ca), trusted_peers=str(pki.pins_client1)
    )
    good = _client(1, echo, trusted_ca=str(pki.ca), mutual_tls=True, tls_bundle=str(pki.client1))
    not_pinned = _client(
        2, echo, trusted_ca=str(pki.ca), mutual_tls=True, tls_bundle=str(pki.client2)
    )
    with trio.fail_after(30):
        async with open_rig(server, [good]) as rig:
            await _echo_through(rig)
            await _refused(rig, not_pinned)


async def test_client_pinning_refuses_another_server_certificate(
    nursery: trio.Nursery, pki: Pki
) -> None:
    echo = await start_service(nursery, echo_handler)
    pinned = _client(1, echo, trusted_ca=str(pki.ca), trusted_peers=str(pki.pins_server))
    with trio.fail_after(30):
        async with open_rig(_server(pki), [pinned]) as rig:
            await _echo_through(rig)
        async with open_rig(_server(pki, tls_bundle=str(pki.server_other))) as rig:
            url = f"wss://127.0.0.1:{rig.server.websocket_port}/"
            config = attrs.evolve(pinned, websocket=attrs.evolve(pinned.websocket, url=url))
            async with tt.open_client(config) as client:
                with trio.move_on_after(1.5):
                    await client.wait_for("connected")
                assert not client.connected
                assert rig.server.state.clients == {}


async def test_shared_token(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    echo = await start_service(nursery, echo_handler)
    right = tmp_path / "token"
    right.write_text("0123456789abcdef-right\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("0123456789abcdef-wrong\n")
    server = tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(url="ws://127.0.0.1:0/", auth_token_file=str(right)),
        listen=(tt.Listen(tunnel="down", port=0),),
    )

    def client(client_id: int, token: Path | None) -> tt.Config:
        ws = tt.WebSocketSettings(
            url="ws://127.0.0.1:1/", auth_token_file=str(token) if token else None
        )
        return tt.Config(
            role="client",
            client_id=client_id,
            websocket=ws,
            connect=(tt.Connect(tunnel="down", host=LOCALHOST, port=echo),),
        )

    with trio.fail_after(30):
        async with open_rig(server, [client(1, right)]) as rig:
            await _echo_through(rig)
            for bad in (client(2, wrong), client(2, None)):
                url = f"ws://127.0.0.1:{rig.server.websocket_port}/"
                bad = attrs.evolve(bad, websocket=attrs.evolve(bad.websocket, url=url))
                async with tt.open_client(bad) as stranger:
                    with trio.move_on_after(1.5):
                        await stranger.wait_for("connected")
                    assert not stranger.connected
                await _echo_through(rig)
    assert "wrong auth token" in caplog.text
    assert "no auth token" in caplog.text
    assert "rejected with HTTP 403" in caplog.text
    assert "rejected with HTTP 401" in caplog.text


def test_tls_config_errors_name_the_key(pki: Pki, tmp_path: Path) -> None:
    def problem(**ws: object) -> str:
        role = str(ws.pop("role", "server"))
        client_id = 1 if role == "client" else None
        url = str(ws.pop("url", "wss://127.0.0.1:9000/"))
        with pytest.raises(tt.ConfigError) as info:
            ws_settings = tt.WebSocketSettings(url=url, **ws)  # type: ignore[arg-type]
            tt.load_environment(tt.Config(role=role, client_id=client_id, websocket=ws_settings))
        return str(info.value)

    assert "websocket.tls_bundle: required" in problem()
    assert "tls_bundle: cannot read" in problem(tls_bundle=str(tmp_path / "missing.pem"))
    mismatched = tmp_path / "mismatch.pem"
    mismatched.write_bytes(
        pki.client1.read_bytes().split(b"-----BEGIN CERTIFICATE")[0]
        + b"-----BEGIN CERTIFICATE"
        + pki.server.read_bytes().split(b"-----BEGIN CERTIFICATE")[1]
    )
    assert "websocket.tls_bundle:" in problem(tls_bundle=str(mismatched))
    assert "websocket.trusted_ca: required with mutual_tls" in problem(
        tls_bundle=str(pki.server), mutual_tls=True
    )
    assert "websocket.tls_bundle: required with mutual_tls" in problem(
        role="client", mutual_tls=True
    )
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    assert "websocket.trusted_ca: " in problem(
        tls_bundle=str(pki.server), mutual_tls=True, trusted_ca=str(not_pem)
    )
    assert "websocket.tls_bundle: only used with a wss:// url" in problem(
        url="ws://127.0.0.1:9000/", tls_bundle=str(pki.server)
    )
    short = tmp_path / "short"
    short.write_text("abc")
    assert "websocket.auth_token_file: the token must be at least" in problem(
        url="ws://127.0.0.1:9000/", auth_token_file=str(short)
    )


def test_config_file_paths_are_relative_to_the_file(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "server.pem").write_bytes(pki.server.read_bytes())
    config_file = tmp_path / "server.toml"
    config_file.write_text(
        'role = "server"\n[websocket]\nurl = "wss://127.0.0.1:9000/"\ntls_bundle = "server.pem"\n'
    )
    config = tt.load_config(config_file)
    assert config.websocket.tls_bundle == str(tmp_path / "server.pem")


async def test_example_certificates_with_real_processes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The README's certificate recipe works end to end: wss, mutual TLS and pinning."""
    import sys

    from .helpers import free_port
    from .procs import TunnelProcess, wait_port_open

    script = Path(__file__).parent.parent / "examples" / "make_test_certs.py"
    certs = tmp_path / "certs"
    with trio.fail_after(60):
        await trio.run_process([sys.executable, str(script), str(certs)], capture_stdout=True)
    echo = await start_service(nursery, echo_handler)
    ws, down = free_port(), free_port()
    server = TunnelProcess(
        "server",
        f'role = "server"\n[websocket]\nurl = "wss://127.0.0.1:{ws}/"\n'
        f'tls_bundle = "{certs}/server-bundle.pem"\nmutual_tls = true\n'
        f'trusted_ca = "{certs}/trusted-ca.pem"\ntrusted_peers = "{certs}/trusted-clients.pem"\n'
        f'[[listen]]\ntunnel = "down"\nport = {down}\n',
        tmp_path,
    )
    client = TunnelProcess(
        "client1",
        f'role = "client"\nclient_id = 1\n[websocket]\nurl = "wss://127.0.0.1:{ws}/"\n'
        f'trusted_ca = "{certs}/trusted-ca.pem"\nmutual_tls = true\n'
        f'tls_bundle = "{certs}/client1-bundle.pem"\n'
        f'trusted_peers = "{certs}/trusted-server.pem"\n'
        f'[[connect]]\ntunnel = "down"\nhost = "127.0.0.1"\nport = {echo}\n',
        tmp_path,
    )
    try:
        await server.wait_log(r"active client None -> 1")
        await wait_port_open(down)
        with trio.fail_after(10):
            async with await trio.open_tcp_stream(LOCALHOST, down) as tcp:
                await tcp.send_all(b"over wss")
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"over wss", "eof")
    finally:
        client.close()
        server.close()
