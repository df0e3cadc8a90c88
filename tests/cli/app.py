"""``--run`` targets for the CLI tests (imported by ``qchan node start`` from this directory)."""

from __future__ import annotations

import math
from typing import Any

import anyio

import qchan

not_async = 42


def sync_function(node: qchan.Node) -> None:
    """A plain function: refused by --run."""


async def doubler(node: qchan.Node) -> None:
    """Answer requests: numbers sent to "numbers" come back doubled on "doubled"."""
    numbers: qchan.Channel[Any] = qchan.Channel()
    doubled: qchan.Channel[Any] = qchan.Channel(math.inf)
    node.register("numbers", numbers)
    node.register("doubled", doubled)
    async for number in numbers:
        await doubled.send(number * 2)


async def echo(node: qchan.Node) -> None:
    """Request/response with a reply channel: [reply, value] -> reply gets value."""
    requests: qchan.Channel[Any] = qchan.Channel()
    node.register("echo", requests)
    async with anyio.create_task_group() as tasks:
        async for reply, value in requests:
            tasks.start_soon(reply.send, value)


async def finite(node: qchan.Node) -> None:
    """A buffered channel of three values, then closed; and odd values JSON cannot hold."""
    countdown: qchan.Channel[int] = qchan.Channel(math.inf)
    for number in (3, 2, 1):
        countdown.send_nowait(number)
    countdown.close()
    node.register("countdown", countdown)
    odd: qchan.Channel[Any] = qchan.Channel(math.inf)
    for value in (b"\x00\xff", (1, 2), {1: "one"}, math.nan, {"tags": {"a"}}):
        odd.send_nowait(value)
    node.register("odd", odd)


async def boom(node: qchan.Node) -> None:
    """Raises after a moment: the node must stop, exit 1 and say why."""
    await anyio.sleep(0.2)
    raise ValueError("boom")


async def forever(node: qchan.Node) -> None:
    """Never returns (cancelled when another --run function fails)."""
    await anyio.sleep_forever()
