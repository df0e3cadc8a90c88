"""A node in its own process that makes channels on request (for cross-process tests).

Run as ``python -m tests.procs.channel_factory CLUSTER_KEY_HEX [BACKEND]``. It prints its
address on one line, then serves the channel ``factory``: send it ``(capacity, reply)`` and a
new channel of that capacity, hosted here, comes back on ``reply``. It runs until killed or
until its stdin closes (so it never outlives the test that started it).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

import qchan


async def serve(cluster_key: qchan.ClusterKey) -> None:
    factory: qchan.Channel[tuple[float, qchan.SendChannel[Any]]] = qchan.Channel()
    keep: list[qchan.Channel[Any]] = []  # the channels made live as long as this process
    async with qchan.Node(cluster_key=cluster_key, name="factory-node") as node:
        node.register("factory", factory)
        print(node.address, flush=True)
        async with anyio.create_task_group() as tg:

            async def stop_when_stdin_closes() -> None:
                await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_when_stdin_closes)
            async for capacity, reply in factory:
                channel: qchan.Channel[Any] = qchan.Channel(capacity)
                keep.append(channel)
                await reply.send(channel)


def main() -> None:
    cluster_key = qchan.ClusterKey.from_bytes(bytes.fromhex(sys.argv[1]))
    backend = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    anyio.run(serve, cluster_key, backend=backend)


if __name__ == "__main__":
    main()
