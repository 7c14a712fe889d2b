"""Accept loops that hand each TCP connection straight to its owner.

``trio.serve_listeners`` closes a connection when its handler returns; a tunnel hands the
connection over to a session that outlives the handler, so we accept ourselves. The hand-off
is synchronous: no checkpoint between ``accept`` and the new owner taking the connection.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import NoReturn

import trio

log = logging.getLogger("trio_tunnel.listen")

# Out of descriptors or memory: keep the listener, pause, and try again.
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_PAUSE_SECS = 0.1


async def serve_accepts(
    listeners: list[trio.SocketListener], on_accept: Callable[[trio.SocketStream], None]
) -> NoReturn:
    """Accept on every listener until cancelled; the listeners are closed on exit."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, on_accept)
    raise AssertionError("unreachable")


async def _accept_loop(
    listener: trio.SocketListener, on_accept: Callable[[trio.SocketStream], None]
) -> None:
    logged = False
    async with listener:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    raise
                if not logged:
                    log.error(
                        "accept on %s failed: %s; pausing new connections until it recovers",
                        listener.socket.getsockname(),
                        exc,
                    )
                    logged = True
                await trio.sleep(_PAUSE_SECS)
                continue
            if logged:
                log.warning("accept on %s recovered", listener.socket.getsockname())
                logged = False
            on_accept(tcp)
