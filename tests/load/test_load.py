"""Load, bounded for CI: many waiters, many channels, many nodes, many connections, and after
each, nothing left behind (file descriptors, tasks, traced memory, the nodes' tables).

Bigger figures, with the nodes in separate processes: ``benchmarks/load.py``.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import qchan
from qchan._channel import ChannelState

from ._helpers import footprint, make_node, rss, settled, tables, tables_back, wait_for

pytestmark = pytest.mark.anyio

#: Traced memory allowed to remain after a load has come and gone (dicts keep their grown
#: tables, allocators their pools): well under what one load costs.
MEMORY_SLACK = 256 * 1024
#: The same for the resident set size, which moves in pages and arenas.
RSS_SLACK = 4 * 2**20


@contextmanager
def tracing() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@asynccontextmanager
async def linked_pair(name_a: str, name_b: str) -> AsyncIterator[tuple[qchan.Node, qchan.Node]]:
    """Node ``a``, and node ``b`` dialling it, both up and linked."""
    cluster_key = qchan.ClusterKey.generate()
    async with make_node(cluster_key, name_a) as a:
        async with make_node(cluster_key, name_b, peers=[a.address]) as b:
            await wait_for(lambda: b.public_key in a._peers and a._peers[b.public_key].connected)
            yield a, b


def report(what: str, **figures: Any) -> None:
    print(f"\n[load] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def test_a_thousand_blocked_remote_senders_complete_and_leave_nothing(
    anyio_backend: str,
) -> None:
    senders = 1000
    with tracing():
        async with linked_pair("home", "senders") as (a, b):
            channel: qchan.Channel[int] = qchan.Channel(0)
            state = channel._endpoint
            assert isinstance(state, ChannelState)
            a.register("rendezvous", channel)
            remote = await b.lookup("rendezvous", timeout=10)
            async with anyio.create_task_group() as tg:  # warm up: one of everything
                tg.start_soon(remote.send, -1)
                assert await channel.receive() == -1
            await settled(lambda: not tables(a)["home_ops"] and not tables(b)["ops"])
            tables_a, tables_b, before = tables(a), tables(b), footprint()

            # Twice: the first load grows containers that keep their size (the event loop's
            # task set, dicts, deques); the second must then leave memory where the first did.
            for load in range(2):
                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for value in range(senders):
                        tg.start_soon(remote.send, value)
                    await wait_for(lambda: len(state.senders) == senders)
                    blocked = time.perf_counter() - started
                    assert tables(b)["ops"] == senders
                    assert tables(a)["home_ops"] == senders
                    assert tables(b)["parked"] == 0
                    while_blocked = footprint()
                    received = [await channel.receive() for _ in range(senders)]
                released = time.perf_counter() - started - blocked
                assert sorted(received) == list(range(senders))
                await tables_back((a, tables_a), (b, tables_b))
                after = footprint()
                assert after.grown(before)["fds"] == 0
                assert after.grown(before)["tasks"] == 0
                if load == 0:
                    first = after
            grown = after.memory - first.memory
            assert grown < MEMORY_SLACK, grown
    report(
        f"{senders} blocked remote senders ({anyio_backend})",
        blocked_in_s=round(blocked, 3),
        released_in_s=round(released, 3),
        bytes_per_blocked_sender=round((while_blocked.memory - first.memory) / senders),
        first_load_left=first.memory - before.memory,
        second_load_left=grown,
    )


async def test_ten_thousand_exported_channels_come_and_go(anyio_backend: str) -> None:
    hosted_count, per_message = 10_000, 100
    with tracing():
        async with linked_pair("host", "holder") as (a, b):
            # A rendezvous inbox: every send is confirmed (credited sends on a buffered one
            # would stay unconfirmed, and kept by the sender, until half a window is used).
            inbox: qchan.Channel[list[qchan.Channel[int]]] = qchan.Channel(0)
            b.register("inbox", inbox)
            remote_inbox = await a.lookup("inbox", timeout=10)
            held: list[Any] = []

            async def hand_over(channels: list[qchan.Channel[int]]) -> None:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(remote_inbox.send, channels)
                    held.append(await inbox.receive())

            await hand_over([qchan.Channel(0)])  # warm up: one channel, there and back
            held.clear()
            gc.collect()
            await settled(lambda: not tables(a)["exports"] and not tables(b)["endpoints"])
            tables_a, tables_b, before = tables(a), tables(b), footprint()

            # Three times: the first loads grow the tables' dicts and sets, which keep their
            # size; then a load must leave memory where the one before left it.
            left: list[int] = []
            for _ in range(3):
                hosted: list[qchan.Channel[int]] = [qchan.Channel(0) for _ in range(hosted_count)]
                created = footprint()
                started = time.perf_counter()
                for first in range(0, hosted_count, per_message):
                    await hand_over(hosted[first : first + per_message])
                await settled(lambda: tables(a)["grants"] == tables_a["grants"] + hosted_count)
                exported_in = time.perf_counter() - started
                exported = footprint()
                assert tables(a)["exports"] == hosted_count
                assert tables(b)["endpoints"] == hosted_count

                started = time.perf_counter()
                held.clear()
                gc.collect()  # the holder's handles go: it RELEASEs them all
                await settled(lambda: tables(a)["exports"] == tables_a["exports"], within=30)
                released_in = time.perf_counter() - started
                del hosted
                gc.collect()
                await tables_back((a, tables_a), (b, tables_b), within=30)
                after = footprint()
                assert after.grown(before)["fds"] == 0
                assert after.grown(before)["tasks"] == 0
                left.append(after.memory - before.memory)
            assert left[2] - left[1] < MEMORY_SLACK, left
    per_channel = (exported.memory - created.memory) / hosted_count
    assert per_channel < 8 * 1024, per_channel
    report(
        f"{hosted_count} hosted channels exported ({anyio_backend})",
        exported_in_s=round(exported_in, 3),
        released_in_s=round(released_in, 3),
        export_bytes_per_channel_both_nodes=round(per_channel),
        memory_left_after_each_load=left,
    )


async def test_twenty_fully_connected_nodes_talk_and_close_without_a_trace(
    anyio_backend: str,
) -> None:
    count, channels_each = 20, 2
    cluster_key = qchan.ClusterKey.generate()
    await anyio.lowlevel.checkpoint()
    before = footprint()
    received: dict[str, list[tuple[int, int]]] = {}
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        nodes: list[qchan.Node] = []
        for i in range(count):
            node = make_node(cluster_key, f"n{i}", peers=[n.address for n in nodes])
            nodes.append(await stack.enter_async_context(node))
        await wait_for(
            lambda: all(sum(p.connected for p in n.peers()) == count - 1 for n in nodes), 30
        )
        meshed = time.perf_counter() - started
        assert all(tables(n)["links"] == count - 1 for n in nodes)

        hosted: dict[str, qchan.Channel[tuple[int, int]]] = {}
        for i, node in enumerate(nodes):
            for j in range(channels_each):
                name = f"n{i}-c{j}"
                hosted[name] = qchan.Channel(0 if j == 0 else 8)  # a rendezvous, a buffer
                node.register(name, hosted[name])
                received[name] = []

        async def receive_all(name: str, expected: int) -> None:
            for _ in range(expected):
                received[name].append(await hosted[name].receive())

        async def talk(i: int) -> None:
            for j in range(count):
                if j != i:
                    target = await nodes[i].lookup(f"n{j}-c{i % channels_each}@n{j}", timeout=10)
                    await target.send((i, j))

        started = time.perf_counter()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for name in hosted:
                    i, j = (int(part[1:]) for part in name.split("-"))
                    tg.start_soon(
                        receive_all,
                        name,
                        sum(1 for k in range(count) if k != i and k % channels_each == j),
                    )
                for i in range(count):
                    tg.start_soon(talk, i)
        talked = time.perf_counter() - started
        for j in range(count):
            got = sorted(v for c in range(channels_each) for v in received[f"n{j}-c{c}"])
            assert got == [(i, j) for i in range(count) if i != j]
    await settled(lambda: footprint().fds <= before.fds)
    after = footprint()
    assert after.grown(before)["fds"] == 0, after.grown(before)
    assert after.grown(before)["tasks"] == 0, after.grown(before)
    report(
        f"{count} nodes, fully connected ({anyio_backend})",
        mesh_up_in_s=round(meshed, 3),
        pairs_talked_in_s=round(talked, 3),
        left_behind=after.grown(before),
    )


async def test_a_thousand_connections_come_and_go_between_two_nodes(anyio_backend: str) -> None:
    cycles = 1000
    cluster_key = qchan.ClusterKey.generate()
    async with make_node(cluster_key, "server") as a:
        box: qchan.Channel[int] = qchan.Channel(1)
        a.register("box", box)
        async with make_node(cluster_key, "client") as b:
            await b.connect(a.address)
            remote = await b.lookup("box@server", timeout=10)
            a_peer = a._peers[b.public_key]
            b_peer = b._peers[a.public_key]

            async def cycle(value: int) -> None:
                if not b_peer.connected:
                    await b.connect(a.address)
                await remote.send(value)  # a credited send, then a remote receive
                assert await remote.receive() == value
                session = b_peer.session
                assert session is not None
                session.link.close()
                await session.link.wait_closed()
                while a_peer.connected or b_peer.connected:  # noqa: ASYNC110 - set by callbacks
                    await anyio.sleep(0.0005)

            for value in range(50):  # warm up
                await cycle(value)
            await settled(lambda: not a_peer.connected and not b_peer.connected)
            # (no tracemalloc here: it would slow each handshake several times over)
            tables_a, tables_b, before, rss_before = tables(a), tables(b), footprint(), rss()
            started = time.perf_counter()
            for value in range(cycles):
                await cycle(value)
            elapsed = time.perf_counter() - started
            await tables_back((a, tables_a), (b, tables_b))
            after, rss_after = footprint(), rss()
            assert after.grown(before)["fds"] == 0
            assert after.grown(before)["tasks"] == 0
            assert rss_after - rss_before < RSS_SLACK, (rss_before, rss_after)
    report(
        f"{cycles} connection setups and teardowns ({anyio_backend})",
        setups_per_s=round(cycles / elapsed),
        rss_grown_kb=(rss_after - rss_before) // 1024,
        left_behind=after.grown(before),
    )
