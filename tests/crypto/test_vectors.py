"""The published Noise test vectors in ../shared/noise-vectors (cacophony and snow).

Every vector of the two files is for a pattern the engine supports, so every one must run: the
counts below make a filtering bug fail loudly instead of passing vacuously.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

import pytest

from qchan.crypto.noise import CipherState, HandshakeState, KeyPair, pattern_from_name

VECTOR_DIR: Final = Path(__file__).parents[2].parent / "shared" / "noise-vectors"
EXPECTED: Final = {
    "cacophony-25519-chachapoly-blake2b.json": 59,
    "snow-25519-chachapoly-blake2b.json": 51,
}
UNSUPPORTED: Final = ("fallback", "hfs")  # modifiers the engine does not implement


def _protocol_name(vector: dict[str, Any]) -> str:
    return str(vector.get("protocol_name") or vector["name"])


def _load() -> list[tuple[str, dict[str, Any]]]:
    vectors = []
    for file in sorted(VECTOR_DIR.glob("*.json")):
        for index, vector in enumerate(json.loads(file.read_text())["vectors"]):
            name = _protocol_name(vector)
            if not any(modifier in name for modifier in UNSUPPORTED):
                vectors.append((f"{file.name}:{index}:{name}", vector))
    return vectors


VECTORS: Final = _load() if VECTOR_DIR.is_dir() else []


def _require_vector_dir() -> None:
    if VECTOR_DIR.is_dir():
        return
    message = f"Noise test vectors not found at {VECTOR_DIR}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must run them")
    pytest.skip(message)


def test_every_vector_is_collected() -> None:
    _require_vector_dir()
    for file, count in EXPECTED.items():
        assert sum(1 for vector_id, _ in VECTORS if vector_id.startswith(file + ":")) == count
    assert len(VECTORS) == sum(EXPECTED.values()) == 110
    names = {_protocol_name(vector) for _, vector in VECTORS}
    xx_family = {name for name in names if name.startswith("Noise_XX")}
    assert len(xx_family) >= 7  # XX, XX1, XXpsk3, XXpsk0+psk1, +psk2, +psk3, +psk1+psk2+psk3
    assert {name.split("_")[1][:1] for name in names} == {"N", "K", "X", "I"}


def _key(vector: dict[str, Any], field: str) -> bytes | None:
    return bytes.fromhex(vector[field]) if field in vector else None


def _pair(vector: dict[str, Any], field: str) -> KeyPair | None:
    private = _key(vector, field)
    return None if private is None else KeyPair.from_private(private)


def _side(vector: dict[str, Any], prefix: str, *, initiator: bool) -> HandshakeState:
    return HandshakeState(
        pattern_from_name(_protocol_name(vector)),
        initiator=initiator,
        prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
        static=_pair(vector, f"{prefix}_static"),
        remote_static=_key(vector, f"{prefix}_remote_static"),
        psks=[bytes.fromhex(psk) for psk in vector.get(f"{prefix}_psks", [])],
        ephemeral=_pair(vector, f"{prefix}_ephemeral"),
    )


def run_vector(vector: dict[str, Any]) -> int:
    """Replay one vector on both sides, asserting every byte; return the messages checked."""
    pattern = pattern_from_name(_protocol_name(vector))
    sides = {
        True: _side(vector, "init", initiator=True),
        False: _side(vector, "resp", initiator=False),
    }
    checked = 0
    for index, message in enumerate(vector["messages"]):
        payload, ciphertext = (
            bytes.fromhex(message["payload"]),
            bytes.fromhex(message["ciphertext"]),
        )
        # Messages alternate, initiator first; in a one-way pattern only the initiator sends.
        from_initiator = pattern.one_way or index % 2 == 0
        sender, receiver = sides[from_initiator], sides[not from_initiator]
        if not sender.finished:
            assert sender.write_message(payload) == ciphertext, f"handshake message {index}"
            assert receiver.read_message(ciphertext) == payload
        else:
            send: CipherState = sender.transport_ciphers()[0]
            receive: CipherState = receiver.transport_ciphers()[1]
            assert send.encrypt_with_ad(b"", payload) == ciphertext, f"transport message {index}"
            assert receive.decrypt_with_ad(b"", ciphertext) == payload
        checked += 1
    assert sides[True].finished
    assert sides[False].finished
    if "handshake_hash" in vector:
        expected = bytes.fromhex(vector["handshake_hash"])
        assert sides[True].handshake_hash == sides[False].handshake_hash == expected
    return checked


@pytest.mark.parametrize("vector", [v for _, v in VECTORS], ids=[i for i, _ in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    assert run_vector(vector) == len(vector["messages"]) >= 2


def test_handshake_hashes_are_checked_where_given() -> None:
    _require_vector_dir()
    with_hash = [vector for _, vector in VECTORS if "handshake_hash" in vector]
    assert len(with_hash) == 59  # all of cacophony's


def test_missing_vectors_skip_locally_and_fail_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(f"{__name__}.VECTOR_DIR", tmp_path / "missing")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        _require_vector_dir()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run them"):
        _require_vector_dir()
