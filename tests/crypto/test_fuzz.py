"""Property tests: whatever bytes a peer sends, only our own exception comes out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qchan import AuthenticationError, ProtocolError
from tests.crypto._helpers import complete, make_pair, receiver_of

# Random bytes of any length, plus random bytes of exactly the right lengths, which get past
# the length checks to the key derivation and the tag checks.
MESSAGE_1 = st.one_of(st.binary(max_size=200), st.binary(min_size=48, max_size=48))
LATER_MESSAGE = st.one_of(st.binary(max_size=300), st.binary(min_size=96, max_size=160))


@given(MESSAGE_1)
@settings(max_examples=300)
def test_responder_raises_only_authentication_error_for_message_1(message: bytes) -> None:
    responder = make_pair().responder
    with pytest.raises(AuthenticationError):
        responder.receive(message)


@given(LATER_MESSAGE)
@settings(max_examples=200)
def test_initiator_raises_only_authentication_error_for_message_2(message: bytes) -> None:
    initiator = make_pair().initiator
    initiator.start()
    with pytest.raises(AuthenticationError):
        initiator.receive(message)


@given(LATER_MESSAGE)
@settings(max_examples=200)
def test_responder_raises_only_authentication_error_for_message_3(message: bytes) -> None:
    pair = make_pair()
    pair.responder.receive(pair.initiator.start())
    with pytest.raises(AuthenticationError):
        pair.responder.receive(message)


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_transport_raises_only_protocol_error(message: bytes) -> None:
    pair = make_pair()
    complete(pair)
    with pytest.raises(ProtocolError):
        pair.responder.transport().decrypt(message)


@given(st.data())
@settings(max_examples=300)
def test_mutated_genuine_messages_raise_only_authentication_error(data: st.DataObject) -> None:
    number = data.draw(st.integers(1, 3), label="message number")
    receiver, original = receiver_of(number)
    position = data.draw(st.integers(0, len(original)), label="position")
    removed = data.draw(st.integers(0, 3), label="bytes removed")
    inserted = data.draw(st.binary(max_size=3), label="bytes inserted")
    mutated = original[:position] + inserted + original[position + removed :]
    if mutated == original:
        assert receiver.receive(mutated) is not None or receiver.complete
        return
    with pytest.raises(AuthenticationError):
        receiver.receive(mutated)
