"""The channel conformance suite: Go semantics, written once, run against every kind of channel.

A test module subclasses :class:`ChannelConformance` and provides a ``channels`` fixture
returning a :class:`ChannelMaker`: local channels, remote handles in one process, remote
handles across processes. The tests only use the public API (handles, ``select``, errors) and
never peek at internals or statistics, so they hold for any endpoint.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import pytest

import qchan
from qchan import ReceiveChannel, SendChannel

#: Seconds any single conformance test may take before it counts as hung.
BOUND = 20.0


class ChannelMaker(Protocol):
    """Makes channels for the suite and knows how to let in-flight work settle."""

    async def make(self, capacity: float) -> tuple[SendChannel[Any], ReceiveChannel[Any]]:
        """A fresh channel: a handle to send on and one to receive from."""
        ...

    async def settle(self) -> None:
        """Return once every task has done what it can (messages in flight have landed)."""
        ...


async def _returns_within(call: Callable[[], Awaitable[Any]], seconds: float = BOUND) -> Any:
    with anyio.fail_after(seconds):
        return await call()


async def _nobody_takes(tx: SendChannel[Any], wait: float = 0.2) -> bool:
    """True if a send finds no receiver within ``wait`` seconds (the send is then cancelled)."""
    with anyio.move_on_after(wait) as scope:
        await tx.send("probe")
    return scope.cancelled_caught


async def _nothing_arrives(rx: ReceiveChannel[Any], wait: float = 0.2) -> bool:
    """True if a receive gets nothing within ``wait`` seconds (it is then cancelled)."""
    with anyio.move_on_after(wait) as scope:
        await rx.receive()
    return scope.cancelled_caught


class ChannelConformance:
    """Go channel semantics. Subclasses define the ``channels`` fixture."""

    pytestmark = pytest.mark.anyio

    # --- rendezvous and buffering -------------------------------------------------------

    async def test_unbuffered_send_returns_only_after_a_receive(
        self, channels: ChannelMaker
    ) -> None:
        tx, rx = await channels.make(0)
        returned = anyio.Event()

        async def sender() -> None:
            await tx.send("hello")
            returned.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await channels.settle()
            assert not returned.is_set(), "a rendezvous send returned with no receiver"
            assert await _returns_within(rx.receive) == "hello"
            await _returns_within(returned.wait)

    async def test_unbuffered_send_waits_for_the_receiver_in_a_handoff(
        self, channels: ChannelMaker
    ) -> None:
        tx, rx = await channels.make(0)
        received = []

        async def receiver() -> None:
            received.append(await rx.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await channels.settle()
            await _returns_within(lambda: tx.send(1))
            # The send returned, so the receiver holds the value (it may not have run yet).
        assert received == [1]

    @pytest.mark.parametrize("capacity", [1, 3, 16])
    async def test_capacity_is_honoured(self, channels: ChannelMaker, capacity: int) -> None:
        tx, rx = await channels.make(capacity)
        for i in range(capacity):
            await _returns_within(lambda i=i: tx.send(i), 5)  # type: ignore[misc]
        blocked_send_done = anyio.Event()

        async def one_too_many() -> None:
            await tx.send(capacity)
            blocked_send_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(one_too_many)
            await channels.settle()
            assert not blocked_send_done.is_set(), "a send beyond capacity did not wait"
            assert await _returns_within(rx.receive) == 0
            await _returns_within(blocked_send_done.wait)
        for i in range(1, capacity + 1):
            assert await _returns_within(rx.receive) == i

    async def test_unbounded_channel_never_blocks_a_sender(self, channels: ChannelMaker) -> None:
        tx, rx = await channels.make(math.inf)
        with anyio.fail_after(BOUND):
            for i in range(1000):
                await tx.send(i)
            assert [await rx.receive() for _ in range(1000)] == list(range(1000))

    @pytest.mark.parametrize("capacity", [0, 1, 16, math.inf])
    async def test_values_from_one_sender_arrive_in_order(
        self, channels: ChannelMaker, capacity: float
    ) -> None:
        tx, rx = await channels.make(capacity)
        count = 300
        received: list[int] = []

        async def sender() -> None:
            for i in range(count):
                await tx.send(i)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                for _ in range(count):
                    received.append(await rx.receive())
        assert received == list(range(count))

    # --- close ---------------------------------------------------------------------------

    async def test_close_drains_the_buffer_then_raises(self, channels: ChannelMaker) -> None:
        tx, rx = await channels.make(3)
        for value in "abc":
            await _returns_within(lambda v=value: tx.send(v))  # type: ignore[misc]
        tx.close()
        assert [await _returns_within(rx.receive) for _ in range(3)] == ["a", "b", "c"]
        with pytest.raises(qchan.ChannelClosed):
            await _returns_within(rx.receive)
        with pytest.raises(qchan.ChannelClosed):
            await _returns_within(rx.receive)  # and keeps raising

    async def test_async_for_ends_when_closed_and_drained(self, channels: ChannelMaker) -> None:
        tx, rx = await channels.make(0)
        received = []

        async def producer() -> None:
            for i in range(10):
                await tx.send(i)
            tx.close()

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(producer)
                async for value in rx:
                    received.append(value)
        assert received == list(range(10))

    async def test_send_on_a_closed_channel_raises(self, channels: ChannelMaker) -> None:
        tx, _ = await channels.make(5)
        tx.close()
        tx.close()  # idempotent
        with pytest.raises(qchan.ChannelClosed):
            await _returns_within(lambda: tx.send(1))
        await channels.settle()
        with pytest.raises(qchan.ChannelClosed):
            tx.send_nowait(1)

    @pytest.mark.parametrize("capacity", [0, 2])
    async def test_close_wakes_blocked_receivers(
        self, channels: ChannelMaker, capacity: int
    ) -> None:
        tx, rx = await channels.make(capacity)
        outcomes: list[str] = []

        async def receiver() -> None:
            try:
                await rx.receive()
                outcomes.append("received")
            except qchan.ChannelClosed:
                outcomes.append("closed")

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(receiver)
                await channels.settle()
                tx.close()
        assert outcomes == ["closed"] * 5

    @pytest.mark.parametrize("capacity", [0, 2])
    async def test_close_fails_blocked_senders_and_drops_their_values(
        self, channels: ChannelMaker, capacity: int
    ) -> None:
        tx, rx = await channels.make(capacity)
        for i in range(capacity):
            await _returns_within(lambda i=i: tx.send(("buffered", i)))  # type: ignore[misc]
        outcomes: list[str] = []

        async def sender(i: int) -> None:
            try:
                await tx.send(("blocked", i))
                outcomes.append("sent")
            except qchan.ChannelClosed:
                outcomes.append("closed")

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(sender, i)
                await channels.settle()
                tx.close()
            drained = [await rx.receive() for _ in range(capacity)]
            with pytest.raises(qchan.ChannelClosed):
                await rx.receive()
        assert outcomes == ["closed"] * 5
        assert drained == [("buffered", i) for i in range(capacity)]

    # --- many tasks, exactly once ------------------------------------------------------------

    @pytest.mark.parametrize("capacity", [0, 1, 8])
    async def test_many_senders_and_receivers_each_value_exactly_once(
        self, channels: ChannelMaker, capacity: int
    ) -> None:
        tx, rx = await channels.make(capacity)
        senders, per_sender, receivers = 6, 150, 5
        received: list[tuple[int, int]] = []

        async def sender(s: int) -> None:
            for i in range(per_sender):
                await tx.send((s, i))

        async def receiver() -> None:
            async for value in rx:
                received.append(tuple(value))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as outer:
                for _ in range(receivers):
                    outer.start_soon(receiver)
                async with anyio.create_task_group() as tg:
                    for s in range(senders):
                        tg.start_soon(sender, s)
                tx.close()
        assert Counter(received) == Counter(
            (s, i) for s in range(senders) for i in range(per_sender)
        )

    @pytest.mark.parametrize("capacity", [0, 1, 4])
    async def test_cancelled_sends_and_receives_lose_and_duplicate_nothing(
        self, channels: ChannelMaker, capacity: int
    ) -> None:
        tx, rx = await channels.make(capacity)
        rng = random.Random(capacity)
        sent: list[int] = []  # sends that returned normally
        received: list[int] = []  # receives that returned normally
        senders, per_sender = 6, 60

        async def sender(s: int) -> None:
            for i in range(per_sender):
                value = s * 1000 + i
                with anyio.move_on_after(rng.choice([0, 0.0005, 0.002, 0.01])):
                    await tx.send(value)
                    sent.append(value)

        async def receiver() -> None:
            while True:
                with anyio.move_on_after(rng.choice([0, 0.0005, 0.002, 0.01])):
                    try:
                        value = await rx.receive()
                    except qchan.ChannelClosed:
                        return
                    received.append(value)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as outer:
                for _ in range(4):
                    outer.start_soon(receiver)
                async with anyio.create_task_group() as tg:
                    for s in range(senders):
                        tg.start_soon(sender, s)
                tx.close()
        assert len(received) == len(set(received)), "a value was received twice"
        # Every value whose send returned was received; no value whose send was cancelled was.
        assert sorted(received) == sorted(sent)
        assert 0 < len(sent) < senders * per_sender, "the test should cancel some sends"

    # --- select ------------------------------------------------------------------------------

    async def test_select_does_exactly_one_ready_receive(self, channels: ChannelMaker) -> None:
        (atx, arx), (btx, brx) = await channels.make(1), await channels.make(1)
        for _ in range(50):
            await _returns_within(lambda: atx.send("a"))
            await _returns_within(lambda: btx.send("b"))
            await channels.settle()
            i, value, ok = await _returns_within(
                lambda: qchan.select(qchan.recv(arx), qchan.recv(brx))
            )
            assert ok
            assert value == "ab"[i]
            # the other case did not happen: its value is still there, and only it
            other = brx if i == 0 else arx
            assert await _returns_within(other.receive) == "ba"[i]
            for rx_ in (arx, brx):
                with pytest.raises(qchan.WouldBlock):
                    rx_.receive_nowait()

    async def test_select_does_exactly_one_send(self, channels: ChannelMaker) -> None:
        (atx, arx), (btx, brx) = await channels.make(0), await channels.make(0)

        async def receive_into(got: list[Any], name: str, rx: ReceiveChannel[Any]) -> None:
            got.append((name, await rx.receive()))

        for trial in range(30):
            got: list[tuple[str, Any]] = []
            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive_into, got, "a", arx)
                    tg.start_soon(receive_into, got, "b", brx)
                    await channels.settle()
                    i, value, ok = await qchan.select(
                        qchan.send(atx, trial), qchan.send(btx, trial)
                    )
                    assert (value, ok) == (None, True)
                    await channels.settle()
                    assert got == [("ab"[i], trial)], "a select did more or less than one case"
                    # release the other receiver
                    await (btx if i == 0 else atx).send("release")

    async def test_select_waits_then_takes_the_first_case_to_become_ready(
        self, channels: ChannelMaker
    ) -> None:
        (atx, arx), (btx, brx) = await channels.make(0), await channels.make(0)
        result: list[tuple[int, Any, bool]] = []

        async def selector() -> None:
            result.append(await qchan.select(qchan.recv(arx), qchan.recv(brx)))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(selector)
                await channels.settle()
                assert result == []
                await btx.send("late")
        assert result == [(1, "late", True)]
        assert await _nobody_takes(atx), "the losing case was left queued"

    async def test_select_mixes_send_and_receive_cases(self, channels: ChannelMaker) -> None:
        (_, jobs_rx), (out_tx, out_rx) = await channels.make(0), await channels.make(0)

        async def consumer() -> None:
            assert await out_rx.receive() == "result"

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await channels.settle()
                i, _, _ = await qchan.select(qchan.recv(jobs_rx), qchan.send(out_tx, "result"))
        assert i == 1

    @pytest.mark.parametrize("cases", [2, 3])
    async def test_select_chooses_uniformly_among_ready_cases(
        self, channels: ChannelMaker, cases: int
    ) -> None:
        pairs = [await channels.make(1) for _ in range(cases)]
        trials = 300
        counts = Counter[int]()
        with anyio.fail_after(BOUND * 2):
            for tx, _ in pairs:
                await tx.send("x")
            for _ in range(trials):
                await channels.settle()
                i, _, _ = await qchan.select(*(qchan.recv(rx) for _, rx in pairs))
                counts[i] += 1
                await pairs[i][0].send("x")  # make it ready again
        # Binomial(trials, 1/cases) per case: allow 5 standard deviations (false alarm ~1e-6).
        expected = trials / cases
        sigma = math.sqrt(trials * (1 / cases) * (1 - 1 / cases))
        for i in range(cases):
            assert abs(counts[i] - expected) < 5 * sigma, counts

    async def test_select_default_returns_at_once_and_does_nothing(
        self, channels: ChannelMaker
    ) -> None:
        (atx, arx), (btx, brx) = await channels.make(0), await channels.make(0)
        result = await _returns_within(
            lambda: qchan.select(qchan.recv(arx), qchan.send(btx, 1), default=True), 5
        )
        assert result == (-1, None, False)

        # neither case left anything queued behind
        assert await _nothing_arrives(brx)
        assert await _nobody_takes(atx)

    async def test_select_on_a_closed_channel_gives_ok_false(self, channels: ChannelMaker) -> None:
        (atx, arx), (_, brx) = await channels.make(0), await channels.make(0)
        atx.close()
        await channels.settle()
        assert await _returns_within(lambda: qchan.select(qchan.recv(arx), qchan.recv(brx))) == (
            0,
            None,
            False,
        )

    async def test_select_sees_a_close_while_waiting(self, channels: ChannelMaker) -> None:
        (atx, arx), (_, brx) = await channels.make(2), await channels.make(0)
        result: list[tuple[int, Any, bool]] = []

        async def selector() -> None:
            result.append(await qchan.select(qchan.recv(arx), qchan.recv(brx)))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(selector)
                await channels.settle()
                atx.close()
        assert result == [(0, None, False)]

    async def test_select_send_on_a_closed_channel_raises(self, channels: ChannelMaker) -> None:
        (atx, _), (_, brx) = await channels.make(0), await channels.make(0)
        atx.close()
        await channels.settle()
        with pytest.raises(qchan.ChannelClosed):
            await _returns_within(lambda: qchan.select(qchan.send(atx, 1), qchan.recv(brx)))

    async def test_cancelled_select_takes_and_gives_nothing(self, channels: ChannelMaker) -> None:
        (atx, arx), (btx, brx) = await channels.make(0), await channels.make(0)
        with anyio.move_on_after(0.1) as scope:
            await qchan.select(qchan.recv(arx), qchan.send(btx, "never"))
        assert scope.cancelled_caught
        await channels.settle()
        # Nothing of the select is left behind: no queued send, no queued receive.
        assert await _nothing_arrives(brx)
        assert await _nobody_takes(atx)

    async def test_select_with_cancellation_races_loses_nothing(
        self, channels: ChannelMaker
    ) -> None:
        (atx, arx), (btx, brx) = await channels.make(0), await channels.make(1)
        rng = random.Random(7)
        sent: list[int] = []
        received: list[int] = []

        async def sender(base: int) -> None:
            for i in range(80):
                value = base + i
                with anyio.move_on_after(rng.choice([0, 0.001, 0.005])):
                    await qchan.select(qchan.send(atx, value), qchan.send(btx, value))
                    sent.append(value)

        async def receiver() -> None:
            # Until both are closed and drained: one that is closed drops out of the select
            # (Go's nil channel), or the values still buffered in the other would be left.
            receiving = [arx, brx]
            while receiving:
                with anyio.move_on_after(rng.choice([0, 0.001, 0.005])):
                    index, value, ok = await qchan.select(*map(qchan.recv, receiving))
                    if not ok:
                        del receiving[index]
                        continue
                    received.append(value)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as outer:
                for _ in range(3):
                    outer.start_soon(receiver)
                async with anyio.create_task_group() as tg:
                    for base in (0, 1000, 2000):
                        tg.start_soon(sender, base)
                atx.close()
                btx.close()
        assert len(received) == len(set(received)), "a value was received twice"
        assert sorted(received) == sorted(sent)
