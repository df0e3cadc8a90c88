"""A fault-injecting TCP proxy, between some node pairs of the chaos harness.

Run as ``python -m tests.chaos.proxy CONFIG_JSON`` with ``{"routes": [[listen_host,
listen_port, target_host, target_port], ...]}``. It prints ``ready`` once every route listens,
then obeys one command per line on its stdin and exits when stdin closes:

    delay SECONDS   hold every chunk this long before forwarding it (0: no delay)
    stall           stop forwarding (nothing is read: TCP holds the senders), until...
    resume          ... forwarding starts again, where it stopped
    reset           every connection is closed with a TCP reset (SO_LINGER 0), both sides

Each command is answered with ``ok <command>`` on stdout.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

import anyio
import anyio.abc

__all__ = ["Proxy", "main"]


class _Connection:
    def __init__(self, client: anyio.abc.SocketStream, upstream: anyio.abc.SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.scope = anyio.CancelScope()
        # Per direction (towards the upstream, towards the client): set while bytes flow.
        self.flowing = {True: anyio.Event(), False: anyio.Event()}
        for event in self.flowing.values():
            event.set()

    def reset(self) -> None:
        for stream in (self.client, self.upstream):
            try:
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.scope.cancel()


class Proxy:
    """Routes ``(listen_host, listen_port, target_host, target_port)``; port 0: any free one.

    Used in-process too (tests): ``async with anyio.create_task_group() as tg:
    await proxy.start(tg)``, then :meth:`stall`, :meth:`resume`, :meth:`reset`, ``delay``,
    and :meth:`freeze` (the connections open now only, one direction or both).
    """

    def __init__(self, routes: list[tuple[str, int, str, int]]) -> None:
        self.routes = routes
        self.delay = 0.0
        self.running = anyio.Event()
        self.running.set()
        self.connections: set[_Connection] = set()
        self.resets = 0
        self.addresses: list[str] = []

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        for listen_host, listen_port, host, port in self.routes:
            listener = await anyio.create_tcp_listener(
                local_host=listen_host, local_port=listen_port
            )
            bound = listener.extra(anyio.abc.SocketAttribute.local_port)
            self.addresses.append(f"{listen_host}:{bound}")
            tg.start_soon(self._accept, listener, host, port)

    async def serve(self) -> None:
        async with anyio.create_task_group() as tg:
            await self.start(tg)
            print("ready", flush=True)
            await self._commands()
            tg.cancel_scope.cancel()

    def stall(self) -> None:
        if self.running.is_set():
            self.running = anyio.Event()

    def resume(self) -> None:
        self.running.set()

    def freeze(self, *, upstream: bool = True, downstream: bool = True) -> None:
        """Stop forwarding on the connections open now, towards the upstream and/or towards
        the client, for good (their ends stay open: an EOF is not passed on either); new
        connections are not affected."""
        for connection in self.connections:
            for towards_upstream, frozen in ((True, upstream), (False, downstream)):
                if frozen:
                    connection.flowing[towards_upstream] = anyio.Event()

    def reset(self) -> None:
        for connection in list(self.connections):
            connection.reset()
            self.resets += 1

    async def _accept(
        self, listener: anyio.abc.Listener[anyio.abc.SocketStream], host: str, port: int
    ) -> None:
        async def handle(client: anyio.abc.SocketStream) -> None:
            await self._relay(client, host, port)

        async with listener:
            await listener.serve(handle)

    async def _relay(self, client: anyio.abc.SocketStream, host: str, port: int) -> None:
        async with client:
            try:
                with anyio.fail_after(2):
                    upstream = await anyio.connect_tcp(host, port)
            except (OSError, TimeoutError):
                return
            async with upstream:
                connection = _Connection(client, upstream)
                self.connections.add(connection)
                try:
                    with connection.scope:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, connection, True, tg.cancel_scope)
                            tg.start_soon(self._pump, connection, False, tg.cancel_scope)
                finally:
                    self.connections.discard(connection)

    async def _pump(
        self, connection: _Connection, towards_upstream: bool, both: anyio.CancelScope
    ) -> None:
        source, sink = connection.client, connection.upstream
        if not towards_upstream:
            source, sink = sink, source
        try:
            async for chunk in source:
                await self.running.wait()
                if self.delay:
                    await anyio.sleep(self.delay)
                await self.running.wait()
                await connection.flowing[towards_upstream].wait()
                await sink.send(chunk)
            await connection.flowing[towards_upstream].wait()
            await sink.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            both.cancel()  # one side failed: close both (a half-open relay helps nobody)

    async def _commands(self) -> None:
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            words = line.split()
            if not words:
                continue
            command = words[0]
            if command == "delay":
                self.delay = float(words[1])
            elif command == "stall":
                self.stall()
            elif command == "resume":
                self.resume()
            elif command == "reset":
                self.reset()
            print(f"ok {line.strip()}", flush=True)


def main(argv: list[str]) -> None:
    config = json.loads(argv[0])
    routes = [(str(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in config["routes"]]
    anyio.run(Proxy(routes).serve)


if __name__ == "__main__":
    main(sys.argv[1:])
