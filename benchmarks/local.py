"""Local channel handoffs per second: qchan against anyio's memory object streams.

One producer task sends N values, one consumer task receives them, for capacity 0 and 64, on
asyncio, uvloop and trio. qchan and anyio run alternately in the same process, several rounds,
and the best round of each is compared, so machine noise hits both alike. A second table
compares ``select`` over two channels with a plain receive.

    .venv/bin/python benchmarks/local.py [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

import qchan

Runner = Callable[[int, int], Awaitable[None]]


async def qchan_handoffs(count: int, capacity: int) -> None:
    channel: qchan.Channel[int] = qchan.Channel(capacity)

    async def producer() -> None:
        for i in range(count):
            await channel.send(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        receive = channel.receive
        for _ in range(count):
            await receive()


async def anyio_handoffs(count: int, capacity: int) -> None:
    send, receive_stream = anyio.create_memory_object_stream[int](capacity)

    async def producer() -> None:
        for i in range(count):
            await send.send(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        receive = receive_stream.receive
        for _ in range(count):
            await receive()
    send.close()
    receive_stream.close()


async def qchan_select_two(count: int, capacity: int) -> None:
    busy: qchan.Channel[int] = qchan.Channel(capacity)
    idle: qchan.Channel[int] = qchan.Channel(capacity)

    async def producer() -> None:
        for i in range(count):
            await busy.send(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        cases = (qchan.recv(busy), qchan.recv(idle))
        select = qchan.select
        for _ in range(count):
            await select(*cases)


async def _time(runner: Runner, count: int, capacity: int) -> float:
    start = time.perf_counter()
    await runner(count, capacity)
    return count / (time.perf_counter() - start)


def _best(backend: str, options: dict[str, Any], runner: Runner, count: int, cap: int) -> float:
    return anyio.run(_time, runner, count, cap, backend=backend, backend_options=options)


BACKENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("asyncio", "asyncio", {}),
    ("uvloop", "asyncio", {"use_uvloop": True}),
    ("trio", "trio", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="handoffs per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per row (best is kept)")
    args = parser.parse_args()

    print(f"handoffs/s, one producer and one consumer, best of {args.rounds} x {args.count}")
    print(f"{'backend':8} {'capacity':>8} {'qchan':>10} {'anyio':>10} {'ratio':>6}")
    for label, backend, options in BACKENDS:
        for capacity in (0, 64):
            ours = theirs = 0.0
            for _ in range(args.rounds):  # interleaved, so both see the same machine
                ours = max(ours, _best(backend, options, qchan_handoffs, args.count, capacity))
                theirs = max(theirs, _best(backend, options, anyio_handoffs, args.count, capacity))
            print(f"{label:8} {capacity:>8} {ours:>10,.0f} {theirs:>10,.0f} {ours / theirs:>6.2f}")

    print()
    print("select over 2 channels (one busy, one idle) against a plain receive, capacity 0")
    print(f"{'backend':8} {'select':>10} {'receive':>10} {'ratio':>6}")
    for label, backend, options in BACKENDS:
        selects = receives = 0.0
        for _ in range(args.rounds):
            selects = max(selects, _best(backend, options, qchan_select_two, args.count, 0))
            receives = max(receives, _best(backend, options, qchan_handoffs, args.count, 0))
        print(f"{label:8} {selects:>10,.0f} {receives:>10,.0f} {selects / receives:>6.2f}")


if __name__ == "__main__":
    main()
