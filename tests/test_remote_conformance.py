"""The conformance suite, unchanged, against remote handles: two nodes over real TCP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import qchan
from qchan import ReceiveChannel, SendChannel
from tests.conformance import ChannelConformance

_names = itertools.count()


class TwoNodes:
    """Channels hosted on node ``home`` and used from node ``away`` (or locally)."""

    def __init__(self, home: qchan.Node, away: qchan.Node, sender: str, receiver: str) -> None:
        self.home, self.away = home, away
        self.sender, self.receiver = sender, receiver

    async def make(self, capacity: float) -> tuple[SendChannel[Any], ReceiveChannel[Any]]:
        channel: qchan.Channel[Any] = qchan.Channel(capacity)
        name = f"conformance-{next(_names)}"
        self.home.register(name, channel)
        remote = await self.away.lookup(name, timeout=5)
        tx = remote if self.sender == "remote" else channel
        rx = remote if self.receiver == "remote" else channel
        return tx, rx

    async def settle(self) -> None:
        # Let frames in flight land and their handlers run.
        for _ in range(2):
            await anyio.sleep(0.003)
            await anyio.wait_all_tasks_blocked()


async def _two_nodes(sender: str, receiver: str) -> AsyncIterator[TwoNodes]:
    cluster_key = qchan.ClusterKey.generate()
    async with qchan.Node(cluster_key=cluster_key, name="home") as home:
        away = qchan.Node(cluster_key=cluster_key, name="away", peers=[home.address])
        async with away:
            yield TwoNodes(home, away, sender, receiver)


class TestBothEndsRemote(ChannelConformance):
    @pytest.fixture
    async def channels(self) -> AsyncIterator[TwoNodes]:
        async for nodes in _two_nodes("remote", "remote"):
            yield nodes


class TestRemoteSenderLocalReceiver(ChannelConformance):
    """(One backend per mixed arrangement: both are covered by TestBothEndsRemote.)"""

    @pytest.fixture(params=["asyncio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def channels(self) -> AsyncIterator[TwoNodes]:
        async for nodes in _two_nodes("remote", "local"):
            yield nodes


class TestLocalSenderRemoteReceiver(ChannelConformance):
    @pytest.fixture(params=["trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def channels(self) -> AsyncIterator[TwoNodes]:
        async for nodes in _two_nodes("local", "remote"):
            yield nodes
