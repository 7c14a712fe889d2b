"""The one error tree every part of trio-tunnel raises from."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the codes live in the protocol core, which imports this module
    from ._protocol import ResetCode


class TunnelError(Exception):
    """Base of every error trio-tunnel raises on purpose."""


class ConfigError(TunnelError):
    """A configuration is invalid.

    The message names the file (when there is one) and the key path, e.g.
    ``server.toml: listen[1].port: expected an integer``.
    """


class ConfigLoadError(ConfigError):
    """A valid config names what this machine cannot provide now.

    A file missing, unreadable or holding the wrong thing, a host name that does not
    resolve: the config itself is fine, and retrying later may succeed (exit status 1, where
    a plain ConfigError exits 2). Raised by the load step, ``load_environment``.
    """


class ProtocolError(TunnelError):
    """The tunnel protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids: a bug or misuse on this side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.

    ``close_code`` is the WebSocket close code to answer with.
    """

    def __init__(self, message: str, *, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class SequenceError(ProtocolError):
    """A DATA or EOF frame arrived out of sequence (gap or duplicate): reset the stream."""


class WebSocketClosed(TunnelError):
    """The WebSocket under a session closed (a close frame either way, or the connection
    broke). ``code`` and ``reason`` are the close frame's, ``None`` when there was none.

    trio-websocket's own exceptions never pass the ``_ws`` boundary: they become this.
    """

    def __init__(self, code: int | None, reason: str | None) -> None:
        if code is None:
            text = "no close frame"
        else:
            text = f"code {code}" + (f": {reason}" if reason else "")
        super().__init__(text)
        self.code = code
        self.reason = reason


class HandshakeError(TunnelError):
    """The tunnel handshake failed: wrong version, role, client id or a timeout."""


class StreamReset(TunnelError):
    """A tunnel stream was reset. ``code`` is the :class:`~trio_tunnel.ResetCode` saying why,
    ``reason`` the text that came with it, ``remote`` whether the peer reset it.

    A stream used through the library API raises ``trio.BrokenResourceError`` with this as
    its ``__cause__``.
    """

    def __init__(self, code: ResetCode, reason: str, *, remote: bool) -> None:
        side = "by the peer" if remote else "here"
        super().__init__(f"stream reset {side}: {code.label}: {reason}")
        self.code = code
        self.reason = reason
        self.remote = remote
