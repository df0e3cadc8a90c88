"""The happy paths against a running ``qchan node start`` (a subprocess), and the errors that
need one: in-process through ``main(argv)`` and as the installed script."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import qchan
from tests.cli._helpers import NodeProcess, Process, free_port, interrupt_code, run_main, run_script
from tests.cli.conftest import Keys


@pytest.fixture(autouse=True)
def _no_key_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCHAN_KEY", raising=False)
    monkeypatch.delenv("QCHAN_CLUSTER_KEY", raising=False)


def _client(keys: Keys, node: NodeProcess, *argv: str) -> list[str]:
    return [*argv, "--cluster-key", str(keys.cluster), "--peer", node.address]


def test_the_node_prints_its_name_fingerprint_and_address(node: NodeProcess, keys: Keys) -> None:
    assert node.fingerprint == qchan.NodeKey.load(keys.node).fingerprint
    assert node.public_key == qchan.NodeKey.load(keys.node).public.hex()
    assert node.address.startswith("127.0.0.1:")
    assert "channel: jobs (capacity 4)" in node.out
    assert "channel: pile (capacity inf)" in node.out
    assert "channel: meet (capacity 0)" in node.out
    assert f"node hub ({node.fingerprint}) listening on {node.address}" in node.err


def test_send_then_recv_in_process(
    node: NodeProcess, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    for value in ('{"id": 1, "tags": ["a"]}', "2", '"three"'):
        result = run_main(capsys, *_client(keys, node, "send", "pile", value))
        assert (result.code, result.out, result.err) == (0, "", "")
    result = run_main(capsys, *_client(keys, node, "recv", "pile", "-n", "3"))
    assert result.code == 0, result.err
    assert result.out == '{"id": 1, "tags": ["a"]}\n2\n"three"\n'
    result = run_main(capsys, *_client(keys, node, "send", "jobs", "4"))
    assert (result.code, result.err) == (0, "")
    result = run_main(capsys, *_client(keys, node, "recv", "jobs"))
    assert (result.code, result.out) == (0, "4\n"), result.err


def test_successive_sends_to_a_bounded_buffer_do_not_stall(tmp_path: Path, keys: Keys) -> None:
    home = NodeProcess(tmp_path, "bounded", keys.cluster, "--channel", "slots:4")
    try:
        for value in range(4):
            sender = Process(
                tmp_path, f"send{value}", _client(keys, home, "send", "slots", str(value))
            )
            try:
                assert sender.wait(2) == 0
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"send {value} of 4 into an empty slots:4 channel did not return in 2 s"
                )
            finally:
                sender.stop()
    finally:
        home.stop()


def test_send_and_recv_as_scripts_on_trio(node: NodeProcess, keys: Keys) -> None:
    sent = run_script(*_client(keys, node, "send", "pile", "[1, 2.5, null]", "--backend", "trio"))
    assert sent.code == 0, sent.err
    got = run_script(*_client(keys, node, "recv", "pile", "--no-uvloop"))
    assert (got.code, got.out) == (0, "[1, 2.5, null]\n"), got.err


def test_a_rendezvous_send_returns_once_a_receiver_took_the_value(
    node: NodeProcess, keys: Keys, tmp_path: Path
) -> None:
    sender = Process(tmp_path, "send", _client(keys, node, "send", "meet", '{"x": 1}'))
    try:
        time.sleep(0.5)
        assert sender.popen.poll() is None  # blocked: nobody receives yet
        got = run_script(*_client(keys, node, "recv", "meet"))
        assert (got.code, got.out) == (0, '{"x": 1}\n'), got.err
        assert sender.wait(10) == 0
    finally:
        sender.stop()


def test_recv_until_closed_and_values_json_cannot_hold(
    node: NodeProcess, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_main(capsys, *_client(keys, node, "recv", "countdown", "-n", "0"))
    assert (result.code, result.out) == (0, "3\n2\n1\n"), result.err
    result = run_main(capsys, *_client(keys, node, "recv", "countdown", "-n", "2"))
    assert result.code == 1
    assert result.err == ("qchan: error: channel 'countdown' is closed (received 0 of 2 values)\n")
    result = run_main(capsys, *_client(keys, node, "send", "countdown", "0"))
    assert (result.code, result.err) == (1, "qchan: error: channel 'countdown' is closed\n")
    result = run_main(capsys, *_client(keys, node, "recv", "odd", "-n", "5"))
    assert result.code == 0, result.err
    assert [json.loads(line) for line in result.out.splitlines()] == [
        {"$repr": "b'\\x00\\xff'"},
        [1, 2],
        {"$repr": "{1: 'one'}"},
        {"$repr": "nan"},
        {"tags": {"$repr": "{'a'}"}},
    ]


def test_run_answers_requests_through_cli_commands(
    node: NodeProcess, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(capsys, *_client(keys, node, "send", "numbers", "21")).code == 0
    result = run_main(capsys, *_client(keys, node, "recv", "doubled"))
    assert (result.code, result.out) == (0, "42\n"), result.err


@pytest.mark.anyio
async def test_run_answers_requests_from_a_program(node: NodeProcess, keys: Keys) -> None:
    cluster_key = qchan.ClusterKey.load(keys.cluster)
    with anyio.fail_after(10):
        async with qchan.Node(cluster_key, peers=[node.address]) as program:
            echo = await program.lookup("echo@hub")
            reply: qchan.Channel[Any] = qchan.Channel()
            await echo.send([reply, {"ping": 1}])
            assert await reply.receive() == {"ping": 1}


def test_peers_json_and_table(
    node: NodeProcess, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_main(capsys, *_client(keys, node, "peers", "--json"))
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert {
        "name": "hub",
        "fingerprint": node.fingerprint,
        "public_key": node.public_key,
        "address": node.address,
        "connected": True,
        "via": None,
    } in rows
    assert not any(row["name"].startswith("qchan-") and not row["connected"] for row in rows)
    table = run_main(capsys, *_client(keys, node, "peers"))
    assert table.code == 0
    header, *lines = table.out.splitlines()
    assert header.split() == ["NAME", "FINGERPRINT", "ADDRESS", "CONNECTED", "VIA"]
    assert any(
        line.split() == ["hub", node.fingerprint, node.address, "yes", "-"] for line in lines
    )


def test_environment_variables_instead_of_flags(node: NodeProcess, keys: Keys) -> None:
    env = {"QCHAN_CLUSTER_KEY": str(keys.cluster)}
    assert run_script("send", "jobs", "7", "--peer", node.address, env=env).code == 0
    got = run_script("recv", "jobs", "--peer", node.address, env=env)
    assert (got.code, got.out) == (0, "7\n"), got.err
    # QCHAN_KEY gives the command the identity in that file: here the node's own, refused.
    same = run_script("peers", "--peer", node.address, env={**env, "QCHAN_KEY": str(keys.node)})
    assert same.code == 3
    assert "has the same node key as this command" in same.err


# --- errors that need a node -----------------------------------------------------------------


def test_an_unknown_channel(
    node: NodeProcess, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_main(capsys, *_client(keys, node, "recv", "nope", "--timeout", "0.3"))
    assert result.code == 1
    assert result.err == "qchan: error: no channel named 'nope' in the cluster within 0.3 s\n"
    result = run_main(
        capsys, *_client(keys, node, "send", "jobs@elsewhere", "1", "--timeout", "0.3")
    )
    assert result.code == 1
    assert "no channel named 'jobs' on node 'elsewhere'" in result.err


def test_a_wrong_cluster_key_fails_authentication(
    node: NodeProcess, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send", "jobs", "1", "--cluster-key", str(keys.other_cluster), "--peer", node.address]
    result = run_main(capsys, *argv)
    assert result.code == 4
    assert result.err.startswith(f"qchan: error: authentication with {node.address} failed: ")
    assert result.err.count("\n") == 1
    assert run_script(*argv).code == 4


def test_an_unreachable_peer(keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    for command in (["peers"], ["send", "jobs", "1"], ["recv", "jobs"]):
        result = run_main(capsys, *command, "--cluster-key", str(keys.cluster), "--peer", address)
        assert result.code == 4
        assert result.err == f"qchan: error: cannot reach {address}: connection refused\n"


def test_a_recv_interrupted_by_a_signal(node: NodeProcess, keys: Keys, tmp_path: Path) -> None:
    for name, signum in (("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM)):
        waiting = Process(tmp_path, name, _client(keys, node, "recv", "meet", "-v"))
        try:
            waiting.wait_for_err(r"peer hub joined")
            time.sleep(0.2)  # now in receive()
            waiting.signal(signum)
            assert waiting.wait(5) == interrupt_code(signum)
            assert "Traceback" not in waiting.err
        finally:
            waiting.stop()


def test_an_in_process_command_stops_on_sigint(
    node: NodeProcess, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    timer = threading.Timer(1.0, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    try:
        result = run_main(capsys, *_client(keys, node, "recv", "meet"))
    finally:
        timer.cancel()
    assert result.code == 130
