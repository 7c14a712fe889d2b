"""Handshake and control messages: small JSON objects carried in HELLO, WELCOME and CONTROL."""

from __future__ import annotations

import json
from typing import Any

from .._errors import RemoteProtocolError

PROTOCOL_NAME = "trio-tunnel"
PROTOCOL_VERSION = 1


def encode_json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_json(payload: bytes | memoryview, what: str) -> dict[str, Any]:
    """A JSON object, or :class:`RemoteProtocolError` naming ``what`` was malformed."""
    try:
        value = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"malformed {what}: {exc}") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"malformed {what}: not a JSON object")
    return value
