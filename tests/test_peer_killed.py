"""A node process is SIGKILLed (or frozen) while tasks elsewhere are blocked on its channels.

Every waiter must get PeerLost or DeliveryUncertain within the failure-detection bound, and a
tally over thousands of sends must show no silent loss and no duplicate: a send that returned
was received exactly once (on a rendezvous channel), a send that raised PeerLost was never
received, nothing was received twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import qchan

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[1]
HEARTBEAT, TIMEOUT = 0.2, 0.6  # failure detection for a silent (frozen) peer


@contextmanager
def factory_process(cluster_key: qchan.ClusterKey, backend: str) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.procs.channel_factory", bytes(cluster_key).hex(), backend],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        child.wait(timeout=10)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


async def _channels(node: qchan.Node, capacities: list[int]) -> AsyncIterator[qchan.Channel[Any]]:
    factory = await node.lookup("factory@factory-node", timeout=10)
    for capacity in capacities:
        reply: qchan.Channel[qchan.Channel[Any]] = qchan.Channel()
        await factory.send((capacity, reply))
        yield await reply.receive()


class Tally:
    def __init__(self) -> None:
        self.returned: set[int] = set()
        self.lost: set[int] = set()  # PeerLost: certainly not taken
        self.uncertain: set[int] = set()  # DeliveryUncertain
        self.received: list[int] = []
        self.receive_errors = 0
        self.finished_at: list[float] = []

    def check(self, capacity: int) -> None:
        counts = Counter(self.received)
        assert not [v for v, n in counts.items() if n > 1], "a value was received twice"
        received = set(counts)
        assert not (received & self.lost), "a send that raised PeerLost was received"
        missing = self.returned - received
        if capacity == 0:
            assert not missing, f"{len(missing)} returned rendezvous sends were never received"
        else:  # values in the home's buffer die with it; nothing else may go missing
            assert len(missing) <= capacity, f"{len(missing)} returned sends lost"


async def _traffic(
    channel: qchan.Channel[Any], tally: Tally, base: int, senders: int, receivers: int
) -> None:
    async def sender(first: int) -> None:
        value = first
        while True:
            try:
                await channel.send(value)
                tally.returned.add(value)
            except qchan.DeliveryUncertain:
                tally.uncertain.add(value)
                break
            except qchan.PeerLost:
                tally.lost.add(value)
                break
            value += senders
        tally.finished_at.append(time.monotonic())

    async def receiver() -> None:
        while True:
            try:
                tally.received.append(await channel.receive())
            except qchan.PeerLost:
                tally.receive_errors += 1
                break
        tally.finished_at.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        for i in range(senders):
            tg.start_soon(sender, base + i)
        for _ in range(receivers):
            tg.start_soon(receiver)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_waiters_fail_within_the_bound_and_nothing_is_lost_or_doubled(
    anyio_backend: str, how: str
) -> None:
    cluster_key = qchan.ClusterKey.generate()
    capacities = [0, 0, 16]
    with factory_process(cluster_key, anyio_backend) as child:
        assert child.stdout is not None
        with anyio.fail_after(20):
            address = (await anyio.to_thread.run_sync(child.stdout.readline)).strip()
        node = qchan.Node(
            cluster_key=cluster_key,
            peers=[address],
            heartbeat_interval=HEARTBEAT,
            peer_timeout=TIMEOUT,
        )
        async with node:
            channels = [c async for c in _channels(node, capacities)]
            tallies = [Tally() for _ in channels]
            killed_at = 0.0

            async def kill_after_traffic() -> None:
                nonlocal killed_at
                # Wait until every channel has carried real traffic, then strike. (Both
                # counts: a rendezvous value is received before its send returns, so the
                # sends that returned may trail the values received by those in flight.)
                with anyio.fail_after(20):
                    while min(min(len(t.received), len(t.returned)) for t in tallies) < 1500:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                os.kill(child.pid, getattr(signal, how))
                killed_at = time.monotonic()

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(kill_after_traffic)
                    for n, (channel, tally) in enumerate(zip(channels, tallies, strict=True)):
                        tg.start_soon(_traffic, channel, tally, n * 10_000_000, 8, 8)
    bound = TIMEOUT + 1.0 if how == "SIGSTOP" else 1.0
    for capacity, tally in zip(capacities, tallies, strict=True):
        latest = max(tally.finished_at) - killed_at
        assert latest < bound, f"a waiter took {latest:.2f} s to fail (bound {bound} s)"
        assert len(tally.returned) >= 1500
        assert tally.receive_errors == 8, "every blocked receiver must fail"
        assert len(tally.lost) + len(tally.uncertain) == 8, "every sender must fail once"
        tally.check(capacity)
