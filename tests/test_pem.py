"""TLS bundles in any block order, and certificate files that also hold keys.

Real chains from trustme (root, intermediate, leaf); every permutation of the blocks is
ordered, loaded by the ssl module and, for one shuffled bundle on each side, used for a real
wss handshake (mutual TLS) over 127.0.0.1 with trio-websocket.
"""

from __future__ import annotations

import itertools
import ssl
from pathlib import Path

import attrs
import pytest
import trio
import trio_websocket
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import trio_tunnel as tt
from trio_tunnel import _pem, _tls

from .helpers import LOCALHOST, echo_handler, open_rig, read_to_end, start_service


@attrs.frozen
class Chain:
    root: bytes  # PEM of the self-signed root
    intermediate: bytes
    leaf: bytes
    key: bytes
    root_ca: trustme.CA

    def blocks(self) -> dict[str, bytes]:
        return {
            "root": self.root,
            "intermediate": self.intermediate,
            "leaf": self.leaf,
            "key": self.key,
        }

    def certificates(self) -> list[x509.Certificate]:
        return [
            x509.load_pem_x509_certificate(pem) for pem in (self.leaf, self.intermediate, self.root)
        ]


def make_chain(*names: str) -> Chain:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert(*names)
    leaf_pem, intermediate_pem = (blob.bytes() for blob in leaf.cert_chain_pems)
    return Chain(
        root.cert_pem.bytes(), intermediate_pem, leaf_pem, leaf.private_key_pem.bytes(), root
    )


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain("127.0.0.1")


ORDERS = list(itertools.permutations(("root", "intermediate", "leaf", "key")))


def line_of(data: bytes, part: bytes) -> int:
    """The 1-based line at which ``part`` starts in ``data``."""
    return data[: data.index(part)].count(b"\n") + 1


def test_every_order_gives_key_leaf_then_chain(chain: Chain, tmp_path: Path) -> None:
    assert len(ORDERS) == 24
    path = tmp_path / "bundle.pem"
    for order in ORDERS:
        data = b"".join(chain.blocks()[name] for name in order)
        bundle = _pem.order_bundle(data.decode())
        assert list(bundle.chain) == chain.certificates(), order
        assert bundle.key_pem.encode() == chain.key
        reordered = "certificates reordered as leaf, then its chain" in map(str, bundle.notes)
        certs_in_order = [name for name in order if name != "key"] == [
            "leaf",
            "intermediate",
            "root",
        ]
        assert reordered != certs_in_order, order
        assert bundle.pem().startswith(chain.key)
        # And the ssl module takes the file in every order.
        path.write_bytes(data)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        assert _tls.load_bundle_into(context, str(path)).leaf == bundle.leaf


def test_the_old_tools_recipe_loads(chain: Chain, tmp_path: Path) -> None:
    """``cat Root.crt CA.crt MyServerCert.{crt,key} > key-cert-ca-root-chain.pem``."""
    path = tmp_path / "key-cert-ca-root-chain.pem"
    path.write_bytes(chain.root + chain.intermediate + chain.leaf + chain.key)
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):  # what the stdlib alone does
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    bundle = _tls.load_bundle_into(context, str(path))
    assert bundle.leaf == chain.certificates()[0]
    assert _tls.check_bundle(str(path)) == ["certificates reordered as leaf, then its chain"]
    # The ordered copy was private and is gone: nothing of the key is left next to the file.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_without_memfd_a_private_temporary_file_is_used_and_removed(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no memfd (macOS, Windows), a mode-0600 file is used and removed."""
    import os
    import stat
    import tempfile

    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(chain.root + chain.leaf + chain.key + chain.intermediate)
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    modes: list[int] = []
    real_load = ssl.SSLContext.load_cert_chain

    def load_cert_chain(self: ssl.SSLContext, certfile: str, *args: object) -> None:
        modes.append(stat.S_IMODE(os.stat(certfile).st_mode))
        assert Path(certfile).parent == private
        real_load(self, certfile)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", load_cert_chain)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert _tls.load_bundle_into(context, str(bundle)).leaf == chain.certificates()[0]
    assert modes == [0o600]
    assert list(private.iterdir()) == []


def test_a_bundle_in_the_usual_order_has_no_notes(chain: Chain, tmp_path: Path) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(chain.key + chain.leaf + chain.intermediate)
    assert _tls.check_bundle(str(path)) == []
    assert len(_pem.load_bundle(str(path)).chain) == 2  # no root given: none is invented


def test_text_around_blocks_and_harmless_blocks_are_ignored(chain: Chain) -> None:
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    text = b"Bag Attributes\n  friendlyName: x\r\n" + chain.leaf.replace(b"\n", b"\r\n") + params
    bundle = _pem.order_bundle((text + b"subject=...\n" + chain.key + chain.intermediate).decode())
    assert list(bundle.chain) == chain.certificates()[:2]
    notes = [note for note in bundle.notes if "EC PARAMETERS" in str(note)]
    assert len(notes) == 1
    assert not notes[0].warning


def test_unrelated_certificates_are_left_out_with_a_note(chain: Chain) -> None:
    other = make_chain("elsewhere.example")
    text = (other.leaf + chain.intermediate + chain.key + other.root + chain.leaf).decode()
    bundle = _pem.order_bundle(text)
    assert list(bundle.chain) == chain.certificates()[:2]
    (note,) = [note for note in bundle.notes if "left out" in str(note)]
    assert note.warning
    assert str(note).startswith("2 certificate(s) not in the chain of")


def _same_name_other_key(cert_pem: bytes) -> bytes:
    """A self-signed CA certificate with ``cert_pem``'s subject but a key of its own."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    real = x509.load_pem_x509_certificate(cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    fake = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return fake.public_bytes(serialization.Encoding.PEM)


def test_a_same_named_ca_that_did_not_sign_is_not_a_link(chain: Chain) -> None:
    """Issuer links are checked by signature, not only by name."""
    fake = _same_name_other_key(chain.intermediate)
    bundle = _pem.order_bundle((chain.key + chain.leaf + fake + chain.intermediate).decode())
    assert list(bundle.chain) == chain.certificates()[:2]
    assert any("left out" in str(note) for note in bundle.notes)


def test_repeated_certificates_are_sent_once(chain: Chain) -> None:
    bundle = _pem.order_bundle((chain.key + chain.leaf + chain.leaf + chain.intermediate).decode())
    assert list(bundle.chain) == chain.certificates()[:2]


def _encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


def test_bundles_that_cannot_work_are_refused_with_the_reason(chain: Chain, tmp_path: Path) -> None:
    other = make_chain("elsewhere.example")

    def problem(data: bytes) -> str:
        path = tmp_path / "bundle.pem"
        path.write_bytes(data)
        with pytest.raises(ValueError) as info:
            _tls.check_bundle(str(path))
        message = str(info.value)
        assert message.startswith(f"{str(path)!r}: "), message
        return message.removeprefix(f"{str(path)!r}: ")

    assert problem(chain.leaf + chain.intermediate) == (
        "no private key in it (expected a PEM block '-----BEGIN PRIVATE KEY')"
    )
    assert problem(chain.key) == (
        "no certificate in it (expected the key's certificate and its chain)"
    )
    two_keys = chain.leaf + chain.key + other.key
    assert problem(two_keys) == (
        f"more than one private key (at lines {line_of(two_keys, chain.key)},"
        f" {line_of(two_keys, other.key)}); keep only this side's"
    )
    mismatch = problem(other.key + chain.leaf + chain.intermediate)
    assert mismatch.startswith("no certificate matches the private key (the certificates are for: ")
    assert "encrypted" in problem(chain.leaf + _encrypted(chain.key))
    bad_key = b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n"
    after_leaf = line_of(chain.leaf + bad_key, bad_key)
    assert problem(chain.leaf + bad_key) == (
        f"line {after_leaf}: PRIVATE KEY block is not valid base64"
    )
    after_key = chain.key.count(b"\n") + 1
    assert problem(chain.key + b"-----BEGIN CERTIFICATE-----\nAAAA\n") == (
        f"line {after_key}: CERTIFICATE block has no '-----END CERTIFICATE-----' line"
    )
    broken_cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert problem(chain.key + broken_cert).startswith(f"line {after_key}: malformed certificate")
    assert problem(b"").startswith("no private key")
    assert "cannot read it" in problem_missing(tmp_path)


def problem_missing(tmp_path: Path) -> str:
    with pytest.raises(ValueError) as info:
        _tls.check_bundle(str(tmp_path / "missing.pem"))
    return str(info.value)


def test_trusted_and_pinned_files_ignore_keys_with_a_note(
    chain: Chain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ca-with-key.pem"
    path.write_bytes(chain.key + chain.root + chain.intermediate)
    notes = _tls.check_trusted(str(path))
    assert len(notes) == 1
    assert notes[0].startswith("private key ignored (line 1): this file only needs certificates")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _tls.load_trusted_ca_into(context, str(path))
    assert len(context.get_ca_certs()) == 2
    pins = _tls.load_pins(str(path))
    assert len(pins) == 2
    assert "private key ignored" in caplog.text
    assert caplog.records[-1].levelname == "WARNING"
    key_only = tmp_path / "key-only.pem"
    key_only.write_bytes(chain.key)
    with pytest.raises(ValueError, match="no PEM certificate found"):
        _tls.check_trusted(str(key_only))


# --- a real handshake with shuffled bundles on both sides -------------------------------------


async def test_wss_handshake_with_shuffled_bundles(tmp_path: Path) -> None:
    """Mutual TLS: each side's bundle in the old tool's order (root, CA, cert, key), each side
    trusting only the other's root, so the intermediate must be sent, and sent in order."""
    server_chain = make_chain("127.0.0.1")
    client_chain = make_chain("client-1.example")
    files = {}
    for side, c in (("server", server_chain), ("client", client_chain)):
        files[side] = tmp_path / f"{side}.pem"
        files[side].write_bytes(c.root + c.intermediate + c.leaf + c.key)
        # The other side trusts this root from a file that also holds a key (ignored).
        files[f"{side}-root"] = tmp_path / f"{side}-root.pem"
        files[f"{side}-root"].write_bytes(c.key + c.root)
    server_context = _tls.server_context(
        tls_bundle=str(files["server"]),
        trusted_ca=str(files["client-root"]),
        trusted_peers=str(files["client"]),
        mutual_tls=True,
    )
    client_context = _tls.client_context(
        tls_bundle=str(files["client"]),
        trusted_ca=str(files["server-root"]),
        trusted_peers=str(files["server"]),
        mutual_tls=True,
    )
    seen: list[str | bytes] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        seen.append(await ws.get_message())
        await ws.send_message("pong")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, LOCALHOST, 0, server_context
            )
            async with trio_websocket.open_websocket(
                LOCALHOST, server.port, "/", use_ssl=client_context
            ) as ws:
                await ws.send_message("ping")
                assert await ws.get_message() == "pong"
            nursery.cancel_scope.cancel()
    assert seen == ["ping"]


# --- through the config and a real tunnel -----------------------------------------------------


async def test_a_tunnel_with_the_old_tools_bundles(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Server and client 1 with bundles in tcp-over-websocket's order, mutual TLS, pinning."""
    echo = await start_service(nursery, echo_handler)
    server_chain, client_chain = make_chain("127.0.0.1"), make_chain("client-1.example")
    for name, c in (("server", server_chain), ("client", client_chain)):
        (tmp_path / f"{name}.pem").write_bytes(c.root + c.intermediate + c.leaf + c.key)
        (tmp_path / f"{name}-root.pem").write_bytes(c.key + c.root)
    server = tt.Config(
        role="server",
        websocket=tt.WebSocketSettings(
            url="wss://127.0.0.1:0/",
            tls_bundle=str(tmp_path / "server.pem"),
            mutual_tls=True,
            trusted_ca=str(tmp_path / "client-root.pem"),
            trusted_peers=str(tmp_path / "client.pem"),
        ),
        listen=(tt.Listen(tunnel="down", port=0),),
    )
    client = tt.Config(
        role="client",
        client_id=1,
        websocket=tt.WebSocketSettings(
            url="wss://127.0.0.1:1/",
            tls_bundle=str(tmp_path / "client.pem"),
            mutual_tls=True,
            trusted_ca=str(tmp_path / "server-root.pem"),
            trusted_peers=str(tmp_path / "server.pem"),
        ),
        connect=(tt.Connect(tunnel="down", host=LOCALHOST, port=echo),),
    )
    with trio.fail_after(20):
        async with open_rig(server, [client]) as rig:
            tcp = await trio.open_tcp_stream(LOCALHOST, rig.server_port("down"))
            async with tcp:
                await tcp.send_all(b"over wss")
                await tcp.send_eof()
                assert await read_to_end(tcp) == (b"over wss", "eof")
