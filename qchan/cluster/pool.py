"""Worker pools across a cluster: :class:`WorkerPool` dispatches, :func:`serve_worker` works.

Theory of operation
-------------------
The self-registering worker pattern, on qchan channels only. A pool reads a *registry*
channel, a rendezvous named ``"qchan.workers"`` unless told otherwise. On entering, the pool
looks the name up in the cluster (for ``lookup_timeout`` seconds): if another node hosts it,
the pool reads that one; if not, it hosts (registers) the registry on its own node, and closes
and unregisters it on exit. One pool per registry name is the simple model: two pools that
read one registry share the workers' registrations between them, each worker serving the pool
that took its registration.

A worker (:func:`serve_worker`, in :mod:`._pool_worker`) sends the registry a registration
carrying a ``sender()`` view of its own job channel (capacity 0), its number of slots, and two
*leases*: channels on which nothing is ever sent, each side keeping a receive waiting on the
other's. That receive ends when the other side closes its lease (it stopped) or its node dies
(``PeerLost``, within the heartbeat timeout): that is how the pool learns a worker is gone, and
a worker that its pool is gone (it then registers again, with whichever pool reads the
registry by then).

The pool keeps one *token* per free slot in a local unbounded channel (``_free``). ``submit``
takes a token (waiting for one if every slot is busy or no worker is known, up to its
``timeout``), sends ``(job, reply)`` on that worker's job channel (``reply`` is a fresh
capacity-1 channel of the pool's; the send is a rendezvous, so it returns once a slot of the
worker took the job), then waits for the answer ``("ok", result)`` or
``("error", type_name, message, traceback)`` on ``reply``, in a ``select`` with the worker's
local ``gone`` channel, which the pool closes when it drops the worker. The token goes back
when the answer is in.

Failures: a send that fails with ``PeerLost``/``ChannelClosed`` (the worker or its node is
gone; the job was certainly not taken), ``DeliveryUncertain``, or a worker that goes while the
job runs, drops the worker and retries the job on another: **at-least-once** delivery, up to
``max_attempts`` workers, then :class:`WorkersLost`. A handler's exception is the job's own
failure, not the worker's: it comes back as :class:`RemoteError` and is never retried.

Cancellation: a ``submit`` cancelled before its job was handed over leaves no trace (qchan's
send is cancellation-safe) and its token goes straight back. One cancelled after the handover
leaves the job running on the worker; a small task of the pool waits for that answer (or the
worker's end), discards it and only then returns the token, so the pool never counts a busy
slot as free.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, final

import anyio
import anyio.abc

from qchan._channel import Channel, ReceiveChannel, SendChannel
from qchan._errors import (
    ChannelClosed,
    MessageTooLarge,
    NotFound,
    PeerLost,
    PermissionDenied,
    ProtocolError,
    QchanError,
    WouldBlock,
)
from qchan._select import recv, select
from qchan.cluster._pool_errors import JobFailed, NoWorkers, RemoteError, WorkersLost
from qchan.cluster._pool_map import MapResults, Signal
from qchan.cluster._pool_worker import DEFAULT_REGISTRY, MAX_SLOTS, PROTOCOL, serve_worker
from qchan.node import Node

__all__ = [
    "JobFailed",
    "MapResults",
    "NoWorkers",
    "PoolStatistics",
    "RemoteError",
    "WorkerPool",
    "WorkerStatistics",
    "WorkersLost",
    "serve_worker",
]

log = logging.getLogger("qchan.cluster.pool")

_RETRY_PAUSE: Final = 0.2  # before looking for the registry again
_MAX_REMEMBERED: Final = 1024  # departed workers kept for statistics()


@final
@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """One worker as :meth:`WorkerPool.statistics` reports it."""

    worker: str  # "node/id"
    node: str
    slots: int
    busy: int  # jobs it is running for this pool now
    completed: int  # jobs it answered with a result
    errors: int  # jobs whose handler raised
    alive: bool  # still registered with the pool


@final
@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a :class:`WorkerPool`, from :meth:`WorkerPool.statistics`."""

    workers: int  # workers registered now
    slots: int  # their slots
    busy: int  # slots running a job of this pool now
    submitted: int  # submit() calls (map() makes one per job)
    completed: int  # jobs that returned a result
    failed: int  # jobs that raised JobFailed (a RemoteError, WorkersLost or NoWorkers)
    retries: int  # attempts beyond a job's first (each after a lost worker)
    workers_lost: int  # workers dropped: stopped, node gone, link lost
    per_worker: tuple[WorkerStatistics, ...]  # every worker seen, departed ones included

    def per_node(self) -> dict[str, int]:
        """Completed jobs per node name."""
        counts: dict[str, int] = {}
        for worker in self.per_worker:
            counts[worker.node] = counts.get(worker.node, 0) + worker.completed
        return counts


@final
class _Tally:
    """What a worker did for the pool, kept across its registrations (by ``node/id``)."""

    __slots__ = ("busy", "completed", "current", "errors")

    def __init__(self, current: _Worker) -> None:
        self.current = current  # its latest registration
        self.busy = 0
        self.completed = 0
        self.errors = 0

    def statistics(self) -> WorkerStatistics:
        worker = self.current
        return WorkerStatistics(
            worker.label,
            worker.node,
            worker.slots,
            self.busy,
            self.completed,
            self.errors,
            worker.alive,
        )


@final
class _Worker:
    """A registered worker, as the pool sees it."""

    __slots__ = (
        "alive",
        "cause",
        "gone",
        "id",
        "jobs",
        "label",
        "lease",
        "node",
        "pool_lease",
        "scope",
        "slots",
        "tally",
        "welcome",
    )

    def __init__(
        self,
        worker_id: str,
        node: str,
        slots: int,
        jobs: SendChannel[Any],
        lease: ReceiveChannel[Any],
        welcome: SendChannel[Any],
    ) -> None:
        self.id = worker_id
        self.node = node
        self.label = f"{node}/{worker_id}"
        self.slots = slots
        self.jobs = jobs
        self.lease = lease
        self.welcome = welcome
        self.pool_lease: Channel[None] = Channel(0)  # ours; closed when we drop the worker
        self.gone: Channel[None] = Channel(0)  # local; closed when we drop the worker
        self.scope = anyio.CancelScope()  # the task that watches its lease
        self.alive = True
        self.cause: QchanError = PeerLost(f"worker {self.label} is gone")
        self.tally = _Tally(self)


def _parse_registration(message: Any) -> _Worker | None:
    if not isinstance(message, dict) or message.get("protocol") != PROTOCOL:
        return None
    worker_id, node, slots = message.get("id"), message.get("node"), message.get("slots")
    jobs, lease, welcome = message.get("jobs"), message.get("lease"), message.get("welcome")
    if not (
        isinstance(worker_id, str)
        and 0 < len(worker_id) <= 64
        and isinstance(node, str)
        and len(node) <= 255
        and type(slots) is int
        and 1 <= slots <= MAX_SLOTS
        and isinstance(jobs, SendChannel)
        and isinstance(lease, ReceiveChannel)
        and isinstance(welcome, SendChannel)
    ):
        return None
    return _Worker(worker_id, node, slots, jobs, lease, welcome)


@final
class _MapDispatch:
    """The pool as :class:`MapResults` sees it (see its Dispatcher protocol)."""

    __slots__ = ("pool", "timeout")

    def __init__(self, pool: WorkerPool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    async def take_slot(self) -> tuple[_Worker, float | None]:
        deadline = None if self.timeout is None else anyio.current_time() + self.timeout
        return await self.pool._take(deadline), deadline

    async def run_on(self, ticket: tuple[_Worker, float | None], job: Any) -> Any:
        worker, deadline = ticket
        return await self.pool._run(worker, job, deadline)

    def give_back(self, ticket: tuple[_Worker, float | None]) -> None:
        self.pool._submitted -= 1  # it never ran: not a submission after all
        self.pool._release(ticket[0])


def _unregister(node: Node, name: str, channel: Channel[Any]) -> None:
    # Node has no public unregister yet: a closed registry must not shadow a new one.
    unregister = getattr(node, "unregister", None)
    if unregister is not None:
        unregister(name)
    elif node._registry.get(name) == channel:
        del node._registry[name]


@final
class WorkerPool:
    """Runs jobs on the workers of a cluster: ``async with WorkerPool(node) as pool: ...``.

    Workers (:func:`serve_worker`, on any node) register through the channel named
    ``registry``; the pool hosts it on ``node`` unless the name is found in the cluster within
    ``lookup_timeout`` seconds, in which case it reads that one (one pool per registry name is
    the simple model). A job whose worker is lost mid-job (its node dies, its link breaks, it
    stops) runs again on another worker: at-least-once semantics, on at most ``max_attempts``
    workers. Jobs and results must be values qchan can send (msgpack types, channels,
    registered types).

    Raises:
        TypeError: ``node`` is not a :class:`qchan.Node`.
        ValueError: ``max_attempts`` < 1, a negative ``lookup_timeout``, or an empty
            ``registry`` name.
    """

    def __init__(
        self,
        node: Node,
        registry: str = DEFAULT_REGISTRY,
        *,
        max_attempts: int = 3,
        lookup_timeout: float = 1.0,
    ) -> None:
        if not isinstance(node, Node):
            raise TypeError(f"WorkerPool needs a qchan.Node, not {type(node).__name__}")
        if not isinstance(registry, str) or not registry or "@" in registry:
            raise ValueError(f"registry must be a channel name without '@': {registry!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise TypeError("max_attempts must be an int")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        if (
            isinstance(lookup_timeout, bool)
            or not isinstance(lookup_timeout, int | float)
            or not lookup_timeout >= 0
        ):
            raise ValueError(f"lookup_timeout must be a number >= 0, not {lookup_timeout!r}")
        self._node = node
        self._registry_name = registry
        self._max_attempts = max_attempts
        self._lookup_timeout = lookup_timeout
        self._hosted: Channel[Any] | None = None  # the registry, if this pool hosts it
        self._tasks: anyio.abc.TaskGroup | None = None
        self._running = False
        self._entered = False
        self._workers: dict[str, _Worker] = {}
        self._seen: dict[str, _Tally] = {}  # by label, departed workers too (bounded)
        self._free: Channel[_Worker] = Channel(math.inf)  # one token per free slot
        self._admitted = Signal()
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._retries = 0
        self._lost = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> WorkerPool:
        if self._entered:
            raise RuntimeError("a WorkerPool can be entered once")
        self._entered = True
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        self._tasks = tasks
        try:
            registry = await self._find_or_host()
            self._running = True
            tasks.start_soon(self._serve_registry, registry)
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The body's exception (if any) propagates as itself: the pool's tasks never raise.
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._running = False
        self._free.close()  # submits waiting for a worker fail with JobFailed
        for worker in list(self._workers.values()):
            self._drop(worker, PeerLost("the worker pool shut down"), lost=False)
        hosted, self._hosted = self._hosted, None
        if hosted is not None:
            hosted.close()  # workers registering now look again
            _unregister(self._node, self._registry_name, hosted)
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(None, None, None)

    def _check_running(self) -> anyio.abc.TaskGroup:
        if not self._running or self._tasks is None:
            raise RuntimeError("the WorkerPool is not running (use `async with WorkerPool(...)`)")
        return self._tasks

    # --- the registry --------------------------------------------------------------------------

    async def _find_or_host(self) -> ReceiveChannel[Any]:
        name = self._registry_name
        try:
            found = await self._node.lookup(name, timeout=self._lookup_timeout)
        except NotFound:
            registry: Channel[Any] = Channel(0)
            self._node.register(name, registry)
            self._hosted = registry
            log.debug("pool on %s hosts the registry %r", self._node.name, name)
            return registry.receiver()
        if not isinstance(found, ReceiveChannel):
            raise PermissionDenied(f"the registry {name!r} in the cluster is send-only")
        return found

    async def _serve_registry(self, registry: ReceiveChannel[Any]) -> None:
        while True:
            try:
                while True:
                    self._admit(await registry.receive())
            except ChannelClosed:
                pass
            except PeerLost as exc:
                log.info("lost the registry %r: %s", self._registry_name, exc)
            # It closed (its pool left) or its node is gone: find another, or host one.
            await anyio.sleep(_RETRY_PAUSE)
            try:
                registry = await self._find_or_host()
            except (QchanError, ValueError) as exc:
                log.warning("cannot find or host the registry %r: %s", self._registry_name, exc)

    def _admit(self, message: Any) -> None:
        worker = _parse_registration(message)
        if worker is None:
            log.warning("ignoring a malformed registration on %r", self._registry_name)
            return
        tasks = self._check_running()
        old = self._workers.get(worker.id)
        if old is not None:
            self._drop(old, PeerLost(f"worker {old.label} registered again"))
        self._workers[worker.id] = worker
        self._remember(worker)
        tasks.start_soon(self._watch, worker)
        self._compact()
        for _ in range(worker.slots):
            self._free.send_nowait(worker)
        log.info("worker %s joined (%d slots)", worker.label, worker.slots)
        self._admitted.fire()

    def _remember(self, worker: _Worker) -> None:
        seen = self._seen
        tally = seen.get(worker.label)
        if tally is not None:  # registered again: its record goes on
            tally.current = worker
            worker.tally = tally
            return
        seen[worker.label] = worker.tally
        if len(seen) > _MAX_REMEMBERED:
            for label, old in list(seen.items()):
                if not old.current.alive and not old.busy:
                    del seen[label]
                    break

    def _compact(self) -> None:
        # Tokens of departed workers are skipped when taken; if many pile up, sweep them out.
        free = self._free
        live = sum(worker.slots for worker in self._workers.values())
        if len(free) <= 2 * live + 64:
            return
        keep = []
        while True:
            try:
                token = free.receive_nowait()
            except WouldBlock:
                break
            if token.alive:
                keep.append(token)
        for token in keep:
            free.send_nowait(token)

    async def _watch(self, worker: _Worker) -> None:
        """Give the worker our lease, then wait on its lease until it (or its node) goes."""
        with worker.scope:
            cause: QchanError
            try:
                await worker.welcome.send(worker.pool_lease.receiver())
                await worker.lease.receive()
                cause = ProtocolError(f"worker {worker.label} sent a value on its lease")
            except ChannelClosed:
                cause = PeerLost(f"worker {worker.label} stopped")
            except QchanError as exc:
                cause = exc
            self._drop(worker, cause)

    def _drop(self, worker: _Worker, cause: QchanError, *, lost: bool = True) -> None:
        if not worker.alive:
            return
        worker.alive = False
        worker.cause = cause
        worker.gone.close()  # jobs waiting for its answers give up on it
        worker.pool_lease.close()  # if it is alive, it registers again
        worker.scope.cancel()
        if self._workers.get(worker.id) is worker:
            del self._workers[worker.id]
        if lost:
            self._lost += 1
            log.info("worker %s left: %s", worker.label, cause)

    # --- jobs ----------------------------------------------------------------------------------

    async def submit(self, job: Any, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Run ``handler(job)`` on a free worker anywhere in the cluster; return its result.

        Waits for a free slot of a worker (none may be registered yet) for up to ``timeout``
        seconds in all (``None``: as long as it takes). If the worker is lost before it
        answers, the job runs again on another worker, on at most ``max_attempts`` workers in
        all: a job may run more than once (at-least-once). Cancelling a submit is safe: a job
        not yet handed over is not run; one already running finishes on its worker, and the
        slot is counted busy until it does.

        Raises:
            RemoteError: the handler raised (the job is not retried).
            WorkersLost: ``max_attempts`` workers were lost while running the job.
            NoWorkers: no worker slot came free within ``timeout`` (a ``TimeoutError``).
            JobFailed: the pool shut down meanwhile, or a worker answered nonsense.
            TypeError, MessageTooLarge: ``job`` is not a value qchan can send.
            RuntimeError: the pool is not running.
        """
        self._check_running()
        deadline = None if timeout is None else anyio.current_time() + timeout
        worker = await self._take(deadline)
        return await self._run(worker, job, deadline)

    async def _take(self, deadline: float | None) -> _Worker:
        """A job's first slot (counted as a submission)."""
        self._submitted += 1
        try:
            return await self._acquire(deadline, 0)
        except JobFailed:
            self._failed += 1
            raise

    async def _run(self, worker: _Worker, job: Any, deadline: float | None) -> Any:
        """Run ``job`` on ``worker``'s slot, which this call owns (and on others if it is lost)."""
        attempts = 0
        try:
            while True:
                attempts += 1
                answered, outcome = await self._attempt(worker, job)
                if answered:
                    return self._result(worker, outcome, attempts)
                self._drop(worker, outcome)
                if attempts >= self._max_attempts:
                    raise WorkersLost(
                        f"the job lost its worker {attempts} times (last: {outcome})",
                        attempts=attempts,
                    ) from outcome
                self._retries += 1
                log.info("retrying a job: worker %s was lost (%s)", worker.label, outcome)
                worker = await self._acquire(deadline, attempts)
        except JobFailed:
            self._failed += 1
            raise

    def map(
        self,
        jobs: Iterable[Any] | AsyncIterable[Any],
        *,
        max_in_flight: int = 64,
        timeout: float | None = None,
    ) -> MapResults[Any]:
        """Run every job of ``jobs`` (an iterable or an async iterable) and yield the results in
        input order: ``async for result in pool.map(jobs): ...``.

        At most ``max_in_flight`` jobs are submitted and not yet yielded at any moment (so the
        input is read lazily, and a slow consumer holds back at most that many results). Each
        job is a :meth:`submit` with ``timeout``. When a job fails, its exception is raised at
        its position in the output, after the jobs behind it are cancelled; an exception from
        the input iterable itself is raised at its position too. Cancelling the iteration, or
        leaving an ``async with pool.map(jobs) as results:`` block, cancels the jobs not yet
        done.

        Raises (when the iteration reaches it): what :meth:`submit` raises.
        """
        tasks = self._check_running()

        def spawn(feed: Callable[[], Coroutine[Any, Any, None]]) -> None:
            tasks.start_soon(feed)

        return MapResults(jobs, max_in_flight, _MapDispatch(self, timeout), spawn)

    async def _acquire(self, deadline: float | None, attempts: int) -> _Worker:
        """Take a free slot's token (a live worker's), waiting until ``deadline`` at most."""
        free = self._free
        while True:
            try:
                try:
                    worker = free.receive_nowait()
                except WouldBlock:
                    if deadline is None:
                        worker = await free.receive()
                    else:
                        with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                            worker = await free.receive()
                        if scope.cancelled_caught:
                            raise NoWorkers(
                                "no worker was free within the timeout", attempts=attempts
                            ) from None
            except ChannelClosed:
                raise JobFailed("the worker pool shut down", attempts=attempts) from None
            if worker.alive:
                worker.tally.busy += 1
                return worker

    def _release(self, worker: _Worker) -> None:
        worker.tally.busy -= 1
        if worker.alive and not self._free.closed:
            self._free.send_nowait(worker)

    async def _attempt(self, worker: _Worker, job: Any) -> tuple[bool, Any]:
        """Run ``job`` on ``worker``: ``(True, answer)``, or ``(False, error)`` if it was lost.

        Owns the worker's slot: gives it back when done, or leaves it to a drain task if the
        job is running on the worker when this call is cancelled.
        """
        reply: Channel[Any] = Channel(1)
        running = False  # handed over and not answered: the slot is busy at the worker
        try:
            try:
                await worker.jobs.send((job, reply.sender()))
            except MessageTooLarge:
                raise
            except QchanError as exc:  # PeerLost, ChannelClosed (it stopped), ...
                return False, exc
            running = True
            index, answer, _ = await select(recv(reply), recv(worker.gone))
            running = False
            if index == 0:
                return True, answer
            try:
                return True, reply.receive_nowait()  # it answered just before it went
            except WouldBlock:
                return False, worker.cause
        finally:
            tasks = self._tasks
            if running and tasks is not None and self._running:
                tasks.start_soon(self._drain, worker, reply)
            else:
                reply.close()  # a late answer fails at the worker instead of waiting
                self._release(worker)

    async def _drain(self, worker: _Worker, reply: Channel[Any]) -> None:
        """A cancelled submit's job still runs on ``worker``: free the slot once it answers."""
        try:
            await select(recv(reply), recv(worker.gone))
        finally:
            reply.close()
            self._release(worker)

    def _result(self, worker: _Worker, answer: Any, attempts: int) -> Any:
        if type(answer) is tuple and len(answer) == 2 and answer[0] == "ok":
            worker.tally.completed += 1
            self._completed += 1
            return answer[1]
        worker.tally.errors += 1
        if (
            type(answer) is tuple
            and len(answer) == 4
            and answer[0] == "error"
            and all(isinstance(part, str) for part in answer[1:])
        ):
            _, type_name, message, remote_traceback = answer
            raise RemoteError(
                type_name,
                message,
                remote_traceback=remote_traceback,
                worker=worker.label,
                attempts=attempts,
            )
        raise JobFailed(f"worker {worker.label} sent a malformed answer", attempts=attempts)

    # --- readings ------------------------------------------------------------------------------

    @property
    def registry(self) -> str:
        """The registry channel's name."""
        return self._registry_name

    @property
    def hosts_registry(self) -> bool:
        """True if this pool hosts the registry on its own node (else it reads another's)."""
        return self._hosted is not None

    async def wait_for_workers(self, count: int = 1) -> None:
        """Wait until at least ``count`` workers are registered (bound it with
        ``anyio.fail_after``)."""
        self._check_running()
        while len(self._workers) < count:
            await self._admitted.wait()

    def statistics(self) -> PoolStatistics:
        """A snapshot: workers and slots now, jobs done, failed and retried, per worker."""
        workers = list(self._workers.values())
        return PoolStatistics(
            workers=len(workers),
            slots=sum(worker.slots for worker in workers),
            busy=sum(tally.busy for tally in self._seen.values()),
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            retries=self._retries,
            workers_lost=self._lost,
            per_worker=tuple(tally.statistics() for tally in self._seen.values()),
        )

    def __repr__(self) -> str:
        state = "running" if self._running else "not running"
        return f"<qchan.cluster.WorkerPool {self._registry_name!r} {state}>"
