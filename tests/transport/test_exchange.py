"""Links at work: handshake, frames both ways, batching, big frames, addresses, lifecycle."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from qchan._errors import PeerLost
from qchan.protocol import Frame, GoawayReason, Kind
from qchan.transport import Link, Transport

from ._helpers import (
    CLIENT_HELLO,
    CLIENT_KEY,
    SERVER_HELLO,
    SERVER_KEY,
    Inbox,
    Server,
    connect,
    listen,
    wait_for,
)

pytestmark = pytest.mark.anyio


def ack_everything(link: Link, frame: Frame) -> None:
    if frame[0] == Kind.RECV:
        link.send([Kind.ACK, frame[1]])


async def exchange(transport: Transport, address: str) -> None:
    server = Server(on_frame=ack_everything)
    async with await listen(transport, address, on_link=server) as listener:
        link = await connect(transport, listener.address)
        client = Inbox()
        client.attach(link)
        assert link.initiator
        assert link.remote_key == SERVER_KEY.public
        assert link.remote_hello == SERVER_HELLO
        assert link.remote_address == listener.address
        await wait_for(lambda: server.links)
        accepted = server.links[0]
        assert not accepted.initiator
        assert accepted.remote_key == CLIENT_KEY.public
        assert accepted.remote_hello == CLIENT_HELLO
        if not address.startswith("unix:"):
            assert accepted.remote_address == link.local_address
            assert accepted.local_address == listener.address

        for op in range(10):
            link.send([Kind.RECV, op, 7])
        await wait_for(lambda: len(client.frames) == 10)
        assert client.frames == [[Kind.ACK, op] for op in range(10)]
        assert server.inboxes[0].frames == [[Kind.RECV, op, 7] for op in range(10)]
        accepted.send([Kind.CLOSE, 99])  # the listener's side speaks first, too
        await wait_for(lambda: len(client.frames) == 11)
        assert client.frames[-1] == [Kind.CLOSE, 99]

        link.close()
        await link.wait_closed()
        assert link.closed
        assert len(client.errors) == 1
        assert isinstance(client.errors[0], PeerLost)
        await wait_for(lambda: server.inboxes[0].errors)
        assert "peer closed the connection" in str(server.inboxes[0].errors[0])
        await accepted.wait_closed()


async def test_exchange_tcp() -> None:
    async with Transport() as transport:
        await exchange(transport, "127.0.0.1:0")


async def test_exchange_unix(tmp_path: Path) -> None:
    path = tmp_path / "node.sock"
    async with Transport() as transport:
        await exchange(transport, f"unix:{path}")
        async with await listen(transport, f"unix:{path}", on_link=Server()) as listener:
            assert listener.address == f"unix:{path}"
            assert path.is_socket()
        assert not path.exists()  # ours is removed at close


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}))])
async def test_exchange_uvloop(anyio_backend: Any, tmp_path: Path) -> None:
    import uvloop

    assert isinstance(__import__("asyncio").get_running_loop(), uvloop.Loop)
    async with Transport() as transport:
        await exchange(transport, "127.0.0.1:0")
        await exchange(transport, f"unix:{tmp_path / 'uv.sock'}")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_exchange_streams_backend_on_asyncio(anyio_backend: str) -> None:
    async with Transport(streams=True) as transport:
        await exchange(transport, "127.0.0.1:0")


async def test_many_frames_in_one_turn_arrive_in_order_and_coalesced() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        link.start(lambda frames: None, lambda error: None)
        await wait_for(lambda: server.links)
        for op in range(2000):  # one turn: no await between the sends
            link.send([Kind.SEND, op, 3, 0, b"v" * 20])
        inbox = server.inboxes[0]
        await wait_for(lambda: len(inbox.frames) == 2000)
        assert [frame[1] for frame in inbox.frames] == list(range(2000))
        # ~60 KB written at once: a few reads, not one per frame
        assert inbox.calls <= 10, inbox.calls


@pytest.mark.parametrize(
    "anyio_backend", ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
)
async def test_a_request_on_a_quiet_link_is_written_at_once(anyio_backend: Any) -> None:
    # A link idle for longer than a round trip writes a frame during send() itself: a
    # request waits for no turn of the loop. "Idle" is judged on a clock finer than uvloop's
    # loop.time() (whole milliseconds), which once made such requests wait two turns.
    async with Transport() as transport:
        listener = await listen(transport, on_link=Server())
        link = await connect(transport, listener.address)
        link.start(lambda frames: None, lambda error: None)
        for op in range(20):
            time.sleep(0.0002)  # noqa: ASYNC251 - quiet 200 us: past the busy window, within 1 ms
            link.send([Kind.RECV, op, 7])
            assert link._conn.queued_bytes() == 0, f"request {op} was left for a later turn"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("read_since", [True, False])
async def test_a_frame_after_a_read_is_written_at_once_a_stream_is_coalesced(
    anyio_backend: str, read_since: bool
) -> None:
    # Just flushed: with nothing read since, the link is streaming and the frame waits a
    # turn for others to join it; with an answer read since, it is the next request.
    async with Transport() as transport:
        listener = await listen(transport, on_link=Server())
        link = await connect(transport, listener.address)
        link.start(lambda frames: None, lambda error: None)
        link._last_flush = time.perf_counter()  # type: ignore[attr-defined]
        link._read_since_flush = read_since  # type: ignore[attr-defined]
        link.send([Kind.RECV, 1, 7])
        assert (link._conn.queued_bytes() == 0) is read_since
        await wait_for(lambda: link._conn.queued_bytes() == 0)  # (and a stream's goes soon)


@pytest.mark.parametrize("size", [65_536, 300_000, 2_000_000])
async def test_frame_larger_than_a_message_arrives_intact(size: int) -> None:
    value = os.urandom(size)
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        link.start(lambda frames: None, lambda error: None)
        link.send([Kind.RECV, 1, 2])
        link.send([Kind.DELIVER, 7, value])
        link.send([Kind.RECV, 3, 4])
        await wait_for(lambda: server.links and len(server.inboxes[0].frames) == 3)
        assert server.inboxes[0].frames == [
            [Kind.RECV, 1, 2],
            [Kind.DELIVER, 7, value],
            [Kind.RECV, 3, 4],
        ]


async def test_frames_before_start_are_delivered_at_start_in_order() -> None:
    accepted: list[Link] = []
    async with Transport() as transport:
        listener = await listen(transport, on_link=accepted.append)  # does not start the link
        link = await connect(transport, listener.address)
        link.start(lambda frames: None, lambda error: None)
        for op in range(5):
            link.send([Kind.RECV, op, 0])
            await anyio.sleep(0.01)  # separate writes, separate reads
        link.close(GoawayReason.SHUTDOWN, "done")
        await wait_for(lambda: accepted and accepted[0].closed)
        inbox = Inbox()
        inbox.attach(accepted[0])
        assert inbox.frames == [[Kind.RECV, op, 0] for op in range(5)]
        assert len(inbox.errors) == 1
        assert str(inbox.errors[0]) == "peer closed the connection: done"


async def test_start_twice_is_an_error() -> None:
    async with Transport() as transport:
        listener = await listen(transport, on_link=Server())
        link = await connect(transport, listener.address)
        link.start(lambda frames: None, lambda error: None)
        with pytest.raises(RuntimeError):
            link.start(lambda frames: None, lambda error: None)


async def test_close_is_idempotent_and_sends_after_close_are_dropped() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        inbox = Inbox()
        inbox.attach(link)
        link.close(GoawayReason.DUPLICATE, "kept the other one")
        link.close()
        link.send([Kind.RECV, 1, 1])
        await link.wait_closed()
        await link.wait_closed()
        assert [str(error) for error in inbox.errors] == [
            "link closed locally (duplicate: kept the other one)"
        ]
        await wait_for(lambda: server.inboxes and server.inboxes[0].errors)
        assert str(server.inboxes[0].errors[0]) == "peer closed the connection: kept the other one"
        assert server.inboxes[0].frames == []


async def test_callback_errors_close_the_link_and_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(link: Link, frame: Frame) -> None:
        raise ZeroDivisionError("node bug")

    server = Server(on_frame=explode)
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        inbox = Inbox()
        inbox.attach(link)
        link.send([Kind.RECV, 1, 1])
        await wait_for(lambda: inbox.errors)
        assert "internal error" in str(inbox.errors[0])
        assert "node bug" in str(server.inboxes[0].errors[0])
        assert "on_frames" in caplog.text


async def test_listen_on_all_interfaces() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, "0.0.0.0:0", on_link=server)
        host, _, port = listener.address.rpartition(":")
        assert host == "0.0.0.0"
        assert int(port) > 0
        link = await connect(transport, f"127.0.0.1:{port}")
        await wait_for(lambda: server.links)
        link.close()


async def test_listen_on_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, "[::]:0", on_link=server)
        assert listener.address.startswith("[::]:")
        port = listener.address.rpartition(":")[2]
        link = await connect(transport, f"[::1]:{port}")
        await wait_for(lambda: server.links)
        assert server.links[0].remote_address.startswith("[::1]:")
        link.close()


async def test_listen_on_an_address_in_use_says_so() -> None:
    async with Transport() as transport:
        listener = await listen(transport, on_link=Server())
        with pytest.raises(OSError, match=f"cannot listen on {listener.address}: .*in use"):
            await listen(transport, listener.address, on_link=Server())


async def test_unix_stale_socket_is_replaced_and_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a dead listener's file
    regular = tmp_path / "file"
    regular.write_text("mine")
    server = Server()
    async with Transport() as transport:
        async with await listen(transport, f"unix:{path}", on_link=server) as listener:
            link = await connect(transport, listener.address)
            await wait_for(lambda: server.links)
            with pytest.raises(OSError, match="another listener"):
                await listen(transport, f"unix:{path}", on_link=Server())
            link.close()
        with pytest.raises(OSError, match="not a socket"):
            await listen(transport, f"unix:{regular}", on_link=Server())
    assert regular.read_text() == "mine"


async def test_transport_exit_closes_everything() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        clients = [Inbox() for _ in range(3)]
        for inbox in clients:
            inbox.attach(await connect(transport, listener.address))
        await wait_for(lambda: len(server.links) == 3)
    assert listener.closed
    for inbox in [*clients, *server.inboxes]:
        assert inbox.link is not None
        assert inbox.link.closed
        assert len(inbox.errors) == 1
    assert not transport.links


async def test_transport_must_be_entered() -> None:
    transport = Transport()
    with pytest.raises(RuntimeError, match="not entered"):
        await listen(transport, on_link=Server())


def raw_socket(link: Link) -> socket.socket:
    """The link's socket, from the backend's private attributes (tests only)."""
    transport = getattr(link, "_transport", None)
    if transport is not None:
        sock: socket.socket = transport.get_extra_info("socket")
        return sock
    from anyio.abc import SocketAttribute

    return link._stream.extra(SocketAttribute.raw_socket)  # type: ignore[attr-defined, no-any-return]


async def test_tcp_nodelay_on_both_ends() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        link = await connect(transport, listener.address)
        await wait_for(lambda: server.links)
        for end in (link, server.links[0]):
            assert raw_socket(end).getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        link.close()
