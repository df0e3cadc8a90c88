"""Local channels with Go semantics: rendezvous, buffers, close with drain, send/receive views.

Theory of operation
-------------------
A channel's state lives in one :class:`ChannelState` (trio and anyio's memory channels share
state between ends the same way): a buffer, a queue of waiting senders (each holding its value)
and a queue of waiting receivers. The invariant is Go's: tasks wait only when nothing can be
matched, so a waiting receiver implies an empty buffer and no waiting sender.

Every call is "poll, else wait": ``poll_send``/``poll_receive`` do the operation at once if
they can (the ``*_nowait`` forms and each select case start here), else ``wait_send`` /
``wait_receive`` queue a :class:`~qchan._operation.Waiter` for an
:class:`~qchan._operation.Operation` that sleeps until a counterpart serves it. Semantics live
in those four methods; ``Channel.send``, ``Channel.receive`` and ``select`` only compose them.

A handle (:class:`Channel`, or its :meth:`~Channel.sender` / :meth:`~Channel.receiver` views)
is a thin object over an *endpoint*: the four methods above plus ``close`` and a few readings.
Here the endpoint is the local :class:`ChannelState`; a remote channel's endpoint speaks to
the channel's home node instead, and every handle and ``select`` work with it unchanged.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, Protocol, TypeVar, final

from qchan._errors import ChannelClosed, PermissionDenied, QchanError, WouldBlock
from qchan._operation import (
    PENDING,
    Operation,
    Waiter,
    cancel_pending,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
)

__all__ = [
    "NOT_READY",
    "Channel",
    "ChannelState",
    "ChannelStatistics",
    "Endpoint",
    "ReceiveChannel",
    "ReceiverWaiting",
    "SendChannel",
    "SenderWaiting",
]

T = TypeVar("T")

#: poll_receive's answer when nothing is ready (shared: it is the common case of a blocked receive)
NOT_READY: Final[tuple[bool, Any, bool]] = (False, None, False)


@final
@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a channel's state, from :meth:`Channel.statistics`."""

    buffered: int
    capacity: float
    waiting_senders: int
    waiting_receivers: int
    closed: bool


class Endpoint(Protocol):
    """What handles and ``select`` need of a channel, wherever its state lives."""

    local: bool
    """True for a channel hosted here. Operations on it yield *before* acting, like anyio's
    memory streams (a consumer then finds the producer's next value instead of sleeping);
    remote operations wait for the network anyway, so they only check for cancellation first
    and yield after an immediate success."""

    @property
    def capacity(self) -> float: ...
    @property
    def closed(self) -> bool: ...
    def buffered(self) -> int: ...
    def statistics(self) -> ChannelStatistics: ...
    def close(self) -> None: ...

    def poll_send(self, value: Any) -> bool:
        """Send at once if no wait is needed; raise ``ChannelClosed`` if closed."""
        ...

    def poll_receive(self) -> tuple[bool, Any, bool]:
        """``(ready, value, ok)``: receive at once if no wait is needed; ``ok`` False = closed."""
        ...

    def wait_send(self, op: Operation, index: int, value: Any) -> None:
        """Queue case ``index`` of ``op``: send ``value`` when a receiver or buffer slot comes."""
        ...

    def wait_receive(self, op: Operation, index: int) -> None:
        """Queue case ``index`` of ``op``: finish it with a value, or ``ok=False`` on close."""
        ...


class SenderWaiting(Protocol):
    """A sender queued at a channel: a local task's case, or a remote node's send."""

    value: Any

    @property
    def op(self) -> Operation | None:
        """The local operation this is a case of (None for a remote node's send)."""
        ...

    def commit(self) -> bool | None:
        """Bind this sender to a handoff now: True if bound, False if it is gone (withdrawn,
        or its select did something else: drop it), None if it cannot say yet (a remote
        select was asked and its answer will come: leave it queued)."""
        ...

    def complete(self) -> None:
        """The value was taken, or moved into the buffer: the send is done."""
        ...

    def returned(self) -> bool:
        """A committed handoff fell through (the receiver refused or was gone): the sender is
        free again (a select may now do another case). True if it should be queued again."""
        ...

    def fail(self, error: QchanError) -> None:
        """The send failed (the channel closed, say); its value was not delivered."""
        ...


class ReceiverWaiting(Protocol):
    """A receiver queued at a channel: a local task's case, or a remote node's receive."""

    synchronous: bool
    """True if :meth:`offer` always answers at once (never ``None``)."""

    @property
    def op(self) -> Operation | None:
        """The local operation this is a case of (None for a remote node's receive)."""
        ...

    pending: tuple[Any, SenderWaiting | None, int] | None
    """What an unanswered :meth:`offer` handed over, from whom (None: from the buffer), and
    its place in the buffer's order (so that it goes back where it was if refused)."""

    def offer(self, value: Any) -> bool | None:
        """Hand ``value`` over: True if taken, False if this receiver is gone, None if the
        answer comes later (then the channel records it in :attr:`pending`)."""
        ...

    def end(self) -> None:
        """The channel is closed and drained: the receive completes with ``ok=False``."""
        ...


class _LocalWaiter(Waiter):
    __slots__ = ("queue",)

    def __init__(self, op: Operation, index: int, queue: deque[Any]) -> None:
        super().__init__(op, index)
        self.queue = queue

    def withdraw(self) -> None:
        try:
            self.queue.remove(self)
        except ValueError:
            pass  # already served or gone


class _SendWaiter(_LocalWaiter):
    __slots__ = ("value",)

    def __init__(self, op: Operation, index: int, value: Any, queue: deque[Any]) -> None:
        super().__init__(op, index, queue)
        self.value = value

    def commit(self) -> bool:
        return self.op.claim(self.index)

    def complete(self) -> None:
        self.op.finish(self.index)

    def returned(self) -> bool:
        self.op.unclaim()
        return bool(self.op.state == PENDING)

    def fail(self, error: QchanError) -> None:
        self.op.finish(self.index, error=error)


class _ReceiveWaiter(_LocalWaiter):
    __slots__ = ()

    synchronous = True
    pending: tuple[Any, SenderWaiting | None, int] | None = None

    def offer(self, value: Any) -> bool:
        return self.op.finish(self.index, value)

    def end(self) -> None:
        self.op.finish(self.index, None, False)


_UNUSED: Final[deque[Any]] = deque()  # the shared empty queue of ChannelState: never mutated


def _closed_error() -> ChannelClosed:
    return ChannelClosed("send on a closed channel")


@final
class ChannelState:
    """The shared state of one channel, at its home: the buffer and the queues of waiters.

    Local tasks and remote nodes meet here. Local waiters answer at once; a remote receiver
    answers a handoff later (``pending``), and meanwhile the value is *in flight*: it still
    holds its buffer slot (or its sender stays blocked) until the receiver takes it, and goes
    back to the front if the receiver refuses it. ``reserved`` counts buffer slots promised
    to remote senders as credits (see qchan.remote).
    """

    __slots__ = (
        "__weakref__",
        "_capacity",
        "_closed",
        "_dequeued",
        "_returned",
        "buffer",
        "export_id",
        "in_flight",
        "in_flight_buffered",
        "on_close",
        "receivers",
        "reclaim",
        "reserved",
        "senders",
    )

    local = True

    def __init__(self, capacity: float) -> None:
        self._capacity = capacity
        self._closed = False
        # An empty deque costs 760 bytes, and most channels never need all three: they share
        # one empty deque, never mutated, until the first append (see _buffer/_senders/...).
        self.buffer: deque[Any] = _UNUSED
        self.senders: deque[SenderWaiting] = _UNUSED
        self.receivers: deque[ReceiverWaiting] = _UNUSED
        self.in_flight = 0  # handoffs to remote receivers awaiting their answer
        self.in_flight_buffered = 0  # ... of which values taken from the buffer
        self.reserved = 0  # buffer slots promised to remote senders (credits)
        self._dequeued = 0  # values taken from the buffer so far (their order)
        self._returned: list[int] | None = None  # orders of values put back at the front
        self.export_id: int | None = None  # set by the node that exports this channel
        self.on_close: Callable[[ChannelState], None] | None = None  # tells remote holders
        # takes back the slots promised to remote senders (credits) that they are not using
        self.reclaim: Callable[[ChannelState], None] | None = None

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    def buffered(self) -> int:
        return len(self.buffer)

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(
            buffered=len(self.buffer),
            capacity=self._capacity,
            waiting_senders=len(self.senders),
            waiting_receivers=len(self.receivers),
            closed=self._closed,
        )

    def free_slots(self) -> float:
        """Buffer slots neither used, in flight nor reserved."""
        return self._capacity - len(self.buffer) - self.in_flight_buffered - self.reserved

    # --- the Endpoint interface, for local tasks ----------------------------------------

    def poll_send(self, value: Any) -> bool:
        if self._closed:
            raise _closed_error()
        receivers = self.receivers
        while receivers:
            receiver = receivers[0]
            if not receiver.synchronous:
                break  # a remote receiver is first: the handoff takes a round trip (wait_send)
            receivers.popleft()
            if receiver.offer(value):
                return True
        if self.free_slots() > 0 or self._room_reclaimed():
            self._buffer().append(value)
            if receivers:
                self.match()
            return True
        return False

    def poll_receive(self) -> tuple[bool, Any, bool]:
        buffer = self.buffer
        if buffer:
            value = buffer.popleft()
            if self._returned:
                del self._returned[0]
            self._slot_freed()
            return True, value, True
        if self.senders:
            sender = self._pop_sender()
            if sender is not None:
                sender.complete()
                return True, sender.value, True
        if self._closed and self._drained():
            return True, None, False
        return NOT_READY

    def wait_send(self, op: Operation, index: int, value: Any) -> None:
        waiter = _SendWaiter(op, index, value, self._senders())
        op.waiters.append(waiter)
        self.add_sender(waiter)

    def wait_receive(self, op: Operation, index: int) -> None:
        waiter = _ReceiveWaiter(op, index, self._receivers())
        op.waiters.append(waiter)
        self.add_receiver(waiter)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Go (closechan): blocked receivers see "closed", then blocked senders fail and their
        # values are not delivered. Receivers wait on while values in flight may come back.
        if self._drained():
            self._end_receivers()
        senders = self.senders
        while senders:
            senders.popleft().fail(_closed_error())
        if self.on_close is not None:
            self.on_close(self)

    # --- for the node: remote waiters and handoffs ----------------------------------------

    def add_sender(self, sender: SenderWaiting) -> None:
        """Queue a sender and hand over whatever can be handed over now."""
        if self._closed:
            sender.fail(_closed_error())
            return
        self._senders().append(sender)
        if self.receivers or self.free_slots() > 0 or self._room_reclaimed():
            self.match()

    def add_receiver(self, receiver: ReceiverWaiting) -> None:
        """Queue a receiver and hand over whatever can be handed over now."""
        self._receivers().append(receiver)
        if self.buffer or self.senders or self._closed:
            self.match()

    def match(self) -> None:
        """Pair waiting receivers with buffered values and committed senders, as far as possible."""
        buffer, receivers = self.buffer, self.receivers
        index = 0
        while index < len(receivers):
            receiver = receivers[index]
            sender: SenderWaiting | None = None
            order = 0
            if buffer:
                value, order = self._pop_buffer()
            elif self.senders and (sender := self._pop_sender(receiver.op)) is not None:
                value = sender.value
            elif self.senders and receiver.op is not None:
                index += 1  # only its own select's sends are queued: serve the next receiver
                continue
            else:
                break
            if receivers[0] is receiver:
                receivers.popleft()
            else:  # (committing the sender may have withdrawn waiters ahead of it)
                receivers.remove(receiver)
            taken = receiver.offer(value)
            if taken:
                if sender is not None:
                    sender.complete()
            elif taken is None:
                receiver.pending = (value, sender, order)
                self.in_flight += 1
                if sender is None:
                    self.in_flight_buffered += 1
            elif sender is None:  # that receiver was gone: the value goes back
                self._put_back(value, order)
            elif sender.returned():
                self.senders.appendleft(sender)
        self._refill()
        if self._closed and receivers and self._drained():
            self._end_receivers()

    def delivery_answered(self, receiver: ReceiverWaiting, taken: bool) -> None:
        """A remote receiver answered a handoff: it took the value, or refused it."""
        assert receiver.pending is not None
        value, sender, order = receiver.pending
        receiver.pending = None
        self.in_flight -= 1
        if sender is None:
            self.in_flight_buffered -= 1
            if taken:
                self._slot_freed()
            else:
                self._put_back(value, order)
        elif taken:
            sender.complete()
        elif self._closed:
            sender.fail(_closed_error())
        elif sender.returned():
            self.senders.appendleft(sender)
        self.match()

    def delivery_lost(self, receiver: ReceiverWaiting, error: QchanError) -> None:
        """The link to a remote receiver died before it answered a handoff.

        Whether it took the value is unknowable, and a value must never arrive twice: it counts
        as taken. A sender still waiting for the answer fails with ``error`` (the caller passes
        a DeliveryUncertain).
        """
        assert receiver.pending is not None
        _, sender, _ = receiver.pending
        receiver.pending = None
        self.in_flight -= 1
        if sender is None:
            self.in_flight_buffered -= 1
            self._slot_freed()
        else:
            sender.fail(error)
        self.match()

    def reserve(self, wanted: int) -> int:
        """Promise up to ``wanted`` free buffer slots to a remote sender; returns how many."""
        granted = int(min(wanted, max(self.free_slots(), 0)))
        self.reserved += granted
        return granted

    def unreserve(self, count: int) -> None:
        """Take back ``count`` promised slots that will not be used."""
        self.reserved -= count
        self._slot_freed()

    def put_reserved(self, value: Any) -> None:
        """A value arrives for a promised slot (a remote credited send)."""
        self.reserved -= 1
        self.put_unreserved(value)

    def put_unreserved(self, value: Any) -> None:
        """A credited send whose promise the home no longer holds: buffered all the same.

        Its sender has returned already, so refusing it would lose it; at worst the buffer
        holds a few values more than its capacity for a moment.
        """
        self._buffer().append(value)
        if self.receivers:
            self.match()

    # --- internals -----------------------------------------------------------------------

    # The deques, made on first use (appendleft only ever follows a pop: they exist by then).

    def _buffer(self) -> deque[Any]:
        if self.buffer is _UNUSED:
            self.buffer = deque()
        return self.buffer

    def _senders(self) -> deque[SenderWaiting]:
        if self.senders is _UNUSED:
            self.senders = deque()
        return self.senders

    def _receivers(self) -> deque[ReceiverWaiting]:
        if self.receivers is _UNUSED:
            self.receivers = deque()
        return self.receivers

    def _pop_buffer(self) -> tuple[Any, int]:
        """The buffer's first value and its place in the order values left the buffer."""
        value = self.buffer.popleft()
        if self._returned:
            return value, self._returned.pop(0)
        self._dequeued += 1
        return value, self._dequeued

    def _put_back(self, value: Any, order: int) -> None:
        # A value that went out and came back goes before the buffer's other values, but after
        # those that came back and had gone out before it: refusals answered in any order
        # leave the buffer in its first order.
        returned = self._returned
        if returned is None:
            returned = self._returned = []
        position = bisect.bisect(returned, order)
        returned.insert(position, order)
        self._buffer().insert(position, value)

    def _drained(self) -> bool:
        return not self.buffer and not self.in_flight_buffered

    def _pop_sender(self, receiving: Operation | None = None) -> SenderWaiting | None:
        # The first waiting sender that commits now, taken off the queue. A remote select
        # that has been asked (None) keeps its place; senders that are gone are dropped. A
        # select never meets itself: senders of the `receiving` operation are passed over.
        senders = self.senders
        index = 0
        while index < len(senders):
            sender = senders[index]
            if receiving is not None and sender.op is receiving:
                index += 1
                continue
            verdict = sender.commit()
            if verdict is None:
                index += 1
                continue
            del senders[index]
            if verdict:
                return sender
        return None

    def _refill(self) -> None:
        # Free slots go to waiting senders first: their values move in, their sends complete.
        buffer = self._buffer() if self.senders else self.buffer
        while self.senders and self.free_slots() > 0:
            sender = self._pop_sender()
            if sender is None:
                break
            buffer.append(sender.value)
            sender.complete()

    def _room_reclaimed(self) -> bool:
        # No free slot, but the buffer is not full: slots are promised to remote senders that
        # are not using them. A sender must not wait on a channel that is not full (they may
        # never be used), so the promises are taken back; what is sent under them is buffered
        # all the same (put_unreserved).
        full = len(self.buffer) + self.in_flight_buffered >= self._capacity
        if self.reserved and self.reclaim is not None and not full:
            self.reclaim(self)
        return self.free_slots() > 0

    def _slot_freed(self) -> None:
        if self.senders:
            self._refill()

    def _end_receivers(self) -> None:
        receivers = self.receivers
        while receivers:
            receivers.popleft().end()


def _check_capacity(capacity: object) -> float:
    if isinstance(capacity, bool) or not isinstance(capacity, int | float):
        raise TypeError(f"capacity must be an int >= 0 or math.inf, not {type(capacity).__name__}")
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, not {capacity}")
    if isinstance(capacity, float) and capacity != math.inf:
        raise TypeError(f"capacity must be an int >= 0 or math.inf, not the float {capacity!r}")
    return capacity


class _Handle:
    """Base of every channel handle: the endpoint it talks to, and nothing else."""

    __slots__ = ("_endpoint",)

    _endpoint: Endpoint

    @property
    def capacity(self) -> float:
        """How many values the channel buffers: 0 (rendezvous), N, or ``math.inf``."""
        return self._endpoint.capacity

    @property
    def closed(self) -> bool:
        """True once the channel has been closed (buffered values may still be received)."""
        return self._endpoint.closed

    def __len__(self) -> int:
        """The number of values buffered right now."""
        return self._endpoint.buffered()

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot: buffered, capacity, waiting senders and receivers, closed."""
        return self._endpoint.statistics()

    def __eq__(self, other: object) -> bool:
        # Two handles are equal when they reach the same channel with the same rights.
        return (
            isinstance(other, _Handle)
            and type(other) is type(self)
            and other._endpoint is self._endpoint
        )

    def __hash__(self) -> int:
        return hash((type(self), id(self._endpoint)))


class SendChannel(_Handle, Generic[T]):
    """The sending side of a channel: ``send``, ``send_nowait``, ``close``.

    Obtained from :meth:`Channel.sender` (or as a ``Channel``, which is both sides).
    """

    __slots__ = ()

    async def send(self, value: T) -> None:
        """Send ``value``, waiting as long as it takes.

        On a capacity-0 channel this returns only once a receiver has taken the value; on a
        buffered one, once the value is in the buffer.

        Raises:
            ChannelClosed: the channel is closed, or was closed while this call waited (the
                value is then not delivered).
        """
        endpoint = self._endpoint
        if endpoint.local:
            await checkpoint()
            if endpoint.poll_send(value):
                return
        else:
            if cancel_pending():
                await checkpoint_if_cancelled()
            if endpoint.poll_send(value):
                await cancel_shielded_checkpoint()
                return
        op = Operation()
        endpoint.wait_send(op, 0, value)
        await op.wait()
        if op.error is not None:
            op.result()  # raises it

    def send_nowait(self, value: T) -> None:
        """Send ``value`` if that needs no wait.

        Raises:
            WouldBlock: no receiver is waiting and the buffer is full.
            ChannelClosed: the channel is closed.
        """
        if not self._endpoint.poll_send(value):
            raise WouldBlock("no receiver is waiting and the buffer is full")

    def close(self) -> None:
        """Close the channel: idempotent; wakes every waiting task.

        Buffered values can still be received; then receives raise ``ChannelClosed``. Sends,
        including those waiting now, raise ``ChannelClosed``.
        """
        self._endpoint.close()

    def sender(self) -> SendChannel[T]:
        """A send-only view of this channel."""
        return _SendView(self._endpoint)

    if not TYPE_CHECKING:  # keep the missing direction out of type checkers' sight

        def __getattr__(self, name: str) -> NoReturn:
            if name in _RECEIVE_NAMES:
                raise PermissionDenied(f"{name}() on a send-only channel handle")
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class ReceiveChannel(_Handle, Generic[T]):
    """The receiving side of a channel: ``receive``, ``receive_nowait``, ``async for``.

    Obtained from :meth:`Channel.receiver` (or as a ``Channel``, which is both sides).
    """

    __slots__ = ()

    async def receive(self) -> T:
        """Receive the next value, waiting as long as it takes.

        Raises:
            ChannelClosed: the channel is closed and drained (now or while this call waited).
        """
        endpoint = self._endpoint
        if endpoint.local:
            await checkpoint()
            ready, value, ok = endpoint.poll_receive()
        else:
            if cancel_pending():
                await checkpoint_if_cancelled()
            ready, value, ok = endpoint.poll_receive()
            if ready:
                await cancel_shielded_checkpoint()
        if not ready:
            op = Operation()
            endpoint.wait_receive(op, 0)
            await op.wait()
            _, value, ok = op.result()
        if not ok:
            raise ChannelClosed("receive on a closed and drained channel")
        return value  # type: ignore[no-any-return]

    def receive_nowait(self) -> T:
        """Receive a value if that needs no wait.

        Raises:
            WouldBlock: nothing is buffered and no sender is waiting.
            ChannelClosed: the channel is closed and drained.
        """
        ready, value, ok = self._endpoint.poll_receive()
        if not ready:
            raise WouldBlock("nothing is buffered and no sender is waiting")
        if not ok:
            raise ChannelClosed("receive on a closed and drained channel")
        return value  # type: ignore[no-any-return]

    def __aiter__(self) -> ReceiveChannel[T]:
        # The handle is its own iterator (no async generator left to the garbage collector
        # when a loop over it is cancelled).
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except ChannelClosed:
            raise StopAsyncIteration from None

    def receiver(self) -> ReceiveChannel[T]:
        """A receive-only view of this channel."""
        return _ReceiveView(self._endpoint)

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> NoReturn:
            if name in _SEND_NAMES:
                raise PermissionDenied(f"{name}() on a receive-only channel handle")
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_RECEIVE_NAMES: Final = frozenset({"receive", "receive_nowait"})
_SEND_NAMES: Final = frozenset({"send", "send_nowait", "close"})


class Channel(SendChannel[T], ReceiveChannel[T]):
    """A channel with Go semantics; both ends in one handle.

    ``Channel()`` or ``Channel(0)`` is a rendezvous: ``send`` returns once a receiver has taken
    the value. ``Channel(n)`` buffers up to ``n`` values; ``Channel(math.inf)`` never blocks a
    sender. ``Channel[int]()`` gives type checkers the element type.

    Raises:
        TypeError: ``capacity`` is not an int or ``math.inf``.
        ValueError: ``capacity`` is negative.
    """

    __slots__ = ()

    def __init__(self, capacity: float = 0) -> None:
        self._endpoint = ChannelState(_check_capacity(capacity))

    @classmethod
    def _from_endpoint(cls, endpoint: Endpoint) -> Channel[Any]:
        """A full handle over an existing endpoint (a remote channel, say)."""
        handle: Channel[Any] = cls.__new__(cls)
        handle._endpoint = endpoint
        return handle

    def __repr__(self) -> str:
        stats = self.statistics()
        state = "closed" if stats.closed else "open"
        return f"<qchan.Channel capacity={stats.capacity} buffered={stats.buffered} {state}>"


@final
class _SendView(SendChannel[T]):
    __slots__ = ()

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def __repr__(self) -> str:
        return f"<qchan send-only view capacity={self.capacity}>"


@final
class _ReceiveView(ReceiveChannel[T]):
    __slots__ = ()

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def __repr__(self) -> str:
        return f"<qchan receive-only view capacity={self.capacity}>"
