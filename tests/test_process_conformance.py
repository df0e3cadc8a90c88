"""The conformance suite, unchanged, against channels hosted in another OS process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import qchan
from qchan import ReceiveChannel, SendChannel
from tests.conformance import ChannelConformance

ROOT = Path(__file__).parents[1]


class OtherProcess:
    """Channels made by a node in a child process, used from a node in this one."""

    def __init__(self, factory: qchan.Channel[Any]) -> None:
        self.factory = factory

    async def make(self, capacity: float) -> tuple[SendChannel[Any], ReceiveChannel[Any]]:
        reply: qchan.Channel[qchan.Channel[Any]] = qchan.Channel()
        await self.factory.send((capacity, reply))
        with anyio.fail_after(10):
            remote = await reply.receive()
        return remote, remote

    async def settle(self) -> None:
        for _ in range(2):
            await anyio.sleep(0.005)
            await anyio.wait_all_tasks_blocked()


class TestChannelInAnotherProcess(ChannelConformance):
    @pytest.fixture
    async def channels(self, anyio_backend: str) -> AsyncIterator[OtherProcess]:
        cluster_key = qchan.ClusterKey.generate()
        child = subprocess.Popen(  # noqa: ASYNC220 (starting a process does not block)
            [
                sys.executable,
                "-m",
                "tests.procs.channel_factory",
                bytes(cluster_key).hex(),
                anyio_backend,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            with anyio.fail_after(20):
                address = (await anyio.to_thread.run_sync(child.stdout.readline)).strip()
            assert address, "the child node did not start"
            async with qchan.Node(cluster_key=cluster_key, peers=[address]) as node:
                factory = await node.lookup("factory@factory-node", timeout=10)
                yield OtherProcess(factory)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            assert child.stdout is not None
            child.stdout.close()
