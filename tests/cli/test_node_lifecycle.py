"""``qchan node start`` from start to stop: signals, GOAWAY to peers, --run outcomes."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from qchan import NodeKey
from tests.cli._helpers import SIGNALS, NodeProcess, Process, free_port, run_script
from tests.cli.conftest import Keys

# A peer that stops without a GOAWAY is noticed only after the heartbeat timeout (3 s); a
# GOAWAY makes it "left: ... is shutting down" at once.
PROMPTLY = 1.5


@pytest.mark.parametrize(
    ("signame", "backend"), [("SIGINT", "asyncio"), ("SIGTERM", "trio")], ids=str
)
def test_a_signal_closes_the_node_and_its_peers_see_it_leave_at_once(
    tmp_path: Path, keys: Keys, signame: str, backend: str
) -> None:
    first = NodeProcess(tmp_path, "first", keys.cluster, "--backend", backend)
    second = None
    try:
        second = NodeProcess(tmp_path, "second", keys.cluster, "--peer", first.address)
        second.wait_for_err(r"peer first joined")
        first.wait_for_err(r"peer second joined")
        started = time.monotonic()
        first.signal(SIGNALS[signame])
        assert first.wait(5) == 0, first.err
        second.wait_for_err(r"peer first left: .*first is shutting down", timeout=PROMPTLY)
        assert time.monotonic() - started < PROMPTLY + 0.5
        assert f"{signame}: closing the node" in first.err
        assert "Traceback" not in first.err
    finally:
        for process in (second, first):
            if process is not None:
                process.stop()


def test_a_command_waiting_on_a_stopped_node_fails_at_once(tmp_path: Path, keys: Keys) -> None:
    home = NodeProcess(tmp_path, "home", keys.cluster, "--channel", "work")
    waiting = Process(
        tmp_path,
        "recv",
        ["recv", "work", "-v", "--cluster-key", str(keys.cluster), "--peer", home.address],
    )
    try:
        home.wait_for_err(r"peer qchan-recv-\S+ joined")
        time.sleep(0.3)  # the command now waits in receive()
        started = time.monotonic()
        home.signal(signal.SIGTERM)
        assert home.wait(5) == 0
        assert waiting.wait(PROMPTLY + 1) == 1
        assert time.monotonic() - started < PROMPTLY + 1
        error = waiting.err.splitlines()[-1]
        assert re.fullmatch(r"qchan: error: .*home is shutting down.*", error), waiting.err
    finally:
        waiting.stop()
        home.stop()


def test_a_run_function_that_raises_stops_the_node_with_exit_1(tmp_path: Path, keys: Keys) -> None:
    node = NodeProcess(
        tmp_path, "failing", keys.cluster, "--run", "app:boom", "--run", "app:forever"
    )
    try:
        assert node.wait(5) == 1
        assert node.err.rstrip().endswith("qchan: error: --run app:boom raised ValueError: boom")
        assert "ERROR   qchan.cli: --run app:boom raised ValueError: boom" in node.err
        assert 'raise ValueError("boom")' in node.err  # the function's own traceback is logged
    finally:
        node.stop()


def test_the_node_keeps_serving_after_its_run_functions_return(tmp_path: Path, keys: Keys) -> None:
    node = NodeProcess(tmp_path, "worker", keys.cluster, "--run", "app:finite")
    try:
        node.wait_for_err(r"--run app:finite returned; the node keeps serving")
        got = run_script(
            "recv", "countdown", "--cluster-key", str(keys.cluster), "--peer", node.address
        )
        assert (got.code, got.out) == (0, "3\n"), got.err
        node.signal(signal.SIGINT)
        assert node.wait(5) == 0
    finally:
        node.stop()


def test_a_node_on_a_unix_socket_with_a_key_from_the_environment(
    tmp_path: Path, keys: Keys
) -> None:
    socket_path = tmp_path / "node.sock"
    env = {"QCHAN_KEY": str(keys.node)}
    argv = ["--listen", f"unix:{socket_path}", "--channel", "jobs:1"]
    node = NodeProcess(tmp_path, "unix", keys.cluster, *argv, env=env)
    try:
        assert node.address == f"unix:{socket_path}"
        assert node.fingerprint == run_fingerprint(keys.node)
        client = ["--cluster-key", str(keys.cluster), "--peer", node.address]
        assert run_script("send", "jobs", "[]", *client).code == 0
        assert run_script("recv", "jobs", *client).out == "[]\n"
    finally:
        node.stop()
    assert node.popen.returncode == 0


def run_fingerprint(path: Path) -> str:
    return NodeKey.load(path).fingerprint


def test_peers_that_cannot_be_reached_at_start_are_warned_about(tmp_path: Path, keys: Keys) -> None:
    stranger = NodeProcess(tmp_path, "stranger", keys.other_cluster)
    unreachable = f"127.0.0.1:{free_port()}"
    node = None
    try:
        node = NodeProcess(
            tmp_path, "hopeful", keys.cluster, "--peer", unreachable, "--peer", stranger.address
        )
        node.wait_for_err(
            rf"WARNING qchan.cli: --peer {unreachable}: cannot reach {unreachable}: "
            r"connection refused \(still trying\)"
        )
        node.wait_for_err(
            rf"WARNING qchan.cli: --peer {stranger.address}: cannot authenticate with "
            rf"{stranger.address}: .*wrong cluster key.* \(still trying\)"
        )
        assert node.popen.poll() is None  # a node keeps running, and dialling
    finally:
        if node is not None:
            node.stop()
        stranger.stop()
