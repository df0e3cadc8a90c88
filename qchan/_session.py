"""One authenticated link to a peer, seen from the node: the frames both ways, dispatched.

A session is both a client and a home. As a client it carries this node's operations on the
peer's channels (:class:`~qchan._client.ClientOp`, by op id). As a home it carries the peer's
operations on this node's channels (:mod:`qchan._home` waiters, by the peer's op id) and the
channels the peer has opened on this link, with their rights.

Every frame kind has one handler in :data:`_HANDLERS`. A handler that meets something the
peer should never have sent (an operation on a channel it did not open, a right it was not
given, an answer to a question never asked) raises :class:`~qchan.ProtocolError`: the link is
closed with ``GOAWAY`` and only this peer's operations are affected. When the link ends, every
operation waiting on it fails at once: receives and unsent sends with ``PeerLost``, sends that
may have been handed over with ``DeliveryUncertain``.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from qchan._channel import Channel, ChannelState
from qchan._client import CANCELLING, SENT, ClientOp, RemoteEndpoint
from qchan._errors import (
    ChannelClosed,
    DeliveryUncertain,
    PeerLost,
    ProtocolError,
    QchanError,
    error_for_code,
)
from qchan._home import RemoteReceiver, RemoteSender, credit_target, error_frame
from qchan.protocol.connection import LINK_ID_LEN
from qchan.protocol.frames import Frame, GoawayReason, Kind, Mode, Rights
from qchan.transport import Link

if TYPE_CHECKING:
    from qchan._peer import Peer
    from qchan.node import Node

__all__ = ["Session"]

log = logging.getLogger("qchan.node")

#: Past this many of a peer's operations waiting here, stop reading its link (never drop).
MAX_OUTSTANDING: Final = 10_000
#: DELIVERs taken on a link remembered in case it is lost before our TAKENs arrive (SETTLE).
_TAKEN_REMEMBERED: Final = MAX_OUTSTANDING
#: RELEASEs said on a link remembered in case it is lost before they are read (said again).
_RELEASES_REMEMBERED: Final = 1024


@final
class Session:
    """A link to one peer and everything in flight on it (see the module docstring)."""

    __slots__ = (
        "_credit_dirty",
        "_paused",
        "_peer_ids_seen",
        "closed",
        "grants",
        "home_ops",
        "idle_since",
        "link",
        "lookups",
        "node",
        "opened",
        "ops",
        "peer",
        "recently_taken",
        "released",
        "retired",
    )

    def __init__(self, node: Node, peer: Peer, link: Link) -> None:
        self.node = node
        self.peer = peer
        self.link = link
        self.closed = False
        self.retired = False  # a duplicate link kept only until it is idle
        self.idle_since: float | None = None  # (a retired link: since when it was idle)
        self.recently_taken: deque[int] = deque(maxlen=_TAKEN_REMEMBERED)  # (for SETTLE)
        self.released: deque[int] = deque(maxlen=_RELEASES_REMEMBERED)
        # client side: our operations at the peer's channels
        self.ops: dict[int, ClientOp] = {}
        self.lookups: dict[int, Channel[bytes | None]] = {}
        self.opened: set[int] = set()  # peer channels we sent OPEN for on this link
        # home side: the peer's operations at our channels
        self.home_ops: dict[int, RemoteSender | RemoteReceiver] = {}
        self.grants: dict[int, tuple[ChannelState | None, int]] = {}
        self._credit_dirty: set[int] = set()
        self._paused = False
        self._peer_ids_seen = 0  # above every operation id the peer has used

    # --- sending ---------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        if not self.closed:
            self.link.send(frame)

    def encode_value(self, value: Any) -> bytes:
        return self.peer.encode_value(value)

    @property
    def idle(self) -> bool:
        return not self.ops and not self.home_ops and not self.lookups

    # --- client side: our operations ---------------------------------------------------------

    def ensure_open(self, endpoint: RemoteEndpoint) -> None:
        """Prove our right to ``endpoint``'s channel on this link, once."""
        chan = endpoint.ref.chan
        if chan not in self.opened:
            self.opened.add(chan)
            rights = endpoint.ref.rights
            self.send([Kind.OPEN, chan, rights, endpoint.ref.tokens(rights)])

    def start(self, client: ClientOp) -> None:
        """Send a parked case's SEND or RECV."""
        op_id = self.peer.next_op_id()
        client.op_id, client.session, client.status = op_id, self, SENT
        self.ops[op_id] = client
        endpoint = client.endpoint
        chan = endpoint.ref.chan
        if chan not in self.opened:
            self.ensure_open(endpoint)
        if client.data is not None:
            self.send([Kind.SEND, op_id, chan, client.mode, client.data])
        else:
            self.send([Kind.RECV, op_id, chan])

    def release(self, chan: int) -> None:
        """We hold the peer's channel ``chan`` no more."""
        self.send([Kind.RELEASE, chan])
        self.released.append(chan)

    def forget(self, client: ClientOp) -> None:
        """A case left the operation (withdrawn): tell the home, ignore late answers."""
        if self.ops.pop(client.op_id, None) is not None:
            self.send([Kind.CANCEL, client.op_id])

    def cancel_claimed(self, client: ClientOp) -> None:
        """A cancelled plain send asks the home to withdraw it; CANCELLED or ACK will tell."""
        if client.status == SENT and client.op_id in self.ops:
            client.status = CANCELLING
            self.send([Kind.CANCEL, client.op_id])

    def push(self, endpoint: RemoteEndpoint, seq: int, data: bytes) -> None:
        self.ensure_open(endpoint)
        self.send([Kind.PUSH, endpoint.ref.chan, seq, data])

    def resend(self, endpoint: RemoteEndpoint) -> None:
        """Credited sends not yet confirmed go out again on this (new) link, in order."""
        self.ensure_open(endpoint)
        chan = endpoint.ref.chan
        for seq, data in endpoint.unacked:
            self.send([Kind.PUSH, chan, seq, data])

    def lookup(self, name: str, replies: Channel[bytes | None]) -> None:
        req = self.peer.next_op_id()
        self.lookups[req] = replies
        self.send([Kind.LOOKUP, req, name])

    # --- receiving ---------------------------------------------------------------------------

    def on_frames(self, frames: list[Frame]) -> None:
        """Called by the link with every frame of one read, in order."""
        if self.node.dropped:
            self.node.release_dropped()
        handlers = _HANDLERS
        try:
            for frame in frames:
                if self.closed:  # (ended, perhaps by a handler: what follows is never read)
                    return
                handlers[frame[0]](self, frame)
            if self._credit_dirty and not self.closed:
                for chan in self._credit_dirty:
                    self.grant_credits(chan)
                self._credit_dirty.clear()
        except ProtocolError as exc:
            log.warning("closing the link to %s: %s", self.peer.label, exc)
            self.link.close(GoawayReason.PROTOCOL_ERROR, str(exc))

    def on_closed(self, error: QchanError) -> None:
        """Called by the link, once, when it ends for any reason."""
        if self.closed:
            return
        self.closed = True
        why = f"lost the connection to {self.peer.label}: {error}"
        ops, self.ops = self.ops, {}
        for client in ops.values():
            client.op.finish(client.index, error=client.lost_error(why))
        lookups, self.lookups = self.lookups, {}
        for replies in lookups.values():
            replies.send_nowait(None)
        home_ops, self.home_ops = self.home_ops, {}
        for op_id, waiter in home_ops.items():
            if isinstance(waiter, RemoteReceiver) and waiter.pending is not None:
                if waiter.pending[1] is None:
                    # A buffered value on its way: whether the peer took it is unknown. It
                    # keeps its slot until the peer says (SETTLE) or is gone.
                    self.peer.park_delivery(self.link.link_id, op_id, waiter)
                else:  # a sender waits on this handoff: it cannot be told anything surer
                    uncertain = DeliveryUncertain(f"the receiving node {self.peer.label} was lost")
                    waiter.state.delivery_lost(waiter, uncertain)
            else:
                waiter.withdraw()
        self.grants.clear()
        self.peer.detach(self, error)
        self.peer.link_lost(self.link.link_id, list(self.recently_taken))
        self.peer.releases_lost(self.released)

    def goodbye(self, text: str) -> None:
        """This node is stopping: settle what can be settled, then close the link.

        The peer's operations still queued here were never handed over: they fail with a
        plain PeerLost now, rather than as uncertain when the link drops.
        """
        for op_id, waiter in list(self.home_ops.items()):
            if waiter.pending is None and waiter.withdraw():
                self.served(op_id)
                self.send(error_frame(op_id, PeerLost(f"{text}; the operation did not happen")))
        for chan in self.opened:
            # We hold nothing of the peer's any more: its buffer slots and holder records go
            # at once, not after the grace a peer that may come back is given.
            self.release(chan)
        self.link.close(GoawayReason.SHUTDOWN, text)

    # --- home side helpers ---------------------------------------------------------------

    def served(self, op_id: int) -> None:
        self.home_ops.pop(op_id, None)
        if self._paused and len(self.home_ops) < MAX_OUTSTANDING // 2:
            self._paused = False
            self.link.resume_reading()

    def _admit(self, op_id: int, waiter: RemoteSender | RemoteReceiver) -> None:
        if op_id in self.home_ops:
            raise ProtocolError(f"operation id {op_id} is already in use")
        self.home_ops[op_id] = waiter
        if op_id >= self._peer_ids_seen:
            self._peer_ids_seen = op_id + 1
        if not self._paused and len(self.home_ops) > MAX_OUTSTANDING:
            self._paused = True  # backpressure: nothing is dropped, the peer just waits
            self.link.pause_reading()

    def _channel(self, chan: int, right: Rights) -> ChannelState | None:
        grant = self.grants.get(chan)
        if grant is None:
            raise ProtocolError(f"operation on channel {chan}, which was not opened")
        state, rights = grant
        if not rights & right:
            raise ProtocolError(f"{right.name} on channel {chan} without that right")
        return state  # None: the channel is gone, it acts closed

    def _decode(self, data: bytes) -> Any:
        return self.node.decode_value(data)

    def sent_to_buffer(self, state: ChannelState) -> None:
        if state.export_id is not None:
            self.grant_credits(state.export_id)

    def grant_credits(self, chan: int) -> None:
        """Widen the peer's window on ``chan`` once half is used, confirming what arrived.

        A peer that has used its whole window always gets an answer, even without new credit
        (its next sends wait for it, then go as plain sends). Otherwise confirmations ride
        along with top-ups: about one CREDIT frame per half a target's worth of sends. On any
        other link than the last CREDIT went on, everything is told again (that one may have
        been lost: the peer resends its unconfirmed sends on its new link, and is answered
        there, even while we still hold the old one).
        """
        grant = self.grants.get(chan)
        state = grant[0] if grant is not None and grant[1] & Rights.SEND else None
        if grant is None and chan not in self.peer.credit_accounts:
            return  # released (in this very read, perhaps): nothing to confirm
        account = self.peer.credit_account(chan, state)
        if state is not None and state.capacity and not state.closed:  # (a rendezvous: never)
            target = credit_target(state.capacity)
            outstanding = account.outstanding
            if outstanding <= target // 2:
                # (from last_seq: sends past a released window used no reserved slot)
                account.window = max(account.window, account.last_seq)
                account.window += state.reserve(target - outstanding)
        link_id = self.link.link_id
        if not account.told(link_id):
            account.told_window, account.told_acked = account.window, account.last_seq
            account.told_link = link_id
            account.told_most = max(account.told_most, account.window)
            self.send([Kind.CREDIT, chan, account.last_seq, account.window])

    # --- handlers: the peer's requests to us as home -------------------------------------

    def _on_open(self, frame: Frame) -> None:
        _, chan, rights, tokens = frame
        state = self.node.exports.open(chan, rights, tokens, self.peer.key)
        earlier = self.grants.get(chan)
        self.grants[chan] = (state, rights | earlier[1] if earlier else rights)
        if state is not None and state.closed:
            self.send([Kind.SHUT, chan])  # it closed while the peer was away

    def _on_send(self, frame: Frame) -> None:
        _, op_id, chan, mode, data = frame
        if mode not in (Mode.PLAIN, Mode.SELECT):
            raise ProtocolError(f"unknown send mode {mode}")
        state = self._channel(chan, Rights.SEND)
        if state is None:
            self.send([Kind.CLOSED, op_id])
            return
        try:
            value = self._decode(data)
        except ProtocolError as exc:  # e.g. a type this node never registered
            self.send(error_frame(op_id, exc))
            return
        if (
            mode == Mode.PLAIN
            and not state.closed
            and op_id not in self.home_ops  # (else _admit refuses the id below)
            and state.poll_send(value)
        ):
            # Done at once, as a local send would be: a local receiver took it, or it went
            # into the buffer. (The common case of a busy channel: no waiter is made.)
            if op_id >= self._peer_ids_seen:
                self._peer_ids_seen = op_id + 1
            self.send([Kind.ACK, op_id])
            if state.capacity:
                self._credit_dirty.add(chan)  # a sender without credit: offer some
            return
        waiter = RemoteSender(self, op_id, state, value, mode)
        self._admit(op_id, waiter)
        if mode == Mode.PLAIN and state.capacity:
            self._credit_dirty.add(chan)  # a sender without credit: offer some
        state.add_sender(waiter)

    def _on_push(self, frame: Frame) -> None:
        _, chan, seq, data = frame
        state = self._channel(chan, Rights.SEND)
        account = self.peer.credit_account(chan, state)
        self._credit_dirty.add(chan)  # every batch of credited sends is answered
        if seq <= account.last_seq:
            return  # sent again after a reconnect, and we have it already
        if seq > account.told_most:
            raise ProtocolError(
                f"credited send {seq} on channel {chan} beyond any credit given"
                f" (the widest window told was {account.told_most})"
            )
        if seq != account.last_seq + 1:
            # (the slots of the seqs skipped would stay reserved for good)
            raise ProtocolError(f"credited send {seq} on channel {chan} after {account.last_seq}")
        reserved = seq <= account.window
        account.last_seq = seq
        if state is None:
            return  # the channel is gone: nobody could ever receive it
        try:
            value = self._decode(data)
        except ProtocolError as exc:
            log.error("dropped a value from %s that cannot be decoded: %s", self.peer.label, exc)
            if reserved:
                state.unreserve(1)
            return
        if reserved:
            state.put_reserved(value)
        else:
            # A credit we no longer hold (released while the peer was away): never lose it.
            state.put_unreserved(value)

    def _on_recv(self, frame: Frame) -> None:
        _, op_id, chan = frame
        state = self._channel(chan, Rights.RECEIVE)
        if state is None:
            self.send([Kind.CLOSED, op_id])
            return
        waiter = RemoteReceiver(self, op_id, state)
        self._admit(op_id, waiter)
        state.add_receiver(waiter)

    def _on_cancel(self, frame: Frame) -> None:
        op_id = frame[1]
        waiter = self.home_ops.get(op_id)
        if waiter is None:
            return
        if waiter.withdraw():
            self.served(op_id)
            if isinstance(waiter, RemoteSender):
                self.send([Kind.CANCELLED, op_id])
        elif isinstance(waiter, RemoteSender):
            # Being handed over: if the receiver takes it, ACK as usual; if not, CANCELLED.
            waiter.cancel_requested = True

    def _delivery(self, frame: Frame) -> RemoteReceiver:
        waiter = self.home_ops.get(frame[1])
        if not isinstance(waiter, RemoteReceiver) or waiter.pending is None:
            raise ProtocolError(f"{Kind(frame[0]).name} for operation {frame[1]}: no delivery")
        self.served(frame[1])
        return waiter

    def _on_taken(self, frame: Frame) -> None:
        waiter = self._delivery(frame)
        waiter.state.delivery_answered(waiter, True)

    def _on_refused(self, frame: Frame) -> None:
        waiter = self._delivery(frame)
        waiter.state.delivery_answered(waiter, False)

    def _claimed(self, frame: Frame) -> RemoteSender | None:
        op_id = frame[1]
        if op_id not in self.home_ops:
            # Answered already: our CLAIM crossed the peer's CANCEL, or the channel closed.
            if op_id >= self._peer_ids_seen:
                raise ProtocolError(f"{Kind(frame[0]).name} for operation {op_id}: never sent")
            return None
        waiter = self.home_ops[op_id]
        if not isinstance(waiter, RemoteSender) or waiter.claim != 1:
            raise ProtocolError(f"{Kind(frame[0]).name} for operation {op_id}: never claimed")
        return waiter

    def _on_grant(self, frame: Frame) -> None:
        waiter = self._claimed(frame)
        if waiter is not None:
            waiter.granted()

    def _on_deny(self, frame: Frame) -> None:
        waiter = self._claimed(frame)
        if waiter is not None:
            waiter.withdraw()
            self.served(frame[1])

    def _on_close(self, frame: Frame) -> None:
        state = self._channel(frame[1], Rights.SEND)
        if state is not None:
            state.close()

    def _on_release(self, frame: Frame) -> None:
        chan = frame[1]
        self.grants.pop(chan, None)
        if any(chan in session.grants for session in self.peer.sessions if session is not self):
            # Opened again on another link (a new handle, which may be using this credit
            # record already) before this RELEASE, from a link the peer has left, was read.
            return
        self.node.exports.release(chan, self.peer.key)
        account = self.peer.credit_accounts.pop(chan, None)
        if account is not None:
            account.release()

    def _on_settle(self, frame: Frame) -> None:
        """The peer says a link ended there, and which of our DELIVERs on it it took."""
        _, link_id, data = frame
        if len(link_id) != LINK_ID_LEN:
            raise ProtocolError(f"SETTLE must name a link by {LINK_ID_LEN} bytes")
        if len(data) % 8:
            raise ProtocolError("SETTLE must hold 8-byte operation ids")
        taken = frozenset(struct.unpack(f">{len(data) // 8}Q", data))
        self.peer.settle_link(link_id, taken)

    def _on_lookup(self, frame: Frame) -> None:
        _, req, name = frame
        ref = self.node.ref_for_name(name, self.peer)
        if ref is None:
            self.send([Kind.NOTFOUND, req])
        else:
            self.send([Kind.FOUND, req, ref])

    # --- handlers: answers to our operations -----------------------------------------------

    def _on_ack(self, frame: Frame) -> None:
        client = self.ops.pop(frame[1], None)
        if client is not None:
            if not client.is_send:
                self.ops[frame[1]] = client  # (failed with the link, as it closes)
                raise ProtocolError(f"ACK for receive operation {frame[1]}")
            client.op.finish(client.index)

    def _on_deliver(self, frame: Frame) -> None:
        _, op_id, data = frame
        client = self.ops.pop(op_id, None)
        if client is None:  # withdrawn meanwhile: the value goes back
            self.send([Kind.REFUSED, op_id])
            return
        if client.is_send:
            self.ops[op_id] = client  # (failed with the link, as it closes)
            raise ProtocolError(f"DELIVER for send operation {op_id}")
        try:
            value = self._decode(data)
        except ProtocolError as exc:
            # Taken, so the value is not offered again and again; the receive raises.
            if client.op.finish(client.index, error=exc):
                self.send([Kind.TAKEN, op_id])
                self.recently_taken.append(op_id)
            else:
                self.send([Kind.REFUSED, op_id])
            return
        if client.op.finish(client.index, value):
            self.send([Kind.TAKEN, op_id])
            self.recently_taken.append(op_id)
        else:
            self.send([Kind.REFUSED, op_id])

    def _on_closed(self, frame: Frame) -> None:
        client = self.ops.pop(frame[1], None)
        if client is None:
            return
        endpoint = client.endpoint
        endpoint.closed_hint = True
        if client.is_send:
            client.op.finish(client.index, error=ChannelClosed("send on a closed channel"))
        else:
            endpoint.drained_hint = True
            client.op.finish(client.index, None, False)

    def _on_claim(self, frame: Frame) -> None:
        op_id = frame[1]
        client = self.ops.get(op_id)
        if client is not None and not client.is_send:
            raise ProtocolError(f"CLAIM for receive operation {op_id}")
        if client is not None and client.op.claim(client.index):
            client.granted = True
            self.send([Kind.GRANT, op_id])
        else:
            self.ops.pop(op_id, None)
            self.send([Kind.DENY, op_id])

    def _on_cancelled(self, frame: Frame) -> None:
        op_id = frame[1]
        client = self.ops.get(op_id)
        if client is None:
            return
        if client.status != CANCELLING:
            raise ProtocolError(f"CANCELLED for operation {op_id}, which asked no CANCEL")
        del self.ops[op_id]
        client.op.abandon()

    def _on_failed(self, frame: Frame) -> None:
        _, op_id, code, text = frame
        client = self.ops.pop(op_id, None)
        if client is not None:
            client.op.finish(client.index, error=error_for_code(code)(text))

    def _on_unclaim(self, frame: Frame) -> None:
        client = self.ops.get(frame[1])
        if client is not None and client.granted:
            client.granted = False
            client.op.unclaim()

    def _on_shut(self, frame: Frame) -> None:
        endpoint = self.peer.endpoints.get(frame[1])
        if endpoint is not None:
            endpoint.shut()

    def _on_credit(self, frame: Frame) -> None:
        _, chan, acked, window = frame
        endpoint = self.peer.endpoints.get(chan)
        if endpoint is not None:  # (else released: our RELEASE gives the slots back)
            endpoint.credited(acked, window)

    def _on_found(self, frame: Frame) -> None:
        replies = self.lookups.pop(frame[1], None)
        if replies is None:
            raise ProtocolError(f"FOUND for lookup {frame[1]} that was never asked")
        replies.send_nowait(frame[2])

    def _on_notfound(self, frame: Frame) -> None:
        replies = self.lookups.pop(frame[1], None)
        if replies is None:
            raise ProtocolError(f"NOTFOUND for lookup {frame[1]} that was never asked")
        replies.send_nowait(None)

    def __repr__(self) -> str:
        return f"<Session {self.peer.label} {'closed' if self.closed else 'open'}>"


def _unexpected(session: Session, frame: Frame) -> None:
    raise ProtocolError(f"unexpected {Kind(frame[0]).name} frame")


_HANDLERS: Final[dict[int, Callable[[Session, Frame], None]]] = {
    Kind.OPEN: Session._on_open,
    Kind.SEND: Session._on_send,
    Kind.PUSH: Session._on_push,
    Kind.RECV: Session._on_recv,
    Kind.CANCEL: Session._on_cancel,
    Kind.TAKEN: Session._on_taken,
    Kind.REFUSED: Session._on_refused,
    Kind.GRANT: Session._on_grant,
    Kind.DENY: Session._on_deny,
    Kind.CLOSE: Session._on_close,
    Kind.RELEASE: Session._on_release,
    Kind.SETTLE: Session._on_settle,
    Kind.LOOKUP: Session._on_lookup,
    Kind.ACK: Session._on_ack,
    Kind.DELIVER: Session._on_deliver,
    Kind.CLOSED: Session._on_closed,
    Kind.CLAIM: Session._on_claim,
    Kind.CANCELLED: Session._on_cancelled,
    Kind.FAILED: Session._on_failed,
    Kind.CREDIT: Session._on_credit,
    Kind.UNCLAIM: Session._on_unclaim,
    Kind.SHUT: Session._on_shut,
    Kind.FOUND: Session._on_found,
    Kind.NOTFOUND: Session._on_notfound,
    # connection control is handled by the protocol layer and never reaches a session
    Kind.PING: _unexpected,
    Kind.PONG: _unexpected,
    Kind.GOAWAY: _unexpected,
    Kind.PART: _unexpected,
}
