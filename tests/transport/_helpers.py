"""Keys, collectors and a hand-driven peer shared by the transport tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.abc

from qchan._errors import QchanError
from qchan.crypto import ClusterKey, NodeKey
from qchan.protocol import (
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    Frame,
    HandshakeCompleted,
    Hello,
)
from qchan.transport import Link, Transport

SERVER_KEY: Final = NodeKey.from_bytes(bytes(range(1, 33)))
CLIENT_KEY: Final = NodeKey.from_bytes(bytes(range(33, 65)))
STRANGER_KEY: Final = NodeKey.from_bytes(bytes(range(65, 97)))
CLUSTER_KEY: Final = ClusterKey.from_bytes(bytes(range(100, 132)))
OTHER_CLUSTER_KEY: Final = ClusterKey.from_bytes(bytes(range(140, 172)))
SERVER_HELLO: Final = Hello(name="server", incarnation=b"server-1")
CLIENT_HELLO: Final = Hello(name="client", incarnation=b"client-1")

DEFAULT: Final = ConnectionConfig()
FAST: Final = ConnectionConfig(handshake_timeout=0.3, heartbeat_interval=0.1, peer_timeout=0.3)
"""Short deadlines for the tests that wait for them."""


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_for(condition: Callable[[], object], within: float = 5.0) -> None:
    """Poll ``condition`` every 5 ms until it is true; TimeoutError after ``within`` s."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - callbacks change the state polled here
            await anyio.sleep(0.005)


class Inbox:
    """The callbacks of one link: what arrived, in how many calls, and how it ended."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.calls = 0
        self.errors: list[QchanError] = []
        self.on_frame: Callable[[Link, Frame], None] | None = None
        self.link: Link | None = None

    def attach(self, link: Link) -> Link:
        self.link = link
        link.start(self._on_frames, self.errors.append)
        return link

    def _on_frames(self, frames: list[Frame]) -> None:
        assert frames, "on_frames is never called with an empty list"
        self.calls += 1
        self.frames += frames
        if self.on_frame is not None:
            assert self.link is not None
            for frame in frames:
                self.on_frame(self.link, frame)


class Server:
    """A listener's ``on_link``: starts every link with its own :class:`Inbox`."""

    def __init__(self, on_frame: Callable[[Link, Frame], None] | None = None) -> None:
        self.links: list[Link] = []
        self.inboxes: list[Inbox] = []
        self._on_frame = on_frame

    def __call__(self, link: Link) -> None:
        inbox = Inbox()
        inbox.on_frame = self._on_frame
        inbox.attach(link)
        self.links.append(link)
        self.inboxes.append(inbox)


async def listen(transport: Transport, address: str = "127.0.0.1:0", **kwargs: Any) -> Any:
    arguments: dict[str, Any] = {
        "key": SERVER_KEY,
        "cluster_key": CLUSTER_KEY,
        "hello": SERVER_HELLO,
    }
    arguments.update(kwargs)
    return await transport.listen(address, **arguments)


async def connect(transport: Transport, address: str, **kwargs: Any) -> Link:
    arguments: dict[str, Any] = {
        "key": CLIENT_KEY,
        "cluster_key": CLUSTER_KEY,
        "hello": CLIENT_HELLO,
    }
    arguments.update(kwargs)
    return await transport.connect(address, **arguments)


class RawPeer:
    """A peer driven by hand: a raw anyio socket and a sans-IO Connection, no transport.

    It does only what a test tells it to, which is how a test plays a silent, slow or lying
    peer.
    """

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        *,
        initiator: bool = True,
        key: NodeKey = CLIENT_KEY,
        cluster_key: ClusterKey = CLUSTER_KEY,
        config: ConnectionConfig = DEFAULT,
    ) -> None:
        self.stream = stream
        self.conn = Connection(
            initiator=initiator,
            key=key,
            cluster_key=cluster_key,
            hello=CLIENT_HELLO if initiator else SERVER_HELLO,
            now=anyio.current_time(),
            config=config,
        )

    @classmethod
    async def dial(cls, address: str, **kwargs: Any) -> RawPeer:
        host, _, port = address.rpartition(":")
        return cls(await anyio.connect_tcp(host, int(port)), **kwargs)

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send(data)

    async def handshake(self) -> None:
        """Complete the handshake (and nothing more)."""
        await self.flush()
        with anyio.fail_after(5):
            while True:
                events = self.conn.receive_data(await self.stream.receive(), anyio.current_time())
                await self.flush()
                for event in events:
                    assert not isinstance(event, ConnectionTerminated), event
                    if isinstance(event, HandshakeCompleted):
                        return

    async def receive_until_closed(self, within: float) -> bytes:
        """Read until the peer closes; all bytes read (fails if it takes beyond ``within`` s)."""
        received = bytearray()
        with anyio.fail_after(within):
            try:
                while True:
                    received += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return bytes(received)

    async def aclose(self) -> None:
        await self.stream.aclose()
