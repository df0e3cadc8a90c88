"""Local-only behaviour of Channel: construction, readings, views, nowait forms, errors."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

import qchan


@pytest.mark.parametrize("capacity", [0, 1, 10, math.inf])
def test_valid_capacities(capacity: float) -> None:
    assert qchan.Channel(capacity).capacity == capacity


def test_default_capacity_is_a_rendezvous() -> None:
    assert qchan.Channel().capacity == 0


@pytest.mark.parametrize("capacity", [-1, -math.inf])
def test_negative_capacity_is_a_value_error(capacity: float) -> None:
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        qchan.Channel(capacity)


@pytest.mark.parametrize("capacity", [1.5, math.nan, "3", None, True, [1]])
def test_non_integer_capacity_is_a_type_error(capacity: Any) -> None:
    with pytest.raises(TypeError, match="capacity must be an int"):
        qchan.Channel(capacity)


def test_generic_alias_makes_a_channel() -> None:
    channel = qchan.Channel[int](2)
    assert isinstance(channel, qchan.Channel)
    channel.send_nowait(5)
    assert channel.receive_nowait() == 5


def test_len_and_statistics_follow_the_buffer() -> None:
    channel: qchan.Channel[str] = qchan.Channel(3)
    assert len(channel) == 0
    channel.send_nowait("a")
    channel.send_nowait("b")
    assert len(channel) == 2
    stats = channel.statistics()
    assert stats == qchan.ChannelStatistics(
        buffered=2, capacity=3, waiting_senders=0, waiting_receivers=0, closed=False
    )
    with pytest.raises(AttributeError):
        stats.buffered = 9  # type: ignore[misc]
    channel.close()
    assert channel.closed
    assert channel.statistics().closed


@pytest.mark.anyio
async def test_statistics_count_waiting_tasks() -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(channel.receive)
        await anyio.wait_all_tasks_blocked()
        assert channel.statistics().waiting_receivers == 3
        for i in range(3):
            await channel.send(i)
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.send, 1)
        tg.start_soon(channel.send, 2)
        await anyio.wait_all_tasks_blocked()
        assert channel.statistics().waiting_senders == 2
        tg.cancel_scope.cancel()
    assert channel.statistics().waiting_senders == 0  # cancelled senders left the queue


def test_nowait_forms() -> None:
    channel: qchan.Channel[int] = qchan.Channel(1)
    with pytest.raises(qchan.WouldBlock):
        channel.receive_nowait()
    channel.send_nowait(1)
    with pytest.raises(qchan.WouldBlock):
        channel.send_nowait(2)
    assert channel.receive_nowait() == 1
    channel.close()
    with pytest.raises(qchan.ChannelClosed):
        channel.receive_nowait()
    with pytest.raises(qchan.ChannelClosed):
        channel.send_nowait(3)


def test_unbuffered_send_nowait_needs_a_waiting_receiver() -> None:
    with pytest.raises(qchan.WouldBlock):
        qchan.Channel[int]().send_nowait(1)


@pytest.mark.anyio
async def test_unbuffered_send_nowait_hands_over_to_a_waiting_receiver() -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    got: list[int] = []

    async def receiver() -> None:
        got.append(await channel.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()
        channel.send_nowait(7)
    assert got == [7]


def test_views_have_only_their_direction() -> None:
    channel: qchan.Channel[int] = qchan.Channel(1)
    tx, rx = channel.sender(), channel.receiver()
    assert isinstance(tx, qchan.SendChannel)
    assert not isinstance(tx, qchan.ReceiveChannel)
    assert isinstance(rx, qchan.ReceiveChannel)
    assert not isinstance(rx, qchan.SendChannel)
    tx.send_nowait(3)
    assert len(rx) == 1
    assert rx.receive_nowait() == 3
    for name in ("receive", "receive_nowait"):
        with pytest.raises(qchan.PermissionDenied, match="send-only"):
            getattr(tx, name)
    for name in ("send", "send_nowait", "close"):
        with pytest.raises(qchan.PermissionDenied, match="receive-only"):
            getattr(rx, name)
    with pytest.raises(AttributeError):
        tx.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    assert tx.sender() == tx
    assert rx.receiver() == rx
    tx.close()
    assert rx.closed


def test_views_compare_by_channel_and_direction() -> None:
    a: qchan.Channel[int] = qchan.Channel()
    b: qchan.Channel[int] = qchan.Channel()
    assert a.sender() == a.sender()
    assert hash(a.sender()) == hash(a.sender())
    assert a.sender() != b.sender()
    assert a.sender() != a.receiver()
    assert a != b


def test_select_argument_errors() -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    with pytest.raises(qchan.PermissionDenied):
        qchan.recv(channel.sender())  # type: ignore[arg-type]
    with pytest.raises(qchan.PermissionDenied):
        qchan.send(channel.receiver(), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a channel"):
        qchan.recv(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a channel"):
        qchan.send(42, 1)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_select_rejects_bad_cases_and_empty_select() -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    with pytest.raises(TypeError, match=r"qchan.recv\(...\)"):
        await qchan.select(channel)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait forever"):
        await qchan.select()
    assert await qchan.select(default=True) == (-1, None, False)


def test_repr_is_informative() -> None:
    channel: qchan.Channel[int] = qchan.Channel(4)
    assert "capacity=4" in repr(channel)
    assert "send-only" in repr(channel.sender())
    assert "receive-only" in repr(channel.receiver())
    assert "qchan.recv" in repr(qchan.recv(channel))
