"""Fixed keys, handshake pairs and the X25519 low-order points shared by the crypto tests."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from qchan.crypto import ClusterKey, NodeKey, NoiseHandshake

# Fixed, distinct keys so that every run produces the same bytes.
INITIATOR_KEY: Final = NodeKey.from_bytes(bytes(range(1, 33)))
RESPONDER_KEY: Final = NodeKey.from_bytes(bytes(range(33, 65)))
STRANGER_KEY: Final = NodeKey.from_bytes(bytes(range(65, 97)))
CLUSTER_KEY: Final = ClusterKey.from_bytes(bytes(range(100, 132)))
INITIATOR_EPHEMERAL: Final = bytes(range(140, 172))
RESPONDER_EPHEMERAL: Final = bytes(range(180, 212))
INITIATOR_HELLO: Final = b"initiator hello"
RESPONDER_HELLO: Final = b"responder hello, a little longer"

# Every X25519 public key whose product with any clamped scalar is zero: the points of small
# order (0, 1, the two of order 8, p-1) and their non-canonical encodings (p, p+1, and the same
# with the ignored top bit set), as listed by Bernstein and in libsodium's blocklist.
LOW_ORDER_POINTS: Final = tuple(
    bytes.fromhex(point)
    for point in (
        "0000000000000000000000000000000000000000000000000000000000000000",  # 0
        "0100000000000000000000000000000000000000000000000000000000000000",  # 1
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1
        "0000000000000000000000000000000000000000000000000000000000000080",  # 0, top bit
        "0100000000000000000000000000000000000000000000000000000000000080",  # 1, top bit
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",  # order 8, top bit
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",  # order 8, top bit
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # p - 1, top bit
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # p, top bit
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # p + 1, top bit
    )
)


@dataclass
class Pair:
    """An initiator and a responder, not started."""

    initiator: NoiseHandshake
    responder: NoiseHandshake


def make_pair(
    *,
    initiator_key: NodeKey = INITIATOR_KEY,
    responder_key: NodeKey = RESPONDER_KEY,
    initiator_cluster_key: ClusterKey = CLUSTER_KEY,
    responder_cluster_key: ClusterKey = CLUSTER_KEY,
    initiator_trusted: Collection[bytes] | None = None,
    responder_trusted: Collection[bytes] | None = None,
    expected_remote_key: bytes | None = None,
) -> Pair:
    """A deterministic pair (fixed ephemerals), configurable for each attack."""
    return Pair(
        initiator=NoiseHandshake(
            initiator=True,
            static_key=initiator_key,
            cluster_key=initiator_cluster_key,
            payload=INITIATOR_HELLO,
            trusted=initiator_trusted,
            expected_remote_key=expected_remote_key,
            _ephemeral=INITIATOR_EPHEMERAL,
        ),
        responder=NoiseHandshake(
            initiator=False,
            static_key=responder_key,
            cluster_key=responder_cluster_key,
            payload=RESPONDER_HELLO,
            trusted=responder_trusted,
            _ephemeral=RESPONDER_EPHEMERAL,
        ),
    )


def complete(pair: Pair) -> tuple[bytes, bytes, bytes]:
    """Run the whole handshake; return messages 1, 2 and 3."""
    message1 = pair.initiator.start()
    message2 = pair.responder.receive(message1)
    assert message2 is not None
    message3 = pair.initiator.receive(message2)
    assert message3 is not None
    assert pair.responder.receive(message3) is None
    return message1, message2, message3


def flip(message: bytes, bit: int) -> bytes:
    """``message`` with one bit inverted (bit 0 is the low bit of byte 0)."""
    data = bytearray(message)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def receiver_of(number: int) -> tuple[NoiseHandshake, bytes]:
    """A fresh handshake about to receive message ``number`` (1-3), and the genuine message."""
    pair = make_pair()
    message1 = pair.initiator.start()
    if number == 1:
        return pair.responder, message1
    message2 = pair.responder.receive(message1)
    assert message2 is not None
    if number == 2:
        return pair.initiator, message2
    message3 = pair.initiator.receive(message2)
    assert message3 is not None
    return pair.responder, message3
