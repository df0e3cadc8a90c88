"""The worker side of a worker pool: :func:`serve_worker`, and the messages both sides share.

A worker hosts three channels on its own node and offers them to whichever pool receives from
the registry channel::

    jobs     Channel(0)   the pool sends (job, reply) here; capacity 0, so a job is handed
                          over only when one of the worker's slots is free to take it
    lease    Channel(0)   never sent on: the pool keeps a receive waiting on it; when the
                          worker stops (the lease closes) or its node dies (PeerLost), that
                          receive ends and the pool drops the worker
    welcome  Channel(1)   the pool answers the registration with *its* lease, a channel the
                          worker keeps a receive waiting on in the same way: when the pool
                          goes, the worker registers again (with a new pool, say)

The registration itself is a rendezvous on the registry (capacity 0): it returns only once a
pool has it, so no registration waits in a buffer for a pool that is gone.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from qchan._channel import Channel, ReceiveChannel, SendChannel
from qchan._errors import ChannelClosed, NotFound, PeerLost, QchanError

if TYPE_CHECKING:
    from qchan.node import Node

__all__ = [
    "DEFAULT_REGISTRY",
    "MAX_SLOTS",
    "PROTOCOL",
    "error_answer",
    "serve_worker",
]

log = logging.getLogger("qchan.cluster.pool")

#: The registry channel's name unless told otherwise.
DEFAULT_REGISTRY: Final = "qchan.workers"
#: Tags a registration, so a pool can tell one (and its version) from stray values.
PROTOCOL: Final = "qchan.worker/1"
#: A bound on one worker's concurrency (a pool keeps one token per slot).
MAX_SLOTS: Final = 1024

_LOOKUP_TIMEOUT: Final = 5.0  # one lookup of the registry; it is retried for ever
_WELCOME_TIMEOUT: Final = 10.0  # a pool that took a registration answers at once
_RETRY_PAUSE: Final = 0.2
_MAX_TRACEBACK: Final = 4000

Handler = Callable[[Any], Any]


def error_answer(exc: BaseException, prefix: str = "") -> tuple[str, str, str, str]:
    """The reply for a job whose handler raised ``exc``."""
    text = "".join(traceback.format_exception(exc))
    if len(text) > _MAX_TRACEBACK:
        text = "...\n" + text[-_MAX_TRACEBACK:]
    return ("error", type(exc).__name__, prefix + str(exc), text)


def _caller(handler: Handler, threads: bool) -> Callable[[Any], Awaitable[Any]]:
    """An async function that runs ``handler(job)``, whatever kind of callable it is."""
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):

        async def call_async(job: Any) -> Any:
            return await handler(job)

        return call_async

    if threads:

        async def call_in_thread(job: Any) -> Any:
            result = await anyio.to_thread.run_sync(handler, job)
            if inspect.isawaitable(result):
                result = await result
            return result

        return call_in_thread

    async def call_inline(job: Any) -> Any:
        result = handler(job)
        if inspect.isawaitable(result):  # a partial of an async function, say
            result = await result
        return result

    return call_inline


async def serve_worker(
    node: Node,
    handler: Handler,
    registry: str = DEFAULT_REGISTRY,
    concurrency: int = 1,
    *,
    threads: bool = False,
) -> None:
    """Be a worker of the pool that reads ``registry``: answer its jobs with ``handler(job)``.

    Makes a job channel on ``node`` (capacity 0: a job is handed over only to a free slot),
    registers it, with ``concurrency`` slots, by sending it to the registry channel (found
    with ``node.lookup``; waits for one to appear), then runs up to ``concurrency`` jobs at a
    time. ``handler`` may be a plain or an async callable. A plain one runs on the event loop
    (keep it short: a long one stalls the node's heartbeats), or in anyio's worker threads
    with ``threads=True``. Its return value travels back to the pool, so it must be a value
    qchan can send; an exception it raises goes back as a
    :class:`~qchan.cluster.RemoteError` and the worker carries on.

    When its pool goes away (the pool's node dies or the pool is closed), the worker registers
    again with whichever pool then reads the registry. Runs until cancelled; on the way out it
    closes its channels, so the pool retries the jobs it was running elsewhere.

    Raises:
        ValueError: ``concurrency`` is not between 1 and 1024, or ``registry`` is empty.
        TypeError: ``handler`` is not callable.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise TypeError(f"concurrency must be an int, not {type(concurrency).__name__}")
    if not 1 <= concurrency <= MAX_SLOTS:
        raise ValueError(f"concurrency must be between 1 and {MAX_SLOTS}, not {concurrency}")
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    if not isinstance(registry, str) or not registry or "@" in registry:
        raise ValueError(f"registry must be a channel name without '@': {registry!r}")
    call = _caller(handler, threads)
    jobs: Channel[Any] = Channel(0)
    worker_id = secrets.token_hex(6)
    label = f"{node.name}/{worker_id}"
    try:
        async with anyio.create_task_group() as tasks:
            for _ in range(concurrency):
                tasks.start_soon(_serve_slot, jobs.receiver(), call, label)
            await _keep_registered(node, registry, jobs.sender(), worker_id, concurrency)
    finally:
        jobs.close()  # sends waiting for a slot fail: the pool tries another worker


async def _serve_slot(
    jobs: ReceiveChannel[Any], call: Callable[[Any], Awaitable[Any]], label: str
) -> None:
    # (Not `async for`: its async generator, cancelled mid-wait, is left to the GC on trio.)
    while True:
        try:
            message = await jobs.receive()
        except ChannelClosed:
            return
        if not (
            isinstance(message, tuple) and len(message) == 2 and isinstance(message[1], SendChannel)
        ):
            log.warning("worker %s: ignoring a malformed job message", label)
            continue
        job, reply = message
        try:
            answer: tuple[Any, ...] = ("ok", await call(job))
        except Exception as exc:  # the job's failure, not the worker's: report it, carry on
            log.debug("worker %s: the handler raised %r", label, exc)
            answer = error_answer(exc)
        await _answer(reply, answer, label)


async def _answer(reply: SendChannel[Any], answer: tuple[Any, ...], label: str) -> None:
    try:
        try:
            await reply.send(answer)
        except (TypeError, ValueError) as exc:  # a result qchan cannot send (MessageTooLarge)
            await reply.send(error_answer(exc, "the handler's result cannot be sent: "))
    except QchanError as exc:
        # The pool is gone, or gave up on this job and closed the reply channel.
        log.debug("worker %s: could not answer a job: %s", label, exc)


async def _find(node: Node, name: str) -> SendChannel[Any]:
    while True:
        try:
            return await node.lookup(name, timeout=_LOOKUP_TIMEOUT)
        except NotFound:
            log.debug("no registry %r yet; still looking", name)


async def _keep_registered(
    node: Node, name: str, jobs: SendChannel[Any], worker_id: str, slots: int
) -> None:
    """Register with a pool; when that pool goes, register again; for ever."""
    while True:
        lease: Channel[Any] = Channel(0)
        welcome: Channel[Any] = Channel(1)
        try:
            registry = await _find(node, name)
            registration = {
                "protocol": PROTOCOL,
                "id": worker_id,
                "node": node.name,
                "slots": slots,
                "jobs": jobs,
                "lease": lease.receiver(),
                "welcome": welcome.sender(),
            }
            try:
                await registry.send(registration)  # returns once a pool has taken it
            except (PeerLost, ChannelClosed) as exc:  # that registry (or its node) is gone
                log.debug("registering with %r failed: %s", name, exc)
            else:
                pool_lease: Any = None
                with anyio.move_on_after(_WELCOME_TIMEOUT):
                    pool_lease = await welcome.receive()
                if isinstance(pool_lease, ReceiveChannel):
                    log.debug("worker %s/%s registered", node.name, worker_id)
                    try:
                        await pool_lease.receive()  # nothing is ever sent on it
                    except QchanError as exc:
                        log.debug("worker %s/%s: the pool left: %s", node.name, worker_id, exc)
        finally:
            # A pool that still holds this registration drops it: its receive on the lease ends.
            lease.close()
            welcome.close()
        await anyio.sleep(_RETRY_PAUSE)
