"""The ``session`` fuzz target: a real home :class:`~qchan._session.Session` fed arbitrary
sequences of valid-shaped frames, mixed with what local tasks and links do meanwhile.

beta (a real :class:`~qchan.Node`, no sockets) hosts seven channels, exported to alpha with the
rights alpha was given; alpha hosts two channels beta holds. The input is a script: frames
from alpha (any kind, fields drawn from what would hit: op ids beta mentioned, alpha's real
tokens or garbage, sequence numbers around the credit window, values with channel references),
cut into reads; local sends, receives, selects and cancellations at beta, on its own channels
and on alpha's; links lost and redialled, alpha restarting, beta's housekeeping.

What must hold after every step:

- ``Session.on_frames`` raises nothing: a peer's misbehaviour is a ``ProtocolError``, which it
  turns into closing the link with ``GOAWAY`` (``PROTOCOL_ERROR``), and nothing else;
- every channel: ``reserved``, ``in_flight`` and ``in_flight_buffered`` >= 0; the buffer at
  most one credit window's worth over capacity (docs/protocol.md 6.7); no receiver waiting
  while values are buffered; none waiting on a closed, drained channel; ``reserved`` equal to
  the unused windows of alpha's credit accounts; ``in_flight`` equal to the handoffs awaiting
  an answer;
- a closed session keeps no operation and leaves no waiter queued anywhere;
- every operation of a live session is queued, or in a handoff awaiting its answer;
- every local operation not finished is still reachable by whoever can finish it (queued, in
  a handoff, waiting for a link or for credit): otherwise its task would sleep forever.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from typing import Any, Final

import msgpack

from qchan import Channel
from qchan._channel import ChannelState
from qchan._client import CANCELLING, ClientOp, RemoteEndpoint
from qchan._errors import PeerLost, QchanError
from qchan._home import RemoteReceiver, RemoteSender, credit_target
from qchan._operation import CLAIMED, PENDING, Operation
from qchan._peer import Peer
from qchan._refs import ChannelRef
from qchan._session import Session
from qchan.node import Node
from qchan.protocol.frames import SCHEMAS, Frame, GoawayReason, Kind, Rights
from tests.protocol._helpers import (
    CLUSTER_KEY,
    INITIATOR_HELLO,
    INITIATOR_KEY,
    RESPONDER_KEY,
    STRANGER_KEY,
)

from ._input import U64_MAX, Choices, Script

__all__ = ["AVOID_KNOWN", "HOME_CHANNELS", "Action", "Harness", "fuzz_session", "script"]

#: Steer clear of the bugs already known (tests/fuzz/test_regressions.py), so that a long run
#: finds new ones instead of these again and again: ``QCHAN_FUZZ_AVOID_KNOWN=1``.
AVOID_KNOWN: Final = os.environ.get("QCHAN_FUZZ_AVOID_KNOWN", "") not in ("", "0")

#: beta's channels (chan ids 1..7, in this order): capacity and the rights alpha holds.
HOME_CHANNELS: Final[tuple[tuple[float, Rights], ...]] = (
    (0, Rights.BOTH),
    (1, Rights.BOTH),
    (3, Rights.BOTH),
    (8, Rights.BOTH),
    (math.inf, Rights.BOTH),
    (2, Rights.SEND),
    (0, Rights.RECEIVE),
)
#: alpha's channels that beta holds (chan ids 1 and 2 at alpha): their capacities.
ALPHA_CHANNELS: Final = (0, 4)
_NAMES: Final = ("jobs", "results", "nothing-here")


class Action:
    """Opcodes of the script (one byte each; the bytes after it are its choices)."""

    FRAMES = 0x00  # 0x00..0x9F: one frame (see _kind_of)
    READ = 0xA0  # 0xA0..0xAF: hand the frames so far to a session (low bit: which link)
    LOCAL_RECEIVE = 0xB0  # 0xB0..0xB7 receive_nowait at beta
    LOCAL_SEND = 0xB8  # 0xB8..0xBF send_nowait at beta
    BLOCKING = 0xC0  # 0xC0..0xCF a blocking receive, send or select at beta
    CANCEL = 0xD0  # 0xD0..0xD7 cancel one of those
    CLOSE = 0xD8  # 0xD8..0xDB close one of beta's channels locally
    LOOKUP = 0xDC  # 0xDC..0xDF beta looks a name up at alpha
    LOSE = 0xE0  # 0xE0..0xE7 a link ends; a new one comes up (alpha may have restarted)
    DUPLICATE = 0xE8  # 0xE8..0xEB a second link to alpha comes up
    HOUSEKEEPING = 0xEC  # 0xEC..0xEF beta's housekeeping (alpha away long: holdings let go)
    DROP = 0xF0  # 0xF0..0xFF drop a value beta holds (references in it may be released)


# Home-side requests first and repeated: they are what a hostile requester sends.
_LISTED: Final = [
    *[Kind.OPEN, Kind.SEND, Kind.PUSH, Kind.RECV, Kind.CANCEL, Kind.TAKEN, Kind.REFUSED] * 3,
    *[Kind.GRANT, Kind.DENY, Kind.CLOSE, Kind.RELEASE, Kind.LOOKUP] * 2,
    *[Kind.ACK, Kind.DELIVER, Kind.CLOSED, Kind.CLAIM, Kind.CANCELLED, Kind.FAILED] * 2,
    *[Kind.CREDIT, Kind.UNCLAIM, Kind.SHUT, Kind.FOUND, Kind.NOTFOUND] * 2,
    Kind.PING,
    Kind.PONG,
    Kind.GOAWAY,
    Kind.PART,
]
# Kinds added to the protocol since this list was written are fuzzed too, with generic fields,
# by the last 16 frame action bytes (so that what the other bytes mean never changes).
_NEW_KINDS: Final = [kind for kind in Kind if kind not in _LISTED]
_NEW_KINDS_FROM: Final = Action.READ - 16


def _kind_of(action: int) -> Kind:
    if action >= _NEW_KINDS_FROM and _NEW_KINDS:
        return _NEW_KINDS[(action - _NEW_KINDS_FROM) % len(_NEW_KINDS)]
    return _LISTED[action % len(_LISTED)]


_LINK_IDS: Final = itertools.count(1)


class FuzzLink:
    """Just enough of a transport link for a Session, behaving as the real one does: frames
    sent after the end are dropped, and ``close`` ends the link at once, ``on_closed`` included
    (re-entrantly, from inside ``on_frames`` when the session refuses a frame)."""

    local_address = ""

    def __init__(self, initiator: bool = False) -> None:
        self.initiator = initiator
        self.link_id = next(_LINK_IDS).to_bytes(8, "big")
        self.sent: list[Frame] = []
        self.closed: tuple[int, str] | None = None
        self.paused = False
        self.on_closed: Callable[[QchanError], None] | None = None

    def send(self, frame: Frame) -> None:
        if self.closed is None:
            self.sent.append(frame)

    def close(self, reason: int = GoawayReason.SHUTDOWN, text: str = "") -> None:
        self.end((reason, text), PeerLost(f"link closed locally ({reason}: {text})"))

    def end(self, why: tuple[int, str], error: QchanError) -> None:
        if self.closed is None:
            self.closed = why
            on_closed, self.on_closed = self.on_closed, None
            if on_closed is not None:
                on_closed(error)

    def pause_reading(self) -> None:
        self.paused = self.closed is None

    def resume_reading(self) -> None:
        self.paused = False


_LOST: Final = -1  # (the reason recorded for a link the transport saw end)


class Harness:
    """beta, alpha as beta sees it, and everything the script has started."""

    def __init__(self) -> None:
        self.clock = 0.0
        node = self.node = Node(cluster_key=CLUSTER_KEY, key=RESPONDER_KEY, name="beta")
        node.now = lambda: self.clock  # type: ignore[method-assign]
        self.minter = node.exports._minter
        self.channels: list[Channel[Any]] = []
        self.states: list[ChannelState] = []
        alpha = self.alpha = node._peers[INITIATOR_KEY.public] = Peer(node, INITIATOR_KEY.public)
        alpha.name = INITIATOR_HELLO.name
        self.incarnation = INITIATOR_HELLO.incarnation
        alpha.adopt_incarnation(self.incarnation)
        for capacity, rights in HOME_CHANNELS:
            channel: Channel[Any] = Channel(capacity)
            state = channel._endpoint
            assert isinstance(state, ChannelState)
            ref = node.exports.ref(state, rights, alpha.key)
            assert ref.chan == len(self.channels) + 1
            self.channels.append(channel)
            self.states.append(state)
        node.register(_NAMES[0], self.channels[0])
        node.register(_NAMES[1], self.channels[5].sender())
        self.sessions: list[Session] = []
        self.closed_sessions: list[Session] = []
        self.batch: list[Frame] = []
        self.ops: list[Operation] = []  # what local tasks at beta wait on
        self.held: list[Any] = []  # values beta's tasks received and still hold
        self.mentioned: list[int] = []  # op ids beta's frames named (DELIVER, CLAIM...)
        self.endpoints: list[RemoteEndpoint] = []
        self.last_batch: list[Frame] = []
        self.last_step = "setup"
        self.connect()

    # --- links ---------------------------------------------------------------------------

    def connect(self, *, restarted: bool = False, duplicate: bool = False) -> None:
        """A link from alpha comes up: it opens what it holds of beta's, as a requester does."""
        if restarted:
            self.incarnation = bytes([1 + len(self.closed_sessions) % 255]) * 16
        alpha = self.alpha
        alpha.adopt_incarnation(self.incarnation)
        link = FuzzLink(initiator=duplicate)
        session = Session(self.node, alpha, link)  # type: ignore[arg-type]
        link.on_closed = session.on_closed
        self.sessions.append(session)
        alpha.attach(session)
        if not duplicate:
            self.endpoints = [
                alpha.endpoint(self.alpha_ref(chan)) for chan in range(1, len(ALPHA_CHANNELS) + 1)
            ]
            opens: list[Frame] = []
            for chan, (_, rights) in enumerate(HOME_CHANNELS, 1):
                opens.append([int(Kind.OPEN), chan, int(rights), self.tokens(chan, rights)])
            self.read(session, opens)

    def lose(self, session: Session) -> None:
        """The transport sees ``session``'s link end (reset, silence...)."""
        link: FuzzLink = session.link  # type: ignore[assignment]
        link.end((_LOST, "lost"), PeerLost("connection reset by the peer"))
        self.settle()

    def settle(self) -> None:
        """Sessions whose links ended go to the closed list."""
        for session in list(self.sessions):
            if session.link.closed is not None:
                self.sessions.remove(session)
                self.closed_sessions.append(session)

    def alpha_ref(self, chan: int) -> ChannelRef:
        return ChannelRef(
            INITIATOR_KEY.public,
            self.incarnation,
            INITIATOR_HELLO.address,
            chan,
            ALPHA_CHANNELS[chan - 1],
            bytes([chan]) * 16,
            bytes([chan + 100]) * 16,
        )

    def tokens(self, chan: int, rights: int) -> bytes:
        """The tokens alpha holds for ``rights`` on beta's ``chan``; b"" if it holds none."""
        if not 1 <= chan <= len(HOME_CHANNELS) or rights & ~HOME_CHANNELS[chan - 1][1]:
            return b""
        if rights not in (Rights.SEND, Rights.RECEIVE, Rights.BOTH):
            return b""
        send, receive = self.minter.tokens(chan, rights)
        return (send or b"") + (receive or b"")

    def read(self, session: Session, frames: list[Frame]) -> None:
        """One read from alpha on ``session``'s link."""
        link: FuzzLink = session.link  # type: ignore[assignment]
        was_open = link.closed is None
        if AVOID_KNOWN:
            frames = _steer_clear(self.alpha, [_fitting(frame, session) for frame in frames])
        self.last_batch = frames
        if frames:
            session.on_frames(frames)  # must raise nothing: that is the point
        self.note_sent(link)
        if was_open and link.closed is not None:
            # the session refused something: only ever as a protocol error
            assert link.closed[0] == GoawayReason.PROTOCOL_ERROR, link.closed
        self.settle()

    def note_sent(self, link: FuzzLink) -> None:
        for frame in link.sent:
            if frame[0] in (Kind.DELIVER, Kind.CLAIM, Kind.ACK, Kind.CANCELLED, Kind.UNCLAIM):
                self.mentioned.append(frame[1])
        del self.mentioned[:-16]
        link.sent.clear()

    # --- checks -------------------------------------------------------------------------------

    def check(self) -> None:
        alpha = self.alpha
        live = [s for s in self.sessions if not s.closed]
        states = list(self.states)
        pending_senders: set[int] = set()
        pending_by_state: dict[int, int] = {}
        # (deliveries of lost links whose outcome the peer may still tell, if the node keeps
        # them: they hold their value in flight until then)
        unsettled = [w for parked in alpha.unsettled_deliveries.values() for w in parked.values()]
        awaiting = [w for s in live for w in s.home_ops.values()] + unsettled
        for waiter in awaiting:
            if isinstance(waiter, RemoteReceiver) and waiter.pending is not None:
                key = id(waiter.state)
                pending_by_state[key] = pending_by_state.get(key, 0) + 1
                sender = waiter.pending[1]
                if sender is not None:
                    pending_senders.add(id(sender))
            if waiter.state not in states:
                states.append(waiter.state)
        for state in states:
            _check_state(state, alpha, pending_by_state.get(id(state), 0))
            queue: list[Any] = [*state.senders, *state.receivers]
            for waiter in queue:
                if isinstance(waiter, RemoteSender | RemoteReceiver):
                    home: Any = waiter.session
                    _require(not home.closed, "a waiter of a closed session is queued", waiter)
                    _require(
                        home.home_ops.get(waiter.op_id) is waiter,
                        "a peer's waiter is queued but its session forgot it",
                        waiter,
                    )
                else:
                    _require(
                        waiter.op.state in (PENDING, CLAIMED), "a finished waiter is queued", waiter
                    )
        for session in self.closed_sessions:
            _require(
                session.closed and not session.home_ops and not session.ops and not session.lookups,
                "a closed session keeps operations",
                session,
            )
        for session in live:
            for op_id, waiter in session.home_ops.items():
                _require(waiter.op_id == op_id and waiter.session is session, "misfiled", waiter)
                if isinstance(waiter, RemoteSender):
                    queued = waiter in waiter.state.senders
                    handing_over = id(waiter) in pending_senders
                else:
                    queued = waiter in waiter.state.receivers
                    handing_over = waiter.pending is not None
                _require(
                    queued or handing_over,
                    "a peer's operation is stuck (never answered)",
                    f"{op_id}: {waiter} {self.frames_naming(op_id)}",
                )
            for op_id, client in session.ops.items():
                _require(client.op_id == op_id and client.session is session, "misfiled op", client)
                _require(
                    client.op.state in (PENDING, CLAIMED),
                    "a finished operation is kept in session.ops",
                    op_id,
                )
        for op in self.ops:
            if op.state in (PENDING, CLAIMED) and not self.reachable(
                op, states, live, pending_senders
            ):
                raise Finding(
                    f"an operation nobody can finish any more (its task hangs forever) after "
                    f"{self.lost_after(op)} | {_describe(op)}"
                )
        for endpoint in self.endpoints:
            seqs = [seq for seq, _ in endpoint.unacked]
            _require(
                seqs == sorted(set(seqs)) and all(0 < s <= endpoint.next_seq for s in seqs),
                "unconfirmed credited sends out of order",
                seqs,
            )

    def frames_naming(self, op_id: int, kinds: frozenset[int] | None = None) -> list[str]:
        return [
            _name(f)
            for f in self.last_batch
            if len(f) > 1 and f[1] == op_id and (kinds is None or f[0] in kinds)
        ]

    def lost_after(self, op: Operation) -> str:
        """Which frame of the last read named the lost operation (what lost it, most likely)."""
        for waiter in op.waiters:
            if isinstance(waiter, ClientOp):
                named = self.frames_naming(waiter.op_id, _REPLIES - {Kind.UNCLAIM})
                if named:
                    what = "send" if waiter.is_send else "receive"
                    return f"{named[0].split()[0]} for a {what}"
        return self.last_step

    def reachable(
        self,
        op: Operation,
        states: list[ChannelState],
        live: list[Session],
        pending_senders: set[int],
    ) -> bool:
        """Whether someone can still finish ``op``: else its task sleeps forever."""
        for waiter in op.waiters:
            if isinstance(waiter, ClientOp):
                session = waiter.session
                if session in live and session.ops.get(waiter.op_id) is waiter:
                    return True
                if waiter in self.alpha.parked or waiter in waiter.endpoint.credit_waiters:
                    return True
            elif id(waiter) in pending_senders or any(_queued(waiter, s) for s in states):
                return True
        return False


_REPLIES: Final = frozenset(
    {Kind.ACK, Kind.DELIVER, Kind.CLOSED, Kind.CLAIM, Kind.CANCELLED, Kind.FAILED, Kind.UNCLAIM}
)


def _queued(waiter: Any, state: ChannelState) -> bool:
    return waiter in state.senders or waiter in state.receivers


class Finding(AssertionError):
    """A broken invariant: ``"what | details"`` (``what`` names the kind of bug)."""


def _require(condition: bool, what: str, details: object) -> None:
    if not condition:
        raise Finding(f"{what} | {details!r}")


def _name(frame: Frame) -> str:
    try:
        kind = Kind(frame[0]).name
    except ValueError:
        kind = str(frame[0])
    return f"{kind} {frame[1:]!r:.80}"


def _describe(op: Operation) -> str:
    cases = [
        f"{type(w).__name__}(send={getattr(w, 'is_send', None)}, op_id={getattr(w, 'op_id', '-')},"
        f" status={getattr(w, 'status', '-')})"
        for w in op.waiters
    ]
    return f"state {op.state}, cases {cases}"


def _check_state(state: ChannelState, alpha: Peer, pending: int) -> None:
    capacity = state.capacity
    _require(
        state.reserved >= 0 and state.in_flight >= 0 and state.in_flight_buffered >= 0,
        "negative counts",
        vars_of(state),
    )
    _require(state.in_flight_buffered <= state.in_flight, "in flight miscounted", vars_of(state))
    _require(state.in_flight == pending, "in flight miscounted", (vars_of(state), pending))
    if capacity != math.inf:
        margin = credit_target(capacity) if capacity else 0  # one window's worth
        used = len(state.buffer) + state.in_flight_buffered + state.reserved
        _require(len(state.buffer) <= capacity + margin, "buffer over capacity", vars_of(state))
        _require(used <= capacity + margin, "slots over capacity", vars_of(state))
    _require(
        not (state.receivers and state.buffer),
        "receivers wait while values are buffered",
        vars_of(state),
    )
    _require(
        not (
            state.closed and not state.buffer and not state.in_flight_buffered and state.receivers
        ),
        "receivers wait on a closed, drained channel",
        vars_of(state),
    )
    if state.export_id is not None:
        account = alpha.credit_accounts.get(state.export_id)
        unused = 0 if account is None else account.outstanding
        _require(
            state.reserved == unused,
            "reserved slots nobody holds (the channel's capacity shrinks for good)",
            (vars_of(state), "unused window", unused),
        )


def vars_of(state: ChannelState) -> dict[str, Any]:
    return {
        "chan": state.export_id,
        "capacity": state.capacity,
        "buffered": len(state.buffer),
        "reserved": state.reserved,
        "in_flight": state.in_flight,
        "in_flight_buffered": state.in_flight_buffered,
        "closed": state.closed,
    }


# --- drawing frames ---------------------------------------------------------------------------


def _op_id(choices: Choices, known: list[int]) -> int:
    pick = choices.byte()
    if pick < 96 and known:
        return known[pick % len(known)]
    if pick < 250:
        return pick % 10
    return choices.u64()


def _chan(choices: Choices, count: int) -> int:
    pick = choices.byte()
    if pick < 250:
        return pick % (count + 2)  # (0 and count + 1 name nothing)
    return choices.u64()


def _value(choices: Choices, harness: Harness) -> bytes:
    pick = choices.below(12)
    if pick < 5:
        return msgpack.packb(choices.byte() if pick < 3 else choices.blob(8).hex())  # type: ignore[no-any-return]
    if pick == 5:
        return choices.blob(24)  # anything: often not msgpack at all
    if pick < 10:
        return msgpack.packb([pick, msgpack.ExtType(5, _ref(choices, harness, pick))])  # type: ignore[no-any-return]
    if pick == 10:  # references deeper in a value
        items = [msgpack.ExtType(5, _ref(choices, harness, 6 + choices.below(4))), {"k": [1]}]
        return msgpack.packb([items, choices.byte()])  # type: ignore[no-any-return]
    return msgpack.packb(None)  # type: ignore[no-any-return]


def _ref(choices: Choices, harness: Harness, pick: int) -> bytes:
    """A channel reference: to one of beta's own channels (real tokens or not), to one of
    alpha's (current or earlier run), or to a stranger; now and then malformed."""
    chan = 1 + choices.below(len(HOME_CHANNELS) + 1)
    rights = 1 + choices.below(3)
    if pick in (6, 7):
        node = harness.node
        send, receive = harness.minter.tokens(chan, rights)
        if pick == 7 or choices.below(8) == 0:
            send = send and bytes(16)
        capacity = HOME_CHANNELS[chan - 1][0] if chan <= len(HOME_CHANNELS) else 5
        ref = ChannelRef(
            node.public_key, node._incarnation, "", chan, capacity, send, receive or None
        )
    elif pick == 8:
        incarnation = harness.incarnation if choices.flag() else bytes(16)
        ref = ChannelRef(
            INITIATOR_KEY.public, incarnation, "", chan, 4, bytes(16), bytes([chan]) * 16
        )
    else:
        home = STRANGER_KEY.public if choices.flag() else bytes([choices.byte()]) * 32
        ref = ChannelRef(home, bytes(16), "", chan, 0, bytes(16), None)
    data = ref.encode()
    if choices.below(16) == 0:
        data = data[: choices.below(len(data))]
    return data


def _frame(choices: Choices, harness: Harness, kind: Kind, session: Session) -> Frame:
    """A valid-shaped frame of ``kind``, with fields likely to mean something."""
    home_count = len(HOME_CHANNELS)
    alpha = harness.alpha
    if kind == Kind.OPEN:
        chan = _chan(choices, home_count)
        rights = choices.below(4) if choices.below(8) else choices.byte()
        tokens = harness.tokens(chan, rights) if choices.below(8) else choices.blob(40)
        return [int(kind), chan, rights, tokens]
    if kind == Kind.SEND:
        op_id = _op_id(choices, [])
        return [
            int(kind),
            op_id,
            _chan(choices, home_count),
            choices.below(3),
            _value(choices, harness),
        ]
    if kind == Kind.PUSH:
        chan = _chan(choices, home_count)
        account = alpha.credit_accounts.get(chan)
        last, most = (account.last_seq, account.told_most) if account else (0, 0)
        pick = choices.below(16)
        if pick < 11:
            seq = max(last + pick - 2, 0)
        elif pick < 15:
            seq = max(most + pick - 13, 0)
        else:
            seq = choices.u64()
        if AVOID_KNOWN and last + 1 < seq <= most:
            seq = last + 1  # (known bug: skipping seqs leaks reserved slots)
        return [int(kind), chan, min(seq, U64_MAX), _value(choices, harness)]
    if kind == Kind.RECV:
        return [int(kind), _op_id(choices, []), _chan(choices, home_count)]
    if kind in (Kind.CANCEL, Kind.TAKEN, Kind.REFUSED, Kind.GRANT, Kind.DENY):
        return [int(kind), _op_id(choices, harness.mentioned)]
    if kind in (Kind.CLOSE, Kind.RELEASE):
        return [int(kind), _chan(choices, home_count)]
    if kind == Kind.LOOKUP:
        name = _NAMES[choices.below(3)] if choices.below(4) else choices.blob(8).hex()
        return [int(kind), _op_id(choices, []), name]
    ours = list(session.ops) + list(session.lookups)
    if kind in (Kind.ACK, Kind.CLOSED, Kind.CLAIM, Kind.CANCELLED, Kind.UNCLAIM, Kind.NOTFOUND):
        return [int(kind), _op_id(choices, ours)]
    if kind == Kind.DELIVER:
        return [int(kind), _op_id(choices, ours), _value(choices, harness)]
    if kind == Kind.FAILED:
        return [int(kind), _op_id(choices, ours), choices.below(12), "refused"]
    if kind == Kind.FOUND:
        return [int(kind), _op_id(choices, ours), _ref(choices, harness, 8)]
    if kind in (Kind.CREDIT, Kind.SHUT):
        chan = _chan(choices, len(ALPHA_CHANNELS))
        if kind == Kind.SHUT:
            return [int(kind), chan]
        endpoint = alpha.endpoints.get(chan)
        base = endpoint.next_seq if endpoint is not None else 0
        acked = max(base + choices.below(6) - 3, 0)
        return [int(kind), chan, acked, acked + choices.below(6)]
    # connection control never reaches a session; one that did would be a protocol error
    return [int(kind), *(_control_field(choices, t) for t in SCHEMAS[kind])]


def _steer_clear(alpha: Peer, frames: list[Frame]) -> list[Frame]:
    """``frames`` with the known bugs' triggers taken out: credited sends numbered without
    gaps."""
    last: dict[int, int] = {}
    out = []
    for frame in frames:
        if frame[0] == Kind.PUSH:
            chan, seq = frame[1], frame[2]
            account = alpha.credit_accounts.get(chan)
            previous = last.get(chan, account.last_seq if account is not None else 0)
            if seq > previous + 1:
                frame = [frame[0], chan, previous + 1, frame[3]]
            last[chan] = max(previous, frame[2])
        out.append(frame)
    return out


def _fitting(frame: Frame, session: Session) -> Frame:
    """``frame``, or a reply that fits the operation it names (avoiding known bugs: a reply
    that does not fit strands the operation)."""
    kind = frame[0]
    client = session.ops.get(frame[1]) if kind in _REPLIES else None
    if client is None:
        return frame
    if kind == Kind.ACK and not client.is_send:
        return [int(Kind.CLOSED), frame[1]]
    if kind == Kind.DELIVER and client.is_send:
        return [int(Kind.ACK), frame[1]]
    if kind == Kind.CLAIM and not client.is_send:
        return [int(Kind.CLOSED), frame[1]]
    if kind == Kind.CANCELLED and client.status != CANCELLING:
        return [int(Kind.FAILED), frame[1], 0, "fitting"]
    return frame


def _control_field(choices: Choices, kind: type) -> object:
    if kind is int:
        return choices.byte()
    if kind is str:
        return "x"
    return choices.blob(4)


# --- local tasks ------------------------------------------------------------------------------


def _local_value(choices: Choices, harness: Harness) -> Any:
    pick = choices.below(8)
    if pick < 5:
        return choices.byte()
    if pick == 5:
        return object()  # cannot cross the network: a remote receiver's receive fails
    if pick == 6:
        return harness.channels[choices.below(len(harness.channels))]
    if harness.endpoints:
        return Channel._from_endpoint(harness.endpoints[0])
    return None


def _blocking(choices: Choices, harness: Harness) -> None:
    """A receive, send or select at beta that does not complete at once: an Operation."""
    cases: list[tuple[bool, Any, Any]] = []  # (is_send, endpoint, value)
    for _ in range(1 + choices.below(3)):
        remote = choices.below(4) == 0 and harness.endpoints
        if remote:
            endpoint: Any = harness.endpoints[choices.below(len(harness.endpoints))]
        else:
            endpoint = harness.states[choices.below(len(harness.states))]
        is_send = choices.flag()
        cases.append((is_send, endpoint, _local_value(choices, harness) if is_send else None))
    # qchan.select's synchronous part, exactly: poll in order, else queue every case.
    try:
        for is_send, endpoint, value in cases:
            if is_send:
                if endpoint.poll_send(value):
                    return
            elif endpoint.poll_receive()[0]:
                return
    except (QchanError, TypeError, ValueError):
        return  # (closed, or a value that cannot be sent: the call raises at once)
    op = Operation(len(cases))

    def queue_cases(skip: int) -> None:
        for index, (is_send, endpoint, value) in enumerate(cases):
            if index != skip:
                if is_send:
                    endpoint.wait_send(op, index, value)
                else:
                    endpoint.wait_receive(op, index)
                if op.state != PENDING:
                    break

    try:
        queue_cases(-1)
    except (QchanError, TypeError, ValueError):
        op.withdraw()
        return
    if len(cases) > 1:
        op.requeue = queue_cases
    harness.ops.append(op)


def _close_idle_duplicates(harness: Harness) -> None:
    """beta's housekeeping closes a duplicate link that stayed idle (its grace now over)."""
    close: Callable[..., None] = harness.alpha.close_idle_duplicates
    try:
        close(harness.clock, 0.0)  # (noting since when it is idle)
        close(harness.clock, 0.0)
    except TypeError:  # (the form without a grace period)
        close()


def _cancel(choices: Choices, harness: Harness) -> None:
    waiting = [op for op in harness.ops if op.state in (PENDING, CLAIMED)]
    if waiting:
        op = waiting[choices.below(len(waiting))]
        if not op.withdraw():  # (what a cancelled task does: see Operation.wait)
            op.cancel_claimed()


_STEP_NAMES: Final = (
    (Action.READ, "a frame"),
    (Action.LOCAL_RECEIVE, "a read"),
    (Action.LOCAL_SEND, "a local receive"),
    (Action.BLOCKING, "a local send"),
    (Action.CANCEL, "a blocking call"),
    (Action.CLOSE, "a cancellation"),
    (Action.LOOKUP, "a local close"),
    (Action.LOSE, "a lookup"),
    (Action.DUPLICATE, "a lost link"),
    (Action.HOUSEKEEPING, "a duplicate link"),
    (Action.DROP, "housekeeping"),
    (256, "dropping a value"),
)


def _step(choices: Choices, harness: Harness) -> None:
    action = choices.byte()
    harness.last_step = next(name for bound, name in _STEP_NAMES if action < bound)
    harness.last_batch = []
    sessions = harness.sessions
    if action < Action.READ:
        target = sessions[-1]
        kind = _kind_of(action)
        frame = _frame(choices, harness, kind, target)
        if AVOID_KNOWN and kind == Kind.RELEASE:
            # (known bug: a RELEASE in a read that also marks the channel for credit, or
            # before a queued send of the peer completes, leaks reserved slots)
            batch, harness.batch = harness.batch, []
            harness.read(target, batch)
            if any(
                isinstance(w, RemoteSender) and w.state.export_id == frame[1]
                for s in harness.sessions
                for w in s.home_ops.values()
            ):
                frame = [int(Kind.RELEASE), 0]
            if not harness.sessions or target not in harness.sessions:
                return
        harness.batch.append(frame)
    elif action < Action.LOCAL_RECEIVE:
        batch, harness.batch = harness.batch, []
        harness.read(sessions[(action & 1) % len(sessions)], batch)
    elif action < Action.LOCAL_SEND:
        channel = harness.channels[choices.below(len(harness.channels))]
        try:
            harness.held.append(channel.receive_nowait())
        except QchanError:
            pass
    elif action < Action.BLOCKING:
        channel = harness.channels[choices.below(len(harness.channels))]
        try:
            channel.send_nowait(_local_value(choices, harness))
        except QchanError:
            pass
    elif action < Action.CANCEL:
        _blocking(choices, harness)
    elif action < Action.CLOSE:
        _cancel(choices, harness)
    elif action < Action.LOOKUP:
        harness.channels[choices.below(len(harness.channels))].close()
    elif action < Action.LOSE:
        replies: Channel[bytes | None] = Channel(math.inf)
        sessions[-1].lookup(_NAMES[choices.below(3)], replies)
    elif action < Action.DUPLICATE:
        harness.lose(sessions[(action & 1) % len(sessions)])
        if not sessions:
            harness.clock += 1.0
            harness.connect(restarted=choices.below(4) == 0)
    elif action < Action.HOUSEKEEPING:
        if len(sessions) < 2:
            harness.connect(duplicate=True)
        else:
            _close_idle_duplicates(harness)
    elif action < Action.DROP:
        for session in list(sessions):
            harness.lose(session)
        harness.clock += 100.0
        harness.alpha.release_holdings()  # what housekeeping does for a peer away this long
        harness.connect()
    else:
        if harness.held:
            del harness.held[choices.below(len(harness.held))]
    harness.settle()
    for session in sessions:
        harness.note_sent(session.link)  # type: ignore[arg-type]


def fuzz_session(data: bytes) -> None:
    choices = Choices(data)
    harness = Harness()
    harness.check()
    while not choices.exhausted:
        _step(choices, harness)
        harness.check()
        if not harness.sessions:
            harness.connect()
            harness.check()
    if harness.batch:
        harness.read(harness.sessions[-1], harness.batch)
        harness.check()


# --- seeds -------------------------------------------------------------------------------------


def script(*steps: tuple[int, bytes]) -> bytes:
    """A seed input: ``(action byte, its choice bytes)`` in order."""
    out = Script()
    for action, rest in steps:
        out.byte(action).raw(rest)
    return out.bytes()


def frame_action(kind: Kind) -> int:
    """The first action byte that draws a frame of ``kind``."""
    return _LISTED.index(kind)
