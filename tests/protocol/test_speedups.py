"""The C fast path of frame decoding: built where CI runs, and never different from the
reference decoder. It decodes the common case; whatever it does not take (a PART run, an
encoding the Packer never writes, anything malformed) it hands back, and the reference
decoder, the only judge of errors, decides.

(tests/protocol/test_frames.py runs every decoding test on both paths; the frames fuzz target
runs both side by side.)
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from types import ModuleType
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qchan import ProtocolError
from qchan.protocol import FrameDecoder, Kind, connection, frames
from qchan.protocol.frames import SCHEMAS, Frame, encode_frame

MAX_UINT = 2**64 - 1
LIMIT = 1 << 20


def speedups() -> ModuleType:
    """The extension; when CI runs (which installs with a compiler) its absence is a failure."""
    try:
        from qchan.protocol import _speedups
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the C fast path was not built: {exc}")
        pytest.skip("the C fast path is not built here (no compiler at install time)")
    return _speedups


def typed(frames: list[Frame] | None) -> list[list[tuple[type, Any]]] | None:
    """Frames with each field's exact type: 1 == True, but a bool is not a valid int field."""
    if frames is None:
        return None
    return [[(type(field), field) for field in frame] for frame in frames]


def reference(plaintext: bytes) -> list[Frame] | ProtocolError:
    try:
        return FrameDecoder(LIMIT, accelerated=False).decode(plaintext)
    except ProtocolError as exc:
        return exc


def test_the_fast_path_is_built_and_in_use() -> None:
    module = speedups()
    assert frames._decode_fast is module.decode_frames
    assert FrameDecoder(LIMIT)._fast is module.decode_frames
    assert (module.seal_message, module.open_messages) == connection._FAST


# --- what it decodes, it decodes exactly ---------------------------------------------------

FIELD = {
    int: st.one_of(st.integers(0, 300), st.integers(0, MAX_UINT)),
    str: st.text(max_size=300),
    bytes: st.binary(max_size=300),
}
FAST_KINDS = [kind for kind in Kind if kind != Kind.PART]


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(FAST_KINDS))
    return [int(kind), *(draw(FIELD[field]) for field in SCHEMAS[kind])]


@given(st.lists(valid_frames(), max_size=40))
@settings(max_examples=1500, deadline=None)
def test_every_frame_the_packer_writes_is_decoded_here_as_the_reference_does(
    sent: list[Frame],
) -> None:
    plaintext = b"".join(encode_frame(frame) for frame in sent)
    fast = speedups().decode_frames(plaintext)
    assert fast is not None, "the fast path deferred on frames the Packer wrote"
    assert typed(fast) == typed(sent)
    assert typed(fast) == typed(reference(plaintext))  # type: ignore[arg-type]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """Valid messages cut, spliced, bit-flipped or padded: the edges a parser gets wrong."""
    plaintext = bytearray(b"".join(encode_frame(frame) for frame in draw(st.lists(valid_frames()))))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        position = draw(st.integers(0, len(plaintext)))
        if action == "flip" and position < len(plaintext):
            plaintext[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del plaintext[position:]
        elif action == "insert":
            plaintext[position:position] = draw(st.binary(min_size=1, max_size=9))
        elif position < len(plaintext):
            plaintext[position] = draw(
                st.sampled_from([0x90, 0x9F, 0xC0, 0xC4, 0xCF, 0xD9, 0xDD, 0xFF])
            )
    return bytes(plaintext)


@given(st.one_of(damaged(), st.binary(max_size=200)))
@settings(max_examples=1500, deadline=None)
def test_on_any_bytes_it_agrees_with_the_reference_or_hands_them_back(plaintext: bytes) -> None:
    fast = speedups().decode_frames(plaintext)
    if fast is not None:
        expected = reference(plaintext)
        assert not isinstance(expected, ProtocolError), f"accepted what is refused: {expected}"
        assert typed(fast) == typed(expected)


def test_a_message_cut_anywhere_is_handed_back() -> None:
    plaintext = b"".join(
        encode_frame(
            [
                int(kind),
                *(
                    MAX_UINT if f is int else f(b"xyz") if f is bytes else "é" * 40
                    for f in SCHEMAS[kind]
                ),
            ]
        )
        for kind in FAST_KINDS
    )
    module = speedups()
    assert module.decode_frames(plaintext) is not None
    for cut in range(1, len(plaintext)):
        result = module.decode_frames(plaintext[:cut])
        if result is None:
            assert isinstance(reference(plaintext[:cut]), ProtocolError)
        else:  # cut exactly between two frames
            assert typed(result) == typed(reference(plaintext[:cut]))  # type: ignore[arg-type]


# --- what it hands back, and the reference then decides ------------------------------------


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("wire", "valid"),
    [
        pytest.param(encode_frame([Kind.PART, 3, b"abc"]), False, id="PART: reassembled in Python"),
        pytest.param(b"\xdc\x00\x02\x30\x05", True, id="array16 header"),
        pytest.param(b"\x92\x30\xd0\x05", True, id="non-negative int8"),
        pytest.param(b"\x92\x30\xd3" + (5).to_bytes(8, "big"), True, id="non-negative int64"),
        pytest.param(b"\x92\x30\xff", False, id="negative fixint"),
        pytest.param(b"\x92\x30\xc3", False, id="true for an int"),
        pytest.param(b"\x93\x03\x01\xa2\xff\xfe", False, id="invalid UTF-8"),
        pytest.param(b"\x93\x03\x01\xc4\x01x", False, id="bytes for a str"),
        pytest.param(b"\x92\x7f\x01", False, id="unknown kind"),
        pytest.param(b"\x92\xcd\x01\x30\x01", False, id="kind above 255"),
        pytest.param(b"\x91\x30", False, id="too few fields"),
        pytest.param(b"\x90", False, id="empty array"),
        pytest.param(pack({1: 2}), False, id="a map"),
        pytest.param(encode_frame([Kind.ACK, 1]) * 30_000, False, id="longer than a message"),
    ],
)
def test_it_hands_back_what_it_does_not_decode(wire: bytes, valid: bool) -> None:
    assert speedups().decode_frames(wire) is None
    decided = reference(wire)
    assert isinstance(decided, ProtocolError) != valid, decided
    # ... and a decoder with the fast path gives the reference's answer all the same
    try:
        answer: object = FrameDecoder(LIMIT).decode(wire)
    except ProtocolError as exc:
        answer = exc
    assert type(answer) is type(decided)
    assert str(answer) == str(decided)


def test_only_a_buffer_is_decoded() -> None:
    module = speedups()
    assert module.decode_frames(bytearray(encode_frame([Kind.ACK, 1]))) == [[Kind.ACK, 1]]
    assert module.decode_frames(memoryview(encode_frame([Kind.ACK, 1]))) == [[Kind.ACK, 1]]
    with pytest.raises(TypeError):
        module.decode_frames("text")


@pytest.mark.parametrize(
    ("schemas", "error"),
    [
        pytest.param([], TypeError, id="not a dict"),
        pytest.param({256: "u"}, ValueError, id="kind too large"),
        pytest.param({-1: "u"}, ValueError, id="negative kind"),
        pytest.param({1: "x"}, ValueError, id="unknown field type"),
        pytest.param({1: "u" * 15}, ValueError, id="too many fields"),
        pytest.param({1: 5}, ValueError, id="types not a str"),
        pytest.param({"1": "u"}, TypeError, id="kind not an int"),
    ],
)
def test_bad_schemas_are_refused_and_the_old_ones_kept(schemas: object, error: type) -> None:
    module = speedups()
    with pytest.raises(error):
        module.set_schemas(schemas)
    assert module.decode_frames(encode_frame([Kind.ACK, 1])) == [[Kind.ACK, 1]]


# --- no leak, on either outcome ------------------------------------------------------------


def test_decoding_and_handing_back_leak_nothing() -> None:
    module = speedups()
    good = b"".join(
        encode_frame(
            [
                int(kind),
                *(
                    7 if f is int else f(b"v" * 50) if f is bytes else "s" * 50
                    for f in SCHEMAS[kind]
                ),
            ]
        )
        for kind in FAST_KINDS
    )
    # Each one fails after the frame's list and some of its fields exist: they must be freed.
    bad = [good + b"\x93\x03\x01\xa2\xff\xfe", good[:-2], good + b"\x92\x30\xff"]

    def churn() -> None:
        for _ in range(2_000):
            assert module.decode_frames(good) is not None
            for plaintext in bad:
                assert module.decode_frames(plaintext) is None

    grown = bytes_kept_by(churn)
    assert grown < 20_000, f"{grown} bytes still held after 8,000 decodes"


def bytes_kept_by(churn: Callable[[], object]) -> int:
    """How much more memory Python holds after a second ``churn()`` than before it (the first
    one warms caches and interned objects up)."""
    churn()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn()
        return int(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
