"""Random interleavings of send, receive, select, close and cancel, checked against a model.

The model is a direct transcription of Go's channel rules for two channels: a buffer, FIFO
queues of waiting senders and receivers, close semantics. Each action runs on the real
channels, every task is allowed to run as far as it can, and then the set of finished tasks
and their results must be exactly what the model predicts. Where Go allows a choice (a select
with several ready cases) the model checks that the real choice was one of the legal ones and
follows it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qchan

CHANNELS = 2
Case = tuple[str, int]  # ("recv", channel) or ("send", channel)
# A case is ("recv", channel) or ("send", channel); select takes a non-empty list of them.
case_strategy = st.tuples(st.sampled_from(["recv", "send"]), st.integers(0, CHANNELS - 1))
action_strategy = st.one_of(
    st.tuples(st.just("start"), st.lists(case_strategy, min_size=1, max_size=3)),
    st.tuples(st.just("poll"), st.lists(case_strategy, min_size=1, max_size=3)),
    st.tuples(st.just("close"), st.integers(0, CHANNELS - 1)),
    st.tuples(st.just("cancel"), st.integers(0, 10)),
)

# ("case", (kind, channel), value, ok) | ("closed-error",) | ("cancelled",). A case is named by
# what it does rather than its index: a select may hold two equal cases, and which of the two
# queues first is the implementation's (random) choice.
Outcome = tuple[Any, ...]


@dataclass
class ModelChannel:
    capacity: int
    buffer: list[int] = field(default_factory=list)
    closed: bool = False
    senders: list[tuple[int, Case, int]] = field(default_factory=list)  # (task, case, value)
    receivers: list[tuple[int, Case]] = field(default_factory=list)  # (task, case)


class Model:
    """Go's rules, spelled out. Tasks are numbered; ``outcomes`` holds finished ones."""

    def __init__(self, capacities: list[int]) -> None:
        self.channels = [ModelChannel(c) for c in capacities]
        self.outcomes: dict[int, Outcome] = {}
        self.pending: set[int] = set()

    def _finish(self, task: int, outcome: Outcome) -> None:
        self.pending.discard(task)
        self.outcomes[task] = outcome
        for ch in self.channels:  # a finished select leaves no case behind
            ch.senders = [s for s in ch.senders if s[0] != task]
            ch.receivers = [r for r in ch.receivers if r[0] != task]

    def ready(self, task: int, cases: list[Case]) -> list[int]:
        """Indexes of the cases that can happen now."""
        result = []
        for index, (kind, c) in enumerate(cases):
            ch = self.channels[c]
            if kind == "recv":
                others = [s for s in ch.senders if s[0] != task]
                if ch.buffer or others or ch.closed:
                    result.append(index)
            else:
                others_r = [r for r in ch.receivers if r[0] != task]
                if ch.closed or others_r or len(ch.buffer) < ch.capacity:
                    result.append(index)
        return result

    def do(self, task: int, cases: list[Case], index: int, value: int) -> Outcome:
        """Perform ready case ``index`` for ``task`` and return the outcome it must have."""
        kind, c = cases[index]
        ch = self.channels[c]
        if kind == "recv":
            if ch.buffer:
                got = ch.buffer.pop(0)
                if ch.senders:  # a slot came free: the first waiting sender moves in
                    s_task, s_case, s_value = ch.senders[0]
                    ch.buffer.append(s_value)
                    self._finish(s_task, ("case", s_case, None, True))
                return ("case", cases[index], got, True)
            others = [s for s in ch.senders if s[0] != task]
            if others:
                s_task, s_case, s_value = others[0]
                self._finish(s_task, ("case", s_case, None, True))
                return ("case", cases[index], s_value, True)
            return ("case", cases[index], None, False)  # closed and drained
        if ch.closed:
            return ("closed-error",)
        others_r = [r for r in ch.receivers if r[0] != task]
        if others_r:
            r_task, r_case = others_r[0]
            self._finish(r_task, ("case", r_case, value, True))
        else:
            ch.buffer.append(value)
        return ("case", cases[index], None, True)

    def wait(self, task: int, cases: list[Case], value: int) -> None:
        self.pending.add(task)
        for case in cases:
            if case[0] == "recv":
                self.channels[case[1]].receivers.append((task, case))
            else:
                self.channels[case[1]].senders.append((task, case, value))

    def close(self, c: int) -> None:
        ch = self.channels[c]
        if ch.closed:
            return
        ch.closed = True
        for r_task, r_case in list(ch.receivers):
            if r_task in self.pending:
                self._finish(r_task, ("case", r_case, None, False))
        for s_task, _, _ in list(ch.senders):
            if s_task in self.pending:
                self._finish(s_task, ("closed-error",))

    def cancel(self, task: int) -> None:
        self._finish(task, ("cancelled",))


async def run_actions(actions: list[Any], capacities: list[int]) -> None:
    model = Model(capacities)
    channels: list[qchan.Channel[int]] = [qchan.Channel(c) for c in capacities]
    real: dict[int, Outcome] = {}
    scopes: dict[int, anyio.CancelScope] = {}
    values = itertools.count(100)

    def make_cases(cases: list[Case], value: int) -> list[Any]:
        return [
            qchan.recv(channels[c]) if kind == "recv" else qchan.send(channels[c], value)
            for kind, c in cases
        ]

    async def run_select(task: int, described: list[Case], cases: list[Any]) -> None:
        with anyio.CancelScope() as scope:
            scopes[task] = scope
            try:
                index, got, ok = await qchan.select(*cases)
                real[task] = ("case", described[index], got, ok)
            except qchan.ChannelClosed:
                real[task] = ("closed-error",)
            return
        real[task] = ("cancelled",)

    async with anyio.create_task_group() as tg:
        for task, (verb, arg) in enumerate(actions):
            if verb in ("start", "poll"):
                value = next(values)
                ready = model.ready(task, arg)
                if verb == "poll":
                    try:
                        index, got, ok = await qchan.select(*make_cases(arg, value), default=True)
                    except qchan.ChannelClosed:
                        outcome: Outcome = ("closed-error",)
                    else:
                        if not ready:
                            assert (index, got, ok) == (-1, None, False)
                            continue
                        outcome = ("case", arg[index], got, ok)
                    chosen = _chosen_case(model, outcome, arg, ready)
                    assert outcome == model.do(task, arg, chosen, value), (arg, outcome)
                    continue
                tg.start_soon(run_select, task, arg, make_cases(arg, value))
                await anyio.wait_all_tasks_blocked()
                if not ready:
                    model.wait(task, arg, value)
                    assert task not in real, f"task {task} finished with no ready case"
                else:
                    assert task in real, f"task {task} had a ready case but waits"
                    chosen = _chosen_case(model, real[task], arg, ready)
                    model.outcomes[task] = model.do(task, arg, chosen, value)
            elif verb == "close":
                channels[arg].close()
                model.close(arg)
            else:  # cancel the arg-th pending task, if there is one
                pending = sorted(model.pending)
                if pending:
                    victim = pending[arg % len(pending)]
                    scopes[victim].cancel()
                    model.cancel(victim)
            await anyio.wait_all_tasks_blocked()
            assert real == model.outcomes
        tg.cancel_scope.cancel()  # tasks still waiting are not part of the comparison


def _chosen_case(model: Model, outcome: Outcome, cases: list[Case], ready: list[int]) -> int:
    """Which case the real select did; it must be one the model says was ready."""
    if outcome == ("closed-error",):
        closed_sends = [
            i for i in ready if cases[i][0] == "send" and model.channels[cases[i][1]].closed
        ]
        assert closed_sends, "ChannelClosed from a select with no ready send case"
        return closed_sends[0]
    assert outcome[0] == "case"
    matching = [i for i in ready if cases[i] == outcome[1]]
    assert matching, f"select did {outcome[1]}, but only {[cases[i] for i in ready]} were ready"
    return matching[0]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(action_strategy, max_size=30),
    capacities=st.lists(st.integers(0, 2), min_size=CHANNELS, max_size=CHANNELS),
)
def test_random_interleavings_match_the_model(
    backend: str, actions: list[Any], capacities: list[int]
) -> None:
    anyio.run(run_actions, actions, capacities, backend=backend)
