"""Hostile input: decode raises ProtocolError and nothing else, quickly, in bounded memory."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qchan._codec import (
    EXT_CHANNEL,
    EXT_FROZENSET,
    EXT_OBJECT,
    EXT_SET,
    EXT_TUPLE,
    Codec,
    _Marker,
)
from qchan._errors import ProtocolError
from tests.test_codec import make_codec, values

CODEC = make_codec()


def channel_decoder(ref: bytes) -> object:
    return ("channel", ref)


def decode_or_protocol_error(data: bytes) -> None:
    """Decode ``data``: it may succeed; if not, the error must be a ProtocolError."""
    try:
        value = CODEC.decode(data, channel_decoder=channel_decoder)
    except ProtocolError:
        return
    assert not any(type(part) is _Marker for part in walk(value))


def walk(value: Any) -> Iterator[Any]:
    """Every part of a decoded value, iteratively (decoded values may be 1024 levels deep)."""
    stack = [value]
    while stack:
        part = stack.pop()
        yield part
        if type(part) in (list, tuple, set, frozenset):
            stack.extend(part)
        elif type(part) is dict:
            stack.extend(part.keys())
            stack.extend(part.values())
        elif hasattr(part, "__dataclass_fields__"):
            stack.extend(vars(part).values())


# -- random and mutated input ------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(data: bytes) -> None:
    decode_or_protocol_error(data)


Mutation = Callable[[bytes], bytes]


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with some bits flipped, cut short, extended, or with bytes spliced in."""
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "overwrite"]))
    where = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip" and data:
        bit = draw(st.integers(0, 7))
        return data[:where] + bytes([data[where] ^ (1 << bit)]) + data[where + 1 :]
    if kind == "truncate":
        return data[:where]
    junk = draw(st.binary(min_size=1, max_size=16))
    if kind == "extend":
        return data + junk
    if kind == "insert":
        return data[:where] + junk + data[where:]
    return data[:where] + junk + data[where + len(junk) :]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_mutated_valid_encodings(value: Any, data: st.DataObject) -> None:
    encoded = CODEC.encode(value, channel_encoder=lambda handle: b"r")
    for _ in range(3):
        encoded = data.draw(mutations(encoded))
        decode_or_protocol_error(encoded)


def ext(code: int, payload: bytes) -> bytes:
    """An ext value by hand (msgpack.ExtType refuses negative codes)."""
    return b"\xc7" + bytes([len(payload), code & 0xFF]) + payload


raw_leaves = st.one_of(
    st.integers(-(2**63), 2**64 - 1).map(lambda n: msgpack.packb(n)),
    st.text(max_size=5).map(lambda s: msgpack.packb(s)),
    st.sampled_from(
        [EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_OBJECT, EXT_CHANNEL, 0, 6, 127, -1]
    ).flatmap(
        lambda code: st.sampled_from([b"", b"x", b"t.Point", b"\x00" * 12]).map(
            lambda payload: ext(code, payload)
        )
    ),
    st.sampled_from(["t.Point", "t.Key", "t.Job", "t.Box", "app.Nope"]).map(
        lambda name: msgpack.packb(name)
    ),
)


def raw_array(items: list[bytes]) -> bytes:
    header: bytes = msgpack.Packer().pack_array_header(len(items))
    return header + b"".join(items)


def raw_map(items: list[bytes]) -> bytes:
    pairs = items[: len(items) // 2 * 2]
    header: bytes = msgpack.Packer().pack_map_header(len(pairs) // 2)
    return header + b"".join(pairs)


raw_values = st.recursive(
    raw_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(raw_array),
        st.lists(inner, max_size=6).map(raw_map),
    ),
    max_leaves=12,
)


@settings(max_examples=1000, deadline=None)
@given(raw_values)
def test_well_formed_msgpack_with_our_extensions_anywhere(data: bytes) -> None:
    # Structurally valid msgpack with markers, names and refs placed at random: exercises the
    # codec's own checks rather than msgpack's.
    decode_or_protocol_error(data)


# -- bombs -------------------------------------------------------------------------------------

FF32 = b"\xff\xff\xff\xff"

BOMBS = {
    "str32": b"\xdb" + FF32 + b"abc",
    "bin32": b"\xc6" + FF32 + b"abc",
    "array32": b"\xdd" + FF32 + b"\x01\x02",
    "map32": b"\xdf" + FF32 + b"\x01\x02",
    "ext32": b"\xc9" + FF32 + b"\x01abc",
    "str16": b"\xda\xff\xff" + b"abc",
    "array16": b"\xdc\xff\xff" + b"\x01",
    "map16": b"\xde\xff\xff" + b"\x01",
    "ext16": b"\xc8\xff\xff\x01",
    "array32 in a 64 KiB message": b"\xdd" + FF32 + b"\x00" * 65536,
    "map32 in a 64 KiB message": b"\xdf" + FF32 + b"\x00" * 65536,
    "str32 in a 64 KiB message": b"\x91\xdb" + FF32 + b"a" * 65536,
    "deep arrays": b"\x91" * 100_000,
    "deep maps": b"\x81\x00" * 100_000,
    "deep tuples": b"\x92\xc7\x00\x01" * 100_000,
    "deep registered objects": b"\x93\xc7\x00\x04\xa7t.Point\x81\xa1x" * 100_000,
    "deep set in tuple": b"\x92\xc7\x00\x01\x92\xc7\x00\x02" * 50_000,
    # Each of 1023 nested arrays declares 16000 items, and the input is long enough (19 KB) to
    # make that length plausible: msgpack alone preallocates 1023 * 128 KB = 130 MB here.
    "nested preallocations": b"\xdc\x3e\x80" * 1023 + b"\x00" * 16000,
    # The same within 1 KiB, under the size where decode checks the structure first.
    "nested preallocations, small": b"\xdc\x03\x00" * 330 + b"\x00" * 10,
}


def peak_memory_and_time(action: Callable[[], object]) -> tuple[int, float]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        action()
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, elapsed


@pytest.mark.parametrize("data", BOMBS.values(), ids=BOMBS.keys())
def test_bombs_fail_fast_in_bounded_memory(data: bytes) -> None:
    def attempt() -> None:
        with pytest.raises(ProtocolError):
            CODEC.decode(data, channel_decoder=channel_decoder)

    peak, elapsed = peak_memory_and_time(attempt)
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert elapsed < 1.0, f"{elapsed:.3f} s"  # milliseconds in fact; slack for a busy machine


def test_the_preallocation_bomb_is_real_without_the_structure_check() -> None:
    # So that the test above is not vacuous: msgpack on its own, same limits, same input.
    data = BOMBS["nested preallocations"]

    def attempt() -> None:
        with pytest.raises(ValueError, match="incomplete input"):
            msgpack.unpackb(data, max_array_len=len(data))

    peak, _ = peak_memory_and_time(attempt)
    # If this fails, msgpack stopped preallocating, and _check_structure may no longer be needed.
    assert peak > 50 * 2**20, f"msgpack alone peaked at {peak / 2**20:.1f} MiB"


def test_a_large_valid_message_decodes_in_memory_proportional_to_it() -> None:
    value = [list(range(1000)) for _ in range(100)]
    data = Codec().encode(value)
    peak, _ = peak_memory_and_time(lambda: Codec().decode(data))
    assert peak < 20 * len(data) + 2**20
