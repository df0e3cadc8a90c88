"""Remote channels between two OS processes over loopback: qchan against pyzmq and Pyro5.

Every measurement runs node A (the channel's home, or the comparison's server) and node B (the
client) in two fresh processes (multiprocessing, "spawn"); the process that measures reports
to this one, which prints a table: qchan's figure, the comparison's figure from the same run,
their ratio and the target. qchan nodes use real encryption (Noise, ChaCha20-Poly1305) and run
on uvloop unless ``--loop`` says otherwise; pyzmq (blocking sockets) and Pyro5 (its threaded
daemon and a proxy) run their normal way. Systems alternate round by round and the best round
of each is kept, so machine noise hits all alike; read the ratios.

Rows:
  1  rendezvous ping-pong: one task on B sends on A's capacity-0 channel, one receiver at A;
     each send is one round trip. Against Pyro5 calls and pyzmq REQ/REP.
  2  64 sender tasks on B, 64 receiver tasks at A, one capacity-0 channel; against pyzmq
     DEALER/ROUTER with 32 requests in flight, each acknowledged.
  3  one sender on B streams into A's capacity-1024 channel, one receiver at A measures;
     against pyzmq PUSH/PULL (unacknowledged), for context.
  4  latency p50/p99 of rendezvous sends at a fixed offered load, against REQ/REP.
  5  memory: bytes per idle hosted channel (registered and exported to a peer) and per
     blocked remote sender (on B and at A), from tracemalloc and from RSS (separate runs).

    .venv/bin/python benchmarks/remote.py [--rows 1,2,3,4,5] [--loop uvloop|asyncio|trio]
        [--duration S] [--warmup S] [--rounds R] [--count N] [--rate R] [--profile PREFIX]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import _peers
import anyio
import sniffio
from _procs import ChildFailed, Ctl, Pair, Role, current_rss, run_on_loop

import qchan

Params = dict[str, Any]
Clock = time.perf_counter

# --- the qchan side: roles run in child processes --------------------------------------------


def _node(p: Params, name: str, peers: tuple[str, ...] = ()) -> qchan.Node:
    key = qchan.ClusterKey.from_bytes(p["cluster_key"])
    # The memory rows stall the loop for seconds (gc, tracemalloc snapshots): the nodes there
    # must not take that silence for a lost peer.
    peer_timeout = 120.0 if p.get("patient") else 3.0  # 3.0: Node's default
    return qchan.Node(
        cluster_key=key,
        name=name,
        listen="127.0.0.1:0",
        peers=list(peers),
        peer_timeout=peer_timeout,
        busy_poll=p["busy_poll"],
    )


def q_home(ctl: Ctl, p: Params) -> None:
    """Node A: hosts the channel ``bench`` with receiver tasks that take values and do nothing."""
    run_on_loop(p, _home, ctl)


async def _home(ctl: Ctl, p: Params) -> None:
    async with _node(p, "A") as node:
        channel: qchan.Channel[Any] = qchan.Channel(p["capacity"])
        node.register("bench", channel)
        async with anyio.create_task_group() as tg:
            counter = Counter()
            if p["kind"] == "stream":
                tg.start_soon(_stream_receiver, ctl, channel, p)
            else:
                for _ in range(p.get("receivers", 1)):
                    tg.start_soon(_drain, channel, counter)
            ctl.send("ready", address=node.address)
            if p["kind"] != "stream":
                await ctl.aexpect("report", p["child_limit"])
                ctl.send("result", cpu_us=counter.cpu_us())
            await ctl.aexpect("stop", p["child_limit"])
            tg.cancel_scope.cancel()


class Counter:
    """Values received, and this process's CPU time from the first of them on."""

    def __init__(self) -> None:
        self.count = 0
        self.cpu_start = 0.0

    def first(self) -> None:
        self.cpu_start = time.process_time()

    def cpu_us(self) -> float:
        """CPU microseconds per value received (0 if none was)."""
        if self.count < 2:
            return 0.0
        return (time.process_time() - self.cpu_start) / (self.count - 1) * 1e6


async def _drain(channel: qchan.Channel[Any], counter: Counter) -> None:
    receive = channel.receive
    await receive()
    if not counter.count:
        counter.first()
    counter.count += 1
    while True:
        await receive()
        counter.count += 1


async def _stream_receiver(ctl: Ctl, channel: qchan.Channel[Any], p: Params) -> None:
    receive = channel.receive
    with anyio.fail_after(p["timeout"]):
        for _ in range(p["warm_count"]):
            await receive()
        count = 0
        start, cpu = Clock(), time.process_time()
        while await receive() is not None:
            count += 1
        elapsed, cpu = Clock() - start, time.process_time() - cpu
    ctl.send("result", rate=count / elapsed, cpu_us=cpu / count * 1e6)


def q_remote(ctl: Ctl, p: Params) -> None:
    """Node B: looks up A's ``bench`` and runs one of the client loops below on it."""
    run_on_loop(p, _remote, ctl)


async def _remote(ctl: Ctl, p: Params) -> None:
    async with _node(p, "B", (p["address"],)) as node:
        channel = await node.lookup("bench@A", timeout=p["timeout"])
        with anyio.fail_after(p["timeout"]):
            result = await _CLIENTS[p["kind"]](channel, p)
        ctl.send("result", **result)
        await ctl.aexpect("stop", p["child_limit"])


_CHUNK = 64  # sends between two looks at the clock


async def _ping(channel: qchan.Channel[Any], p: Params) -> dict[str, Any]:
    send = channel.send
    i = 0
    end = Clock() + p["warmup"]
    while Clock() < end:
        for _ in range(_CHUNK):
            await send(i)
            i += 1
    count = 0
    start, cpu = Clock(), time.process_time()
    end = start + p["duration"]
    while True:
        for _ in range(_CHUNK):
            await send(i)
            i += 1
        count += _CHUNK
        now = Clock()
        if now >= end:
            cpu = time.process_time() - cpu
            return {"rate": count / (now - start), "cpu_us": cpu / count * 1e6}


async def _many(channel: qchan.Channel[Any], p: Params) -> dict[str, Any]:
    count = 0
    running = True

    async def sender() -> None:
        nonlocal count
        send = channel.send
        i = 0
        while running:
            await send(i)
            i += 1
            count += 1

    async with anyio.create_task_group() as tg:
        for _ in range(p["senders"]):
            tg.start_soon(sender)
        await anyio.sleep(p["warmup"])
        first, start, cpu = count, Clock(), time.process_time()
        await anyio.sleep(p["duration"])
        last, end, cpu = count, Clock(), time.process_time() - cpu
        running = False  # each sender ends after its current send
    return {"rate": (last - first) / (end - start), "cpu_us": cpu / (last - first) * 1e6}


async def _stream(channel: qchan.Channel[Any], p: Params) -> dict[str, Any]:
    send = channel.send
    total = p["warm_count"] + p["count"]
    start, cpu = Clock(), time.process_time()
    for i in range(total):
        await send(i)
    await send(None)
    cpu = time.process_time() - cpu
    return {"send_rate": total / (Clock() - start), "cpu_us": cpu / total * 1e6}


async def _latency(channel: qchan.Channel[Any], p: Params) -> dict[str, Any]:
    rate = p["rate"]
    period = 1.0 / rate
    warm, measured = int(rate * p["warmup"]), int(rate * p["latency_duration"])
    latencies: list[int] = []
    send, clock_ns, sleep = channel.send, time.perf_counter_ns, anyio.sleep
    due = Clock()
    started = 0.0
    for k in range(warm + measured):
        if k == warm:
            started = Clock()
        delay = due - Clock()
        if delay > 0:
            await sleep(delay)
        t0 = clock_ns()
        await send(k)
        if k >= warm:
            latencies.append(clock_ns() - t0)
        due += period
    return {"latencies": latencies, "achieved": measured / (Clock() - started)}


_CLIENTS: dict[str, Callable[[qchan.Channel[Any], Params], Awaitable[dict[str, Any]]]] = {
    "ping": _ping,
    "many": _many,
    "stream": _stream,
    "latency": _latency,
}


# --- memory roles ------------------------------------------------------------------------------

Mem = tuple[int, int]  # (tracemalloc's current bytes, RSS bytes)


class Meter:
    """Memory readings after a full collection; with ``detail``, tracemalloc snapshots too."""

    def __init__(self, p: Params) -> None:
        self.detail: int = p.get("detail", 0) if p["trace"] else 0
        self.snapshots: list[tracemalloc.Snapshot] = []

    def __call__(self) -> Mem:
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        reading = (traced, current_rss())
        if self.detail:
            self.snapshots.append(tracemalloc.take_snapshot())
        return reading

    def top(self, first: int, last: int, n: int) -> list[str]:
        """The source lines that allocated most between readings ``first`` and ``last``."""
        if not self.detail:
            return []
        stats = self.snapshots[last].compare_to(self.snapshots[first], "lineno")
        lines = []
        for stat in stats[: self.detail]:
            frame = stat.traceback[0]
            lines.append(
                f"{stat.size_diff / n:8,.0f} B {stat.count_diff / n:5.2f} blocks  "
                f"{frame.filename.rpartition('site-packages/')[2]}:{frame.lineno}"
            )
        return lines


def _start_tracing(p: Params) -> None:
    if p["trace"]:
        tracemalloc.start()


def q_mem_channels_home(ctl: Ctl, p: Params) -> None:
    """Node A: makes N channels, registers a name for each, sends them all to B."""
    _start_tracing(p)
    run_on_loop(p, _mem_channels_home, ctl)


async def _mem_channels_home(ctl: Ctl, p: Params) -> None:
    n, batch = p["channels"], p["batch"]
    mem = Meter(p)
    async with _node(p, "A") as node:
        handles: qchan.Channel[list[qchan.Channel[Any]]] = qchan.Channel(0)
        node.register("handles", handles)
        ctl.send("ready", address=node.address)
        await ctl.aexpect("go", p["timeout"])
        m0 = mem()
        channels: list[qchan.Channel[Any]] = [qchan.Channel(0) for _ in range(n)]
        m1 = mem()
        for i, channel in enumerate(channels):
            node.register(f"c{i}", channel)
        m2 = mem()
        with anyio.fail_after(p["timeout"]):
            for start in range(0, n, batch):
                await handles.send(channels[start : start + batch])
        m3 = mem()  # B has opened every channel: its OPENs came before its last TAKEN
        top = mem.top(0, 3, n)
        ctl.send("result", m0=m0, m1=m1, m2=m2, m3=m3, top=top)
        await ctl.aexpect("stop", p["child_limit"])


def q_mem_channels_remote(ctl: Ctl, p: Params) -> None:
    """Node B: receives A's channels and keeps the handles."""
    _start_tracing(p)
    run_on_loop(p, _mem_channels_remote, ctl)


async def _mem_channels_remote(ctl: Ctl, p: Params) -> None:
    mem = Meter(p)
    async with _node(p, "B", (p["address"],)) as node:
        handles = await node.lookup("handles@A", timeout=p["timeout"])
        m0 = mem()
        ctl.send("looked_up")
        kept: list[qchan.Channel[Any]] = []
        with anyio.fail_after(p["timeout"]):
            while len(kept) < p["channels"]:
                kept.extend(await handles.receive())
        m1 = mem()
        ctl.send("result", m0=m0, m1=m1, top=mem.top(0, 1, len(kept)))
        await ctl.aexpect("stop", p["child_limit"])


def q_mem_blocked_home(ctl: Ctl, p: Params) -> None:
    """Node A: hosts ``sink`` (capacity 0, no receiver) and measures while B's sends wait."""
    _start_tracing(p)
    run_on_loop(p, _mem_blocked_home, ctl)


async def _mem_blocked_home(ctl: Ctl, p: Params) -> None:
    n = p["senders"]
    mem = Meter(p)
    async with _node(p, "A") as node:
        sink: qchan.Channel[int] = qchan.Channel(0)
        node.register("sink", sink)
        ctl.send("ready", address=node.address)
        await ctl.aexpect("go", p["timeout"])
        m0 = mem()
        ctl.send("baseline")
        with anyio.fail_after(p["timeout"]):
            waiting, steady_since = -1, Clock()
            while True:  # all N, or (past qchan's backpressure limit) as many as will come
                now_waiting = sink.statistics().waiting_senders
                if now_waiting >= n:
                    break
                if now_waiting != waiting:
                    waiting, steady_since = now_waiting, Clock()
                elif waiting > 0 and Clock() - steady_since > 2.0:
                    break
                await anyio.sleep(0.02)
        m1 = mem()
        count = sink.statistics().waiting_senders
        ctl.send("result", m0=m0, m1=m1, count=count, top=mem.top(0, 1, max(count, 1)))
        await ctl.aexpect("stop", p["child_limit"])


def q_mem_blocked_remote(ctl: Ctl, p: Params) -> None:
    """Node B: N tasks blocked in ``send`` on a local channel, then N more on A's ``sink``."""
    _start_tracing(p)
    run_on_loop(p, _mem_blocked_remote, ctl)


class Spawner:
    """Many small tasks, made the cheapest native way: ``loop.create_task`` on asyncio, a trio
    nursery on trio (anyio's task groups add ~3 KB per task of their own)."""

    def __init__(self) -> None:
        self.asyncio = sniffio.current_async_library() == "asyncio"
        self.tasks: list[asyncio.Task[Any]] = []
        self.nursery: Any = None
        self._nursery_cm: Any = None

    async def __aenter__(self) -> Spawner:
        if not self.asyncio:
            import trio

            self._nursery_cm = trio.open_nursery()
            self.nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._nursery_cm is not None:
            self.nursery.cancel_scope.cancel()
            await self._nursery_cm.__aexit__(None, None, None)

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self.asyncio:
            self.tasks.append(asyncio.get_running_loop().create_task(fn(*args)))
        else:
            self.nursery.start_soon(fn, *args)


async def _forever() -> None:
    # The cheapest way a task can wait: a bare future (asyncio), a plain sleep (trio).
    if sniffio.current_async_library() == "asyncio":
        await asyncio.get_running_loop().create_future()
    else:
        import trio

        await trio.sleep_forever()


async def _mem_blocked_remote(ctl: Ctl, p: Params) -> None:
    # Three sets of N tasks, each kept until the end so that a later set cannot reuse the
    # memory of an earlier one (RSS would not see it): tasks blocked on nothing but the event
    # loop (the floor), tasks in a local send, tasks in a send to A.
    n = p["senders"]
    mem = Meter(p)
    async with _node(p, "B", (p["address"],)) as node:
        sink = await node.lookup("sink@A", timeout=p["timeout"])
        local: qchan.Channel[int] = qchan.Channel(0)
        async with Spawner() as tasks:
            m0 = mem()
            for _ in range(n):
                tasks.spawn(_forever)
            await anyio.sleep(0.1)
            m1 = mem()
            for i in range(n):
                tasks.spawn(local.send, i)
            with anyio.fail_after(p["timeout"]):
                while local.statistics().waiting_senders < n:  # noqa: ASYNC110 (polling)
                    await anyio.sleep(0.01)
            m2 = mem()
            ctl.send("looked_up")
            await ctl.aexpect("go", p["timeout"])
            m3 = mem()
            for i in range(n):
                tasks.spawn(sink.send, i)
            ctl.send("spawned")
            await ctl.aexpect("measure", p["timeout"])
            m4 = mem()
            ctl.send(
                "result",
                floor=(m0, m1),
                local=(m1, m2),
                remote=(m3, m4),
                tops=[mem.top(0, 1, n), mem.top(1, 2, n), mem.top(3, 4, n)],
            )
            await ctl.aexpect("stop", p["child_limit"])
            # Leaving cancels the tasks: each remote send withdraws at A (CANCEL, CANCELLED).


# --- the parent: runs pairs of processes, keeps the best round, prints the table --------------


@dataclass
class Line:
    row: str
    what: str
    ours: float
    peer: str
    theirs: float | None
    unit: str  # "/s", "us" or "B"
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.theirs is None or self.theirs == 0:
            return None
        return self.ours / self.theirs


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "us":
        return f"{value:,.0f} us"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.0f}/s"


_HEADER = (
    f"{'row':3} {'measure':47} {'qchan':>12}  {'comparison':28} {'figure':>12} "
    f"{'ratio':>6}  {'target':16} {'met':4}"
)


def _print_line(line: Line) -> None:
    ratio = "-" if line.ratio is None else f"{line.ratio:.2f}"
    met = "-" if line.met is None else ("yes" if line.met else "NO")
    print(
        f"{line.row:3} {line.what:47} {_figure(line.ours, line.unit):>12}  {line.peer:28} "
        f"{_figure(line.theirs, line.unit):>12} {ratio:>6}  {line.target:16} {met:4}",
        flush=True,
    )


def _note(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.timeout: float = args.timeout
        self.common: Params = {
            "cluster_key": bytes(qchan.ClusterKey.generate()),
            "loop": args.loop,
            "timeout": args.timeout,
            "warmup": args.warmup,
            "duration": args.duration,
            "busy_poll": args.busy_poll,
        }
        self.lines: list[Line] = []
        self.cpu: dict[str, tuple[float, float]] = {}
        self._last_channels: tuple[Params, Params] = ({}, {})
        self.notes: list[str] = []

    def emit(self, line: Line) -> None:
        self.lines.append(line)
        _print_line(line)

    def pair(
        self,
        tag: str,
        server: Role,
        server_params: Params,
        client: Role,
        client_params: Params,
        *,
        server_reports: bool = False,
        profile: bool = False,
    ) -> tuple[Params, Params]:
        """Run a server and a client process; their results (the server's only if it reports)."""
        prefix = f"{self.args.profile}-{tag}" if self.args.profile and profile else None
        with Pair(self.timeout, prefix, self.args.verbose) as pair:
            a = pair.start("A", server, {**self.common, **server_params}, profile=profile)
            ready = a.expect("ready", self.timeout)
            b = pair.start("B", client, {**self.common, **client_params, **ready}, profile=profile)
            theirs = b.expect("result", self.timeout)
            if server is q_home and server_params.get("kind") != "stream":
                a.send("report")  # (a qchan home reports its CPU time when asked)
                server_reports = True
            ours = a.expect("result", self.timeout) if server_reports else {}
            pair.finish()
        return ours, theirs

    def best_rates(
        self, row: str, systems: list[tuple[str, Role, Params, Role, Params, bool]], key: str
    ) -> dict[str, float]:
        """Each system's best rate over the rounds; systems alternate within a round."""
        best = dict.fromkeys((s[0] for s in systems), 0.0)
        for round_ in range(self.args.rounds):
            for name, server, sp, client, cp, reports in systems:
                is_qchan = name == "qchan"
                tag = f"row{row}-r{round_}"
                a, b = self.pair(
                    tag, server, sp, client, cp, server_reports=reports, profile=is_qchan
                )
                rate = float((a if reports else b)[key])
                if rate > best[name] and is_qchan:
                    self.cpu[row] = (a.get("cpu_us", 0.0), b.get("cpu_us", 0.0))
                best[name] = max(best[name], rate)
                _note(f"row {row} round {round_ + 1}: {name} {rate:,.0f}/s")
        if row in self.cpu:
            cpu_a, cpu_b = self.cpu[row]
            self.notes.append(
                f"row {row}: qchan CPU time per message in its best round: "
                f"A {cpu_a:.1f} us, B {cpu_b:.1f} us"
            )
        return best

    # --- rows ------------------------------------------------------------------------------

    def row1(self) -> None:
        home = {"kind": "ping", "capacity": 0}
        zmq_client = {"mode": "rate"}
        best = self.best_rates(
            "1",
            [
                ("qchan", q_home, home, q_remote, {"kind": "ping"}, False),
                ("Pyro5", _peers.pyro_server, {}, _peers.pyro_client, {}, False),
                ("REQ/REP", _peers.zmq_rep_server, {}, _peers.zmq_req_client, zmq_client, False),
            ],
            "rate",
        )
        ours = best["qchan"]
        what = "rendezvous ping-pong, round trips/s"
        pyro, zmq = best["Pyro5"], best["REQ/REP"]
        self.emit(Line("1", what, ours, "Pyro5 calls", pyro, "/s", ">= 1.5x", ours >= 1.5 * pyro))
        self.emit(Line("1", what, ours, "pyzmq REQ/REP", zmq, "/s", ">= 1.0x", ours >= zmq))

    def row2(self) -> None:
        senders = self.args.senders_many
        home = {"kind": "many", "capacity": 0, "receivers": senders}
        best = self.best_rates(
            "2",
            [
                ("qchan", q_home, home, q_remote, {"kind": "many", "senders": senders}, False),
                ("DEALER/ROUTER", _peers.zmq_router_server, {}, _peers.zmq_dealer_client,
                 {"inflight": self.args.inflight}, False),
            ],
            "rate",
        )  # fmt: skip
        ours, theirs = best["qchan"], best["DEALER/ROUTER"]
        self.emit(
            Line(
                "2",
                f"{senders} senders -> {senders} receivers, cap 0, msg/s",
                ours,
                f"DEALER/ROUTER {self.args.inflight} in flight",
                theirs,
                "/s",
                ">= 1.0x, >= 50k",
                ours >= theirs and ours >= 50_000,
            )
        )

    def row3(self) -> None:
        stream = {"warm_count": self.args.count // 10, "count": self.args.count}
        best = self.best_rates(
            "3",
            [
                ("qchan", q_home, {"kind": "stream", "capacity": 1024, **stream}, q_remote,
                 {"kind": "stream", **stream}, True),
                ("PUSH/PULL", _peers.zmq_pull_server, stream, _peers.zmq_push_client, stream, True),
            ],
            "rate",
        )  # fmt: skip
        ours, theirs = best["qchan"], best["PUSH/PULL"]
        self.emit(
            Line(
                "3",
                "stream into cap 1024, 1 sender, msg/s at recv",
                ours,
                "pyzmq PUSH/PULL (no acks)",
                theirs,
                "/s",
                ">= 150k",
                ours >= 150_000,
            )
        )

    def row4(self) -> None:
        rate = self.args.rate
        params = {"rate": rate, "latency_duration": self.args.latency_duration}
        samples: dict[str, list[int]] = {"qchan": [], "REQ/REP": []}
        achieved: dict[str, list[float]] = {"qchan": [], "REQ/REP": []}
        for round_ in range(self.args.rounds):
            for name, server, sp, client, cp in (
                ("qchan", q_home, {"kind": "ping", "capacity": 0}, q_remote,
                 {"kind": "latency", **params}),
                ("REQ/REP", _peers.zmq_rep_server, {}, _peers.zmq_req_client,
                 {"mode": "latency", **params}),
            ):  # fmt: skip
                _, result = self.pair(f"row4-r{round_}", server, sp, client, cp)
                samples[name] += result["latencies"]
                achieved[name].append(result["achieved"])
                _note(
                    f"row 4 round {round_ + 1}: {name} p50 "
                    f"{_percentile(result['latencies'], 0.5) / 1000:,.0f} us "
                    f"at {result['achieved']:,.0f}/s"
                )
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            ours = _percentile(samples["qchan"], q) / 1000
            theirs = _percentile(samples["REQ/REP"], q) / 1000
            what = f"rendezvous send latency {label} at {rate:,.0f}/s"
            self.emit(Line("4", what, ours, "pyzmq REQ/REP round trip", theirs, "us"))
        for name, rates in achieved.items():
            self.notes.append(
                f"row 4: {name} offered load achieved {min(rates):,.0f}-{max(rates):,.0f}/s; "
                f"{len(samples[name]):,} samples; p99.9 "
                f"{_percentile(samples[name], 0.999) / 1000:,.0f} us, max "
                f"{max(samples[name]) / 1000:,.0f} us"
            )

    def row5(self) -> None:
        n_chan, n_send = self.args.channels, self.args.senders
        for trace in (True, False):
            how = "tracemalloc" if trace else "RSS"
            index = 0 if trace else 1
            a, b = self._last_channels = self._mem_channels(trace)
            per = _per(a["m0"], a["m3"], n_chan, index)
            bare = _per(a["m0"], a["m1"], n_chan, index)
            self.emit(
                Line(
                    "5",
                    f"B per idle hosted channel ({how})",
                    per,
                    "bare local Channel(0)",
                    bare,
                    "B",
                    "<= 2 KB",
                    per <= 2048,
                )
            )
            self.notes.append(
                f"row 5 ({how}), per channel on A: Channel {bare:,.0f} B, register() "
                f"{_per(a['m1'], a['m2'], n_chan, index):,.0f} B, export to B "
                f"{_per(a['m2'], a['m3'], n_chan, index):,.0f} B; on B, per remote handle "
                f"received {_per(b['m0'], b['m1'], n_chan, index):,.0f} B"
            )
            a, b = self._mem_blocked(trace)
            count = max(a["count"], 1)
            on_b = _per(b["remote"][0], b["remote"][1], n_send, index)
            floor = _per(b["floor"][0], b["floor"][1], n_send, index)
            on_a = _per(a["m0"], a["m1"], count, index)
            self.emit(
                Line(
                    "5",
                    f"B per blocked remote sender, on B ({how})",
                    on_b,
                    "task on a bare future",
                    floor,
                    "B",
                    "<= 2 KB",
                    on_b <= 2048,
                )
            )
            self.emit(
                Line(
                    "5",
                    f"B per blocked remote sender, at A ({how})",
                    on_a,
                    "-",
                    None,
                    "B",
                    "<= 2 KB",
                    on_a <= 2048,
                )
            )
            local = _per(b["local"][0], b["local"][1], n_send, index)
            self.notes.append(
                f"row 5 ({how}), per task on B: blocked on a bare future {floor:,.0f} B, in a "
                f"local send {local:,.0f} B, in a remote send {on_b:,.0f} B "
                "(tasks made with loop.create_task on asyncio, a bare nursery on trio)"
            )
            if count != n_send:
                self.notes.append(f"row 5: only {count:,} of {n_send:,} sends reached A")
            if trace and self.args.mem_detail:
                self._tops("idle hosted channel, at A", self._last_channels[0]["top"])
                self._tops("remote handle received, on B", self._last_channels[1]["top"])
                self._tops("task on a bare future, on B", b["tops"][0])
                self._tops("task blocked in a local send, on B", b["tops"][1])
                self._tops("blocked remote sender, on B", b["tops"][2])
                self._tops("blocked remote sender, at A", a["top"])

    def _tops(self, what: str, lines: list[str]) -> None:
        self.notes.append(f"row 5 tracemalloc, top allocations per {what}:")
        self.notes.extend(f"    {line}" for line in lines)

    def _mem_channels(self, trace: bool) -> tuple[Params, Params]:
        params = {
            "trace": trace,
            "patient": True,
            "channels": self.args.channels,
            "batch": 100,
            "detail": self.args.mem_detail,
        }
        with Pair(self.timeout, verbose=self.args.verbose) as pair:
            a = pair.start("A", q_mem_channels_home, {**self.common, **params})
            ready = a.expect("ready", self.timeout)
            b = pair.start("B", q_mem_channels_remote, {**self.common, **params, **ready})
            b.expect("looked_up", self.timeout)
            a.send("go")
            ours = a.expect("result", self.timeout)
            theirs = b.expect("result", self.timeout)
            pair.finish()
        return ours, theirs

    def _mem_blocked(self, trace: bool) -> tuple[Params, Params]:
        params = {
            "trace": trace,
            "patient": True,
            "senders": self.args.senders,
            "detail": self.args.mem_detail,
        }
        with Pair(self.timeout, verbose=self.args.verbose) as pair:
            a = pair.start("A", q_mem_blocked_home, {**self.common, **params})
            ready = a.expect("ready", self.timeout)
            b = pair.start("B", q_mem_blocked_remote, {**self.common, **params, **ready})
            b.expect("looked_up", self.timeout)
            a.send("go")
            a.expect("baseline", self.timeout)
            b.send("go")
            b.expect("spawned", self.timeout)
            at_a = a.expect("result", self.timeout)
            b.send("measure")
            on_b = b.expect("result", self.timeout)
            pair.finish()
        return at_a, on_b


def _per(before: Mem, after: Mem, n: int, index: int) -> float:
    return (after[index] - before[index]) / n


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _rows(text: str) -> list[int]:
    rows = [int(part) for part in text.split(",") if part.strip()]
    if not rows or any(row not in range(1, 6) for row in rows):
        raise argparse.ArgumentTypeError("rows are numbers from 1 to 5, e.g. 1,2,3")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=_rows, default=[1, 2, 3, 4, 5], help="e.g. 1,2,3")
    parser.add_argument("--loop", choices=("uvloop", "asyncio", "trio"), default="uvloop")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds measured per round")
    parser.add_argument(
        "--busy-poll",
        type=float,
        default=qchan.node.DEFAULT_BUSY_POLL,
        help="qchan nodes' busy_poll in seconds (0: off)",
    )
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per system (best kept)")
    parser.add_argument("--count", type=int, default=200_000, help="row 3: values streamed")
    parser.add_argument("--senders-many", type=int, default=64, help="row 2: sender tasks")
    parser.add_argument("--inflight", type=int, default=32, help="row 2: DEALER requests")
    parser.add_argument("--rate", type=float, default=2000.0, help="row 4: sends per second")
    parser.add_argument("--latency-duration", type=float, default=2.0, help="row 4: seconds")
    parser.add_argument("--channels", type=int, default=10_000, help="row 5: hosted channels")
    parser.add_argument("--senders", type=int, default=10_000, help="row 5: blocked senders")
    parser.add_argument(
        "--mem-detail",
        type=int,
        default=0,
        metavar="N",
        help="row 5: also print the N source lines that allocate most, per unit",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print each child's pid and role (to attach tools)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="limit on any one wait")
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy every qchan process of rows 1-3 into PREFIX-rowN-rR-{A,B}.txt (raw stacks)",
    )
    args = parser.parse_args(argv)

    bench = Bench(args)
    print(
        f"qchan remote benchmarks: two processes over loopback, qchan on {args.loop}, "
        f"best of {args.rounds} round(s) of {args.duration} s after {args.warmup} s warm-up"
    )
    print(_HEADER)
    runners = {1: bench.row1, 2: bench.row2, 3: bench.row3, 4: bench.row4, 5: bench.row5}
    try:
        for row in args.rows:
            runners[row]()
    except ChildFailed as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    for note in bench.notes:
        print(f"note: {note}")
    judged = [line for line in bench.lines if line.met is not None]
    missed = [line for line in judged if not line.met]
    print(f"targets met: {len(judged) - len(missed)} of {len(judged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
