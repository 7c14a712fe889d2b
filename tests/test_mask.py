"""The fast masker must stay wired into wsproto and agree with RFC 6455 masking."""

from __future__ import annotations

import os

import pytest
import wsproto.frame_protocol as fp
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from trio_tunnel import _mask, _ws


def _reference_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    return bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(data))


def test_fast_masker_is_installed_in_wsproto() -> None:
    # If this fails, wsproto stopped looking up XorMaskerSimple as a module global (or the
    # websockets speedups vanished): every masked byte is then XORed in pure Python again.
    assert _ws.FAST_MASKING
    assert vars(fp)["XorMaskerSimple"] is _mask.FastXorMasker


@given(st.lists(st.binary(max_size=300), max_size=6), st.binary(min_size=4, max_size=4))
def test_fast_masker_matches_rfc_6455_across_calls(chunks: list[bytes], key: bytes) -> None:
    masker = _mask.FastXorMasker(key)
    offset = 0
    for chunk in chunks:
        assert masker.process(chunk) == _reference_mask(chunk, key, offset)
        offset += len(chunk)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 65535, 65536, 300_001])
def test_masked_frames_round_trip_through_wsproto(size: int) -> None:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    request = next(server.events())
    assert isinstance(request, Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    payload = os.urandom(size)
    wire = client.send(BytesMessage(data=payload))
    assert payload[:64] not in wire or size < 8  # masked on the wire
    received = b""
    for index in range(0, len(wire), 7919):  # in odd pieces, so frames split mid-payload
        server.receive_data(wire[index : index + 7919])
        for event in server.events():
            assert isinstance(event, BytesMessage)
            received += event.data
    assert received == payload
