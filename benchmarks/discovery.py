"""Discovery: how fast a cluster forms over mDNS, and how fast it notices a node is gone.

Every node is a separate process running ``qchan.Node(discovery=True)`` with no peers given;
each reports the peers it sees connected whenever that changes (polled every 5 ms, stamped
with time.monotonic(), which all processes share). Two settings:

- loopback: nodes listen on 127.0.0.1:0, mDNS on the loopback interface; the failure is a
  SIGKILL of one node (its sockets close, so peers see the connection end);
- netns (root only): one network namespace per node on a bridge (tests/cluster/netns.py),
  nodes listen on 0.0.0.0:7400; the failure is that host's link going down (nothing is sent,
  so only the heartbeat, ``peer_timeout``, can tell).

Columns: *spawn->all* is from starting the processes until every node is connected to every
other (Python start-up and imports included); *ready->all* from the moment the last node was
running (its ``async with Node`` entered); *detect* from the failure until every other node
shows the lost one as disconnected. Median of ``--runs`` runs, with min-max.

    .venv/bin/python benchmarks/discovery.py [--sizes 3,10] [--runs 3] [--settings loopback,netns]
        [--heartbeat 1.0] [--peer-timeout 3.0] [--loop asyncio|trio|uvloop]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0  # s: a run that takes longer than this has failed


def child(argv: list[str]) -> None:
    """One node: report its connected peers (names) on every change."""
    import anyio

    import qchan

    ck_hex, name, listen, loop, heartbeat, peer_timeout = argv

    async def main() -> None:
        async with qchan.Node(
            cluster_key=qchan.ClusterKey.from_bytes(bytes.fromhex(ck_hex)),
            name=name,
            listen=listen,
            discovery=True,
            heartbeat_interval=float(heartbeat),
            peer_timeout=float(peer_timeout),
        ) as node:
            print(json.dumps({"ready": time.monotonic()}), flush=True)
            last: list[str] | None = None
            while True:
                connected = sorted(p.name for p in node.peers() if p.connected)
                if connected != last:
                    print(json.dumps({"at": time.monotonic(), "peers": connected}), flush=True)
                    last = connected
                await anyio.sleep(0.005)

    if loop == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=loop)


class Proc:
    """A node process and what it reported."""

    def __init__(self, process: subprocess.Popen[str], name: str) -> None:
        self.process = process
        self.name = name
        self.ready = 0.0
        self.reports: list[tuple[float, frozenset[str]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "ready" in report:
                    self.ready = report["ready"]
                else:
                    self.reports.append((report["at"], frozenset(report["peers"])))

    def first(self, test: Callable[[frozenset[str]], bool], after: float = 0.0) -> float | None:
        """When it first reported a set of peers passing ``test`` (at or after ``after``)."""
        with self._lock:
            reports = list(self.reports)
        for at, peers in reports:
            if at >= after and test(peers):
                return at
        if reports and reports[-1][0] < after and test(reports[-1][1]):
            return after  # already so when ``after`` came
        return None


def until(condition: Callable[[], bool], procs: list[Proc], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        dead = [p.name for p in procs if p.process.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: {', '.join(dead)} exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {WAIT} s")
        time.sleep(0.01)


def run_once(size: int, setting: str, options: argparse.Namespace) -> tuple[float, float, float]:
    import qchan

    ck = bytes(qchan.ClusterKey.generate()).hex()
    names = [f"n{i}" for i in range(size)]
    lab: Any = None
    procs: list[Proc] = []
    try:
        if setting == "netns":
            from tests.cluster.netns import Lab

            lab = Lab(size).__enter__()
        start = time.monotonic()
        for i, name in enumerate(names):
            listen = "0.0.0.0:7400" if lab else "127.0.0.1:0"
            argv = [sys.executable, __file__, "--child", ck, name, listen, options.loop,
                    str(options.heartbeat), str(options.peer_timeout)]  # fmt: skip
            popen: dict[str, Any] = {"stdout": subprocess.PIPE, "text": True}
            process = lab.hosts[i].run(argv, **popen) if lab else subprocess.Popen(argv, **popen)
            procs.append(Proc(process, name))

        def complete(proc: Proc) -> Callable[[frozenset[str]], bool]:
            return lambda peers: peers == frozenset(names) - {proc.name}

        until(lambda: all(p.first(complete(p)) for p in procs), procs, "convergence")
        converged = max(p.first(complete(p)) or 0.0 for p in procs)
        ready = max(p.ready for p in procs)

        victim, others = procs[-1], procs[:-1]
        failed = time.monotonic()
        if lab:
            lab.hosts[size - 1].link_down()
        else:
            victim.process.send_signal(signal.SIGKILL)

        def gone(peers: frozenset[str]) -> bool:
            return victim.name not in peers

        until(lambda: all(p.first(gone, failed) for p in others), others, "detection")
        detected = max(p.first(gone, failed) or 0.0 for p in others)
        return converged - start, converged - ready, detected - failed
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.kill()
            proc.process.wait()
            if proc.process.stdout is not None:
                proc.process.stdout.close()
        if lab is not None:
            lab.close()


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    if len(ms) == 1:
        return f"{ms[0]:7.0f} ms"
    return f"{statistics.median(ms):7.0f} ms ({min(ms):.0f}-{max(ms):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="3,10")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settings", default="loopback,netns")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--peer-timeout", type=float, default=3.0)
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "trio", "uvloop"])
    options = parser.parse_args()
    settings = options.settings.split(",")
    if "netns" in settings and os.geteuid() != 0:
        print("netns: skipped (needs root)")
        settings.remove("netns")
    sys.path.insert(0, str(ROOT))
    print(
        f"heartbeat {options.heartbeat} s, peer_timeout {options.peer_timeout} s, "
        f"loop {options.loop}, {options.runs} runs each; median (min-max)\n"
    )
    header = (
        f"{'setting':<9} {'nodes':>5}  {'spawn->all':<22} {'ready->all':<22} {'failure':<9} detect"
    )
    print(header)
    print("-" * len(header))
    for setting in settings:
        for size in (int(s) for s in options.sizes.split(",")):
            results = [run_once(size, setting, options) for _ in range(options.runs)]
            spawn, ready, detect = (list(column) for column in zip(*results, strict=True))
            failure = "link down" if setting == "netns" else "SIGKILL"
            print(
                f"{setting:<9} {size:>5}  {summary(spawn):<22} {summary(ready):<22} "
                f"{failure:<9} {summary(detect)}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
