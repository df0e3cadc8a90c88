"""select across channels hosted on different nodes, raced against cancellation, at random.

Three nodes: channel X is hosted on A, channel Y on C, and channel L is local to B. Tasks on
all three nodes run selects (and plain sends and receives) over random mixes of send and
receive cases on the channels they can reach, each under a random deadline, many short ones
already expired or expiring mid-handoff. What must hold whatever the interleaving:

- the multiset of values received equals the multiset of values whose send returned;
- nothing is received twice;
- no value whose send case did not happen (cancelled, or another case won) is received;
- afterwards no waiter is left queued at any home.

Each trial uses fresh channels with random capacities (0 and buffered). A trial's seed is in
every failure message; ``QCHAN_SELECT_SEED=<seed>`` reruns that trial's choices (the timing is
the machine's). A call that ignores its deadline is a failure (reported as overdue); it is
also freed after a grace period by receiving at the homes, so every trial ends; what those
receives get counts as received, so the tally stays exact.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

import qchan
from tests.node._helpers import make_node, settle, wait_for

pytestmark = pytest.mark.anyio

#: Wall-clock seconds of trials per backend (each trial then finishes); and at most this many.
BUDGET = 12.0
MAX_TRIALS = 60
ITERATIONS = 25
CAPACITIES = (0, 0, 1, 3)
#: A call may return this long after its deadline (a round trip to give a claimed case up).
GRACE = 1.0


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    not_sent: set[str] = field(default_factory=set)
    calls: int = 0
    cancelled: int = 0
    overdue: list[str] = field(default_factory=list)
    rescued: int = 0


# A case a task may use: ("send", handle) or ("recv", handle), with a label for messages.
CaseSpec = tuple[str, Any, str]


async def _task(
    name: str, specs: list[CaseSpec], rng: random.Random, tally: Tally, iterations: int
) -> None:
    """``iterations`` selects (or plain calls) over random subsets of ``specs``."""
    for n in range(iterations):
        chosen = rng.sample(specs, rng.randint(1, len(specs)))
        values = [f"{name}/{n}/{label}" if kind == "send" else None for kind, _, label in chosen]
        cases = [
            qchan.send(handle, value) if kind == "send" else qchan.recv(handle)
            for (kind, handle, _), value in zip(chosen, values, strict=True)
        ]
        roll = rng.random()
        timeout = 0.0 if roll < 0.15 else rng.uniform(0, 0.002 if roll < 0.6 else 0.02)
        plain = len(cases) == 1 and rng.random() < 0.5
        deadline = anyio.current_time() + timeout
        outcome: tuple[int, Any, bool] | None = None
        tally.calls += 1
        with anyio.move_on_after(timeout):
            if plain and chosen[0][0] == "send":
                await chosen[0][1].send(values[0])
                outcome = (0, None, True)
            elif plain:
                outcome = (0, await chosen[0][1].receive(), True)
            else:
                outcome = await qchan.select(*cases)
        # (No checkpoint between the call returning and this bookkeeping.)
        late = anyio.current_time() - deadline
        if late > GRACE:
            tally.overdue.append(f"{name}/{n} over {[c[2] for c in chosen]}: {late:.2f} s late")
        if outcome is None:
            tally.cancelled += 1
        for index, value in enumerate(values):
            if value is not None:
                if outcome is not None and outcome[0] == index:
                    tally.sent[value] += 1
                else:
                    tally.not_sent.add(value)
        if outcome is not None and values[outcome[0]] is None:
            index, value, ok = outcome
            assert ok, f"{name}: a receive saw a closed channel"
            tally.received[value] += 1


async def _drain(homes: list[qchan.Channel[Any]], tally: Tally, *, quiet_rounds: int = 3) -> None:
    """Receive at the homes until nothing has arrived for ``quiet_rounds`` settles."""
    quiet = 0
    while quiet < quiet_rounds:
        got = 0
        for channel in homes:
            while True:
                try:
                    value = channel.receive_nowait()
                except qchan.WouldBlock:
                    break
                tally.received[value] += 1
                got += 1
        quiet = 0 if got else quiet + 1
        await settle(2)


async def _rescue(homes: list[qchan.Channel[Any]], tally: Tally, after: float) -> None:
    """After ``after`` s, keep receiving at the homes: frees senders that ignore cancellation.

    Runs until cancelled. What it receives counts as received (it was sent).
    """
    await anyio.sleep(after)
    while True:
        for channel in homes:
            with anyio.move_on_after(0.01):
                value = await channel.receive()
                tally.received[value] += 1
                tally.rescued += 1


class Cluster:
    """A, B, C, each connected to the others."""

    async def start(self, stack: AsyncExitStack) -> None:
        ck = qchan.ClusterKey.generate()
        self.a = await stack.enter_async_context(make_node(ck, "A"))
        self.b = await stack.enter_async_context(make_node(ck, "B"))
        self.c = await stack.enter_async_context(make_node(ck, "C"))
        await self.b.connect(self.a.address)
        await self.b.connect(self.c.address)
        await self.c.connect(self.a.address)

    async def trial(self, seed: int, tally: Tally) -> None:
        rng = random.Random(seed)
        a, b, c = self.a, self.b, self.c
        x: qchan.Channel[Any] = qchan.Channel(rng.choice(CAPACITIES))
        y: qchan.Channel[Any] = qchan.Channel(rng.choice(CAPACITIES))
        local: qchan.Channel[Any] = qchan.Channel(rng.choice((0, 2)))
        a.register(f"x{seed}", x)
        c.register(f"y{seed}", y)
        x_at_b = await b.lookup(f"x{seed}")
        x_at_c = await c.lookup(f"x{seed}")
        y_at_a = await a.lookup(f"y{seed}")
        y_at_b = await b.lookup(f"y{seed}")

        def both(handle: Any, label: str) -> list[CaseSpec]:
            return [("send", handle, label + "!"), ("recv", handle, label + "?")]

        specs = {
            "A": both(x, "X@A") + both(y_at_a, "Y@A"),
            "B": both(x_at_b, "X@B") + both(y_at_b, "Y@B") + both(local, "L@B"),
            "C": both(x_at_c, "X@C") + both(y, "Y@C"),
        }
        tasks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        for node_name, node_specs in specs.items():
            for k in range(2):
                task_rng = random.Random(rng.random())

                async def run(
                    name: str = f"{seed}/{node_name}{k}",
                    s: list[CaseSpec] = node_specs,
                    r: random.Random = task_rng,
                ) -> None:
                    await _task(name, s, r, tally, ITERATIONS)

                tasks.append(run)
        homes = [x, y, local]
        with anyio.fail_after(20):
            async with anyio.create_task_group() as rescue:
                rescue.start_soon(_rescue, homes, tally, ITERATIONS * 0.02 + GRACE)
                async with anyio.create_task_group() as tg:
                    for task in tasks:
                        tg.start_soon(task)
                rescue.cancel_scope.cancel()
            # A round trip on every link that carried sends: each home has read them all.
            for node, name in ((b, "x"), (c, "x"), (a, "y"), (b, "y")):
                await node.lookup(f"{name}{seed}")
            await _drain(homes, tally)
        for channel, label in ((x, "X"), (y, "Y"), (local, "L")):
            stats = channel.statistics()
            assert (stats.waiting_senders, stats.waiting_receivers) == (0, 0), (
                f"seed {seed}: waiters left queued at {label}'s home: {stats}"
            )


def _seeds() -> list[int]:
    if "QCHAN_SELECT_SEED" in os.environ:
        return [int(os.environ["QCHAN_SELECT_SEED"])]
    base = random.randrange(2**32)
    return [base + i for i in range(MAX_TRIALS)]


async def _run_trials(tally: Tally) -> list[int]:
    done: list[int] = []
    async with AsyncExitStack() as stack:
        cluster = Cluster()
        await cluster.start(stack)
        started = anyio.current_time()
        for seed in _seeds():
            if anyio.current_time() - started > BUDGET:
                break
            trial = Tally()
            await cluster.trial(seed, trial)
            _check(trial, seed)
            done.append(seed)
            tally.calls += trial.calls
            tally.cancelled += trial.cancelled
            tally.sent += trial.sent
            tally.overdue += trial.overdue
            tally.rescued += trial.rescued
    return done


def _check(tally: Tally, seed: int) -> None:
    twice = [value for value, count in tally.received.items() if count > 1]
    assert not twice, f"seed {seed}: received more than once: {twice[:5]}"
    ghosts = sorted(set(tally.received) & tally.not_sent)
    assert not ghosts, f"seed {seed}: received, but their sends did not happen: {ghosts[:5]}"
    lost = sorted((tally.sent - tally.received).elements())
    assert not lost, f"seed {seed}: sent but never received: {lost[:5]}"
    extra = sorted((tally.received - tally.sent).elements())
    assert not extra, f"seed {seed}: received but never sent: {extra[:5]}"


async def test_select_across_nodes_never_loses_or_duplicates() -> None:
    tally = Tally()
    seeds = await _run_trials(tally)
    assert seeds, "no trial ran"
    # The trials did race: many calls, many of them cancelled, many values through.
    assert tally.calls >= len(seeds) * 6 * ITERATIONS
    assert tally.cancelled > tally.calls // 10
    assert sum(tally.sent.values()) > tally.calls // 10
    assert not tally.overdue, f"calls that ignored their deadline: {tally.overdue[:5]}"
    print(
        f"{len(seeds)} trials, {tally.calls} calls, {tally.cancelled} cancelled, "
        f"{sum(tally.sent.values())} sent, {tally.rescued} rescued, {len(tally.overdue)} overdue"
    )


# --- the same properties, one interleaving at a time -----------------------------------------


async def _two_nodes(stack: AsyncExitStack) -> tuple[qchan.Node, qchan.Node]:
    ck = qchan.ClusterKey.generate()
    a = await stack.enter_async_context(make_node(ck, "A"))
    b = await stack.enter_async_context(make_node(ck, "B"))
    await b.connect(a.address)
    return a, b


@pytest.mark.parametrize("other", ["local", "remote"])
async def test_a_select_with_a_remote_send_case_still_takes_another_ready_case(
    other: str,
) -> None:
    """Go: a select waiting on (send to remote X, receive from Z) receives when Z gets a sender."""
    with anyio.fail_after(10):
        async with AsyncExitStack() as stack:
            a, b = await _two_nodes(stack)
            x: qchan.Channel[Any] = qchan.Channel(0)
            a.register("x", x)
            x_at_b = await b.lookup("x")
            z: qchan.Channel[Any] = qchan.Channel(0)
            if other == "local":
                z_at_b: Any = z
            else:
                a.register("z", z)
                z_at_b = await b.lookup("z")
            outcome: list[Any] = []

            async def selecting() -> None:
                with anyio.move_on_after(1.5):
                    outcome.append(await qchan.select(qchan.send(x_at_b, "x"), qchan.recv(z_at_b)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(selecting)
                await anyio.sleep(0.2)  # the select waits on both cases now
                with anyio.move_on_after(0.5):
                    await z.send("z")  # nobody receives from X: only the select can take it
                tg.cancel_scope.cancel()
            assert outcome == [(1, "z", True)]
            # The losing send case was withdrawn at x's home (its CANCEL may still be on its way).
            await wait_for(lambda: x.statistics().waiting_senders == 0, within=2.0)


async def test_a_sender_whose_handoff_was_refused_can_still_be_cancelled() -> None:
    with anyio.fail_after(10):
        async with AsyncExitStack() as stack:
            a, b = await _two_nodes(stack)
            x: qchan.Channel[Any] = qchan.Channel(0)
            y: qchan.Channel[Any] = qchan.Channel(0)
            a.register("x", x)
            a.register("y", y)
            x_at_b, y_at_b = await b.lookup("x"), await b.lookup("y")
            returned: dict[str, tuple[str, float]] = {}
            deadline = 0.3

            async def send(channel: qchan.Channel[Any], value: str) -> None:
                started = anyio.current_time()
                with anyio.move_on_after(deadline) as scope:
                    await channel.send(value)
                outcome = "cancelled" if scope.cancelled_caught else "sent"
                returned[value] = (outcome, anyio.current_time() - started)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send, x, "x")
                tg.start_soon(send, y, "y")
                await anyio.sleep(0.1)  # both local sends wait at A
                # Both RECVs reach A together; A hands over both values; B takes one, refuses one.
                index, value, _ = await qchan.select(qchan.recv(x_at_b), qchan.recv(y_at_b))
                await anyio.sleep(deadline + 0.5)
                late = {"x", "y"} - set(returned)
                for channel in (x, y):  # free a sender that ignored its deadline
                    if channel.statistics().waiting_senders:
                        await channel.receive()
            taken, refused = ("x", "y") if index == 0 else ("y", "x")
            assert value == taken
            assert returned[taken][0] == "sent"
            assert not late, f"the send of {late} outlived its deadline of {deadline} s"
            assert returned[refused][0] == "cancelled"


async def test_a_select_whose_handoff_was_refused_still_waits_on_all_its_cases() -> None:
    with anyio.fail_after(10):
        async with AsyncExitStack() as stack:
            a, b = await _two_nodes(stack)
            x: qchan.Channel[Any] = qchan.Channel(0)
            y: qchan.Channel[Any] = qchan.Channel(0)
            a.register("x", x)
            a.register("y", y)
            x_at_b, y_at_b = await b.lookup("x"), await b.lookup("y")
            z: qchan.Channel[Any] = qchan.Channel(0)
            outcomes: dict[str, Any] = {}

            async def selecting(channel: qchan.Channel[Any], value: str) -> None:
                with anyio.move_on_after(1.0):
                    outcomes[value] = await qchan.select(qchan.send(channel, value), qchan.recv(z))

            async with anyio.create_task_group() as tg:
                tg.start_soon(selecting, x, "x")
                tg.start_soon(selecting, y, "y")
                await anyio.sleep(0.1)
                index, value, _ = await qchan.select(qchan.recv(x_at_b), qchan.recv(y_at_b))
                await anyio.sleep(0.1)  # the other handoff was refused by now
                with anyio.move_on_after(0.5):
                    await z.send("z")  # the select that did not send can still receive
                await anyio.sleep(0.5)  # past the selects' deadline
                for channel in (x, y):  # free a select that ignored its deadline
                    if channel.statistics().waiting_senders:
                        await channel.receive()
            refused = "y" if index == 0 else "x"
            assert outcomes[value] == (0, None, True)
            assert outcomes.get(refused) == (1, "z", True)
