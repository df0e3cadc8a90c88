"""Peers that cannot be reached, and leaks: nothing may outlive a closed link or listener."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import sniffio

from qchan._errors import PeerLost
from qchan.protocol import ConnectionConfig, Kind
from qchan.transport import Transport
from qchan.transport._errors import describe, lost, unreachable

from ._helpers import Inbox, Server, closed_port, connect, fd_count, listen, wait_for

pytestmark = pytest.mark.anyio


async def test_connect_to_a_closed_port() -> None:
    address = f"127.0.0.1:{closed_port()}"
    async with Transport() as transport:
        start = anyio.current_time()
        with pytest.raises(PeerLost, match=f"cannot reach {address}: connection refused") as caught:
            await connect(transport, address)
        assert anyio.current_time() - start < 1.0
        assert isinstance(caught.value.__cause__, OSError)


async def test_connect_to_a_missing_unix_socket(tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'nobody.sock'}"
    async with Transport() as transport:
        with pytest.raises(PeerLost, match=f"cannot reach {address}: no such socket file"):
            await connect(transport, address)


async def test_connect_to_an_unresolvable_host() -> None:
    async with Transport() as transport:
        with pytest.raises(PeerLost, match=r"cannot reach no-such-host\.invalid:80: "):
            await connect(
                transport,
                "no-such-host.invalid:80",
                config=ConnectionConfig(handshake_timeout=2.0),
            )


def test_error_mapping_table() -> None:
    assert describe(None) == "connection closed by the peer"
    assert describe(ConnectionResetError()) == "connection reset by the peer"
    assert describe(BrokenPipeError()) == "connection reset by the peer (broken pipe)"
    wrapped = anyio.BrokenResourceError()
    wrapped.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert describe(wrapped) == "connection reset by the peer"
    group = OSError("All connection attempts failed")
    group.__cause__ = ExceptionGroup("two", [ConnectionRefusedError(), OSError(101, "x")])
    assert describe(group) == "connection refused"
    assert describe(socket.gaierror(-2, "Name or service not known")).startswith("cannot resolve")
    assert describe(TimeoutError()) == "timed out"
    assert describe(OSError(113, "No route to host")) == "host unreachable"
    assert describe(anyio.BrokenResourceError()) == "connection broken"
    error = lost(ConnectionResetError())
    assert isinstance(error, PeerLost)
    assert isinstance(error.__cause__, ConnectionResetError)
    assert "wrong cluster key" in str(unreachable("h:1", None, handshaking=True))
    assert str(unreachable("h:1", None)) == "cannot reach h:1: connection closed by the peer"


def task_count() -> int:
    """Every task alive in this event loop (trio: walked from the root task)."""
    if sniffio.current_async_library() == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def timer_count() -> int:
    """Timer handles pending in the asyncio loop (0 on trio, whose timers are its tasks')."""
    if sniffio.current_async_library() != "asyncio":
        return 0
    loop = asyncio.get_running_loop()
    return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]


async def churn(transport: Transport, address: str) -> None:
    """Listen, link, exchange, break things, close everything."""
    server = Server(on_frame=lambda link, frame: link.send([Kind.ACK, frame[1]]))
    listener = await listen(transport, address, on_link=server)
    inboxes = [Inbox() for _ in range(4)]
    for inbox in inboxes:
        inbox.attach(await connect(transport, listener.address))
    for op, inbox in enumerate(inboxes):
        assert inbox.link is not None
        inbox.link.send([Kind.RECV, op, 0])
    await wait_for(lambda: all(inbox.frames for inbox in inboxes))
    assert inboxes[0].link is not None
    inboxes[0].link.close()  # we close one,
    await wait_for(lambda: len(server.links) == 4)
    server.links[1].close()  # they close one,
    half_open = await (
        anyio.connect_unix(address[5:])
        if address.startswith("unix:")
        else anyio.connect_tcp("127.0.0.1", int(listener.address.rpartition(":")[2]))
    )
    await anyio.sleep(0.02)  # accepted: handshaking
    await listener.aclose()  # the listener goes while a handshake is pending,
    for inbox in inboxes:  # and the rest go one by one
        assert inbox.link is not None
        inbox.link.close()
        await inbox.link.wait_closed()
    for link in server.links:
        await link.wait_closed()
    await half_open.aclose()


async def test_closed_links_and_listeners_leave_nothing_behind(tmp_path: Path) -> None:
    fds, tasks, timers = fd_count(), task_count(), timer_count()
    async with Transport() as transport:
        inside = task_count()
        await churn(transport, "127.0.0.1:0")
        await churn(transport, f"unix:{tmp_path / 'leak.sock'}")
        assert not transport.links
        await anyio.lowlevel.checkpoint()  # (some handles close one turn later)
        assert task_count() == inside
        assert timer_count() == timers
    assert task_count() == tasks
    assert fd_count() == fds
    assert not (tmp_path / "leak.sock").exists()


async def test_exiting_the_transport_leaves_nothing_behind() -> None:
    fds, tasks = fd_count(), task_count()
    async with Transport() as transport:
        server = Server()
        listener = await listen(transport, on_link=server)
        for _ in range(3):
            Inbox().attach(await connect(transport, listener.address))
        await wait_for(lambda: len(server.links) == 3)
    assert task_count() == tasks
    assert fd_count() == fds
