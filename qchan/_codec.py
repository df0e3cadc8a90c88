"""Values <-> msgpack bytes, for sending between nodes; nothing is ever unpickled.

Theory of operation
-------------------
Plain values (None, bool, int, float, str, bytes, list, dict, ``msgpack.Timestamp``) are packed
and unpacked by msgpack's C extension with no Python code per element: one reusable
``msgpack.Packer`` (``strict_types=True``, so an ``IntEnum`` or a ``defaultdict`` is never
silently flattened) and one ``msgpack.unpackb`` call. Everything else goes through the packer's
``default`` hook, which rewrites it as an array whose first element is a *marker*, an empty ext
value of a type code of ours::

    (1, 2)              [ext(1), 1, 2]                  EXT_TUPLE
    {1, 2}              [ext(2), 1, 2]                  EXT_SET
    frozenset({1, 2})   [ext(3), 1, 2]                  EXT_FROZENSET
    Job(id=7)           [ext(4), "app.Job", {"id": 7}]  EXT_OBJECT: register_type'd classes
    a channel handle    ext(5, <ref bytes>)             EXT_CHANNEL: opaque, from the node's hook

On the way in, ``ext_hook`` turns markers back into sentinels and ``list_hook`` rebuilds any
array that starts with one, bottom-up. Markers live *inside* the msgpack structure rather than
wrapping packed payloads, so msgpack's C code does all the recursion on both sides: there is
no Python recursion at all (no RecursionError, however deep the value), nesting is bounded by
msgpack's own limit (:data:`MAX_DEPTH`, checked in C for free), and a dataclass costs one hook
call rather than a nested pack.

Channel handles are packed as a placeholder first; the node's ``channel_encoder`` hook runs
only once the whole value is known to encode, and the placeholders are then replaced by the
references it returned. So a failed encode has no side effects.

Decoding trusts nothing: every failure is a :class:`~qchan._errors.ProtocolError` (except
what the ``channel_decoder`` hook raises, which passes through unchanged). msgpack's
``max_*_len`` limits come from the input size, so a 10-byte input cannot declare a 4 GB array;
and because the C unpacker preallocates every array it opens, inputs above
``_CHECK_STRUCTURE_ABOVE`` bytes are first walked by msgpack's allocation-free ``skip()``,
so nested arrays that each declare a large length cannot add up to gigabytes.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import reprlib
from collections.abc import Callable
from typing import Any, Final, TypeVar, final, overload

import msgpack

from qchan._channel import _Handle
from qchan._errors import MessageTooLarge, ProtocolError

__all__ = [
    "Codec",
    "ChannelDecoder",
    "ChannelEncoder",
    "DEFAULT_MAX_SIZE",
    "EXT_CHANNEL",
    "EXT_FROZENSET",
    "EXT_OBJECT",
    "EXT_SET",
    "EXT_TUPLE",
    "MAX_DEPTH",
    "decode",
    "encode",
    "register_type",
]

T = TypeVar("T")

#: Called with each channel handle found in a value; returns the bytes that stand for it.
ChannelEncoder = Callable[[_Handle], bytes]
#: Called with each channel reference found in a message; returns what stands in its place.
ChannelDecoder = Callable[[bytes], object]

EXT_TUPLE: Final = 1
EXT_SET: Final = 2
EXT_FROZENSET: Final = 3
EXT_OBJECT: Final = 4
EXT_CHANNEL: Final = 5

#: The default limit on an encoded value, in bytes.
DEFAULT_MAX_SIZE: Final = 64 * 2**20

#: Nesting limit, both ways: msgpack's C packer and unpacker both stop at 1024 levels (a
#: compiled-in constant), at no cost per message. A dataclass takes two levels (its marker
#: array and its field map), a tuple, set or registered value one. (One edge: the packer lets
#: a 1025th level through when it is an empty list or dict; the receiver refuses that value.)
MAX_DEPTH: Final = 1024

# Above this size, decode first checks the structure with msgpack's allocation-free skip().
# At or below it, the worst a crafted input can make the unpacker preallocate is
# (1024 / 3 nested arrays) * (1024 slots) * 8 bytes, under 3 MB.
_CHECK_STRUCTURE_ABOVE: Final = 1024

# A pooled Packer keeps its largest buffer forever; one that packed more than this is dropped.
_KEEP_PACKER_BELOW: Final = 2**20

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1

# What the packer writes as itself, besides int and str (which have limits of their own).
_LEAVES: Final = frozenset(
    {type(None), bool, float, bytes, bytearray, memoryview, msgpack.Timestamp}
)

_unpackb: Final = msgpack.unpackb

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40


@final
class _Marker:
    """What a marker ext decodes to, until ``list_hook`` consumes it."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"<qchan codec marker {self.code}>"


_MARKERS: Final = {code: _Marker(code) for code in (EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_OBJECT)}
_TUPLE_MARK: Final = msgpack.ExtType(EXT_TUPLE, b"")
_SET_MARK: Final = msgpack.ExtType(EXT_SET, b"")
_FROZENSET_MARK: Final = msgpack.ExtType(EXT_FROZENSET, b"")
_OBJECT_MARK: Final = msgpack.ExtType(EXT_OBJECT, b"")

# Types msgpack sends as themselves, or that the codec already handles: never registrable.
_BUILTIN: Final = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, memoryview, list, tuple, dict, set}
    | {frozenset, msgpack.Timestamp, msgpack.ExtType}
)


@final
@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """A registered type: its wire name and how it becomes a sendable value and back."""

    cls: type[Any]
    name: str
    encode: Callable[[Any], Any]  # obj -> a value the codec can send
    decode: Callable[[Any], Any] | None  # that value -> obj; None for a dataclass: cls(**map)
    fields: tuple[str, ...] | None  # a dataclass's init fields, when it travels as their map

    def same_as(self, other: _Entry) -> bool:
        """Whether ``other`` registers the same class the same way (so it changes nothing)."""
        if self.fields is not None and other.fields is not None:
            return self.name == other.name  # both the fields' map: encode is ours, not theirs
        return (self.name, self.encode, self.decode) == (other.name, other.encode, other.decode)


def _dataclass_fields(cls: type[Any]) -> tuple[tuple[str, ...], Callable[[Any], Any]]:
    """A dataclass's init fields, and the function that reads them into a dict.

    Raises:
        TypeError: ``cls(**fields)`` cannot rebuild it: its constructor requires something
            that is not an init field (a required InitVar, a hand-written ``__init__``).
    """
    names = tuple(field.name for field in dataclasses.fields(cls) if field.init)
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # no signature to read: the receiver will find out
        parameters = []
    for parameter in parameters:
        required = parameter.default is parameter.empty and parameter.kind not in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        )
        if required and parameter.name not in names:
            raise TypeError(
                f"register_type({cls.__qualname__}): its constructor requires"
                f" {parameter.name!r}, which is not an init field; give encode and decode"
            )

    def to_state(obj: Any) -> dict[str, Any]:
        return {name: getattr(obj, name) for name in names}

    return names, to_state


class _Refused(Exception):
    """Raised by the packer's default hook for a value it cannot send (diagnosed afterwards)."""


class _Encoder:
    """One reusable Packer, with the per-call state its default hook needs.

    Encoders are pooled rather than shared so that encode is reentrant (a hook may encode) and
    thread-safe: each call takes one from the pool and puts it back.
    """

    __slots__ = (
        "by_type",
        "handles",
        "pack",
        "pack_ext",
        "placeholder",
        "placeholder_bytes",
        "user_error",
    )

    def __init__(self, codec: Codec) -> None:
        self.by_type = codec._by_type
        self.handles: list[_Handle] = []
        self.user_error: BaseException | None = None
        # A random placeholder per encoder: it never leaves the process, so no value (not even
        # bytes relayed from a peer) can contain it except by a 2**-128 accident, which
        # _place_channels detects and retries.
        self.placeholder = msgpack.ExtType(EXT_CHANNEL, os.urandom(16))
        packer = msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True)
        self.pack: Callable[[Any], bytes] = packer.pack
        self.pack_ext: Callable[[int, bytes], bytes] = packer.pack_ext_type
        self.placeholder_bytes: bytes = self.pack(self.placeholder)

    def _default(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is tuple:
            return [_TUPLE_MARK, *obj]
        entry = self.by_type.get(cls)
        if entry is not None:
            try:
                state = entry.encode(obj)
            except BaseException as exc:  # the user's code: it must come out unchanged
                self.user_error = exc
                raise
            return [_OBJECT_MARK, entry.name, state]
        if cls is set:
            return [_SET_MARK, *obj]
        if cls is frozenset:
            return [_FROZENSET_MARK, *obj]
        if isinstance(obj, _Handle):
            self.handles.append(obj)
            return self.placeholder
        raise _Refused


class _Decoder:
    """The per-call state of one decode: the channel hook and the count of unplaced markers."""

    __slots__ = ("by_name", "channel_decoder", "ext_hook", "hook_error", "list_hook", "markers")

    def __init__(self, codec: Codec) -> None:
        self.by_name = codec._by_name
        self.channel_decoder: ChannelDecoder | None = None
        self.hook_error: BaseException | None = None
        self.markers = 0
        # Bound once: handing unpackb a stored bound method costs nothing per call.
        self.ext_hook = self._ext_hook
        self.list_hook = self._list_hook

    def _ext_hook(self, code: int, data: bytes) -> object:
        if code == EXT_CHANNEL:
            channel_decoder = self.channel_decoder
            if channel_decoder is None:
                raise ProtocolError("message holds a channel reference, but none was expected")
            try:
                return channel_decoder(data)
            except BaseException as exc:  # the node's own error: it must come out unchanged
                self.hook_error = exc
                raise
        marker = _MARKERS.get(code)
        if marker is None:
            raise ProtocolError(f"message holds an unknown msgpack extension type ({code})")
        if data:
            raise ProtocolError(f"marker extension {code} carries {len(data)} bytes, not 0")
        self.markers += 1
        return marker

    def _list_hook(self, items: list[Any]) -> Any:
        if items and type(items[0]) is _Marker:
            return self._rebuild(items)
        return items

    def _rebuild(self, items: list[Any]) -> Any:
        code = items[0].code
        self.markers -= 1  # every marker must be consumed here, as the head of an array
        if code == EXT_TUPLE:
            return tuple(items[1:])
        if code != EXT_OBJECT:
            try:
                return set(items[1:]) if code == EXT_SET else frozenset(items[1:])
            except TypeError as exc:
                raise ProtocolError(f"message holds a set with an unhashable item: {exc}") from None
        if len(items) != 3 or type(items[1]) is not str:
            raise ProtocolError("malformed registered-type value: expected [marker, name, state]")
        _, name, state = items
        entry = self.by_name.get(name)
        if entry is None:
            raise ProtocolError(
                f"value contains type {name[:200]!r}, which is not registered here"
                " (qchan.register_type)"
            )
        try:
            if entry.decode is None:  # a dataclass: a map of its init fields
                return entry.cls(**state)
            return entry.decode(state)
        except Exception as exc:
            raise ProtocolError(
                f"could not rebuild a {name[:200]!r} from the value received: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _malformed(exc: Exception) -> ProtocolError:
    """The ProtocolError for an exception msgpack (or Python, building values) raised."""
    if isinstance(exc, msgpack.ExtraData):
        return ProtocolError("malformed message: trailing bytes after the value")
    if isinstance(exc, msgpack.StackError):
        return ProtocolError(f"malformed message: nested more than {MAX_DEPTH} levels deep")
    if isinstance(exc, msgpack.FormatError):
        return ProtocolError("malformed message: not valid msgpack")
    if isinstance(exc, msgpack.OutOfData) or "incomplete input" in str(exc):
        return ProtocolError("malformed message: truncated")
    return ProtocolError(f"malformed message: {type(exc).__name__}: {exc}")


def _check_structure(data: bytes | bytearray | memoryview, size: int) -> None:
    """Walk ``data`` without building anything: complete, well-formed, one value, not too deep.

    Once this passes, every length the unpacker preallocates is backed by that many values
    actually present, so building the value takes memory in proportion to the input.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=size)
    unpacker.feed(data)
    unpacker.skip()
    if unpacker.tell() != size:
        raise msgpack.ExtraData(None, None)


def _too_large(size: int, max_size: int, at_least: str = "") -> str:
    return f"value encodes to {at_least}{size} bytes, more than the limit of {max_size}"


def _where(path: str) -> str:
    if not path:
        return "at the top level"
    if len(path) > 120:  # say, a thousand levels of [0]
        return f"at {path[:50]}...{path[-50:]}"
    return f"at {path}"


def _type_name(cls: type[Any]) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@final
class Codec:
    """A registry of user types, with the encode and decode that use it.

    The module's :func:`register_type`, :func:`encode` and :func:`decode` are those of one
    process-wide instance; tests make their own to stay independent.
    """

    __slots__ = ("_by_name", "_by_type", "_decoders", "_encoders")

    def __init__(self) -> None:
        self._by_type: dict[type[Any], _Entry] = {}
        self._by_name: dict[str, _Entry] = {}
        self._encoders: list[_Encoder] = []
        self._decoders: list[_Decoder] = []

    # -- registration ---------------------------------------------------------------------

    @overload
    def register_type(
        self,
        cls: type[T],
        *,
        name: str | None = None,
        encode: Callable[[T], Any] | None = None,
        decode: Callable[[Any], T] | None = None,
    ) -> type[T]: ...

    @overload
    def register_type(
        self,
        cls: None = None,
        *,
        name: str | None = None,
        encode: Callable[[Any], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> Callable[[type[T]], type[T]]: ...

    def register_type(
        self,
        cls: type[T] | None = None,
        *,
        name: str | None = None,
        encode: Callable[[Any], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> type[T] | Callable[[type[T]], type[T]]:
        """Let values of ``cls`` be sent, under a wire name both ends must register.

        Usable as ``register_type(cls)`` or as a decorator, bare or with arguments. A dataclass
        needs nothing more: its init fields travel as a map and it is rebuilt with
        ``cls(**fields)``. Any other class needs ``encode(obj)``, returning a value this codec
        can send, and ``decode(value)``, rebuilding the object. ``name`` defaults to
        ``"module.QualName"``. Registering the same class again the same way does nothing.

        Raises:
            TypeError: ``cls`` is not a class, is one msgpack sends as itself or a channel, or is
                not a dataclass and lacks ``encode`` or ``decode`` (or only one was given).
            ValueError: the name is already taken by another class, or ``cls`` is already
                registered differently.
        """
        if cls is None:

            def decorator(cls: type[T]) -> type[T]:
                return self.register_type(cls, name=name, encode=encode, decode=decode)

            return decorator
        self._add(self._entry(cls, name, encode, decode))
        return cls

    def _entry(
        self,
        cls: object,
        name: str | None,
        encode: Callable[[Any], Any] | None,
        decode: Callable[[Any], Any] | None,
    ) -> _Entry:
        if not isinstance(cls, type):
            raise TypeError(f"register_type takes a class, not {_short.repr(cls)}")
        if cls in _BUILTIN or issubclass(cls, _Handle):
            raise TypeError(f"{_type_name(cls)} is sent as itself and cannot be registered")
        if name is None:
            name = f"{cls.__module__}.{cls.__qualname__}"
        elif not isinstance(name, str) or not name:
            raise TypeError(f"the wire name must be a non-empty str, not {_short.repr(name)}")
        if (encode is None) != (decode is None):
            raise TypeError(f"register_type({cls.__qualname__}): give both encode and decode")
        if encode is not None and decode is not None:
            return _Entry(cls, name, encode, decode, None)
        if not dataclasses.is_dataclass(cls):
            raise TypeError(
                f"register_type({cls.__qualname__}): not a dataclass, so it needs"
                " encode=(obj -> sendable value) and decode=(value -> obj)"
            )
        fields, to_state = _dataclass_fields(cls)
        return _Entry(cls, name, to_state, None, fields)

    def _add(self, entry: _Entry) -> None:
        known = self._by_type.get(entry.cls)
        if known is not None:
            if known.same_as(entry):
                return
            raise ValueError(f"{_type_name(entry.cls)} is already registered as {known.name!r}")
        taken = self._by_name.get(entry.name)
        if taken is not None:
            raise ValueError(
                f"the wire name {entry.name!r} is already registered for {_type_name(taken.cls)}"
            )
        self._by_name[entry.name] = entry
        self._by_type[entry.cls] = entry

    # -- encode ---------------------------------------------------------------------------

    def encode(
        self,
        value: object,
        *,
        channel_encoder: ChannelEncoder | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> bytes:
        """The msgpack bytes for ``value``; all or nothing.

        ``channel_encoder(handle)`` is called once for each channel handle in the value
        (wherever it sits, in the order the value is walked: depth first, in iteration order),
        only once the rest of the value has encoded and fits ``max_size``, and the bytes it
        returns stand for that handle. Besides what this codec supports as such (see the
        module's docstring), ``msgpack.Timestamp`` travels as msgpack's own timestamp.

        Raises:
            TypeError: part of the value cannot be sent (the message names its type and where it
                sits), an int is outside msgpack's range, a channel is present but
                ``channel_encoder`` is None, or ``channel_encoder`` did not return bytes.
            ValueError: the value contains itself or is nested more than :data:`MAX_DEPTH`
                levels deep, or holds a str that is not valid Unicode.
            MessageTooLarge: the encoded value is longer than ``max_size`` bytes.
            Exception: whatever ``channel_encoder`` or a registered type's ``encode`` raised,
                unchanged.
        """
        pool = self._encoders
        encoder = pool.pop() if pool else _Encoder(self)
        try:
            data = encoder.pack(value)
            if encoder.handles:
                # Fail on size before the hook runs, if references (3 bytes or more each)
                # in place of the placeholders cannot bring the value under the limit.
                shrink = len(encoder.handles) * (len(encoder.placeholder_bytes) - 3)
                if len(data) - shrink > max_size:
                    raise MessageTooLarge(_too_large(len(data) - shrink, max_size, "at least "))
                data = self._place_channels(encoder, value, data, channel_encoder)
        except (_Refused, ValueError) as exc:  # else: the hooks' errors, or msgpack's own
            # The encoder is dropped, not pooled: its state is of no further use.
            if exc is encoder.user_error or isinstance(exc, MessageTooLarge):
                raise
            problem = self._diagnose(value, channel_encoder is not None)
            if problem is None:
                raise  # a limit of msgpack's own (a str over 4 GB, say): its message is clear
            raise problem from None
        if len(data) < _KEEP_PACKER_BELOW:  # else its buffer grew that big, and would stay so
            pool.append(encoder)
        if len(data) > max_size:
            raise MessageTooLarge(_too_large(len(data), max_size))
        return data

    def _place_channels(
        self,
        encoder: _Encoder,
        value: object,
        data: bytes,
        channel_encoder: ChannelEncoder | None,
    ) -> bytes:
        """Swap each placeholder in ``data`` for the ext holding its channel's reference."""
        if channel_encoder is None:
            raise _Refused
        try:
            refs = [channel_encoder(handle) for handle in encoder.handles]
        except BaseException as exc:
            encoder.user_error = exc
            raise
        encoder.handles.clear()
        for ref in refs:
            if type(ref) is not bytes:
                raise TypeError(f"channel_encoder must return bytes, not {type(ref).__name__}")
        pieces = data.split(encoder.placeholder_bytes)
        if len(pieces) != len(refs) + 1:
            # The value itself contains the placeholder's bytes: repack with a fresh one.
            encoder.placeholder = msgpack.ExtType(EXT_CHANNEL, os.urandom(16))
            encoder.placeholder_bytes = encoder.pack(encoder.placeholder)
            data = encoder.pack(value)
            encoder.handles.clear()
            pieces = data.split(encoder.placeholder_bytes)
            if len(pieces) != len(refs) + 1:
                raise RuntimeError("the value changed while it was being encoded")
        pack_ext = encoder.pack_ext
        out = [pieces[0]]
        for i, ref in enumerate(refs, 1):
            out.append(pack_ext(EXT_CHANNEL, ref))
            out.append(pieces[i])
        return b"".join(out)

    def _diagnose(self, value: object, channels_allowed: bool) -> Exception | None:
        """The error to raise for the first part of ``value`` the packer refused, if any.

        Runs only after a failure, so it can afford to walk the value in Python, mirroring the
        default hook (registered types' ``encode`` runs again) and counting levels as msgpack
        does. Iterative, so it works at any depth.
        """
        leave = object()  # pushed under a container's children: popping it leaves the container
        # The containers on the current path, by id: a repeat is a cycle. They are held, not
        # just their ids, so that a temporary one (a registered type's encoded form) cannot be
        # freed and its id reused while it is on the path.
        active: dict[int, object] = {}
        stack: list[tuple[Any, str, int]] = [(value, "", 0)]
        while stack:
            obj, path, depth = stack.pop()
            if obj is leave:
                del active[depth]  # for ``leave``, the slot holds the container's id
                continue
            if depth > MAX_DEPTH:
                return ValueError(
                    f"cannot send a value nested more than {MAX_DEPTH} levels deep ({_where(path)})"
                )
            cls = type(obj)
            if cls in _LEAVES:
                continue
            if cls is int:
                if not _INT_MIN <= obj <= _INT_MAX:
                    return TypeError(
                        f"cannot send the int {_short.repr(obj)} ({_where(path)}): msgpack"
                        " integers lie between -2**63 and 2**64 - 1"
                    )
                continue
            if cls is str:
                try:
                    obj.encode()
                except UnicodeEncodeError as exc:
                    return ValueError(
                        f"cannot send a str that is not valid Unicode ({_where(path)}): {exc}"
                    )
                continue
            if isinstance(obj, _Handle):
                if not channels_allowed:
                    return TypeError(
                        f"a channel can only be sent to another node ({_where(path)}):"
                        " this encode was given no channel_encoder"
                    )
                continue
            children = self._children(obj, path, depth)
            if children is None:
                return TypeError(self._refusal(cls, path))
            if id(obj) in active:
                return ValueError(f"cannot send a value that contains itself ({_where(path)})")
            active[id(obj)] = obj
            stack.append((leave, "", id(obj)))
            stack.extend(reversed(children))
        return None

    def _children(self, obj: Any, path: str, depth: int) -> list[tuple[Any, str, int]] | None:
        """What the packer recurses into for ``obj``, with paths and depths; None: refused."""
        cls = type(obj)
        if cls is list or cls is tuple:
            return [(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(obj)]
        if cls is dict:
            children = []
            for i, (key, item) in enumerate(obj.items()):
                children.append((key, f"{path}<key #{i}>", depth + 1))
                children.append((item, f"{path}[{_short.repr(key)}]", depth + 1))
            return children
        if cls is set or cls is frozenset:
            return [(item, f"{path}<item of {cls.__name__}>", depth + 1) for item in obj]
        entry = self._by_type.get(cls)
        if entry is None:
            return None
        if entry.fields is not None:  # [marker, name, {field: value}]: values two levels down
            return [(getattr(obj, name), f"{path}.{name}", depth + 2) for name in entry.fields]
        return [(entry.encode(obj), f"{path}<encoded {entry.name}>", depth + 1)]

    @staticmethod
    def _refusal(cls: type[Any], path: str) -> str:
        why = ""
        for base in (int, float, str, bytes, list, tuple, dict, set, frozenset):
            if issubclass(cls, base):
                why = f", a subclass of {base.__name__} (only exact {base.__name__} is sent as one)"
                break
        return (
            f"cannot send a value of type {_type_name(cls)!r}{why} ({_where(path)}):"
            " register it with qchan.register_type"
        )

    # -- decode ---------------------------------------------------------------------------

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        *,
        channel_decoder: ChannelDecoder | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> Any:
        """The value encoded in ``data``, which may come from a buggy or malicious peer.

        ``channel_decoder(ref)`` is called for each channel reference, and what it returns
        takes the reference's place.

        Raises:
            ProtocolError: ``data`` is anything but one well-formed value this node can rebuild:
                truncated, trailing bytes, unknown or misplaced extension types, a type not
                registered here, a registered type whose decode (or constructor) failed,
                unhashable keys or set items, nesting over :data:`MAX_DEPTH`, more than
                ``max_size`` bytes, a channel reference while ``channel_decoder`` is None...
            Exception: whatever ``channel_decoder`` raised, unchanged.
        """
        size = len(data)
        if size > max_size:
            raise ProtocolError(f"message of {size} bytes is over the limit of {max_size}")
        pool = self._decoders
        decoder = pool.pop() if pool else _Decoder(self)
        decoder.channel_decoder = channel_decoder
        try:
            if size > _CHECK_STRUCTURE_ABOVE:
                _check_structure(data, size)
            value = _unpackb(
                data,
                ext_hook=decoder.ext_hook,
                list_hook=decoder.list_hook,
                strict_map_key=False,
                # A declared length can never exceed what the input could hold.
                max_str_len=size,
                max_bin_len=size,
                max_ext_len=size,
                max_array_len=size,
                max_map_len=size // 2,
            )
        except ProtocolError:
            raise  # the decoder, now in an unknown state, is dropped rather than pooled
        except Exception as exc:
            if exc is decoder.hook_error:
                raise
            raise _malformed(exc) from exc
        if decoder.markers:
            raise ProtocolError("malformed message: a marker extension outside its place")
        decoder.channel_decoder = None
        pool.append(decoder)
        return value


_default_codec: Final = Codec()

#: Let values of a class be sent; see :meth:`Codec.register_type`.
register_type = _default_codec.register_type
#: Value -> msgpack bytes; see :meth:`Codec.encode`.
encode = _default_codec.encode
#: Msgpack bytes -> value; see :meth:`Codec.decode`.
decode = _default_codec.decode
