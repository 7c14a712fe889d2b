"""Limits that end cleanly: an accept loop survives a bug in handing one connection on."""

from __future__ import annotations

import logging

import pytest
import trio

from trio_tunnel._listen import serve_accepts

from .helpers import LOCALHOST, read_to_end


async def test_an_exception_handing_a_connection_on_never_ends_the_accept_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stream-id exhaustion of the hostile-networks table ended the accept loop with an
    exception; now the one connection is reset, the error logged, and accepting goes on."""
    accepted: list[trio.SocketStream] = []

    def on_accept(tcp: trio.SocketStream) -> None:
        if not accepted:
            accepted.append(tcp)
            raise ValueError("stream id out of range")  # a bug deeper down
        accepted.append(tcp)

    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_accepts, listeners, on_accept)
            try:
                first = await trio.open_tcp_stream(LOCALHOST, port)
                _, end = await read_to_end(first)
            except OSError:  # reset so fast that the connect itself saw it
                end = "reset"
            assert end == "reset"
            second = await trio.open_tcp_stream(LOCALHOST, port)
            while len(accepted) < 2:
                await trio.sleep(0.01)
            await second.aclose()
            nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
