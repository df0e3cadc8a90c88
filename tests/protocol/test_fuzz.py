"""Property tests: whatever a peer sends, only our own errors come out, and how the byte
stream is cut into reads never changes what is decoded from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qchan import AuthenticationError, PeerLost, ProtocolError
from qchan.crypto import MAX_PLAINTEXT_LEN
from qchan.protocol import (
    Connection,
    ConnectionTerminated,
    Event,
    FrameDecoder,
    FramesReceived,
    GoawayReason,
    GoawayReceived,
    HandshakeCompleted,
    Kind,
)
from qchan.protocol.frames import SCHEMAS, encode_frame

from ._helpers import (
    CLUSTER_KEY,
    INITIATOR_EPHEMERAL,
    INITIATOR_HELLO,
    INITIATOR_KEY,
    RESPONDER_EPHEMERAL,
    RESPONDER_HELLO,
    RESPONDER_KEY,
    ephemerals,
    establish,
    frames_of,
    make_pair,
    seal,
    split_messages,
    transfer,
)

FRAME_KINDS = [kind for kind in Kind if kind not in (Kind.PART, Kind.GOAWAY, Kind.PING, Kind.PONG)]
FIELD = {
    int: st.integers(0, 2**64 - 1),
    str: st.text(max_size=40),
    bytes: st.binary(max_size=300),
}


@st.composite
def frames(draw: st.DrawFn, kinds: Sequence[Kind] = FRAME_KINDS) -> list[Any]:
    """A valid frame of one of ``kinds``."""
    kind = draw(st.sampled_from(kinds))
    return [int(kind), *(draw(FIELD[field]) for field in SCHEMAS[kind])]


def plaintexts() -> st.SearchStrategy[bytes]:
    """The plaintext of a valid transport message: whole frames back to back."""
    return st.lists(frames(list(Kind)), max_size=8).map(
        lambda frames: b"".join(encode_frame(frame) for frame in frames)
    )


@st.composite
def mutated(draw: st.DrawFn, original: st.SearchStrategy[bytes]) -> bytes:
    """``original`` with a few bytes changed, removed or inserted, or cut short."""
    data = bytearray(draw(original))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 3))]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=3))
        elif action == "truncate":
            del data[position:]
    return bytes(data)


# --- (a) the decoder -------------------------------------------------------------------------


@given(st.lists(st.one_of(st.binary(max_size=300), mutated(plaintexts())), max_size=4))
@settings(max_examples=500, deadline=None)
def test_decoder_raises_only_protocol_error(messages: list[bytes]) -> None:
    decoder = FrameDecoder(1 << 20)
    try:
        for message in messages:
            decoded = decoder.decode(message)
            assert all(type(frame) is list and frame[0] in SCHEMAS for frame in decoded)
    except ProtocolError:
        pass


@given(st.lists(st.lists(frames(), max_size=8), max_size=4))
@settings(max_examples=200, deadline=None)
def test_decoder_returns_exactly_the_frames_sent(messages: list[list[list[Any]]]) -> None:
    decoder = FrameDecoder(1 << 20)
    for message in messages:
        assert decoder.decode(b"".join(encode_frame(frame) for frame in message)) == message


# --- (b) the stream, cut anywhere -------------------------------------------------------------


@dataclass
class Recording:
    """What each side of a deterministic connection sent, and the frames in it."""

    to_responder: bytes  # messages 1 and 3, the PONG, then the initiator's transport messages
    to_initiator: bytes  # message 2, the confirmation (PING), then the responder's messages
    initiator_frames: list[list[Any]]
    responder_frames: list[list[Any]]


def record(batches: list[list[list[Any]]], *, goaway: bool = False) -> Recording:
    """Run a deterministic connection: the initiator sends ``batches`` (one data_to_send per
    batch), the responder echoes each batch back; both streams are kept whole."""
    to_responder, to_initiator = b"", b""
    with ephemerals(INITIATOR_EPHEMERAL, RESPONDER_EPHEMERAL):
        initiator, responder = make_pair()
        for _ in range(2):  # message 1 / message 2, then message 3 / the confirmation
            data = initiator.data_to_send()
            to_responder += data
            responder.receive_data(data, 0.0)
            data = responder.data_to_send()
            to_initiator += data
            initiator.receive_data(data, 0.0)
    sent: list[list[Any]] = []
    for batch in batches:
        for frame in batch:
            initiator.send(frame)
            sent.append(frame)
        data = initiator.data_to_send()
        to_responder += data
        for frame in frames_of(responder.receive_data(data, 0.0)):
            responder.send(frame)
        echo = responder.data_to_send()
        to_initiator += echo
        initiator.receive_data(echo, 0.0)
    to_responder += initiator.data_to_send()  # the PONG, when no batch carried it
    if goaway:
        initiator.close(GoawayReason.SHUTDOWN, "done")
        to_responder += initiator.data_to_send()
    return Recording(to_responder, to_initiator, sent, sent)


def replay(stream: bytes, cuts: list[int], *, initiator: bool) -> list[Event]:
    """Feed ``stream`` to a fresh connection (with the recorded ephemeral key), cut at ``cuts``."""
    own = INITIATOR_EPHEMERAL if initiator else RESPONDER_EPHEMERAL
    with ephemerals(own):
        connection = Connection(
            initiator=initiator,
            key=INITIATOR_KEY if initiator else RESPONDER_KEY,
            cluster_key=CLUSTER_KEY,
            hello=INITIATOR_HELLO if initiator else RESPONDER_HELLO,
            now=0.0,
        )
        if initiator:
            connection.data_to_send()  # message 1, already in the recording
        events: list[Event] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            events += connection.receive_data(stream[start:end], 0.0)
    return events


def summary(events: list[Event]) -> list[Any]:
    """Events with the FramesReceived boundaries erased (they follow the reads)."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, FramesReceived):
            out += [("frame", frame) for frame in event.frames]
        elif isinstance(event, ConnectionTerminated):
            out.append(("terminated", type(event.error)))
        else:
            out.append(event)
    return out


def check_cuts(recording: Recording, cuts_r: list[int], cuts_i: list[int]) -> None:
    whole_r = replay(recording.to_responder, [], initiator=False)
    whole_i = replay(recording.to_initiator, [], initiator=True)
    assert whole_r[0] == HandshakeCompleted(INITIATOR_KEY.public, INITIATOR_HELLO)
    assert whole_i[0] == HandshakeCompleted(RESPONDER_KEY.public, RESPONDER_HELLO)
    assert sum(isinstance(event, HandshakeCompleted) for event in whole_r + whole_i) == 2
    assert frames_of(whole_r) == recording.initiator_frames
    assert frames_of(whole_i) == recording.responder_frames
    assert summary(replay(recording.to_responder, cuts_r, initiator=False)) == summary(whole_r)
    assert summary(replay(recording.to_initiator, cuts_i, initiator=True)) == summary(whole_i)


def test_a_small_stream_cut_at_every_position_decodes_the_same() -> None:
    sent: list[list[list[Any]]] = [
        [[Kind.ACK, 1], [Kind.SEND, 2, 3, 0, b"value"]],
        [[Kind.FAILED, 4, 7, "no"]],
        [[Kind.DELIVER, 5, bytes(300)], [Kind.CREDIT, 1, 2, 3]],
    ]
    recording = record(sent, goaway=True)
    whole = summary(replay(recording.to_responder, [], initiator=False))
    assert whole[-2:] == [GoawayReceived(0, "done"), ("terminated", PeerLost)]
    for stream, initiator in ((recording.to_responder, False), (recording.to_initiator, True)):
        expected = summary(replay(stream, [], initiator=initiator))
        for cut in range(1, len(stream)):
            assert summary(replay(stream, [cut], initiator=initiator)) == expected, cut
        every = list(range(1, len(stream)))
        assert summary(replay(stream, every, initiator=initiator)) == expected


def test_a_large_stream_cut_around_every_message_boundary_decodes_the_same() -> None:
    big = [Kind.DELIVER, 9, bytes(range(256)) * 800]  # 204 800 bytes: four PART messages
    recording = record([[[Kind.ACK, 1], big, [Kind.ACK, 2]], [[Kind.ACK, 3]]])
    for stream, initiator in ((recording.to_responder, False), (recording.to_initiator, True)):
        expected = summary(replay(stream, [], initiator=initiator))
        assert [item for item in expected if isinstance(item, tuple) and item[0] == "frame"] == [
            ("frame", frame) for frame in [[Kind.ACK, 1], big, [Kind.ACK, 2], [Kind.ACK, 3]]
        ]
        boundaries, offset = [], 0
        for message in split_messages(stream):
            offset += 2 + len(message)
            boundaries.append(offset)
        for boundary in boundaries[:-1]:
            for cut in range(boundary - 3, boundary + 4):
                assert summary(replay(stream, [cut], initiator=initiator)) == expected, cut


@st.composite
def batches(draw: st.DrawFn) -> list[list[list[Any]]]:
    result = draw(st.lists(st.lists(frames(), max_size=6), min_size=1, max_size=4))
    if draw(st.booleans()):  # a frame too big for one message, split into PART frames
        size = draw(st.integers(MAX_PLAINTEXT_LEN - 20, 3 * MAX_PLAINTEXT_LEN))
        big = [
            int(Kind.DELIVER),
            draw(FIELD[int]),
            draw(st.binary(min_size=8, max_size=8)) * (size // 8),
        ]
        batch = draw(st.integers(0, len(result) - 1))
        result[batch].insert(draw(st.integers(0, len(result[batch]))), big)
        hypothesis.event("a frame sent in PART frames")
    return result


@st.composite
def cuts(draw: st.DrawFn, length: int) -> list[int]:
    """Sorted cut points: a few random ones, or many small reads."""
    if draw(st.booleans()):
        return sorted(set(draw(st.lists(st.integers(1, length - 1), max_size=12))))
    points: list[int] = []
    position = 0
    while True:
        position += draw(st.integers(1, max(1, length // 16)))
        if position >= length:
            return points
        points.append(position)


@given(st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.data_too_large])
def test_any_chunking_of_a_valid_stream_decodes_the_same(data: st.DataObject) -> None:
    drawn: list[list[list[Any]]] = data.draw(batches(), label="batches")
    recording = record(drawn, goaway=data.draw(st.booleans()))
    cuts_r = data.draw(cuts(len(recording.to_responder)), label="cuts to the responder")
    cuts_i = data.draw(cuts(len(recording.to_initiator)), label="cuts to the initiator")
    hypothesis.event(f"{len(cuts_r)} cuts" if len(cuts_r) < 10 else "10 or more cuts")
    check_cuts(recording, cuts_r, cuts_i)


# --- (c) a connection fed anything ---------------------------------------------------------


def _outcome_is_clean(events: list[Event], error: type[Exception]) -> None:
    """Events stop at most once, with a ConnectionTerminated of ``error`` (or a GOAWAY)."""
    ends = [event for event in events if isinstance(event, ConnectionTerminated)]
    assert len(ends) <= 1
    if ends:
        assert events[-1] is ends[0]
        goaway = any(isinstance(event, GoawayReceived) for event in events)
        assert isinstance(ends[0].error, PeerLost if goaway else error)


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_open_connection_fed_arbitrary_bytes_ends_only_in_protocol_error(
    chunks: list[bytes],
) -> None:
    _, responder = establish()
    events: list[Event] = []
    for chunk in chunks:
        events += responder.receive_data(chunk, 1.0)
    assert frames_of(events) == []
    _outcome_is_clean(events, ProtocolError)
    data = b"".join(chunks)
    if len(data) >= 2 and 2 + int.from_bytes(data[:2], "big") <= len(data):
        # a whole message arrived: it cannot have authenticated
        assert isinstance(events[-1], ConnectionTerminated)


@given(
    st.lists(st.one_of(plaintexts(), mutated(plaintexts()), st.binary(max_size=100)), max_size=5)
)
@settings(max_examples=300, deadline=None)
def test_open_connection_fed_arbitrary_authenticated_plaintexts_never_raises(
    messages: list[bytes],
) -> None:
    initiator, responder = establish()
    wire = b"".join(seal(initiator, message) for message in messages)
    events = responder.receive_data(wire, 1.0)
    _outcome_is_clean(events, ProtocolError)


@given(st.binary(max_size=300), st.booleans())
@settings(max_examples=300, deadline=None)
def test_handshaking_connection_fed_arbitrary_bytes_ends_only_in_authentication_error(
    data: bytes, initiator_side: bool
) -> None:
    initiator, responder = make_pair()
    if initiator_side:
        connection = initiator
        initiator.data_to_send()
    else:
        connection = responder
    events = connection.receive_data(data, 0.0)
    assert frames_of(events) == []
    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    _outcome_is_clean(events, AuthenticationError)
    if not initiator_side:
        assert responder.data_to_send() == b""


@given(mutated(st.just(b"")), st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_mutated_handshake_messages_never_raise(noise: bytes, number: int) -> None:
    initiator, responder = make_pair()
    sender, receiver = initiator, responder
    for _ in range(number - 1):
        transfer(sender, receiver)
        sender, receiver = receiver, sender
    genuine = bytearray(sender.data_to_send())
    position = len(noise) % max(1, len(genuine))
    genuine[position : position + len(noise)] = noise
    events = receiver.receive_data(bytes(genuine), 0.0)
    assert frames_of(events) == []
    ends = [event for event in events if isinstance(event, ConnectionTerminated)]
    assert all(isinstance(end.error, AuthenticationError | ProtocolError) for end in ends)


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_an_initiator_awaiting_the_confirmation_completes_on_nothing_else(
    chunks: list[bytes],
) -> None:
    initiator, responder = make_pair()
    transfer(initiator, responder)
    transfer(responder, initiator)  # message 3 written: keys made, not confirmed
    events: list[Event] = []
    for chunk in chunks:
        events += initiator.receive_data(chunk, 1.0)
    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    assert frames_of(events) == []
    _outcome_is_clean(events, ProtocolError)
