"""Busy polling (asyncio and uvloop): only while messages flow, never longer than its window,
and not at all while other processes want the CPU."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qchan.protocol import Kind
from qchan.transport import Transport, _asyncio
from qchan.transport._asyncio import BusyPoller

from ._helpers import Server, connect, listen, wait_for

pytestmark = pytest.mark.anyio

BACKENDS = ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
WINDOW = 0.005


@pytest.fixture
def uncontended(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy test machine must not look like contention to the tests of the window."""
    monkeypatch.setattr(_asyncio, "_CONTENDED", 10.0)


def polling(poller: BusyPoller) -> bool:
    return poller._polling  # (a call: mypy would otherwise narrow the attribute for good)


async def turns_polled(poller: BusyPoller, within: float) -> int:
    """How many turns of the loop ran while ``poller`` was polling, waiting at most ``within``."""
    turns = 0
    deadline = time.perf_counter() + within
    while polling(poller) and time.perf_counter() < deadline:
        turns += 1
        await asyncio.sleep(0)
    return turns


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_a_lone_read_does_not_poll(anyio_backend: Any, uncontended: None) -> None:
    poller = BusyPoller(asyncio.get_running_loop(), WINDOW)
    poller.read()
    assert not polling(poller)
    time.sleep(2 * WINDOW)  # noqa: ASYNC251 - a quiet link, not a turn of the loop
    poller.wrote()
    time.sleep(2 * WINDOW)  # noqa: ASYNC251
    poller.read()  # a read long after the last I/O: the peer answers slowly, or rarely
    assert not polling(poller)


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_reads_that_follow_closely_poll_for_the_window_then_stop(
    anyio_backend: Any, uncontended: None
) -> None:
    poller = BusyPoller(asyncio.get_running_loop(), WINDOW)
    poller.wrote()
    started = time.perf_counter()
    poller.read()  # an answer, within the window of the request: messages are flowing
    assert polling(poller)
    turns = await turns_polled(poller, within=1.0)
    elapsed = time.perf_counter() - started
    assert not polling(poller), "still polling long after the window"
    assert turns > 1  # the loop kept turning instead of sleeping ...
    assert WINDOW <= elapsed < WINDOW + 0.5  # ... for the window, and then it stopped


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_writes_while_polling_extend_it(anyio_backend: Any, uncontended: None) -> None:
    poller = BusyPoller(asyncio.get_running_loop(), WINDOW)
    poller.wrote()
    poller.read()
    started = time.perf_counter()
    for _ in range(4):  # keep writing for about two windows
        await asyncio.sleep(WINDOW / 2)
        poller.wrote()
        assert polling(poller)
    await turns_polled(poller, within=1.0)
    assert time.perf_counter() - started >= 2 * WINDOW
    assert not polling(poller)


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_polling_backs_off_when_another_process_wants_the_cpu(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A yield that takes long is another process running on this CPU: stop, stay off a while.
    monkeypatch.setattr(_asyncio, "_yield_cpu", lambda: time.sleep(0.001))
    monkeypatch.setattr(_asyncio, "_BACK_OFF", 0.05)
    poller = BusyPoller(asyncio.get_running_loop(), 1.0)  # (a window that would last)
    poller.wrote()
    poller.read()
    assert polling(poller)
    assert await turns_polled(poller, within=0.5) <= 2  # the first contended turn ends it
    assert not polling(poller)
    poller.wrote()
    poller.read()  # messages flow, but the CPU was wanted a moment ago: still off
    assert not polling(poller)
    time.sleep(0.06)  # noqa: ASYNC251 - past the back-off
    poller.read()
    assert polling(poller)
    monkeypatch.setattr(_asyncio, "_yield_cpu", lambda: None)
    poller.window = 0.0  # (end it)
    await turns_polled(poller, within=0.5)


class RecordingPoller(BusyPoller):
    __slots__ = ("calls",)

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        super().__init__(loop, window)
        self.calls: list[str] = []

    def read(self) -> None:
        self.calls.append("read")
        super().read()

    def wrote(self) -> None:
        self.calls.append("wrote")
        super().wrote()


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_every_read_and_write_of_a_link_reaches_the_poller(anyio_backend: Any) -> None:
    server = Server(on_frame=lambda link, frame: link.send([Kind.ACK, frame[1]]))
    async with Transport(busy_poll=WINDOW) as transport:
        assert transport._poller is not None
        poller = transport._poller = RecordingPoller(asyncio.get_running_loop(), WINDOW)
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        acks: list[int] = []
        link.start(lambda frames: acks.extend(f[1] for f in frames), lambda error: None)
        await wait_for(lambda: server.links)
        await turns_polled(poller, within=1.0)  # (the handshake's messages)
        poller.calls.clear()
        link.send([Kind.RECV, 1, 7])  # both links share the poller: their four I/Os, in order
        await wait_for(lambda: acks == [1])
        assert poller.calls == ["wrote", "read", "wrote", "read"]


async def test_off_means_no_poller() -> None:
    async with Transport(busy_poll=0.0) as transport:
        assert transport._poller is None
