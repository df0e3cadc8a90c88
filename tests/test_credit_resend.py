"""Credited sends survive a dropped link: resent on the next one, de-duplicated at the home.

A producer streams into a buffered channel through a TCP relay; the relay is cut mid-stream
(both sockets closed at once, so some credited sends are on the wire and some frames are lost).
The node reconnects; every send that returned must arrive exactly once and in order.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest

import qchan

pytestmark = pytest.mark.anyio


class CuttableRelay:
    """A TCP relay to ``target`` whose connections can all be cut at once."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port = host, int(port)
        self.address = ""
        self.connections = 0
        self._scopes: list[anyio.CancelScope] = []

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.address = f"127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}"
        task_status.started()
        async with listener:
            await listener.serve(self._relay)

    def cut(self) -> None:
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        async with client, await anyio.connect_tcp(self.host, self.port) as upstream:
            with anyio.CancelScope() as scope:
                self._scopes.append(scope)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, client, upstream)
                    tg.start_soon(self._pump, upstream, client)

    @staticmethod
    async def _pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


async def test_credited_sends_in_flight_survive_a_cut_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qchan._session import Session

    resent: list[int] = []
    original_resend = Session.resend

    def counting_resend(session: Session, endpoint: Any) -> None:
        resent.extend(seq for seq, _ in endpoint.unacked)
        original_resend(session, endpoint)

    monkeypatch.setattr(Session, "resend", counting_resend)
    # Links that came up, at either end. (After the cut, the new link may go through the
    # relay or straight to the home's own address, which its hello gave: either proves it.)
    from qchan._peer import Peer

    attached: list[Session] = []
    attached_before_cut: list[int] = []
    original_attach = Peer.attach

    def counting_attach(peer: Peer, session: Session) -> None:
        attached.append(session)
        original_attach(peer, session)

    monkeypatch.setattr(Peer, "attach", counting_attach)
    total = 6000
    cluster_key = qchan.ClusterKey.generate()
    received: list[int] = []
    returned: list[int] = []
    raised: dict[int, str] = {}
    with anyio.fail_after(30):
        async with qchan.Node(cluster_key=cluster_key, name="home") as home:
            channel: qchan.Channel[int] = qchan.Channel(64)
            home.register("stream", channel)
            async with anyio.create_task_group() as tasks:
                relay = CuttableRelay(home.address)
                await tasks.start(relay.run)
                away = qchan.Node(cluster_key=cluster_key, name="away", peers=[relay.address])
                async with away:
                    remote: qchan.Channel[Any] = await away.lookup("stream", timeout=5)

                    async def consumer() -> None:
                        while len(received) < total:
                            received.append(await channel.receive())
                            if len(received) == total // 3:
                                relay.cut()
                                attached_before_cut.append(len(attached))
                            if len(received) == 2 * total // 3:
                                await anyio.sleep(0.01)  # let the producer run ahead again

                    async def producer() -> None:
                        for value in range(total):
                            while True:
                                try:
                                    await remote.send(value)
                                except qchan.PeerLost as exc:  # (not yet reconnected)
                                    raised[value] = type(exc).__name__
                                    if isinstance(exc, qchan.DeliveryUncertain):
                                        break  # it may have arrived: don't send it twice
                                    await anyio.sleep(0.01)
                                    continue
                                returned.append(value)
                                break
                        # the values that raised DeliveryUncertain may never come: stop waiting
                        await anyio.sleep(1)
                        consumer_scope.cancel()

                    async with anyio.create_task_group() as flow:
                        with anyio.CancelScope() as consumer_scope:
                            flow.start_soon(producer)
                            await consumer()
                        flow.cancel_scope.cancel()
                tasks.cancel_scope.cancel()
    assert attached_before_cut, "the relay was never cut"
    assert len(attached) > attached_before_cut[0], "the link was not re-made"
    assert resent, "no credited send was in flight when the link was cut: the test proves nothing"
    assert len(received) == len(set(received)), "a value arrived twice"
    assert received == sorted(received), "values from one sender arrived out of order"
    missing = set(returned) - set(received)
    assert not missing, f"{len(missing)} sends returned but never arrived: {sorted(missing)[:5]}"
    strays = set(received) - set(returned)
    assert all(raised.get(v) == "DeliveryUncertain" for v in strays), "a PeerLost send arrived"
    assert len(returned) > total * 0.9
