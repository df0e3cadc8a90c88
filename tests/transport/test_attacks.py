"""Real attempts with raw sockets: slowloris, half-open floods, early data, lies, truncation."""

from __future__ import annotations

import os

import anyio
import pytest

from qchan._errors import AuthenticationError, PeerLost, ProtocolError
from qchan.protocol import ConnectionConfig, GoawayReason, Kind
from qchan.protocol.frames import encode_frame
from qchan.transport import Transport

from ._helpers import FAST, Server, connect, listen, wait_for
from ._helpers import RawPeer as Raw

pytestmark = pytest.mark.anyio


async def dial(address: str) -> anyio.abc.SocketStream:
    host, _, port = address.rpartition(":")
    return await anyio.connect_tcp(host, int(port))


async def closed_within(stream: anyio.abc.SocketStream, within: float) -> float:
    """Seconds until the peer closes ``stream`` (EOF or reset); fails after ``within`` s."""
    start = anyio.current_time()
    with anyio.fail_after(within):
        try:
            while True:
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return anyio.current_time() - start


async def test_slowloris_is_dropped_at_the_handshake_deadline() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server, config=FAST)
        peer = Raw(await dial(listener.address))
        message_1 = peer.conn.data_to_send()
        await peer.stream.send(message_1[:1])  # one byte of 50, then nothing
        elapsed = await closed_within(peer.stream, 2.0)
        assert 0.25 <= elapsed < 1.0, elapsed
        await peer.aclose()
        assert server.links == []


async def test_half_open_flood_is_capped_and_then_drained() -> None:
    # Beyond the cap a socket is reset at once, before message 2. The dialler cannot always
    # tell that from a listener refusing its cluster key (which closes before message 2 too):
    # on trio, a send that meets the reset can take the error, and the read then sees a clean
    # EOF. So the refusal is PeerLost ("cannot reach") or AuthenticationError ("peer closed
    # during the handshake"); what is guaranteed is that it comes at once (the handshake
    # deadline is 0.5 s) and that no link is made.
    config = ConnectionConfig(handshake_timeout=0.5)
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server, config=config, max_half_open=4)
        flood = [await dial(listener.address) for _ in range(4)]
        try:
            flood_started = anyio.current_time()
            await anyio.sleep(0.05)  # all four accepted and handshaking
            for _ in range(4):  # closed at once (reset, perhaps before connect() even returns)
                start = anyio.current_time()
                try:
                    stream = await dial(listener.address)
                except OSError:
                    pass
                else:
                    await closed_within(stream, 0.2)
                    await stream.aclose()
                assert anyio.current_time() - start < 0.2
            for _ in range(3):
                start = anyio.current_time()
                with pytest.raises(
                    (PeerLost, AuthenticationError),
                    match=r"cannot reach|peer closed during the handshake",
                ):
                    await connect(transport, listener.address)
                assert anyio.current_time() - start < 0.2
            assert server.links == []
            for stream in flood:  # the flood itself goes at its deadline
                await closed_within(stream, 1.5)
            assert anyio.current_time() - flood_started >= 0.45
            link = await connect(transport, listener.address)  # and the door is open again
            await wait_for(lambda: server.links)
            link.close()
        finally:  # (a failure above must not leave sockets for a later test's GC to find)
            for stream in flood:
                await stream.aclose()


async def test_garbage_after_message_1_is_not_delivered() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        peer = Raw(await dial(listener.address))
        await peer.stream.send(peer.conn.data_to_send() + b"\x00\x20" + os.urandom(32))
        await peer.receive_until_closed(2.0)
        await peer.aclose()
        assert server.links == []


async def test_fake_transport_message_instead_of_message_3_is_not_delivered() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        peer = Raw(await dial(listener.address))
        await peer.flush()
        await peer.stream.receive()  # message 2 (unanswered)
        await peer.stream.send(b"\x00\x40" + os.urandom(64))
        await peer.receive_until_closed(2.0)
        await peer.aclose()
        assert server.links == []


async def test_frames_right_behind_message_3_arrive_after_on_link_in_order() -> None:
    # A dialler should wait for the listener's confirmation before it sends frames; one that
    # seals them right behind message 3 (its keys exist by then) is understood all the same.
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        peer = Raw(await dial(listener.address))
        await peer.flush()
        assert peer.conn.receive_data(await peer.stream.receive(), anyio.current_time()) == []
        cipher = peer.conn._cipher
        assert cipher is not None
        frames = b"".join(encode_frame([Kind.RECV, op, 1]) for op in range(3))
        sealed = cipher.encrypt(frames)
        message_3 = peer.conn.data_to_send()
        await peer.stream.send(message_3 + len(sealed).to_bytes(2, "big") + sealed)  # one write
        await wait_for(lambda: server.inboxes and len(server.inboxes[0].frames) == 3)
        assert server.inboxes[0].frames == [[Kind.RECV, op, 1] for op in range(3)]
        assert server.inboxes[0].calls == 1
        await peer.aclose()


async def test_truncated_message_then_eof_during_the_handshake() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        stream = await dial(listener.address)
        await stream.send(b"\x00\x30" + b"x" * 10)  # 48 bytes announced, 10 sent
        await stream.send_eof()
        assert await closed_within(stream, 1.0) < 1.0
        await stream.aclose()
        assert server.links == []


async def test_truncated_message_then_eof_on_an_open_link() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        peer = await Raw.dial(listener.address)
        await peer.handshake()
        await wait_for(lambda: server.links)
        await peer.stream.send(b"\x01\x00abc")  # 256 bytes announced, 3 sent
        await peer.stream.send_eof()
        inbox = server.inboxes[0]
        await wait_for(lambda: inbox.errors)
        assert isinstance(inbox.errors[0], PeerLost)
        assert inbox.frames == []
        await peer.aclose()


async def test_peer_goaway_ends_the_link_with_its_text() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        peer = await Raw.dial(listener.address)
        await peer.handshake()
        peer.conn.send([Kind.RECV, 1, 2])
        peer.conn.close(GoawayReason.NAME_CONFLICT, "the name 'client' is taken")
        await peer.flush()
        await wait_for(lambda: server.inboxes and server.inboxes[0].errors)
        inbox = server.inboxes[0]
        assert inbox.frames == [[Kind.RECV, 1, 2]]  # what came before the GOAWAY
        assert isinstance(inbox.errors[0], PeerLost)
        assert str(inbox.errors[0]) == "peer closed the connection: the name 'client' is taken"
        await peer.receive_until_closed(2.0)  # and the listener's side closes the socket
        await peer.aclose()


async def test_malformed_frame_is_a_protocol_error() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        peer = await Raw.dial(listener.address)
        await peer.handshake()
        peer.conn.send([0x7F, 1])  # no such frame kind, properly encrypted
        await peer.flush()
        await wait_for(lambda: server.inboxes and server.inboxes[0].errors)
        assert isinstance(server.inboxes[0].errors[0], ProtocolError)
        await peer.receive_until_closed(2.0)
        await peer.aclose()


async def test_tampered_transport_message_is_a_protocol_error() -> None:
    server = Server()
    async with Transport() as transport:
        listener = await listen(transport, on_link=server)
        peer = await Raw.dial(listener.address)
        await peer.handshake()
        peer.conn.send([Kind.RECV, 1, 2])
        data = bytearray(peer.conn.data_to_send())
        data[-1] ^= 1
        await peer.stream.send(bytes(data))
        await wait_for(lambda: server.inboxes and server.inboxes[0].errors)
        assert isinstance(server.inboxes[0].errors[0], ProtocolError)
        assert server.inboxes[0].frames == []
        await peer.aclose()
