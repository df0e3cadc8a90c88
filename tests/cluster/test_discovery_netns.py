"""Discovery between hosts: one node process per network namespace, found by mDNS alone.

Each node listens on 0.0.0.0:7400 in its own namespace (so it advertises its eth0 address,
10.77.0.N) with no peers given. Needs root (see tests/cluster/netns.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

import qchan
from tests.cluster.netns import Lab, require_netns

pytestmark = pytest.mark.netns

HEARTBEAT = 0.2
PEER_TIMEOUT = 1.0

NODE = """
import json, sys, time, anyio, qchan

async def main():
    cluster_key = qchan.ClusterKey.from_bytes(bytes.fromhex(sys.argv[1]))
    async with qchan.Node(
        cluster_key=cluster_key, name=sys.argv[2], listen="0.0.0.0:7400", discovery=True,
        heartbeat_interval=float(sys.argv[4]), peer_timeout=float(sys.argv[5]),
    ) as node:
        print(json.dumps({"key": node.public_key.hex()}), flush=True)
        last = None
        while True:
            peers = sorted([p.name, p.public_key.hex(), p.connected] for p in node.peers())
            if peers != last:
                print(json.dumps({"at": time.monotonic(), "peers": peers}), flush=True)
                last = peers
            await anyio.sleep(0.02)

anyio.run(main, backend=sys.argv[3])
"""


class NodeProcess:
    """A node in a namespace, and the latest peers it reported (read by a thread)."""

    def __init__(self, process: subprocess.Popen[str], name: str) -> None:
        self.process = process
        self.name = name
        self.key = ""
        self.connected: set[str] = set()  # names of connected peers
        self.known: set[str] = set()  # public keys (hex) of every peer it lists
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            report = json.loads(line)
            with self._changed:
                self.lines.append(line)
                if "key" in report:
                    self.key = report["key"]
                else:
                    self.connected = {name for name, _, up in report["peers"] if up}
                    self.known |= {key for _, key, _ in report["peers"]}
                self._changed.notify_all()

    def wait(self, condition: Callable[[NodeProcess], bool], within: float, what: str) -> float:
        """Wait until ``condition(self)``; return when it became true (time.monotonic)."""
        deadline = time.monotonic() + within
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.name}: not {what} within {within} s "
                        f"(exit {self.process.poll()}); it said:\n{''.join(self.lines[-5:])}"
                    )
                self._changed.wait(min(left, 0.1))
        return time.monotonic()


def start(lab: Lab, index: int, cluster_key: qchan.ClusterKey, backend: str) -> NodeProcess:
    name = f"host{index + 1}"
    argv = [sys.executable, "-c", NODE, bytes(cluster_key).hex(), name, backend,
            str(HEARTBEAT), str(PEER_TIMEOUT)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = lab.hosts[index].run(argv, stdout=subprocess.PIPE, text=True, env=env)
    return NodeProcess(process, name)


def test_hosts_find_each_other_by_mdns_and_drop_an_unplugged_one() -> None:
    require_netns()
    ck, other = qchan.ClusterKey.generate(), qchan.ClusterKey.generate()
    with Lab(4) as lab:
        backends = ["asyncio", "trio", "asyncio", "trio"]
        nodes = [start(lab, i, ck, backends[i]) for i in range(3)]
        stranger = start(lab, 3, other, backends[3])  # same network, another cluster
        for node in [*nodes, stranger]:
            node.wait(lambda n: bool(n.key), within=10.0, what="started")
        ready = time.monotonic()
        names = {node.name for node in nodes}
        for node in nodes:
            node.wait(
                lambda n: n.connected == names - {n.name},
                within=5.0,
                what="connected to the two others",
            )
        converged = time.monotonic() - ready
        assert converged < 5.0

        time.sleep(1.0)  # time for a wrong admission to happen
        for node in nodes:
            assert stranger.key not in node.known, f"{node.name} lists the other cluster's node"
            assert node.connected == names - {node.name}
        assert stranger.known == set()

        # Unplug host3: the others notice within the heartbeat bound (peer_timeout).
        lab.hosts[2].link_down()
        unplugged = time.monotonic()
        bound = PEER_TIMEOUT + 1.0  # + scheduling slack and one heartbeat round
        for node in nodes[:2]:
            seen = node.wait(
                lambda n: "host3" not in n.connected,
                within=bound,
                what="rid of host3",
            )
            assert seen - unplugged <= bound
        # Plugged back in, it is dialled again (its record has not expired).
        lab.hosts[2].link_up()
        for node in nodes:
            node.wait(
                lambda n: n.connected == names - {n.name},
                within=8.0,
                what="reconnected",
            )


LISTEN = """
import socket
with socket.create_server(("10.77.0.2", 9000)) as server:
    print("listening", flush=True)
    server.accept()
"""
CONNECT = "import socket; socket.create_connection(('10.77.0.2', 9000), timeout=2).close()"


def test_the_lab_connects_its_hosts_and_leaves_nothing_behind() -> None:
    require_netns()
    with Lab(2) as lab:
        prefix = lab.prefix
        probe = lab.hosts[0].run(["ip", "-br", "addr"], stdout=subprocess.PIPE, text=True)
        out, _ = probe.communicate(timeout=5)
        assert "10.77.0.1/24" in out
        server = lab.hosts[1].run([sys.executable, "-c", LISTEN], stdout=subprocess.PIPE)
        assert server.stdout is not None
        assert server.stdout.readline() == b"listening\n"
        client = lab.hosts[0].run([sys.executable, "-c", CONNECT])
        assert client.wait(timeout=5) == 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed
    # What a crashed run left behind (its pid is gone) goes with the next lab.
    stale = "qchan-4194999-abcd-h1"  # above any pid_max: never alive
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Lab(1):
            pass
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert stale not in listed
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
