"""Minimal, deterministic repros of library bugs the chaos harness found.

Each is a strict xfail: it fails today, for the reason given; when the library is fixed it
passes, pytest reports XPASS as a failure, and the fixer removes the mark (and, for
``lost-delivery``, empties ``ChaosConfig.tolerate`` in tests/chaos/runner.py).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import qchan
from tests.chaos.proxy import Proxy

pytestmark = pytest.mark.anyio


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def test_buffered_value_survives_losing_the_link_to_a_remote_receiver() -> None:
    cluster_key = qchan.ClusterKey.generate()
    channel: qchan.Channel[str] = qchan.Channel(4)
    async with qchan.Node(cluster_key=cluster_key, name="home") as home:
        home.register("buf", channel)
        host, _, port = home.address.rpartition(":")
        proxy = Proxy([("127.0.0.1", 0, host, int(port))])
        async with anyio.create_task_group() as tg:
            await proxy.start(tg)
            async with qchan.Node(
                cluster_key=cluster_key, name="far", peers=proxy.addresses
            ) as far:
                remote = await far.lookup("buf@home", timeout=5)
                outcome: list[object] = []

                async def receive() -> None:
                    try:
                        outcome.append(await remote.receive())
                    except qchan.PeerLost as exc:
                        outcome.append(exc)

                tg.start_soon(receive)
                # The remote receive waits at the home; the link then stops carrying bytes.
                await _until(lambda: channel.statistics().waiting_receivers == 1)
                proxy.stall()
                await channel.send("v")  # buffered: returns at once; DELIVER goes out...
                await anyio.sleep(0.2)  # ... and sits in the stalled proxy
                proxy.reset()  # the link is lost with the DELIVER outstanding
                await _until(lambda: bool(outcome))
                proxy.resume()
                assert isinstance(outcome[0], qchan.PeerLost)  # "no value was taken"
                # The send returned and the home is alive: the value must still be there.
                with anyio.fail_after(2):
                    assert await channel.receive() == "v"
            tg.cancel_scope.cancel()


@pytest.mark.xfail(
    strict=True,
    reason="BUG (docs or design): a credited send returns once its PUSH is queued; if the "
    "sending node is gone before the home confirmed it, the value is lost though the home "
    "never died: API.md and guide.md say buffered values are lost only if the home dies",
)
async def test_returned_credited_send_survives_its_sender_going_away() -> None:
    cluster_key = qchan.ClusterKey.generate()
    channel: qchan.Channel[str] = qchan.Channel(16)
    async with qchan.Node(cluster_key=cluster_key, name="home") as home:
        home.register("buf", channel)
        host, _, port = home.address.rpartition(":")
        proxy = Proxy([("127.0.0.1", 0, host, int(port))])
        async with anyio.create_task_group() as tg:
            await proxy.start(tg)
            async with qchan.Node(
                cluster_key=cluster_key, name="far", peers=proxy.addresses
            ) as far:
                remote = await far.lookup("buf@home", timeout=5)
                await remote.send("v0")  # a plain send; the home answers with a credit window
                await _until(lambda: len(channel) == 1)
                await anyio.sleep(0.2)  # (the CREDIT is on its way back)
                proxy.stall()
                with anyio.fail_after(1):
                    await remote.send("v1")  # credited: returns once queued on the link
                proxy.reset()  # the link is lost before the home had v1 ...
            # ... and the sending node is gone before it could send v1 again (the proxy still
            # stalls new connections, so no new link came up meanwhile).
            proxy.resume()
            assert channel.receive_nowait() == "v0"
            with anyio.fail_after(2):
                assert await channel.receive() == "v1"  # the send returned: it must arrive
            tg.cancel_scope.cancel()


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a buffered value on its way to a remote receiver whose link was lost is counted "
    "as taken once that receiver has been away 2 x peer_timeout (Peer.release_holdings -> "
    "ChannelState.delivery_lost), though it never got it: the value is lost while its home "
    "lives (API.md: buffered values are lost only if the home node itself dies)",
)
async def test_buffered_value_survives_its_receiver_being_away_a_while() -> None:
    cluster_key = qchan.ClusterKey.generate()
    channel: qchan.Channel[str] = qchan.Channel(4)
    # A peer away for 2 x peer_timeout = 0.6 s is "gone".
    async with qchan.Node(
        cluster_key=cluster_key, name="home", heartbeat_interval=0.1, peer_timeout=0.3
    ) as home:
        home.register("buf", channel)
        host, _, port = home.address.rpartition(":")
        proxy = Proxy([("127.0.0.1", 0, host, int(port))])
        async with anyio.create_task_group() as tg:
            await proxy.start(tg)
            async with qchan.Node(
                cluster_key=cluster_key,
                name="far",
                peers=proxy.addresses,
                heartbeat_interval=0.1,
                peer_timeout=0.3,
            ) as far:
                remote = await far.lookup("buf@home", timeout=5)
                outcome: list[object] = []

                async def receive() -> None:
                    try:
                        outcome.append(await remote.receive())
                    except qchan.PeerLost as exc:
                        outcome.append(exc)

                tg.start_soon(receive)
                await _until(lambda: channel.statistics().waiting_receivers == 1)
                proxy.stall()
                await channel.send("v")  # buffered: DELIVER goes out, sits in the proxy
                await anyio.sleep(0.2)
                proxy.reset()  # the link is lost with the DELIVER outstanding
                await _until(lambda: bool(outcome))
                assert isinstance(outcome[0], qchan.PeerLost)  # "no value was taken"
                await anyio.sleep(1.5)  # far stays away (the proxy stalls new links): "gone"
                proxy.resume()
                await _until(lambda: any(p.connected for p in far.peers()))
                # far is back and never took "v"; its home never died: "v" must be there.
                with anyio.fail_after(2):
                    assert await channel.receive() == "v"
            tg.cancel_scope.cancel()
