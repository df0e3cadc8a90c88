"""Stage 1 of the pipeline example: a node that produces two streams.

    qchan node start --cluster-key ck --name producer --listen 127.0.0.1:0 \\
        --run examples.cluster.pipeline.producer:run

It registers two buffered channels, ``numbers`` (0, 1, 2, ...) and ``letters`` (a, b, ..., z,
a, ...), and keeps them full: each send waits while its buffer is full, so the producer runs
exactly as fast as the rest of the pipeline takes values (backpressure, across the network).
"""

from __future__ import annotations

import itertools
import string

import anyio

import qchan

__all__ = ["run"]


async def _numbers(channel: qchan.SendChannel[int]) -> None:
    for n in itertools.count():
        await channel.send(n)


async def _letters(channel: qchan.SendChannel[str]) -> None:
    for letter in itertools.cycle(string.ascii_lowercase):
        await channel.send(letter)
        await anyio.sleep(0.01)  # a slower stream than the numbers


async def run(node: qchan.Node) -> None:
    """``FUNCTION(node)`` for ``qchan node start --run``."""
    numbers: qchan.Channel[int] = qchan.Channel(8)
    letters: qchan.Channel[str] = qchan.Channel(8)
    node.register("numbers", numbers.receiver())  # others may only take from them
    node.register("letters", letters.receiver())
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_numbers, numbers.sender())
        tasks.start_soon(_letters, letters.sender())
