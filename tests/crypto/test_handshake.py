"""qchan's handshake, used as the protocol layer will: the happy path and the calling rules."""

from __future__ import annotations

from typing import Any

import pytest

from qchan import AuthenticationError, MessageTooLarge
from qchan.crypto import (
    MAX_MESSAGE_LEN,
    MAX_PAYLOAD_LEN,
    ClusterKey,
    NodeKey,
    NoiseHandshake,
)
from tests.crypto._helpers import (
    CLUSTER_KEY,
    INITIATOR_HELLO,
    INITIATOR_KEY,
    RESPONDER_HELLO,
    RESPONDER_KEY,
    complete,
    make_pair,
)


def test_handshake_completes_with_both_hellos_and_keys() -> None:
    pair = make_pair()
    message1, message2, message3 = complete(pair)
    initiator, responder = pair.initiator, pair.responder
    assert len(message1) == 48
    assert len(message2) == 96 + len(RESPONDER_HELLO)
    assert len(message3) == 64 + len(INITIATOR_HELLO)
    assert initiator.complete
    assert responder.complete
    assert initiator.remote_static == RESPONDER_KEY.public
    assert responder.remote_static == INITIATOR_KEY.public
    assert initiator.remote_payload == RESPONDER_HELLO
    assert responder.remote_payload == INITIATOR_HELLO
    assert initiator.handshake_hash == responder.handshake_hash
    assert len(initiator.handshake_hash) == 64


def test_transport_both_ways() -> None:
    pair = make_pair()
    complete(pair)
    ours, theirs = pair.initiator.transport(), pair.responder.transport()
    assert ours.handshake_hash == theirs.handshake_hash == pair.initiator.handshake_hash
    for size in (0, 1, 100, 65519):
        assert theirs.decrypt(ours.encrypt(b"i" * size)) == b"i" * size
        assert ours.decrypt(theirs.encrypt(b"r" * size)) == b"r" * size
    assert ours.send_nonce == ours.receive_nonce == 4


def test_fresh_ephemerals_make_distinct_sessions() -> None:
    hashes = set()
    for _ in range(3):
        initiator, responder = (
            NoiseHandshake(initiator=role, static_key=key, cluster_key=CLUSTER_KEY, payload=b"")
            for role, key in ((True, INITIATOR_KEY), (False, RESPONDER_KEY))
        )
        message2 = responder.receive(initiator.start())
        assert message2 is not None
        message3 = initiator.receive(message2)
        assert message3 is not None
        responder.receive(message3)
        assert initiator.handshake_hash == responder.handshake_hash
        hashes.add(initiator.handshake_hash)
    assert len(hashes) == 3


def test_transport_only_once() -> None:
    pair = make_pair()
    complete(pair)
    pair.initiator.transport()
    with pytest.raises(RuntimeError, match="already called"):
        pair.initiator.transport()


def test_results_need_completion() -> None:
    pair = make_pair()
    pair.responder.receive(pair.initiator.start())
    for handshake in (pair.initiator, pair.responder):
        assert not handshake.complete
        with pytest.raises(RuntimeError, match="not complete"):
            _ = handshake.remote_static
        with pytest.raises(RuntimeError, match="not complete"):
            _ = handshake.remote_payload
        with pytest.raises(RuntimeError, match="not complete"):
            _ = handshake.handshake_hash
        with pytest.raises(RuntimeError, match="not complete"):
            handshake.transport()


def test_calls_out_of_order_are_bugs() -> None:
    pair = make_pair()
    with pytest.raises(RuntimeError, match="start"):
        pair.responder.start()
    with pytest.raises(RuntimeError, match="no handshake message is expected"):
        pair.initiator.receive(bytes(96))  # before start()
    message1 = pair.initiator.start()
    with pytest.raises(RuntimeError, match="start"):
        pair.initiator.start()
    message2 = pair.responder.receive(message1)
    assert message2 is not None
    message3 = pair.initiator.receive(message2)
    assert message3 is not None
    pair.responder.receive(message3)
    with pytest.raises(RuntimeError, match="no handshake message is expected"):
        pair.initiator.receive(bytes(64))
    with pytest.raises(RuntimeError, match="no handshake message is expected"):
        pair.responder.receive(bytes(64))


def test_largest_payload_fills_a_noise_message() -> None:
    initiator, responder = (
        NoiseHandshake(
            initiator=role, static_key=key, cluster_key=CLUSTER_KEY, payload=b"p" * MAX_PAYLOAD_LEN
        )
        for role, key in ((True, INITIATOR_KEY), (False, RESPONDER_KEY))
    )
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    assert len(message2) == MAX_MESSAGE_LEN
    message3 = initiator.receive(message2)
    assert message3 is not None
    responder.receive(message3)
    assert responder.remote_payload == b"p" * MAX_PAYLOAD_LEN


def test_payload_too_large_is_refused_up_front() -> None:
    with pytest.raises(MessageTooLarge, match="at most 65439"):
        NoiseHandshake(
            initiator=False,
            static_key=RESPONDER_KEY,
            cluster_key=CLUSTER_KEY,
            payload=bytes(MAX_PAYLOAD_LEN + 1),
        )


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [([b"short"], None), (None, bytes(31)), ([bytes(32), bytes(33)], None), ([32], None)],
)
def test_key_arguments_are_validated(trusted: list[Any] | None, expected: bytes | None) -> None:
    with pytest.raises((ValueError, TypeError), match=r"32-byte public keys|bytes-like"):
        NoiseHandshake(
            initiator=True,
            static_key=INITIATOR_KEY,
            cluster_key=CLUSTER_KEY,
            payload=b"",
            trusted=trusted,
            expected_remote_key=expected,
        )


def test_trusted_and_expected_keys_that_match_pass() -> None:
    pair = make_pair(
        initiator_trusted={RESPONDER_KEY.public},
        responder_trusted=[INITIATOR_KEY.public, NodeKey.generate().public],
        expected_remote_key=RESPONDER_KEY.public,
    )
    complete(pair)
    assert pair.initiator.complete
    assert pair.responder.complete


def test_a_failed_handshake_stays_failed() -> None:
    pair = make_pair(responder_cluster_key=ClusterKey.generate())
    message1 = pair.initiator.start()
    with pytest.raises(AuthenticationError):
        pair.responder.receive(message1)
    with pytest.raises(AuthenticationError, match="already failed"):
        pair.responder.receive(message1)
    assert not pair.responder.complete
