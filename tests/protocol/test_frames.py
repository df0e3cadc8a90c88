"""Frames: the catalogue round-trips, validation refuses every malformed shape, PART runs
reassemble exactly and refuse every lie."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qchan import ProtocolError
from qchan.crypto import MAX_PLAINTEXT_LEN
from qchan.protocol import FrameDecoder, Kind, frames
from qchan.protocol.frames import PART_OVERHEAD, SCHEMAS, encode_frame, validate

from .test_speedups import speedups

MAX_UINT = 2**64 - 1
LIMIT = 1 << 20

SAMPLE: dict[type, object] = {int: 7, str: "text", bytes: b"value"}
WRONG_FOR: dict[type, list[object]] = {
    int: [True, False, 1.5, None, "7", b"7", [7], {"7": 7}, -1, -(2**63), MAX_UINT + 1],
    str: [b"text", 7, True, None, ["text"], {"a": "b"}, 1.5],
    bytes: ["value", 7, True, None, bytearray(b"value"), [b"value"], 1.5],
}


@pytest.fixture(autouse=True, params=["fast path", "reference"])
def decoding_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs on both decoders: the C fast path and the Python reference."""
    if request.param == "reference":
        monkeypatch.setattr(frames, "_decode_fast", None)
    else:
        speedups()  # (fails under CI if the fast path was not built)


def sample(kind: Kind) -> list[Any]:
    return [int(kind), *(SAMPLE[field] for field in SCHEMAS[kind])]


def decode(data: bytes, limit: int = LIMIT) -> list[list[Any]]:
    return FrameDecoder(limit).decode(data)


def decode_messages(messages: list[bytes], limit: int = LIMIT) -> list[list[Any]]:
    """Every frame of ``messages``, decoded one message at a time by one decoder."""
    decoder = FrameDecoder(limit)
    return [frame for message in messages for frame in decoder.decode(message)]


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def part_run(frame: list[Any], chunk: int) -> list[bytes]:
    """The PART frames that carry ``frame``, ``chunk`` bytes at a time."""
    data = encode_frame(frame)
    return [
        encode_frame([Kind.PART, len(data), data[start : start + chunk]])
        for start in range(0, len(data), chunk)
    ]


# --- the catalogue ------------------------------------------------------------------------


def test_every_kind_has_a_schema_and_every_schema_a_kind() -> None:
    assert set(SCHEMAS) == set(Kind)
    assert len({int(kind) for kind in Kind}) == len(Kind)


FRAME_KINDS = [kind for kind in Kind if kind != Kind.PART]  # PART is not a frame of its own


@pytest.mark.parametrize("kind", list(Kind), ids=lambda kind: kind.name)
def test_every_kind_validates(kind: Kind) -> None:
    frame = sample(kind)
    assert validate(frame) is frame


@pytest.mark.parametrize("kind", FRAME_KINDS, ids=lambda kind: kind.name)
def test_every_kind_round_trips(kind: Kind) -> None:
    frame = sample(kind)
    assert decode(encode_frame(frame)) == [frame]
    # ... and as a one-PART run, which comes out as the frame it carries
    assert decode(b"".join(part_run(frame, 1 << 16))) == [frame]


@pytest.mark.parametrize("kind", FRAME_KINDS, ids=lambda kind: kind.name)
@pytest.mark.parametrize("value", [0, 1, 127, 128, 2**32, MAX_UINT])
def test_unsigned_ints_round_trip_at_their_bounds(kind: Kind, value: int) -> None:
    frame = [int(kind), *(value if field is int else SAMPLE[field] for field in SCHEMAS[kind])]
    assert decode(encode_frame(frame)) == [frame]


def test_decoded_kind_compares_equal_to_the_enum() -> None:
    (frame,) = decode(encode_frame([Kind.ACK, 3]))
    assert frame[0] == Kind.ACK
    assert type(frame[0]) is int


def test_many_frames_in_one_message_come_out_in_order() -> None:
    frames = [[Kind.ACK, op] for op in range(500)] + [sample(kind) for kind in FRAME_KINDS]
    assert decode(b"".join(encode_frame(frame) for frame in frames)) == frames


def test_an_empty_plaintext_holds_no_frames() -> None:
    assert decode(b"") == []


def test_a_decoder_keeps_working_across_messages() -> None:
    decoder = FrameDecoder(LIMIT)
    for op in range(100):
        assert decoder.decode(encode_frame([Kind.ACK, op]) * 2) == [[Kind.ACK, op]] * 2


# --- validate -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind), ids=lambda kind: kind.name)
def test_wrong_field_counts_are_refused(kind: Kind) -> None:
    frame = sample(kind)
    for wrong in (frame[:-1], [*frame, 1], [*frame, b"x", "y"], [int(kind)]):
        if len(wrong) == len(frame):
            continue
        with pytest.raises(ProtocolError, match="fields"):
            validate(wrong)
        with pytest.raises(ProtocolError):
            decode(pack(wrong))


@pytest.mark.parametrize("kind", list(Kind), ids=lambda kind: kind.name)
def test_wrong_field_types_are_refused(kind: Kind) -> None:
    for position, expected in enumerate(SCHEMAS[kind], 1):
        for wrong in WRONG_FOR[expected]:
            frame = sample(kind)
            frame[position] = wrong
            with pytest.raises(ProtocolError, match=f"field {position}"):
                validate(frame)


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"\x92\x30\xff", id="negative fixint"),
        pytest.param(b"\x92\x30\xd3" + (-(2**63)).to_bytes(8, "big", signed=True), id="int64"),
        pytest.param(b"\x92\x30\xcb" + b"\x00" * 8, id="float64"),
        pytest.param(b"\x92\x30\xca" + b"\x00" * 4, id="float32"),
        pytest.param(b"\x92\x30\xc3", id="true"),
        pytest.param(b"\x92\x30\xc0", id="nil"),
        pytest.param(b"\x92\x30\xa1a", id="str for int"),
        pytest.param(b"\x93\x31\x01\xa1a", id="str for bytes"),
        pytest.param(b"\x93\x31\x01\x01", id="int for bytes"),
        pytest.param(b"\x93\x03\x00\xc4\x01a", id="bytes for str"),
        pytest.param(b"\x93\x03\x00\x91\xa1a", id="array for str"),
        pytest.param(b"\x92\x30\x80", id="map for int"),
        pytest.param(b"\x92\x30\xd4\x01\x00", id="ext for int"),
    ],
)
def test_wrong_wire_types_are_refused(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(wire)


@pytest.mark.parametrize(
    "kind", [0, 5, 0x0F, 0x13, 0x1F, 0x2B, 0x2D, 0x39, 0x3F, 0x7F, 0xFF, 2**16, MAX_UINT, -1]
)
def test_unknown_kinds_are_refused(kind: int) -> None:  # (0x2B was RETURN: no longer a kind)
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        validate([kind, 1])
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        decode(pack([kind, 1]))


def test_unclaim_and_shut_are_one_uint_each() -> None:
    assert (Kind.UNCLAIM, Kind.SHUT) == (0x37, 0x38)
    assert SCHEMAS[Kind.UNCLAIM] == SCHEMAS[Kind.SHUT] == (int,)
    assert encode_frame([Kind.UNCLAIM, 7]) == b"\x92\x37\x07"
    assert encode_frame([Kind.SHUT, 3]) == b"\x92\x38\x03"
    assert decode(b"\x92\x37\x07\x92\x38\x03") == [[Kind.UNCLAIM, 7], [Kind.SHUT, 3]]


def test_settle_is_a_link_id_and_a_bin_of_op_ids() -> None:
    assert Kind(0x2C) is Kind.SETTLE
    assert SCHEMAS[Kind.SETTLE] == (bytes, bytes)
    link = bytes(range(8))
    assert encode_frame([Kind.SETTLE, link, b""]) == b"\x93\x2c\xc4\x08" + link + b"\xc4\x00"
    ops = (7).to_bytes(8, "big") + (2**64 - 1).to_bytes(8, "big")
    encoded = encode_frame([Kind.SETTLE, link, ops])
    assert encoded == b"\x93\x2c\xc4\x08" + link + b"\xc4\x10" + ops
    assert decode(encoded) == [[Kind.SETTLE, link, ops]]
    # the frame layer checks the types only: lengths are the node's to refuse
    assert decode(b"\x93\x2c\xc4\x01x\xc4\x03abc") == [[Kind.SETTLE, b"x", b"abc"]]
    wrongs = (b"\x92\x2c\xc4\x00", b"\x93\x2c\x07\xc4\x00", b"\x93\x2c\xc4\x00\xa0", b"\x91\x2c")
    for wrong in wrongs:
        with pytest.raises(ProtocolError):
            decode(wrong)


def test_credit_is_chan_acked_window_and_return_is_gone() -> None:
    assert Kind(0x36) is Kind.CREDIT
    assert SCHEMAS[Kind.CREDIT] == (int, int, int)  # [chan, acked, window]
    assert encode_frame([Kind.CREDIT, 3, 301, 316]) == b"\x94\x36\x03\xcd\x01\x2d\xcd\x01\x3c"
    assert "RETURN" not in Kind.__members__
    assert 0x2B not in SCHEMAS


def _reference_validate(frame: object) -> bool:
    """The rule of section 4 of docs/protocol.md, written as plainly as possible."""
    if type(frame) is not list or not frame or type(frame[0]) is not int:
        return False
    schema = SCHEMAS.get(frame[0])
    if schema is None or len(frame) != len(schema) + 1:
        return False
    for field, expected in zip(frame[1:], schema, strict=True):
        if type(field) is not expected:
            return False
        if isinstance(field, int) and not 0 <= field <= MAX_UINT:
            return False
    return True


_ANY_FIELD = st.one_of(
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, 1, MAX_UINT, MAX_UINT + 1, -1, True, False, None, 1.0]),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.builds(bytearray, st.binary(max_size=3)),
    st.sampled_from(list(Kind)),
    st.just([1]),
)


@st.composite
def _frame_like(draw: st.DrawFn) -> list[Any]:
    if draw(st.booleans()):  # near a real frame: a known kind, fields mostly right
        kind = draw(st.sampled_from(list(Kind)))
        fields = [draw(FIELD_OF[field]) for field in SCHEMAS[kind]]
        if draw(st.booleans()) and fields:
            fields[draw(st.integers(0, len(fields) - 1))] = draw(_ANY_FIELD)
        if draw(st.booleans()):
            fields = fields[: draw(st.integers(0, len(fields)))] + draw(
                st.lists(_ANY_FIELD, max_size=2)
            )
        return [draw(st.sampled_from([int(kind), kind, float(kind), -int(kind)])), *fields]
    return draw(st.lists(_ANY_FIELD, max_size=6))


FIELD_OF = {
    int: st.integers(0, MAX_UINT),
    str: st.text(max_size=5),
    bytes: st.binary(max_size=5),
}


@given(_frame_like())
@settings(max_examples=2000, deadline=None)
def test_validate_accepts_exactly_what_the_specification_does(frame: list[Any]) -> None:
    # validate() takes a fast path for well-formed frames and explains a fault on a slow one:
    # together they must be the plain rule, and every refusal must say what is wrong.
    if _reference_validate(frame):
        assert validate(frame) is frame
    else:
        with pytest.raises(ProtocolError) as refused:
            validate(frame)
        assert str(refused.value) != "malformed frame"


@pytest.mark.parametrize("kind", [True, 1.0, "PING", b"\x01", None, [1]])
def test_kinds_of_the_wrong_type_are_refused(kind: object) -> None:
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        validate([kind, 1])


@pytest.mark.parametrize(
    "obj",
    [1, "PING", b"\x01", None, 1.5, True, {}, {1: 1}, {"kind": 1, "nonce": 2}, [], (1, 2)],
)
def test_non_arrays_are_refused(obj: object) -> None:
    with pytest.raises(ProtocolError):
        validate(obj)
    if not isinstance(obj, tuple):
        with pytest.raises(ProtocolError):
            decode(pack(obj))


def test_a_frame_behind_good_ones_spoils_the_message() -> None:
    good = encode_frame([Kind.ACK, 1])
    for bad in (pack([Kind.ACK]), pack({1: 1}), b"\xc1", pack([0x7F, 1])):
        with pytest.raises(ProtocolError):
            decode(good + bad)


# --- message boundaries -------------------------------------------------------------------


@pytest.mark.parametrize("frame", [sample(Kind.SEND), sample(Kind.FAILED), [Kind.ACK, MAX_UINT]])
def test_a_frame_straddling_two_messages_is_refused(frame: list[Any]) -> None:
    data = encode_frame(frame)
    for cut in range(1, len(data)):
        decoder = FrameDecoder(LIMIT)
        with pytest.raises(ProtocolError, match="ends inside a frame"):
            decoder.decode(encode_frame([Kind.ACK, 1]) + data[:cut])


def test_a_plaintext_larger_than_a_message_is_refused() -> None:
    # Only a caller can do this (a transport message holds at most 65519 bytes), but the
    # decoder still answers with its own error and nothing else.
    with pytest.raises(ProtocolError):
        decode(encode_frame([Kind.ACK, 1]) * 40_000)


# --- PART ---------------------------------------------------------------------------------


def test_part_overhead_bounds_the_real_overhead() -> None:
    for chunk in (b"x", b"x" * 255, b"x" * 65_503, b"x" * 70_000):
        frame = encode_frame([Kind.PART, MAX_UINT, chunk])
        assert len(frame) - len(chunk) <= PART_OVERHEAD


@pytest.mark.parametrize("chunk", [1, 7, 1000, 65_000])
def test_a_part_run_reassembles_its_frame(chunk: int) -> None:
    frame = [Kind.DELIVER, 42, bytes(range(256)) * 40]
    decoder = FrameDecoder(LIMIT)
    parts = part_run(frame, chunk)
    out: list[list[Any]] = []
    for part in parts:  # one PART per message
        out += decoder.decode(part)
    assert out == [frame]
    # ... and all in one message, between other frames, when they fit one
    ack = encode_frame([Kind.ACK, 1])
    message = ack + b"".join(parts) + ack
    if len(message) <= MAX_PLAINTEXT_LEN:
        assert FrameDecoder(LIMIT).decode(message) == [[Kind.ACK, 1], frame, [Kind.ACK, 1]]


def test_the_decoder_is_ready_for_the_next_run_after_one_completes() -> None:
    decoder = FrameDecoder(LIMIT)
    for value in (b"a" * 3000, b"b" * 5000, b"c" * 100):
        frame = [Kind.SEND, 1, 2, 0, value]
        assert decoder.decode(b"".join(part_run(frame, 999))) == [frame]


def test_a_run_declaring_more_than_the_limit_is_refused_before_allocating() -> None:
    for total in (LIMIT + 1, 2**40, MAX_UINT):
        decoder = FrameDecoder(LIMIT)
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError, match="above the limit"):
                decoder.decode(encode_frame([Kind.PART, total, b"x" * 100]))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024


def test_a_run_declaring_the_limit_allocates_only_what_arrives() -> None:
    limit = 512 * 2**20
    decoder = FrameDecoder(limit)
    tracemalloc.start()
    try:
        assert decoder.decode(encode_frame([Kind.PART, limit, b"x" * 1000])) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_a_run_exactly_at_the_limit_is_accepted() -> None:
    frame = [Kind.DELIVER, 1, b"v" * 5000]
    size = len(encode_frame(frame))
    decoder = FrameDecoder(size)
    assert decoder.decode(b"".join(part_run(frame, 1000))) == [frame]
    with pytest.raises(ProtocolError, match="above the limit"):
        FrameDecoder(size - 1).decode(b"".join(part_run(frame, 1000)))


def _lies() -> dict[str, list[bytes]]:
    frame = [Kind.DELIVER, 1, b"v" * 3000]
    data = encode_frame(frame)
    total = len(data)
    ping = encode_frame([Kind.PING, 1])
    return {
        "longer than declared in one chunk": [encode_frame([Kind.PART, total - 1, data])],
        "longer than declared at the last chunk": [
            encode_frame([Kind.PART, total, data[:1000]]),
            encode_frame([Kind.PART, total, data[1000:] + b"\x00"]),
        ],
        "totals disagree": [
            encode_frame([Kind.PART, total, data[:1000]]),
            encode_frame([Kind.PART, total + 1, data[1000:]]),
        ],
        "empty chunk first": [encode_frame([Kind.PART, total, b""])],
        "empty chunk later": [
            encode_frame([Kind.PART, total, data[:1000]]),
            encode_frame([Kind.PART, total, b""]),
        ],
        "zero total": [encode_frame([Kind.PART, 0, b"x"])],
        "a frame inside the run, same message": [
            encode_frame([Kind.PART, total, data[:1000]]) + ping
        ],
        "a frame inside the run, next message": [
            encode_frame([Kind.PART, total, data[:1000]]),
            ping,
        ],
        "a PART inside the reassembled frame": part_run([Kind.PART, 10, b"0123456789"], 5),
        "a PART run inside the reassembled frame": [
            encode_frame([Kind.PART, len(inner), inner])
            for inner in [b"".join(part_run([Kind.PING, 1], 1))]
        ],
        "reassembled bytes hold two frames": [encode_frame([Kind.PART, 2 * len(ping), ping * 2])],
        "reassembled bytes hold a frame and junk": [
            encode_frame([Kind.PART, len(ping) + 1, ping + b"\xc1"])
        ],
        "reassembled bytes are not msgpack": [encode_frame([Kind.PART, 1, b"\xc1"])],
        "reassembled bytes are a truncated frame": [encode_frame([Kind.PART, 5, data[:5]])],
        "reassembled frame has an unknown kind": [encode_frame([Kind.PART, 4, pack([0x7F, 1, 2])])],
        "reassembled frame has a wrong field": [encode_frame([Kind.PART, 3, pack([Kind.ACK, -1])])],
        "reassembled frame is a map": [encode_frame([Kind.PART, 3, pack({1: 2})])],
    }


@pytest.mark.parametrize(("lie", "messages"), list(_lies().items()), ids=list(_lies()))
def test_a_part_run_that_lies_is_refused(lie: str, messages: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode_messages(messages)
