"""WorkerPool and serve_worker across real nodes on 127.0.0.1 (and one in another process).

Each test builds a small cluster in one process (nodes with short heartbeats, dialled through
``peers=[...]``, no discovery), runs workers as tasks that can be stopped one by one, and
checks what the pool promises: jobs spread over every worker, map keeps input order and its
bound on jobs in flight, late workers are used, a handler's exception reaches the caller while
its worker carries on, a lost worker's job runs again elsewhere (a stopped node, a SIGKILLed
process), the retry limit, cancellation that leaks no slot, and a bounded wait for workers.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import qchan
from qchan.cluster import (
    JobFailed,
    NoWorkers,
    RemoteError,
    WorkerPool,
    WorkersLost,
    serve_worker,
)
from tests.node._helpers import make_node, wait_for

pytestmark = pytest.mark.anyio

BOUND = 10.0  # no test takes more than this
ROOT = Path(__file__).parents[2]


class Cluster:
    """Nodes and workers that can each be stopped on their own, all ended at the test's end."""

    def __init__(self, stack: AsyncExitStack, tasks: anyio.abc.TaskGroup) -> None:
        self.stack = stack
        self.tasks = tasks
        self.key = qchan.ClusterKey.generate()
        self.first: qchan.Node | None = None
        self.node_stops: dict[str, anyio.Event] = {}
        self.node_stopped: dict[str, anyio.Event] = {}

    async def node(self, name: str) -> qchan.Node:
        """A node in a task of its own (stop it with :meth:`stop_node`), dialling the first."""
        peers = [self.first.address] if self.first is not None else []
        node = make_node(self.key, name, peers=peers)
        stop, stopped = anyio.Event(), anyio.Event()
        self.node_stops[name], self.node_stopped[name] = stop, stopped

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                async with node:
                    task_status.started()
                    await stop.wait()
            finally:
                stopped.set()

        await self.tasks.start(run)
        if self.first is None:
            self.first = node
        return node

    async def stop_node(self, name: str) -> None:
        self.node_stops[name].set()
        await self.node_stopped[name].wait()

    def worker(self, node: qchan.Node, handler: Callable[[Any], Any], slots: int = 1) -> Any:
        """Run ``serve_worker`` in a task; returns its cancel scope (cancel it to stop it)."""
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await serve_worker(node, handler, concurrency=slots)

        self.tasks.start_soon(run)
        return scope

    async def pool(self, node: qchan.Node, **kwargs: Any) -> WorkerPool:
        kwargs.setdefault("lookup_timeout", 0.1)
        return await self.stack.enter_async_context(WorkerPool(node, **kwargs))


@asynccontextmanager
async def running_cluster() -> AsyncIterator[Cluster]:
    """A :class:`Cluster`; the whole test runs within :data:`BOUND` seconds."""
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)  # runs first: workers and nodes stop
            yield Cluster(stack, tasks)


class Gauge:
    """Counts jobs running at once (the workers all run in this process)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.by_node: Counter[str] = Counter()

    def handler(self, node: str, delay: float = 0.005) -> Callable[[Any], Any]:
        async def run(job: Any) -> Any:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.by_node[node] += 1
            try:
                await anyio.sleep(delay)
            finally:
                self.now -= 1
            return (node, job, job * job)

        return run


def _free_live_tokens(pool: WorkerPool) -> int:
    free = pool._free
    tokens = [free.receive_nowait() for _ in range(len(free))]
    for token in tokens:
        free.send_nowait(token)
    return sum(token.alive for token in tokens)


async def _collect(results: AsyncIterator[Any], into: list[Any]) -> None:
    async for result in results:
        into.append(result)


# --- dispatch ---------------------------------------------------------------------------------


async def test_submit_and_map_spread_over_workers_on_three_nodes() -> None:
    async with running_cluster() as cluster:
        a, b, c = [await cluster.node(name) for name in ("A", "B", "C")]
        pool = await cluster.pool(a)
        assert pool.hosts_registry
        gauge = Gauge()
        for node in (a, b, c):
            cluster.worker(node, gauge.handler(node.name), slots=2)
        await pool.wait_for_workers(3)
        assert await pool.submit(7) in {(n, 7, 49) for n in "ABC"}
        results = [r async for r in pool.map(range(60))]
        assert [(job, square) for _, job, square in results] == [(n, n * n) for n in range(60)]
        assert set(gauge.by_node) == {"A", "B", "C"}, gauge.by_node
        assert gauge.peak == 6  # every slot of every worker was busy at some point
        stats = pool.statistics()
        assert (stats.workers, stats.slots, stats.busy) == (3, 6, 0)
        assert (stats.submitted, stats.completed, stats.failed, stats.retries) == (61, 61, 0, 0)
        assert sum(stats.per_node().values()) == 61
        assert stats.per_node() == {n: gauge.by_node[n] for n in "ABC"}


async def test_map_honours_max_in_flight() -> None:
    async with running_cluster() as cluster:
        a, b, c = [await cluster.node(name) for name in ("A", "B", "C")]
        pool = await cluster.pool(a)
        gauge = Gauge()
        for node in (a, b, c):
            cluster.worker(node, gauge.handler(node.name), slots=3)
        await pool.wait_for_workers(3)
        results = [r async for r in pool.map(range(40), max_in_flight=4)]
        assert [job for _, job, _ in results] == list(range(40))
        assert gauge.peak == 4


async def test_map_takes_an_async_iterable_and_reads_it_lazily() -> None:
    async with running_cluster() as cluster:
        a = await cluster.node("A")
        pool = await cluster.pool(a)
        cluster.worker(a, lambda job: job + 1, slots=4)
        read: list[int] = []

        async def jobs() -> AsyncIterator[int]:
            for n in range(50):
                read.append(n)
                yield n

        got = []
        async for result in pool.map(jobs(), max_in_flight=5):
            got.append(result)
            assert len(read) <= len(got) + 5  # never more than the window ahead of the consumer
        assert got == list(range(1, 51))


async def test_a_worker_that_joins_late_is_used() -> None:
    async with running_cluster() as cluster:
        a, b, c = [await cluster.node(name) for name in ("A", "B", "C")]
        pool = await cluster.pool(a)
        gauge = Gauge()
        cluster.worker(b, gauge.handler("B", delay=0.02))
        results: list[Any] = []

        async def run_jobs() -> None:
            async for result in pool.map(range(30)):
                results.append(result)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_jobs)
            await wait_for(lambda: len(results) >= 3)
            cluster.worker(c, gauge.handler("C", delay=0.02))  # joins while the map runs
            await pool.wait_for_workers(2)
            assert len(results) < 25  # C joined with most of the jobs still to run
        assert gauge.by_node["C"] > 0, gauge.by_node
        assert [job for _, job, _ in results] == list(range(30))


async def test_no_workers_waits_then_times_out() -> None:
    async with running_cluster() as cluster:
        a = await cluster.node("A")
        pool = await cluster.pool(a)
        start = anyio.current_time()
        with pytest.raises(NoWorkers) as caught:
            await pool.submit(1, timeout=0.3)
        assert anyio.current_time() - start >= 0.29
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.attempts == 0
        # A worker that comes along later is used by a submit already waiting.
        b = await cluster.node("B")
        async with anyio.create_task_group() as tg:
            answers: list[Any] = []

            async def submit() -> None:
                answers.append(await pool.submit(5, timeout=5))

            tg.start_soon(submit)
            await anyio.sleep(0.1)
            cluster.worker(b, lambda job: -job)
        assert answers == [-5]
        assert pool.statistics().failed == 1


# --- failures ---------------------------------------------------------------------------------


async def test_a_handler_exception_reaches_the_caller_and_the_worker_carries_on() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)

        def handler(job: int) -> float:
            return 1 / job

        cluster.worker(b, handler)
        with pytest.raises(RemoteError) as caught:
            await pool.submit(0)
        error = caught.value
        assert isinstance(error, JobFailed)
        assert isinstance(error, qchan.QchanError)
        assert error.type_name == "ZeroDivisionError"
        assert error.message == "division by zero"
        assert "ZeroDivisionError" in error.remote_traceback
        assert error.worker.startswith("B/")
        assert error.attempts == 1
        assert await pool.submit(4) == 0.25  # the same (only) worker
        stats = pool.statistics()
        assert (stats.completed, stats.failed, stats.retries, stats.workers) == (1, 1, 0, 1)
        assert stats.per_worker[0].errors == 1


async def test_plain_handlers_can_run_in_threads() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        running = [0, 0]  # now, peak
        lock = threading.Lock()

        def blocking(job: int) -> int:
            with lock:
                running[0] += 1
                running[1] = max(running)
            time.sleep(0.05)  # blocks its thread, not the node's event loop
            with lock:
                running[0] -= 1
            return -job

        scope = anyio.CancelScope()

        async def serve() -> None:
            with scope:
                await serve_worker(b, blocking, concurrency=3, threads=True)

        cluster.tasks.start_soon(serve)
        assert [r async for r in pool.map(range(6))] == [0, -1, -2, -3, -4, -5]
        assert running[1] == 3


async def test_a_result_that_cannot_be_sent_is_a_remote_error() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        cluster.worker(b, lambda job: object() if job else "fine")
        with pytest.raises(RemoteError) as caught:
            await pool.submit(1)
        assert caught.value.type_name == "TypeError"
        assert await pool.submit(0) == "fine"


async def test_a_job_that_cannot_be_sent_raises_at_once_and_frees_its_slot() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        cluster.worker(b, lambda job: job)
        await pool.wait_for_workers(1)
        with pytest.raises(TypeError):
            await pool.submit(object())
        assert await pool.submit("ok") == "ok"
        assert pool.statistics().busy == 0


async def test_map_raises_at_the_failing_position_and_cancels_the_rest() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        started: list[int] = []

        async def handler(job: int) -> int:
            started.append(job)
            await anyio.sleep(0.05 if job == 5 else 0.001)
            if job == 5:
                raise KeyError(job)
            return job

        cluster.worker(b, handler, slots=4)
        got: list[int] = []
        with pytest.raises(RemoteError) as caught:
            await _collect(pool.map(range(100), max_in_flight=8), got)
        assert caught.value.type_name == "KeyError"
        assert got == [0, 1, 2, 3, 4]
        assert max(started) < 5 + 8 + 1
        settled = len(started)
        await anyio.sleep(0.1)
        assert len(started) == settled  # nothing more was started
        await wait_for(lambda: pool.statistics().busy == 0)


async def test_map_raises_an_error_of_the_input_in_its_place() -> None:
    async with running_cluster() as cluster:
        a = await cluster.node("A")
        pool = await cluster.pool(a)
        cluster.worker(a, lambda job: job * 10, slots=2)

        def jobs() -> Any:
            yield 1
            yield 2
            raise LookupError("no third job")

        got: list[int] = []
        with pytest.raises(LookupError, match="no third job"):
            await _collect(pool.map(jobs()), got)
        assert got == [10, 20]


async def test_a_stopped_worker_node_mid_job_is_retried_elsewhere() -> None:
    async with running_cluster() as cluster:
        a, b, c = [await cluster.node(name) for name in ("A", "B", "C")]
        pool = await cluster.pool(a)
        started = anyio.Event()

        async def stuck(job: Any) -> Any:
            started.set()
            await anyio.sleep_forever()

        cluster.worker(b, stuck)
        await pool.wait_for_workers(1)
        async with anyio.create_task_group() as tg:
            answers: list[Any] = []

            async def submit() -> None:
                answers.append(await pool.submit("job"))

            tg.start_soon(submit)
            await started.wait()
            cluster.worker(c, lambda job: ("C", job))
            await pool.wait_for_workers(2)
            await cluster.stop_node("B")  # its `async with` exits with the job running
        assert answers == [("C", "job")]
        stats = pool.statistics()
        assert (stats.retries, stats.workers_lost, stats.workers, stats.completed) == (1, 1, 1, 1)
        assert {w.node: w.alive for w in stats.per_worker} == {"B": False, "C": True}


async def test_a_stopped_worker_task_mid_job_is_retried_elsewhere() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        started = anyio.Event()

        async def stuck(job: Any) -> Any:
            started.set()
            await anyio.sleep_forever()

        first = cluster.worker(b, stuck)
        async with anyio.create_task_group() as tg:
            answers: list[Any] = []

            async def submit() -> None:
                answers.append(await pool.submit("job"))

            tg.start_soon(submit)
            await started.wait()
            cluster.worker(b, lambda job: ("second", job))  # the node stays; only a worker stops
            await pool.wait_for_workers(2)
            first.cancel()
        assert answers == [("second", "job")]
        assert pool.statistics().retries == 1


_WORKER_PROCESS = textwrap.dedent(
    """
    import sys, anyio, qchan
    from qchan.cluster import serve_worker

    async def main():
        key = qchan.ClusterKey.from_bytes(bytes.fromhex(sys.argv[1]))
        async with qchan.Node(cluster_key=key, name="doomed", peers=[sys.argv[2]],
                              heartbeat_interval=0.2, peer_timeout=0.6) as node:
            async def handler(job):
                print("started", job, flush=True)
                await anyio.sleep_forever()
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_worker, node, handler)
                await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
                tg.cancel_scope.cancel()

    anyio.run(main)
    """
)


async def test_a_sigkilled_worker_process_mid_job_is_retried_elsewhere() -> None:
    async with running_cluster() as cluster:
        a, c = [await cluster.node(name) for name in ("A", "C")]
        pool = await cluster.pool(a)
        process = await anyio.open_process(
            [sys.executable, "-c", _WORKER_PROCESS, bytes(cluster.key).hex(), a.address],
            cwd=ROOT,
        )
        try:
            assert process.stdout is not None
            await pool.wait_for_workers(1)
            async with anyio.create_task_group() as tg:
                answers: list[Any] = []

                async def submit() -> None:
                    answers.append(await pool.submit("job"))

                tg.start_soon(submit)
                line = b""
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive()
                assert line == b"started job\n", line
                cluster.worker(c, lambda job: ("C", job))
                await pool.wait_for_workers(2)
                os.kill(process.pid, signal.SIGKILL)
            assert answers == [("C", "job")]
            stats = pool.statistics()
            assert (stats.retries, stats.workers_lost) == (1, 1)
            assert {w.node: w.alive for w in stats.per_worker} == {"doomed": False, "C": True}
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
                await process.aclose()


async def test_a_job_that_loses_every_worker_fails_after_max_attempts() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a, max_attempts=2)
        scopes: list[anyio.CancelScope] = []
        ran: list[int] = []

        def worker_that_dies(number: int) -> None:
            def handler(job: Any) -> None:
                ran.append(number)
                scopes[number].cancel()  # the worker stops with the job running

            scopes.append(cluster.worker(b, handler))

        for number in range(3):
            worker_that_dies(number)
        await pool.wait_for_workers(3)
        with pytest.raises(WorkersLost) as caught:
            await pool.submit("poison")
        assert caught.value.attempts == 2
        assert isinstance(caught.value.__cause__, qchan.PeerLost)
        assert len(ran) == 2
        stats = pool.statistics()
        assert (stats.failed, stats.retries, stats.workers_lost, stats.workers) == (1, 1, 2, 1)


# --- cancellation -------------------------------------------------------------------------------


async def test_a_submit_cancelled_while_waiting_for_a_worker_leaves_nothing() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        with anyio.move_on_after(0.1):
            await pool.submit(1)
        cluster.worker(b, lambda job: job * 3, slots=2)
        assert await pool.submit(2) == 6
        assert [await pool.submit(n) for n in range(3)] == [0, 3, 6]
        stats = pool.statistics()
        assert (stats.busy, stats.slots, stats.completed) == (0, 2, 4)
        assert _free_live_tokens(pool) == 2


async def test_a_submit_cancelled_mid_job_keeps_the_slot_busy_until_the_worker_answers() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        release = anyio.Event()
        started = anyio.Event()

        async def handler(job: str) -> str:
            if job == "slow":
                started.set()
                await release.wait()
            return job.upper()

        cluster.worker(b, handler)
        async with anyio.create_task_group() as tg:

            async def submit() -> None:
                await pool.submit("slow")

            tg.start_soon(submit)
            await started.wait()
            tg.cancel_scope.cancel()
        assert pool.statistics().busy == 1  # the job still runs on the worker
        assert _free_live_tokens(pool) == 0
        with anyio.move_on_after(0.1):
            await pool.submit("fast")  # no free slot: it waits
        release.set()
        assert await pool.submit("fast") == "FAST"
        stats = pool.statistics()
        assert (stats.busy, stats.completed, stats.slots) == (0, 1, 1)
        assert _free_live_tokens(pool) == 1


async def test_a_cancelled_map_stops_its_jobs_and_leaks_no_slot() -> None:
    async with running_cluster() as cluster:
        a, b, c = [await cluster.node(name) for name in ("A", "B", "C")]
        pool = await cluster.pool(a)
        gauge = Gauge()
        cluster.worker(b, gauge.handler("B", delay=0.01), slots=2)
        cluster.worker(c, gauge.handler("C", delay=0.01), slots=2)
        await pool.wait_for_workers(2)
        got = 0
        with anyio.move_on_after(0.1):
            async for _ in pool.map(range(10_000)):
                got += 1
        assert 0 < got < 10_000
        await wait_for(lambda: pool.statistics().busy == 0 and gauge.now == 0)
        ran = sum(gauge.by_node.values())
        await anyio.sleep(0.1)
        assert sum(gauge.by_node.values()) == ran  # nothing more was started
        assert _free_live_tokens(pool) == 4
        assert [r[1] async for r in pool.map(range(5))] == list(range(5))


async def test_breaking_out_of_a_map_stops_its_jobs() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        gauge = Gauge()
        cluster.worker(b, gauge.handler("B", delay=0.01), slots=2)
        async with pool.map(range(10_000), max_in_flight=4) as results:
            async for result in results:
                if result[1] == 3:
                    break
        await wait_for(lambda: pool.statistics().busy == 0 and gauge.now == 0)
        assert sum(gauge.by_node.values()) <= 8
        # A bare `async for` ... `break`: the iterator's collection stops the rest.
        async for result in pool.map(range(10_000), max_in_flight=4):
            if result[1] == 3:
                break
        gc.collect()
        # (the feeding is cancelled at the next turn, not inside the finalizer: a job may
        # still go out before that)
        await anyio.sleep(0.05)
        await wait_for(lambda: pool.statistics().busy == 0 and gauge.now == 0)
        ran = sum(gauge.by_node.values())
        await anyio.sleep(0.1)
        assert sum(gauge.by_node.values()) == ran <= 16


# --- registries ---------------------------------------------------------------------------------


async def test_a_second_pool_reads_the_registry_it_finds() -> None:
    async with running_cluster() as cluster:
        a, b, c = [await cluster.node(name) for name in ("A", "B", "C")]
        first = await cluster.pool(a)
        second = await cluster.pool(b, lookup_timeout=2.0)
        assert first.hosts_registry
        assert not second.hosts_registry
        cluster.worker(c, lambda job: job, slots=1)
        cluster.worker(c, lambda job: job, slots=1)
        with anyio.fail_after(5):
            while first.statistics().workers + second.statistics().workers < 2:  # noqa: ASYNC110
                await anyio.sleep(0.01)


async def test_workers_move_to_the_next_pool_when_theirs_closes() -> None:
    async with running_cluster() as cluster:
        a, b, c = [await cluster.node(name) for name in ("A", "B", "C")]
        cluster.worker(c, lambda job: ("C", job), slots=2)
        async with WorkerPool(a, lookup_timeout=0.1) as first:
            assert await first.submit(1) == ("C", 1)
        with pytest.raises(RuntimeError):
            await first.submit(2)
        # The registry left with the first pool: the next one, elsewhere, hosts its own.
        await c.connect(b.address)  # (the nodes all dialled A only)
        second = await cluster.pool(b)
        assert second.hosts_registry
        assert await second.submit(3, timeout=5) == ("C", 3)
        assert second.statistics().slots == 2


async def test_a_registration_that_is_not_one_is_ignored() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        registry = await b.lookup("qchan.workers")
        await registry.send({"protocol": "qchan.worker/1", "id": "x", "slots": 10**9})
        await registry.send("hello")
        cluster.worker(b, lambda job: job)
        assert await pool.submit("still fine") == "still fine"
        assert pool.statistics().workers == 1


async def test_a_worker_dropped_by_the_pool_registers_again_and_keeps_its_record() -> None:
    async with running_cluster() as cluster:
        a, b = [await cluster.node(name) for name in ("A", "B")]
        pool = await cluster.pool(a)
        cluster.worker(b, lambda job: job, slots=2)
        assert [r async for r in pool.map(range(5))] == list(range(5))
        (worker,) = pool._workers.values()
        pool._drop(worker, qchan.PeerLost("as if its link had failed"))
        assert pool.statistics().workers == 0
        await pool.wait_for_workers(1)  # its pool lease closed: it registered again
        assert [r async for r in pool.map(range(5))] == list(range(5))
        stats = pool.statistics()
        assert (stats.workers, stats.workers_lost, stats.completed) == (1, 1, 10)
        (record,) = stats.per_worker
        assert (record.completed, record.alive, record.slots) == (10, True, 2)


def test_arguments_are_checked() -> None:
    node = qchan.Node(cluster_key=qchan.ClusterKey.generate())
    with pytest.raises(TypeError):
        WorkerPool(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        WorkerPool(node, max_attempts=0)
    with pytest.raises(ValueError, match="registry"):
        WorkerPool(node, registry="a@b")


async def test_serve_worker_checks_its_arguments() -> None:
    node = qchan.Node(cluster_key=qchan.ClusterKey.generate())
    with pytest.raises(ValueError, match="concurrency"):
        await serve_worker(node, print, concurrency=0)
    with pytest.raises(TypeError):
        await serve_worker(node, 42)  # type: ignore[arg-type]


async def test_a_pool_not_entered_refuses_work() -> None:
    pool = WorkerPool(qchan.Node(cluster_key=qchan.ClusterKey.generate()))
    with pytest.raises(RuntimeError, match="not running"):
        await pool.submit(1)
    with pytest.raises(RuntimeError, match="not running"):
        pool.map([1])
