"""The conformance suite against local channels."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import qchan
from qchan import ReceiveChannel, SendChannel
from tests.conformance import ChannelConformance


class LocalChannels:
    async def make(self, capacity: float) -> tuple[SendChannel[Any], ReceiveChannel[Any]]:
        channel: qchan.Channel[Any] = qchan.Channel(capacity)
        return channel, channel

    async def settle(self) -> None:
        await anyio.wait_all_tasks_blocked()


class TestLocalChannel(ChannelConformance):
    @pytest.fixture
    def channels(self) -> LocalChannels:
        return LocalChannels()


class LocalViews(LocalChannels):
    async def make(self, capacity: float) -> tuple[SendChannel[Any], ReceiveChannel[Any]]:
        channel: qchan.Channel[Any] = qchan.Channel(capacity)
        return channel.sender(), channel.receiver()


class TestLocalViews(ChannelConformance):
    """The same semantics through send-only and receive-only views."""

    @pytest.fixture
    def channels(self) -> LocalViews:
        return LocalViews()
