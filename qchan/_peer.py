"""What this node knows of another node, across the connections it has had to it.

A :class:`Peer` outlives its links: the endpoints of its channels that this node holds, credit
records, and operations *parked* while no link is up. Its current link's
:class:`~qchan._session.Session` carries new operations. Two links between the same two nodes
(both dialled at once) are resolved the same way on both sides: the link dialled by the node
with the smaller public key carries new work, and the other is closed once idle.
"""

from __future__ import annotations

import itertools
import logging
import struct
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, final

from qchan._channel import ChannelState
from qchan._client import CREDIT_WAIT, PARKED, ClientOp, RemoteEndpoint
from qchan._errors import DeliveryUncertain, PeerLost, QchanError
from qchan._home import CreditAccount, RemoteReceiver
from qchan._refs import ChannelRef
from qchan._session import MAX_OUTSTANDING
from qchan.crypto.keys import fingerprint
from qchan.protocol.frames import GoawayReason, Kind

if TYPE_CHECKING:
    from qchan._session import Session
    from qchan.node import Node

__all__ = ["Peer"]

log = logging.getLogger("qchan.node")


@final
class Peer:
    """Another node (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_linked_before",
        "_op_ids",
        "address",
        "candidates",
        "credit_accounts",
        "dialing",
        "discovered",
        "endpoints",
        "incarnation",
        "key",
        "left_at",
        "name",
        "node",
        "parked",
        "pending_releases",
        "redialing",
        "session",
        "sessions",
        "settled",
        "streaming",
        "taken_on_lost_links",
        "unsettled_deliveries",
    )

    def __init__(self, node: Node, key: bytes, address: str = "") -> None:
        self.node = node
        self.key = key
        self.address = address
        self.name = ""
        self.incarnation: bytes | None = None
        self.session: Session | None = None  # the link that carries new operations
        self.sessions: list[Session] = []  # every open link (a duplicate drains here)
        self.parked: list[ClientOp] = []  # operations waiting for a link
        self.pending_releases: set[int] = set()  # channels let go while no link was up
        self.dialing = False
        self.left_at: float | None = None  # when its last link ended (None: connected)
        self.discovered = False  # announced by discovery and kept dialled while it is
        self.redialing = False  # the task that keeps it dialled is running
        self.candidates: list[str] = []  # addresses discovery gave for it
        self.endpoints: weakref.WeakValueDictionary[int, RemoteEndpoint] = (
            weakref.WeakValueDictionary()
        )
        self.streaming: set[RemoteEndpoint] = set()  # endpoints with unconfirmed credited sends
        self.credit_accounts: dict[int, CreditAccount] = {}  # home side: its credits with us
        # Operation ids are unique per peer, not per link: SETTLE names ops of lost links.
        self._op_ids = itertools.count(1)
        self._linked_before = False
        # client side: DELIVERs we took on links that then died (our TAKEN may be lost)
        self.taken_on_lost_links: deque[int] = deque(maxlen=MAX_OUTSTANDING)
        # home side: buffered values on their way to the peer when its link died
        self.unsettled_deliveries: dict[int, RemoteReceiver] = {}
        self.settled: set[int] | None = None  # what the peer settled on its current link

    def next_op_id(self) -> int:
        return next(self._op_ids)

    @property
    def label(self) -> str:
        return self.name or fingerprint(self.key)

    @property
    def connected(self) -> bool:
        return self.session is not None

    @property
    def forgettable(self) -> bool:
        """Never reached and holding nothing: dropping it loses nothing."""
        return not (
            self.name
            or self.sessions
            or self.parked
            or self.endpoints
            or self.credit_accounts
            or self.dialing
        )

    # --- our operations on its channels -----------------------------------------------------

    def submit(self, client: ClientOp) -> None:
        if self.session is not None:
            self.session.start(client)
        else:
            self.parked.append(client)
            self.node.need_connection(self)

    def withdraw(self, client: ClientOp) -> None:
        if client.status == CREDIT_WAIT:
            _remove(client.endpoint.credit_waiters, client)
        elif client.status == PARKED:
            _remove(self.parked, client)
        elif client.session is not None:
            client.session.forget(client)

    def cancel_claimed(self, client: ClientOp) -> None:
        if client.status in (PARKED, CREDIT_WAIT):
            _remove(
                self.parked if client.status == PARKED else client.endpoint.credit_waiters, client
            )
            client.op.abandon()
        elif client.session is not None:
            client.session.cancel_claimed(client)

    def fail_parked(self, error: QchanError) -> None:
        parked, self.parked = self.parked, []
        for client in parked:
            client.op.finish(client.index, error=error)

    def close_channel(self, endpoint: RemoteEndpoint) -> None:
        session = self.session
        if session is None:
            raise PeerLost(f"cannot close the channel: no connection to {self.label}")
        session.ensure_open(endpoint)
        session.send([Kind.CLOSE, endpoint.ref.chan])

    def encode_value(self, value: Any) -> bytes:
        return self.node.encode_value(value, self)

    def credit_account(self, chan: int, state: ChannelState | None) -> CreditAccount:
        account = self.credit_accounts.get(chan)
        if account is None:
            account = self.credit_accounts[chan] = CreditAccount(state)
        return account

    # --- endpoints ---------------------------------------------------------------------------

    def endpoint(self, ref: ChannelRef) -> RemoteEndpoint:
        """The one endpoint of this node for the channel ``ref`` names (made on first use)."""
        endpoint = self.endpoints.get(ref.chan)
        if endpoint is None:
            endpoint = RemoteEndpoint(self, ref)
            self.endpoints[ref.chan] = endpoint
            weakref.finalize(endpoint, _release, weakref.ref(self), ref.chan, ref.incarnation)
            if self.session is not None:
                self.session.ensure_open(endpoint)  # register as a holder right away
        elif ref.rights & ~endpoint.ref.rights:
            # A reference with more rights than we had: keep the union, and re-open.
            endpoint.ref = ChannelRef(
                ref.home,
                ref.incarnation,
                ref.address,
                ref.chan,
                ref.capacity,
                endpoint.ref.send_token or ref.send_token,
                endpoint.ref.receive_token or ref.receive_token,
            )
            if self.session is not None:
                self.session.opened.discard(ref.chan)
                self.session.ensure_open(endpoint)
        return endpoint

    def released(self, chan: int, incarnation: bytes) -> None:
        """Our last handle to the peer's channel ``chan`` is gone: tell its home."""
        if incarnation != self.incarnation and self.incarnation is not None:
            return  # a channel of an earlier run: the id may name another channel now
        if chan in self.endpoints:
            return  # a newer handle to it lives on
        told = False
        for session in self.sessions:
            if chan in session.opened:
                session.opened.discard(chan)
                session.send([Kind.RELEASE, chan])
                told = True
        if not told and self.session is None:
            self.pending_releases.add(chan)  # said when the next link comes up

    # --- links -------------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        """A new link to this peer is up."""
        self.sessions.append(session)
        self.left_at = None
        current = self.session
        if current is None:
            self.session = session
        elif _dialled_by_smaller_key(session, self) < _dialled_by_smaller_key(current, self):
            current.retired = True  # both sides agree: the new link carries new work
            self.session = session
        else:
            session.retired = True
            return
        for account in self.credit_accounts.values():
            account.told_window = account.told_acked = -1  # tell it all again on this link
        for chan in self.pending_releases:
            session.send([Kind.RELEASE, chan])
        self.pending_releases.clear()
        self.settled = None  # (what the peer settles on this link is yet to come)
        if self._linked_before:
            self._settle(session)
        self._linked_before = True
        for endpoint in list(self.endpoints.values()):
            session.ensure_open(endpoint)
        for endpoint in list(self.streaming):
            session.resend(endpoint)
        parked, self.parked = self.parked, []
        for client in parked:
            session.start(client)

    def detach(self, session: Session, error: QchanError) -> None:
        """A link to this peer ended (its operations have failed already)."""
        if session in self.sessions:
            self.sessions.remove(session)
        if self.session is session:
            self.session = next((s for s in self.sessions if not s.closed), None)
            if self.session is not None:
                self.session.retired = False
                self.settled = None
                self._settle(self.session)  # as on a new link: the other one is lost
        if self.session is None:
            self.left_at = self.node.now()
            lost = PeerLost(f"lost the connection to {self.label}: {error}")
            for endpoint in self.streaming:
                endpoint.fail_credit_waiters(lost)
            self.node.peer_left(self, error)

    def close_idle_duplicates(self, now: float, grace: float) -> None:
        """Close a link kept only as a duplicate once it has been idle for ``grace``.

        (The peer may still have put an operation on it just before it, too, chose the other
        link: closing at the first idle moment could fail that operation for nothing.)
        """
        for session in self.sessions:
            if not session.retired or session.closed or not session.idle:
                session.idle_since = None
            elif session.idle_since is None:
                session.idle_since = now
            elif now - session.idle_since >= grace:
                session.link.close(GoawayReason.DUPLICATE, "another link is kept")

    def adopt_incarnation(self, incarnation: bytes) -> None:
        """A link to the peer's process ``incarnation`` is up.

        References minted by any other run of it name channels that are gone: their endpoints
        turn stale and what waits on them fails (they would OPEN with tokens this run never
        issued). If the peer restarted, what it held of ours is void too.
        """
        if incarnation == self.incarnation:
            return
        restarted = self.incarnation is not None
        self.incarnation = incarnation
        if restarted:
            log.info("%s restarted", self.label)
        gone = PeerLost(f"{self.label} restarted: its channels are gone; look them up again")
        stale = [e for e in self.endpoints.values() if e.ref.incarnation != incarnation]
        for endpoint in stale:
            endpoint.stale = True
            endpoint.fail_credit_waiters(gone)
            self.streaming.discard(endpoint)
            del self.endpoints[endpoint.ref.chan]
        parked, self.parked = self.parked, []
        for client in parked:
            if client.endpoint.stale:
                client.op.finish(client.index, error=gone)
            else:
                self.parked.append(client)
        if restarted:
            self.release_holdings()
            self.credit_accounts.clear()  # a new process starts its sequences afresh
        self.pending_releases.clear()  # (they named channels of the old run)

    def release_holdings(self) -> None:
        """The peer is gone (for now): the slots and channels it held of ours are let go.

        Its credit records stay, for de-duplication should it come back and resend. Values
        that were on their way to it when its link died count as taken: it may have taken
        them, and a value is never delivered twice.
        """
        for account in self.credit_accounts.values():
            account.release()
        self.node.exports.forget_holder(self.key)
        unsettled, self.unsettled_deliveries = self.unsettled_deliveries, {}
        for waiter in unsettled.values():
            waiter.state.delivery_lost(waiter, DeliveryUncertain(f"{self.label} is gone"))

    def _settle(self, session: Session) -> None:
        # Which values delivered on lost links we took: the home returns the others to their
        # buffers (it keeps them until it hears this, or until we are gone). The list is said
        # again on every new link (a SETTLE may be lost with its link); it is bounded.
        taken = self.taken_on_lost_links
        session.send([Kind.SETTLE, struct.pack(f">{len(taken)}Q", *taken)])

    def park_delivery(self, op_id: int, waiter: RemoteReceiver) -> None:
        """A buffered value was on its way to the peer when a link to it died: wait for the
        peer to say whether it took it (SETTLE), unless it said so already on another link."""
        if self.settled is not None:
            waiter.state.delivery_answered(waiter, op_id in self.settled)
        else:
            self.unsettled_deliveries[op_id] = waiter

    def settle_deliveries(self, taken: set[int]) -> None:
        """The peer, back on a new link, said which of the values on their way it took."""
        unsettled, self.unsettled_deliveries = self.unsettled_deliveries, {}
        for op_id, waiter in unsettled.items():
            waiter.state.delivery_answered(waiter, op_id in taken)
        self.settled = taken  # (deliveries parked later, from a link that dies after this)

    def __repr__(self) -> str:
        return f"<Peer {self.label} {'connected' if self.connected else 'disconnected'}>"


def _remove(queue: Any, client: ClientOp) -> None:
    try:
        queue.remove(client)
    except ValueError:
        pass


def _dialled_by_smaller_key(session: Session, peer: Peer) -> bytes:
    # The key of the node that dialled this link: the same answer on both ends.
    return peer.node.public_key if session.link.initiator else peer.key


def _release(peer_ref: weakref.ref[Peer], chan: int, incarnation: bytes) -> None:
    # A finalizer: runs when an endpoint is garbage-collected.
    peer = peer_ref()
    if peer is not None:
        try:
            peer.released(chan, incarnation)
        except Exception:  # never let a finalizer raise (e.g. at interpreter exit)
            log.debug("could not release channel %d at %s", chan, peer.label, exc_info=True)
