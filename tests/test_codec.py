"""The codec: round trips, registered types, channel hooks, refusals, limits, malformed input."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qchan
from qchan._channel import _Handle
from qchan._codec import (
    DEFAULT_MAX_SIZE,
    EXT_CHANNEL,
    EXT_FROZENSET,
    EXT_OBJECT,
    EXT_SET,
    EXT_TUPLE,
    MAX_DEPTH,
    Codec,
    decode,
    encode,
    register_type,
)
from qchan._errors import MessageTooLarge, ProtocolError

# -- helpers -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: Any
    y: Any = None


@dataclasses.dataclass(frozen=True)
class Key:
    a: Any
    b: Any


@dataclasses.dataclass
class Job:
    id: int
    reply: Any
    tags: tuple[str, ...] = ()


class Box:
    """A plain class, registered with encode/decode."""

    def __init__(self, content: Any) -> None:
        self.content = content

    def __eq__(self, other: object) -> bool:
        return type(other) is Box and same(self.content, other.content)

    __hash__ = None  # type: ignore[assignment]


class Color(enum.IntEnum):
    RED = 1


def make_codec() -> Codec:
    codec = Codec()
    codec.register_type(Point, name="t.Point")
    codec.register_type(Key, name="t.Key")
    codec.register_type(Job, name="t.Job")
    codec.register_type(Box, name="t.Box", encode=lambda box: [box.content], decode=_unbox)
    return codec


def _unbox(state: list[Any]) -> Box:
    (content,) = state
    return Box(content)


@pytest.fixture
def codec() -> Codec:
    return make_codec()


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (1 == True == 1.0, {1} == frozenset({1}))."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if type(a) in (set, frozenset):
        return a == b and all(any(same(x, y) for y in b) for x in a)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


class Hooks:
    """Channel hooks that record their calls and map handles to refs and back."""

    def __init__(self) -> None:
        self.encoded: list[_Handle] = []
        self.decoded: list[bytes] = []
        self.by_ref: dict[bytes, _Handle] = {}

    def encoder(self, handle: _Handle) -> bytes:
        self.encoded.append(handle)
        ref = b"ref-%d" % len(self.encoded)
        self.by_ref[ref] = handle
        return ref

    def decoder(self, ref: bytes) -> object:
        self.decoded.append(ref)
        return self.by_ref[ref]


def round_trip(codec: Codec, value: Any) -> Any:
    hooks = Hooks()
    data = codec.encode(value, channel_encoder=hooks.encoder)
    assert type(data) is bytes
    return codec.decode(data, channel_decoder=hooks.decoder)


def nest(depth: int, leaf: Any, wrap: Callable[[Any], Any] = lambda v: [v]) -> Any:
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


# -- round trips -------------------------------------------------------------------------------

SCALARS = [
    None,
    True,
    False,
    0,
    -1,
    127,
    -33,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    math.inf,
    -math.inf,
    "",
    "héllo ☃",
    "x" * 70000,
    b"",
    b"\x00\xff",
    b"y" * 70000,
    msgpack.Timestamp(1_700_000_000, 5),
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalars_round_trip(codec: Codec, value: Any) -> None:
    assert same(round_trip(codec, value), value)


def test_nan_round_trips(codec: Codec) -> None:
    assert math.isnan(round_trip(codec, math.nan))


@pytest.mark.parametrize("value", [bytearray(b"ab"), memoryview(b"ab")], ids=repr)
def test_bytes_like_arrive_as_bytes(codec: Codec, value: Any) -> None:
    assert same(round_trip(codec, value), b"ab")


@pytest.mark.parametrize(
    "value",
    [
        (),
        (1,),
        (1, "a", None),
        ((),),
        [(), [()], ((),)],
        set(),
        {1, 2, 3},
        frozenset(),
        frozenset({(1, 2), "x"}),
        {frozenset({1}), (2, 3)},
        ({1}, frozenset({2}), [3]),
    ],
    ids=repr,
)
def test_tuple_set_frozenset_keep_their_type(codec: Codec, value: Any) -> None:
    assert same(round_trip(codec, value), value)


def test_dict_keys_of_any_hashable_type(codec: Codec) -> None:
    value = {
        1: "int",
        -5: "negative",
        (1, 2): "tuple",
        ((1,), "a"): "nested tuple",
        frozenset({1}): "frozenset",
        b"raw": "bytes",
        None: "none",
        2.5: "float",
        "s": {(): {}},
        Key(1, (2,)): "frozen dataclass",
    }
    assert same(round_trip(codec, value), value)


def test_nested_combination(codec: Codec) -> None:
    value = {
        "jobs": [Job(1, None, ("a",)), Job(2, Point(1, [2, (3,)]))],
        "index": {(1, "x"): {frozenset({"a"}): [b"\x00", None, 2**63]}},
        "box": Box({"k": (1, {2})}),
    }
    assert same(round_trip(codec, value), value)


def test_wire_format_is_the_documented_one(codec: Codec) -> None:
    # [marker, items...], the marker an ext of length 0 (c7 00 code)
    assert codec.encode((1, 2)) == b"\x93\xc7\x00\x01\x01\x02"
    assert codec.encode({1}) == b"\x92\xc7\x00\x02\x01"
    assert codec.encode(frozenset({1})) == b"\x92\xc7\x00\x03\x01"
    assert codec.encode(Point(1)) == msgpack.packb(
        [msgpack.ExtType(EXT_OBJECT, b""), "t.Point", {"x": 1, "y": None}]
    )
    channel: qchan.Channel[int] = qchan.Channel()
    data = codec.encode([channel], channel_encoder=lambda handle: b"REF")
    assert data == msgpack.packb([msgpack.ExtType(EXT_CHANNEL, b"REF")])
    assert (EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_OBJECT, EXT_CHANNEL) == (1, 2, 3, 4, 5)


# -- hypothesis round trip ---------------------------------------------------------------------

CHANNEL: qchan.Channel[Any] = qchan.Channel()
HANDLES = [CHANNEL, CHANNEL.sender(), CHANNEL.receiver(), qchan.Channel(3)]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
hashables = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
        st.builds(Key, inner, inner),
    ),
    max_leaves=6,
)
values = st.recursive(
    st.one_of(scalars, st.sampled_from(HANDLES)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.builds(Point, inner, inner),
        st.builds(Box, inner),
        st.builds(Job, st.integers(0, 100), inner),
    ),
    max_leaves=20,
)


@given(values)
def test_any_value_round_trips(value: Any) -> None:
    codec = make_codec()
    assert same(round_trip(codec, value), value)


@given(values)
def test_hooks_see_every_handle_once_in_walk_order(value: Any) -> None:
    codec = make_codec()
    hooks = Hooks()
    data = codec.encode(value, channel_encoder=hooks.encoder)
    codec.decode(data, channel_decoder=hooks.decoder)
    assert len(hooks.decoded) == len(hooks.encoded)
    assert hooks.decoded == [b"ref-%d" % (i + 1) for i in range(len(hooks.encoded))]


# -- registered types --------------------------------------------------------------------------


def test_dataclasses_nested_frozen_and_with_defaults(codec: Codec) -> None:
    value = Point(Point(Key(1, 2)), [Point(3)])
    assert same(round_trip(codec, value), value)
    assert round_trip(codec, Key("a", ("b",))) == Key("a", ("b",))


def test_dataclass_fields_not_in_init_are_rebuilt_not_sent() -> None:
    codec = Codec()

    @codec.register_type(name="t.Area")
    @dataclasses.dataclass
    class Area:
        w: int
        h: int
        size: int = dataclasses.field(init=False)

        def __post_init__(self) -> None:
            self.size = self.w * self.h

    data = codec.encode(Area(2, 3))
    assert b"size" not in data
    assert codec.decode(data) == Area(2, 3)


def test_dataclass_that_fields_alone_cannot_rebuild_is_refused_at_registration() -> None:
    codec = Codec()

    @dataclasses.dataclass
    class NeedsSeed:
        x: int
        seed: dataclasses.InitVar[int]

        def __post_init__(self, seed: int) -> None:
            pass

    @dataclasses.dataclass(init=False)
    class OwnInit:
        x: int

        def __init__(self, x: int, scale: int) -> None:
            self.x = x * scale

    for cls in (NeedsSeed, OwnInit):
        with pytest.raises(TypeError, match="which is not an init field; give encode and decode"):
            codec.register_type(cls)

    @codec.register_type
    @dataclasses.dataclass
    class OptionalSeed:
        x: int
        seed: dataclasses.InitVar[int] = 0

        def __post_init__(self, seed: int) -> None:
            pass

    assert codec.decode(codec.encode(OptionalSeed(1))) == OptionalSeed(1)


def test_slots_and_kw_only_dataclasses() -> None:
    codec = Codec()

    @codec.register_type
    @dataclasses.dataclass(slots=True, kw_only=True)
    class Opts:
        a: int
        b: str = "x"

    assert codec.decode(codec.encode(Opts(a=1))) == Opts(a=1)


def test_registered_plain_class(codec: Codec) -> None:
    value = Box(Box((1, {"a": b"b"})))
    assert same(round_trip(codec, value), value)


def test_registered_subclass_of_a_builtin() -> None:
    codec = Codec()
    codec.register_type(Color, encode=int, decode=Color)
    assert codec.decode(codec.encode([Color.RED])) == [Color.RED]
    assert type(codec.decode(codec.encode(Color.RED))) is Color


def test_register_type_forms() -> None:
    codec = Codec()

    @codec.register_type
    @dataclasses.dataclass
    class A:
        x: int

    @codec.register_type()
    @dataclasses.dataclass
    class B:
        x: int

    @codec.register_type(name="wire.C")
    @dataclasses.dataclass
    class C:
        x: int

    @dataclasses.dataclass
    class D:
        x: int

    assert codec.register_type(D, name="wire.D") is D
    for cls in (A, B, C, D):
        assert type(codec.decode(codec.encode(cls(1)))) is cls
    assert f"{A.__module__}.{A.__qualname__}".encode() in codec.encode(A(1))
    assert b"wire.C" in codec.encode(C(1))


def test_module_level_functions_share_one_registry() -> None:
    @register_type(name="tests.test_codec.ModuleLevel")
    @dataclasses.dataclass
    class ModuleLevel:
        n: int

    assert decode(encode(ModuleLevel(5))) == ModuleLevel(5)
    assert decode(encode((1, {2}))) == (1, {2})


def test_registering_again_the_same_way_is_a_no_op(codec: Codec) -> None:
    codec.register_type(Point, name="t.Point")
    codec.register_type(Point, name="t.Point")
    assert codec.decode(codec.encode(Point(1))) == Point(1)


def test_registration_errors(codec: Codec) -> None:
    @dataclasses.dataclass
    class Other:
        x: int

    with pytest.raises(ValueError, match=r"'t\.Point' is already registered for .*Point"):
        codec.register_type(Other, name="t.Point")
    with pytest.raises(ValueError, match=r"already registered as 't\.Point'"):
        codec.register_type(Point, name="t.Point2")
    with pytest.raises(ValueError, match="already registered"):
        codec.register_type(Box, name="t.Box", encode=lambda b: b.content, decode=Box)
    with pytest.raises(TypeError, match="not a dataclass, so it needs encode"):
        codec.register_type(socket.socket)
    with pytest.raises(TypeError, match="give both encode and decode"):
        codec.register_type(socket.socket, encode=lambda s: 1)
    with pytest.raises(TypeError, match="give both encode and decode"):
        codec.register_type(Other, decode=lambda s: Other(1))
    with pytest.raises(TypeError, match="takes a class"):
        codec.register_type(Point(1))  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="non-empty str"):
        codec.register_type(Other, name="")
    for builtin in (int, tuple, dict, frozenset, qchan.Channel):
        with pytest.raises(TypeError, match="cannot be registered"):
            codec.register_type(builtin, encode=lambda v: v, decode=lambda v: v)
    # the failed attempts left nothing behind
    assert codec.decode(codec.encode(Point(1))) == Point(1)
    with pytest.raises(TypeError, match="Other"):
        codec.encode(Other(1))


# -- refusals ----------------------------------------------------------------------------------


class Opaque:
    pass


@dataclasses.dataclass
class Unregistered:
    x: int


@pytest.mark.parametrize(
    ("value", "type_name", "where"),
    [
        (Opaque(), "tests.test_codec.Opaque", "at the top level"),
        ([1, 2, {"conn": Opaque()}], "tests.test_codec.Opaque", "at [2]['conn']"),
        ({"a": [Unregistered(1)]}, "tests.test_codec.Unregistered", "at ['a'][0]"),
        ((1, (2, Opaque())), "tests.test_codec.Opaque", "at [1][1]"),
        ({(1, Opaque()): 1}, "tests.test_codec.Opaque", "at <key #0>[1]"),
        ([{1, 2, Key(Opaque(), 1)}], "tests.test_codec.Opaque", "at [0]<item of set>.a"),
        (Point(1, [Opaque()]), "tests.test_codec.Opaque", "at .y[0]"),
        (Box([Opaque()]), "tests.test_codec.Opaque", "at <encoded t.Box>[0][0]"),
        ([Color.RED], "tests.test_codec.Color', a subclass of int", "at [0]"),
        (
            {"d": collections.defaultdict(int)},
            "collections.defaultdict', a subclass of dict",
            "at ['d']",
        ),
        (collections.OrderedDict(), "a subclass of dict", "at the top level"),
        ([type("S", (str,), {})("s")], "a subclass of str", "at [0]"),
        ([1.5, object()], "'object'", "at [1]"),
        (socket, "'module'", "at the top level"),
    ],
)
def test_unsupported_values_are_refused_by_type_and_place(
    codec: Codec, value: Any, type_name: str, where: str
) -> None:
    with pytest.raises(TypeError) as info:
        codec.encode(value)
    message = str(info.value)
    assert message.startswith("cannot send a value of type")
    assert type_name in message
    assert where in message
    assert "register it with qchan.register_type" in message


def test_extype_is_not_refused_by_encode_but_by_decode(codec: Codec) -> None:
    # msgpack writes an ExtType before any hook sees it, so encode cannot refuse one cheaply;
    # the receiving end refuses every extension type but the codec's own.
    data = codec.encode([msgpack.ExtType(42, b"x")])
    with pytest.raises(ProtocolError, match="unknown msgpack extension type"):
        codec.decode(data)


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_ints_out_of_range_are_refused(codec: Codec, number: int) -> None:
    with pytest.raises(TypeError, match=r"cannot send the int .* \(at \[1\]\['n'\]\): msgpack"):
        codec.encode([0, {"n": number}])
    with pytest.raises(TypeError, match="at the top level"):
        codec.encode(number)


def test_invalid_unicode_is_refused(codec: Codec) -> None:
    with pytest.raises(ValueError, match=r"not valid Unicode \(at \[0\]\)"):
        codec.encode(["\ud800"])


def test_refused_encode_calls_no_hook_and_leaves_the_codec_usable(codec: Codec) -> None:
    hooks = Hooks()
    channel: qchan.Channel[int] = qchan.Channel()
    for bad in ([channel, Opaque()], {"c": channel, "n": 2**64}, [channel, nest(2000, 0)]):
        with pytest.raises((TypeError, ValueError)):
            codec.encode(bad, channel_encoder=hooks.encoder)
    assert hooks.encoded == []
    assert round_trip(codec, [channel, (1,)]) == [channel, (1,)]


def test_channel_without_encoder_is_refused(codec: Codec) -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    for value, where in [(channel, "at the top level"), ({"r": [channel.sender()]}, "['r'][0]")]:
        with pytest.raises(TypeError, match="a channel can only be sent to another node") as info:
            codec.encode(value)
        assert where in str(info.value)


def test_channel_reference_without_decoder_is_a_protocol_error(codec: Codec) -> None:
    data = codec.encode([qchan.Channel()], channel_encoder=lambda handle: b"r")
    with pytest.raises(ProtocolError, match="channel reference"):
        codec.decode(data)


# -- channel hooks -----------------------------------------------------------------------------


def test_hooks_called_once_per_handle_and_results_put_in_place(codec: Codec) -> None:
    a: qchan.Channel[int] = qchan.Channel()
    b: qchan.Channel[int] = qchan.Channel(5)
    tx, rx = a.sender(), a.receiver()
    value = [
        a,
        (b,),
        {"k": tx, rx: "as a key"},
        {b},
        frozenset({a}),
        Job(1, b, ()),
        Box([tx]),
        nest(50, rx),
        a,
    ]
    hooks = Hooks()
    data = codec.encode(value, channel_encoder=hooks.encoder)
    assert hooks.encoded == [a, b, tx, rx, b, a, b, tx, rx, a]
    assert [type(h) for h in hooks.encoded[2:4]] == [type(tx), type(rx)]

    placed: list[bytes] = []

    def decoder(ref: bytes) -> object:
        placed.append(ref)
        return ("handle", ref)

    result = codec.decode(data, channel_decoder=decoder)
    assert placed == [b"ref-%d" % i for i in range(1, 11)]
    assert result[0] == ("handle", b"ref-1")
    assert result[1] == (("handle", b"ref-2"),)
    assert result[2] == {"k": ("handle", b"ref-3"), ("handle", b"ref-4"): "as a key"}
    assert result[3] == {("handle", b"ref-5")}
    assert result[4] == frozenset({("handle", b"ref-6")})
    assert result[5] == Job(1, ("handle", b"ref-7"), ())
    assert result[6].content == [("handle", b"ref-8")]
    assert result[7] == nest(50, ("handle", b"ref-9"))
    assert result[8] == ("handle", b"ref-10")


def test_handles_survive_a_round_trip_with_their_rights(codec: Codec) -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    value = {"both": channel, "tx": channel.sender(), "rx": channel.receiver()}
    result = round_trip(codec, value)
    assert result == value
    assert [type(v) for v in result.values()] == [type(v) for v in value.values()]


class HookFailed(Exception):
    pass


class HookValueError(ValueError):
    pass


class HookTypeError(TypeError):
    pass


class HookCancelled(BaseException):
    pass


@pytest.mark.parametrize(
    "error",
    [HookFailed("e"), HookValueError("v"), HookTypeError("t"), ProtocolError("p"), HookCancelled()],
    ids=lambda e: type(e).__name__,
)
def test_hook_errors_propagate_unchanged(codec: Codec, error: BaseException) -> None:
    channel: qchan.Channel[int] = qchan.Channel()

    def failing(arg: object) -> bytes:
        raise error

    with pytest.raises(type(error)) as info:
        codec.encode([1, {"c": channel}], channel_encoder=failing)
    assert info.value is error
    data = codec.encode([1, {"c": channel}], channel_encoder=lambda handle: b"r")
    with pytest.raises(type(error)) as info:
        codec.decode(data, channel_decoder=failing)
    assert info.value is error
    assert round_trip(codec, [channel]) == [channel]  # and the codec still works


def test_registered_encode_errors_propagate_unchanged() -> None:
    codec = Codec()
    error = HookValueError("no")

    def refuse(obj: object) -> object:
        raise error

    codec.register_type(Opaque, encode=refuse, decode=lambda state: Opaque())
    with pytest.raises(HookValueError) as info:
        codec.encode([Opaque()])
    assert info.value is error


def test_channel_encoder_must_return_bytes(codec: Codec) -> None:
    with pytest.raises(TypeError, match="channel_encoder must return bytes, not str"):
        codec.encode([qchan.Channel()], channel_encoder=lambda handle: "ref")  # type: ignore[arg-type,return-value]


def test_hooks_may_reenter_the_codec(codec: Codec) -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    data = codec.encode(
        [channel, (channel,)], channel_encoder=lambda handle: codec.encode(("ref", (1,)))
    )
    result = codec.decode(data, channel_decoder=lambda ref: codec.decode(ref))
    assert result == [("ref", (1,)), (("ref", (1,)),)]


def test_placeholder_bytes_inside_the_value_do_not_confuse_it(codec: Codec) -> None:
    codec.encode(0)
    placeholder = codec._encoders[-1].placeholder_bytes  # the encoder the next call will take
    channel: qchan.Channel[int] = qchan.Channel()
    value = [placeholder, channel, b"x" + placeholder]
    assert round_trip(codec, value) == value


def test_concurrent_encodes_in_threads(codec: Codec) -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(300):
                value = [n, i, (channel, Point(i, {n})), "x" * (i % 7)]
                assert round_trip(codec, value) == value
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- limits ------------------------------------------------------------------------------------


def test_message_too_large_at_the_boundary(codec: Codec) -> None:
    value = {"blob": b"x" * 1000, "t": (1, 2)}
    size = len(codec.encode(value))
    assert codec.encode(value, max_size=size) == codec.encode(value)
    with pytest.raises(
        MessageTooLarge, match=f"{size + 0} bytes, more than the limit of {size - 1}"
    ):
        codec.encode(value, max_size=size - 1)
    assert issubclass(MessageTooLarge, ValueError)
    assert DEFAULT_MAX_SIZE == 64 * 2**20


def test_message_too_large_counts_channel_references(codec: Codec) -> None:
    channel: qchan.Channel[int] = qchan.Channel()
    ref = b"r" * 100
    size = len(codec.encode([channel], channel_encoder=lambda handle: ref))
    assert codec.encode([channel], channel_encoder=lambda handle: ref, max_size=size)
    with pytest.raises(MessageTooLarge):
        codec.encode([channel], channel_encoder=lambda handle: ref, max_size=size - 1)


def test_message_too_large_before_the_hook_when_it_cannot_fit(codec: Codec) -> None:
    hooks = Hooks()
    with pytest.raises(MessageTooLarge, match="at least"):
        codec.encode([b"x" * 500, qchan.Channel()], channel_encoder=hooks.encoder, max_size=100)
    assert hooks.encoded == []


def test_large_values_round_trip_and_reuse_no_huge_buffer(codec: Codec) -> None:
    value = [b"x" * 3 * 2**20, list(range(10_000)), {str(i): (i,) for i in range(1000)}]
    assert same(round_trip(codec, value), value)
    assert same(round_trip(codec, value), value)


def test_decode_refuses_more_than_max_size(codec: Codec) -> None:
    data = codec.encode(b"x" * 100)
    assert codec.decode(data, max_size=len(data)) == b"x" * 100
    with pytest.raises(ProtocolError, match="over the limit"):
        codec.decode(data, max_size=len(data) - 1)


def test_depth_limit_when_encoding(codec: Codec) -> None:
    at_limit = nest(MAX_DEPTH, 0)  # (Python's own == would overflow its stack comparing these)
    assert codec.encode(round_trip(codec, at_limit)) == codec.encode(at_limit)
    for too_deep in (
        nest(MAX_DEPTH + 1, 0),
        nest(5000, 0),
        nest(5000, 0, lambda v: (v,)),
        nest(5000, 0, lambda v: {"k": v}),
        nest(5000, 0, lambda v: Point(v)),
        nest(5000, 0, lambda v: Box(v)),
    ):
        with pytest.raises(ValueError, match=f"nested more than {MAX_DEPTH} levels deep"):
            codec.encode(too_deep)


def test_cyclic_values_are_refused(codec: Codec) -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    mapping: dict[str, Any] = {}
    mapping["self"] = (mapping,)
    point = Point(1)
    point.y = [point]
    for value, where in [(looped, "at [1]"), (mapping, "at ['self'][0]"), (point, "at .y[0]")]:
        with pytest.raises(ValueError, match="contains itself") as info:
            codec.encode(value)
        assert where in str(info.value)


def test_depth_limit_when_decoding(codec: Codec) -> None:
    deepest = b"\x91" * MAX_DEPTH + b"\x00"
    assert codec.encode(codec.decode(deepest)) == deepest
    for data in (
        b"\x91" * (MAX_DEPTH + 1) + b"\x00",
        b"\x81\x00" * (MAX_DEPTH + 1) + b"\x00",
        b"\x92\xc7\x00\x01" * (MAX_DEPTH + 1) + b"\x00",  # tuples
    ):
        with pytest.raises(ProtocolError, match=f"nested more than {MAX_DEPTH} levels deep"):
            codec.decode(data)


# -- malformed input ---------------------------------------------------------------------------


def packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def mark(code: int, data: bytes = b"") -> msgpack.ExtType:
    return msgpack.ExtType(code, data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x92\x01", "truncated"),
        (b"\xa5abc", "truncated"),
        (b"\x01\x02", "trailing bytes"),
        (b"\xc1", "not valid msgpack"),
        (b"\xa2\xff\xfe", "UnicodeDecodeError"),
        (b"\xd6\xff\x00", "truncated"),
        (b"\xd4\xff\x00", "timestamp"),
        (packb(mark(42)), "unknown msgpack extension type"),
        (packb([mark(EXT_TUPLE, b"x"), 1]), "carries 1 bytes"),
        (packb(mark(EXT_TUPLE)), "outside its place"),
        (packb([1, mark(EXT_TUPLE)]), "outside its place"),
        (packb([mark(EXT_TUPLE), mark(EXT_SET)]), "outside its place"),
        (packb({"k": mark(EXT_OBJECT)}), "outside its place"),
        (packb([mark(EXT_SET), [1]]), "unhashable"),
        (packb([mark(EXT_FROZENSET), {}]), "unhashable"),
        (packb({(1,): 2}), "unhashable"),  # a plain array as a key
        (packb([mark(EXT_OBJECT), "t.Point"]), r"expected \[marker, name, state\]"),
        (packb([mark(EXT_OBJECT), 7, {}]), r"expected \[marker, name, state\]"),
        (packb([mark(EXT_OBJECT), "app.Job", {}]), r"'app\.Job', which is not registered here"),
        (packb([mark(EXT_OBJECT), "t.Point", {"z": 1}]), r"rebuild a 't\.Point'.*TypeError"),
        (packb([mark(EXT_OBJECT), "t.Point", [1]]), r"rebuild a 't\.Point'"),
        (packb([mark(EXT_OBJECT), "t.Point", {1: 1}]), r"rebuild a 't\.Point'"),
        (packb([mark(EXT_OBJECT), "t.Box", [1, 2]]), r"rebuild a 't\.Box'.*ValueError"),
        (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
        (b"\xdb\xff\xff\xff\xff", "malformed message"),
    ],
)
def test_malformed_input_is_a_protocol_error(codec: Codec, data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        codec.decode(data, channel_decoder=lambda ref: ref)


def test_protocol_errors_are_raised_from_their_cause(codec: Codec) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(packb([mark(EXT_OBJECT), "t.Point", {"z": 1}]))
    assert isinstance(info.value.__cause__, TypeError)


def test_unregistered_name_is_reported_even_when_nested(codec: Codec) -> None:
    sender = make_codec()
    sender.register_type(Unregistered, name="app.Unregistered")
    data = sender.encode({"jobs": [(1, Unregistered(2))]})
    with pytest.raises(ProtocolError, match=r"'app\.Unregistered', which is not registered here"):
        codec.decode(data)


def test_large_input_is_checked_before_it_is_built(codec: Codec) -> None:
    # over the structure-check size: truncation and trailing bytes are still reported as such
    data = codec.encode([b"x" * 5000, (1, 2)])
    assert codec.decode(data) == [b"x" * 5000, (1, 2)]
    with pytest.raises(ProtocolError, match="truncated"):
        codec.decode(data[:-1])
    with pytest.raises(ProtocolError, match="trailing bytes"):
        codec.decode(data + b"\x00")


def test_decode_accepts_bytes_like(codec: Codec) -> None:
    data = codec.encode({"a": (1,)})
    assert codec.decode(bytearray(data)) == {"a": (1,)}
    assert codec.decode(memoryview(data)) == {"a": (1,)}
