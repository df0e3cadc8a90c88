"""The C fast path of sealing and opening transport messages (``seal_message`` and
``open_messages`` in ``qchan.protocol._speedups``), against the reference: the Noise
CipherState (on PyNaCl's libsodium) and the Python frame decoder.

Sealing must give exactly the reference's bytes. Opening must consume exactly the messages the
reference would accept, give exactly their frames, and stop, consuming nothing, at a message it
cannot vouch for (incomplete, shorter than its tag, failing authentication), so that the
reference path meets it and reports it; a message whose frames it does not decode, or that
holds connection control frames, is consumed and handed back as plaintext.

(tests/protocol/test_connection.py runs every connection test on both paths; the connection
fuzz target runs both side by side.)
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qchan.crypto.noise import MAX_NONCE, CipherState
from qchan.protocol import FrameDecoder, Kind
from qchan.protocol.frames import SCHEMAS, Frame, encode_frame

from .test_speedups import bytes_kept_by, speedups

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
FIRST_NODE_KIND = int(Kind.PART) + 1
LENGTH = struct.Struct(">H")


def reference_seal(key: bytes, nonce: int, plaintext: bytes) -> bytes:
    cipher = CipherState(key)
    cipher.set_nonce(nonce)
    sealed = cipher.encrypt_with_ad(b"", plaintext)
    return LENGTH.pack(len(sealed)) + sealed


def message(frames: list[Frame], nonce: int, key: bytes = KEY) -> bytes:
    return reference_seal(key, nonce, b"".join(encode_frame(frame) for frame in frames))


def open_all(data: bytes, nonce: int = 0) -> tuple[int, int, bytes | None, list[Frame]]:
    frames: list[Frame] = []
    offset, opened, deferred = speedups().open_messages(
        KEY, nonce, data, 0, frames, FIRST_NODE_KIND
    )
    return offset, opened, deferred, frames


ACK = [int(Kind.ACK), 7]
SEND = [int(Kind.SEND), 1, 2, 0, b"value"]
PING = [int(Kind.PING), 3]


# --- sealing ------------------------------------------------------------------------------


@given(
    st.integers(min_value=0, max_value=MAX_NONCE - 1),
    st.binary(max_size=3000) | st.sampled_from([b"", b"x" * 65519]),
)
@settings(max_examples=300, deadline=None)
def test_sealing_gives_exactly_the_reference_bytes(nonce: int, plaintext: bytes) -> None:
    assert speedups().seal_message(KEY, nonce, plaintext) == reference_seal(KEY, nonce, plaintext)


def test_sealing_takes_any_buffer() -> None:
    seal = speedups().seal_message
    expected = reference_seal(KEY, 5, b"abc")
    assert seal(KEY, 5, bytearray(b"abc")) == expected
    assert seal(KEY, 5, memoryview(b"xabc")[1:]) == expected


@pytest.mark.parametrize(
    ("key", "nonce", "plaintext", "error", "match"),
    [
        (KEY[:31], 0, b"", ValueError, "32 bytes"),  # would be read past its end
        (bytearray(KEY), 0, b"", ValueError, "32 bytes"),  # keys are bytes
        (KEY, MAX_NONCE, b"", ValueError, "exhausted"),  # reserved: never used
        (KEY, -1, b"", OverflowError, "negative"),
        (KEY, 2**64, b"", OverflowError, "too big"),
        (KEY, 0, b"x" * 65520, ValueError, "too long"),  # would not fit one message
        (KEY, 0, "text", TypeError, "bytes-like"),
    ],
)
def test_sealing_refuses_what_it_cannot_seal(
    key: Any, nonce: int, plaintext: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        speedups().seal_message(key, nonce, plaintext)


# --- opening ------------------------------------------------------------------------------


def test_whole_messages_are_opened_in_order() -> None:
    data = message([ACK, SEND], 0) + message([SEND], 1) + message([ACK], 2)
    assert open_all(data) == (len(data), 3, None, [ACK, SEND, SEND, ACK])


def test_opening_starts_at_the_offset_and_nonce_given() -> None:
    first, second = message([ACK], 4), message([SEND], 5)
    frames: list[Frame] = []
    result = speedups().open_messages(KEY, 5, first + second, len(first), frames, 8)
    assert result == (len(first + second), 1, None)
    assert frames == [SEND]


@pytest.mark.parametrize("cut", [1, 2, 10, -1])
def test_an_incomplete_message_is_left_for_later(cut: int) -> None:
    whole = message([ACK], 0)
    next_one = message([SEND], 1)
    data = whole + next_one[:cut]
    assert open_all(data) == (len(whole), 1, None, [ACK])


def test_a_message_failing_authentication_is_left_to_the_reference() -> None:
    good = message([ACK], 0)
    for bad in (
        message([SEND], 1, key=OTHER_KEY),  # another session's key
        message([SEND], 2),  # a nonce skipped: dropped or reordered messages
        message([ACK], 0),  # replayed
    ):
        assert open_all(good + bad + message([ACK], 2)) == (len(good), 1, None, [ACK])
    tampered = bytearray(message([SEND], 1))
    tampered[5] ^= 1
    assert open_all(good + bytes(tampered)) == (len(good), 1, None, [ACK])


def test_a_message_shorter_than_its_tag_is_left_to_the_reference() -> None:
    good = message([ACK], 0)
    assert open_all(good + LENGTH.pack(15) + b"x" * 15) == (len(good), 1, None, [ACK])
    assert open_all(good + LENGTH.pack(0)) == (len(good), 1, None, [ACK])


@pytest.mark.parametrize(
    "frames",
    [
        [ACK, PING],  # the connection's own control frames: the reference handles them
        [[int(Kind.GOAWAY), 0, "bye"]],
        [[int(Kind.PART), 100, b"chunk"]],  # a PART run is reassembled by the reference
        [ACK, [int(Kind.ACK), -1]],  # not decoded here: the reference says what is wrong
    ],
)
def test_a_message_it_does_not_decode_is_consumed_and_handed_back(frames: list[Frame]) -> None:
    before, special, after = message([SEND], 0), message(frames, 1), message([ACK], 2)
    plaintext = b"".join(encode_frame(frame) for frame in frames)
    offset, opened, deferred, decoded = open_all(before + special + after)
    assert (offset, opened, deferred, decoded) == (
        len(before + special),
        2,
        plaintext,
        [SEND],
    )


def test_the_last_nonce_is_never_used() -> None:
    last = message([ACK], MAX_NONCE - 1)  # the last message a session may carry
    beyond = LENGTH.pack(20) + b"x" * 20  # whatever follows is the reference's to refuse
    assert open_all(last + beyond, MAX_NONCE - 1) == (len(last), 1, None, [ACK])
    with pytest.raises(ValueError, match="nonce is exhausted"):
        open_all(last, MAX_NONCE)


def test_opening_refuses_bad_arguments() -> None:
    open_messages = speedups().open_messages
    data = message([ACK], 0)
    with pytest.raises(ValueError, match="32 bytes"):
        open_messages(KEY[:16], 0, data, 0, [], FIRST_NODE_KIND)
    with pytest.raises(ValueError, match="offset"):
        open_messages(KEY, 0, data, len(data) + 1, [], FIRST_NODE_KIND)
    with pytest.raises(ValueError, match="offset"):
        open_messages(KEY, 0, data, -1, [], FIRST_NODE_KIND)
    with pytest.raises(TypeError):
        open_messages(KEY, 0, data, 0, (), FIRST_NODE_KIND)
    with pytest.raises(TypeError):
        open_messages(KEY, 0, data, 0, [])


@st.composite
def node_frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from([kind for kind in SCHEMAS if kind >= FIRST_NODE_KIND]))
    values = {
        int: st.integers(min_value=0, max_value=2**64 - 1),
        str: st.text(max_size=40),
        bytes: st.binary(max_size=300),
    }
    return [int(kind), *(draw(values[field]) for field in SCHEMAS[kind])]


@given(
    st.lists(st.lists(node_frames() | st.just(PING), min_size=1, max_size=8), max_size=10),
    st.integers(min_value=0, max_value=2**40),
    st.data(),
)
@settings(max_examples=400, deadline=None)
def test_a_stream_cut_anywhere_opens_as_the_reference_does(
    batches: list[list[Frame]], first_nonce: int, data: st.DataObject
) -> None:
    stream = b"".join(message(batch, first_nonce + i) for i, batch in enumerate(batches))
    stream = stream[: data.draw(st.integers(min_value=0, max_value=len(stream)))]
    # The reference: every whole message decrypted and decoded, in order.
    reference = CipherState(KEY)
    reference.set_nonce(first_nonce)
    decoder = FrameDecoder(1 << 20, accelerated=False)
    expected: list[Frame] = []
    offset = 0
    while len(stream) - offset >= 2:
        (length,) = LENGTH.unpack_from(stream, offset)
        if len(stream) - offset - 2 < length:
            break
        plaintext = reference.decrypt_with_ad(b"", stream[offset + 2 : offset + 2 + length])
        expected += [f for f in decoder.decode(plaintext) if f[0] >= FIRST_NODE_KIND]
        offset += 2 + length
    # The fast path, driven as Connection drives it: handed-back messages decoded aside.
    got: list[Frame] = []
    position, nonce = 0, first_nonce
    for _ in range(len(batches) + 1):
        position, opened, deferred = speedups().open_messages(
            KEY, nonce, stream, position, got, FIRST_NODE_KIND
        )
        nonce += opened
        if deferred is None:
            break
        got += [f for f in decoder.decode(deferred) if f[0] >= FIRST_NODE_KIND]
    assert (got, position, nonce) == (expected, offset, reference.nonce)


def test_opening_and_handing_back_leak_nothing() -> None:
    open_messages = speedups().open_messages
    good = message([SEND, ACK], 0)
    streams = [
        good + message([SEND, PING], 1),  # handed back
        good + message([SEND], 1, key=OTHER_KEY),  # stops at a failure
        good + message([ACK, [int(Kind.ACK), -1]], 1),  # undecodable: handed back
        good + message([ACK], 1)[:-3],  # incomplete
    ]

    def churn() -> None:
        for _ in range(1_000):
            for stream in streams:
                open_messages(KEY, 0, stream, 0, [], FIRST_NODE_KIND)

    grown = bytes_kept_by(churn)
    assert grown < 50_000, f"{grown} bytes kept after 4,000 openings"
