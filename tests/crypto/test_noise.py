"""The generic Noise engine: patterns, CipherState edge cases, DH refusals, misuse."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult

from qchan import AuthenticationError, ProtocolError
from qchan.crypto.noise import (
    MAX_NONCE,
    CipherState,
    HandshakeState,
    KeyPair,
    dh,
    pattern_from_name,
    public_key,
)
from tests.crypto._helpers import LOW_ORDER_POINTS

KEY = bytes(range(32))
PAIR = KeyPair.from_private(KEY)


# -- patterns ------------------------------------------------------------------------------------


def test_xxpsk0_pattern() -> None:
    pattern = pattern_from_name("Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b")
    assert pattern.name == "XXpsk0"
    assert pattern.messages == (("psk", "e"), ("e", "ee", "s", "es"), ("s", "se"))
    assert pattern.overheads == (48, 96, 64)
    assert pattern.psk_count == 1
    assert not pattern.one_way


def test_pre_messages_and_several_modifiers() -> None:
    pattern = pattern_from_name("Noise_KKpsk0+psk2_25519_ChaChaPoly_BLAKE2b")
    assert pattern.initiator_pre == ("s",)
    assert pattern.responder_pre == ("s",)
    assert pattern.messages == (("psk", "e", "es", "ss"), ("e", "ee", "se", "psk"))
    assert pattern_from_name("Noise_N_25519_ChaChaPoly_BLAKE2b").one_way


@pytest.mark.parametrize(
    "name",
    [
        "Noise_XX_25519_AESGCM_SHA256",
        "Noise_XX_448_ChaChaPoly_BLAKE2b",
        "Noise_QQ_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXhfs_25519+Kyber1024_ChaChaPoly_BLAKE2b",
        "Noise_NNpsk3_25519_ChaChaPoly_BLAKE2b",  # NN has two messages
        "XX",
        "",
    ],
)
def test_unsupported_protocol_names(name: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported|does not fit"):
        pattern_from_name(name)


# -- CipherState ---------------------------------------------------------------------------------


def test_without_a_key_messages_pass_through() -> None:
    cipher = CipherState()
    assert not cipher.has_key
    assert cipher.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cipher.decrypt_with_ad(b"ad", bytearray(b"plain")) == b"plain"


def test_round_trip_with_associated_data_and_bytes_like_input() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    ciphertext = sender.encrypt_with_ad(b"ad", memoryview(b"hello"))
    assert len(ciphertext) == 5 + 16
    assert receiver.decrypt_with_ad(b"ad", bytearray(ciphertext)) == b"hello"
    assert sender.nonce == receiver.nonce == 1
    with pytest.raises(ProtocolError):
        CipherState(KEY).decrypt_with_ad(b"other ad", ciphertext)


@pytest.mark.parametrize("length", range(16))
def test_ciphertext_shorter_than_the_tag_fails_with_our_error(length: int) -> None:
    receiver = CipherState(KEY)
    with pytest.raises(ProtocolError, match="shorter than its tag"):
        receiver.decrypt_with_ad(b"", bytes(length))
    assert receiver.nonce == 0


def test_failed_decryption_does_not_advance_the_nonce() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    ciphertext = sender.encrypt_with_ad(b"", b"x")
    with pytest.raises(ProtocolError, match="failed authentication"):
        receiver.decrypt_with_ad(b"", ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    assert receiver.nonce == 0
    assert receiver.decrypt_with_ad(b"", ciphertext) == b"x"


def test_nonce_is_four_zero_bytes_and_a_little_endian_counter() -> None:
    # Cross-check one message at nonce 2**40+5 against libsodium called directly.
    from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

    cipher = CipherState(KEY)
    cipher.set_nonce(2**40 + 5)
    nonce = b"\x00" * 4 + (2**40 + 5).to_bytes(8, "little")
    expected = crypto_aead_chacha20poly1305_ietf_encrypt(b"m", b"", nonce, KEY)
    assert cipher.encrypt_with_ad(b"", b"m") == expected


@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.integers(0, MAX_NONCE - 1),
    ad=st.binary(max_size=80),
    plaintext=st.one_of(st.binary(max_size=300), st.sampled_from([b"", bytes(65519)])),
    flip=st.integers(0, 2**20),
)
@settings(max_examples=300, deadline=None)
def test_the_direct_libsodium_calls_agree_with_pynacl(
    key: bytes, nonce: int, ad: bytes, plaintext: bytes, flip: int
) -> None:
    # CipherState calls libsodium's AEAD through PyNaCl's cffi binding directly (PyNaCl's
    # wrappers check and copy on every call). The result must be PyNaCl's, byte for byte,
    # including empty plaintexts and associated data; and a forgery must fail, not raise.
    from nacl.bindings import (
        crypto_aead_chacha20poly1305_ietf_decrypt,
        crypto_aead_chacha20poly1305_ietf_encrypt,
    )
    from nacl.exceptions import CryptoError

    sender, receiver = CipherState(key), CipherState(key)
    sender.set_nonce(nonce)
    receiver.set_nonce(nonce)
    wire_nonce = b"\x00" * 4 + nonce.to_bytes(8, "little")
    ciphertext = sender.encrypt_with_ad(ad, plaintext)
    assert ciphertext == crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, wire_nonce, key)
    forged = bytearray(ciphertext)
    forged[flip % len(forged)] ^= 1 << (flip % 8)
    with pytest.raises(CryptoError):
        crypto_aead_chacha20poly1305_ietf_decrypt(bytes(forged), ad, wire_nonce, key)
    with pytest.raises(ProtocolError, match="failed authentication"):
        receiver.decrypt_with_ad(ad, bytes(forged))
    assert receiver.nonce == nonce
    assert receiver.decrypt_with_ad(ad, ciphertext) == plaintext
    assert receiver.nonce == nonce + 1


def test_nonce_exhaustion_raises_and_never_wraps() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    sender.set_nonce(MAX_NONCE - 1)
    receiver.set_nonce(MAX_NONCE - 1)
    last = sender.encrypt_with_ad(b"", b"last")  # nonce 2**64-2: the last one allowed
    assert receiver.decrypt_with_ad(b"", last) == b"last"
    assert sender.nonce == receiver.nonce == MAX_NONCE
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        sender.encrypt_with_ad(b"", b"one more")
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        receiver.decrypt_with_ad(b"", last)
    assert sender.nonce == receiver.nonce == MAX_NONCE


@pytest.mark.parametrize("nonce", [-1, MAX_NONCE + 1])
def test_set_nonce_range(nonce: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        CipherState(KEY).set_nonce(nonce)


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_cipher_key_size(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CipherState(key)


# -- DH ------------------------------------------------------------------------------------------


def test_low_order_points_all_give_a_zero_result() -> None:
    # The test list itself: libsodium refuses every one (its result would be all zeros).
    for point in LOW_ORDER_POINTS:
        with pytest.raises(Exception):  # noqa: B017, PT011 (PyNaCl's raw error, on purpose)
            crypto_scalarmult(os.urandom(32), point)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_dh_with_a_low_order_point_is_an_authentication_error(point: bytes) -> None:
    with pytest.raises(AuthenticationError, match="low-order point"):
        dh(os.urandom(32), point)


def test_dh_agrees() -> None:
    a, b = os.urandom(32), os.urandom(32)
    assert dh(a, public_key(b)) == dh(b, public_key(a))


# -- HandshakeState misuse -----------------------------------------------------------------------

XXPSK0 = pattern_from_name("Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b")
NK = pattern_from_name("Noise_NK_25519_ChaChaPoly_BLAKE2b")


def test_missing_keys_and_psks_are_refused() -> None:
    with pytest.raises(ValueError, match="needs our static key"):
        HandshakeState(XXPSK0, initiator=True, psks=[KEY])
    with pytest.raises(ValueError, match="needs 1 psks"):
        HandshakeState(XXPSK0, initiator=True, static=PAIR)
    with pytest.raises(ValueError, match="needs the remote static key"):
        HandshakeState(NK, initiator=True)
    with pytest.raises(ValueError, match="32 bytes"):
        HandshakeState(XXPSK0, initiator=True, static=PAIR, psks=[KEY + b"x"])
    with pytest.raises(ValueError, match="32 bytes"):
        HandshakeState(NK, initiator=True, remote_static=KEY[:31])


@pytest.mark.parametrize(
    ("private", "public"), [(KEY[:31], PAIR.public), (KEY, PAIR.public + b"x"), (b"", b"")]
)
def test_key_pair_sizes(private: bytes, public: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeyPair(private, public)


def test_key_pair_repr_hides_the_private_key() -> None:
    assert KEY.hex()[:8] not in repr(PAIR)
    assert "private" not in repr(PAIR)
    assert KeyPair.generate() != KeyPair.generate()


def test_out_of_turn_calls_are_refused() -> None:
    initiator = HandshakeState(NK, initiator=True, remote_static=public_key(KEY))
    responder = HandshakeState(NK, initiator=False, static=PAIR)
    with pytest.raises(RuntimeError, match="not our turn"):
        initiator.read_message(b"")
    with pytest.raises(RuntimeError, match="not our turn"):
        responder.write_message(b"")
    with pytest.raises(RuntimeError, match="not finished"):
        _ = initiator.handshake_hash
    with pytest.raises(RuntimeError, match="not finished"):
        initiator.transport_ciphers()
    responder.read_message(initiator.write_message(b"a"))
    initiator.read_message(responder.write_message(b"b"))
    assert initiator.finished
    assert initiator.handshake_hash == responder.handshake_hash
    with pytest.raises(RuntimeError, match="already finished"):
        initiator.write_message(b"")


def test_short_handshake_message_names_the_lengths() -> None:
    responder = HandshakeState(XXPSK0, initiator=False, static=PAIR, psks=[KEY])
    with pytest.raises(AuthenticationError, match="too short: 47 bytes, at least 48 expected"):
        responder.read_message(bytes(47))


def test_a_failed_message_leaves_the_state_unusable() -> None:
    responder = HandshakeState(XXPSK0, initiator=False, static=PAIR, psks=[KEY])
    with pytest.raises(AuthenticationError, match="failed authentication"):
        responder.read_message(bytes(48))
    with pytest.raises(RuntimeError, match="must be discarded"):
        responder.read_message(bytes(48))


def test_dh_refuses_a_short_public_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        dh(KEY, bytes(31))
