"""Node and cluster keys, and their files."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest

from qchan.crypto import ClusterKey, NodeKey, fingerprint

KINDS = [NodeKey, ClusterKey]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip_with_mode_0600(
    kind: type[NodeKey | ClusterKey], tmp_path: Path
) -> None:
    key = kind.generate()
    path = tmp_path / "key"
    key.save(path)
    assert mode(path) == 0o600
    assert kind.load(path) == key
    assert kind.load(str(path)) == key
    assert os.listdir(tmp_path) == ["key"]  # no temporary file left behind


def test_loaded_node_key_has_the_same_identity(tmp_path: Path) -> None:
    key = NodeKey.generate()
    key.save(tmp_path / "node.key")
    loaded = NodeKey.load(tmp_path / "node.key")
    assert loaded.public == key.public
    assert loaded.fingerprint == key.fingerprint
    assert loaded.private_bytes() == key.private_bytes()


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ClusterKey.generate().save(tmp_path / "cluster.key")
    finally:
        os.umask(old)
    assert mode(tmp_path / "cluster.key") == 0o600


@pytest.mark.parametrize("kind", KINDS)
def test_save_refuses_to_overwrite_unless_asked(
    kind: type[NodeKey | ClusterKey], tmp_path: Path
) -> None:
    path = tmp_path / "key"
    first, second = kind.generate(), kind.generate()
    first.save(path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        second.save(path)
    assert kind.load(path) == first
    second.save(path, overwrite=True)
    assert kind.load(path) == second
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["key"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o601, 0o666])
def test_a_key_file_others_can_access_is_refused(
    kind: type[NodeKey | ClusterKey], bad_mode: int, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    kind.generate().save(path)
    path.chmod(bad_mode)
    with pytest.raises(PermissionError, match=re.escape(f"chmod 600 {path}")) as info:
        kind.load(path)
    assert f"{bad_mode:04o}" in str(info.value)
    path.chmod(0o600)
    kind.load(path)
    path.chmod(0o400)  # read-only for the owner is fine
    kind.load(path)


def test_wrong_kind_is_refused(tmp_path: Path) -> None:
    ClusterKey.generate().save(tmp_path / "cluster.key")
    NodeKey.generate().save(tmp_path / "node.key")
    with pytest.raises(ValueError, match="holds a qchan cluster key, not a node key"):
        NodeKey.load(tmp_path / "cluster.key")
    with pytest.raises(ValueError, match="holds a qchan node key, not a cluster key"):
        ClusterKey.load(tmp_path / "node.key")


B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a qchan node key file"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n", "not a qchan node key file"),
        (b"\xff\xfe binary", "not text"),
        (b"qchan node key v1\n", "is 0 bytes, 32 expected"),
        (b"qchan node key v1\nnot base64!\n", "not valid base64"),
        (b"qchan node key v1\n" + base64.b64encode(bytes(31)) + b"\n", "is 31 bytes, 32 expected"),
        (b"qchan node key v1\n" + base64.b64encode(bytes(33)) + b"\n", "is 33 bytes, 32 expected"),
        (f"qchan node key v1\n{B64}\nextra\n".encode(), "unexpected content"),
        (f"qchan node key v1\n{B64}\n".encode() + b"\n" * 5000, "unexpected content"),
        (f"qchan node key v2\n{B64}\n".encode(), "not a qchan node key file"),
    ],
)
def test_corrupt_files_are_refused(content: bytes, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        NodeKey.load(path)
    assert str(path) in str(info.value)


def test_the_file_format_is_a_header_and_base64(tmp_path: Path) -> None:
    key = ClusterKey.from_bytes(bytes(range(32)))
    key.save(tmp_path / "cluster.key")
    expected = f"qchan cluster key v1\n{base64.b64encode(bytes(range(32))).decode()}\n"
    assert (tmp_path / "cluster.key").read_text() == expected
    # Windows line endings and stray whitespace, as an editor may leave them, still load.
    (tmp_path / "crlf.key").write_text(expected.replace("\n", " \r\n"))
    (tmp_path / "crlf.key").chmod(0o600)
    assert ClusterKey.load(tmp_path / "crlf.key") == key


@pytest.mark.parametrize(("kind", "command"), [(NodeKey, "keygen"), (ClusterKey, "cluster-key")])
def test_missing_file(kind: type[NodeKey | ClusterKey], command: str, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.key"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{path} (make one with `qchan {command}")
    ):
        kind.load(path)


def test_saving_into_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "node.key"
    with pytest.raises(FileNotFoundError, match=re.escape(f"cannot save {path}: no directory")):
        NodeKey.generate().save(path)


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not a regular file"):
        NodeKey.load(tmp_path / "dir")


def test_repr_hides_secrets() -> None:
    node, cluster = NodeKey.generate(), ClusterKey.generate()
    for secret, text in ((node.private_bytes(), repr(node)), (bytes(cluster), repr(cluster))):
        for encoded in (secret.hex(), base64.b64encode(secret).decode(), str(secret)):
            assert encoded[:8] not in text
    assert repr(node) == f"NodeKey(fingerprint={node.fingerprint!r})"
    assert repr(cluster) == str(cluster) == "ClusterKey(<secret>)"


def test_fingerprint_is_short_stable_and_printable() -> None:
    key = NodeKey.from_bytes(bytes(range(32)))
    # Pinned: a fingerprint must never change between versions for the same key.
    assert key.public.hex() == "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f"
    assert key.fingerprint == "r5am-llnw-r4sw-esxf"
    assert re.fullmatch(r"[a-z2-7]{4}(-[a-z2-7]{4}){3}", NodeKey.generate().fingerprint)
    assert fingerprint(key.public) == key.fingerprint
    with pytest.raises(ValueError, match="32 bytes"):
        fingerprint(b"short")


@pytest.mark.parametrize("kind", KINDS)
def test_from_bytes_validates_length(kind: type[NodeKey | ClusterKey]) -> None:
    for size in (0, 31, 33, 64):
        with pytest.raises(ValueError, match=f"32 bytes, got {size}"):
            kind.from_bytes(bytes(size))
    with pytest.raises(TypeError):
        kind.from_bytes("x" * 32)  # type: ignore[arg-type]
    assert kind.from_bytes(bytearray(32)) == kind.from_bytes(bytes(32))


def test_cluster_key_bytes_round_trip() -> None:
    key = ClusterKey.generate()
    raw = bytes(key)
    assert len(raw) == 32
    assert ClusterKey.from_bytes(raw) == key
    assert ClusterKey.generate() != key


def test_equality_and_hashing_by_value() -> None:
    node = NodeKey.generate()
    assert node == NodeKey.from_bytes(node.private_bytes())
    assert len({node, NodeKey.from_bytes(node.private_bytes()), NodeKey.generate()}) == 2
    cluster = ClusterKey.generate()
    assert len({cluster, ClusterKey.from_bytes(bytes(cluster))}) == 1
    assert node != cluster
    assert len(node.public) == 32
