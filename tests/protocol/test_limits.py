"""Every length that comes off the wire is bounded before anything is allocated for it: the
handshake's message lengths, msgpack's declared sizes and nesting, PART totals."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from qchan import AuthenticationError, ProtocolError
from qchan.crypto import MAX_MESSAGE_LEN, MAX_PLAINTEXT_LEN
from qchan.protocol import ConnectionConfig, FrameDecoder, Kind
from qchan.protocol.frames import encode_frame

from ._helpers import establish, frames_of, make_pair, seal, split_messages, terminated, transfer

U32 = b"\xff\xff\xff\xff"


@contextmanager
def bounded(max_bytes: int = 256 * 1024, max_seconds: float = 0.5) -> Iterator[None]:
    """The block's peak Python memory (msgpack allocates through PyMem) and time stay small."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        yield
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < max_bytes, f"peak {peak} bytes"
    assert elapsed < max_seconds, f"{elapsed:.3f} s"


BOMBS: dict[str, bytes] = {
    "array declaring 2**32 elements": b"\xdd" + U32,
    "array of 2**32 after a good frame": encode_frame([Kind.ACK, 1]) + b"\xdd" + U32,
    "array16 declaring 65535 elements": b"\xdc\xff\xff" + b"\x01" * 100,
    "map declaring 2**32 entries": b"\xdf" + U32,
    "map inside a frame": b"\x92\x30\xdf" + U32,
    "bin declaring 4 GB": b"\xc6" + U32 + b"\x00" * 1000,
    "bin declaring 4 GB in a SEND": b"\x95\x21\x01\x02\x00\xc6" + U32,
    "bin declaring 4 GB, header only": b"\x93\x31\x01\xc6" + U32,
    "str declaring 4 GB": b"\x93\x03\x00\xdb" + U32 + b"a" * 1000,
    "ext declaring 4 GB": b"\x92\x30\xc9" + U32 + b"\x01",
    "fixext": b"\x92\x30\xd8\x01" + b"\x00" * 16,
    "arrays nested 60 000 deep": b"\x91" * 60_000,
    "arrays nested deep inside a frame": b"\x92\x30" + b"\x91" * 60_000 + b"\x01",
    "maps nested deep": b"\x81\xa1k" * 20_000,
    "5-wide arrays nested deep": (b"\x95" + b"\x01" * 4) * 10_000 + b"\x01",
    "65 000 empty arrays": b"\x90" * 65_000,
    "65 000 nils": b"\xc0" * 65_000,
}


@pytest.mark.parametrize("bomb", list(BOMBS.values()), ids=list(BOMBS))
def test_msgpack_bombs_are_refused_by_the_decoder(bomb: bytes) -> None:
    assert len(bomb) <= MAX_PLAINTEXT_LEN
    decoder = FrameDecoder(ConnectionConfig().max_frame_size)
    with bounded(), pytest.raises(ProtocolError):
        decoder.decode(bomb)


@pytest.mark.parametrize("bomb", list(BOMBS.values()), ids=list(BOMBS))
def test_msgpack_bombs_in_a_transport_message_end_the_connection(bomb: bytes) -> None:
    initiator, responder = establish()
    initiator.send([Kind.ACK, 1])
    data = initiator.data_to_send() + seal(initiator, bomb)
    with bounded(max_bytes=512 * 1024):
        events = responder.receive_data(data, 1.0)
    assert isinstance(terminated(events).error, ProtocolError)
    assert frames_of(events) == [[Kind.ACK, 1]]


@pytest.mark.parametrize("bomb", list(BOMBS.values()), ids=list(BOMBS))
def test_msgpack_bombs_reassembled_from_parts_are_refused(bomb: bytes) -> None:
    decoder = FrameDecoder(ConnectionConfig().max_frame_size)
    half = len(bomb) // 2 or 1
    first = encode_frame([Kind.PART, len(bomb), bomb[:half]])
    second = encode_frame([Kind.PART, len(bomb), bomb[half:]]) if bomb[half:] else b""
    with bounded(max_bytes=512 * 1024), pytest.raises(ProtocolError):
        decode_all(decoder, [first, second])


def decode_all(decoder: FrameDecoder, messages: list[bytes]) -> None:
    for message in messages:
        decoder.decode(message)


def test_a_header_announcing_4_gb_cannot_be_continued_in_the_next_message() -> None:
    initiator, responder = establish()
    header = seal(initiator, b"\x93\x31\x01\xc6" + U32)
    body = b"".join(seal(initiator, b"\x00" * MAX_PLAINTEXT_LEN) for _ in range(3))
    events = responder.receive_data(header + body, 1.0)
    assert isinstance(terminated(events).error, ProtocolError)


@pytest.mark.parametrize("total", [2**64 - 1, 2**32, ConnectionConfig().max_frame_size + 1])
def test_a_part_total_above_the_limit_is_refused_before_allocating(total: int) -> None:
    initiator, responder = establish()
    data = seal(initiator, encode_frame([Kind.PART, total, b"x" * 60_000]))
    with bounded(max_bytes=512 * 1024):
        events = responder.receive_data(data, 1.0)
    assert "above the limit" in str(terminated(events).error)


def test_the_frame_size_limit_is_the_configured_one() -> None:
    limit = 100_000
    initiator, responder = establish(config=ConnectionConfig(max_frame_size=limit))
    frame = [Kind.DELIVER, 1, bytes(limit - 8)]  # array, kind, op, bin32 header: 8 bytes
    assert len(encode_frame(frame)) == limit
    initiator.send(frame)
    assert frames_of(transfer(initiator, responder)) == [frame]
    initiator.send([Kind.DELIVER, 1, bytes(limit - 7)])
    assert isinstance(terminated(transfer(initiator, responder)).error, ProtocolError)


# --- the handshake -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [49, 100, 4096, MAX_MESSAGE_LEN])
def test_a_handshake_length_beyond_message_1_is_refused_without_waiting(length: int) -> None:
    _, responder = make_pair()
    with bounded(max_bytes=64 * 1024):
        events = responder.receive_data(length.to_bytes(2, "big") + b"\x00" * 10, 0.0)
    assert isinstance(terminated(events).error, AuthenticationError)
    assert str(length) in str(terminated(events).error)
    assert responder.data_to_send() == b""


def test_the_wire_length_cannot_exceed_a_noise_message() -> None:
    # Two bytes of length: 65535 is the most any message can announce, and the largest
    # transport message (a full plaintext and its tag) is exactly that.
    initiator, responder = establish()
    frame = [Kind.DELIVER, 1, bytes(MAX_PLAINTEXT_LEN - 6)]  # array, kind, op, bin16 header
    assert len(encode_frame(frame)) == MAX_PLAINTEXT_LEN
    initiator.send(frame)
    data = initiator.data_to_send()
    assert int.from_bytes(data[:2], "big") == MAX_MESSAGE_LEN
    assert len(data) == 2 + MAX_MESSAGE_LEN
    assert frames_of(responder.receive_data(data, 0.0)) == [frame]


def test_one_byte_more_than_a_message_holds_goes_in_parts() -> None:
    initiator, responder = establish()
    frame = [Kind.DELIVER, 1, bytes(MAX_PLAINTEXT_LEN - 5)]
    initiator.send(frame)
    data = initiator.data_to_send()
    assert len(split_messages(data)) == 2
    assert frames_of(responder.receive_data(data, 0.0)) == [frame]


def test_inbox_holds_at_most_one_partial_message() -> None:
    initiator, responder = establish()
    initiator.send([Kind.DELIVER, 1, bytes(MAX_PLAINTEXT_LEN - 8)])
    message = initiator.data_to_send()
    events = responder.receive_data(message[:-1], 0.0)
    assert events == []
    assert len(responder._inbox) == len(message) - 1
    assert frames_of(responder.receive_data(message[-1:], 0.0)) != []
    assert len(responder._inbox) == 0
