"""One blocked call (a send, a receive, or a whole select) and how its task sleeps and wakes.

Theory of operation
-------------------
A call that cannot finish at once becomes an :class:`Operation` and leaves one :class:`Waiter`
per case in the queue of each channel involved (a plain ``send`` or ``receive`` is a select
with one case). Whoever can serve a waiter later (another task, or a message from a peer)
tries to finish the operation through it. The operation moves through::

    PENDING ──claim(i)──> CLAIMED(i) ──finish──> DONE
       │  ^ └──unclaim()─┘   (the handoff fell through: the other cases are queued again)
       │  └──────────────finish(i)──────────────> DONE
       └──withdraw()──> WITHDRAWN           (the task was cancelled before any case happened)

``CLAIMED`` exists for handoffs that take a round trip: once a case is claimed the other cases
are withdrawn and cannot happen any more, but the task keeps sleeping until the claimed case
has finished (a remote receiver confirmed the take, say). Cancellation withdraws a ``PENDING``
operation at once. A ``CLAIMED`` one cannot be withdrawn by the task alone: its waiter is asked
to try (:meth:`Waiter.cancel_claimed`; a remote send asks the channel's home) and the task
sleeps on until the case either finishes, and the call returns normally, or is given up
(:meth:`Operation.abandon`), and the call raises the cancellation. A call that returns normally
despite a cancellation sees it at its next checkpoint (anyio and trio cancel scopes are
level-triggered). Either way a cancelled call never loses or duplicates a value.

The wait itself is backend-specific because it is the hot path: an asyncio future, or trio's
``wait_task_rescheduled``; both cost far less than an ``anyio.Event``.
"""

from __future__ import annotations

import asyncio
import math
import types
import weakref
from collections.abc import Callable, Generator
from typing import Any, Final

import anyio
import sniffio

_library: Final = sniffio.thread_local  # trio sets .name while it runs

__all__ = [
    "CLAIMED",
    "DONE",
    "PENDING",
    "WITHDRAWN",
    "Operation",
    "Waiter",
    "cancel_pending",
    "cancel_shielded_checkpoint",
    "checkpoint",
    "checkpoint_if_cancelled",
]

PENDING: Final = 0
CLAIMED: Final = 1
DONE: Final = 2
WITHDRAWN: Final = 3


class Waiter:
    """One case of an operation, queued somewhere until it is served or withdrawn.

    Subclasses say how to leave the queue: a local waiter removes itself from a channel's
    deque, a remote one tells the channel's home node.
    """

    __slots__ = ("index", "op")

    def __init__(self, op: Operation, index: int) -> None:
        self.op = op
        self.index = index

    def withdraw(self) -> None:
        """Leave the queue; the case will not happen. Must not fail if already gone."""
        raise NotImplementedError

    def cancel_claimed(self) -> None:
        """The task was cancelled after this case was claimed: give it up if still possible.

        If the case can still be undone, arrange for :meth:`Operation.abandon`; otherwise do
        nothing and let it finish. Local handoffs finish without waiting, so the default is
        to do nothing.
        """


class Operation:
    """A blocked call: at most one of its cases happens, exactly once."""

    __slots__ = (
        "_future",
        "_trio_task",
        "cancelling",
        "cases",
        "error",
        "index",
        "ok",
        "requeue",
        "state",
        "value",
        "waiters",
    )

    def __init__(self, cases: int = 1) -> None:
        self.cases = cases  # a lone case may be claimed at once: nothing else can happen
        self.cancelling = False  # the task was cancelled while a case was claimed
        self.requeue: Callable[[int], None] | None = None  # queues all cases but one again
        self.state: int = PENDING
        self.index = -1
        self.value: Any = None
        self.ok = True
        self.error: BaseException | None = None
        self.waiters: list[Waiter] = []
        self._future: asyncio.Future[None] | None = None  # what the task sleeps on (asyncio)
        self._trio_task: Any = None  # ... or the sleeping trio task

    def claim(self, index: int) -> bool:
        """Bind the operation to case ``index`` and withdraw every other case.

        Returns True if the operation is now bound to ``index`` (also when it already was),
        False if another case won or the operation was withdrawn.
        """
        if self.state == PENDING:
            self.state = CLAIMED
            self.index = index
            if self.cases > 1:  # (a lone case has nothing else to withdraw)
                self._withdraw_all_but(index)
            return True
        return self.state == CLAIMED and self.index == index

    def finish(
        self, index: int, value: Any = None, ok: bool = True, error: BaseException | None = None
    ) -> bool:
        """Complete the operation through case ``index`` and wake its task.

        Returns False (and does nothing) if another case won or the operation was withdrawn.
        ``error``, when given, is raised by the woken call instead of returning.
        """
        if self.state == PENDING:
            if self.cases > 1:
                self._withdraw_all_but(index)
        elif self.state != CLAIMED or self.index != index:
            return False
        self.state = DONE
        self.index = index
        self.value = value
        self.ok = ok
        self.error = error
        future = self._future  # (_wake, inline: this is every operation's path)
        if future is not None:
            if not future.done():
                future.set_result(None)
        elif self._trio_task is not None:
            _trio_reschedule(self._trio_task)
        return True

    def withdraw(self) -> bool:
        """Cancel a pending operation: True if it was pending and now no case can happen."""
        if self.state != PENDING:
            return False
        self.state = WITHDRAWN
        self._withdraw_all_but(-1)
        return True

    def cancel_claimed(self) -> None:
        """Ask the claimed case's waiter to give the case up (see :meth:`Waiter.cancel_claimed`)."""
        if self.state == CLAIMED:
            self.cancelling = True
            for waiter in reversed(self.waiters):  # the latest waiter of that case
                if waiter.index == self.index:
                    waiter.cancel_claimed()
                    return

    def unclaim(self) -> None:
        """The claimed case's handoff fell through before it happened: pending again.

        The other cases are queued again (``requeue``). If the task was cancelled meanwhile,
        the operation is withdrawn instead and the task wakes to raise the cancellation.
        """
        if self.state != CLAIMED:
            return
        index = self.index
        self.state = PENDING
        self.index = -1
        if self.cancelling:
            self.withdraw()
            self._wake()
        elif self.requeue is not None:
            self.requeue(index)

    def abandon(self) -> None:
        """The claimed case was given up after a cancellation: wake the task to raise it."""
        if self.state == CLAIMED:
            self.state = WITHDRAWN
            self._wake()

    def _withdraw_all_but(self, index: int) -> None:
        waiters = self.waiters
        if len(waiters) == 1 and waiters[0].index == index:
            return  # the common single-case call: nothing else to withdraw
        for waiter in waiters:
            if waiter.index != index:
                waiter.withdraw()

    def result(self) -> tuple[int, Any, bool]:
        """The finished case as ``(index, value, ok)``; raises the case's error if it had one."""
        if self.error is not None:
            error, self.error = self.error, None  # drop the traceback's reference cycle
            raise error
        return self.index, self.value, self.ok

    @types.coroutine
    def wait(self) -> Generator[Any, Any, None]:
        """Sleep until the operation is done (see the module docstring for cancellation).

        (A generator-based coroutine, like :func:`checkpoint`: no coroutine frame of its own
        between the call that blocks and the future it sleeps on.)
        """
        try:
            if self.state == DONE:
                return
            if _library.name == "trio":
                yield from _wait_trio(self).__await__()
                return
            # asyncio (and uvloop), inline: this is the per-operation path.
            future = self._future = asyncio.get_running_loop().create_future()
            try:
                yield from future
                return
            except asyncio.CancelledError as exc:
                if self.withdraw():
                    raise
                cancellation = exc
            yield from _see_claimed_case_through(self, cancellation).__await__()
        finally:
            # Over (done or withdrawn): nothing reaches the waiters through the operation any
            # more. Dropping them breaks the operation <-> waiter cycles (and select's requeue
            # closure), so both are freed at once by reference counting instead of waiting for
            # the cyclic collector, which otherwise ran often enough to cost ~9% of a busy home.
            self.waiters.clear()
            self.requeue = None

    def _wake(self) -> None:
        future = self._future
        if future is not None:
            if not future.done():
                future.set_result(None)
        elif self._trio_task is not None:
            _trio_reschedule(self._trio_task)


async def _see_claimed_case_through(op: Operation, cancellation: BaseException) -> None:
    # asyncio: a case was claimed or done before the cancellation reached us. A claimed case
    # is asked to give up; the task sleeps, shielded, until it finished or was given up.
    op.cancel_claimed()
    loop = asyncio.get_running_loop()
    while op.state == CLAIMED:
        future = op._future = loop.create_future()
        with anyio.CancelScope(shield=True):
            try:
                await future
            except asyncio.CancelledError:
                continue  # a bare task.cancel(): still finish what was started
    if op.state == WITHDRAWN:
        raise cancellation
    _keep_cancellation()


def _keep_cancellation() -> None:
    """A call returns normally although its task was cancelled: don't let the cancel be lost.

    Inside a cancelled anyio scope nothing is needed (anyio cancels the task again at its next
    await). A bare ``task.cancel()`` (``asyncio.wait_for``, say) is one-shot: re-arm it.
    """
    if anyio.current_effective_deadline() != -math.inf:
        task = asyncio.current_task()
        if task is not None:
            task.cancel()


async def _wait_trio(op: Operation) -> None:
    task = op._trio_task = _trio_current_task()

    def abort(_: object) -> Any:
        # Runs synchronously when a cancel arrives: withdrawal and the decision are atomic.
        if op.withdraw():
            return _TRIO_ABORT_SUCCEEDED
        op.cancel_claimed()
        return _TRIO_ABORT_FAILED  # claimed: finish(), abandon() or unclaim() reschedules us

    del task
    await _trio_wait_task_rescheduled(abort)
    if op.state == WITHDRAWN:
        # Given up after a cancellation: the scope is still cancelled, so this raises it.
        await _trio_checkpoint()


async def checkpoint_if_cancelled() -> None:
    """Raise a pending cancellation, without letting other tasks run if there is none.

    (Callers on a hot path skip the call when :func:`cancel_pending` says no.)
    """
    if _library.name == "trio":
        await _trio_checkpoint_if_cancelled()
    elif cancel_pending():
        await anyio.lowlevel.checkpoint_if_cancelled()


def cancel_pending() -> bool:
    """False if :func:`checkpoint_if_cancelled` surely has nothing to raise: on asyncio, no
    anyio cancel scope around the current task is cancelled (or shielded from it).

    anyio's own test, read from its state directly: the public checkpoint finds the backend
    through sniffio and walks the scopes through properties, about 1.2 us on every remote
    send; this is a fifth of that. It walks the same chain in the same order (a scope's own
    cancellation counts before its shield). Only the answer "not cancelled" is taken from
    here: when a scope is cancelled, anyio's public checkpoint does the raising. On trio, or
    where anyio is laid out otherwise, the answer is True: the checkpoint decides.
    """
    task_states = _anyio_task_states
    if task_states is None or _library.name == "trio":
        return True
    task = _current_task()
    state = task_states.get(_weakref(task)) if task is not None else None
    scope = state.cancel_scope if state is not None else None
    while scope is not None:
        if scope._cancel_called:
            return True
        if scope._shield:
            return False
        scope = scope._parent_scope
    return False


def _find_anyio_task_states() -> dict[Any, Any] | None:
    """anyio's table of task states on asyncio (weak keys), if it is laid out as expected."""
    try:
        from anyio._backends import _asyncio as backend

        scope = backend.CancelScope()
        if scope._cancel_called or scope._shield or scope._parent_scope is not None:
            return None
        if "cancel_scope" not in backend.TaskState.__slots__:
            return None
        data = backend._task_states.data  # type: ignore[attr-defined]
    except (ImportError, AttributeError, TypeError):
        return None
    return data if isinstance(data, dict) else None


#: None if this anyio is laid out otherwise: then its public checkpoint is used (slower only).
_anyio_task_states: Final = _find_anyio_task_states()
_current_task: Final = asyncio.current_task
_weakref: Final = weakref.ref


@types.coroutine
def cancel_shielded_checkpoint() -> Generator[Any, Any, None]:
    """Let other tasks run, after an operation that completed: a cancellation arriving now is
    not raised here (the operation is done) but at the task's next checkpoint."""
    if _library.name == "trio":
        yield from _trio_cancel_shielded_checkpoint().__await__()
        return
    try:
        yield  # (as in checkpoint)
    except asyncio.CancelledError:
        _keep_cancellation()


@types.coroutine
def checkpoint() -> Generator[Any, Any, None]:
    """Let other tasks run and deliver a pending cancellation, as every blocking call should.

    (A generator-based coroutine: one frame where ``async def`` plus ``asyncio.sleep(0)``
    made three, on every local channel operation.)
    """
    if _library.name == "trio":
        yield from _trio_checkpoint().__await__()
    else:
        yield  # what asyncio.sleep(0) does: the task is scheduled again at once


# trio is imported only if installed; these names are used only when trio is running.
try:
    import trio as _trio
except ImportError:  # pragma: no cover - trio is optional
    pass
else:
    _trio_current_task = _trio.lowlevel.current_task
    _trio_reschedule = _trio.lowlevel.reschedule
    _trio_wait_task_rescheduled = _trio.lowlevel.wait_task_rescheduled
    _trio_checkpoint = _trio.lowlevel.checkpoint
    _trio_checkpoint_if_cancelled = _trio.lowlevel.checkpoint_if_cancelled
    _trio_cancel_shielded_checkpoint = _trio.lowlevel.cancel_shielded_checkpoint
    _TRIO_ABORT_SUCCEEDED = _trio.lowlevel.Abort.SUCCEEDED
    _TRIO_ABORT_FAILED = _trio.lowlevel.Abort.FAILED
