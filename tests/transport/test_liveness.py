"""Heartbeats (silent peers are lost in time, idle ones are kept) and backpressure."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from qchan._errors import PeerLost
from qchan.protocol import ConnectionConfig, Kind
from qchan.transport import Transport

from ._helpers import FAST, Inbox, RawPeer, Server, connect, listen, wait_for

pytestmark = pytest.mark.anyio

SLACK = 0.5


async def test_silent_dialler_is_lost_after_peer_timeout() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server, config=FAST)
        peer = await RawPeer.dial(listener.address)
        await peer.handshake()
        start = anyio.current_time()  # from here on the peer reads and says nothing
        await wait_for(lambda: server.inboxes and server.inboxes[0].errors, within=2)
        elapsed = anyio.current_time() - start
        error = server.inboxes[0].errors[0]
        assert isinstance(error, PeerLost)
        assert "no word from the peer" in str(error)
        assert FAST.peer_timeout - 0.05 <= elapsed <= FAST.peer_timeout + SLACK, elapsed
        await peer.aclose()


def local_address(sockets: anyio.abc.Listener[anyio.abc.SocketStream]) -> str:
    name = sockets.extra(anyio.abc.SocketAttribute.local_address)
    assert isinstance(name, tuple)
    return f"{name[0]}:{name[1]}"


@asynccontextmanager
async def silent_listener() -> AsyncIterator[str]:
    """A listener that completes one handshake and then never says another word."""
    peers: list[RawPeer] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        peer = RawPeer(stream, initiator=False)
        peers.append(peer)
        await peer.handshake()
        await anyio.sleep_forever()

    sockets = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with sockets, anyio.create_task_group() as tasks:
        tasks.start_soon(sockets.serve, serve)
        yield local_address(sockets)
        tasks.cancel_scope.cancel()
    for peer in peers:
        await peer.aclose()


async def test_silent_listener_is_lost_after_peer_timeout() -> None:
    async with silent_listener() as address, Transport() as transport:
        link = await connect(transport, address, config=FAST)
        start = anyio.current_time()
        inbox = Inbox()
        inbox.attach(link)
        await wait_for(lambda: inbox.errors, within=2)
        elapsed = anyio.current_time() - start
        assert isinstance(inbox.errors[0], PeerLost)
        assert elapsed <= FAST.peer_timeout + SLACK, elapsed
        await link.wait_closed()


async def test_handshake_that_never_completes_is_reported_as_unreachable() -> None:
    async with anyio.create_task_group() as tasks:
        sockets = await anyio.create_tcp_listener(local_host="127.0.0.1")
        accepted: list[anyio.abc.SocketStream] = []

        async def mute(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)  # accepts and says nothing

        tasks.start_soon(sockets.serve, mute)
        async with Transport() as transport:
            with pytest.raises(PeerLost, match=r"cannot reach .*handshake did not complete"):
                await connect(transport, local_address(sockets), config=FAST)
        tasks.cancel_scope.cancel()
    await sockets.aclose()
    for stream in accepted:
        await stream.aclose()


CHILD = """
import sys, anyio
from qchan.crypto import ClusterKey, NodeKey
from qchan.protocol import Hello
from qchan.transport import Transport

async def main():
    async with Transport() as transport:
        listener = await transport.listen(
            "127.0.0.1:0", key=NodeKey.generate(), hello=Hello("child", b"child-01"),
            cluster_key=ClusterKey.from_bytes(bytes.fromhex(sys.argv[1])),
            on_link=lambda link: link.start(lambda frames: None, lambda error: None),
        )
        print(listener.address, flush=True)
        await anyio.sleep(30)

anyio.run(main)
"""


async def test_stopped_process_is_lost_after_peer_timeout() -> None:
    from ._helpers import CLUSTER_KEY

    async with await anyio.open_process(
        [sys.executable, "-c", CHILD, bytes(CLUSTER_KEY).hex()], stderr=None
    ) as process:
        try:
            assert process.stdout is not None
            line = b""
            with anyio.fail_after(10):
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive()
            async with Transport() as transport:
                link = await connect(transport, line.decode().strip(), config=FAST)
                inbox = Inbox()
                inbox.attach(link)
                await anyio.sleep(3 * FAST.peer_timeout)
                assert inbox.errors == []  # alive: pings answered
                os.kill(process.pid, signal.SIGSTOP)
                start = anyio.current_time()
                await wait_for(lambda: inbox.errors, within=2)
                elapsed = anyio.current_time() - start
                assert isinstance(inbox.errors[0], PeerLost)
                assert elapsed <= FAST.peer_timeout + SLACK, elapsed
        finally:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            await process.wait()


async def test_idle_link_stays_up_across_many_timeouts() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server, config=FAST)
        link = await connect(transport, listener.address, config=FAST)
        inbox = Inbox()
        inbox.attach(link)
        await anyio.sleep(5 * FAST.peer_timeout)
        assert inbox.errors == []
        assert server.inboxes[0].errors == []
        link.send([Kind.RECV, 1, 1])
        await wait_for(lambda: server.inboxes[0].frames)


async def test_pause_reading_holds_frames_until_resumed() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        await wait_for(lambda: server.links)
        server.links[0].pause_reading()
        for op in range(5):
            link.send([Kind.RECV, op, 0])
            await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        assert server.inboxes[0].frames == []
        server.links[0].resume_reading()
        await wait_for(lambda: len(server.inboxes[0].frames) == 5)
        assert [frame[1] for frame in server.inboxes[0].frames] == list(range(5))


async def test_a_long_pause_does_not_lose_the_peer() -> None:
    config = ConnectionConfig(heartbeat_interval=0.1, peer_timeout=0.3)
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server, config=config)
        link = await connect(transport, listener.address, config=config)
        inbox = Inbox()
        inbox.attach(link)
        await wait_for(lambda: server.links)
        server.links[0].pause_reading()
        for op in range(10):  # paused for 3 peer timeouts, the peer talking all along
            link.send([Kind.RECV, op, 0])
            await anyio.sleep(0.1)
        assert server.inboxes[0].frames == []
        server.links[0].resume_reading()
        await wait_for(lambda: len(server.inboxes[0].frames) == 10)
        await anyio.sleep(2 * config.peer_timeout)
        assert inbox.errors == []
        assert server.inboxes[0].errors == []
