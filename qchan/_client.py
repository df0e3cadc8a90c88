"""The client side of remote channels: a handle's endpoint when the channel lives elsewhere.

:class:`RemoteEndpoint` implements the same :class:`~qchan._channel.Endpoint` interface as a
local channel's state, so ``Channel``, its views and ``select`` use it unchanged. Every blocking
case becomes a :class:`ClientOp`: a waiter that sends ``SEND`` or ``RECV`` to the channel's home
and finishes its operation when the answer comes back (see qchan._session for the frames).

Sends on a buffered channel stream under *credit*: the home promises buffer slots, and a send
holding a credit returns as soon as its ``PUSH`` frame is queued on the link, carrying a
sequence number. Such values stay in ``unacked`` until the home confirms them, so they can be
sent again after a reconnect (the home drops duplicates). The home answers every batch of
credited sends with a ``CREDIT`` frame; a send that finds no credit while such an answer is on
its way waits for it (``credit_waiters``) rather than asking the home for a slot that the
home may just have promised to us. With no credit and no answer pending it goes as a plain
``SEND``, which waits at the home like any blocked sender (and asks for credit).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final, final

from qchan._channel import NOT_READY, ChannelStatistics
from qchan._errors import ChannelClosed, PeerLost, QchanError
from qchan._operation import Operation, Waiter
from qchan._refs import ChannelRef
from qchan.protocol.frames import Mode

if TYPE_CHECKING:
    from qchan._peer import Peer

__all__ = ["ClientOp", "RemoteEndpoint"]

PARKED: Final = 0  # waiting for a link to the home
SENT: Final = 1  # SEND or RECV is on its way or answered in part
CANCELLING: Final = 2  # a cancelled plain send asked the home to withdraw it
CREDIT_WAIT: Final = 3  # a send waiting for the home's answer to our credited sends


@final
class ClientOp(Waiter):
    """One case of a local operation, waiting at a remote channel's home."""

    __slots__ = ("data", "endpoint", "granted", "is_send", "mode", "op_id", "session", "status")

    def __init__(
        self,
        op: Operation,
        index: int,
        endpoint: RemoteEndpoint,
        data: bytes | None,
    ) -> None:
        self.op = op  # (Waiter's fields, set here: this is made for every remote call)
        self.index = index
        self.endpoint = endpoint
        self.data = data  # the encoded value of a send; None for a receive
        self.is_send = data is not None
        # A lone send is claimed at once: the home may hand it over without asking.
        self.mode = Mode.PLAIN if op.cases == 1 else Mode.SELECT
        self.granted = False  # a select's send that the home was allowed to hand over
        self.status = PARKED
        self.op_id = 0
        self.session: Any = None  # the Session it was sent on

    def withdraw(self) -> None:
        self.endpoint.peer.withdraw(self)

    def cancel_claimed(self) -> None:
        self.endpoint.peer.cancel_claimed(self)

    def lost_error(self, why: str) -> PeerLost:
        """The error for this case when its link dies: was the value possibly taken?"""
        from qchan._errors import DeliveryUncertain

        if self.is_send and (self.mode == Mode.PLAIN or self.granted) and self.status != PARKED:
            return DeliveryUncertain(f"{why}; the value may or may not have been received")
        return PeerLost(why)


@final
class RemoteEndpoint:
    """A channel hosted on another node (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "closed_hint",
        "credit_waiters",
        "drained_hint",
        "next_seq",
        "peer",
        "ref",
        "stale",
        "unacked",
        "window",
    )

    local = False

    def __init__(self, peer: Peer, ref: ChannelRef) -> None:
        self.peer = peer
        self.ref = ref
        self.window = 0  # the highest sequence number the home allows us (credit)
        self.next_seq = 0
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.credit_waiters: deque[ClientOp] = deque()
        self.closed_hint = False  # the home told us the channel is closed
        self.drained_hint = False  # ... and drained
        self.stale = False  # the home restarted: this channel is gone

    @property
    def chan(self) -> int:
        return self.ref.chan

    # --- readings: what this node knows ---------------------------------------------------

    @property
    def capacity(self) -> float:
        return self.ref.capacity

    @property
    def closed(self) -> bool:
        return self.closed_hint

    def buffered(self) -> int:
        return 0  # the buffer lives at the home; asking would take a round trip

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(
            buffered=0,
            capacity=self.ref.capacity,
            waiting_senders=0,
            waiting_receivers=0,
            closed=self.closed_hint,
        )

    # --- the Endpoint interface -------------------------------------------------------------

    def _stale(self) -> PeerLost:
        return PeerLost(
            f"the node hosting this channel ({self.peer.label}) restarted; look it up again"
        )

    def poll_send(self, value: Any) -> bool:
        if self.stale:
            raise self._stale()
        if self.closed_hint:
            raise ChannelClosed("send on a closed channel")
        if self.window > self.next_seq and self.peer.session is not None:
            self._push(self.peer.encode_value(value))
            return True
        return False

    def _push(self, data: bytes) -> None:
        session = self.peer.session
        assert session is not None
        self.next_seq += 1
        self.unacked.append((self.next_seq, data))
        self.peer.streaming.add(self)
        session.push(self, self.next_seq, data)

    def poll_receive(self) -> tuple[bool, Any, bool]:
        if self.stale:
            raise self._stale()
        if self.drained_hint:
            return True, None, False  # closed and drained stays so: nothing can be sent
        return NOT_READY

    def wait_send(self, op: Operation, index: int, value: Any) -> None:
        if self.stale:
            raise self._stale()
        client = ClientOp(op, index, self, self.peer.encode_value(value))
        op.waiters.append(client)
        if client.mode == Mode.PLAIN:
            op.claim(index)
        if self.unacked and self.peer.session is not None:
            client.status = CREDIT_WAIT  # the home's CREDIT is on its way: wait for it
            self.credit_waiters.append(client)
        else:
            self.peer.submit(client)

    def wait_receive(self, op: Operation, index: int) -> None:
        if self.stale:
            raise self._stale()
        client = ClientOp(op, index, self, None)
        op.waiters.append(client)
        self.peer.submit(client)

    def close(self) -> None:
        if self.stale:
            raise self._stale()
        if not self.closed_hint:
            self.peer.close_channel(self)
            self.shut()

    # --- credits ----------------------------------------------------------------------------

    def credited(self, acked: int, window: int) -> None:
        """The home confirmed sends up to ``acked`` and allows sends up to ``window``."""
        unacked = self.unacked
        while unacked and unacked[0][0] <= acked:
            unacked.popleft()
        if not unacked:
            self.peer.streaming.discard(self)
            if acked > self.next_seq:
                # The home's record counts the sends of an earlier handle of ours to this
                # channel (its RELEASE was lost with a link, or is still on its way): go on
                # from there, or our sends would look like ones it has already.
                self.next_seq = acked
        if window > self.window:
            self.window = window
        waiters = self.credit_waiters
        while waiters and self.window > self.next_seq:
            client = waiters.popleft()
            if client.op.claim(client.index):  # (a select may have done something else)
                self._push(client.data or b"")
                client.op.finish(client.index)
        if waiters and not unacked:
            # No credit, and no answer pending: the rest go as plain sends.
            while waiters:
                client = waiters.popleft()
                client.status = PARKED
                self.peer.submit(client)

    def shut(self) -> None:
        """The home closed the channel: no more credit, and sends waiting for it fail."""
        self.closed_hint = True
        self.window = self.next_seq
        self.fail_credit_waiters(ChannelClosed("send on a closed channel"))

    def fail_credit_waiters(self, error: QchanError) -> None:
        """The link died with sends waiting for credit: they were never sent."""
        waiters, self.credit_waiters = self.credit_waiters, deque()
        for client in waiters:
            client.op.finish(client.index, error=error)

    def __repr__(self) -> str:
        return f"<RemoteEndpoint chan={self.ref.chan} at {self.peer.label}>"
