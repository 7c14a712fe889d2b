"""A client whose certificate the server refuses says why at once (issue 12, item 8).

The server's handshake timeout is long (60 s) and every test is bounded far below it, so a
client that only noticed at the timeout ("handshake timed out") fails the test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import pytest
import trio
import trustme

import trio_tunnel as tt

from .helpers import open_rig

LONG_HANDSHAKE = 60.0


@attrs.frozen
class Pki:
    ca: Path
    server: Path
    client1: Path
    client2: Path
    client_other_ca: Path
    pins_client1: Path


def _write(path: Path, *blobs: trustme.Blob) -> Path:
    path.write_bytes(b"".join(blob.bytes() for blob in blobs))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()

    def bundle(name: str, cert: trustme.LeafCert) -> Path:
        return _write(d / name, cert.private_key_pem, *cert.cert_chain_pems)

    client1 = ca.issue_cert("client-1.example")
    return Pki(
        ca=_write(d / "ca.pem", ca.cert_pem),
        server=bundle("server.pem", ca.issue_cert("127.0.0.1")),
        client1=bundle("client1.pem", client1),
        client2=bundle("client2.pem", ca.issue_cert("client-2.example")),
        client_other_ca=bundle("client-x.pem", other.issue_cert("client-1.example")),
        pins_client1=_write(d / "pins.pem", client1.cert_chain_pems[0]),
    )


def _server(pki: Pki, *, pinned: bool) -> tt.Config:
    return tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(
            url="wss://127.0.0.1:0/",
            tls_bundle=str(pki.server),
            mutual_tls=True,
            trusted_ca=str(pki.ca),
            trusted_peers=str(pki.pins_client1) if pinned else None,
            handshake_timeout_secs=LONG_HANDSHAKE,
        ),
    )


def _client(port: int, pki: Pki, bundle: Path | None) -> tt.Config:
    return tt.Config(
        role="client",
        client_id=1,
        websocket=tt.WebSocketSettings(
            url=f"wss://127.0.0.1:{port}/",
            trusted_ca=str(pki.ca),
            mutual_tls=bundle is not None,
            tls_bundle=str(bundle) if bundle is not None else None,
            handshake_timeout_secs=LONG_HANDSHAKE,
        ),
    )


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_tunnel.client" and "cannot connect" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("other_ca", "the server refused this client's TLS certificate: unknown CA"),
        ("no_certificate", "the server refused this client's TLS certificate: no certificate"),
        ("not_pinned", "did not accept this client's certificate (not among the server's"),
    ],
)
async def test_refused_client_certificate_is_named_at_once(
    case: str, expected: str, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_tunnel")
    bundle = {"other_ca": pki.client_other_ca, "no_certificate": None, "not_pinned": pki.client2}
    with trio.fail_after(20):
        async with open_rig(_server(pki, pinned=case == "not_pinned")) as rig:
            config = _client(rig.server.websocket_port, pki, bundle[case])
            async with tt.open_client(config) as client:
                # Far below the 60 s handshake timeout: the cause must be known at once.
                with trio.fail_after(5):
                    while not _failures(caplog):
                        await trio.sleep(0.01)
                assert not client.connected
            assert rig.server.state.clients == {}
    failures = _failures(caplog)
    assert expected in failures[0], failures
    assert "timed out" not in failures[0]


async def test_good_certificate_still_connects(pki: Pki) -> None:
    with trio.fail_after(20):
        async with open_rig(_server(pki, pinned=True)) as rig:
            config = _client(rig.server.websocket_port, pki, pki.client1)
            async with tt.open_client(config) as client:
                with trio.fail_after(10):
                    await client.wait_for("connected")
                assert rig.server.state.connected == (1,)
