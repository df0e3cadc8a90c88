"""Who may join: the cluster key, and the ``trusted`` allow-list, between real nodes.

A node without the cluster key, or whose key the other side does not trust, can neither connect,
nor look a channel up, nor send on one (even holding a genuine reference that leaked to it);
the victim never lists it among its peers and keeps serving the nodes it does admit.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import pytest

import qchan
from qchan import _codec
from qchan._channel import ChannelState
from qchan.protocol import Rights
from tests.node._helpers import connected_to, make_node

pytestmark = pytest.mark.anyio

BOUND = 10.0


def _leak(victim: qchan.Node, name: str, to: qchan.Node) -> Any:
    """A genuine reference to ``victim``'s channel ``name``, decoded at node ``to``.

    As if it had leaked: ``to`` holds a handle without ever having been admitted.
    """
    state = victim._registry[name]._endpoint
    assert isinstance(state, ChannelState)
    ref = victim.exports.ref(state, Rights.BOTH, to.public_key).encode()
    data = _codec.encode(qchan.Channel(0), channel_encoder=lambda _: ref)
    return to.decode_value(data)


async def _shut_out(victim: qchan.Node, intruder: qchan.Node, secret: qchan.Channel[Any]) -> None:
    """What an intruder cannot do to ``victim``, which hosts ``secret`` as "secret"."""
    with pytest.raises(qchan.AuthenticationError):
        await intruder.connect(victim.address)
    started = anyio.current_time()
    with pytest.raises(qchan.NotFound):
        await intruder.lookup("secret", timeout=0.3)
    with pytest.raises(qchan.NotFound):
        await intruder.lookup(f"secret@{victim.name}", timeout=0.2)
    assert anyio.current_time() - started < 2.0
    leaked = _leak(victim, "secret", intruder)
    with pytest.raises(qchan.PeerLost):
        await leaked.send("let me in")
    with pytest.raises(qchan.PeerLost):
        await leaked.receive()
    stats = secret.statistics()
    assert (stats.buffered, stats.waiting_senders, stats.waiting_receivers) == (0, 0, 0)
    assert intruder.public_key not in [p.public_key for p in victim.peers()]
    assert not connected_to(intruder, victim)


class Watch:
    """Polls ``victim.peers()`` every few ms until stopped: who was ever listed.

    (Stopped by a flag, not by cancelling its task group: nodes entered after it would
    then be left inside a cancelled scope.)
    """

    def __init__(self, victim: qchan.Node) -> None:
        self.victim = victim
        self.seen: set[bytes] = set()
        self.stopped = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        for _ in range(int(BOUND / 0.002)):
            self.seen.update(p.public_key for p in self.victim.peers())
            if self.stopped:
                return
            await anyio.sleep(0.002)


async def _still_serves(victim: qchan.Node, friend: qchan.Node, secret: Any) -> None:
    """``friend`` (admitted) can use ``secret`` both ways."""
    handle = await friend.lookup("secret", timeout=BOUND)
    async with anyio.create_task_group() as tg:
        tg.start_soon(handle.send, "from a friend")
        assert await secret.receive() == "from a friend"
    async with anyio.create_task_group() as tg:
        tg.start_soon(secret.send, "to a friend")
        assert await handle.receive() == "to a friend"
    assert connected_to(victim, friend)
    assert connected_to(friend, victim)


async def test_a_node_with_the_wrong_cluster_key_is_shut_out() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            victim = await stack.enter_async_context(make_node(ck, "victim"))
            secret: qchan.Channel[Any] = qchan.Channel(0)
            victim.register("secret", secret)
            friend = await stack.enter_async_context(
                make_node(ck, "friend", peers=[victim.address])
            )
            watch = Watch(victim)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            await tasks.start(watch.run)
            # The intruder also keeps dialling the victim in the background, as configured.
            intruder = await stack.enter_async_context(
                make_node(qchan.ClusterKey.generate(), "intruder", peers=[victim.address])
            )
            await _still_serves(victim, friend, secret)
            await _shut_out(victim, intruder, secret)
            await _still_serves(victim, friend, secret)
            assert [p.name for p in victim.peers()] == ["friend"]
            assert not any(p.connected for p in intruder.peers())
            assert intruder.public_key not in watch.seen
            assert friend.public_key in watch.seen
            watch.stopped = True


async def test_a_node_the_victim_does_not_trust_is_shut_out_when_the_victim_dials() -> None:
    """The victim dials a node outside its ``trusted`` set: it refuses it after message 2."""
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            friend_key = qchan.NodeKey.generate()
            victim = await stack.enter_async_context(
                make_node(ck, "victim", trusted=[friend_key.public])
            )
            secret: qchan.Channel[Any] = qchan.Channel(0)
            victim.register("secret", secret)
            stranger = await stack.enter_async_context(make_node(ck, "stranger"))
            stranger_channel: qchan.Channel[Any] = qchan.Channel(0)
            stranger.register("stranger-channel", stranger_channel)
            with pytest.raises(qchan.AuthenticationError):
                await victim.connect(stranger.address)
            # The victim does not find the stranger's channels either: it is not in the cluster.
            with pytest.raises(qchan.NotFound):
                await victim.lookup("stranger-channel", timeout=0.3)
            assert stranger.public_key not in [p.public_key for p in victim.peers()]
            friend = await stack.enter_async_context(make_node(ck, "friend", key=friend_key))
            await friend.connect(victim.address)
            await _still_serves(victim, friend, secret)


async def test_a_node_the_victim_does_not_trust_is_shut_out_when_it_dials() -> None:
    """The untrusted node dials the victim: what it can still do once the dial has failed."""
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            friend_key = qchan.NodeKey.generate()
            victim = await stack.enter_async_context(
                make_node(ck, "victim", trusted=[friend_key.public])
            )
            secret: qchan.Channel[Any] = qchan.Channel(0)
            victim.register("secret", secret)
            watch = Watch(victim)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            await tasks.start(watch.run)
            stranger = await stack.enter_async_context(
                make_node(ck, "stranger", peers=[victim.address])
            )
            with pytest.raises(qchan.NotFound):
                await stranger.lookup("secret", timeout=0.5)
            leaked = _leak(victim, "secret", stranger)
            with pytest.raises(qchan.PeerLost):
                await leaked.send("let me in")
            assert secret.statistics().waiting_senders == 0
            assert stranger.public_key not in [p.public_key for p in victim.peers()]
            friend = await stack.enter_async_context(
                make_node(ck, "friend", key=friend_key, peers=[victim.address])
            )
            await _still_serves(victim, friend, secret)
            assert [p.name for p in victim.peers()] == ["friend"]
            assert stranger.public_key not in watch.seen
            watch.stopped = True


async def test_connect_to_a_node_that_does_not_trust_us_raises() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            victim = await stack.enter_async_context(
                make_node(ck, "victim", trusted=[qchan.NodeKey.generate().public])
            )
            stranger = await stack.enter_async_context(make_node(ck, "stranger"))
            try:
                with pytest.raises(qchan.AuthenticationError):
                    await stranger.connect(victim.address)
            finally:
                assert stranger.public_key not in [p.public_key for p in victim.peers()]
            await anyio.sleep(0.1)
            assert not connected_to(stranger, victim)


async def test_trust_in_both_directions_lets_nodes_work() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            key_a, key_b = qchan.NodeKey.generate(), qchan.NodeKey.generate()
            a = await stack.enter_async_context(
                make_node(ck, "A", key=key_a, trusted=[key_b.public])
            )
            secret: qchan.Channel[Any] = qchan.Channel(0)
            a.register("secret", secret)
            # trusted may also hold NodeKey objects
            b = await stack.enter_async_context(make_node(ck, "B", key=key_b, trusted=[key_a]))
            info = await b.connect(a.address)
            assert (info.name, info.public_key, info.connected) == ("A", key_a.public, True)
            await _still_serves(a, b, secret)
            # The other direction: a channel on B, used from A, with A dialling nothing new.
            mine: qchan.Channel[Any] = qchan.Channel(1)
            b.register("mine", mine)
            handle = await a.lookup("mine@B", timeout=BOUND)
            await handle.send("A to B")
            assert await mine.receive() == "A to B"
