"""What the load tests measure: file descriptors, tasks, traced memory and a node's tables."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import sniffio

import qchan

__all__ = [
    "Footprint",
    "fd_count",
    "footprint",
    "make_node",
    "rss",
    "task_count",
    "tables",
    "traced_bytes",
    "wait_for",
]


def make_node(cluster_key: qchan.ClusterKey, name: str, **kwargs: Any) -> qchan.Node:
    """A node on 127.0.0.1 with the default heartbeats: a loaded event loop can be slow to
    answer a ping, and these tests are about leaks, not about failure detection."""
    return qchan.Node(cluster_key=cluster_key, name=name, **kwargs)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    """Tasks alive in the running event loop (asyncio or trio)."""
    if sniffio.current_async_library() == "trio":
        import trio

        root = trio.lowlevel.current_root_task()
        assert root is not None
        count, stack = 0, [root]
        while stack:
            task = stack.pop()
            count += 1
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return count
    return len(asyncio.all_tasks())


def rss() -> int:
    """The resident set size, in bytes, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def traced_bytes() -> int:
    """Memory allocated and still alive, after a full collection (tracemalloc must run)."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def tables(node: qchan.Node) -> dict[str, int]:
    """The sizes of a node's internal tables, summed over its peers and their links."""
    peers = list(node._peers.values())
    sessions = [s for p in peers for s in p.sessions]
    return {
        "peers": len(peers),
        "links": len(sessions),
        "ops": sum(len(s.ops) for s in sessions),
        "home_ops": sum(len(s.home_ops) for s in sessions),
        "lookups": sum(len(s.lookups) for s in sessions),
        "grants": sum(len(s.grants) for s in sessions),
        "opened": sum(len(s.opened) for s in sessions),
        "parked": sum(len(p.parked) for p in peers),
        "endpoints": sum(len(p.endpoints) for p in peers),
        "streaming": sum(len(p.streaming) for p in peers),
        "credit_accounts": sum(len(p.credit_accounts) for p in peers),
        "pending_releases": sum(len(p.pending_releases) for p in peers),
        "exports": len(node.exports),
        "exports_weak": len(node.exports._weak),
        "holders": len(node.exports._holders),
    }


@dataclass(frozen=True)
class Footprint:
    fds: int
    tasks: int
    memory: int  # traced bytes (0 when tracemalloc is off)

    def grown(self, since: Footprint) -> dict[str, int]:
        return {
            "fds": self.fds - since.fds,
            "tasks": self.tasks - since.tasks,
            "memory": self.memory - since.memory,
        }


def footprint() -> Footprint:
    memory = traced_bytes() if tracemalloc.is_tracing() else 0
    return Footprint(fd_count(), task_count(), memory)


async def wait_for(condition: Callable[[], object], within: float = 20.0) -> None:
    """Poll ``condition`` until it is true; TimeoutError after ``within`` seconds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - callbacks change the state polled here
            await anyio.sleep(0.01)


async def settled(condition: Callable[[], bool], within: float = 20.0) -> None:
    """Wait until ``condition`` holds, then a little more for writes and closes to land."""
    await wait_for(condition, within)
    await calm()


async def tables_back(*pairs: tuple[qchan.Node, dict[str, int]], within: float = 20.0) -> None:
    """Wait until every node's tables are as they were (AssertionError with the difference)."""

    def back() -> bool:
        return all(tables(node) == baseline for node, baseline in pairs)

    try:
        await wait_for(back, within)
    except TimeoutError:
        differences = {
            node.name: {
                k: (v, tables(node)[k]) for k, v in baseline.items() if tables(node)[k] != v
            }
            for node, baseline in pairs
        }
        raise AssertionError(f"tables not back to baseline (was, now): {differences}") from None
    await calm()


async def calm() -> None:
    """Let frames in flight land and closes finish."""
    for _ in range(5):
        await anyio.sleep(0.02)
        await anyio.wait_all_tasks_blocked()
