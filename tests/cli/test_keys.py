"""``qchan keygen`` and ``qchan cluster-key``: 0600 files, fingerprints, no clobbering."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from qchan import ClusterKey, NodeKey
from tests.cli._helpers import run_main, run_script, run_script_unprivileged


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_private_node_key_and_prints_its_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    result = run_main(capsys, "keygen", "-o", str(path))
    assert result.code == 0, result.err
    assert _mode(path) == 0o600
    assert result.out == NodeKey.load(path).fingerprint + "\n"


def test_cluster_key_writes_a_private_cluster_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.key"
    result = run_main(capsys, "cluster-key", "-o", str(path))
    assert (result.code, result.out, result.err) == (0, "", "")
    assert _mode(path) == 0o600
    ClusterKey.load(path)


@pytest.mark.parametrize("command", ["keygen", "cluster-key"])
def test_an_existing_file_is_kept_unless_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = tmp_path / "key"
    path.write_text("precious\n")
    result = run_main(capsys, command, "-o", str(path))
    assert result.code == 3
    assert result.err == f"qchan: error: {path} already exists; use --force to overwrite it\n"
    assert path.read_text() == "precious\n"
    assert run_main(capsys, command, "-o", str(path), "--force").code == 0
    assert _mode(path) == 0o600
    (NodeKey if command == "keygen" else ClusterKey).load(path)


def test_keygen_force_makes_a_new_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    first = run_main(capsys, "keygen", "-o", str(path)).out
    second = run_main(capsys, "keygen", "-o", str(path), "--force").out
    assert first != second
    assert second.strip() == NodeKey.load(path).fingerprint


def test_a_missing_directory_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_main(capsys, "cluster-key", "-o", str(tmp_path / "no" / "such.key"))
    assert result.code == 3
    assert result.err.startswith("qchan: error: cannot write ")
    assert result.err.count("\n") == 1


def test_an_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        result = run_script_unprivileged("keygen", "-o", str(tmp_path / "node.key"))
    finally:
        tmp_path.chmod(0o700)
    assert result.code == 3
    assert "permission denied" in result.err


def test_the_output_option_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(capsys, "keygen")
    assert result.code == 2
    assert "-o/--output" in result.err


def test_keygen_as_a_script(tmp_path: Path) -> None:
    result = run_script("keygen", "-o", str(tmp_path / "node.key"))
    assert result.code == 0, result.err
    assert result.out.strip() == NodeKey.load(tmp_path / "node.key").fingerprint
    assert _mode(tmp_path / "node.key") == 0o600
