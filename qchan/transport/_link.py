"""What both backends share: the life of a link, its events, its timer logic, closing once.

A backend (:mod:`._asyncio`, :mod:`._streams`) moves bytes and time in and out and supplies six
small hooks (``_now``, ``_flush_later``, ``_flush_after_read``, ``_shutdown``,
``_rearm_timer``, ``_pause_transport``/``_resume_transport``). Everything that decides
something lives here, once: how events from the :class:`~qchan.protocol.Connection` reach the
node, what a failure means, and that ``on_closed`` fires exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from qchan._errors import AuthenticationError, PeerLost, QchanError
from qchan.crypto.keys import ClusterKey, NodeKey
from qchan.protocol import (
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    Event,
    Frame,
    FramesReceived,
    GoawayReason,
    HandshakeCompleted,
    Hello,
    Kind,
    State,
)
from qchan.transport._errors import lost, unreachable

__all__ = ["CLOSE_LINGER", "READ_SIZE", "Link", "Params"]

logger: Final = logging.getLogger("qchan.transport")

CLOSE_LINGER: Final = 2.0
"""Seconds a closing link may spend writing its last bytes and waiting for the peer's EOF."""
READ_SIZE: Final = 256 * 1024
"""Bytes asked of the socket per read: a busy link decodes hundreds of frames per read."""

_OPEN: Final = State.OPEN

OnFrames = Callable[[list[Frame]], None]
OnClosed = Callable[[QchanError], None]
HandshakeWaiter = Callable[["Link", "QchanError | None"], None]


@dataclass(frozen=True, slots=True)
class Params:
    """What every connection of one ``listen`` or ``connect`` is made with."""

    key: NodeKey
    cluster_key: ClusterKey
    hello: Hello
    trusted: frozenset[bytes] | None
    expected_remote_key: bytes | None
    config: ConnectionConfig

    def connection(self, *, initiator: bool, now: float) -> Connection:
        return Connection(
            initiator=initiator,
            key=self.key,
            cluster_key=self.cluster_key,
            hello=self.hello,
            now=now,
            trusted=self.trusted,
            expected_remote_key=self.expected_remote_key,
            config=self.config,
        )


class Link:
    """One authenticated connection to a peer node.

    Made by :meth:`Transport.connect <qchan.transport.Transport.connect>` or handed to a
    listener's ``on_link``; never constructed by the node. ``remote_key`` is the peer's static
    public key (its identity, checked by the handshake), ``remote_hello`` what it said about
    itself. ``local_address``/``remote_address`` are address texts ("" when a Unix socket peer
    has no name).

    Nothing here blocks but :meth:`wait_closed`. Frames go out with :meth:`send` and come in
    through the ``on_frames`` callback given to :meth:`start`; the end of the link, whatever
    caused it, comes exactly once through ``on_closed``.
    """

    __slots__ = (
        "_conn",
        "_early",
        "_error",
        "_flush_scheduled",
        "_graceful",
        "_handshake_waiter",
        "_hold_until",
        "_on_closed",
        "_on_frames",
        "_params",
        "_paused",
        "closed",
        "initiator",
        "local_address",
        "remote_address",
        "remote_hello",
        "remote_key",
    )

    remote_key: bytes
    remote_hello: Hello
    _conn: Connection

    def __init__(self, params: Params, *, initiator: bool, waiter: HandshakeWaiter) -> None:
        self._params = params
        self.initiator = initiator
        self.closed = False
        """True once the link has ended (``on_closed`` has fired, or fires at ``start``)."""
        self.local_address = ""
        self.remote_address = ""
        self._handshake_waiter: HandshakeWaiter | None = waiter
        self._on_frames: OnFrames | None = None
        self._on_closed: OnClosed | None = None
        self._early: list[Frame] = []
        self._error: QchanError | None = None
        self._flush_scheduled = False
        self._graceful = False
        self._paused = False
        self._hold_until = 0.0

    # --- the node's interface ------------------------------------------------------------

    @property
    def link_id(self) -> bytes:
        """This link's name, the same at both ends (set once the handshake is done)."""
        return self._conn.link_id

    def start(self, on_frames: OnFrames, on_closed: OnClosed) -> None:
        """Attach the node's callbacks; deliver the frames (and the end) that came before.

        ``on_frames(frames)`` is called synchronously from the read path with every frame
        decoded from one read, in order, never with an empty list; ``on_closed(error)`` exactly
        once when the link ends: :class:`~qchan.PeerLost` (the peer's GOAWAY with its text, EOF,
        reset, heartbeat timeout, a local :meth:`close`) or :class:`~qchan.ProtocolError` (the
        peer sent something malformed). An exception raised by a callback is logged and closes
        the link. Raises ``RuntimeError`` if called twice.
        """
        if self._on_frames is not None:
            raise RuntimeError("Link.start() was already called")
        self._on_frames = on_frames
        self._on_closed = on_closed
        early, self._early = self._early, []
        if early:
            self._handle([FramesReceived(early)])
        if self._error is not None and self._on_closed is not None:
            self._call_on_closed()

    def send(self, frame: Frame) -> None:
        """Queue ``frame``; never blocks.

        Frames sent during one event-loop turn are sealed into as few transport messages as fit
        and written together at the end of the turn. After the link has closed, frames are
        dropped: ``on_closed`` is how the node learns of the end.
        """
        conn = self._conn
        if conn.state is not _OPEN:
            return
        conn.send(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_later()

    def close(self, reason: GoawayReason = GoawayReason.SHUTDOWN, text: str = "") -> None:
        """Say GOAWAY, write what is queued and close the socket; ``on_closed`` fires.

        Idempotent. Returns at once; :meth:`wait_closed` waits for the socket to be closed.
        """
        if self.closed:
            return
        conn: Connection | None = getattr(self, "_conn", None)  # None: not connected yet
        said_goaway = conn is not None and conn.state is _OPEN
        if conn is not None:
            conn.close(reason, text)
        why = f"{reason.name.lower()}: {text}" if text else reason.name.lower()
        self._end(PeerLost(f"link closed locally ({why})"), graceful=said_goaway)

    def pause_reading(self) -> None:
        """Stop reading from the peer (backpressure): no ``on_frames`` until resumed.

        While paused the link cannot hear the peer, so it does not judge the peer's silence;
        it keeps pinging, so the peer does not give up on us either.
        """
        if not self._paused and not self.closed:
            self._paused = True
            self._pause_transport()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        if self._paused:
            self._paused = False
            # What the peer said meanwhile is still unread: give it time to be read before
            # judging the peer's silence.
            self._hold_until = self._now() + self._params.config.heartbeat_interval
            if not self.closed:
                self._resume_transport()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed and every task or callback of the link is done."""
        raise NotImplementedError

    # --- shared machinery: the backends call these ---------------------------------------

    def _begin(self, now: float) -> None:
        """The socket is connected: start the protocol (the initiator's message 1 is queued)."""
        self._conn = self._params.connection(initiator=self.initiator, now=now)

    def _feed(self, data: bytes, now: float) -> None:
        """Bytes from the socket."""
        self._flush_scheduled = True  # the read path flushes once, at its end
        events = self._conn.receive_data(data, now)
        if events:
            self._handle(events)
        self._flush_after_read()

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is FramesReceived:
                on_frames = self._on_frames
                if on_frames is None:
                    self._early += event.frames
                    continue
                try:
                    on_frames(event.frames)
                except Exception as exc:
                    self._callback_failed("on_frames", exc)
            elif type(event) is HandshakeCompleted:
                self.remote_key = event.remote_key
                self.remote_hello = event.hello
                self._rearm_timer()  # from the handshake deadline to the heartbeat's
                waiter, self._handshake_waiter = self._handshake_waiter, None
                if waiter is not None:
                    waiter(self, None)
            elif type(event) is ConnectionTerminated:
                self._end(self._handshake_error(event.error, None))
            # GoawayReceived: its ConnectionTerminated follows, with the peer's text.

    def _on_deadline(self, now: float) -> float | None:
        """The timer fired: ping, give up on a silent peer or a slow handshake; next deadline."""
        conn = self._conn
        if conn.state is _OPEN:
            if self._paused:
                conn.send([Kind.PING, 0])
                return now + self._params.config.heartbeat_interval
            if now < self._hold_until:
                return self._hold_until
        events = conn.handle_timer(now)
        if events:
            if self._handshake_waiter is not None:
                # A handshaking Connection's timer has one thing to say: its deadline passed.
                error = events[-1].error  # type: ignore[union-attr]
                self._end(self._handshake_error(error, TimeoutError(str(error))))
                return None
            self._handle(events)
        return None if self.closed else conn.next_deadline()

    def _lost(self, exc: BaseException | None) -> None:
        """The socket failed or reached EOF (``exc`` None)."""
        if not self.closed:
            self._end(self._handshake_error(lost(exc), exc, transport=True))

    def _handshake_error(
        self, error: QchanError, cause: BaseException | None, *, transport: bool = False
    ) -> QchanError:
        """What a failure means to a dialler still waiting for its handshake."""
        if self._handshake_waiter is None or not self.initiator:
            return error
        address = self.remote_address
        if transport or isinstance(cause, TimeoutError):
            mapped = unreachable(address, cause, handshaking=True)
            assert isinstance(mapped, QchanError)
            return mapped
        if isinstance(error, AuthenticationError):
            wrapped: QchanError = AuthenticationError(
                f"cannot authenticate with {address}: {error}"
            )
        else:
            wrapped = type(error)(f"{address}: {error}")
        wrapped.__cause__ = error
        return wrapped

    def _end(self, error: QchanError, *, graceful: bool = False) -> None:
        """End the link, exactly once: close the socket, tell whoever waits.

        ``graceful`` (we said GOAWAY): after the last bytes, shut our side down and let the peer
        close first, so that our GOAWAY is read before any reset could discard it.
        """
        if self.closed:
            return
        self.closed = True
        self._error = error
        self._graceful = graceful
        self._shutdown()
        waiter, self._handshake_waiter = self._handshake_waiter, None
        if waiter is not None:
            waiter(self, error)
        elif self._on_closed is not None:
            self._call_on_closed()

    def _call_on_closed(self) -> None:
        on_closed, self._on_closed = self._on_closed, None
        assert on_closed is not None
        assert self._error is not None
        try:
            on_closed(self._error)
        except Exception:
            logger.exception("on_closed of %r raised", self)

    def _callback_failed(self, name: str, exc: Exception) -> None:
        logger.exception("%s of %r raised; closing the link", name, self)
        if not self.closed:
            self._conn.close(GoawayReason.SHUTDOWN, "internal error")
            error = QchanError(f"link closed: {name} raised {exc!r}")
            error.__cause__ = exc
            self._end(error)

    # --- backend hooks ---------------------------------------------------------------------

    def _now(self) -> float:
        raise NotImplementedError

    def _flush_later(self) -> None:
        """Arrange for the queued frames to be written at the end of this turn."""
        raise NotImplementedError

    def _flush_after_read(self) -> None:
        """A read was handled: write what it produced (replies, PONGs, handshake messages)."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        """Write what the Connection still has, close the socket (see ``_graceful``), stop
        timers and tasks. Nothing may take longer than :data:`CLOSE_LINGER`."""
        raise NotImplementedError

    def _rearm_timer(self) -> None:
        """The Connection's next deadline may have moved earlier: re-arm the timer."""
        raise NotImplementedError

    def _pause_transport(self) -> None:
        raise NotImplementedError

    def _resume_transport(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        peer = self.remote_hello.name if hasattr(self, "remote_hello") else "?"
        state = (
            "closed" if self.closed else "open" if hasattr(self, "remote_key") else "handshaking"
        )
        return f"<Link {role} {peer}@{self.remote_address or '?'} {state}>"
