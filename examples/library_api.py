"""Scripted tunnels with the library API: a server, one client, an echo service, one stream.

Run it with ``python examples/library_api.py``; everything binds 127.0.0.1 on free ports.
"""

from __future__ import annotations

from functools import partial

import trio

import trio_tunnel


async def echo(tcp: trio.SocketStream) -> None:
    async with tcp:
        while data := await tcp.receive_some(65536):
            await tcp.send_all(data)
        await tcp.send_eof()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        echo_port = listeners[0].socket.getsockname()[1]

        server_config = trio_tunnel.Config(
            role="server",
            websocket=trio_tunnel.WebSocketSettings(url="ws://127.0.0.1:0/"),
            listen=(trio_tunnel.Listen(tunnel="echo", port=0),),
        )
        async with trio_tunnel.open_server(server_config) as server:
            client_config = trio_tunnel.Config(
                role="client",
                client_id=1,
                websocket=trio_tunnel.WebSocketSettings(
                    url=f"ws://127.0.0.1:{server.websocket_port}/"
                ),
                connect=(trio_tunnel.Connect(tunnel="echo", host="127.0.0.1", port=echo_port),),
            )
            async with trio_tunnel.open_client(client_config) as client:
                with trio.fail_after(10):
                    await client.wait_for("active")
                    port = server.listen_ports["echo"]
                    async with await trio.open_tcp_stream("127.0.0.1", port) as tcp:
                        await tcp.send_all(b"hello through the tunnel")
                        await tcp.send_eof()
                        reply = b""
                        while data := await tcp.receive_some(1024):
                            reply += data
                print(
                    f"echoed: {reply.decode()}; server state: active client "
                    f"{server.state.active}, epoch {server.state.epoch}"
                )
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
