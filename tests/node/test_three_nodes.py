"""Handles travel inside values: from A to B to C, and C then talks to A directly.

Every test here uses real nodes over real TCP on 127.0.0.1 with real Noise handshakes. Node B
learns a handle to a channel hosted on A from a message, passes it on to C the same way, and C
uses it: the values reach A with B out of the loop (B sees no frame about them, and can even
be gone). The rights a handle carries travel with it: a ``sender()`` view arrives send-only, a
``receiver()`` view receive-only, a full channel with both; a handle that comes back to its
home is the home's own local channel again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

import qchan
from qchan.protocol.frames import Kind
from tests.node._helpers import connected_to, make_node, recording_frames, settle, wait_for

pytestmark = pytest.mark.anyio

BOUND = 10.0


@qchan.register_type
@dataclass
class Envelope:
    """A registered dataclass with a channel in a field."""

    note: str
    channel: Any


def _in_dict(handle: Any) -> Any:
    return {"note": "a handle in a dict", "channel": handle, "n": 1}


def _in_dataclass(handle: Any) -> Any:
    return Envelope("a handle in a dataclass", handle)


def _in_list(handle: Any) -> Any:
    return ["a handle in a list", [0, handle]]


def _out(value: Any) -> Any:
    if isinstance(value, dict):
        return value["channel"]
    if isinstance(value, Envelope):
        return value.channel
    assert isinstance(value, list), f"unexpected {value!r}"
    return value[1][1]


WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "dict": _in_dict,
    "dataclass": _in_dataclass,
    "list": _in_list,
}


async def _pass(mailbox_home: qchan.Channel[Any], mailbox_away: Any, value: Any) -> Any:
    """Send ``value`` on a mailbox from its home node; receive it on the other node."""
    received: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def take() -> None:
            received.append(await mailbox_away.receive())

        tg.start_soon(take)
        await mailbox_home.send(value)
    return received[0]


class ThreeNodes:
    """A, B, C: B dialled A, C dialled B; C has no link to A at first.

    ``mail_b`` is hosted on A and looked up by B; ``mail_c`` is hosted on B and looked up by C.
    """

    def __init__(self, stack: AsyncExitStack, cluster_key: qchan.ClusterKey) -> None:
        self.stack = stack
        self.cluster_key = cluster_key

    async def start(self, *, b_stack: AsyncExitStack | None = None) -> None:
        ck = self.cluster_key
        self.a = await self.stack.enter_async_context(make_node(ck, "A"))
        self.c = await self.stack.enter_async_context(make_node(ck, "C"))
        self.b = await (b_stack or self.stack).enter_async_context(make_node(ck, "B"))
        await self.b.connect(self.a.address)
        await self.c.connect(self.b.address)
        self.mail_b_home: qchan.Channel[Any] = qchan.Channel(0)
        self.a.register("mail-b", self.mail_b_home)
        self.mail_c_home: qchan.Channel[Any] = qchan.Channel(0)
        self.b.register("mail-c", self.mail_c_home)
        self.mail_b = await self.b.lookup("mail-b", timeout=BOUND)
        self.mail_c = await self.c.lookup("mail-c", timeout=BOUND)
        assert not connected_to(self.c, self.a), "C should not know A yet"

    async def relay(self, handle: Any, wrap: Callable[[Any], Any]) -> Any:
        """A -> B -> C, inside ``wrap``'s container each time; C's handle."""
        at_b = _out(await _pass(self.mail_b_home, self.mail_b, wrap(handle)))
        return _out(await _pass(self.mail_c_home, self.mail_c, wrap(at_b)))


@pytest.mark.parametrize("container", sorted(WRAPPERS))
@pytest.mark.parametrize("capacity", [0, 4])
async def test_a_handle_passed_on_twice_talks_to_its_home_directly(
    container: str, capacity: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with recording_frames(monkeypatch) as frames, anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            nodes = ThreeNodes(stack, qchan.ClusterKey.generate())
            await nodes.start()
            a, b, c = nodes.a, nodes.b, nodes.c
            target: qchan.Channel[Any] = qchan.Channel(capacity)
            at_c = await nodes.relay(target, WRAPPERS[container])
            assert isinstance(at_c, qchan.Channel)
            assert at_c.capacity == capacity

            await settle()
            frames.clear()
            received: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def receive_at_a() -> None:
                    for _ in range(10):
                        received.append(await target.receive())

                tg.start_soon(receive_at_a)
                for i in range(10):
                    await at_c.send(("from C", i))
            assert received == [("from C", i) for i in range(10)]

            # C dialled A itself and holds a link to it.
            assert connected_to(c, a)
            session = c._peers[a.public_key].session
            assert session is not None
            assert session.link.remote_key == a.public_key
            # B's sessions were handed no frame about it: no operation, no open, nothing.
            await settle()
            operations = {Kind.OPEN, Kind.SEND, Kind.PUSH, Kind.RECV, Kind.TAKEN, Kind.CLOSE}
            assert not [k for k in frames.kinds_at(b) if k in operations]
            # The sends reached A, and only from C.
            senders = {
                peer
                for at, peer, frame in frames.entries
                if at == a.name and frame[0] in (Kind.SEND, Kind.PUSH)
            }
            assert senders == {"C"}


@pytest.mark.parametrize("capacity", [0, 3])
async def test_the_third_node_can_close_the_channel_it_was_passed(capacity: int) -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            nodes = ThreeNodes(stack, qchan.ClusterKey.generate())
            await nodes.start()
            target: qchan.Channel[Any] = qchan.Channel(capacity)
            at_c = await nodes.relay(target, _in_list)
            received: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def drain_at_a() -> None:
                    async for value in target:
                        received.append(value)

                tg.start_soon(drain_at_a)
                for i in range(capacity + 2):
                    await at_c.send(i)
                at_c.close()
            assert received == list(range(capacity + 2))
            assert target.closed
            with pytest.raises(qchan.ChannelClosed):
                await at_c.receive()
            assert at_c.closed


@pytest.mark.parametrize(
    "capacity",
    [
        0,
        pytest.param(
            3,
        ),
    ],
)
async def test_a_send_after_closing_the_channel_raises(capacity: int) -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            _, _, (to_b, to_b_away), _ = await _two_nodes(stack)
            channel: qchan.Channel[Any] = qchan.Channel(capacity)
            at_b = _out(await _pass(to_b, to_b_away, _in_dict(channel)))
            async with anyio.create_task_group() as tg:
                tg.start_soon(at_b.send, "before close")  # (credit comes with the answer)
                assert await channel.receive() == "before close"
            await settle()
            at_b.close()
            await settle()
            assert channel.closed
            try:
                with pytest.raises(qchan.ChannelClosed):
                    await at_b.send("after close")
            finally:
                await settle()
                assert channel.statistics().buffered == 0, "a value got in after close"


async def test_a_remote_handle_knows_it_closed_its_channel() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            _, _, (to_b, to_b_away), _ = await _two_nodes(stack)
            channel: qchan.Channel[Any] = qchan.Channel(0)
            at_b = _out(await _pass(to_b, to_b_away, _in_dict(channel)))
            at_b.close()
            assert at_b.closed


@pytest.mark.parametrize("capacity", [0, 3])
async def test_the_middle_node_may_leave_before_the_handle_is_used(capacity: int) -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            b_stack = AsyncExitStack()
            nodes = ThreeNodes(stack, qchan.ClusterKey.generate())
            async with b_stack:
                await nodes.start(b_stack=b_stack)
                target: qchan.Channel[Any] = qchan.Channel(capacity)
                at_c = await nodes.relay(target, _in_dict)
            # B is gone (it said GOAWAY to A and C); C's handle needs only A.
            await wait_for(lambda: not connected_to(nodes.c, nodes.b))
            received: list[Any] = []
            async with anyio.create_task_group() as tg:

                async def receive_at_a() -> None:
                    for _ in range(5):
                        received.append(await target.receive())

                tg.start_soon(receive_at_a)
                for i in range(5):
                    await at_c.send(i)
            assert received == list(range(5))
            # ... and the other way: A sends, C receives.
            async with anyio.create_task_group() as tg:
                tg.start_soon(target.send, "to C")
                assert await at_c.receive() == "to C"
            assert connected_to(nodes.c, nodes.a)


def _directions(handle: object) -> tuple[bool, bool]:
    """(can send, can receive), by the handle's type."""
    return isinstance(handle, qchan.SendChannel), isinstance(handle, qchan.ReceiveChannel)


async def _two_nodes(stack: AsyncExitStack) -> tuple[qchan.Node, qchan.Node, Any, Any]:
    """A and B; a mailbox hosted on A that B looked up, and one hosted on B that A looked up."""
    ck = qchan.ClusterKey.generate()
    a = await stack.enter_async_context(make_node(ck, "A"))
    b = await stack.enter_async_context(make_node(ck, "B"))
    await b.connect(a.address)
    to_b: qchan.Channel[Any] = qchan.Channel(0)
    a.register("to-b", to_b)
    to_a: qchan.Channel[Any] = qchan.Channel(0)
    b.register("to-a", to_a)
    return a, b, (to_b, await b.lookup("to-b", timeout=BOUND)), (to_a, await a.lookup("to-a"))


async def test_a_sender_view_arrives_send_only() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            _, _, (to_b, to_b_away), _ = await _two_nodes(stack)
            channel: qchan.Channel[Any] = qchan.Channel(0)
            tx: Any = _out(await _pass(to_b, to_b_away, _in_dict(channel.sender())))
            assert _directions(tx) == (True, False)
            with pytest.raises(qchan.PermissionDenied):
                await tx.receive()
            with pytest.raises(qchan.PermissionDenied):
                tx.receive_nowait()
            with pytest.raises(qchan.PermissionDenied):
                qchan.recv(tx)
            async with anyio.create_task_group() as tg:
                tg.start_soon(tx.send, "sent from B")
                assert await channel.receive() == "sent from B"


async def test_a_receiver_view_arrives_receive_only() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            _, _, (to_b, to_b_away), _ = await _two_nodes(stack)
            channel: qchan.Channel[Any] = qchan.Channel(0)
            rx: Any = _out(await _pass(to_b, to_b_away, _in_dataclass(channel.receiver())))
            assert _directions(rx) == (False, True)
            with pytest.raises(qchan.PermissionDenied):
                await rx.send(1)
            with pytest.raises(qchan.PermissionDenied):
                rx.send_nowait(1)
            with pytest.raises(qchan.PermissionDenied):
                qchan.send(rx, 1)
            with pytest.raises(qchan.PermissionDenied):
                rx.close()
            async with anyio.create_task_group() as tg:
                tg.start_soon(channel.send, "sent from A")
                assert await rx.receive() == "sent from A"
            assert not channel.closed


async def test_a_full_channel_arrives_with_both_rights() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            _, _, (to_b, to_b_away), _ = await _two_nodes(stack)
            channel: qchan.Channel[Any] = qchan.Channel(0)
            both = _out(await _pass(to_b, to_b_away, _in_list(channel)))
            assert isinstance(both, qchan.Channel)
            async with anyio.create_task_group() as tg:
                tg.start_soon(both.send, "B to A")
                assert await channel.receive() == "B to A"
            async with anyio.create_task_group() as tg:
                tg.start_soon(channel.send, "A to B")
                assert await both.receive() == "A to B"
            # Both directions work in select too.
            async with anyio.create_task_group() as tg:
                tg.start_soon(channel.send, "A to B, selected")
                assert await qchan.select(qchan.recv(both)) == (0, "A to B, selected", True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(qchan.select, qchan.send(both, "B to A, selected"))
                assert await channel.receive() == "B to A, selected"


async def test_views_of_a_remote_handle_keep_their_rights_on_the_next_hop() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            nodes = ThreeNodes(stack, qchan.ClusterKey.generate())
            await nodes.start()
            channel: qchan.Channel[Any] = qchan.Channel(1)
            at_b = _out(await _pass(nodes.mail_b_home, nodes.mail_b, _in_dict(channel)))
            assert isinstance(at_b, qchan.Channel)
            # B hands C only a send-only view of its full handle.
            tx = _out(await _pass(nodes.mail_c_home, nodes.mail_c, _in_dict(at_b.sender())))
            assert _directions(tx) == (True, False)
            with pytest.raises(qchan.PermissionDenied):
                await tx.receive()
            await tx.send("from C")
            assert await channel.receive() == "from C"
            # ... and a receive-only view.
            rx = _out(await _pass(nodes.mail_c_home, nodes.mail_c, _in_list(at_b.receiver())))
            assert _directions(rx) == (False, True)
            with pytest.raises(qchan.PermissionDenied):
                await rx.send(1)
            channel.send_nowait("to C")
            assert await rx.receive() == "to C"


@pytest.mark.parametrize("view", ["channel", "sender", "receiver"])
async def test_a_handle_sent_back_to_its_home_is_the_local_channel(view: str) -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            _, _, (to_b, to_b_away), (to_a, to_a_away) = await _two_nodes(stack)
            channel: qchan.Channel[Any] = qchan.Channel(math.inf)
            handle: Any = {
                "channel": channel,
                "sender": channel.sender(),
                "receiver": channel.receiver(),
            }[view]
            at_b = _out(await _pass(to_b, to_b_away, _in_dict(handle)))
            # B sends it back to A over a channel hosted on B.
            back = _out(await _pass(to_a, to_a_away, _in_dataclass(at_b)))
            assert type(back) is type(handle)
            assert back == handle, "the handle that came home is not the local one"
            channel.send_nowait("one")
            channel.send_nowait("two")
            # A remote handle would know nothing of the buffer; the local one does.
            assert back.statistics() == channel.statistics()
            assert back.statistics().buffered == 2
            assert len(back) == 2
            if view == "sender":
                back.send_nowait("three")  # no round trip: it is local
                assert [channel.receive_nowait() for _ in range(3)] == ["one", "two", "three"]
                with pytest.raises(qchan.PermissionDenied):
                    back.receive_nowait()
            else:
                assert back.receive_nowait() == "one"  # no round trip: it is local
                assert channel.receive_nowait() == "two"
            if view == "channel":
                back.send_nowait("three")
                assert channel.receive_nowait() == "three"
            if view == "receiver":
                with pytest.raises(qchan.PermissionDenied):
                    back.send_nowait(4)
            assert channel.statistics().buffered == 0
