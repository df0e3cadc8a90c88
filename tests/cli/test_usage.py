"""Help, and every error that needs no running node: one line on stderr, a stable exit code."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from qchan._cli_client import json_line
from tests.cli._helpers import HERE, run_main, run_script_unprivileged
from tests.cli.conftest import Keys

SUBCOMMANDS = [
    ["keygen"],
    ["cluster-key"],
    ["node"],
    ["node", "start"],
    ["peers"],
    ["send"],
    ["recv"],
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help_with_an_example(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    result = run_main(capsys, *command, "--help")
    assert result.code == 0
    assert result.out.startswith(f"usage: qchan {' '.join(command)}")
    assert "example" in result.out
    assert f"qchan {' '.join(command)} " in result.out.split("example", 1)[1]


def test_no_subcommand_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(capsys)
    assert result.code == 0
    assert "keygen" in result.out
    assert "exit codes" in result.out


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qchan: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- keys -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_key_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCHAN_KEY", raising=False)
    monkeypatch.delenv("QCHAN_CLUSTER_KEY", raising=False)


CLIENT_COMMANDS = [
    ["peers", "--peer", "127.0.0.1:1"],
    ["send", "jobs", "1", "--peer", "127.0.0.1:1"],
    ["recv", "jobs", "--peer", "127.0.0.1:1"],
    ["node", "start", "--no-discovery", "--listen", "127.0.0.1:0"],
]


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=lambda c: c[0])
def test_a_cluster_key_is_required(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    result = run_main(capsys, *command)
    assert result.code == 2
    line = _one_error_line(result.err)
    assert "--cluster-key FILE" in line
    assert "QCHAN_CLUSTER_KEY" in line


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=lambda c: c[0])
def test_a_missing_key_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "missing.key"
    result = run_main(capsys, *command, "--cluster-key", str(missing))
    assert result.code == 3
    assert _one_error_line(result.err) == (
        f"qchan: error: no cluster key file at {missing} "
        f"(make one with `qchan cluster-key -o {missing}`)"
    )


def test_a_missing_node_key_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys
) -> None:
    missing = tmp_path / "node.key"
    result = run_main(
        capsys, "send", "jobs", "1", "--cluster-key", str(keys.cluster), "--key", str(missing)
    )
    assert result.code == 3
    assert "make one with `qchan keygen -o" in _one_error_line(result.err)


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=lambda c: c[0])
def test_a_readable_key_file_is_refused_with_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Keys, command: list[str]
) -> None:
    exposed = tmp_path / "exposed.key"
    exposed.write_bytes(keys.cluster.read_bytes())
    exposed.chmod(0o644)
    result = run_main(capsys, *command, "--cluster-key", str(exposed))
    assert result.code == 3
    line = _one_error_line(result.err)
    assert "mode 0644" in line
    assert f"chmod 600 {exposed}" in line


def test_an_unreadable_key_file(keys: Keys, tmp_path: Path) -> None:
    locked = tmp_path / "locked.key"
    locked.write_bytes(keys.cluster.read_bytes())
    locked.chmod(0o000)
    result = run_script_unprivileged("peers", "--cluster-key", str(locked), "--peer", "127.0.0.1:1")
    assert result.code == 3
    assert _one_error_line(result.err) == (
        f"qchan: error: cannot read the cluster key file {locked}: permission denied"
    )


def test_a_directory_is_not_a_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    result = run_main(capsys, "peers", "--cluster-key", str(tmp_path), "--peer", "127.0.0.1:1")
    assert result.code == 3
    assert "not a regular file" in _one_error_line(result.err)


def test_the_wrong_kind_of_key(capsys: pytest.CaptureFixture[str], keys: Keys) -> None:
    result = run_main(capsys, "peers", "--cluster-key", str(keys.node), "--peer", "127.0.0.1:1")
    assert result.code == 3
    assert _one_error_line(result.err) == (
        f"qchan: error: {keys.node} holds a qchan node key, not a cluster key"
    )
    result = run_main(
        capsys, "recv", "x", "--cluster-key", str(keys.cluster), "--key", str(keys.cluster)
    )
    assert result.code == 3
    assert "holds a qchan cluster key, not a node key" in _one_error_line(result.err)


def test_environment_variables_name_the_key_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys
) -> None:
    monkeypatch.setenv("QCHAN_CLUSTER_KEY", str(tmp_path / "env-cluster.key"))
    result = run_main(capsys, "peers", "--peer", "127.0.0.1:1")
    assert result.code == 3
    assert "no cluster key file at " + str(tmp_path / "env-cluster.key") in result.err
    result = run_main(capsys, "peers", "--peer", "127.0.0.1:1", "--cluster-key", "/nonexistent")
    assert "no cluster key file at /nonexistent" in result.err  # a flag wins over the variable
    monkeypatch.setenv("QCHAN_CLUSTER_KEY", str(keys.cluster))
    monkeypatch.setenv("QCHAN_KEY", str(tmp_path / "env-node.key"))
    result = run_main(capsys, "peers", "--peer", "127.0.0.1:1")
    assert result.code == 3
    assert "no node key file at " + str(tmp_path / "env-node.key") in result.err


# --- addresses, values, specs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["peers", "--peer", "nowhere"], "--peer"),
        (["send", "jobs", "1", "--peer", "10.0.0.1:99999"], "--peer"),
        (["recv", "jobs", "--peer", "::1:80"], "--peer"),
        (["node", "start", "--listen", "localhost"], "--listen"),
        (["node", "start", "--listen", "127.0.0.1:0", "--peer", "1.2.3:4"], "--peer"),
    ],
)
def test_a_bad_address_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], keys: Keys, command: list[str], option: str
) -> None:
    result = run_main(capsys, *command, "--cluster-key", str(keys.cluster))
    assert result.code == 2
    line = _one_error_line(result.err)
    assert line.startswith(f"qchan: error: {option}: bad address ")


@pytest.mark.parametrize("value", ["{bad", "", "[1, 2", "'single'", "undefined"])
def test_invalid_json_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], keys: Keys, value: str
) -> None:
    result = run_main(
        capsys, "send", "jobs", value, "--cluster-key", str(keys.cluster), "--peer", "127.0.0.1:1"
    )
    assert result.code == 2
    assert _one_error_line(result.err).startswith("qchan: error: VALUE is not valid JSON: ")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("jobs:x", "CAPACITY must be an integer >= 0 or 'inf'"),
        ("jobs:-1", "CAPACITY must be an integer >= 0 or 'inf'"),
        ("jobs:1.5", "CAPACITY must be an integer >= 0 or 'inf'"),
        (":4", "expected NAME[:CAPACITY]"),
        ("a@b", "expected NAME[:CAPACITY]"),
    ],
)
def test_a_bad_channel_spec_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], keys: Keys, spec: str, why: str
) -> None:
    result = run_main(
        capsys, "node", "start", "--cluster-key", str(keys.cluster), "--channel", spec
    )
    assert result.code == 2
    line = _one_error_line(result.err)
    assert line.startswith(f"qchan: error: bad --channel {spec!r}: ")
    assert why in line


def test_a_channel_given_twice(capsys: pytest.CaptureFixture[str], keys: Keys) -> None:
    result = run_main(
        capsys, "node", "start", "--cluster-key", str(keys.cluster),
        "--channel", "jobs", "--channel", "jobs:3",
    )  # fmt: skip
    assert result.code == 2
    assert "given twice" in _one_error_line(result.err)


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("app", 2, "bad --run 'app': expected MODULE:FUNCTION"),
        ("app:", 2, "bad --run 'app:': expected MODULE:FUNCTION"),
        ("no_such_module_xyz:main", 3, "no module named 'no_such_module_xyz'"),
        ("app:missing", 3, "app has no attribute 'missing'"),
        ("app:not_async", 3, "not_async is an object of type int, not an async callable"),
        ("app:sync_function", 3, "sync_function is a function, not an async callable"),
    ],
)
def test_a_bad_run_target(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    keys: Keys,
    target: str,
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(HERE)  # app.py is found in the current directory, as with python -m
    monkeypatch.syspath_prepend(str(HERE))
    result = run_main(capsys, "node", "start", "--cluster-key", str(keys.cluster), "--run", target)
    assert result.code == code
    assert message in _one_error_line(result.err)


def test_an_address_in_use(capsys: pytest.CaptureFixture[str], keys: Keys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = run_main(
            capsys, "node", "start", "--cluster-key", str(keys.cluster),
            "--no-discovery", "--listen", address,
        )  # fmt: skip
    assert result.code == 3
    line = _one_error_line(result.err)
    assert f"cannot listen on {address}" in line
    assert "address already in use" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["recv", "jobs", "-n", "-1"], "COUNT must be >= 0"),
        (["recv", "jobs", "-n", "many"], "not an integer"),
        (["send", "jobs", "1", "--timeout", "soon"], "not a number of seconds"),
        (["peers", "--wait", "-2"], "seconds must be >= 0"),
        (["node", "start", "--backend", "curio"], "invalid choice: 'curio'"),
        (["node", "start", "--busy-poll", "-1"], "seconds must be >= 0"),
        (["node", "start", "--busy-poll", "0.5"], "--busy-poll: at most 0.01 seconds: '0.5'"),
        (["send", "jobs"], "the following arguments are required: VALUE"),
    ],
)
def test_argparse_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    result = run_main(capsys, *argv)
    assert result.code == 2
    assert message in result.err


# --- values as JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ({"id": 7, "tags": ["a", "b"]}, '{"id": 7, "tags": ["a", "b"]}'),
        ((1, 2.5, None, True), "[1, 2.5, null, true]"),
        ("héllo", '"héllo"'),
        (b"\x00\xff", '{"$repr": "b\'\\\\x00\\\\xff\'"}'),
        ({1: "one"}, '{"$repr": "{1: \'one\'}"}'),
        (float("inf"), '{"$repr": "inf"}'),
        ({"s": {3}}, '{"s": {"$repr": "{3}"}}'),
    ],
)
def test_json_line(value: object, line: str) -> None:
    assert json_line(value) == line


def test_json_line_of_a_very_deep_value() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    assert json_line(deep) == '{"$repr": "<a list nested too deeply to print>"}'
