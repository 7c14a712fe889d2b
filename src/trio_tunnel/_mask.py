"""Fast WebSocket masking: wsproto's framing with a C XOR from ``websockets.speedups``.

Every client-to-server WebSocket frame is masked (RFC 6455 5.3). wsproto's pure-Python
masker runs at 0.2-0.5 GB/s and was the largest single cost of a masked transfer; the C
``apply_mask`` of the websockets package runs at tens of GB/s. wsproto looks its masker class
up as a module global each time it frames or parses, so replacing that one name is enough.
``tests/test_mask.py`` fails if wsproto stops working that way.
"""

from __future__ import annotations

import logging

import wsproto.frame_protocol

log = logging.getLogger("trio_tunnel.websocket")

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a platform without the compiled speedups
    apply_mask = None  # type: ignore[assignment]


class FastXorMasker:
    """Drop-in for ``wsproto.frame_protocol.XorMaskerSimple``: same key rotation across calls."""

    __slots__ = ("_key",)

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._key = bytes(masking_key)

    def process(self, data: bytes | bytearray) -> bytes:
        if not data:
            return b""
        assert apply_mask is not None
        key = self._key
        masked: bytes = apply_mask(data, key)
        rotation = len(data) % 4
        if rotation:
            self._key = key[rotation:] + key[:rotation]
        return masked


def install() -> bool:
    """Use the fast masker in wsproto; False (and wsproto's own masker) if it cannot."""
    if apply_mask is None:
        log.warning(
            "websockets.speedups is not available: WebSocket masking runs in pure Python (slow)"
        )
        return False
    if not hasattr(wsproto.frame_protocol, "XorMaskerSimple"):  # pragma: no cover
        log.warning("wsproto changed: cannot install the fast WebSocket masker")
        return False
    wsproto.frame_protocol.XorMaskerSimple = FastXorMasker  # type: ignore[misc, assignment]
    return True


FAST_MASKING = install()
