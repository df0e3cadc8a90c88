"""Real attacks on the sans-IO handshake and transport cipher; each must fail cleanly.

"Cleanly" means: our exception (AuthenticationError in the handshake, ProtocolError in
transport), nothing produced to send, and the handshake left failed.
"""

from __future__ import annotations

import pytest

from qchan import AuthenticationError, MessageTooLarge, ProtocolError
from qchan.crypto import (
    PROLOGUE,
    PROTOCOL_NAME,
    ClusterKey,
    NoiseHandshake,
    TransportCipher,
)
from qchan.crypto.noise import MAX_NONCE, CipherState, SymmetricState
from tests.crypto._helpers import (
    CLUSTER_KEY,
    INITIATOR_KEY,
    LOW_ORDER_POINTS,
    RESPONDER_KEY,
    STRANGER_KEY,
    complete,
    flip,
    make_pair,
    receiver_of,
)


def assert_refused(handshake: NoiseHandshake, message: bytes, match: str) -> None:
    """``message`` raises AuthenticationError, produces nothing, and leaves ``handshake`` dead."""
    produced: list[bytes | None] = []
    with pytest.raises(AuthenticationError, match=match):
        produced.append(handshake.receive(message))
    assert produced == []
    assert not handshake.complete
    with pytest.raises(AuthenticationError, match="already failed"):
        handshake.receive(message)


def messages() -> tuple[bytes, bytes, bytes]:
    return complete(make_pair())


# -- keys ----------------------------------------------------------------------------------------


def test_wrong_cluster_key_gets_no_reply() -> None:
    pair = make_pair(responder_cluster_key=ClusterKey.generate())
    assert_refused(pair.responder, pair.initiator.start(), "does not hold the cluster key")


def test_initiator_refuses_an_untrusted_responder_before_message_3() -> None:
    pair = make_pair(responder_key=STRANGER_KEY, initiator_trusted={RESPONDER_KEY.public})
    message2 = pair.responder.receive(pair.initiator.start())
    assert message2 is not None
    assert_refused(pair.initiator, message2, "message 2: peer key .* is not trusted")


def test_responder_refuses_an_untrusted_initiator() -> None:
    pair = make_pair(initiator_key=STRANGER_KEY, responder_trusted={INITIATOR_KEY.public})
    message2 = pair.responder.receive(pair.initiator.start())
    assert message2 is not None
    message3 = pair.initiator.receive(message2)
    assert message3 is not None
    assert_refused(pair.responder, message3, "message 3: peer key .* is not trusted")
    with pytest.raises(RuntimeError):
        pair.responder.transport()


def test_an_empty_trusted_set_trusts_nobody() -> None:
    pair = make_pair(initiator_trusted=set())
    message2 = pair.responder.receive(pair.initiator.start())
    assert message2 is not None
    assert_refused(pair.initiator, message2, "not trusted")


def test_dialler_refuses_an_unexpected_listener_before_revealing_itself() -> None:
    pair = make_pair(responder_key=STRANGER_KEY, expected_remote_key=RESPONDER_KEY.public)
    message2 = pair.responder.receive(pair.initiator.start())
    assert message2 is not None
    assert_refused(pair.initiator, message2, "is not the expected key")


# -- tampering with handshake messages -----------------------------------------------------------


@pytest.mark.parametrize("number", [1, 2, 3])
def test_a_bit_flip_anywhere_in_a_handshake_message_is_refused(number: int) -> None:
    _, original = receiver_of(number)
    # Every byte, a different bit of each; plus every bit of the first and last bytes.
    bits = {8 * i + i % 8 for i in range(len(original))}
    bits |= set(range(8)) | set(range(8 * len(original) - 8, 8 * len(original)))
    for bit in sorted(bits):
        receiver, _ = receiver_of(number)
        assert_refused(receiver, flip(original, bit), f"at message {number}")


@pytest.mark.parametrize("number", [1, 2, 3])
def test_truncated_or_extended_handshake_messages_are_refused(number: int) -> None:
    _, original = receiver_of(number)
    # Every length 0..15 (shorter than a tag), every shorter length, and some longer ones.
    for length in range(len(original)):
        receiver, _ = receiver_of(number)
        assert_refused(receiver, original[:length], f"at message {number}")
    for extra in (b"\x00", b"x" * 16):
        receiver, _ = receiver_of(number)
        assert_refused(receiver, original + extra, f"at message {number}")


@pytest.mark.parametrize("number", [1, 2, 3])
def test_oversized_handshake_messages_are_refused(number: int) -> None:
    receiver, original = receiver_of(number)
    assert_refused(receiver, original + bytes(65536 - len(original)), "more than a Noise")


def test_a_replayed_message_1_makes_a_different_session() -> None:
    # The responder's fresh ephemeral key means a replayed message 1 leads nowhere: the
    # attacker (without the initiator's ephemeral key) cannot read message 2 or write 3.
    message1, message2, message3 = messages()
    responder = NoiseHandshake(
        initiator=False, static_key=RESPONDER_KEY, cluster_key=CLUSTER_KEY, payload=b""
    )
    assert responder.receive(message1) != message2
    assert_refused(responder, message3, "message 3: message failed authentication")


# -- low-order public keys -----------------------------------------------------------------------


def _attacker_message1(ephemeral_public: bytes) -> bytes:
    """Message 1 made by an attacker who holds the cluster key, with any ephemeral key."""
    symmetric = SymmetricState(PROTOCOL_NAME.encode())
    symmetric.mix_hash(PROLOGUE)
    symmetric.mix_key_and_hash(bytes(CLUSTER_KEY))  # psk
    symmetric.mix_hash(ephemeral_public)  # e
    symmetric.mix_key(ephemeral_public)  # e in psk mode
    return ephemeral_public + symmetric.encrypt_and_hash(b"")


def test_the_attacker_message_1_is_genuine() -> None:
    # With an honest ephemeral key the forgery is accepted: the refusals below are really
    # about the low-order key, not about a malformed message.
    pair = make_pair()
    honest = pair.initiator.start()
    assert _attacker_message1(honest[:32]) == honest


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_ephemeral_key_in_message_1(point: bytes) -> None:
    responder = make_pair().responder
    assert_refused(responder, _attacker_message1(point), "message 1: .*low-order point")


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_ephemeral_key_in_message_2(point: bytes) -> None:
    # The ee DH comes before anything in message 2 is authenticated, so the rest of the
    # message need not even be valid: the initiator must stop at the key.
    pair = make_pair()
    message2 = pair.responder.receive(pair.initiator.start())
    assert message2 is not None
    assert_refused(pair.initiator, point + message2[32:], "message 2: .*low-order point")


# -- transport -----------------------------------------------------------------------------------


def _session() -> tuple[TransportCipher, TransportCipher]:
    pair = make_pair()
    complete(pair)
    return pair.initiator.transport(), pair.responder.transport()


def test_tampered_transport_messages_fail() -> None:
    sender, receiver = _session()
    message = sender.encrypt(b"a transport message of some length")
    for bit in range(0, 8 * len(message), 7):
        with pytest.raises(ProtocolError, match="failed authentication"):
            receiver.decrypt(flip(message, bit))
    assert receiver.decrypt(message) == b"a transport message of some length"


def test_truncated_transport_messages_fail() -> None:
    sender, receiver = _session()
    message = sender.encrypt(b"x" * 40)
    for length in range(len(message)):  # 0..15: shorter than the tag; then cut payloads
        with pytest.raises(ProtocolError):
            receiver.decrypt(message[:length])
    assert receiver.decrypt(message) == b"x" * 40


@pytest.mark.parametrize("length", range(16))
def test_ciphertexts_shorter_than_a_tag_fail_with_our_error(length: int) -> None:
    _, receiver = _session()
    with pytest.raises(ProtocolError, match="shorter than its tag"):
        receiver.decrypt(b"\xff" * length)


def test_replayed_transport_message_fails() -> None:
    sender, receiver = _session()
    message = sender.encrypt(b"once")
    assert receiver.decrypt(message) == b"once"
    with pytest.raises(ProtocolError, match="failed authentication"):
        receiver.decrypt(message)


def test_reordered_and_dropped_transport_messages_fail() -> None:
    sender, receiver = _session()
    first, second, third = (sender.encrypt(bytes([i])) for i in range(3))
    with pytest.raises(ProtocolError):
        receiver.decrypt(second)
    assert receiver.decrypt(first) == b"\x00"
    with pytest.raises(ProtocolError):
        receiver.decrypt(third)  # second was dropped


def test_a_message_for_the_other_direction_fails() -> None:
    initiator, responder = _session()
    with pytest.raises(ProtocolError):
        initiator.decrypt(initiator.encrypt(b"reflected"))
    assert initiator.receive_nonce == responder.receive_nonce == 0


def test_a_message_from_another_session_fails() -> None:
    sender, _ = _session()
    other_pair = make_pair(initiator_key=STRANGER_KEY)
    complete(other_pair)
    with pytest.raises(ProtocolError):
        other_pair.responder.transport().decrypt(sender.encrypt(b"elsewhere"))


def test_transport_size_limits() -> None:
    sender, receiver = _session()
    with pytest.raises(MessageTooLarge):
        sender.encrypt(bytes(65520))
    assert sender.send_nonce == 0
    with pytest.raises(ProtocolError, match="exceeds 65535"):
        receiver.decrypt(bytes(65536))


def test_transport_nonce_exhaustion() -> None:
    key = bytes(range(32))
    send, receive = CipherState(key), CipherState(key)
    send.set_nonce(MAX_NONCE - 1)
    receive.set_nonce(MAX_NONCE - 1)
    sender = TransportCipher(send, CipherState(key), b"")
    receiver = TransportCipher(CipherState(key), receive, b"")
    assert receiver.decrypt(sender.encrypt(b"the last message")) == b"the last message"
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        sender.encrypt(b"one too many")
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        receiver.decrypt(bytes(32))
    assert sender.send_nonce == MAX_NONCE


def test_nonces_taken_for_a_fast_path_count_and_run_out_as_encrypting_does() -> None:
    key = bytes(range(32))
    taking, encrypting = CipherState(key), CipherState(key)
    assert [taking.take_nonce() for _ in range(3)] == [0, 1, 2]
    for _ in range(3):
        encrypting.encrypt_with_ad(b"", b"x")
    assert taking.nonce == encrypting.nonce == 3
    taking.set_nonce(MAX_NONCE - 1)
    assert taking.take_nonce() == MAX_NONCE - 1  # the last one
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        taking.take_nonce()
    assert taking.nonce == MAX_NONCE  # (nothing taken by the refusal)
