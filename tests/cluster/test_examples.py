"""examples/cluster/: each README's session runs as written, and the demo runs.

Each example's README opens with a ```sh block: the commands a user types from the repository
root. The test runs exactly those lines, in a temporary directory (``PYTHONPATH`` points at the
repository, as the root would), on loopback with mDNS discovery as written: a line ending in
``&`` starts a background process, ``kill %N ...`` sends those SIGTERM (each must then exit 0,
as a node does on SIGTERM), any other line runs to completion. ``qchan`` is this Python's
console script and ``python`` this Python. Then the output is checked. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import qchan

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "cluster"
STEP_TIMEOUT = 60.0  # one foreground command
STOP_TIMEOUT = 10.0  # a background node after SIGTERM


def qchan_command() -> list[str]:
    beside = Path(sys.executable).parent / "qchan"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "import sys; from qchan._cli import main; sys.exit(main())"]


def session_lines(readme: Path) -> list[str]:
    """The commands of the README's first ```sh block, continuation lines joined."""
    match = re.search(r"```sh\n(.*?)```", readme.read_text(), re.S)
    assert match, f"{readme} has no ```sh block"
    text = match.group(1).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def argv(line: str) -> list[str]:
    words = shlex.split(line)
    if words[0] == "qchan":
        return [*qchan_command(), *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise AssertionError(f"unexpected command in a README session: {line!r}")


class Session:
    """A shell session's jobs: background processes, stopped by ``kill %N`` or at the end."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.jobs: list[subprocess.Popen[str]] = []
        self.outputs: list[str] = []  # stdout of each foreground command

    def run(self, line: str) -> None:
        if line.startswith("kill "):
            for job in line.split()[1:]:
                self.stop(self.jobs[int(job.lstrip("%")) - 1])
            return
        if line.endswith("&"):
            self.jobs.append(
                subprocess.Popen(
                    argv(line[:-1]),
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
            return
        result = subprocess.run(
            argv(line),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        self.outputs.append(result.stdout)

    def stop(self, job: subprocess.Popen[str]) -> str:
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
        try:
            out, _ = job.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            job.kill()
            out, _ = job.communicate()
            raise AssertionError(f"{job.args!r} did not stop on SIGTERM:\n{out}") from None
        assert job.returncode == 0, f"{job.args!r} exited {job.returncode}:\n{out}"
        return out

    def close(self) -> None:
        for job in self.jobs:
            if job.poll() is None:
                job.kill()
            job.communicate()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    made = Session(tmp_path)
    try:
        yield made
    finally:
        made.close()


def _mdns_on_loopback() -> bool:
    async def probe() -> bool:
        key = qchan.ClusterKey.generate()
        async with (
            qchan.Node(cluster_key=key, discovery=True) as a,
            qchan.Node(cluster_key=key, discovery=True) as b,
        ):
            with anyio.move_on_after(5):
                while not (a.peers() and b.peers()):  # noqa: ASYNC110 - discovery fills them
                    await anyio.sleep(0.05)
                return True
            return False

    return anyio.run(probe)


@pytest.fixture(scope="module")
def mdns() -> None:
    if not _mdns_on_loopback():
        pytest.skip("mDNS on the loopback interface does not work here (no multicast)")


def run_readme(session: Session, example: str) -> str:
    for line in session_lines(EXAMPLES / example / "README.md"):
        session.run(line)
    return "".join(session.outputs)


@pytest.mark.usefixtures("mdns")
def test_worker_pool_readme(session: Session) -> None:
    out = run_readme(session, "worker_pool")
    assert "primes below 2,000,000: 148933 (expected 148933: OK)" in out, out
    assert re.search(r"^w1 +2 +\d+ ", out, re.M), out
    assert re.search(r"^w2 +2 +\d+ ", out, re.M), out
    assert re.search(r"retries \d+, failures 0, workers lost \d+", out), out


@pytest.mark.usefixtures("mdns")
def test_request_response_readme(session: Session) -> None:
    assert run_readme(session, "request_response") == 'true\n"hello"\n["greeting"]\n'


@pytest.mark.usefixtures("mdns")
def test_pipeline_readme(session: Session) -> None:
    out = run_readme(session, "pipeline")
    results = re.findall(r"^ *(number|letter) +(\S+) -> (\S+) +\(by transform\)$", out, re.M)
    assert len(results) == 12, out
    for kind, value, transformed in results:
        if kind == "number":
            assert int(transformed) == int(value) ** 2
        else:
            assert transformed == value.upper()
    assert re.search(r"^received 12 results \(and \d+ more in flight after quit\)$", out, re.M)


def test_worker_pool_without_discovery(session: Session) -> None:
    """The README's multicast-free way: workers with --no-discovery, the client dials them."""
    session.run("qchan cluster-key -o ck")
    worker = "--no-discovery --listen 127.0.0.1:0 --run examples.cluster.worker_pool.worker:serve"
    addresses = []
    for name in ("w1", "w2"):
        session.run(f"qchan node start --cluster-key ck --name {name} {worker} &")
        stdout = session.jobs[-1].stdout
        assert stdout is not None
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            line = stdout.readline()
            assert line, "the node exited at start"
            if line.startswith("address: "):
                addresses.append(line.split()[1])
                break
    peers = " ".join(f"--peer {address}" for address in addresses)
    session.run(
        "python -m examples.cluster.worker_pool.client --cluster-key ck --no-discovery "
        f"{peers} --limit 100000 --block 500"
    )
    assert "primes below 100,000: 9592 (expected 9592: OK)" in session.outputs[-1]
    session.run("kill %1 %2")


@pytest.mark.usefixtures("mdns")
def test_demo_runs_and_stops_every_node() -> None:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        cwd="/",  # from anywhere
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert time.monotonic() - start < STEP_TIMEOUT
    assert "found by mDNS on the loopback interface" in out, out
    assert "primes below 10,000,000: 664579 (expected 664579: OK)" in out, out
    for name in ("w1", "w2", "w3"):
        assert re.search(rf"^{name} +2 +\d+ +\d+\.\d%", out, re.M), out
    assert "stopped 3 node processes cleanly (exit codes 0, 0, 0)" in out, out
    assert_gone(out)


def test_demo_without_discovery_dials_the_nodes() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        env={**os.environ, "QCHAN_DEMO_DISCOVERY": "0"},
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "discovery is off (QCHAN_DEMO_DISCOVERY=0): dialling the nodes' addresses" in out
    assert "joined through their addresses (--peer), without mDNS" in out, out
    assert "primes below 10,000,000: 664579 (expected 664579: OK)" in out, out
    assert "stopped 3 node processes cleanly (exit codes 0, 0, 0)" in out, out
    assert_gone(out)


def assert_gone(out: str) -> None:
    """Every node process the demo listed (``pid N``) is gone: no orphans."""
    pids = [int(pid) for pid in re.findall(r" pid (\d+)$", out, re.M)]
    assert len(pids) == 3, out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.usefixtures("mdns")
def test_demo_interrupted_stops_every_node() -> None:
    demo = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "demo.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert demo.stdout is not None
        seen = ""
        deadline = time.monotonic() + STEP_TIMEOUT
        while "counting the primes" not in seen and time.monotonic() < deadline:
            line = demo.stdout.readline()
            assert line, seen
            seen += line
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = demo.communicate(timeout=STEP_TIMEOUT)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    out = seen + rest
    assert demo.returncode == 1, out
    assert "interrupted: stopping the nodes" in out, out
    assert re.search(r"stopped 3 node processes cleanly \(exit codes 0, 0, 0\)", out), out
    assert_gone(out)
