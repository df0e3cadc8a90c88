"""``select``: wait on several channel operations, do exactly one.

Go's algorithm: poll the cases in a random order and do the first that is ready (so among
ready cases the choice is uniform); with ``default=True`` give up there; otherwise queue one
waiter per case under a single :class:`~qchan._operation.Operation` and sleep. The first
counterpart to finish the operation wins and the other waiters are withdrawn in the same step.
Cases only ever talk to a channel's endpoint, so local and remote channels mix freely.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Final, Generic, TypeVar, final

from qchan._channel import NOT_READY, ReceiveChannel, SendChannel
from qchan._errors import PermissionDenied
from qchan._operation import (
    PENDING,
    Operation,
    cancel_pending,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
)

__all__ = ["RecvCase", "SendCase", "recv", "select", "send"]

T = TypeVar("T")

_SENT: Final[tuple[bool, Any, bool]] = (True, None, True)


@final
class RecvCase(Generic[T]):
    """A receive case for :func:`select`; make it with :func:`recv`."""

    __slots__ = ("channel",)

    def __init__(self, channel: ReceiveChannel[T]) -> None:
        self.channel = channel

    def _poll(self) -> tuple[bool, Any, bool]:
        return self.channel._endpoint.poll_receive()

    def _wait(self, op: Operation, index: int) -> None:
        self.channel._endpoint.wait_receive(op, index)

    def __repr__(self) -> str:
        return f"qchan.recv({self.channel!r})"


@final
class SendCase(Generic[T]):
    """A send case for :func:`select`; make it with :func:`send`."""

    __slots__ = ("channel", "value")

    def __init__(self, channel: SendChannel[T], value: T) -> None:
        self.channel = channel
        self.value = value

    def _poll(self) -> tuple[bool, Any, bool]:
        return _SENT if self.channel._endpoint.poll_send(self.value) else NOT_READY

    def _wait(self, op: Operation, index: int) -> None:
        self.channel._endpoint.wait_send(op, index, self.value)

    def __repr__(self) -> str:
        return f"qchan.send({self.channel!r}, {self.value!r})"


def recv(channel: ReceiveChannel[T]) -> RecvCase[T]:
    """A select case that receives from ``channel``.

    Raises:
        PermissionDenied: ``channel`` is a send-only handle.
        TypeError: ``channel`` is not a qchan channel.
    """
    _check_direction(channel, ReceiveChannel, "recv")
    return RecvCase(channel)


def send(channel: SendChannel[T], value: T) -> SendCase[T]:
    """A select case that sends ``value`` on ``channel``.

    Raises:
        PermissionDenied: ``channel`` is a receive-only handle.
        TypeError: ``channel`` is not a qchan channel.
    """
    _check_direction(channel, SendChannel, "send")
    return SendCase(channel, value)


def _check_direction(channel: object, direction: type, verb: str) -> None:
    # Type checkers catch these statically; this is for callers without one.
    if isinstance(channel, direction):
        return
    if isinstance(channel, SendChannel | ReceiveChannel):
        other = "send-only" if verb == "recv" else "receive-only"
        raise PermissionDenied(f"qchan.{verb}() on a {other} channel handle")
    raise TypeError(f"qchan.{verb}() takes a channel, not {type(channel).__name__}")


def _random_order(count: int) -> Sequence[int]:
    if count == 2:  # the common case, without shuffle's overhead
        return (0, 1) if random.random() < 0.5 else (1, 0)
    order = list(range(count))
    random.shuffle(order)
    return order


async def select(
    *cases: RecvCase[Any] | SendCase[Any], default: bool = False
) -> tuple[int, Any, bool]:
    """Do exactly one of ``cases`` and return ``(index, value, ok)``.

    ``index`` is the case that happened; ``value`` is what a receive case received (``None``
    for a send case); ``ok`` is False only when a receive case completed because its channel is
    closed and drained. Among several ready cases the choice is uniformly random. With
    ``default=True``, returns ``(-1, None, False)`` at once if no case is ready. A cancelled
    select (say, by ``anyio.fail_after``) does no case at all.

    Raises:
        ChannelClosed: the case chosen is a send on a closed channel.
        TypeError: an argument is not a case made by :func:`recv` or :func:`send`.
        ValueError: no cases and no default: the call could never return.
    """
    for case in cases:
        if not isinstance(case, RecvCase | SendCase):
            raise TypeError(
                f"select() takes qchan.recv(...) and qchan.send(...) cases, "
                f"not {type(case).__name__}"
            )
    if not cases and not default:
        raise ValueError("select() with no cases and no default would wait forever")
    if cancel_pending():
        await checkpoint_if_cancelled()
    order = _random_order(len(cases))
    for index in order:
        ready, value, ok = cases[index]._poll()
        if ready:
            await cancel_shielded_checkpoint()
            return index, value, ok
    if default:
        await cancel_shielded_checkpoint()
        return -1, None, False
    op = Operation(len(cases))

    def queue_cases(skip: int) -> None:
        for index in order:
            if index != skip:
                cases[index]._wait(op, index)
                if op.state != PENDING:
                    break  # a case was settled while queueing (a remote one can be)

    try:
        queue_cases(-1)
    except BaseException:
        op.withdraw()  # a case could not be queued (say, a value that cannot be sent)
        raise
    if len(cases) > 1:
        op.requeue = queue_cases  # if a claimed send falls through, the others come back
    await op.wait()
    return op.result()
