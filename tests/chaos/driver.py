"""One chaos node: a qchan Node and its workload, logging every send and every receipt.

Run as ``python -m tests.chaos.driver CONFIG_JSON`` (the runner does, inside a network
namespace; see :class:`DriverConfig` for the fields). The node hosts ``c0`` (capacity 0),
``c1`` (1), ``c16`` (16) and ``rpc`` (0, a request/reply server). Tasks:

- a sender and a receiver for every channel ``c*`` of every node, this one included (looked
  up by name, ``c16@n2``), so each channel has local and remote senders and receivers;
- a select over two send cases on two homes, and a select over two receive cases on two
  homes;
- request/reply clients: a fresh reply channel (capacity 0 or 1) sent inside the request to
  ``rpc@<other node>``; its servers answer on it;
- a janitor that drains reply channels given up on (closed, kept for late values).

Some operations run under a random deadline (``anyio.move_on_after``): a cancelled send must
have had no effect. Every line of the log is written with one ``write`` and flushed at once
(line buffering), so a SIGKILL loses at most the line being written; the checker tolerates a
cut last line. Records (``t`` = ``time.monotonic()``, the same clock in every process):

    B t name inc pid path    process start (incarnation inc of node name; qchan imported from path)
    U t address              node up
    S t vid chan home cap    a send of value vid to chan@home (capacity cap) starts
    P t vid1 vid2            the two send cases of one select
    O t vid outcome          R returned, L PeerLost, U DeliveryUncertain, C ChannelClosed,
                             X cancelled by its deadline, N a select's case not taken,
                             E:<Name> another QchanError
    V t vid chan home        value vid received here from chan@home
    W t text                 a warning (unexpected value, lookup error)
    Z t vid peer             this node, the value's home, counted buffered value vid as taken
                             by node peer, to which it was on its way when their link was
                             lost (instrumentation of ChannelState.delivery_lost; see checker)
    Q t                      quiesce: no new sends from now on
    D t stuck [task ...]     drained: every task finished (stuck 0) or the deadline passed
    T t text                 the node's state at that moment, for diagnosis (see dump_state)
    E t                      the node closed cleanly

SIGUSR1 quiesces (senders stop; receivers go on until nothing came for ``drain_idle``
seconds); SIGTERM closes the node once drained (at once if the workload is still running).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

import anyio
import anyio.abc

import qchan
from qchan._channel import ChannelState

__all__ = ["CHANNELS", "DriverConfig", "Log", "main"]

#: The channels each node hosts, with their capacities (``rpc`` is the request server).
CHANNELS: dict[str, int] = {"c0": 0, "c1": 1, "c16": 16, "rpc": 0}
DATA_CHANNELS = ("c0", "c1", "c16")
BIG = 70_000  # a value this large travels in PART frames (more than one transport message)


@dataclasses.dataclass
class DriverConfig:
    name: str
    inc: int
    names: list[str]
    key: str  # path of the node key file (kept across restarts: same identity)
    cluster_key: str  # hex
    listen: str
    peers: list[str]
    log: str
    seed: int
    backend: str = "asyncio"
    heartbeat: float = 0.2
    timeout: float = 0.8
    gap: float = 0.02  # mean pause between two sends of one task
    deadline_share: float = 0.25  # operations run under a random deadline
    big_share: float = 0.005  # values of BIG bytes
    drain_idle: float = 3.0
    drain_deadline: float = 30.0
    max_life: float = 7200.0


class Log:
    """Append-only, one flushed line per record."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, kind: str, *fields: object) -> None:
        self._file.write(f"{kind} {time.monotonic():.4f} {' '.join(map(str, fields))}\n")

    def close(self) -> None:
        self._file.close()


class Driver:
    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.name = config.name
        self.others = [n for n in config.names if n != config.name]
        self.rng = random.Random(f"{config.seed}/{config.name}/{config.inc}")
        self.log = Log(config.log)
        self.prefix = f"{config.name}.{config.inc}"
        self.local: dict[str, qchan.Channel[Any]] = {
            name: qchan.Channel(capacity) for name, capacity in CHANNELS.items()
        }
        self.cache: dict[tuple[str, str], qchan.Channel[Any]] = {}
        self.node: qchan.Node | None = None
        self.quiesce = anyio.Event()
        self.terminate = anyio.Event()
        self.quiesced_at = math.inf
        self.running: set[str] = set()
        self.receivers_done = anyio.Event()
        self.graveyard: list[tuple[float, qchan.Channel[Any]]] = []
        self._counter = 0

    # --- helpers ---------------------------------------------------------------------------

    def vid(self, task: str) -> str:
        self._counter += 1
        return f"{self.prefix}.{task}.{self._counter}"

    def value(self, vid: str) -> list[Any]:
        pad = b"x" * BIG if self.rng.random() < self.config.big_share else b""
        return [vid, pad]

    def deadline(self) -> float:
        if self.rng.random() < self.config.deadline_share:
            return self.rng.uniform(0.005, 0.5)
        return math.inf

    async def pause(self) -> None:
        await anyio.sleep(self.rng.expovariate(1 / self.config.gap) if self.config.gap else 0)

    @property
    def quiescing(self) -> bool:
        return self.quiesce.is_set()

    def drain_over(self, last: float) -> bool:
        """A receiving task is done: quiescing, and nothing came for drain_idle seconds."""
        return self.quiescing and time.monotonic() - max(last, self.quiesced_at) > (
            self.config.drain_idle
        )

    async def find(self, chan: str, home: str) -> qchan.Channel[Any] | None:
        if home == self.name:
            return self.local[chan]
        cached = self.cache.get((chan, home))
        if cached is not None:
            return cached
        assert self.node is not None
        try:
            handle = await self.node.lookup(f"{chan}@{home}", timeout=1.0)
        except qchan.NotFound:
            await anyio.sleep(0.05)
            return None
        except qchan.QchanError as exc:
            self.log.write("W", f"lookup {chan}@{home}: {type(exc).__name__}: {exc}")
            await anyio.sleep(0.1)
            return None
        self.cache[(chan, home)] = handle
        return handle

    def forget(self, chan: str, home: str) -> None:
        self.cache.pop((chan, home), None)

    def received(self, value: Any, chan: str, home: str) -> None:
        if isinstance(value, list | tuple) and value and isinstance(value[0], str):
            self.log.write("V", value[0], chan, home)
        else:
            self.log.write("W", f"unexpected value {value!r:.80} from {chan}@{home}")

    async def send_one(self, handle: qchan.SendChannel[Any], value: Any) -> str:
        outcome = "X"
        try:
            with anyio.move_on_after(self.deadline()):
                await handle.send(value)
                outcome = "R"  # (no checkpoint between the return and this line)
        except qchan.DeliveryUncertain:
            outcome = "U"
        except qchan.PeerLost:
            outcome = "L"
        except qchan.ChannelClosed:
            outcome = "C"
        except qchan.QchanError as exc:
            outcome = f"E:{type(exc).__name__}"
        return outcome

    # --- tasks -----------------------------------------------------------------------------

    async def sender(self, task: str, chan: str, home: str) -> None:
        while not self.quiescing:
            handle = await self.find(chan, home)
            if handle is None:
                continue
            vid = self.vid(task)
            self.log.write("S", vid, chan, home, CHANNELS[chan])
            outcome = await self.send_one(handle, self.value(vid))
            self.log.write("O", vid, outcome)
            if outcome in ("L", "U"):
                self.forget(chan, home)
            await self.pause()

    async def receiver(self, chan: str, home: str) -> None:
        last = 0.0
        while not self.drain_over(last):
            handle = await self.find(chan, home)
            if handle is None:
                continue
            got = False
            value: Any = None
            try:
                with anyio.move_on_after(min(1.0, self.deadline())):
                    value = await handle.receive()
                    got = True
            except qchan.PeerLost:
                self.forget(chan, home)
                await anyio.sleep(0.05)
                continue
            except qchan.ChannelClosed:
                self.log.write("W", f"{chan}@{home} is closed")
                self.forget(chan, home)
                await anyio.sleep(0.2)
                continue
            if got:
                self.received(value, chan, home)
                last = time.monotonic()

    async def select_sender(self, task: str) -> None:
        while not self.quiescing:
            ha, hb = self.rng.sample(self.config.names, 2)
            ca, cb = self.rng.choice(DATA_CHANNELS), self.rng.choice(DATA_CHANNELS)
            a, b = await self.find(ca, ha), await self.find(cb, hb)
            if a is None or b is None:
                continue
            va, vb = self.vid(task), self.vid(task)
            self.log.write("S", va, ca, ha, CHANNELS[ca])
            self.log.write("S", vb, cb, hb, CHANNELS[cb])
            self.log.write("P", va, vb)
            outcome = "X"
            chosen = -1
            try:
                with anyio.move_on_after(self.deadline()):
                    chosen, _, _ = await qchan.select(
                        qchan.send(a, self.value(va)), qchan.send(b, self.value(vb))
                    )
                    outcome = "R"
            except qchan.DeliveryUncertain:
                outcome = "U"
            except qchan.PeerLost:
                outcome = "L"
            except qchan.ChannelClosed:
                outcome = "C"
            except qchan.QchanError as exc:
                outcome = f"E:{type(exc).__name__}"
            if outcome == "R":
                self.log.write("O", va if chosen == 0 else vb, "R")
                self.log.write("O", vb if chosen == 0 else va, "N")
            else:
                self.log.write("O", va, outcome)
                self.log.write("O", vb, outcome)
            if outcome in ("L", "U"):
                self.forget(ca, ha)
                self.forget(cb, hb)
            await self.pause()

    async def select_receiver(self) -> None:
        last = 0.0
        while not self.drain_over(last):
            ha, hb = self.rng.sample(self.config.names, 2)
            ca, cb = self.rng.choice(DATA_CHANNELS), self.rng.choice(DATA_CHANNELS)
            a, b = await self.find(ca, ha), await self.find(cb, hb)
            if a is None or b is None:
                continue
            got = -1
            value: Any = None
            try:
                with anyio.move_on_after(min(1.0, self.deadline())):
                    index, value, ok = await qchan.select(qchan.recv(a), qchan.recv(b))
                    got = index if ok else -2
            except qchan.PeerLost:
                self.forget(ca, ha)
                self.forget(cb, hb)
                await anyio.sleep(0.05)
                continue
            if got >= 0:
                self.received(value, (ca, cb)[got], (ha, hb)[got])
                last = time.monotonic()
            elif got == -2:
                self.log.write("W", "a select saw a closed channel")

    async def rpc_client(self, task: str) -> None:
        while not self.quiescing:
            home = self.rng.choice(self.others)
            server = await self.find("rpc", home)
            if server is None:
                continue
            reply: qchan.Channel[Any] = qchan.Channel(self.rng.choice((0, 1)))
            vid = self.vid(task)
            self.log.write("S", vid, "rpc", home, 0)
            outcome = await self.send_one(server, [vid, b"", reply.sender()])
            self.log.write("O", vid, outcome)
            if outcome in ("L", "U"):
                self.forget("rpc", home)
            if outcome in ("R", "U"):
                got = False
                answer: Any = None
                with anyio.move_on_after(self.rng.choice((0.3, 2.0))):
                    answer = await reply.receive()
                    got = True
                if got:
                    self.received(answer, "rep", self.name)
            # Given up on (or answered): closed, and kept a while for a late credited answer.
            reply.close()
            self.graveyard.append((time.monotonic(), reply))
            await self.pause()

    async def rpc_server(self, task: str) -> None:
        requests = self.local["rpc"]
        last = 0.0
        while not self.drain_over(last):
            got = False
            request: Any = None
            with anyio.move_on_after(1.0):
                request = await requests.receive()
                got = True
            if not got:
                continue
            last = time.monotonic()
            self.received(request, "rpc", self.name)
            try:
                requester = str(request[0]).split(".")[0]
                reply = request[2]
            except (IndexError, TypeError):
                continue
            vid = self.vid(task)
            self.log.write("S", vid, "rep", requester, int(reply.capacity))
            self.log.write("O", vid, await self.send_one(reply, [vid, b""]))

    async def janitor(self) -> None:
        while True:
            await anyio.sleep(0.25)
            final = self.receivers_done.is_set()
            keep: list[tuple[float, qchan.Channel[Any]]] = []
            now = time.monotonic()
            for made, channel in self.graveyard:
                while True:
                    try:
                        value = channel.receive_nowait()
                    except (qchan.WouldBlock, qchan.ChannelClosed):
                        break
                    self.received(value, "rep", self.name)
                if now - made < 120:
                    keep.append((made, channel))
            self.graveyard = keep
            if final:
                return

    # --- the whole -------------------------------------------------------------------------

    async def tracked(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        self.running.add(name)
        try:
            await work()
        finally:
            self.running.discard(name)

    async def watch_signals(self, work: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
            async for signum in signals:
                if not self.quiescing:
                    self.quiesced_at = time.monotonic()
                    self.log.write("Q")
                    self.quiesce.set()
                if signum == signal.SIGTERM:
                    self.terminate.set()
                    if self.running:
                        work.cancel()  # asked to stop before the workload drained

    async def watchdog(self, work: anyio.CancelScope) -> None:
        """After quiesce, the workload must drain within drain_deadline; else it is stuck."""
        await self.quiesce.wait()
        limit = time.monotonic() + self.config.drain_deadline
        while self.running - {"janitor"} and time.monotonic() < limit:  # noqa: ASYNC110
            await anyio.sleep(0.05)
        self.receivers_done.set()  # the janitor makes its last pass
        while self.running and time.monotonic() < limit:  # noqa: ASYNC110
            await anyio.sleep(0.05)
        if self.running:
            self.log.write("D", len(self.running), *sorted(self.running))
            self.dump_state()
            work.cancel()
        else:
            self.log.write("D", 0)
            self.dump_state()

    def dump_state(self) -> None:
        """Write what each channel, credit account and remote endpoint holds (T records):
        a task stuck after the drain is diagnosed from these, on its node and on the home."""
        for name, channel in self.local.items():
            state = channel._endpoint
            assert isinstance(state, ChannelState)
            self.log.write(
                "T",
                f"chan {name} buffer={len(state.buffer)} reserved={state.reserved}",
                f"in_flight={state.in_flight}/{state.in_flight_buffered}",
                f"senders={[type(s).__name__ for s in state.senders]}",
                f"receivers={[type(r).__name__ for r in state.receivers]}",
                f"export={state.export_id}",
            )
        node = self.node
        if node is None:
            return
        for peer in node._peers.values():
            sessions = [
                f"{s.link.link_id.hex()}:closed={s.closed},retired={s.retired},"
                f"ops={ {i: (c.status, c.endpoint.ref.chan) for i, c in s.ops.items()} },"
                f"home_ops={ {i: type(w).__name__ for i, w in s.home_ops.items()} }"
                for s in peer.sessions
            ]
            self.log.write(
                "T",
                f"peer {peer.label} connected={peer.connected} parked={len(peer.parked)}",
                f"sessions={sessions}",
                f"unsettled={ {k.hex(): sorted(v) for k, v in peer.unsettled_deliveries.items()} }",
            )
            for chan, account in peer.credit_accounts.items():
                self.log.write(
                    "T",
                    f"  account chan={chan} last_seq={account.last_seq}",
                    f"window={account.window} told={account.told_acked}/{account.told_window}",
                    f"most={account.told_most} state={account.state is not None}",
                )
            for chan, endpoint in peer.endpoints.items():
                self.log.write(
                    "T",
                    f"  endpoint chan={chan} next_seq={endpoint.next_seq}",
                    f"window={endpoint.window} unacked={[seq for seq, _ in endpoint.unacked]}",
                    f"credit_waiters={len(endpoint.credit_waiters)}",
                    f"streaming={endpoint in peer.streaming}",
                )

    async def run(self) -> None:
        config = self.config
        self.log.write("B", config.name, config.inc, os.getpid(), qchan.__file__)
        node = qchan.Node(
            cluster_key=qchan.ClusterKey.from_bytes(bytes.fromhex(config.cluster_key)),
            key=qchan.NodeKey.load(config.key),
            name=config.name,
            listen=config.listen,
            peers=config.peers,
            heartbeat_interval=config.heartbeat,
            peer_timeout=config.timeout,
        )
        with anyio.move_on_after(config.max_life):
            async with node:
                self.node = node
                for name, channel in self.local.items():
                    node.register(name, channel)
                self.log.write("U", node.address)
                async with anyio.create_task_group() as outer:
                    work = anyio.CancelScope()
                    outer.start_soon(self.watch_signals, work)
                    with work:
                        async with anyio.create_task_group() as tg:
                            self._start_tasks(tg)
                            tg.start_soon(self.watchdog, work)
                    await self.terminate.wait()
                    outer.cancel_scope.cancel()
        self.log.write("E")
        self.log.close()

    def _start_tasks(self, tg: anyio.abc.TaskGroup) -> None:
        def start(name: str, work: Callable[[], Awaitable[None]]) -> None:
            tg.start_soon(self.tracked, name, work, name=name)

        for home in self.config.names:
            for chan in DATA_CHANNELS:
                task = f"send-{chan}-{home}"
                start(task, functools.partial(self.sender, task, chan, home))
                start(f"recv-{chan}-{home}", functools.partial(self.receiver, chan, home))
        start("select-send", functools.partial(self.select_sender, "ss"))
        start("select-recv", self.select_receiver)
        for i in range(2):
            start(f"rpcc{i}", functools.partial(self.rpc_client, f"rc{i}"))
            start(f"rpcs{i}", functools.partial(self.rpc_server, f"rs{i}"))
        start("janitor", self.janitor)


def _trace_lost_deliveries(log: Log) -> None:
    """Log each buffered value its home drops because its remote receiver's link was lost.

    Instrumentation only: it records the value, then calls the library's own method.
    """
    original = ChannelState.delivery_lost

    def delivery_lost(self: ChannelState, receiver: Any, error: qchan.QchanError) -> None:
        pending = receiver.pending
        if pending is not None and pending[1] is None:
            value = pending[0]
            if isinstance(value, list) and value and isinstance(value[0], str):
                session = getattr(receiver, "session", None)
                peer = getattr(getattr(session, "peer", None), "name", "") or "?"
                log.write("Z", value[0], peer)
        original(self, receiver, error)

    setattr(ChannelState, "delivery_lost", delivery_lost)  # noqa: B010


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: never outlive the runner."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> None:
    _die_with_parent()
    config = DriverConfig(**json.loads(argv[0]))
    driver = Driver(config)
    _trace_lost_deliveries(driver.log)
    anyio.run(driver.run, backend=config.backend)


if __name__ == "__main__":
    main(sys.argv[1:])
