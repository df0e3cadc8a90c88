"""Who gets in: the cluster key, trusted sets in both directions, an expected key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from qchan._errors import AuthenticationError, PeerLost
from qchan.protocol import Event, Kind
from qchan.transport import Link, Transport

from ._helpers import (
    CLIENT_KEY,
    FAST,
    OTHER_CLUSTER_KEY,
    SERVER_KEY,
    STRANGER_KEY,
    Inbox,
    RawPeer,
    Server,
    connect,
    listen,
    wait_for,
)

pytestmark = pytest.mark.anyio


async def test_wrong_cluster_key_is_refused_without_a_word() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        with pytest.raises(AuthenticationError, match="wrong cluster key") as caught:
            await connect(transport, listener.address, cluster_key=OTHER_CLUSTER_KEY)
        assert listener.address in str(caught.value)
        await anyio.sleep(0.05)
        assert server.links == []


async def test_dialler_refuses_an_untrusted_listener_before_revealing_itself() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        with pytest.raises(AuthenticationError, match="cannot authenticate with") as caught:
            await connect(transport, listener.address, trusted=frozenset({STRANGER_KEY.public}))
        assert "trusted" in str(caught.value)
        await anyio.sleep(0.05)
        assert server.links == []


async def test_listener_refuses_an_untrusted_dialler() -> None:
    # The listener judges the dialler's key at message 3. The dialler's handshake is not over
    # before the listener confirms it (its first transport message), so a refused dialler
    # gets no link: connect() fails, as for a wrong cluster key.
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server, trusted=frozenset({STRANGER_KEY.public}))
        start = anyio.current_time()
        with pytest.raises(AuthenticationError, match="peer closed during the handshake") as caught:
            await connect(transport, listener.address)
        assert anyio.current_time() - start < 1.0  # at once, not at a deadline
        assert listener.address in str(caught.value)
        await wait_for(lambda: not transport.links)
        assert server.links == []


async def test_trusted_keys_let_their_holders_in_both_ways() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(
            transport, on_link=server, trusted=frozenset({CLIENT_KEY.public, STRANGER_KEY.public})
        )
        link = await connect(transport, listener.address, trusted=frozenset({SERVER_KEY.public}))
        await wait_for(lambda: server.links)
        assert server.links[0].remote_key == CLIENT_KEY.public
        link.close()


async def test_expected_remote_key() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        with pytest.raises(AuthenticationError, match="cannot authenticate with"):
            await connect(transport, listener.address, expected_remote_key=STRANGER_KEY.public)
        await anyio.sleep(0.05)
        assert server.links == []
        link = await connect(transport, listener.address, expected_remote_key=SERVER_KEY.public)
        assert link.remote_key == SERVER_KEY.public
        await wait_for(lambda: server.links)


# --- the confirmation: a dialler is in once the listener's first transport message arrives ---


@asynccontextmanager
async def raw_listener(
    serve: Callable[[RawPeer], Awaitable[None]],
) -> AsyncIterator[str]:
    """A listener played by hand: ``serve`` drives a responder RawPeer for each dialler."""
    peers: list[RawPeer] = []

    async def accept(stream: anyio.abc.SocketStream) -> None:
        peer = RawPeer(stream, initiator=False, key=SERVER_KEY)
        peers.append(peer)
        await serve(peer)

    sockets = await anyio.create_tcp_listener(local_host="127.0.0.1")
    name = sockets.extra(anyio.abc.SocketAttribute.local_address)
    assert isinstance(name, tuple)
    async with sockets, anyio.create_task_group() as tasks:
        tasks.start_soon(sockets.serve, accept)
        yield f"{name[0]}:{name[1]}"
        tasks.cancel_scope.cancel()
    for peer in peers:
        await peer.aclose()


async def _up_to_message_3(peer: RawPeer) -> None:
    """Answer message 1, take message 3; the confirmation stays queued, unsent."""
    conn = peer.conn
    assert conn.receive_data(await peer.stream.receive(), anyio.current_time()) == []
    await peer.flush()  # message 2
    events: list[Event] = []
    while not events:
        events = conn.receive_data(await peer.stream.receive(), anyio.current_time())
    assert [type(event).__name__ for event in events] == ["HandshakeCompleted"]


async def test_connect_returns_only_once_the_listener_has_confirmed() -> None:
    took_message_3 = anyio.Event()
    confirm = anyio.Event()

    async def serve(peer: RawPeer) -> None:
        await _up_to_message_3(peer)
        took_message_3.set()
        await confirm.wait()
        for op in range(3):  # frames right behind the PING, in the same message
            peer.conn.send([Kind.RECV, op, 1])
        await peer.flush()
        await anyio.sleep_forever()

    links: list[Link] = []
    async with raw_listener(serve) as address, Transport() as transport:

        async def dial() -> None:
            links.append(await connect(transport, address))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(dial)
            with anyio.fail_after(2):
                await took_message_3.wait()
            await anyio.sleep(0.2)
            assert links == []  # message 3 is out, but the listener has not said yes
            confirm.set()
        (link,) = links
        assert link.remote_key == SERVER_KEY.public
        # what came with the confirmation waits for start(), then arrives whole, in order
        inbox = Inbox()
        inbox.attach(link)
        assert inbox.frames == [[Kind.RECV, op, 1] for op in range(3)]
        assert inbox.calls == 1
        link.close()


async def test_a_listener_that_closes_after_message_3_fails_connect() -> None:
    async def serve(peer: RawPeer) -> None:
        await _up_to_message_3(peer)
        await peer.aclose()  # no confirmation: what a listener that refuses us does

    async with raw_listener(serve) as address, Transport() as transport:
        with pytest.raises(AuthenticationError, match="peer closed during the handshake"):
            await connect(transport, address)
        await wait_for(lambda: not transport.links)  # (trio closes the socket in a task)


async def test_the_handshake_deadline_covers_the_confirmation() -> None:
    async def serve(peer: RawPeer) -> None:
        await _up_to_message_3(peer)
        await anyio.sleep_forever()  # keeps the socket open, never confirms

    async with raw_listener(serve) as address, Transport() as transport:
        start = anyio.current_time()
        with pytest.raises(PeerLost, match=r"cannot reach .*handshake did not complete"):
            await connect(transport, address, config=FAST)
        elapsed = anyio.current_time() - start
        assert FAST.handshake_timeout - 0.05 <= elapsed < FAST.handshake_timeout + 0.7, elapsed
        await wait_for(lambda: not transport.links)  # (trio closes the socket in a task)
