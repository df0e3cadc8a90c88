"""Bounded memory: reply channels come and go without a trace, and a flooding peer is held off."""

from __future__ import annotations

import gc
from typing import Any

import anyio
import pytest

import qchan

pytestmark = pytest.mark.anyio


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def test_fresh_reply_channels_leave_memory_flat(anyio_backend: str) -> None:
    total = 100_000 if anyio_backend == "asyncio" else 30_000
    clients, servers = 16, 4
    cluster_key = qchan.ClusterKey.generate()
    async with qchan.Node(cluster_key=cluster_key, name="server") as a:
        async with qchan.Node(cluster_key=cluster_key, name="client", peers=[a.address]) as b:
            service: qchan.Channel[tuple[int, qchan.SendChannel[int]]] = qchan.Channel()
            a.register("double", service)
            remote = await b.lookup("double", timeout=5)

            async def server() -> None:
                async for request, reply in service:
                    await reply.send(request * 2)

            async def client(first: int, count: int) -> None:
                for request in range(first, first + count):
                    reply: qchan.Channel[int] = qchan.Channel()
                    await remote.send((request, reply.sender()))
                    assert await reply.receive() == request * 2

            async def round_trips(count: int) -> None:
                async with anyio.create_task_group() as tg:
                    for k in range(clients):
                        tg.start_soon(client, k * 10_000_000, count // clients)

            def settled_footprint() -> tuple[int, int, int]:
                gc.collect()
                endpoints = sum(len(p.endpoints) for p in b._peers.values())
                return _rss(), len(b.exports), endpoints

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for _ in range(servers):
                        tg.start_soon(server)
                    await round_trips(total // 10)  # warm up: caches, pools, buffers
                    await anyio.sleep(0.2)  # releases in flight land
                    rss_before, _, _ = settled_footprint()
                    await round_trips(total)
                    for _ in range(50):  # releases in flight land (bounded: 5 s)
                        await anyio.sleep(0.1)
                        rss_after, exported, endpoints = settled_footprint()
                        if exported < 100 and endpoints < 10:
                            break
                    tg.cancel_scope.cancel()
    grown = (rss_after - rss_before) / 2**20
    assert grown < 4, f"memory grew by {grown:.1f} MB over {total} round trips"
    assert exported < 100, f"{exported} reply channels are still exported"
    assert endpoints < 10, f"the server node still holds {endpoints} endpoints"


async def test_a_flooding_peer_is_held_off_not_buffered_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qchan import _session

    cap, flood, value_size = 50, 2000, 2048
    monkeypatch.setattr(_session, "MAX_OUTSTANDING", cap)
    cluster_key = qchan.ClusterKey.generate()
    async with qchan.Node(cluster_key=cluster_key, name="home") as a:
        async with qchan.Node(cluster_key=cluster_key, peers=[a.address]) as b:
            sink: qchan.Channel[Any] = qchan.Channel()  # nobody receives
            a.register("sink", sink)
            remote = await b.lookup("sink", timeout=5)
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(flood):
                        tg.start_soon(remote.send, (i, bytes(value_size)))
                    await anyio.sleep(0.5)
                    waiting = sink.statistics().waiting_senders
                    received = [(await sink.receive())[0] for _ in range(flood)]
    # The home stopped reading once `cap` operations were outstanding (it finishes the read
    # it is in: at most 256 KiB, about 128 of these sends): the rest waited in the client's
    # socket and buffers, not in the home's memory. And nothing was dropped.
    assert cap <= waiting <= cap + 256 * 1024 // value_size + 100, waiting
    assert sorted(received) == list(range(flood)), "backpressure must not drop values"
