"""Load, bigger than CI's tests/load: every node in a process of its own, figures printed.

    .venv/bin/python benchmarks/load.py [--scenarios senders,hosted,mesh,churn]
        [--loop asyncio|uvloop|trio] [--senders N] [--channels N] [--nodes N] [--cycles N]
        [--timeout S] [--verbose]

Scenarios (each reports, per process: file descriptors, tasks and RSS before and after, and
whether the node's tables came back to where they were):

  senders  node B starts N tasks sending on node A's capacity-0 channel, with no receiver;
           once all are blocked, A receives them all. Time to block and to release; bytes
           per blocked sender at A (home) and at B (client).
  hosted   node A makes N channels and sends them, 100 handles a message, to node B, which
           keeps them; then B drops them and A its channels. Bytes per hosted exported
           channel at A, per held remote handle at B; export and release times.
  mesh     N nodes (processes), fully connected through ``peers=``, two channels each; every
           node looks up a channel of every other node and sends to it; then all stop.
           Mesh-up time, lookups+sends across all pairs, fds and tasks left in each process.
  churn    node B connects to node A, sends and receives once on A's buffered channel and
           closes the link, N times. Setups per second; fds, tasks and RSS of both.

Each node runs with ``peer_timeout=30`` (a process busy with 10,000 tasks must not be taken
for a lost peer; this measures leaks, not failure detection).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from _procs import ChildFailed, Ctl, Pair, current_rss, run_on_loop

import qchan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.load._helpers import fd_count, tables, task_count

Params = dict[str, Any]
Clock = time.perf_counter


def _node(p: Params, name: str, peers: list[str] | None = None) -> qchan.Node:
    return qchan.Node(
        cluster_key=qchan.ClusterKey.from_bytes(p["cluster_key"]),
        name=name,
        peers=peers or [],
        heartbeat_interval=5.0,
        peer_timeout=30.0,
    )


def _state(node: qchan.Node | None = None) -> dict[str, Any]:
    gc.collect()
    state: dict[str, Any] = {"fds": fd_count(), "tasks": task_count(), "rss": current_rss()}
    if node is not None:
        state["tables"] = tables(node)
    return state


async def _until(condition: Callable[[], object], within: float) -> bool:
    with anyio.move_on_after(within):
        while not condition():  # noqa: ASYNC110 - callbacks change what is polled
            await anyio.sleep(0.01)
        return True
    return False


async def _tables_back(node: qchan.Node, baseline: dict[str, int], within: float = 60) -> bool:
    back = await _until(lambda: tables(node) == baseline, within)
    await anyio.sleep(0.2)  # (closes and frames in flight land)
    return back


# --- senders ----------------------------------------------------------------------------------


def senders_home(ctl: Ctl, p: Params) -> None:
    run_on_loop(p, _senders_home, ctl)


async def _senders_home(ctl: Ctl, p: Params) -> None:
    async with _node(p, "A") as node:
        channel: qchan.Channel[int] = qchan.Channel(0)
        node.register("rendezvous", channel)
        state = channel._endpoint
        ctl.send("ready", address=node.address)
        await ctl.aexpect("go", p["timeout"])
        before = _state(node)
        started = Clock()
        await _until(lambda: state.statistics().waiting_senders >= p["n"], 600)
        blocked = _state(node)
        ctl.send("blocked", seconds=Clock() - started, state=blocked, before=before)
        await ctl.aexpect("release", p["timeout"])
        started = Clock()
        for _ in range(p["n"]):
            await channel.receive()
        released = Clock() - started
        back = await _tables_back(node, before["tables"])
        ctl.send("released", seconds=released, back=back, after=_state(node))
        await ctl.aexpect("stop", p["timeout"])


def senders_client(ctl: Ctl, p: Params) -> None:
    run_on_loop(p, _senders_client, ctl)


async def _senders_client(ctl: Ctl, p: Params) -> None:
    async with _node(p, "B", [p["address"]]) as node:
        remote = await node.lookup("rendezvous", timeout=30)
        before = _state(node)
        ctl.send("looked_up")
        await ctl.aexpect("go", p["timeout"])
        async with anyio.create_task_group() as tg:
            for value in range(p["n"]):
                tg.start_soon(remote.send, value)
            await _until(lambda: tables(node)["ops"] >= p["n"], 600)
            ctl.send("blocked", state=_state(node), before=before)
        back = await _tables_back(node, before["tables"])
        ctl.send("done", back=back, after=_state(node))
        await ctl.aexpect("stop", p["timeout"])


def _senders(args: argparse.Namespace, p: Params) -> list[str]:
    n = args.senders
    with Pair(args.timeout, verbose=args.verbose) as pair:
        home = pair.start("A", senders_home, {**p, "n": n})
        address = home.expect("ready", args.timeout)["address"]
        client = pair.start("B", senders_client, {**p, "n": n, "address": address})
        client.expect("looked_up", args.timeout)
        home.send("go")
        client.send("go")
        at_home = home.expect("blocked", args.timeout * 4)
        at_client = client.expect("blocked", args.timeout)
        home.send("release")
        released = home.expect("released", args.timeout * 4)
        done = client.expect("done", args.timeout * 4)
        pair.finish()
    home_bytes = (at_home["state"]["rss"] - at_home["before"]["rss"]) / n
    client_bytes = (at_client["state"]["rss"] - at_client["before"]["rss"]) / n
    return [
        f"{n} blocked remote senders ({p['loop']}):",
        f"  all blocked in {at_home['seconds']:.2f} s, all released in {released['seconds']:.2f} s",
        f"  RSS per blocked sender: {home_bytes:,.0f} B at the home, "
        f"{client_bytes:,.0f} B at the client",
        _leftovers("home", at_home["before"], released["after"], released["back"]),
        _leftovers("client", at_client["before"], done["after"], done["back"]),
    ]


def _leftovers(who: str, before: dict[str, Any], after: dict[str, Any], back: bool) -> str:
    return (
        f"  {who}: fds {before['fds']} -> {after['fds']}, tasks {before['tasks']} -> "
        f"{after['tasks']}, RSS {(after['rss'] - before['rss']) / 2**20:+.1f} MB, "
        f"tables {'back to baseline' if back else 'NOT back: ' + str(after.get('tables'))}"
    )


# --- hosted -----------------------------------------------------------------------------------


def hosted_home(ctl: Ctl, p: Params) -> None:
    run_on_loop(p, _hosted_home, ctl)


async def _hosted_home(ctl: Ctl, p: Params) -> None:
    n = p["n"]
    async with _node(p, "A") as node:
        ctl.send("ready", address=node.address)
        inbox = await node.lookup("inbox", timeout=30)
        ctl.send("looked_up")
        await ctl.aexpect("go", p["timeout"])
        before = _state(node)
        hosted: list[qchan.Channel[int]] = [qchan.Channel(1) for _ in range(n)]
        created = _state()
        started = Clock()
        for first in range(0, n, 100):
            await inbox.send(hosted[first : first + 100])
        await _until(lambda: tables(node)["grants"] >= before["tables"]["grants"] + n, 600)
        exported = _state(node)
        ctl.send(
            "exported", seconds=Clock() - started, before=before, created=created, state=exported
        )
        await ctl.aexpect("dropped", p["timeout"] * 4)
        started = Clock()
        await _until(lambda: tables(node)["exports"] <= before["tables"]["exports"], 600)
        released = Clock() - started
        del hosted
        back = await _tables_back(node, before["tables"])
        ctl.send("released", seconds=released, back=back, after=_state(node))
        await ctl.aexpect("stop", p["timeout"])


def hosted_holder(ctl: Ctl, p: Params) -> None:
    run_on_loop(p, _hosted_holder, ctl)


async def _hosted_holder(ctl: Ctl, p: Params) -> None:
    async with _node(p, "B", [p["address"]]) as node:
        # rendezvous: each message confirmed (credited sends stay with the sender until then)
        inbox: qchan.Channel[list[Any]] = qchan.Channel(0)
        node.register("inbox", inbox)
        await ctl.aexpect("baseline", p["timeout"])
        before = _state(node)
        ctl.send("baseline")
        held = [await inbox.receive() for _ in range(p["n"] // 100)]
        await _until(lambda: tables(node)["endpoints"] >= p["n"], 600)
        ctl.send("holding", state=_state(node), before=before)
        await ctl.aexpect("drop", p["timeout"])
        del held
        gc.collect()
        await _until(lambda: not tables(node)["endpoints"], 600)
        ctl.send("dropped")
        back = await _tables_back(node, before["tables"])
        ctl.send("done", back=back, after=_state(node))
        await ctl.aexpect("stop", p["timeout"])


def _hosted(args: argparse.Namespace, p: Params) -> list[str]:
    n = args.channels
    with Pair(args.timeout, verbose=args.verbose) as pair:
        home = pair.start("A", hosted_home, {**p, "n": n})
        address = home.expect("ready", args.timeout)["address"]
        holder = pair.start("B", hosted_holder, {**p, "n": n, "address": address})
        home.expect("looked_up", args.timeout)
        holder.send("baseline")
        holder.expect("baseline", args.timeout)
        home.send("go")
        exported = home.expect("exported", args.timeout * 4)
        holding = holder.expect("holding", args.timeout * 4)
        holder.send("drop")
        holder.expect("dropped", args.timeout * 4)
        home.send("dropped")
        released = home.expect("released", args.timeout * 4)
        done = holder.expect("done", args.timeout * 4)
        pair.finish()
    channel_bytes = (exported["created"]["rss"] - exported["before"]["rss"]) / n
    export_bytes = (exported["state"]["rss"] - exported["created"]["rss"]) / n
    handle_bytes = (holding["state"]["rss"] - holding["before"]["rss"]) / n
    return [
        f"{n} hosted channels exported to a peer ({p['loop']}):",
        f"  exported in {exported['seconds']:.2f} s, released in {released['seconds']:.2f} s",
        f"  RSS per channel at the home: {channel_bytes:,.0f} B the channel itself, "
        f"{export_bytes:,.0f} B more once exported; per remote handle at the holder: "
        f"{handle_bytes:,.0f} B",
        _leftovers("home", exported["before"], released["after"], released["back"]),
        _leftovers("holder", holding["before"], done["after"], done["back"]),
    ]


# --- mesh -------------------------------------------------------------------------------------


def mesh_node(ctl: Ctl, p: Params) -> None:
    run_on_loop(p, _mesh_node, ctl)


async def _mesh_node(ctl: Ctl, p: Params) -> None:
    index, count = p["index"], p["count"]
    before = _state()
    async with _node(p, f"n{index}", p["peers"]) as node:
        ctl.send("listening", address=node.address)
        hosted = [qchan.Channel[Any](0), qchan.Channel[Any](math.inf)]
        for j, channel in enumerate(hosted):
            node.register(f"c{j}", channel)
        started = Clock()
        await _until(lambda: sum(peer.connected for peer in node.peers()) == count - 1, 120)
        meshed = Clock() - started
        ctl.send("meshed", seconds=meshed)
        await ctl.aexpect("talk", p["timeout"])
        expected = [
            p["rounds"] * sum(1 for i in range(count) if i != index and i % 2 == j) for j in (0, 1)
        ]
        received = [0, 0]

        async def receive(j: int) -> None:
            for _ in range(expected[j]):
                await hosted[j].receive()
                received[j] += 1

        async def talk() -> None:
            for other in range(count):
                if other != index:
                    target = await node.lookup(f"c{index % 2}@n{other}", timeout=60)
                    for _ in range(p["rounds"]):
                        await target.send(index)

        started = Clock()
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive, 0)
            tg.start_soon(receive, 1)
            tg.start_soon(talk)
        ctl.send("talked", seconds=Clock() - started, received=sum(received))
        await ctl.aexpect("stop", p["timeout"] * 4)
    await anyio.sleep(0.2)
    ctl.send("stopped", before=before, after=_state())


def _mesh(args: argparse.Namespace, p: Params) -> list[str]:
    count, rounds = args.nodes, 10
    with Pair(args.timeout * 2, verbose=args.verbose) as pair:
        children: list[Any] = []
        addresses: list[str] = []
        started = Clock()
        for index in range(count):
            params = {**p, "index": index, "count": count, "rounds": rounds, "peers": addresses}
            child = pair.start(f"n{index}", mesh_node, params)
            addresses = [*addresses, child.expect("listening", args.timeout)["address"]]
            children.append(child)
        meshed = max(child.expect("meshed", args.timeout * 2)["seconds"] for child in children)
        meshed_all = Clock() - started
        for child in children:
            child.send("talk")
        talked = [child.expect("talked", args.timeout * 4) for child in children]
        for child in reversed(children):
            child.send("stop")
        stopped = [child.expect("stopped", args.timeout * 2) for child in children]
        for child in children:
            child.expect("exit", args.timeout)
    messages = sum(t["received"] for t in talked)
    slowest = max(t["seconds"] for t in talked)
    fds = sum(s["after"]["fds"] - s["before"]["fds"] for s in stopped)
    tasks = sum(s["after"]["tasks"] - s["before"]["tasks"] for s in stopped)
    return [
        f"{count} nodes, one process each, fully connected ({p['loop']}):",
        f"  all started and linked in {meshed_all:.2f} s (the last link up {meshed:.2f} s after "
        "its node started)",
        f"  {count * (count - 1)} lookups and {messages} sends across all pairs in {slowest:.2f} s",
        f"  after every node stopped: {fds:+d} fds, {tasks:+d} tasks over all processes",
    ]


# --- churn ------------------------------------------------------------------------------------


def churn_server(ctl: Ctl, p: Params) -> None:
    run_on_loop(p, _churn_server, ctl)


async def _churn_server(ctl: Ctl, p: Params) -> None:
    async with _node(p, "server") as node:
        box: qchan.Channel[int] = qchan.Channel(1)
        node.register("box", box)
        ctl.send("ready", address=node.address)
        await ctl.aexpect("baseline", p["timeout"])
        before = _state(node)
        ctl.send("baseline")
        await ctl.aexpect("done", p["timeout"] * 10)
        back = await _tables_back(node, before["tables"])
        ctl.send("after", before=before, after=_state(node), back=back)
        await ctl.aexpect("stop", p["timeout"])


def churn_client(ctl: Ctl, p: Params) -> None:
    run_on_loop(p, _churn_client, ctl)


async def _churn_client(ctl: Ctl, p: Params) -> None:
    async with _node(p, "client") as node:
        info = await node.connect(p["address"])
        remote = await node.lookup("box@server", timeout=30)
        peer = node._peers[info.public_key]

        async def cycle(value: int) -> None:
            if not peer.connected:
                await node.connect(p["address"])
            await remote.send(value)
            await remote.receive()
            session = peer.session
            assert session is not None
            session.link.close()
            await session.link.wait_closed()

        for value in range(100):  # warm up
            await cycle(value)
        ctl.send("warm")
        await ctl.aexpect("go", p["timeout"])
        before = _state(node)
        started = Clock()
        for value in range(p["n"]):
            await cycle(value)
        elapsed = Clock() - started
        back = await _tables_back(node, before["tables"])
        ctl.send("done", seconds=elapsed, before=before, after=_state(node), back=back)
        await ctl.aexpect("stop", p["timeout"])


def _churn(args: argparse.Namespace, p: Params) -> list[str]:
    n = args.cycles
    with Pair(args.timeout, verbose=args.verbose) as pair:
        server = pair.start("server", churn_server, p)
        address = server.expect("ready", args.timeout)["address"]
        client = pair.start("client", churn_client, {**p, "n": n, "address": address})
        client.expect("warm", args.timeout * 2)
        server.send("baseline")
        server.expect("baseline", args.timeout)
        client.send("go")
        done = client.expect("done", args.timeout * 10)
        server.send("done")
        at_server = server.expect("after", args.timeout * 2)
        pair.finish()
    return [
        f"{n} connection setups and teardowns ({p['loop']}):",
        f"  {n / done['seconds']:,.0f} setups per second (handshake, a credited send, a "
        "remote receive, close)",
        _leftovers("server", at_server["before"], at_server["after"], at_server["back"]),
        _leftovers("client", done["before"], done["after"], done["back"]),
    ]


SCENARIOS: dict[str, Callable[[argparse.Namespace, Params], list[str]]] = {
    "senders": _senders,
    "hosted": _hosted,
    "mesh": _mesh,
    "churn": _churn,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument("--senders", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=5_000)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    params: Params = {
        "loop": args.loop,
        "cluster_key": bytes(qchan.ClusterKey.generate()),
        "timeout": args.timeout,
    }
    failed = False
    for name in args.scenarios.split(","):
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}: choose among {', '.join(SCENARIOS)}")
        try:
            lines = SCENARIOS[name](args, params)
        except ChildFailed as exc:
            lines, failed = [f"{name}: FAILED\n{exc}"], True
        print("\n".join(lines), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
