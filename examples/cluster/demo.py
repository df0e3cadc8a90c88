"""``make demo``: a three-node qchan cluster on this machine, running a worker pool.

    python examples/cluster/demo.py

What happens:

1. ``qchan cluster-key`` writes a fresh cluster key (the Noise PSK: only holders can connect;
   every byte between the nodes is encrypted) into a temporary directory;
2. three ``qchan node start`` processes come up on 127.0.0.1, each running
   ``examples.cluster.worker_pool.worker:serve`` (a ``serve_worker`` that counts primes);
3. this script joins them as a fourth node, ``demo``, hosting a ``WorkerPool``. The nodes
   find each other by mDNS on the loopback interface; if multicast does not work there, the
   script says so and dials the workers' addresses itself, as ``--peer`` would (with
   ``QCHAN_DEMO_DISCOVERY=0`` no node uses mDNS at all);
4. the pool counts the primes below 10,000,000 in 2,000 jobs, with a live progress bar, and
   prints a summary table: jobs per second, each node's share, retries and failures;
5. every node process is stopped (SIGTERM, then SIGKILL after a bound), on success, on error
   and on Ctrl-C; on Linux they are also told to die with this process, should it be killed.

Every wait is bounded; the whole run takes a few seconds.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python examples/cluster/demo.py` puts only this dir there

import anyio  # noqa: E402

import qchan  # noqa: E402
from examples.cluster.worker_pool.client import count_on_cluster, summary  # noqa: E402
from qchan.cluster import WorkerPool  # noqa: E402

WORKERS = 3
LIMIT = 10_000_000  # count the primes below this ...
BLOCK = 5_000  # ... in jobs of this many integers: 2,000 jobs
START_TIMEOUT = 30.0  # for a node process to print its address
DISCOVERY_TIMEOUT = 5.0  # for mDNS to bring every worker to the pool
#: QCHAN_DEMO_DISCOVERY=0 runs without mDNS at all (as on a machine without multicast).
DISCOVERY = os.environ.get("QCHAN_DEMO_DISCOVERY", "1") != "0"
RUN_TIMEOUT = 60.0  # for the whole pool run
STOP_TIMEOUT = 5.0  # for the node processes to exit after SIGTERM


def qchan_command() -> list[str]:
    """The ``qchan`` console script of this Python (a venv's bin/, or PATH)."""
    beside = Path(sys.executable).parent / "qchan"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("qchan")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from qchan._cli import main; sys.exit(main())"]


def _die_with_parent() -> None:
    """(In the child, before exec.) Linux: get SIGTERM when the demo dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


class NodeProcess:
    """One ``qchan node start`` process: its banner, its log, and a bounded stop."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.banner: dict[str, str] = {}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,  # `--run examples....` imports from the current directory
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the demo only: it stops the nodes
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[bytes]) -> None:
        for raw in stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def wait_for_banner(self, deadline: float) -> None:
        """Read ``name: ...``, ``fingerprint: ...``, ``address: ...`` (up to ``deadline``)."""
        while "address" not in self.banner:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT} s") from None
            if line is None:
                raise RuntimeError(f"{self.name} exited (code {self.process.wait()}) at start")
            key, _, value = line.partition(": ")
            self.banner[key] = value

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text[-lines:])


def stop_all(nodes: list[NodeProcess]) -> list[int | None]:
    """SIGTERM every node, wait (bounded) for each, SIGKILL what is left; their exit codes."""
    for node in nodes:
        if node.process.poll() is None:
            try:
                node.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_TIMEOUT
    codes: list[int | None] = []
    for node in nodes:
        try:
            codes.append(node.process.wait(timeout=max(deadline - time.monotonic(), 0.01)))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(timeout=STOP_TIMEOUT)
            codes.append(None)  # had to be killed
        if node.process.stdout is not None:
            node.process.stdout.close()
    return codes


async def run_pool(cluster_key: qchan.ClusterKey, nodes: list[NodeProcess]) -> bool:
    """Join the cluster as ``demo``, run the pool, print the summary; True if all is well."""
    async with qchan.Node(
        cluster_key=cluster_key, name="demo", listen="127.0.0.1:0", discovery=DISCOVERY
    ) as node:
        async with WorkerPool(node, lookup_timeout=0.5) as pool:
            start = time.perf_counter()
            with anyio.move_on_after(DISCOVERY_TIMEOUT if DISCOVERY else 0):
                await pool.wait_for_workers(WORKERS)
            found = pool.statistics().workers
            if found == WORKERS:
                took = time.perf_counter() - start
                how = f"found by mDNS on the loopback interface in {took:.2f} s"
            else:
                why = (
                    f"mDNS on loopback brought {found} of {WORKERS} workers within "
                    f"{DISCOVERY_TIMEOUT:.0f} s (multicast may be off on this machine)"
                    if DISCOVERY
                    else "discovery is off (QCHAN_DEMO_DISCOVERY=0)"
                )
                print(f"{why}: dialling the nodes' addresses, as `--peer ADDR` does", flush=True)
                with anyio.fail_after(START_TIMEOUT):
                    for process in nodes:
                        await node.connect(process.banner["address"])
                    await pool.wait_for_workers(WORKERS)
                how = "joined through their addresses (--peer), without mDNS"
            print(f"cluster: {WORKERS} worker nodes + this client node '{node.name}', {how}")
            for process in nodes:
                banner = process.banner
                print(
                    f"  {banner.get('name', process.name):<4} {banner['address']:<21} "
                    f"key {banner.get('fingerprint', '?')}  pid {process.process.pid}"
                )
            print("  every link: Noise XXpsk0 (X25519, ChaChaPoly, BLAKE2b), a fresh cluster key")
            jobs = LIMIT // BLOCK
            print(f"counting the primes below {LIMIT:,} in {jobs:,} jobs on the pool...")
            with anyio.fail_after(RUN_TIMEOUT):
                outcome = await count_on_cluster(pool, LIMIT, BLOCK)
    print()
    print(summary(outcome))
    return outcome.correct is not False


def main() -> int:
    nodes: list[NodeProcess] = []
    ok = False
    with tempfile.TemporaryDirectory(prefix="qchan-demo-") as tmp:
        key_path = Path(tmp) / "cluster.key"
        qchan_cmd = qchan_command()
        try:
            subprocess.run(
                [*qchan_cmd, "cluster-key", "-o", str(key_path)],
                check=True,
                timeout=START_TIMEOUT,
                stdout=subprocess.DEVNULL,
            )
            print(
                f"starting {WORKERS} nodes: qchan node start --run "
                "examples.cluster.worker_pool.worker:serve ...",
                flush=True,
            )
            for number in range(1, WORKERS + 1):
                name = f"w{number}"
                command = [
                    *qchan_cmd, "node", "start",
                    "--cluster-key", str(key_path),
                    "--name", name,
                    "--listen", "127.0.0.1:0",
                    "--run", "examples.cluster.worker_pool.worker:serve",
                    *([] if DISCOVERY else ["--no-discovery"]),
                ]  # fmt: skip
                nodes.append(NodeProcess(name, command, Path(tmp) / f"{name}.log"))
            deadline = time.monotonic() + START_TIMEOUT
            for process in nodes:
                process.wait_for_banner(deadline)
            ok = anyio.run(run_pool, qchan.ClusterKey.load(key_path), nodes)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the nodes", flush=True)
        except Exception as exc:
            print(f"\ndemo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            for process in nodes:
                print(f"  log of {process.name}:\n{process.log_tail()}", file=sys.stderr)
        finally:
            codes = stop_all(nodes)
        if nodes:
            clean = all(code == 0 for code in codes)
            shown = ", ".join("killed" if code is None else str(code) for code in codes)
            state = "cleanly" if clean else "NOT cleanly"
            print(f"stopped {len(nodes)} node processes {state} (exit codes {shown})")
            ok = ok and clean
    return 0 if ok else 1


def _interrupted(*_: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)  # `kill` the demo: it still stops its nodes
    sys.exit(main())
