"""The chaos runner: a lab of node processes, faults at random times, a clean shutdown, a check.

:func:`run` does it all and returns a :class:`ChaosResult`:

1. A :class:`~tests.cluster.netns.Lab` of ``nodes + 1`` hosts on one bridge: one node process
   per host (:mod:`tests.chaos.driver`, listening on ``0.0.0.0:7400``), and the fault proxy
   (:mod:`tests.chaos.proxy`) on the last. Node ``i`` dials every node ``j > i``; for the pairs
   (0, 1), (2, 3) ... it dials through the proxy.
2. Warm-up, then the fault period: faults start at random times (exponential gaps, at most
   ``max_concurrent`` at once, one per target at a time) and are undone after a random while.
   Every kind is injected once (in random order) before kinds are drawn at random.
3. Faults stop: everything is undone, killed nodes restarted. The workload runs on (settle),
   then quiesces (SIGUSR1): senders stop, receivers drain. Every node must report "drained"
   within the drain deadline, then close cleanly on SIGTERM within the exit deadline.
4. :func:`tests.chaos.checker.check` reads every log.

Fault kinds (see docs/reliability.md): ``kill`` (SIGKILL, restart with the same key and name),
``stop`` (SIGSTOP, then SIGCONT), ``link`` (the host's switch port down, then up),
``partition`` and ``oneway`` (nftables rules in a host's namespace dropping traffic to and
from another host, or only to it), ``delay``, ``stall`` and ``reset`` (the proxy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import qchan
from tests.chaos.checker import Report, check, proxied
from tests.cluster.netns import Host, Lab

__all__ = ["KINDS", "ChaosConfig", "ChaosResult", "run"]

ROOT = Path(__file__).parents[2]
PORT = 7400
PROXY_PORT = 9000
KINDS = ("kill", "stop", "link", "partition", "oneway", "delay", "stall", "reset")
RSS_LIMIT = 400 * 1024 * 1024  # bytes: a node process above this is a violation


@dataclasses.dataclass
class ChaosConfig:
    workdir: Path
    duration: float = 50.0  # the fault period, seconds
    seed: int = 1
    nodes: int = 4
    warmup: float = 3.0
    settle: float = 4.0
    mean_interval: float = 1.0  # mean gap between two fault starts
    max_concurrent: int = 3
    kinds: tuple[str, ...] = KINDS
    heartbeat: float = 0.2
    timeout: float = 0.8
    gap: float = 0.02
    drain_idle: float = 3.0
    drain_deadline: float = 30.0
    exit_deadline: float = 20.0
    backends: tuple[str, ...] = ("asyncio", "trio")
    verbose: bool = False


@dataclasses.dataclass
class ChaosResult:
    config: ChaosConfig
    faults: Counter[str]
    report: Report
    rss_max: dict[str, int]  # bytes, per node (over all its incarnations)
    problems: list[str]  # crashes, stuck tasks, unclean exits, memory: each one a violation
    elapsed: float

    @property
    def violations(self) -> int:
        return self.report.violations + len(self.problems)

    def table(self) -> str:
        lines = [self.report.table(), "", "faults injected:"]
        for kind in self.config.kinds:
            lines.append(f"  {kind:<12}{self.faults[kind]:>8}")
        lines.append(f"  {'total':<12}{sum(self.faults.values()):>8}")
        lines.append("max RSS per node process (MiB):")
        for name, rss in sorted(self.rss_max.items()):
            lines.append(f"  {name:<12}{rss / 2**20:>8.1f}")
        lines.append(f"harness problems (violations): {len(self.problems)}")
        lines.extend(f"  {p}" for p in self.problems)
        lines.append(f"VIOLATIONS: {self.violations}")
        lines.append(f"elapsed: {self.elapsed:.1f} s")
        return "\n".join(lines)


class _Node:
    def __init__(self, index: int, name: str, host: Host) -> None:
        self.index = index
        self.name = name
        self.host = host
        self.inc = -1
        self.process: subprocess.Popen[bytes] | None = None
        self.files: list[IO[bytes]] = []
        self.expected_exit = False  # killed by us, or told to stop
        self.stopped = False

    @property
    def log(self) -> Path:
        return Path(f"{self.name}.{self.inc}.log")


@dataclasses.dataclass
class _Active:
    kind: str
    targets: tuple[str, ...]
    ends: float
    undo: Callable[[], None]


class _Runner:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.work = config.workdir
        self.work.mkdir(parents=True, exist_ok=True)
        self.cluster_key = qchan.ClusterKey.generate()
        self.nodes: list[_Node] = []
        self.faults: Counter[str] = Counter()
        self.active: list[_Active] = []
        self.busy: set[str] = set()
        self.problems: list[str] = []
        self.rss_max: dict[str, int] = {}
        self.faults_log = open(self.work / "faults.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self.proxy: subprocess.Popen[str] | None = None
        self.to_inject = list(config.kinds)
        self.rng.shuffle(self.to_inject)
        self.nft_tables = 0
        self.code = self._snapshot()

    def _snapshot(self) -> Path:
        """Copy the code the node processes run into the workdir, once.

        A node restarted in the middle of a run imports qchan again: it must find the code
        the run started with, not whatever the working tree holds by then.
        """
        code = self.work / "code"
        if code.exists():
            shutil.rmtree(code)
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "qchan", code / "qchan", ignore=skip)
        (code / "tests" / "chaos").mkdir(parents=True)
        for name in ("__init__.py", "chaos/__init__.py", "chaos/driver.py", "chaos/proxy.py"):
            shutil.copy2(ROOT / "tests" / name, code / "tests" / name)
        return code

    def say(self, text: str) -> None:
        if self.config.verbose:
            print(f"[chaos {time.monotonic():.1f}] {text}", flush=True)

    def record(self, kind: str, *fields: object) -> None:
        self.faults_log.write(f"{kind} {time.monotonic():.4f} {' '.join(map(str, fields))}\n")

    # --- nodes -----------------------------------------------------------------------------

    def start(self, node: _Node, lab: Lab) -> None:
        node.inc += 1
        node.expected_exit = False
        node.stopped = False
        config = self.config
        peers = []
        for other in self.nodes:
            if other.index > node.index:
                if proxied(node.name, other.name):
                    peers.append(f"{lab.hosts[-1].address}:{PROXY_PORT + other.index}")
                else:
                    peers.append(f"{other.host.address}:{PORT}")
        driver = {
            "name": node.name,
            "inc": node.inc,
            "names": [n.name for n in self.nodes],
            "key": str(self.work / f"{node.name}.key"),
            "cluster_key": bytes(self.cluster_key).hex(),
            "listen": f"0.0.0.0:{PORT}",
            "peers": peers,
            "log": str(self.work / node.log),
            "seed": config.seed,
            "backend": config.backends[node.index % len(config.backends)],
            "heartbeat": config.heartbeat,
            "timeout": config.timeout,
            "gap": config.gap,
            "drain_idle": config.drain_idle,
            "drain_deadline": config.drain_deadline,
        }
        for f in node.files:
            f.close()
        out = open(self.work / f"{node.name}.{node.inc}.out", "wb")  # noqa: SIM115
        node.files = [out]
        node.process = node.host.run(
            [sys.executable, "-m", "tests.chaos.driver", json.dumps(driver)],
            cwd=self.code,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.record("B", node.name, node.inc, node.process.pid)
        self.say(f"started {node.name}.{node.inc} pid {node.process.pid}")

    def signal(self, node: _Node, signum: int) -> None:
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, signum)

    def records(self, node: _Node, kind: str) -> list[str]:
        """The ``kind`` records of the node's current log: "U" near its head, others at its
        tail (a log of a long run is large; these are polled)."""
        try:
            with open(self.work / node.log, "rb") as f:
                if kind == "U":
                    data = f.read(4096)
                else:
                    size = f.seek(0, os.SEEK_END)
                    f.seek(max(0, size - 65536))
                    data = f.read()
        except FileNotFoundError:
            return []
        text = data.decode("utf-8", errors="replace")
        return [line for line in text.splitlines() if line.startswith(kind + " ")]

    def wait_up(self, nodes: list[_Node], deadline: float) -> None:
        limit = time.monotonic() + deadline
        waiting = list(nodes)
        while waiting and time.monotonic() < limit:
            waiting = [n for n in waiting if not self.records(n, "U")]
            time.sleep(0.1)
        for node in waiting:
            self.problems.append(f"{node.name}.{node.inc} did not come up in {deadline} s")

    def sample(self) -> None:
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                status = Path(f"/proc/{node.process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    self.rss_max[node.name] = max(self.rss_max.get(node.name, 0), rss)
                    if rss > RSS_LIMIT and not any(node.name in p for p in self.problems):
                        self.problems.append(f"{node.name}.{node.inc}: RSS {rss >> 20} MiB")

    def watch(self, lab: Lab, restart: bool) -> None:
        """A node process that exited without being told to is a crash (restarted)."""
        for node in self.nodes:
            process = node.process
            if process is None or node.expected_exit or process.poll() is None:
                continue
            out = self.work / f"{node.name}.{node.inc}.out"
            tail = out.read_text(errors="replace")[-2000:] if out.exists() else ""
            self.problems.append(
                f"{node.name}.{node.inc} exited by itself (code {process.returncode}): {tail!r}"
            )
            self.record("C", node.name, node.inc, process.returncode)
            node.expected_exit = True
            if restart:
                self.start(node, lab)

    # --- faults ----------------------------------------------------------------------------

    def nft(self, host: Host, rules: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", host.namespace, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
            timeout=10,
        )

    def proxy_command(self, command: str) -> None:
        assert self.proxy is not None
        assert self.proxy.stdin is not None
        self.proxy.stdin.write(command + "\n")
        self.proxy.stdin.flush()

    def inject(self, lab: Lab, kind: str) -> bool:
        """Start one fault of ``kind`` on a free target; False if none is free."""
        rng = self.rng
        nodes = [n for n in self.nodes if n.name not in self.busy]
        hosts = [n for n in self.nodes if f"net:{n.name}" not in self.busy]
        now = time.monotonic()
        targets: tuple[str, ...]
        undo: Callable[[], None]
        if kind in ("kill", "stop"):
            if not nodes:
                return False
            node = rng.choice(nodes)
            targets = (node.name,)
            if kind == "kill":
                self.signal(node, signal.SIGKILL)
                node.expected_exit = True
                assert node.process is not None
                node.process.wait(timeout=10)
                self.record("K", node.name, node.inc)
                duration = rng.uniform(0.05, 2.0)

                def undo(node: _Node = node) -> None:
                    self.start(node, lab)
            else:
                self.signal(node, signal.SIGSTOP)
                node.stopped = True
                self.record("T", node.name, node.inc)
                duration = rng.uniform(0.2, 2.5)

                def undo(node: _Node = node) -> None:
                    self.signal(node, signal.SIGCONT)
                    node.stopped = False
        elif kind == "link":
            if not hosts:
                return False
            node = rng.choice(hosts)
            targets = (f"net:{node.name}",)
            node.host.link_down()
            duration = rng.uniform(0.3, 3.0)

            def undo(host: Host = node.host) -> None:
                host.link_up()
        elif kind in ("partition", "oneway"):
            if len(hosts) < 2:
                return False
            a, b = rng.sample(hosts, 2)
            targets = (f"net:{a.name}", f"net:{b.name}")
            self.nft_tables += 1
            table = f"chaos{self.nft_tables}"
            chains = [
                f"chain output {{\n type filter hook output priority 0; policy accept;\n"
                f" ip daddr {b.host.address} drop\n}}"
            ]
            if kind == "partition":
                chains.append(
                    f"chain input {{\n type filter hook input priority 0; policy accept;\n"
                    f" ip saddr {b.host.address} drop\n}}"
                )
            self.nft(a.host, f"table inet {table} {{\n" + "\n".join(chains) + "\n}\n")
            duration = rng.uniform(0.5, 4.0)

            def undo(host: Host = a.host, table: str = table) -> None:
                self.nft(host, f"delete table inet {table}")
        elif kind in ("delay", "stall"):
            if "proxy" in self.busy:
                return False
            targets = ("proxy",)
            if kind == "delay":
                self.proxy_command(f"delay {rng.uniform(0.01, 0.2):.3f}")
                duration = rng.uniform(1.0, 5.0)

                def undo() -> None:
                    self.proxy_command("delay 0")
            else:
                self.proxy_command("stall")
                duration = rng.uniform(0.2, 3.0)

                def undo() -> None:
                    self.proxy_command("resume")
        elif kind == "reset":
            self.proxy_command("reset")
            self.faults[kind] += 1
            self.record("F", kind, "proxy", 0.0)
            self.say("fault reset proxy")
            return True
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.faults[kind] += 1
        self.busy.update(targets)
        self.active.append(_Active(kind, targets, now + duration, undo))
        self.record("F", kind, ",".join(targets), f"{duration:.3f}")
        self.say(f"fault {kind} {','.join(targets)} for {duration:.2f} s")
        return True

    def undo_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for fault in list(self.active):
            if everything or fault.ends <= now:
                self.active.remove(fault)
                fault.undo()
                self.busy.difference_update(fault.targets)
                self.record("G", fault.kind, ",".join(fault.targets))

    def next_kind(self) -> list[str]:
        if self.to_inject:
            first = self.to_inject[0]
            return [first] + [k for k in self.config.kinds if k != first]
        kinds = list(self.config.kinds)
        self.rng.shuffle(kinds)
        return kinds

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> ChaosResult:
        config = self.config
        began = time.monotonic()
        names = [f"n{i}" for i in range(config.nodes)]
        for name in names:
            key = self.work / f"{name}.key"
            if not key.exists():
                qchan.NodeKey.generate().save(key)
        with Lab(config.nodes + 1) as lab:
            self.nodes = [_Node(i, name, lab.hosts[i]) for i, name in enumerate(names)]
            proxy_host = lab.hosts[-1]
            routes = [
                [proxy_host.address, PROXY_PORT + node.index, node.host.address, PORT]
                for node in self.nodes
                if node.index % 2 == 1  # (n1 behind the proxy for n0, n3 for n2: proxied())
            ]
            self.proxy = proxy_host.run(
                [sys.executable, "-m", "tests.chaos.proxy", json.dumps({"routes": routes})],
                cwd=self.code,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
            )
            try:
                self._phases(lab)
            finally:
                for node in self.nodes:
                    for f in node.files:
                        f.close()
                if self.proxy.stdin is not None:
                    self.proxy.stdin.close()
                try:
                    self.proxy.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proxy.kill()
        self.faults_log.close()
        report = check(self.work)
        return ChaosResult(
            config, self.faults, report, self.rss_max, self.problems, time.monotonic() - began
        )

    def _monitor(self, lab: Lab, until: float, faults: bool, restart: bool = True) -> None:
        next_fault = time.monotonic()
        last_sample = 0.0
        while (now := time.monotonic()) < until:
            self.undo_due()
            self.watch(lab, restart)
            if faults and now >= next_fault:
                if len(self.active) < self.config.max_concurrent:
                    for kind in self.next_kind():
                        if self.inject(lab, kind):
                            if kind in self.to_inject:
                                self.to_inject.remove(kind)
                            break
                next_fault = now + self.rng.expovariate(1 / self.config.mean_interval)
            if now - last_sample >= 1.0:
                self.sample()
                last_sample = now
            time.sleep(0.02)

    def _phases(self, lab: Lab) -> None:
        config = self.config
        for node in self.nodes:
            self.start(node, lab)
        self.wait_up(self.nodes, 30)
        self.record("P", "warmup")
        self._monitor(lab, time.monotonic() + config.warmup, faults=False)
        self.record("P", "faults")
        self.say("fault period")
        self._monitor(lab, time.monotonic() + config.duration, faults=True)
        self.undo_due(everything=True)
        self.record("P", "healed")
        self.say("faults stopped")
        self.wait_up(self.nodes, 30)
        self._monitor(lab, time.monotonic() + config.settle, faults=False)
        self.record("P", "quiesce")
        self.say("quiesce")
        for node in self.nodes:
            self.signal(node, signal.SIGUSR1)
        limit = time.monotonic() + config.drain_deadline + 15
        waiting = list(self.nodes)
        while waiting and time.monotonic() < limit:
            self.watch(lab, restart=False)
            self.sample()
            waiting = [n for n in waiting if not self.records(n, "D")]
            time.sleep(0.1)
        for node in waiting:
            self.problems.append(f"{node.name}.{node.inc} never reported drained")
        for node in self.nodes:
            for line in self.records(node, "D"):
                fields = line.split()
                if fields[2] != "0":
                    self.problems.append(
                        f"{node.name}.{node.inc} tasks still running after the drain deadline: "
                        f"{' '.join(fields[3:])}"
                    )
        self.record("P", "stop")
        self.say("stop")
        for node in self.nodes:
            node.expected_exit = True
            self.signal(node, signal.SIGTERM)
        limit = time.monotonic() + config.exit_deadline
        for node in self.nodes:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.1, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.problems.append(
                    f"{node.name}.{node.inc} did not exit within {config.exit_deadline} s"
                )
                node.process.kill()
                node.process.wait(timeout=10)
                continue
            if node.process.returncode != 0 or not self.records(node, "E"):
                self.problems.append(
                    f"{node.name}.{node.inc} did not close cleanly "
                    f"(exit code {node.process.returncode})"
                )
        self.record("P", "end")


def run(config: ChaosConfig) -> ChaosResult:
    """Run the chaos harness once (needs root: network namespaces); see the module docstring."""
    return _Runner(config).run()


def describe(result: ChaosResult) -> dict[str, Any]:
    """The figures of a run, for machines (json)."""
    report = result.report
    return {
        "seed": result.config.seed,
        "duration": result.config.duration,
        "nodes": result.config.nodes,
        "faults": dict(result.faults),
        "sends": report.sends,
        "outcomes": dict(report.outcomes),
        "received": report.received,
        "explained": dict(report.explained),
        "counted_as_taken_on_the_way": report.dropped,
        "violations": result.violations,
        "uncertain_rate": report.uncertain_rate,
        "rss_max_mib": {k: round(v / 2**20, 1) for k, v in result.rss_max.items()},
        "problems": result.problems,
        "elapsed": round(result.elapsed, 1),
    }
