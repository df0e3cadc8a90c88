"""Busy polling (asyncio and uvloop): only while messages flow, never longer than its window."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qchan.protocol import Kind
from qchan.transport import Transport
from qchan.transport._asyncio import BusyPoller

from ._helpers import Server, connect, listen, wait_for

pytestmark = pytest.mark.anyio

BACKENDS = ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
WINDOW = 0.005


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
async def test_a_lone_read_does_not_poll(anyio_backend: Any) -> None:
    poller = BusyPoller(asyncio.get_running_loop(), WINDOW)
    poller.read()
    assert not polling(poller)
    time.sleep(2 * WINDOW)  # noqa: ASYNC251 - a quiet link, not a turn of the loop
    poller.wrote()
    time.sleep(2 * WINDOW)  # noqa: ASYNC251
    poller.read()  # a read long after the last I/O: the peer answers slowly, or rarely
    assert not polling(poller)


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_reads_that_follow_closely_poll_for_the_window_then_stop(anyio_backend: Any) -> None:
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
async def test_writes_while_polling_extend_it(anyio_backend: Any) -> None:
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
async def test_a_links_reads_and_writes_drive_its_transports_poller(anyio_backend: Any) -> None:
    server = Server(on_frame=lambda link, frame: link.send([Kind.ACK, frame[1]]))
    async with Transport(busy_poll=WINDOW) as transport:
        poller = transport._poller
        assert poller is not None
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        acks: list[int] = []
        link.start(lambda frames: acks.extend(f[1] for f in frames), lambda error: None)
        await turns_polled(poller, within=1.0)  # (the handshake's messages)
        time.sleep(2 * WINDOW)  # noqa: ASYNC251 - quiet
        link.send([Kind.RECV, 1, 7])  # answered at once: messages flow
        await wait_for(lambda: acks == [1])
        assert polling(poller)
        assert await turns_polled(poller, within=1.0) > 0
        assert not polling(poller)


async def test_off_means_no_poller() -> None:
    async with Transport(busy_poll=0.0) as transport:
        assert transport._poller is None
