"""The floor of a hop: a trio TCP relay that copies bytes both ways and reads nothing.

    python bench/relay.py UPSTREAM_HOST:PORT

Listens on 127.0.0.1 (port 0), prints `http://127.0.0.1:PORT` on stdout
once it listens, and for each client connection opens one to the upstream
and copies bytes each way as they come (`receive_some` / `send_all`, one
task per direction). No HTTP parsing, no credential, no engine: what the
gateway adds to a request above this relay is its own work; what the relay
adds above a direct connection is the hop (one more process to wake, two
more loopback writes) that any proxy pays.
"""

from __future__ import annotations

import sys

import trio

RECV_SIZE = 65536


async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(RECV_SIZE):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await sink.aclose()


async def main(host: str, port: int) -> None:
    async def handle(client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(host, port)
        except OSError:
            await client.aclose()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        sys.exit("usage: python bench/relay.py UPSTREAM_HOST:PORT")
    up_host, _, up_port = sys.argv[1].rpartition(":")
    trio.run(main, up_host, int(up_port))
