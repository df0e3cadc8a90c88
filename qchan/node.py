"""``qchan.Node``: a peer in a cluster, hosting channels and reaching the channels of others.

Theory of operation
-------------------
A node listens, dials the peers it was given (and keeps them dialled), and hands every
authenticated link to a :class:`~qchan._session.Session` of the :class:`~qchan._peer.Peer` it
leads to. Channels this node hosts are ordinary :class:`~qchan.Channel` objects; when one is
first shown to another node (by name, through :meth:`Node.register` and a lookup, or inside a
value), it gets an id in :class:`~qchan._home.Exports` and the peer gets a reference with
capability tokens. References that arrive here become handles: a local channel's own handle if
this node is its home, else a handle over a :class:`~qchan._client.RemoteEndpoint`.

Values cross the network through :mod:`qchan._codec`; the two hooks that turn handles into
references and back are :meth:`Node.encode_value` and :meth:`Node.decode_value`.

Every wait on another node is bounded: links carry heartbeats (a silent peer is lost after
``peer_timeout``), dials have deadlines, and an operation parked while a peer is unreachable
fails with ``PeerLost`` once a dial has failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import platform
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, final

import anyio
import anyio.abc
import sniffio

from qchan import _codec
from qchan._channel import (
    Channel,
    ChannelState,
    SendChannel,
    _Handle,
    _ReceiveView,
    _SendView,
)
from qchan._client import RemoteEndpoint
from qchan._errors import NotFound, PeerLost, QchanError
from qchan._home import Exports
from qchan._peer import Peer
from qchan._refs import ChannelRef, TokenMinter
from qchan._session import Session
from qchan.crypto.keys import ClusterKey, NodeKey, fingerprint
from qchan.protocol import ConnectionConfig, Hello, Kind, Rights
from qchan.transport import Link, Listener, Transport, parse_address

__all__ = ["Node", "PeerInfo"]

log = logging.getLogger("qchan.node")

_HOUSEKEEPING_PERIOD: Final = 0.25
_REDIAL_MIN: Final = 0.1
_REDIAL_MAX: Final = 2.0
_LOOKUP_RETRY: Final = 0.25
_MAX_DISCOVERED_PEERS: Final = 1024
#: Peers never reached that hold nothing are swept out once there are this many peers (or
#: twice as many as after the last sweep): references to strangers cannot pile them up.
_SWEEP_PEERS_AT: Final = 32
_DIAL_DEFERENCE: Final = 0.5
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})


def _loop_clock() -> Callable[[], float]:
    """The running loop's clock, as a function that works anywhere in that loop.

    ``anyio.current_time`` must first find out which library runs, which it cannot do in an
    asyncio protocol callback under plain ``asyncio.run`` (no current task, and no mark left by
    anyio's runner): a link ending there once raised inside ``on_closed``. So ask once, here,
    in a task.
    """
    if sniffio.current_async_library() == "asyncio":
        return asyncio.get_running_loop().time
    return anyio.current_time  # trio: works in all its callbacks


@final
class _DialBudget:
    """At most a few dials a second to discovered peers, however many are announced."""

    __slots__ = ("_next",)
    _INTERVAL: Final = 0.05

    def __init__(self) -> None:
        self._next = 0.0

    async def take(self) -> None:
        now = anyio.current_time()
        wait = self._next - now
        self._next = max(now, self._next) + self._INTERVAL
        if wait > 0:
            await anyio.sleep(wait)


@final
@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer as :meth:`Node.peers` reports it."""

    name: str
    public_key: bytes
    address: str
    connected: bool

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


#: Seconds a node's loop keeps polling after a message (see Node). A round trip between two
#: qchan processes on one machine takes ~25-40 us, so 50 us covers the wait for an answer.
DEFAULT_BUSY_POLL: Final = 50e-6
MAX_BUSY_POLL: Final = 0.01  # beyond this, polling only burns CPU: refused


def _check_busy_poll(busy_poll: object) -> float:
    if isinstance(busy_poll, bool) or not isinstance(busy_poll, int | float):
        raise TypeError(f"busy_poll must be a number of seconds, not {type(busy_poll).__name__}")
    if not 0 <= busy_poll <= MAX_BUSY_POLL:
        raise ValueError(f"busy_poll must be between 0 and {MAX_BUSY_POLL} seconds")
    return float(busy_poll)


def _rights_of(handle: _Handle) -> int:
    if isinstance(handle, Channel):
        return Rights.BOTH
    return Rights.SEND if isinstance(handle, SendChannel) else Rights.RECEIVE


def _handle(endpoint: Any, rights: int) -> _Handle:
    if rights == Rights.BOTH:
        return Channel._from_endpoint(endpoint)
    if rights == Rights.SEND:
        return _SendView(endpoint)
    return _ReceiveView(endpoint)


@final
class Node:
    """A qchan node: ``async with qchan.Node(cluster_key=ck) as node: ...``.

    See API.md "Nodes and remote channels". Arguments are checked at once: a wrong type is a
    ``TypeError``, an unusable value (a bad address) a ``ValueError``.

    ``busy_poll`` (seconds, default 50 us; 0 turns it off; asyncio and uvloop only): while
    messages flow, the node's event loop keeps polling its sockets this long after each one
    instead of letting the process sleep, so that an answer arriving meanwhile is read without
    waking the process. Remote round trips get up to 1.7x faster for at most that much CPU
    time after each message; a lone request and an idle node cost nothing, and polling backs
    off while other processes want the CPU (docs/guide.md, "Performance: busy polling").
    """

    def __init__(
        self,
        cluster_key: ClusterKey,
        key: NodeKey | None = None,
        name: str | None = None,
        listen: str = "127.0.0.1:0",
        peers: Iterable[str] = (),
        discovery: bool = False,
        trusted: Iterable[bytes] | None = None,
        *,
        heartbeat_interval: float = 1.0,
        peer_timeout: float = 3.0,
        max_value_size: int = _codec.DEFAULT_MAX_SIZE,
        busy_poll: float = DEFAULT_BUSY_POLL,
    ) -> None:
        if not isinstance(cluster_key, ClusterKey):
            raise TypeError(
                f"cluster_key must be a qchan.ClusterKey, not {type(cluster_key).__name__}"
            )
        if key is not None and not isinstance(key, NodeKey):
            raise TypeError(f"key must be a qchan.NodeKey or None, not {type(key).__name__}")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 255):
            raise ValueError("name must be a non-empty string of at most 255 characters")
        if isinstance(peers, str):
            raise TypeError("peers must be a list of addresses, not a single string")
        self._listen_at = parse_address(listen)
        self._peer_addresses = [str(parse_address(address)) for address in peers]
        self._trusted = None if trusted is None else frozenset(_public_key(k) for k in trusted)
        if not isinstance(discovery, bool):
            raise TypeError("discovery must be True or False")
        self._discovery_wanted = discovery
        self._discovery: Any = None  # qchan.cluster.discovery.Discovery while running
        self._dial_budget = _DialBudget()
        self.key = key if key is not None else NodeKey.generate()
        self.name = name or f"{platform.node() or 'node'}-{os.getpid()}"
        self._cluster_key = cluster_key
        self._config = ConnectionConfig(
            heartbeat_interval=heartbeat_interval,
            peer_timeout=peer_timeout,
            max_frame_size=max_value_size + 1024,
        )
        self._max_value_size = max_value_size
        self._busy_poll = _check_busy_poll(busy_poll)
        self._incarnation = os.urandom(16)
        self.exports = Exports(
            TokenMinter(os.urandom(32)),
            self.key.public,
            self._incarnation,
            "",
            self._shut,
            self._reclaim_credit,
        )
        self._registry: dict[str, _Handle] = {}
        self._peers: dict[bytes, Peer] = {}
        # Remote endpoints garbage-collected since the last release_dropped (see there).
        self.dropped: deque[tuple[Peer, int, bytes]] = deque()
        self._sweep_peers_at = _SWEEP_PEERS_AT
        self._transport: Transport | None = None
        self._clock: Callable[[], float] = anyio.current_time  # (the loop's own once running)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._listener: Listener | None = None
        self._hello = Hello(self.name, self._incarnation)
        self._running = False

    # --- identity ----------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.key.public

    @property
    def address(self) -> str:
        """The address peers dial, e.g. ``"127.0.0.1:40123"`` (known once the node runs)."""
        return self._listener.address if self._listener is not None else ""

    def __repr__(self) -> str:
        return f"<qchan.Node {self.name} {self.address or 'not running'}>"

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        if self._running or self._transport is not None:
            raise RuntimeError("a Node can be started once")
        self._clock = _loop_clock()
        transport = Transport(busy_poll=self._busy_poll)
        await transport.__aenter__()
        self._transport = transport
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        self._tasks = tasks
        try:
            listener = await transport.listen(
                self._listen_at,
                key=self.key,
                cluster_key=self._cluster_key,
                hello=self._hello,
                on_link=self._on_link,
                trusted=self._trusted,
                config=self._config,
            )
            self._listener = listener
            self._running = True
            if self._discovery_wanted:
                # The one place the node reaches up into qchan.cluster: zeroconf lives there.
                from qchan.cluster.discovery import Discovery

                self._discovery = Discovery(
                    name=self.name,
                    public_key=self.public_key,
                    cluster_key=self._cluster_key,
                    address=listener.address,
                    on_found=self._discovered,
                    on_lost=self._undiscovered,
                )
                await self._discovery.start()
            # The address peers may dial back (and references name): ours, unless we listen
            # on every interface; then what discovery advertises, or nothing (a peer then
            # keeps the address it dialled us at).
            advertised = listener.address
            if not self._listen_at.is_unix and self._listen_at.host in _WILDCARD_HOSTS:
                found = self._discovery.addresses if self._discovery is not None else []
                advertised = found[0] if found else ""
            self._hello = Hello(self.name, self._incarnation, advertised)
            listener.params = replace(listener.params, hello=self._hello)
            self.exports.address = advertised or listener.address
            for address in self._peer_addresses:
                tasks.start_soon(self._keep_dialled, address)
            tasks.start_soon(self._housekeeping)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The body's exception (if any) propagates as itself: our own tasks never raise.
        await self._stop()

    async def _stop(self) -> None:
        was_running, self._running = self._running, False
        discovery, self._discovery = self._discovery, None
        if discovery is not None:
            with anyio.CancelScope(shield=True):
                await discovery.stop()  # goodbye records: peers forget us at once
        if was_running:
            goodbye = f"{self.name} is shutting down"
            for peer in self._peers.values():
                for session in list(peer.sessions):
                    session.goodbye(goodbye)  # answers what it can, then GOAWAY
        tasks, self._tasks = self._tasks, None
        transport, self._transport = self._transport, None
        try:
            if tasks is not None:
                tasks.cancel_scope.cancel()
                await tasks.__aexit__(None, None, None)
        finally:
            # Even when cancelled from outside (a deadline around the node): every task
            # group is left, in order, or the event loop is left in a broken state.
            if transport is not None:
                await transport.__aexit__(None, None, None)
            stopping = PeerLost("this node has stopped")
            for peer in self._peers.values():
                peer.fail_parked(stopping)

    # --- channels and names ------------------------------------------------------------------

    def unregister(self, name: str) -> None:
        """Withdraw the name ``name`` (handles already looked up keep working).

        Raises ``KeyError`` if no channel of that name is registered here.
        """
        del self._registry[name]

    def register(self, name: str, channel: _Handle) -> None:
        """Give a local channel (or view) a cluster-wide name; lookups get its rights.

        Raises ``TypeError`` for a remote handle or a non-channel, ``ValueError`` for an
        empty name, a name containing ``@``, or a name already registered here.
        """
        if not isinstance(name, str) or not name or "@" in name:
            raise ValueError(f"a channel name must be a non-empty string without '@': {name!r}")
        if not isinstance(channel, _Handle):
            raise TypeError(f"register() takes a qchan channel, not {type(channel).__name__}")
        if not isinstance(channel._endpoint, ChannelState):
            raise TypeError("register() takes a channel hosted on this node, not a remote handle")
        if name in self._registry and self._registry[name] != channel:
            raise ValueError(f"a channel named {name!r} is already registered on this node")
        self._registry[name] = channel

    def ref_for_name(self, name: str, peer: Peer) -> bytes | None:
        """A reference to the channel registered as ``name``, for ``peer``."""
        handle = self._registry.get(name)
        if handle is None:
            return None
        state = handle._endpoint
        assert isinstance(state, ChannelState)
        return self.exports.ref(
            state, _rights_of(handle), peer.key, self._address_seen_by(peer)
        ).encode()

    def _address_seen_by(self, peer: Peer) -> str:
        """Where ``peer`` (and those it passes references to) can reach us.

        A node listening on every interface (0.0.0.0) has no one address: the right one is
        the address the peer's link reached us at, with our port.
        """
        listening = self._listen_at
        if listening.is_unix or listening.host not in _WILDCARD_HOSTS:
            return self.address
        session = peer.session
        if session is not None and session.link.local_address:
            host = parse_address(session.link.local_address).host
            return str(replace(listening, host=host, port=parse_address(self.address).port))
        return self._hello.address or self.address

    async def lookup(self, name: str, timeout: float = 5.0) -> Channel[Any]:  # noqa: ASYNC109
        """Find the channel registered as ``name`` anywhere in the cluster.

        ``"name@node"`` looks only on the node called ``node``. Waits up to ``timeout``
        seconds (peers may connect, and names be registered, meanwhile). The handle has the
        rights the channel was registered with (a registered ``sender()`` view arrives
        send-only).

        Raises:
            NotFound: no such channel within ``timeout``.
            ValueError: an empty name.
        """
        base, _, node_name = name.partition("@")
        if not base:
            raise ValueError(f"lookup() needs a channel name, got {name!r}")
        replies: Channel[bytes | None] = Channel(math.inf)
        with anyio.move_on_after(timeout):
            while True:
                if node_name in ("", self.name) and base in self._registry:
                    return self._registry[base]  # type: ignore[return-value]
                for peer in self._peers.values():
                    session = peer.session
                    if session is not None and node_name in ("", peer.name):
                        session.lookup(base, replies)
                with anyio.move_on_after(_LOOKUP_RETRY):
                    while True:
                        ref = await replies.receive()
                        if ref is not None:
                            return self._handle_from_ref(ref)  # type: ignore[return-value]
        where = f"on node {node_name!r}" if node_name else "in the cluster"
        raise NotFound(f"no channel named {base!r} {where} within {timeout} s")

    async def connect(self, address: str) -> PeerInfo:
        """Dial ``address`` now; return once the peer is authenticated.

        Raises ``PeerLost`` if it cannot be reached, ``AuthenticationError`` if the handshake
        fails, ``ValueError`` for a bad address.
        """
        if not self._running:
            raise RuntimeError("the node is not running (use `async with Node(...)`)")
        link = await self._dial(address)
        peer = self._peers[link.remote_key]
        return self._info(peer)

    def peers(self) -> list[PeerInfo]:
        """The nodes this node knows of, connected or not."""
        return [self._info(peer) for peer in self._peers.values() if peer.name]

    @staticmethod
    def _info(peer: Peer) -> PeerInfo:
        return PeerInfo(peer.name, peer.key, peer.address, peer.connected)

    # --- values: the codec's hooks -------------------------------------------------------------

    def encode_value(self, value: Any, peer: Peer) -> bytes:
        """``value``'s bytes for ``peer``; handles inside become references it can use."""
        return peer.encode_value(value)

    def value_encoder(self, peer: Peer) -> Callable[[Any], bytes]:
        """:meth:`encode_value` for ``peer``, made once per peer: it is on every send's path."""
        return functools.partial(
            _codec.encode,
            channel_encoder=functools.partial(self.reference_for, peer),
            max_size=self._max_value_size,
        )

    def reference_for(self, peer: Peer, handle: _Handle) -> bytes:
        """The reference that stands for ``handle`` in a value sent to ``peer`` (the codec's
        channel encoder)."""
        endpoint = handle._endpoint
        rights = _rights_of(handle)
        if isinstance(endpoint, ChannelState):
            return self.exports.ref(
                endpoint, rights, peer.key, self._address_seen_by(peer)
            ).encode()
        if isinstance(endpoint, RemoteEndpoint):
            return endpoint.ref.restricted(rights).encode()
        raise TypeError(f"cannot send a {type(endpoint).__name__} channel")

    def decode_value(self, data: bytes) -> Any:
        return _codec.decode(data, channel_decoder=self._handle_from_ref)

    def _handle_from_ref(self, data: bytes) -> _Handle:
        ref = ChannelRef.decode(data)
        if ref.home == self.public_key:
            state = self.exports.resolve(ref)
            if state is None:
                # Gone (or from an earlier run of this node): it can only act closed.
                state = ChannelState(ref.capacity)
                state.close()
            return _handle(state, ref.rights)
        peer = self._peers.get(ref.home)
        if peer is None:
            peer = self._new_peer(ref.home, ref.address)
        elif not peer.address:
            peer.address = ref.address
        if peer.incarnation is not None and ref.incarnation != peer.incarnation:
            endpoint = RemoteEndpoint(peer, ref)
            endpoint.stale = True  # a reference minted by an earlier run of that node
            return _handle(endpoint, ref.rights)
        return _handle(peer.endpoint(ref), ref.rights)

    # --- links -------------------------------------------------------------------------------

    def _on_link(self, link: Link, dialled: str = "") -> None:
        """An authenticated link (dialled or accepted): attach it to its peer."""
        key, hello = link.remote_key, link.remote_hello
        if key == self.public_key:
            link.close()  # we dialled ourselves
            return
        if not self._running:
            link.close()
            return
        peer = self._peers.get(key)
        if peer is None:
            peer = self._new_peer(key)
        first = peer.session is None
        peer.adopt_incarnation(hello.incarnation)
        peer.name = hello.name
        if hello.address:
            peer.address = hello.address
        elif dialled and not peer.address:
            peer.address = dialled  # it did not say where it listens: where we reached it
        session = Session(self, peer, link)
        # Attached before it starts: the frames that came with the handshake (and the link's
        # end, if it has ended already) are handled by a session its peer knows of, so an
        # early end detaches it, rather than leaving a closed link to carry the peer's work.
        peer.attach(session)
        link.start(session.on_frames, session.on_closed)
        if first:
            log.info("peer %s joined (%s)", peer.label, peer.address or "inbound")

    def _shut(self, state: ChannelState) -> None:
        """An exported channel was closed: tell every peer that opened it (credits end)."""
        chan = state.export_id
        for peer in self._peers.values():
            for session in peer.sessions:
                if chan in session.grants:
                    session.send([Kind.SHUT, chan])

    def _reclaim_credit(self, state: ChannelState) -> None:
        """A sender would wait on an exported channel that is not full: take back the slots
        reserved for every peer's credit on it (their windows shrink to what they have sent;
        what they send under the windows they were told is buffered all the same)."""
        chan = state.export_id
        if chan is None:
            return
        for peer in self._peers.values():
            account = peer.credit_accounts.get(chan)
            if account is not None and account.state is state:
                account.release()

    def peer_left(self, peer: Peer, error: QchanError) -> None:
        if self._running:
            log.info("peer %s left: %s", peer.label, error)

    async def _dial(self, address: str, expected: bytes | None = None) -> Link:
        if self._transport is None or not self._running:
            raise PeerLost(f"cannot reach {address}: this node is not running")
        link = await self._transport.connect(
            address,
            key=self.key,
            cluster_key=self._cluster_key,
            hello=self._hello,
            trusted=self._trusted,
            expected_remote_key=expected,
            config=self._config,
        )
        self._on_link(link, dialled=str(address))
        return link

    def need_connection(self, peer: Peer) -> None:
        """Operations are parked for ``peer``: dial it (once at a time), or fail them."""
        if peer.dialing:
            return
        if not peer.address or self._tasks is None:
            peer.fail_parked(PeerLost(f"no connection to {peer.label}, and no address to dial"))
            return
        peer.dialing = True
        self._tasks.start_soon(self._dial_for_parked, peer)

    async def _dial_for_parked(self, peer: Peer) -> None:
        try:
            with anyio.fail_after(self._config.peer_timeout):
                await self._dial(peer.address, expected=peer.key)
        except (QchanError, TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            peer.fail_parked(PeerLost(f"cannot reach {peer.label} at {peer.address}: {reason}"))
        finally:
            peer.dialing = False
        if peer.parked and peer.session is None:  # the link came and went already
            peer.fail_parked(PeerLost(f"lost the connection to {peer.label}"))

    async def _keep_dialled(self, address: str) -> None:
        """Dial a configured peer, and again whenever its link ends (with backoff)."""
        delay = _REDIAL_MIN
        while True:
            try:
                link = await self._dial(address)
            except (QchanError, OSError) as exc:
                log.debug("dialling %s failed: %s", address, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, _REDIAL_MAX)
                continue
            delay = _REDIAL_MIN
            await link.wait_closed()
            await anyio.sleep(_REDIAL_MIN)

    def _new_peer(self, key: bytes, address: str = "") -> Peer:
        if len(self._peers) >= self._sweep_peers_at:
            for idle in [k for k, p in self._peers.items() if p.forgettable and not p.discovered]:
                del self._peers[idle]
            self._sweep_peers_at = max(_SWEEP_PEERS_AT, 2 * len(self._peers))
        peer = self._peers[key] = Peer(self, key, address)
        return peer

    # --- discovery ---------------------------------------------------------------------------

    def _discovered(self, name: str, public_key: bytes, addresses: list[str]) -> None:
        """Discovery saw a node of our cluster (a hint only: the handshake decides)."""
        if public_key == self.public_key or not addresses or not self._running:
            return
        if self._trusted is not None and public_key not in self._trusted:
            return  # not one we would admit anyway: don't even dial
        peer = self._peers.get(public_key)
        if peer is None:
            if len(self._peers) >= _MAX_DISCOVERED_PEERS:
                # A flood of announcements cannot grow our tables without bound: make room
                # among peers never reached that hold nothing, else ignore this one.
                idle = [k for k, p in self._peers.items() if p.forgettable and not p.discovered]
                if not idle:
                    return
                del self._peers[idle[0]]
            peer = self._new_peer(public_key)
        peer.candidates = addresses
        if not peer.address:
            peer.address = addresses[0]
        peer.discovered = True
        if not peer.redialing and self._tasks is not None:
            peer.redialing = True
            self._tasks.start_soon(self._keep_discovered, peer)

    def _undiscovered(self, public_key: bytes) -> None:
        """A discovered node said goodbye, or its record expired: stop dialling it."""
        peer = self._peers.get(public_key)
        if peer is None:
            return
        peer.discovered = False
        if peer.forgettable:  # never reached, holds nothing (a forged record, say)
            del self._peers[public_key]

    async def _keep_discovered(self, peer: Peer) -> None:
        """Keep a discovered peer dialled while it is announced (with backoff)."""
        delay = _REDIAL_MIN
        if self.public_key > peer.key:
            # Both nodes see each other's record at about the same time. The one with the
            # smaller key dials; the other only if no link has come up after a moment (so two
            # links between the same pair, then one closed, are the exception).
            await anyio.sleep(_DIAL_DEFERENCE)
        try:
            while peer.discovered and self._running:
                if peer.session is None:
                    await self._dial_budget.take()
                    for address in list(peer.candidates):
                        try:
                            with anyio.fail_after(self._config.handshake_timeout):
                                await self._dial(address, expected=peer.key)
                        except (QchanError, OSError, TimeoutError) as exc:
                            log.debug("dialling discovered %s at %s: %s", peer.label, address, exc)
                            continue
                        delay = _REDIAL_MIN
                        break
                    else:
                        await anyio.sleep(delay)
                        delay = min(delay * 2, _REDIAL_MAX)
                        continue
                await anyio.sleep(_HOUSEKEEPING_PERIOD)
        finally:
            peer.redialing = False

    def now(self) -> float:
        """The event loop's clock; callable from the loop's callbacks too (see _loop_clock)."""
        return self._clock()

    def release_dropped(self) -> None:
        """Tell the homes of the channels whose last handle here was garbage-collected.

        Called where nothing is half done: before the frames of each read are handled, and by
        the housekeeping task.
        """
        dropped = self.dropped
        while dropped:
            peer, chan, incarnation = dropped.popleft()
            peer.released(chan, incarnation)

    async def _housekeeping(self) -> None:
        # A peer away this long is gone for good: the buffer slots and channels it held here
        # are let go (a peer back sooner resumes where it was: credited sends are resent).
        forget_after = 2 * self._config.peer_timeout
        while True:
            await anyio.sleep(_HOUSEKEEPING_PERIOD)
            self.release_dropped()
            now = anyio.current_time()
            for peer in list(self._peers.values()):
                peer.close_idle_duplicates(now, 2 * self._config.heartbeat_interval)
                if peer.left_at is not None and now - peer.left_at > forget_after:
                    peer.left_at = None
                    peer.release_holdings()


def _public_key(key: bytes | NodeKey) -> bytes:
    if isinstance(key, NodeKey):
        return key.public
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise ValueError("trusted must hold 32-byte public keys (or NodeKeys)")
    return bytes(key)
