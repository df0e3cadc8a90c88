"""When the node hosting a channel goes away: every waiting operation ends, promptly.

All in one process, with short heartbeats. A home node that stops (its ``async with`` exits: a
clean shutdown, GOAWAY on every link) ends every operation other nodes have waiting on it at
once; a home that falls silent (a network partition, made here by a TCP proxy that stops
forwarding) is given up after ``peer_timeout``. Then: a lookup of its names fails with
NotFound; when it comes back (same key, same name, same port) its names resolve again and fresh
handles work, while handles to the channels of its previous run raise PeerLost.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest

import qchan
from tests.node._helpers import HEARTBEAT, PEER_TIMEOUT, connected_to, make_node, wait_for

pytestmark = pytest.mark.anyio

BOUND = 10.0
PROMPT = 1.0  # "at once": a clean shutdown is heard within a round trip


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


class Outcomes:
    """Runs operations in the background; records how and when each ended."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.ended: dict[str, tuple[BaseException | None, float]] = {}
        self.started = 0

    def start(self, name: str, call: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            try:
                await call()
            except qchan.QchanError as exc:
                self.ended[name] = (exc, anyio.current_time())
            else:
                self.ended[name] = (None, anyio.current_time())

        self.started += 1
        self.tg.start_soon(run)


class Hosted:
    """A node run in a task of its own, so that it can be stopped from anywhere."""

    def __init__(self, node: qchan.Node) -> None:
        self.node = node
        self._stop = anyio.Event()
        self.stopped = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[qchan.Node]) -> None:
        async with self.node:
            task_status.started(self.node)
            await self._stop.wait()
        self.stopped.set()

    async def stop(self) -> None:
        """Leave the node's ``async with`` (GOAWAY to every peer); wait until it has."""
        self._stop.set()
        await self.stopped.wait()


async def _iterate(channel: Any) -> None:
    async for _ in channel:
        pass


async def test_every_operation_waiting_on_a_home_that_stops_fails_at_once() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            away = await stack.enter_async_context(make_node(ck, "away"))
            other = await stack.enter_async_context(make_node(ck, "other"))
            tasks = await stack.enter_async_context(anyio.create_task_group())
            hosted = Hosted(make_node(ck, "home"))
            home = await tasks.start(hosted.run)
            capacities = {
                "rendezvous": 0,
                "buffered": 3,
                "full": 1,
                "select-1": 0,
                "select-2": 2,
                "unreceived": 0,
            }
            channels: dict[str, qchan.Channel[Any]] = {}
            for name, capacity in capacities.items():
                channels[name] = qchan.Channel(capacity)
                home.register(name, channels[name])
            channels["full"].send_nowait("filler")
            await away.connect(home.address)
            await other.connect(home.address)
            at_away = {name: await away.lookup(name) for name in channels}
            at_other = {name: await other.lookup(name) for name in channels}
            local: qchan.Channel[Any] = qchan.Channel(0)
            async with anyio.create_task_group() as tg:
                ops = Outcomes(tg)
                for where, handles in (("away", at_away), ("other", at_other)):
                    ops.start(f"{where}: receive, capacity 0", handles["rendezvous"].receive)
                    ops.start(f"{where}: receive, buffered", handles["buffered"].receive)
                    ops.start(f"{where}: async for", partial(_iterate, handles["buffered"]))
                    ops.start(
                        f"{where}: select over two remote receives and a local one",
                        partial(
                            qchan.select,
                            qchan.recv(handles["select-1"]),
                            qchan.recv(handles["select-2"]),
                            qchan.recv(local),
                        ),
                    )
                    ops.start(f"{where}: send on a full buffer", partial(handles["full"].send, 1))
                # A rendezvous send waits at the home (no receiver anywhere).
                ops.start("away: send, capacity 0", partial(at_away["unreceived"].send, "never"))
                # Queued at the home: per node 5 receivers (2 of them the select's) and a
                # sender; and the rendezvous send.
                await wait_for(
                    lambda: (
                        sum(
                            c.statistics().waiting_receivers + c.statistics().waiting_senders
                            for c in channels.values()
                        )
                        == 2 * 6 + 1
                    )
                )
                stopped = anyio.current_time()
                await hosted.stop()  # GOAWAY to everyone
                await wait_for(lambda: len(ops.ended) == ops.started, within=PROMPT)
            for name, (error, when) in ops.ended.items():
                assert isinstance(error, qchan.PeerLost), f"{name}: {error!r}"
                assert when - stopped < PROMPT, f"{name}: after {when - stopped:.2f} s"
            assert not connected_to(away, home)
            assert not connected_to(other, home)
            # Nothing is waiting forever: the local channel was never touched.
            assert local.statistics().waiting_receivers == 0
            # A name on a node that left is not found.
            started = anyio.current_time()
            with pytest.raises(qchan.NotFound):
                await away.lookup("rendezvous", timeout=0.3)
            with pytest.raises(qchan.NotFound):
                await other.lookup("rendezvous@home", timeout=0.3)
            assert anyio.current_time() - started < 2.0
            # And a new operation on a handle to it fails at once too.
            with pytest.raises(qchan.PeerLost):
                await at_away["rendezvous"].send("after")
            with pytest.raises(qchan.PeerLost):
                await at_other["buffered"].receive()


async def test_a_node_that_stops_takes_its_waiting_operations_with_it() -> None:
    """The home forgets a departed node's receives and sends: no ghost takes a value."""
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            home = await stack.enter_async_context(make_node(ck, "home"))
            inbox: qchan.Channel[Any] = qchan.Channel(0)
            outbox: qchan.Channel[Any] = qchan.Channel(0)
            home.register("inbox", inbox)
            home.register("outbox", outbox)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            hosted = Hosted(make_node(ck, "away"))
            away = await tasks.start(hosted.run)
            await away.connect(home.address)
            outbox_at_away = await away.lookup("outbox")
            inbox_at_away = await away.lookup("inbox")
            async with anyio.create_task_group() as tg:
                ops = Outcomes(tg)
                ops.start("receive", outbox_at_away.receive)
                ops.start("send", partial(inbox_at_away.send, "from a node that left"))
                await wait_for(
                    lambda: (
                        (outbox.statistics().waiting_receivers, inbox.statistics().waiting_senders)
                        == (1, 1)
                    )
                )
                await hosted.stop()
            for name, (error, _) in ops.ended.items():
                assert isinstance(error, qchan.PeerLost), f"{name}: {error!r}"
            await wait_for(
                lambda: (
                    (outbox.statistics().waiting_receivers, inbox.statistics().waiting_senders)
                    == (0, 0)
                ),
                within=PROMPT,
            )
            with anyio.move_on_after(0.2) as nobody:
                await outbox.send("for nobody")
            assert nobody.cancelled_caught, "a node that left took a value"
            with pytest.raises(qchan.WouldBlock):
                inbox.receive_nowait()


@pytest.mark.parametrize("capacity", [0, 1])
async def test_a_send_the_stopping_home_never_handed_over_raises_plain_peer_lost(
    capacity: int,
) -> None:
    """API: PeerLost means "certainly not taken"; a GOAWAY comes after every answer."""
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            away = await stack.enter_async_context(make_node(ck, "away"))
            tasks = await stack.enter_async_context(anyio.create_task_group())
            hosted = Hosted(make_node(ck, "home"))
            home = await tasks.start(hosted.run)
            channel: qchan.Channel[Any] = qchan.Channel(capacity)
            for i in range(capacity):
                channel.send_nowait(f"filler {i}")
            home.register("jobs", channel)
            await away.connect(home.address)
            handle = await away.lookup("jobs")
            errors: list[BaseException] = []

            async def send() -> None:
                try:
                    await handle.send("never taken")
                except qchan.PeerLost as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await wait_for(lambda: channel.statistics().waiting_senders == 1)
                await hosted.stop()
    [error] = errors
    assert type(error) is qchan.PeerLost, repr(error)


class Proxy:
    """A TCP relay to ``target`` that can be frozen: then it forwards nothing, closes nothing."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port = host, int(port)
        self.frozen = False
        self.address = ""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.address = f"127.0.0.1:{port}"
        task_status.started()
        async with listener:
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        upstream = await anyio.connect_tcp(self.host, self.port)
        async with client, upstream, anyio.create_task_group() as tg:
            tg.start_soon(self._pump, client, upstream)
            tg.start_soon(self._pump, upstream, client)

    async def _pump(self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        try:
            async for chunk in source:
                if not self.frozen:
                    await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


async def test_a_home_that_falls_silent_is_given_up_after_the_peer_timeout() -> None:
    with anyio.fail_after(BOUND):
        async with AsyncExitStack() as stack:
            ck = qchan.ClusterKey.generate()
            home = await stack.enter_async_context(make_node(ck, "home"))
            away = await stack.enter_async_context(make_node(ck, "away"))
            tasks = await stack.enter_async_context(anyio.create_task_group())
            proxy = Proxy(home.address)
            await tasks.start(proxy.run)
            inbox: qchan.Channel[Any] = qchan.Channel(0)
            outbox: qchan.Channel[Any] = qchan.Channel(0)
            home.register("inbox", inbox)
            home.register("outbox", outbox)
            await away.connect(proxy.address)
            inbox_at_away = await away.lookup("inbox")
            outbox_at_away = await away.lookup("outbox")
            # It works through the proxy.
            async with anyio.create_task_group() as tg:
                tg.start_soon(inbox_at_away.send, "through the proxy")
                assert await inbox.receive() == "through the proxy"
            async with anyio.create_task_group() as tg:
                ops = Outcomes(tg)
                ops.start("receive", outbox_at_away.receive)
                ops.start("send", lambda: inbox_at_away.send("lost in the partition"))
                await wait_for(
                    lambda: (
                        (
                            outbox.statistics().waiting_receivers,
                            inbox.statistics().waiting_senders,
                        )
                        == (1, 1)
                    )
                )
                proxy.frozen = True
                frozen = anyio.current_time()
                await wait_for(lambda: len(ops.ended) == 2, within=PEER_TIMEOUT * 3)
            receive_error, _ = ops.ended["receive"]
            assert isinstance(receive_error, qchan.PeerLost)
            assert not isinstance(receive_error, qchan.DeliveryUncertain)
            # The send was at the home, which may have handed it over: uncertain, honestly.
            send_error, _ = ops.ended["send"]
            assert isinstance(send_error, qchan.PeerLost)
            # Heartbeats: the last word heard is at most a heartbeat old when the proxy freezes.
            for name, (_, when) in ops.ended.items():
                assert PEER_TIMEOUT - HEARTBEAT - 0.05 <= when - frozen < PEER_TIMEOUT * 3, name
            # The home gave up on the silent node too, and let go of its operations.
            await wait_for(lambda: not connected_to(home, away), within=PEER_TIMEOUT * 3)
            await wait_for(
                lambda: (
                    (
                        outbox.statistics().waiting_receivers,
                        inbox.statistics().waiting_senders,
                    )
                    == (0, 0)
                )
            )
            tasks.cancel_scope.cancel()


async def _restarted_home_scenario(*, away_keeps_dialling: bool) -> None:
    ck = qchan.ClusterKey.generate()
    home_key = qchan.NodeKey.generate()
    address = _free_address()
    async with AsyncExitStack() as stack:
        peers = [address] if away_keeps_dialling else []
        away = await stack.enter_async_context(make_node(ck, "away", peers=peers))
        first: qchan.Channel[Any] = qchan.Channel(0)
        async with make_node(ck, "home", key=home_key, listen=address) as home:
            home.register("jobs", first)
            if not away_keeps_dialling:
                await away.connect(address)
            old = await away.lookup("jobs", timeout=BOUND)
            async with anyio.create_task_group() as tg:
                tg.start_soon(old.send, "first run")
                assert await first.receive() == "first run"
        with pytest.raises(qchan.NotFound):
            await away.lookup("jobs", timeout=0.3)
        with pytest.raises(qchan.PeerLost):
            await old.send("while it is down")
        second: qchan.Channel[Any] = qchan.Channel(0)
        async with make_node(ck, "home", key=home_key, listen=address) as home:
            assert home.address == address
            home.register("jobs", second)
            if away_keeps_dialling:
                await wait_for(lambda: connected_to(away, home))
            else:
                # The away node is not connected: using the old handle dials the new run.
                with pytest.raises(qchan.PeerLost) as stale:
                    await old.send("to the first run")
                assert not isinstance(stale.value, qchan.DeliveryUncertain), stale.value
                await away.connect(address)
            fresh = await away.lookup("jobs", timeout=BOUND)
            async with anyio.create_task_group() as tg:
                tg.start_soon(fresh.send, "second run")
                assert await second.receive() == "second run"
            # A handle from the first run is stale: it raises PeerLost, at once, every time.
            for attempt in (
                lambda: old.send("to the first run"),
                old.receive,
                lambda: qchan.select(qchan.recv(old)),
            ):
                with anyio.fail_after(PROMPT), pytest.raises(qchan.PeerLost):
                    await attempt()
            with pytest.raises(qchan.PeerLost):
                old.send_nowait("to the first run")
            stats = second.statistics()
            assert (stats.waiting_senders, stats.waiting_receivers) == (0, 0)
            # ... and trying did not hurt the link: the fresh handle still works.
            async with anyio.create_task_group() as tg:
                tg.start_soon(second.send, "still fine")
                assert await fresh.receive() == "still fine"
            assert connected_to(away, home)


async def test_a_restarted_home_serves_fresh_handles_and_old_ones_are_stale() -> None:
    with anyio.fail_after(BOUND):
        await _restarted_home_scenario(away_keeps_dialling=True)


async def test_using_a_stale_handle_first_does_not_break_the_link_to_the_restarted_home() -> None:
    with anyio.fail_after(BOUND):
        await _restarted_home_scenario(away_keeps_dialling=False)
