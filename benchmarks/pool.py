"""Throughput of small jobs: a qchan WorkerPool over three local node processes, against
``concurrent.futures.ProcessPoolExecutor`` with as many processes (and Ray, if installed), in
the same run, on the same jobs.

    python benchmarks/pool.py [--jobs 20000] [--workers 3] [--slots 4] [--backend asyncio]

Two kinds of job: ``noop`` (return the argument: pure dispatch overhead) and ``primes`` (count
the primes in a block of 1,000 integers below 20,000,000: about 0.4 ms of CPU). The qchan side
is the real thing: every node is a process of its own, every link is encrypted, every job goes
to a worker through a rendezvous on the worker's job channel and comes back on a fresh reply
channel, and ``WorkerPool.map`` keeps the results in order with 64 jobs in flight. The
executor gets ``map(chunksize=1)`` (one job per message, like the pool) and
``map(chunksize=N)`` (batched, its best case); Ray gets ``ray.get([f.remote(job) ...])``. Each
is warmed up first, then timed over ``--jobs`` jobs; the table gives jobs per second and the
ratio to qchan.

Worker processes die with this one (stdin EOF, and PR_SET_PDEATHSIG on Linux); every wait is
bounded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

import qchan
from qchan.cluster import WorkerPool, serve_worker

WARMUP = 500
START_TIMEOUT = 30.0
RUN_TIMEOUT = 300.0


# --- the jobs ----------------------------------------------------------------------------------


def count_primes(block: Sequence[int]) -> int:
    """The number of primes in ``[lo, hi)`` (a segmented sieve)."""
    lo, hi = block
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    sieve = bytearray([1]) * (hi - lo)
    limit = math.isqrt(hi - 1)
    small = bytearray([1]) * (limit + 1)
    for p in range(2, limit + 1):
        if small[p]:
            small[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
            start = max(p * p, (lo + p - 1) // p * p)
            sieve[start - lo :: p] = bytes(len(range(start, hi, p)))
    return sum(sieve)


def handle(job: Any) -> Any:
    """One job: an int comes back as is (noop); a block is counted (primes)."""
    return job if isinstance(job, int) else count_primes(job)


def make_jobs(kind: str, count: int) -> list[Any]:
    if kind == "noop":
        return list(range(count))
    return [(n * 1000, n * 1000 + 1000) for n in range(count)]


def expected(kind: str, jobs: list[Any]) -> list[Any]:
    return [handle(job) for job in jobs] if kind == "primes" else jobs


# --- a qchan worker process ------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_backend(function: Callable[..., Any], *args: Any, backend: str) -> Any:
    options: dict[str, Any] = {}
    if backend == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            options["use_uvloop"] = True
    return anyio.run(function, *args, backend=backend, backend_options=options)


async def worker_main(args: argparse.Namespace) -> None:
    key = qchan.ClusterKey.from_bytes(bytes.fromhex(args.cluster_key_hex))
    async with qchan.Node(
        cluster_key=key, name=args.name, peers=[args.peer], busy_poll=args.busy_poll
    ) as node:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve_worker, node, handle, "bench.workers", args.slots)
            await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            tasks.cancel_scope.cancel()  # the parent is done (or gone)


# --- the measurements --------------------------------------------------------------------------


class Workers:
    """The qchan worker processes, stopped (bounded) when the ``with`` block ends."""

    def __init__(self, count: int, address: str, key: qchan.ClusterKey, args: Any) -> None:
        self.processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", *self._options(n, address, key, args)],
                stdin=subprocess.PIPE,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            for n in range(count)
        ]

    @staticmethod
    def _options(n: int, address: str, key: qchan.ClusterKey, args: Any) -> list[str]:
        return [
            *("--name", f"worker-{n}", "--peer", address),
            *("--cluster-key-hex", bytes(key).hex()),
            *("--slots", str(args.slots), "--backend", args.backend),
            *("--busy-poll", str(args.busy_poll)),
        ]

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()  # the worker stops its node and exits
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def measure_qchan(args: argparse.Namespace, kinds: list[str]) -> dict[str, float]:
    key = qchan.ClusterKey.generate()
    rates: dict[str, float] = {}
    async with qchan.Node(cluster_key=key, name="bench", busy_poll=args.busy_poll) as node:
        async with WorkerPool(node, registry="bench.workers", lookup_timeout=0.1) as pool:
            with Workers(args.workers, node.address, key, args):
                with anyio.fail_after(START_TIMEOUT):
                    await pool.wait_for_workers(args.workers)
                with anyio.fail_after(RUN_TIMEOUT):
                    for kind in kinds:
                        warm = [r async for r in pool.map(make_jobs(kind, WARMUP))]
                        assert warm == expected(kind, make_jobs(kind, WARMUP))
                        jobs = make_jobs(kind, args.jobs)
                        start = time.perf_counter()
                        results = [r async for r in pool.map(jobs, max_in_flight=64)]
                        rates[kind] = len(jobs) / (time.perf_counter() - start)
                        assert results == expected(kind, jobs)
                stats = pool.statistics()
                shares = ", ".join(f"{n} {c}" for n, c in sorted(stats.per_node().items()))
                print(f"  qchan: jobs per worker node: {shares}", flush=True)
    return rates


def measure_executor(
    args: argparse.Namespace, kinds: list[str], chunksize: int
) -> dict[str, float]:
    rates: dict[str, float] = {}
    with concurrent.futures.ProcessPoolExecutor(args.workers) as executor:
        for kind in kinds:
            warm = list(executor.map(handle, make_jobs(kind, WARMUP), chunksize=chunksize))
            assert warm == expected(kind, make_jobs(kind, WARMUP))
            jobs = make_jobs(kind, args.jobs)
            start = time.perf_counter()
            results = list(executor.map(handle, jobs, chunksize=chunksize, timeout=RUN_TIMEOUT))
            rates[kind] = len(jobs) / (time.perf_counter() - start)
            assert results == expected(kind, jobs)
    return rates


def measure_ray(args: argparse.Namespace, kinds: list[str]) -> dict[str, float] | str:
    try:
        import ray
    except ImportError:
        return "not installed (`pip install ray` to include it)"
    rates: dict[str, float] = {}
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(handle)
        for kind in kinds:
            warm = ray.get([remote.remote(job) for job in make_jobs(kind, WARMUP)])
            assert warm == expected(kind, make_jobs(kind, WARMUP))
            jobs = make_jobs(kind, args.jobs)
            start = time.perf_counter()
            results = ray.get([remote.remote(job) for job in jobs], timeout=RUN_TIMEOUT)
            rates[kind] = len(jobs) / (time.perf_counter() - start)
            assert results == expected(kind, jobs)
    finally:
        ray.shutdown()
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--slots", type=int, default=4, help="slots per qchan worker")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray out")
    parser.add_argument(
        "--busy-poll",
        type=float,
        default=qchan.node.DEFAULT_BUSY_POLL,
        help="qchan nodes' busy_poll in seconds (0: off)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--cluster-key-hex", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_backend(worker_main, args, backend=args.backend)
        return 0

    kinds = ["noop", "primes"]
    print(
        f"{args.jobs:,} jobs of each kind; {args.workers} worker processes "
        f"(qchan: {args.slots} slots each, {args.backend}"
        f"{'+uvloop' if args.backend == 'asyncio' and _has_uvloop() else ''}); "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    rows: list[tuple[str, dict[str, float] | str]] = []
    print("measuring qchan WorkerPool ...", flush=True)
    qchan_rates = run_backend(measure_qchan, args, kinds, backend=args.backend)
    rows.append((f"qchan WorkerPool ({args.workers} node processes)", qchan_rates))
    print("measuring ProcessPoolExecutor ...", flush=True)
    rows.append(("ProcessPoolExecutor, chunksize=1", measure_executor(args, kinds, 1)))
    chunk = max(1, args.jobs // (args.workers * 4))
    rows.append((f"ProcessPoolExecutor, chunksize={chunk}", measure_executor(args, kinds, chunk)))
    if args.no_ray:
        rows.append(("Ray", "left out (--no-ray)"))
    else:
        print("measuring Ray ...", flush=True)
        rows.append(("Ray (ray.get over f.remote)", _isolated(measure_ray, args, kinds)))
    print()
    print(table(rows, kinds))
    return 0


def _isolated(function: Callable[..., Any], *args: Any) -> Any:
    # Ray starts daemons and threads of its own; keep a failure from taking the table down.
    try:
        return function(*args)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def table(rows: list[tuple[str, dict[str, float] | str]], kinds: list[str]) -> str:
    base = rows[0][1]
    assert isinstance(base, dict)
    width = max(len(name) for name, _ in rows)
    head = f"{'system':<{width}}"
    head += "".join(f"  {kind + ' jobs/s':>14}  {'vs qchan':>8}" for kind in kinds)
    lines = [head, "-" * len(head)]
    for name, rates in rows:
        if isinstance(rates, str):
            lines.append(f"{name:<{width}}  {rates}")
            continue
        cells = "".join(
            f"  {rates[kind]:>14,.0f}  {rates[kind] / base[kind]:>7.2f}x" for kind in kinds
        )
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
