"""``Transport``: the owner of every listener and link, and of the tasks they need."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final, final

import anyio
import anyio.abc
import sniffio

from qchan.crypto.keys import ClusterKey, NodeKey
from qchan.protocol import ConnectionConfig, Hello
from qchan.transport import _asyncio, _streams
from qchan.transport._address import Address, parse_address
from qchan.transport._link import CLOSE_LINGER, Link, Params
from qchan.transport._listener import Listener, OnLink

__all__ = ["DEFAULT_CONFIG", "Transport"]

DEFAULT_CONFIG: Final = ConnectionConfig()


@final
class Transport:
    """Where listeners and links live: enter it once, for as long as the node runs.

    ::

        async with Transport() as transport:
            listener = await transport.listen("0.0.0.0:7400", key=..., cluster_key=...,
                                              hello=..., on_link=on_link)
            link = await transport.connect("10.0.0.7:7400", key=..., cluster_key=..., hello=...)

    On asyncio (and uvloop) every link is an ``asyncio.Protocol`` and needs no task. On trio
    each link runs a reader, a writer and a timer task and each listener an accept loop; they
    live in a task group that this object owns, which is why links outlive ``connect()``.
    Leaving the ``async with`` (or :meth:`aclose`) closes every listener, says GOAWAY on every
    link still open and waits (at most a few seconds) until all sockets are closed and all
    tasks have ended. ``streams=True`` uses the anyio-stream backend even on asyncio (for
    comparisons and tests; it is slower). ``busy_poll`` (seconds; asyncio and uvloop) keeps
    the loop polling, while messages flow, that long after each read or write
    (:class:`._asyncio.BusyPoller`); 0 (the default here; a Node passes its own) is off.
    """

    __slots__ = (
        "_busy_poll",
        "_closed",
        "_links",
        "_listeners",
        "_poller",
        "_protocol",
        "_streams",
        "_tasks",
    )

    def __init__(self, *, streams: bool = False, busy_poll: float = 0.0) -> None:
        self._streams = streams
        self._busy_poll = busy_poll
        self._poller: _asyncio.BusyPoller | None = None
        self._protocol = False
        self._tasks: anyio.abc.TaskGroup | None = None
        self._links: set[Link] = set()
        self._listeners: list[Listener] = []
        self._closed = True

    async def __aenter__(self) -> Transport:
        if not self._closed or self._listeners:
            raise RuntimeError("a Transport is entered once")
        self._protocol = sniffio.current_async_library() == "asyncio" and not self._streams
        if self._protocol and self._busy_poll > 0:
            self._poller = _asyncio.BusyPoller(asyncio.get_running_loop(), self._busy_poll)
        if not self._protocol:
            tasks = anyio.create_task_group()
            await tasks.__aenter__()
            self._tasks = tasks
        self._closed = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()
        finally:
            tasks, self._tasks = self._tasks, None
        if tasks is not None:
            return await tasks.__aexit__(exc_type, exc, tb)
        return None

    async def aclose(self) -> None:
        """Close every listener and link; wait until their sockets and tasks are done."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(CLOSE_LINGER + 1.0, shield=True):
            for listener in self._listeners:
                await listener.aclose()
            self._listeners.clear()
            links = list(self._links)
            for link in links:
                link.close()
            for link in links:
                await link.wait_closed()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()  # anything still lingering

    @property
    def links(self) -> frozenset[Link]:
        """The links whose sockets are open (including those still handshaking)."""
        return frozenset(self._links)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the Transport is not entered (use `async with Transport()`)")

    async def listen(
        self,
        address: str | Address,
        *,
        key: NodeKey,
        cluster_key: ClusterKey,
        hello: Hello,
        on_link: OnLink,
        trusted: frozenset[bytes] | None = None,
        config: ConnectionConfig = DEFAULT_CONFIG,
        max_half_open: int = 64,
    ) -> Listener:
        """Listen on ``address`` (``"HOST:PORT"``, ``"[v6]:PORT"``, ``"unix:/path"``).

        Each accepted socket is handshaken as responder within ``config.handshake_timeout``
        (a slowloris is dropped); at most ``max_half_open`` handshakes run at once, and a socket
        beyond that is reset at once. ``on_link(link)`` is called synchronously as soon as a
        handshake completes; a failed handshake closes the socket and is only logged (debug).
        A stale Unix socket file is removed first; ours is removed at close.

        Raises ``ValueError`` for a bad address and ``OSError`` ("cannot listen on ADDR: ...",
        errno kept) if the address cannot be bound.
        """
        self._check_open()
        where = parse_address(address) if isinstance(address, str) else address
        params = Params(key, cluster_key, hello, trusted, None, config)
        if self._protocol:
            listener = await _asyncio.listen(
                where, params, on_link, max_half_open, self._links, self._poller
            )
        else:
            assert self._tasks is not None
            listener = await _streams.listen(
                where, params, on_link, max_half_open, self._links, self._tasks
            )
        self._listeners.append(listener)
        return listener

    async def connect(
        self,
        address: str | Address,
        *,
        key: NodeKey,
        cluster_key: ClusterKey,
        hello: Hello,
        trusted: frozenset[bytes] | None = None,
        expected_remote_key: bytes | None = None,
        config: ConnectionConfig = DEFAULT_CONFIG,
    ) -> Link:
        """Dial ``address`` and handshake as initiator; return the authenticated link.

        Raises ``ValueError`` for a bad address; :class:`~qchan.PeerLost` ("cannot reach ADDR:
        why") if the peer is refused, unreachable, reset or too slow (the TCP connect and the
        handshake each have ``config.handshake_timeout``); :class:`~qchan.AuthenticationError`
        if the handshake fails: the peer's key is not in ``trusted`` or is not
        ``expected_remote_key``, or the peer closed during the handshake (what a listener does
        when our cluster key is wrong or it does not trust us).
        """
        self._check_open()
        where = parse_address(address) if isinstance(address, str) else address
        params = Params(key, cluster_key, hello, trusted, expected_remote_key, config)
        if self._protocol:
            return await _asyncio.connect(where, params, self._links, self._poller)
        assert self._tasks is not None
        return await _streams.connect(where, params, self._links, self._tasks)
