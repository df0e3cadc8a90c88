"""``WorkerPool.map``: many jobs, results in input order, a bounded number in flight.

The jobs run in a task of the *pool's* task group (an async generator must not hold a task
group across its ``yield``), which feeds a window of at most ``max_in_flight`` jobs: job ``i``
starts only once result ``i - max_in_flight`` has been handed to the caller, so both the jobs
in flight and the results held back for ordering stay bounded, whatever the caller does.

Jobs go to workers in input order: the feeding task takes a free slot for job ``i`` before
it starts the task that runs job ``i``, so job ``i + 1`` never overtakes it (tasks started
together run in no particular order, on trio in random order). A slot taken for a job whose
task never ran is given back when the feeding ends.

The iterator ends that task when the iteration ends: normally, with an error (raised at the
failing job's position, after the jobs behind it are cancelled), when the caller is cancelled
while waiting, on :meth:`MapResults.aclose` or ``async with``, and, as a last resort, when the
iterator is garbage-collected after a ``break``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Final, Generic, Protocol, TypeVar, final

import anyio
import sniffio

from qchan.cluster._pool_errors import JobFailed

__all__ = ["Dispatcher", "MapResults", "Signal"]

T = TypeVar("T")
Ticket = TypeVar("Ticket")


class Dispatcher(Protocol[Ticket]):
    """What :class:`MapResults` needs of a pool: slots taken in order, jobs run on them."""

    async def take_slot(self) -> Ticket:
        """Wait for a free slot; raise the job's error (NoWorkers, say) if none comes."""
        ...

    async def run_on(self, ticket: Ticket, job: Any) -> Any:
        """Run ``job`` on the slot ``ticket``, which this call owns from its first line."""
        ...

    def give_back(self, ticket: Ticket) -> None:
        """Return a slot that was taken for a job that never ran."""
        ...


_CLEANUP_TIMEOUT: Final = 10.0


@final
class Signal:
    """A level-free wake-up: ``fire()`` wakes every task in ``wait()`` at that moment."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@final
class _MapRun:
    """What the feeding task and the iterator share."""

    __slots__ = (
        "changed",
        "consumed",
        "done",
        "end",
        "failed_at",
        "input_error",
        "job_scopes",
        "next",
        "results",
        "scope",
        "tickets",
        "window",
    )

    def __init__(self, window: int) -> None:
        self.window = window
        self.results: dict[int, tuple[bool, Any]] = {}
        self.next = 0  # the index the iterator yields next
        self.end: int | None = None  # the number of jobs, once the input is exhausted
        self.input_error: BaseException | None = None  # raised at position `end`
        self.failed_at: int | None = None  # the first job known to have failed
        self.scope = anyio.CancelScope()
        self.job_scopes: dict[int, anyio.CancelScope] = {}
        self.tickets: dict[int, Any] = {}  # slots taken for jobs whose tasks have not run yet
        self.changed = Signal()  # a result arrived, or the feeding ended
        self.consumed = Signal()  # the iterator moved on: the window moved
        self.done = anyio.Event()


def _soon() -> Callable[[Callable[[], object]], object]:
    """How to run a callback at the running event loop's next turn, from its own thread."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon


def _cancel_soon(soon: Callable[[Callable[[], object]], object], scope: anyio.CancelScope) -> None:
    # A finalizer: the garbage collector may run it in the middle of any code. Cancelling on
    # the spot would run the cancelled tasks' abort callbacks there (at once, on trio), and
    # they may queue frames on a link that is in the middle of queuing one; so at the next turn.
    try:
        soon(scope.cancel)
    except Exception:  # (at interpreter exit, with the event loop gone)
        pass


@final
class MapResults(Generic[T]):
    """The results of :meth:`WorkerPool.map`, in input order: ``async for result in ...``.

    Use it as ``async with pool.map(jobs) as results: async for r in results: ...`` to stop
    the remaining jobs as soon as the block ends, ``break`` or not; a bare ``async for`` stops
    them when the iterator is garbage-collected (at once in CPython) or the pool closes.
    """

    def __init__(
        self,
        jobs: Iterable[Any] | AsyncIterable[Any],
        max_in_flight: int,
        dispatcher: Dispatcher[Any],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
    ) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int, not {type(max_in_flight).__name__}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        if not isinstance(jobs, Iterable | AsyncIterable):
            raise TypeError(f"map() takes an iterable of jobs, not {type(jobs).__name__}")
        self._jobs = jobs
        self._dispatcher = dispatcher
        self._spawn = spawn
        self._run: _MapRun | None = None
        self._started = False
        self._finished = False
        self._window = max_in_flight

    # --- iteration -----------------------------------------------------------------------

    def __aiter__(self) -> MapResults[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        run = self._start()
        try:
            while run.next not in run.results:
                if run.end is not None and run.next >= run.end:
                    error = run.input_error
                    await self.aclose()
                    if error is not None:
                        raise error
                    raise StopAsyncIteration
                if run.done.is_set():
                    await self.aclose()
                    raise JobFailed("the worker pool shut down during map()")
                await run.changed.wait()
        except BaseException:
            if not self._finished:
                await self.aclose()  # the caller was cancelled: the rest of the jobs go too
            raise
        ok, value = run.results.pop(run.next)
        run.next += 1
        run.consumed.fire()
        if not ok:
            await self.aclose()
            raise value
        return value  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop the jobs not yet done (they may have run, in part) and end the iteration."""
        self._finished = True
        run = self._run
        if run is None:
            return
        run.scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_TIMEOUT):
            await run.done.wait()

    async def __aenter__(self) -> MapResults[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the feeding task ------------------------------------------------------------------

    def _start(self) -> _MapRun:
        run = self._run
        if run is None:
            run = self._run = _MapRun(self._window)
            weakref.finalize(self, _cancel_soon, _soon(), run.scope)
            jobs, dispatcher = self._jobs, self._dispatcher

            async def feed() -> None:
                await _feed(run, jobs, dispatcher)

            self._spawn(feed)
        return run


async def _feed(
    run: _MapRun,
    jobs: Iterable[Any] | AsyncIterable[Any],
    dispatcher: Dispatcher[Any],
) -> None:
    index = 0
    try:
        with run.scope:
            async with anyio.create_task_group() as tasks:
                async_source = jobs.__aiter__() if isinstance(jobs, AsyncIterable) else None
                sync_source = None if isinstance(jobs, AsyncIterable) else iter(jobs)
                while True:
                    while index >= run.next + run.window and run.failed_at is None:
                        await run.consumed.wait()
                    if run.failed_at is not None:
                        break  # no point starting jobs behind a failure
                    try:
                        if async_source is not None:
                            job = await async_source.__anext__()
                        else:
                            assert sync_source is not None
                            job = next(sync_source)
                    except (StopIteration, StopAsyncIteration):
                        break
                    except Exception as exc:  # the input itself failed: raised in its place
                        run.input_error = exc
                        break
                    try:
                        ticket = await dispatcher.take_slot()
                    except Exception as exc:  # no worker in time, the pool shut down, ...
                        _failed(run, index, exc)
                        index += 1
                        break
                    run.tickets[index] = ticket
                    scope = run.job_scopes[index] = anyio.CancelScope()
                    tasks.start_soon(_one, run, index, job, scope, dispatcher)
                    index += 1
                run.end = index
                run.changed.fire()
    finally:
        for ticket in run.tickets.values():
            dispatcher.give_back(ticket)  # their tasks were cancelled before they ran
        run.tickets.clear()
        if run.end is None:
            run.end = index
        run.done.set()
        run.changed.fire()


def _failed(run: _MapRun, index: int, error: Exception) -> None:
    run.results[index] = (False, error)
    if run.failed_at is None or index < run.failed_at:
        run.failed_at = index
        for later, other in run.job_scopes.items():
            if later > index:
                other.cancel()  # their results would never be yielded
        run.consumed.fire()  # (the feeder may be waiting for the window)
    run.changed.fire()


async def _one(
    run: _MapRun,
    index: int,
    job: Any,
    scope: anyio.CancelScope,
    dispatcher: Dispatcher[Any],
) -> None:
    ticket = run.tickets.pop(index)  # this task owns the slot now (no await before this)
    try:
        with scope:
            try:
                result = await dispatcher.run_on(ticket, job)
            except Exception as exc:
                _failed(run, index, exc)
            else:
                run.results[index] = (True, result)
                run.changed.fire()
    finally:
        del run.job_scopes[index]
