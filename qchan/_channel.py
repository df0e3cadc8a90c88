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

import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, Protocol, TypeVar, final

from qchan._errors import ChannelClosed, PermissionDenied, WouldBlock
from qchan._operation import Operation, Waiter, checkpoint

__all__ = [
    "Channel",
    "ChannelState",
    "ChannelStatistics",
    "Endpoint",
    "ReceiveChannel",
    "SendChannel",
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


class _SendWaiter(Waiter):
    __slots__ = ("queue", "value")

    def __init__(self, op: Operation, index: int, value: Any, queue: deque[_SendWaiter]) -> None:
        super().__init__(op, index)
        self.value = value
        self.queue = queue

    def withdraw(self) -> None:
        try:
            self.queue.remove(self)
        except ValueError:
            pass  # already served or gone


class _ReceiveWaiter(Waiter):
    __slots__ = ("queue",)

    def __init__(self, op: Operation, index: int, queue: deque[_ReceiveWaiter]) -> None:
        super().__init__(op, index)
        self.queue = queue

    def withdraw(self) -> None:
        try:
            self.queue.remove(self)
        except ValueError:
            pass


def _closed_error() -> ChannelClosed:
    return ChannelClosed("send on a closed channel")


@final
class ChannelState:
    """The shared state of one local channel: its buffer and its queues of waiting tasks."""

    __slots__ = ("_capacity", "_closed", "buffer", "receivers", "senders")

    def __init__(self, capacity: float) -> None:
        self._capacity = capacity
        self._closed = False
        self.buffer: deque[Any] = deque()
        self.senders: deque[_SendWaiter] = deque()
        self.receivers: deque[_ReceiveWaiter] = deque()

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

    def poll_send(self, value: Any) -> bool:
        if self._closed:
            raise _closed_error()
        receivers = self.receivers
        while receivers:
            receiver = receivers.popleft()
            if receiver.op.finish(receiver.index, value):
                return True
        if len(self.buffer) < self._capacity:
            self.buffer.append(value)
            return True
        return False

    def poll_receive(self) -> tuple[bool, Any, bool]:
        buffer = self.buffer
        if buffer:
            value = buffer.popleft()
            if self.senders:
                self._refill_buffer()
            return True, value, True
        senders = self.senders
        while senders:
            sender = senders.popleft()
            if sender.op.finish(sender.index):
                return True, sender.value, True
        if self._closed:
            return True, None, False
        return NOT_READY

    def wait_send(self, op: Operation, index: int, value: Any) -> None:
        waiter = _SendWaiter(op, index, value, self.senders)
        op.waiters.append(waiter)
        self.senders.append(waiter)

    def wait_receive(self, op: Operation, index: int) -> None:
        waiter = _ReceiveWaiter(op, index, self.receivers)
        op.waiters.append(waiter)
        self.receivers.append(waiter)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Go: blocked receivers see "closed" (the buffer is empty, or they would not be waiting);
        # blocked senders fail and their values are not delivered.
        receivers, senders = self.receivers, self.senders
        while receivers:
            receiver = receivers.popleft()
            receiver.op.finish(receiver.index, None, False)
        while senders:
            sender = senders.popleft()
            sender.op.finish(sender.index, error=_closed_error())

    def _refill_buffer(self) -> None:
        # A slot came free: the longest-waiting sender's value moves in and that send completes.
        buffer, senders = self.buffer, self.senders
        while senders and len(buffer) < self._capacity:
            sender = senders.popleft()
            if sender.op.finish(sender.index):
                buffer.append(sender.value)


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
        await checkpoint()
        endpoint = self._endpoint
        if endpoint.poll_send(value):
            return
        op = Operation()
        endpoint.wait_send(op, 0, value)
        await op.wait()
        op.result()

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
        await checkpoint()
        endpoint = self._endpoint
        ready, value, ok = endpoint.poll_receive()
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

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                value = await self.receive()
            except ChannelClosed:
                return
            yield value

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
