"""An authenticated peer that breaks the protocol loses its connection, and only that.

The hostile peer here is a raw :class:`~qchan.transport.Link` (real TCP, real Noise, a real
cluster key and node key) that sends hand-made frames to a real node, the victim. Each case
sends one kind of malformed or forbidden frame. What must happen every time:

- the victim closes that link: frames the node layer refuses get ``GOAWAY [PROTOCOL_ERROR,
  why]`` (the raw peer's ``on_closed`` gets the text); frames the frame layer refuses end the
  stream at once (docs/protocol.md section 8: no GOAWAY then);
- a second, well-behaved node keeps using the victim's channels before, during (an operation
  of its own is waiting at the victim when the hostile frame lands) and after.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, cast

import anyio
import pytest

import qchan
from qchan import _codec
from qchan._errors import QchanError
from qchan._refs import ChannelRef
from qchan.protocol import Connection, Event, GoawayReceived, Hello
from qchan.protocol.frames import Frame, GoawayReason, Kind, Mode, Rights
from qchan.transport import Link, Transport
from tests.node._helpers import make_node, wait_for

pytestmark = pytest.mark.anyio

BOUND = 10.0
UNKNOWN_CHANNEL = 4242
_raw_names = itertools.count()


class RawPeer:
    """A hand-driven peer: frames out as given, frames in as they come."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.frames: list[Frame] = []
        self.error: QchanError | None = None
        self._requests = itertools.count(1)
        link.start(self.frames.extend, self._on_closed)

    def _on_closed(self, error: QchanError) -> None:
        assert self.error is None, "on_closed called twice"
        self.error = error

    def send(self, *frames: Any) -> None:
        for frame in frames:
            self.link.send(frame)

    async def reply(self, kind: Kind, op: int) -> Frame:
        """The first frame of ``kind`` about ``op`` (or request ``op``) from the victim."""

        def find() -> Frame | None:
            for frame in self.frames:
                if frame[0] == kind and frame[1] == op:
                    return frame
            return None

        await wait_for(lambda: find() is not None or self.error is not None)
        frame = find()
        assert frame is not None, f"no {kind.name} for {op}; the link ended: {self.error}"
        return frame

    async def lookup(self, name: str) -> ChannelRef:
        req = next(self._requests)
        self.send([Kind.LOOKUP, req, name])
        found = await self.reply(Kind.FOUND, req)
        return ChannelRef.decode(found[2])

    async def open(self, name: str, rights: int | None = None) -> ChannelRef:
        """Look ``name`` up and OPEN it with the rights its reference carries."""
        ref = await self.lookup(name)
        rights = ref.rights if rights is None else rights
        self.send([Kind.OPEN, ref.chan, rights, ref.tokens(rights)])
        return ref

    async def closed(self) -> QchanError:
        await wait_for(lambda: self.error is not None)
        assert self.error is not None
        return self.error


def _value(value: Any) -> bytes:
    return _codec.encode(value)


@dataclass
class Victim:
    """The victim node, a well-behaved friend node, and the victim's channels.

    - ``work`` (capacity 0, both rights): what the friend uses, through ``work_at_friend``;
    - ``scratch`` (capacity 0, both rights): what the hostile peer operates on;
    - ``inbox``: ``scratch2``'s ``sender()`` view; ``outbox``: its ``receiver()`` view.
    """

    node: qchan.Node
    friend: qchan.Node
    cluster_key: qchan.ClusterKey
    work: qchan.Channel[Any]
    work_at_friend: Any
    scratch: qchan.Channel[Any]
    scratch2: qchan.Channel[Any]

    async def friend_round_trip(self, tag: str) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.work_at_friend.send, f"{tag}: friend to victim")
            assert await self.work.receive() == f"{tag}: friend to victim"
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.work.send, f"{tag}: victim to friend")
            assert await self.work_at_friend.receive() == f"{tag}: victim to friend"

    async def raw_peer(self, stack: AsyncExitStack) -> RawPeer:
        transport = await stack.enter_async_context(Transport())
        link = await transport.connect(
            self.node.address,
            key=qchan.NodeKey.generate(),
            cluster_key=self.cluster_key,
            hello=Hello(f"raw-{next(_raw_names)}", os.urandom(16)),
        )
        return RawPeer(link)


async def _victim(stack: AsyncExitStack) -> Victim:
    ck = qchan.ClusterKey.generate()
    node = await stack.enter_async_context(make_node(ck, "victim"))
    friend = await stack.enter_async_context(make_node(ck, "friend"))
    await friend.connect(node.address)
    work: qchan.Channel[Any] = qchan.Channel(0)
    scratch: qchan.Channel[Any] = qchan.Channel(0)
    scratch2: qchan.Channel[Any] = qchan.Channel(0)
    node.register("work", work)
    node.register("scratch", scratch)
    node.register("inbox", scratch2.sender())
    node.register("outbox", scratch2.receiver())
    work_at_friend = await friend.lookup("work", timeout=BOUND)
    return Victim(node, friend, ck, work, work_at_friend, scratch, scratch2)


# --- the cases: each does something a peer must never do --------------------------------------

Case = Callable[[RawPeer], Awaitable[None]]


async def send_on_a_channel_never_opened(raw: RawPeer) -> None:
    raw.send([Kind.SEND, 1, UNKNOWN_CHANNEL, Mode.PLAIN, _value("x")])


async def recv_on_a_channel_never_opened(raw: RawPeer) -> None:
    raw.send([Kind.RECV, 1, UNKNOWN_CHANNEL])


async def push_on_a_channel_never_opened(raw: RawPeer) -> None:
    raw.send([Kind.PUSH, UNKNOWN_CHANNEL, 1, _value("x")])


async def close_a_channel_never_opened(raw: RawPeer) -> None:
    raw.send([Kind.CLOSE, UNKNOWN_CHANNEL])


async def send_on_a_real_channel_without_opening_it(raw: RawPeer) -> None:
    ref = await raw.lookup("scratch")  # knows the id, never proved the right
    raw.send([Kind.SEND, 1, ref.chan, Mode.PLAIN, _value("x")])


async def open_with_forged_tokens(raw: RawPeer) -> None:
    ref = await raw.lookup("scratch")
    raw.send([Kind.OPEN, ref.chan, Rights.BOTH, os.urandom(32)])


async def open_an_unknown_channel_with_made_up_tokens(raw: RawPeer) -> None:
    raw.send([Kind.OPEN, UNKNOWN_CHANNEL, Rights.SEND, os.urandom(16)])


async def open_with_another_channels_tokens(raw: RawPeer) -> None:
    scratch = await raw.lookup("scratch")
    work = await raw.lookup("work")
    raw.send([Kind.OPEN, work.chan, Rights.BOTH, scratch.tokens(Rights.BOTH)])


async def open_a_send_only_reference_for_both_rights(raw: RawPeer) -> None:
    ref = await raw.lookup("inbox")
    assert ref.rights == Rights.SEND
    assert ref.receive_token is None
    raw.send([Kind.OPEN, ref.chan, Rights.BOTH, ref.tokens(Rights.SEND) + os.urandom(16)])


async def open_with_rights_that_do_not_exist(raw: RawPeer) -> None:
    ref = await raw.lookup("scratch")
    raw.send([Kind.OPEN, ref.chan, 4, ref.tokens(Rights.BOTH)])


async def recv_with_only_the_send_right(raw: RawPeer) -> None:
    ref = await raw.open("inbox")
    assert ref.rights == Rights.SEND
    raw.send([Kind.RECV, 1, ref.chan])


async def send_with_only_the_receive_right(raw: RawPeer) -> None:
    ref = await raw.open("outbox")
    assert ref.rights == Rights.RECEIVE
    raw.send([Kind.SEND, 1, ref.chan, Mode.PLAIN, _value("x")])


async def close_with_only_the_receive_right(raw: RawPeer) -> None:
    ref = await raw.open("outbox")
    raw.send([Kind.CLOSE, ref.chan])


async def taken_for_an_operation_that_does_not_exist(raw: RawPeer) -> None:
    raw.send([Kind.TAKEN, 77])


async def refused_for_an_operation_that_does_not_exist(raw: RawPeer) -> None:
    raw.send([Kind.REFUSED, 77])


async def grant_for_an_operation_that_does_not_exist(raw: RawPeer) -> None:
    raw.send([Kind.GRANT, 77])


async def deny_for_an_operation_that_does_not_exist(raw: RawPeer) -> None:
    raw.send([Kind.DENY, 77])


async def taken_before_anything_was_delivered(raw: RawPeer) -> None:
    ref = await raw.open("scratch")
    raw.send([Kind.RECV, 5, ref.chan], [Kind.TAKEN, 5])


async def grant_for_a_send_never_claimed(raw: RawPeer) -> None:
    ref = await raw.open("scratch")
    raw.send([Kind.SEND, 5, ref.chan, Mode.SELECT, _value("x")], [Kind.GRANT, 5])


async def taken_for_a_send(raw: RawPeer) -> None:
    ref = await raw.open("scratch")
    raw.send([Kind.SEND, 5, ref.chan, Mode.PLAIN, _value("x")], [Kind.TAKEN, 5])


async def a_receive_reusing_a_waiting_operations_id(raw: RawPeer) -> None:
    ref = await raw.open("scratch")
    raw.send([Kind.RECV, 5, ref.chan], [Kind.RECV, 5, ref.chan])


async def a_send_reusing_a_waiting_operations_id(raw: RawPeer) -> None:
    ref = await raw.open("scratch")
    raw.send(
        [Kind.SEND, 5, ref.chan, Mode.PLAIN, _value("a")],
        [Kind.SEND, 5, ref.chan, Mode.PLAIN, _value("b")],
    )


async def a_send_with_an_unknown_mode(raw: RawPeer) -> None:
    ref = await raw.open("scratch")
    raw.send([Kind.SEND, 1, ref.chan, 7, _value("x")])


async def found_for_a_lookup_never_asked(raw: RawPeer) -> None:
    raw.send([Kind.FOUND, 99, b"not a reference"])


async def notfound_for_a_lookup_never_asked(raw: RawPeer) -> None:
    raw.send([Kind.NOTFOUND, 99])


NODE_REFUSES: dict[Case, str] = {
    send_on_a_channel_never_opened: "not opened",
    recv_on_a_channel_never_opened: "not opened",
    push_on_a_channel_never_opened: "not opened",
    close_a_channel_never_opened: "not opened",
    send_on_a_real_channel_without_opening_it: "not opened",
    open_with_forged_tokens: "never issued",
    open_an_unknown_channel_with_made_up_tokens: "never issued",
    open_with_another_channels_tokens: "never issued",
    open_a_send_only_reference_for_both_rights: "never issued",
    open_with_rights_that_do_not_exist: "never issued",
    recv_with_only_the_send_right: "without that right",
    send_with_only_the_receive_right: "without that right",
    close_with_only_the_receive_right: "without that right",
    taken_for_an_operation_that_does_not_exist: "TAKEN",
    refused_for_an_operation_that_does_not_exist: "REFUSED",
    grant_for_an_operation_that_does_not_exist: "GRANT",
    deny_for_an_operation_that_does_not_exist: "DENY",
    taken_before_anything_was_delivered: "TAKEN",
    grant_for_a_send_never_claimed: "never claimed",
    taken_for_a_send: "TAKEN",
    a_receive_reusing_a_waiting_operations_id: "already in use",
    a_send_reusing_a_waiting_operations_id: "already in use",
    a_send_with_an_unknown_mode: "mode",
    found_for_a_lookup_never_asked: "never asked",
    notfound_for_a_lookup_never_asked: "never asked",
}

#: Frames the frame layer refuses (docs/protocol.md section 4): through Link.send the encoder
#: packs whatever it is given.
MALFORMED: dict[str, Any] = {
    "unknown kind": [0x7F, 1],
    "kind 0": [0, 1],
    "kind as a string": ["RECV", 1, 2],
    "op as a string": [Kind.RECV, "1", 2],
    "op as a float": [Kind.RECV, 1.0, 2],
    "negative op": [Kind.RECV, -1, 2],
    "field missing": [Kind.RECV, 1],
    "field too many": [Kind.CLOSE, 1, 2],
    "value as str": [Kind.SEND, 1, 2, 0, "not bytes"],
    "name as bytes": [Kind.LOOKUP, 1, b"scratch"],
    "token as str": [Kind.OPEN, 1, 3, "token"],
    "bool for an int": [Kind.CANCEL, True],
    "nil field": [Kind.TAKEN, None],
    "empty array": [],
    "a map": {"kind": 0x21},
    "a bare int": 0x21,
    "nested array": [Kind.CANCEL, [1]],
    "empty PART chunk": [Kind.PART, 10, b""],
    "PART larger than allowed": [Kind.PART, 2**40, b"x"],
}


def _connected(victim: Victim) -> list[qchan.PeerInfo]:
    return [p for p in victim.node.peers() if p.connected]


async def _attack(stack: AsyncExitStack, attack: Callable[[RawPeer], Awaitable[None]]) -> str:
    """Run ``attack`` against a fresh victim; the raw peer's closing error, as text.

    Checks that a friend node is served before, while and after the attack.
    """
    victim = await _victim(stack)
    await victim.friend_round_trip("before")
    raw = await victim.raw_peer(stack)
    # The raw peer is a real peer: the victim answers it until it misbehaves.
    assert (await raw.lookup("scratch")).home == victim.node.public_key
    waiting: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def friend_waits() -> None:
            waiting.append(await victim.work_at_friend.receive())

        tg.start_soon(friend_waits)
        await wait_for(lambda: victim.work.statistics().waiting_receivers == 1)
        await attack(raw)
        error = await raw.closed()
        await wait_for(lambda: not any(p.name.startswith("raw-") for p in _connected(victim)))
        await victim.work.send("during")  # to the friend's receive, waiting all along
    assert waiting == ["during"]
    await victim.friend_round_trip("after")
    # Nothing the hostile peer left behind holds up the channels it touched.
    for channel in (victim.scratch, victim.scratch2):
        stats = channel.statistics()
        assert (stats.waiting_senders, stats.waiting_receivers, stats.buffered) == (0, 0, 0)
        assert not stats.closed
    return str(error)


@pytest.fixture
def goaways(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Connection, GoawayReceived]]:
    """Every GOAWAY any connection receives, with the connection (the link drops the reason)."""
    seen: list[tuple[Connection, GoawayReceived]] = []
    original = Connection.receive_data

    def receive_data(self: Connection, data: bytes, now: float) -> list[Event]:
        events = original(self, data, now)
        seen.extend((self, event) for event in events if isinstance(event, GoawayReceived))
        return events

    monkeypatch.setattr(Connection, "receive_data", receive_data)
    return seen


@pytest.mark.parametrize(
    ("attack", "why"), list(NODE_REFUSES.items()), ids=[f.__name__ for f in NODE_REFUSES]
)
async def test_a_forbidden_frame_closes_only_that_link(
    attack: Case, why: str, goaways: list[tuple[Connection, GoawayReceived]]
) -> None:
    raws: list[RawPeer] = []

    async def recorded(raw: RawPeer) -> None:
        raws.append(raw)
        await attack(raw)

    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            error = await _attack(stack, recorded)
    # GOAWAY [PROTOCOL_ERROR, text] came back; the link hands us its text.
    assert "peer closed the connection" in error, error
    assert why in error, error
    [raw] = raws
    assert [(g.reason, g.text) for conn, g in goaways if conn is raw.link._conn] == [
        (GoawayReason.PROTOCOL_ERROR, error.removeprefix("peer closed the connection: "))
    ]


@pytest.mark.parametrize(("frame"), list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_frame_closes_only_that_link(frame: Any) -> None:
    async def attack(raw: RawPeer) -> None:
        raw.send(cast(Frame, frame))

    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            error = await _attack(stack, attack)
    assert error


async def test_a_hostile_peer_can_do_what_its_references_allow() -> None:
    """The raw peer is a faithful client when it keeps to the rules (the cases are not noise)."""
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            victim = await _victim(stack)
            raw = await victim.raw_peer(stack)
            inbox = await raw.open("inbox")
            raw.send([Kind.SEND, 1, inbox.chan, Mode.PLAIN, _value("hello")])
            assert await victim.scratch2.receive() == "hello"
            await raw.reply(Kind.ACK, 1)
            # A value this node cannot decode fails that operation, not the link.
            raw.send([Kind.SEND, 3, inbox.chan, Mode.PLAIN, b"\xc1"])
            failed = await raw.reply(Kind.FAILED, 3)
            assert failed[2] == qchan.ProtocolError.code
            outbox = await raw.open("outbox")
            raw.send([Kind.RECV, 2, outbox.chan])
            async with anyio.create_task_group() as tg:
                tg.start_soon(victim.scratch2.send, "to raw")
                deliver = await raw.reply(Kind.DELIVER, 2)
                assert _codec.decode(deliver[2]) == "to raw"
                raw.send([Kind.TAKEN, 2])
            # An unknown name is an answer, not an offence.
            raw.send([Kind.LOOKUP, 4, "no such channel"])
            await raw.reply(Kind.NOTFOUND, 4)
            await victim.friend_round_trip("after")
            assert raw.error is None
            assert not raw.link.closed
