"""The client of the worker-pool example: a node that runs a WorkerPool and hands it jobs.

    python -m examples.cluster.worker_pool.client --cluster-key ck

It starts a node of its own (finding the cluster by mDNS, or through ``--peer``), hosts the
registry channel ``qchan.workers`` through :class:`qchan.cluster.WorkerPool`, waits for the
workers to register, counts the primes below N by sending blocks of integers to whichever
worker is free, with a progress bar, and prints a summary: jobs per second, each node's share
of the jobs, retries and failures, and the total checked against the known value of pi(N).
``examples/cluster/demo.py`` uses :func:`count_on_cluster` and :func:`summary` too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import anyio

import qchan
from examples.cluster.worker_pool.jobs import KNOWN_COUNTS, blocks
from qchan.cluster import PoolStatistics, WorkerPool

__all__ = ["Outcome", "Progress", "count_on_cluster", "main", "summary"]


@dataclass(frozen=True)
class Outcome:
    """What a run of jobs came to."""

    limit: int
    jobs: int
    primes: int
    seconds: float
    stats: PoolStatistics

    @property
    def correct(self) -> bool | None:
        expected = KNOWN_COUNTS.get(self.limit)
        return None if expected is None else self.primes == expected


class Progress:
    """A progress bar redrawn in place on a terminal; a few plain lines otherwise."""

    def __init__(self, total: int, out: TextIO, width: int = 32) -> None:
        self.total = total
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self.start = time.perf_counter()
        self.last_line = -1

    def draw(self, done: int, stats: PoolStatistics) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if self.tty:
            filled = self.width * done // max(self.total, 1)
            bar = "#" * filled + "." * (self.width - filled)
            nodes = " ".join(f"{node}:{n}" for node, n in sorted(stats.per_node().items()))
            line = f"\r[{bar}] {done:>6}/{self.total}  {done / elapsed:7.0f} jobs/s  {nodes}"
            self.out.write(line[: 1 + 110] + "\033[K")
            self.out.flush()
            return
        quarter = 4 * done // max(self.total, 1)
        if quarter > self.last_line:  # 0%, 25%, 50%, 75%, 100%
            self.last_line = quarter
            self.out.write(f"progress: {done}/{self.total} jobs, {done / elapsed:.0f} jobs/s\n")
            self.out.flush()

    def finish(self, done: int, stats: PoolStatistics) -> None:
        self.draw(done, stats)
        if self.tty:
            self.out.write("\n")
            self.out.flush()


async def count_on_cluster(
    pool: WorkerPool, limit: int, block: int, out: TextIO = sys.stdout
) -> Outcome:
    """Count the primes below ``limit`` on the pool's workers, drawing progress on ``out``."""
    jobs = blocks(limit, block)
    progress = Progress(len(jobs), out)
    done = primes = 0
    start = time.perf_counter()
    async with anyio.create_task_group() as tasks:

        async def redraw() -> None:
            while True:
                progress.draw(done, pool.statistics())
                await anyio.sleep(0.1)

        tasks.start_soon(redraw)
        async with pool.map(jobs) as results:  # results come back in job order
            async for count in results:
                primes += count
                done += 1
        tasks.cancel_scope.cancel()
    seconds = time.perf_counter() - start
    progress.finish(done, pool.statistics())
    return Outcome(limit, len(jobs), primes, seconds, pool.statistics())


def summary(outcome: Outcome) -> str:
    """The summary table: throughput, each node's share, retries and failures, the check."""
    stats = outcome.stats
    per_node = stats.per_node()
    slots: dict[str, int] = {}
    for worker in stats.per_worker:
        slots[worker.node] = slots.get(worker.node, 0) + worker.slots
    done = max(sum(per_node.values()), 1)
    name_width = max([len("node"), *map(len, per_node)])
    lines = [f"{'node':<{name_width}}  {'slots':>5}  {'jobs':>6}  {'share':>6}"]
    lines.append("-" * len(lines[0]))
    for node, count in sorted(per_node.items()):
        bar = "#" * round(20 * count / done)
        share = f"{100 * count / done:5.1f}%"
        lines.append(f"{node:<{name_width}}  {slots[node]:>5}  {count:>6}  {share:>6}  {bar}")
    lines.append("-" * len(lines[0]))
    rate = outcome.jobs / outcome.seconds if outcome.seconds else 0.0
    lines.append(
        f"{outcome.jobs} jobs in {outcome.seconds:.2f} s: {rate:.0f} jobs/s on "
        f"{len(per_node)} nodes; retries {stats.retries}, failures {stats.failed}, "
        f"workers lost {stats.workers_lost}"
    )
    expected = KNOWN_COUNTS.get(outcome.limit)
    check = ""
    if expected is not None:
        check = f" (expected {expected}: {'OK' if outcome.correct else 'WRONG'})"
    lines.append(f"primes below {outcome.limit:,}: {outcome.primes}{check}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.cluster.worker_pool.client",
        description="Count primes on the workers of a qchan cluster.",
    )
    parser.add_argument("--cluster-key", default=os.environ.get("QCHAN_CLUSTER_KEY"))
    parser.add_argument("--name", default="client", help="this node's name (default: client)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="default: 127.0.0.1:0")
    parser.add_argument("--peer", action="append", default=[], help="a node to dial")
    parser.add_argument("--no-discovery", action="store_true", help="do not use mDNS")
    parser.add_argument("--workers", type=int, default=2, help="wait for this many workers")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for them")
    parser.add_argument("--limit", type=int, default=2_000_000, help="count primes below this")
    parser.add_argument("--block", type=int, default=1_000, help="integers per job")
    return parser


async def _main(args: argparse.Namespace) -> int:
    cluster_key = qchan.ClusterKey.load(args.cluster_key)
    async with qchan.Node(
        cluster_key=cluster_key,
        name=args.name,
        listen=args.listen,
        peers=args.peer,
        discovery=not args.no_discovery,
    ) as node:
        async with WorkerPool(node) as pool:
            print(f"waiting for {args.workers} workers...", flush=True)
            with anyio.move_on_after(args.wait) as waiting:
                await pool.wait_for_workers(args.workers)
            if waiting.cancelled_caught:
                found = pool.statistics().workers
                print(f"only {found} of {args.workers} workers registered within {args.wait} s")
                if not found:
                    return 1
            outcome = await count_on_cluster(pool, args.limit, args.block)
    print(summary(outcome))
    return 0 if outcome.correct is not False else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.cluster_key:
        print("--cluster-key FILE (or QCHAN_CLUSTER_KEY) is required", file=sys.stderr)
        return 2
    try:
        return anyio.run(_main, args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
