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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, final

from qchan._channel import ChannelState
from qchan._client import CREDIT_WAIT, PARKED, ClientOp, RemoteEndpoint
from qchan._errors import DeliveryUncertain, PeerLost, QchanError
from qchan._home import CreditAccount, RemoteReceiver
from qchan._refs import ChannelRef
from qchan.crypto.keys import fingerprint
from qchan.protocol.frames import Frame, GoawayReason, Kind

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
        "_op_ids",
        "address",
        "candidates",
        "credit_accounts",
        "dialing",
        "discovered",
        "encode_value",
        "endpoints",
        "incarnation",
        "key",
        "left_at",
        "lost_links",
        "name",
        "node",
        "parked",
        "pending_releases",
        "redialing",
        "session",
        "sessions",
        "settled_links",
        "streaming",
        "unsettled_deliveries",
    )

    def __init__(self, node: Node, key: bytes, address: str = "") -> None:
        self.node = node
        self.key = key
        self.address = address
        #: ``value``'s bytes for this peer (channel handles inside become references it can
        #: use); TypeError/ValueError if it cannot be sent.
        self.encode_value: Callable[[Any], bytes] = node.value_encoder(self)
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
        # client side: per link of ours that ended, the SETTLE saying what we took on it
        self.lost_links: dict[bytes, Frame] = {}
        # home side: per link that ended, the buffered values that were on their way to the
        # peer on it; and what the peer said it took on links it saw end (SETTLE)
        self.unsettled_deliveries: dict[bytes, dict[int, RemoteReceiver]] = {}
        self.settled_links: dict[bytes, frozenset[int]] = {}

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
            weakref.finalize(endpoint, _dropped, weakref.ref(self), ref.chan, ref.incarnation)
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
                session.release(chan)
                told = True
        if not told and self.session is None and self.incarnation is not None:
            # Said when the next link comes up. (A node we never reached has not counted us
            # as a holder of anything: there is nothing to tell it.)
            self.pending_releases.add(chan)

    # --- links -------------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        """A new link to this peer is up."""
        self.sessions.append(session)
        self.left_at = None
        current = self.session
        if current is not None and _dialled_by_smaller_key(
            session, self
        ) >= _dialled_by_smaller_key(current, self):
            session.retired = True  # a duplicate: kept until idle, or until the other ends
            return
        if current is not None:
            current.retired = True
        self._carry_work(session)

    def _carry_work(self, session: Session) -> None:
        """From now on ``session`` carries our operations to the peer (the link is new, or
        the one that carried them ended): what may have been lost with an earlier link goes
        out again on it.

        Both ends pick the same link when both see both; but one end may hold on to a link
        the other has given up on already, and take the new one as a duplicate until it
        notices. Either end's operations go on its own choice and are answered on the link
        they came on, so that costs nothing, as long as what is said again here is said
        again whenever the link that carries work changes, not only when a link comes up.
        """
        self.session = session
        session.retired = False
        for chan in self.pending_releases:
            if chan not in self.endpoints:  # (else held again: its record there is in use)
                session.release(chan)
        self.pending_releases.clear()
        for settle in self.lost_links.values():
            # Said again on every new link: a SETTLE may have been lost with its link.
            session.send(settle)
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
            self.session = None
            successor = next((s for s in self.sessions if not s.closed), None)
            if successor is not None:
                self._carry_work(successor)
        if self.session is None:
            self.left_at = self.node.now()
            lost = PeerLost(f"lost the connection to {self.label}: {error}")
            for endpoint in self.streaming:
                endpoint.fail_credit_waiters(lost)
            self.node.peer_left(self, error)

    def releases_lost(self, chans: Iterable[int]) -> None:
        """RELEASEs of ``chans`` went on a link that ended: perhaps never read. Said again
        (twice is harmless), unless the channel is held again: then the home's record of it,
        credit included, belongs to the new handle (RemoteEndpoint.credited)."""
        for chan in chans:
            if chan in self.endpoints:
                continue
            if self.session is not None:
                self.session.release(chan)
            elif self.incarnation is not None:
                self.pending_releases.add(chan)

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
            self.lost_links.clear()  # (links to the old run: nothing there to settle)
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
        self.settled_links.clear()
        unsettled, self.unsettled_deliveries = self.unsettled_deliveries, {}
        for parked in unsettled.values():
            for waiter in parked.values():
                waiter.state.delivery_lost(waiter, DeliveryUncertain(f"{self.label} is gone"))

    # --- values on their way when a link ended (SETTLE) --------------------------------------

    def link_lost(self, link_id: bytes, taken: list[int]) -> None:
        """Our link ``link_id`` to the peer ended having taken the DELIVERs ``taken`` (our
        TAKENs may be lost with it). The home keeps the values it had on their way there until
        it hears which we took, so we say so at once on any other link, and on every new one.
        Only once the link has ended here is the list final: nothing arrives on it any more."""
        settle = [Kind.SETTLE, link_id, struct.pack(f">{len(taken)}Q", *taken)]
        self.lost_links[link_id] = settle
        while len(self.lost_links) > _LINKS_REMEMBERED:
            del self.lost_links[next(iter(self.lost_links))]
        for session in self.sessions:
            session.send(settle)

    def park_delivery(self, link_id: bytes, op_id: int, waiter: RemoteReceiver) -> None:
        """A buffered value was on its way to the peer on ``link_id`` when that link ended
        here: it waits for the peer to say whether it took it, unless it has said so."""
        taken = self.settled_links.get(link_id)
        if taken is not None:
            waiter.state.delivery_answered(waiter, op_id in taken)
        else:
            self.unsettled_deliveries.setdefault(link_id, {})[op_id] = waiter

    def settle_link(self, link_id: bytes, taken: frozenset[int]) -> None:
        """The peer says its link ``link_id`` ended there, having taken ``taken``."""
        self.settled_links[link_id] = taken
        while len(self.settled_links) > _LINKS_REMEMBERED:
            del self.settled_links[next(iter(self.settled_links))]
        for waiter_op_id, waiter in self.unsettled_deliveries.pop(link_id, {}).items():
            waiter.state.delivery_answered(waiter, waiter_op_id in taken)
        for session in self.sessions:
            if session.link.link_id == link_id and not session.closed:
                # Still open here, but over for the peer: nothing we send on it is taken
                # any more. What is on its way there is parked, and settled, as it ends.
                session.link.close(GoawayReason.DUPLICATE, "you said this link ended")

    def __repr__(self) -> str:
        return f"<Peer {self.label} {'connected' if self.connected else 'disconnected'}>"


#: Lost links whose SETTLE a node remembers, at each end (a peer is unlikely to lose more
#: before it is linked again; a value parked for an older one waits until the peer is gone).
_LINKS_REMEMBERED: Final = 8


def _remove(queue: Any, client: ClientOp) -> None:
    try:
        queue.remove(client)
    except ValueError:
        pass


def _dialled_by_smaller_key(session: Session, peer: Peer) -> bytes:
    # The key of the node that dialled this link: the same answer on both ends.
    return peer.node.public_key if session.link.initiator else peer.key


def _dropped(peer_ref: weakref.ref[Peer], chan: int, incarnation: bytes) -> None:
    # A finalizer: runs when an endpoint is garbage-collected, which may be in the middle of
    # any code, even while a frame is being queued on a link. So it only takes note; the node
    # tells the home at its next safe point (Node.release_dropped).
    peer = peer_ref()
    if peer is not None:
        peer.node.dropped.append((peer, chan, incarnation))
