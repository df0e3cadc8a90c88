"""Channel operations leave no reference cycles behind: what they allocate is freed at once.

A blocked call is an Operation and one waiter per case, which point at each other; if that
cycle outlived the call, every operation's objects would wait for Python's cyclic garbage
collector, which then runs every few hundred operations (it cost about 9% of a busy home
node's time). Here many operations of each kind run with the collector off, and then a
collection must find (next to) nothing.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

import qchan

pytestmark = pytest.mark.anyio

ROUNDS = 300


async def cyclic_garbage_of(work: Callable[[], Awaitable[None]]) -> int:
    """How many unreachable objects a collection finds after ``work`` ran (collector off)."""
    await work()  # warm up: caches, lazily made objects
    gc.collect()
    gc.disable()
    try:
        await work()
        return gc.collect()
    finally:
        gc.enable()


async def test_local_handoffs_and_selects_leave_no_cycles() -> None:
    a: qchan.Channel[int] = qchan.Channel(0)
    b: qchan.Channel[int] = qchan.Channel(4)

    async def consume() -> None:
        for _ in range(ROUNDS):
            await a.receive()
            await qchan.select(qchan.recv(a), qchan.recv(b))

    async def work() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for i in range(ROUNDS):
                await a.send(i)
                await qchan.select(qchan.send(a, i), qchan.send(b, i))

    # (the task group itself, and its task, are a few objects of their own)
    assert await cyclic_garbage_of(work) < 50


@pytest.fixture
async def remote_channel() -> AsyncIterator[tuple[qchan.Channel[int], qchan.Channel[int]]]:
    key = qchan.ClusterKey.generate()
    async with qchan.Node(cluster_key=key, name="home", listen="127.0.0.1:0") as home:
        channel: qchan.Channel[int] = qchan.Channel(0)
        home.register("c", channel)
        async with qchan.Node(cluster_key=key, name="user", peers=[home.address]) as user:
            yield channel, await user.lookup("c@home", timeout=10)


async def test_remote_sends_and_receives_leave_no_cycles(
    remote_channel: tuple[qchan.Channel[int], qchan.Channel[int]],
) -> None:
    local, remote = remote_channel

    async def work() -> None:
        async with anyio.create_task_group() as tg:

            async def receive_here() -> None:
                for _ in range(ROUNDS):
                    await local.receive()

            tg.start_soon(receive_here)
            for i in range(ROUNDS):
                await remote.send(i)  # rendezvous: a round trip each
        async with anyio.create_task_group() as tg:

            async def send_here() -> None:
                for i in range(ROUNDS):
                    await local.send(i)

            tg.start_soon(send_here)
            for _ in range(ROUNDS):
                await remote.receive()

    assert await cyclic_garbage_of(work) < 50
