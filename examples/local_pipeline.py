"""A producer/consumer pipeline on local qchan channels, with select.

A producer feeds numbers into a rendezvous channel; three workers square them and send results
on a buffered channel; a collector selects between results and a ticker, printing progress,
until the workers are done. Run it with ``make demo`` or ``python examples/local_pipeline.py``.
"""

from __future__ import annotations

import anyio

import qchan

JOBS = 2_000
WORKERS = 3


async def producer(jobs: qchan.SendChannel[int]) -> None:
    for n in range(JOBS):
        await jobs.send(n)
    jobs.close()  # workers' `async for` loops end once the channel drains


async def worker(
    name: int, jobs: qchan.ReceiveChannel[int], results: qchan.SendChannel[tuple[int, int, int]]
) -> None:
    async for n in jobs:
        await results.send((name, n, n * n))


async def ticker(ticks: qchan.SendChannel[None], every: float) -> None:
    while True:
        await anyio.sleep(every)
        await ticks.send(None)


async def main() -> None:
    jobs = qchan.Channel[int]()  # rendezvous: a job goes to a free worker
    results = qchan.Channel[tuple[int, int, int]](64)
    ticks = qchan.Channel[None]()
    per_worker = [0] * WORKERS
    total = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(producer, jobs.sender())
        async with anyio.create_task_group() as workers:
            for name in range(WORKERS):
                workers.start_soon(worker, name, jobs.receiver(), results.sender())
            tg.start_soon(ticker, ticks.sender(), 0.01)
            received = 0
            while received < JOBS:
                index, value, _ = await qchan.select(qchan.recv(results), qchan.recv(ticks))
                if index == 0:
                    name, n, square = value
                    assert square == n * n
                    per_worker[name] += 1
                    total += square
                    received += 1
                else:
                    print(f"\rprogress: {received}/{JOBS}", end="", flush=True)
        tg.cancel_scope.cancel()  # stop the ticker
    print(f"\rprogress: {JOBS}/{JOBS}")
    print(f"sum of squares 0..{JOBS - 1} = {total}  (expected {sum(n * n for n in range(JOBS))})")
    for name, count in enumerate(per_worker):
        print(f"worker {name}: {count} jobs")


if __name__ == "__main__":
    anyio.run(main)
