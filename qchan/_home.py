"""The home side of remote channels: other nodes' operations on the channels this node hosts.

A remote node's ``SEND`` or ``RECV`` becomes a waiter in the channel's own queues, next to
local tasks' waiters (:class:`RemoteSender`, :class:`RemoteReceiver`); the channel's matching
(:class:`qchan._channel.ChannelState`) then treats everyone alike. What differs is only how a
remote waiter hears the outcome: a frame back over its link.

:class:`Exports` is the table of channels this node has shown to others: ids, capability
tokens, and which peers hold references (so channels nobody can reach any more are let go).
:class:`CreditAccount` is a peer's standing on one buffered channel: the highest sequence
number it may send under credit (its *window*), the last one received (for de-duplication
after a reconnect), and what it was last told.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol, final

from qchan._channel import ChannelState, SenderWaiting
from qchan._errors import ChannelClosed, ProtocolError, QchanError
from qchan._refs import ChannelRef, TokenMinter
from qchan.protocol.frames import Frame, Kind, Mode

__all__ = [
    "CreditAccount",
    "Exports",
    "HomeSession",
    "RemoteReceiver",
    "RemoteSender",
    "credit_target",
    "error_frame",
]

_UNASKED: Final = 0
_ASKED: Final = 1
_GRANTED: Final = 2


class HomeSession(Protocol):
    """What a remote waiter needs of the link its operation came over."""

    def send(self, frame: Frame) -> None: ...

    def encode_value(self, value: Any) -> bytes:
        """The value's bytes for this peer; TypeError/ValueError if it cannot be sent."""
        ...

    def served(self, op_id: int) -> None:
        """The peer's operation ``op_id`` is over: forget it."""
        ...

    def sent_to_buffer(self, state: ChannelState) -> None:
        """A plain send went into ``state``'s buffer: the peer may like credits."""
        ...


def error_frame(op_id: int, error: QchanError) -> Frame:
    """The reply that makes the peer's operation raise ``error``."""
    if isinstance(error, ChannelClosed):
        return [Kind.CLOSED, op_id]
    return [Kind.FAILED, op_id, error.code, str(error)]


@final
class RemoteSender:
    """A peer's send, queued at one of our channels."""

    __slots__ = ("cancel_requested", "claim", "mode_select", "op_id", "session", "state", "value")

    op = None
    synchronous = False
    pending = None  # (a sender has nothing in flight of its own)

    def __init__(
        self, session: HomeSession, op_id: int, state: ChannelState, value: Any, mode: int
    ) -> None:
        self.session = session
        self.op_id = op_id
        self.state = state
        self.value = value
        # A select's send must be claimed (CLAIM/GRANT) before it is handed over.
        self.mode_select = mode == Mode.SELECT
        self.claim = _UNASKED if self.mode_select else _GRANTED
        self.cancel_requested = False  # a CANCEL came while it was being handed over

    def commit(self) -> bool | None:
        if self.claim == _GRANTED:
            return True
        if self.claim == _UNASKED:
            self.claim = _ASKED
            self.session.send([Kind.CLAIM, self.op_id])
        return None

    def granted(self) -> None:
        self.claim = _GRANTED
        state = self.state
        state.match()
        if self.claim == _GRANTED and self in state.senders:
            self.returned()  # the receiver that prompted the claim left: free the select

    def returned(self) -> bool:
        if self.cancel_requested:  # the handoff fell through: now the CANCEL can win
            self.session.served(self.op_id)
            self.session.send([Kind.CANCELLED, self.op_id])
            return False
        if self.claim == _GRANTED and self.mode_select:
            self.claim = _UNASKED
            self.session.send([Kind.UNCLAIM, self.op_id])
        return True

    def complete(self) -> None:
        self.session.served(self.op_id)
        self.session.send([Kind.ACK, self.op_id])
        if self.state.capacity:
            self.session.sent_to_buffer(self.state)

    def fail(self, error: QchanError) -> None:
        self.session.served(self.op_id)
        self.session.send(error_frame(self.op_id, error))

    def withdraw(self) -> bool:
        """Take it off the queue if it is still there (not handed over): True if it was."""
        try:
            self.state.senders.remove(self)
        except ValueError:
            return False
        return True


@final
class RemoteReceiver:
    """A peer's receive, queued at one of our channels."""

    __slots__ = ("op_id", "pending", "session", "state")

    op = None
    synchronous = False

    def __init__(self, session: HomeSession, op_id: int, state: ChannelState) -> None:
        self.session = session
        self.op_id = op_id
        self.state = state
        self.pending: tuple[Any, SenderWaiting | None, int] | None = None

    def offer(self, value: Any) -> bool | None:
        try:
            data = self.session.encode_value(value)
        except (TypeError, ValueError) as exc:
            # A local sender put in something that cannot cross the network: this receive
            # fails; the value stays for a receiver that can take it.
            self.session.served(self.op_id)
            failure = QchanError(f"the value cannot be sent to another node: {exc}")
            self.session.send(error_frame(self.op_id, failure))
            return False
        self.session.send([Kind.DELIVER, self.op_id, data])
        return None

    def end(self) -> None:
        self.session.served(self.op_id)
        self.session.send([Kind.CLOSED, self.op_id])

    def withdraw(self) -> bool:
        try:
            self.state.receivers.remove(self)
        except ValueError:
            return False
        return True


@final
class CreditAccount:
    """One peer's credits on one of our buffered channels.

    Credit is a window of sequence numbers, not a count, so that telling it again (after a
    reconnect, when the last CREDIT may have been lost) is harmless: the peer may send up to
    ``window``; slots for ``last_seq + 1 .. window`` are reserved in ``state``.
    """

    __slots__ = (
        "last_seq",
        "state",
        "told_acked",
        "told_link",
        "told_most",
        "told_window",
        "window",
    )

    def __init__(self, state: ChannelState | None) -> None:
        self.state = state
        self.last_seq = 0  # the highest credited send received (sequence numbers start at 1)
        self.window = 0  # the highest sequence number granted
        # What the peer was last told, and on which link: a CREDIT on a link that has ended
        # (even one the peer gave up on before we noticed) may never have arrived.
        self.told_acked = -1
        self.told_window = -1
        self.told_link = b""
        self.told_most = 0  # the widest window ever told: no credited send may go beyond

    def told(self, link_id: bytes) -> bool:
        """Whether the peer knows, from a CREDIT on ``link_id``, what it may send."""
        return (
            self.told_link == link_id
            and self.told_window == self.window
            and (self.outstanding > 0 or self.told_acked == self.last_seq)
        )

    @property
    def outstanding(self) -> int:
        """Slots reserved for this peer and not yet used."""
        return max(self.window - self.last_seq, 0)

    def release(self) -> None:
        """Give the reserved slots back (the peer left, or let the channel go)."""
        if self.state is not None and self.outstanding:
            self.state.unreserve(self.outstanding)
        self.window = self.last_seq


def credit_target(capacity: float) -> int:
    """How many credits one sending peer may hold on a channel of ``capacity``."""
    if capacity == math.inf:
        return 1024
    return max(1, min(int(capacity) // 2, 1024))


@final
class Exports:
    """The channels this node has shown to other nodes (see the module docstring).

    A channel stays in the table while some peer holds a reference to it; after that only a
    weak entry remains, so a reference still in transit can find it for as long as local code
    keeps the channel alive.
    """

    __slots__ = (
        "_holders",
        "_ids",
        "_minter",
        "_on_close",
        "_reclaim",
        "_strong",
        "_weak",
        "address",
        "home",
        "incarnation",
    )

    def __init__(
        self,
        minter: TokenMinter,
        home: bytes,
        incarnation: bytes,
        address: str,
        on_close: Callable[[ChannelState], None],
        reclaim: Callable[[ChannelState], None],
    ) -> None:
        self._minter = minter
        self._on_close = on_close  # an exported channel was closed: its holders hear of it
        self._reclaim = reclaim  # its promised slots are wanted (ChannelState.reclaim)
        self.home = home
        self.incarnation = incarnation
        self.address = address
        self._ids = itertools.count(1)
        self._strong: dict[int, ChannelState] = {}
        self._weak: weakref.WeakValueDictionary[int, ChannelState] = weakref.WeakValueDictionary()
        self._holders: dict[int, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._strong)

    def ref(self, state: ChannelState, rights: int, holder: bytes, address: str = "") -> ChannelRef:
        """A reference to ``state`` with ``rights``, given to the peer ``holder``, naming
        ``address`` (default: ours) as where to reach this node."""
        chan = state.export_id
        if chan is None:
            chan = state.export_id = next(self._ids)
            self._weak[chan] = state
            state.on_close = self._on_close
            state.reclaim = self._reclaim
        self._strong[chan] = state
        self._holders.setdefault(chan, set()).add(holder)
        send, receive = self._minter.tokens(chan, rights)
        return ChannelRef(
            self.home,
            self.incarnation,
            address or self.address,
            chan,
            state.capacity,
            send,
            receive,
        )

    def resolve(self, ref: ChannelRef) -> ChannelState | None:
        """One of our own channels from a reference that came back to us (tokens checked)."""
        if ref.incarnation != self.incarnation:
            return None
        if not self._minter.check(ref.chan, ref.rights, ref.tokens(ref.rights)):
            raise ProtocolError(f"forged reference to channel {ref.chan}")
        return self._weak.get(ref.chan)

    def open(self, chan: int, rights: int, tokens: bytes, holder: bytes) -> ChannelState | None:
        """A peer proves its right to ``chan``. None: the channel is gone (it acts closed).

        Raises :class:`ProtocolError` if the tokens are not ours.
        """
        if not self._minter.check(chan, rights, tokens):
            raise ProtocolError(f"OPEN of channel {chan} with tokens this node never issued")
        state = self._weak.get(chan)
        if state is not None:
            self._strong[chan] = state
            self._holders.setdefault(chan, set()).add(holder)
        return state

    def release(self, chan: int, holder: bytes) -> None:
        """``holder`` dropped its last reference to ``chan``."""
        holders = self._holders.get(chan)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            del self._holders[chan]
            self._strong.pop(chan, None)

    def forget_holder(self, holder: bytes) -> None:
        """The peer ``holder`` is gone for good: it holds nothing any more."""
        for chan in [chan for chan, holders in self._holders.items() if holder in holders]:
            self.release(chan, holder)
