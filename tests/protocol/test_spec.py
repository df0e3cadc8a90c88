"""Every hex example in docs/protocol.md is re-derived here from the code, so the
specification cannot drift from the implementation.

An example in the document is a fenced ``hex`` block preceded by ``<!-- example: NAME -->``;
NAME must be a key of :data:`EXAMPLES`, and every key must appear in the document.
Run ``python -m tests.protocol.test_spec`` to print the blocks when the protocol changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgpack
import pytest

from qchan import _errors
from qchan.crypto import MAX_PAYLOAD_LEN, MAX_PLAINTEXT_LEN, PROTOCOL_NAME, NoiseHandshake
from qchan.protocol import ConnectionConfig, GoawayReason, Kind, Mode
from qchan.protocol.frames import PART_OVERHEAD, encode_frame

from ._helpers import (
    CLUSTER_KEY,
    INITIATOR_EPHEMERAL,
    INITIATOR_HELLO,
    INITIATOR_KEY,
    RESPONDER_EPHEMERAL,
    RESPONDER_HELLO,
    RESPONDER_KEY,
    establish,
    split_messages,
)

DOC: Final = Path(__file__).parents[2] / "docs" / "protocol.md"
_BLOCK: Final = re.compile(r"<!-- example: ([\w-]+) -->\s*```hex\n(.*?)```", re.S)


def _handshake() -> tuple[bytes, bytes, bytes, bytes]:
    """Messages 1-3 and the initiator's first transport message (a PING), fixed keys."""
    initiator = NoiseHandshake(
        initiator=True,
        static_key=INITIATOR_KEY,
        cluster_key=CLUSTER_KEY,
        payload=INITIATOR_HELLO.encode(),
        _ephemeral=INITIATOR_EPHEMERAL,
    )
    responder = NoiseHandshake(
        initiator=False,
        static_key=RESPONDER_KEY,
        cluster_key=CLUSTER_KEY,
        payload=RESPONDER_HELLO.encode(),
        _ephemeral=RESPONDER_EPHEMERAL,
    )
    message_1 = initiator.start()
    message_2 = responder.receive(message_1)
    assert message_2 is not None
    message_3 = initiator.receive(message_2)
    assert message_3 is not None
    assert responder.receive(message_3) is None
    ping = initiator.transport().encrypt(encode_frame([Kind.PING, 1]))
    return message_1, message_2, message_3, ping


def _wire(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


_BIG_DELIVER: Final = [Kind.DELIVER, 5, bytes(100_000)]


def _first_part() -> bytes:
    """The first 16 bytes of the first PART frame of a 100 000-byte DELIVER value."""
    data = encode_frame(_BIG_DELIVER)
    return encode_frame([Kind.PART, len(data), data[: MAX_PLAINTEXT_LEN - PART_OVERHEAD]])[:16]


EXAMPLES: Final[dict[str, Callable[[], bytes]]] = {
    "key-cluster": lambda: bytes(CLUSTER_KEY),
    "key-initiator-static": INITIATOR_KEY.private_bytes,
    "key-initiator-static-public": lambda: INITIATOR_KEY.public,
    "key-initiator-ephemeral": lambda: INITIATOR_EPHEMERAL,
    "key-responder-static": RESPONDER_KEY.private_bytes,
    "key-responder-static-public": lambda: RESPONDER_KEY.public,
    "key-responder-ephemeral": lambda: RESPONDER_EPHEMERAL,
    "hello-initiator": INITIATOR_HELLO.encode,
    "hello-responder": RESPONDER_HELLO.encode,
    "handshake-message-1": lambda: _wire(_handshake()[0]),
    "handshake-message-2": lambda: _wire(_handshake()[1]),
    "handshake-message-3": lambda: _wire(_handshake()[2]),
    "transport-ping": lambda: _wire(_handshake()[3]),
    "frame-ping": lambda: encode_frame([Kind.PING, 1]),
    "frame-pong": lambda: encode_frame([Kind.PONG, 1]),
    "frame-goaway": lambda: encode_frame([Kind.GOAWAY, GoawayReason.SHUTDOWN, "bye"]),
    "frame-ack": lambda: encode_frame([Kind.ACK, 7]),
    "frame-ack-max": lambda: encode_frame([Kind.ACK, 2**64 - 1]),
    "frame-send": lambda: encode_frame([Kind.SEND, 7, 3, Mode.PLAIN, msgpack.packb("hello")]),
    "frame-recv": lambda: encode_frame([Kind.RECV, 8, 3]),
    "frame-deliver": lambda: encode_frame([Kind.DELIVER, 8, msgpack.packb([1, 2])]),
    "frame-failed": lambda: encode_frame(
        [Kind.FAILED, 9, _errors.PermissionDenied.code, "send-only handle"]
    ),
    "frame-credit": lambda: encode_frame([Kind.CREDIT, 3, 300, 16]),
    "frame-lookup": lambda: encode_frame([Kind.LOOKUP, 1, "jobs"]),
    "frame-part-first-16-bytes": _first_part,
    "frames-two-in-one-plaintext": lambda: (
        encode_frame([Kind.TAKEN, 8]) + encode_frame([Kind.ACK, 7])
    ),
}


def _documented() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for name, body in _BLOCK.findall(DOC.read_text()):
        assert name not in blocks, f"example {name} appears twice"
        blocks[name] = body
    return blocks


def render(data: bytes) -> str:
    """How an example is written in the document: 16 bytes a line, space-separated."""
    lines = [data[i : i + 16].hex(" ") for i in range(0, len(data), 16)]
    return "\n".join(lines) + "\n"


def test_every_example_is_documented_and_every_documented_example_is_derived() -> None:
    assert sorted(_documented()) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_documented_hex_matches_the_code(name: str) -> None:
    documented = bytes.fromhex("".join(_documented()[name].split()))
    assert documented == EXAMPLES[name](), f"docs/protocol.md example {name} is stale"


def test_the_documented_handshake_is_what_connections_exchange() -> None:
    # The Connection uses the same NoiseHandshake, so its message 1 has the same shape, and the
    # documented first PART header is the one Connection.send produces.
    message_1 = _handshake()[0]
    assert len(message_1) == 48
    initiator, responder = establish()
    initiator.send(_BIG_DELIVER)
    first = split_messages(initiator.data_to_send())[0]
    cipher = responder._cipher
    assert cipher is not None
    assert cipher.decrypt(first)[:16] == _first_part()


def _documented_bytes(name: str) -> bytes:
    return bytes.fromhex("".join(_documented()[name].split()))


def test_an_independent_noise_implementation_reproduces_the_documented_handshake() -> None:
    from noise.connection import Keypair, NoiseConnection  # test-only dependency

    def peer(initiator: bool) -> NoiseConnection:
        connection = NoiseConnection.from_name(PROTOCOL_NAME.encode())
        if initiator:
            connection.set_as_initiator()
        else:
            connection.set_as_responder()
        connection.set_psks(_documented_bytes("key-cluster"))
        connection.set_prologue(b"qchan/1")
        side = "initiator" if initiator else "responder"
        static = _documented_bytes(f"key-{side}-static")
        connection.set_keypair_from_private_bytes(Keypair.STATIC, static)
        ephemeral = _documented_bytes(f"key-{side}-ephemeral")
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
        with pytest.warns(UserWarning, match="ephemeral"):  # fixed keys: "for testing"
            connection.start_handshake()
        return connection

    initiator, responder = peer(True), peer(False)
    message_1 = bytes(initiator.write_message(b""))
    assert _wire(message_1) == _documented_bytes("handshake-message-1")
    responder.read_message(message_1)
    message_2 = bytes(responder.write_message(_documented_bytes("hello-responder")))
    assert _wire(message_2) == _documented_bytes("handshake-message-2")
    assert bytes(initiator.read_message(message_2)) == _documented_bytes("hello-responder")
    message_3 = bytes(initiator.write_message(_documented_bytes("hello-initiator")))
    assert _wire(message_3) == _documented_bytes("handshake-message-3")
    assert bytes(responder.read_message(message_3)) == _documented_bytes("hello-initiator")
    ping = bytes(initiator.encrypt(_documented_bytes("frame-ping")))
    assert _wire(ping) == _documented_bytes("transport-ping")


def test_the_documented_tables_match_the_code() -> None:
    text = DOC.read_text()
    for kind in Kind:
        assert f"| 0x{kind:02X} | `{kind.name}` |" in text, kind
    for reason in GoawayReason:
        assert f"| {reason} | `{reason.name}` |" in text, reason
    for error in (
        _errors.QchanError,
        _errors.ChannelClosed,
        _errors.WouldBlock,
        _errors.PeerLost,
        _errors.DeliveryUncertain,
        _errors.AuthenticationError,
        _errors.ProtocolError,
        _errors.NotFound,
        _errors.PermissionDenied,
        _errors.MessageTooLarge,
    ):
        assert f"| {error.code} | `{error.__name__}` |" in text, error
    assert PROTOCOL_NAME in text
    assert str(MAX_PAYLOAD_LEN) in text
    assert str(MAX_PLAINTEXT_LEN) in text
    assert f"{ConnectionConfig().max_frame_size:,}".replace(",", " ") in text
    assert "<!-- operation semantics: to be completed with the node -->" in text


if __name__ == "__main__":
    for name, make in EXAMPLES.items():
        print(f"<!-- example: {name} -->\n```hex\n{render(make())}```\n")
