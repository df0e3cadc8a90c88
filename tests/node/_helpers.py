"""What the node tests share: nodes with short heartbeats, polling, and a frame recorder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import anyio
import pytest

import qchan
from qchan._session import Session
from qchan.protocol.frames import Frame

#: Heartbeat settings short enough that a dead peer is noticed well within a test.
HEARTBEAT: Final = 0.2
PEER_TIMEOUT: Final = 0.6


def make_node(cluster_key: qchan.ClusterKey, name: str, **kwargs: Any) -> qchan.Node:
    """A node on 127.0.0.1 (a free port unless ``listen`` says otherwise), short heartbeats."""
    kwargs.setdefault("heartbeat_interval", HEARTBEAT)
    kwargs.setdefault("peer_timeout", PEER_TIMEOUT)
    return qchan.Node(cluster_key=cluster_key, name=name, **kwargs)


async def wait_for(condition: Callable[[], object], within: float = 5.0) -> None:
    """Poll ``condition`` every 5 ms until it is true; TimeoutError after ``within`` s."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - callbacks change the state polled here
            await anyio.sleep(0.005)


async def settle(rounds: int = 3) -> None:
    """Give frames in flight on loopback time to land and their handlers time to run."""
    for _ in range(rounds):
        await anyio.sleep(0.005)
        await anyio.wait_all_tasks_blocked()


def connected_to(node: qchan.Node, other: qchan.Node) -> bool:
    return any(p.public_key == other.public_key and p.connected for p in node.peers())


class FrameLog:
    """Every frame a node's sessions are handed, as ``(receiving node, sending peer, frame)``."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, Frame]] = []

    def kinds_at(self, node: qchan.Node) -> list[int]:
        return [frame[0] for at, _, frame in self.entries if at == node.name]

    def clear(self) -> None:
        self.entries.clear()


@contextmanager
def recording_frames(monkeypatch: pytest.MonkeyPatch) -> Iterator[FrameLog]:
    """Record the frames every session receives (install before the nodes link up)."""
    log = FrameLog()
    original = Session.on_frames

    def on_frames(self: Session, frames: list[Frame]) -> None:
        for frame in frames:
            log.entries.append((self.node.name, self.peer.name, list(frame)))
        original(self, frames)

    with monkeypatch.context() as patch:
        patch.setattr(Session, "on_frames", on_frames)
        yield log
