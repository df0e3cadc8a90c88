"""Fuzz targets: each takes any ``bytes`` and returns normally, or raises a finding.

A target catches the errors its code under test is documented to raise for hostile input
(``ProtocolError``, and ``AuthenticationError`` for the handshake), checks what came out, and
lets everything else escape: any exception out of a target is a bug (an ``AssertionError`` is
a broken invariant). The same functions run under atheris (``benchmarks/fuzz.py``), under
hypothesis and as a corpus replay (``test_fuzz_corpus.py``).

Targets:

``frames``      :class:`~qchan.protocol.FrameDecoder` fed a run of transport plaintexts, with
                and without its C fast path: both must decode or refuse alike.
``codec``       ``qchan._codec.decode`` with a ``ChannelRef.decode`` channel hook; what decodes
                must encode again, to the same value.
``handshake``   a responder :class:`~qchan.crypto.NoiseHandshake` fed arbitrary, genuine and
                mutated messages 1 and 3.
``connection``  a responder :class:`~qchan.protocol.Connection` fed an arbitrary byte stream,
                or a genuine handshake then sealed plaintexts (arbitrary, or whole frames that
                must come out exactly as sent), cut into arbitrary reads.
``session``     see :mod:`tests.fuzz._session_target`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from qchan import _codec
from qchan._errors import AuthenticationError, PeerLost, ProtocolError
from qchan._refs import ChannelRef
from qchan.crypto.cipher import MAX_PLAINTEXT_LEN, TransportCipher
from qchan.crypto.handshake import NoiseHandshake
from qchan.crypto.noise import KeyPair
from qchan.protocol import (
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    FramesReceived,
    GoawayReceived,
    HandshakeCompleted,
    Hello,
    Kind,
    State,
)
from qchan.protocol.frames import (
    PART_OVERHEAD,
    SCHEMAS,
    Frame,
    FrameDecoder,
    encode_frame,
    validate,
)
from tests.protocol._helpers import (
    CLUSTER_KEY,
    INITIATOR_EPHEMERAL,
    INITIATOR_HELLO,
    INITIATOR_KEY,
    RESPONDER_EPHEMERAL,
    RESPONDER_HELLO,
    RESPONDER_KEY,
    STRANGER_KEY,
)

from ._input import U64_MAX, Choices

__all__ = ["TARGETS", "Target"]

_LENGTH: Final = struct.Struct(">H")
_LAST_CONTROL: Final = int(Kind.PART)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    max_len: int  # the largest input worth generating (libFuzzer's -max_len)


# --- frames -----------------------------------------------------------------------------------


def _message_size(choices: Choices) -> int:
    head = choices.byte()
    return head if head < 0xF0 else choices.below(MAX_PLAINTEXT_LEN + 1)


def fuzz_frames(data: bytes) -> None:
    choices = Choices(data)
    max_frame_size = (64, 4096, 1 << 20)[choices.below(3)]
    decoder = FrameDecoder(max_frame_size)
    # The reference alongside: the C fast path must agree with it on every message.
    reference = FrameDecoder(max_frame_size, accelerated=False)
    while not choices.exhausted:
        message = choices.take(_message_size(choices))
        frames = _outcome(decoder, message)
        assert frames == _outcome(reference, message), "the fast path and the reference disagree"
        if isinstance(frames, str):
            return  # the decoder is unusable after an error, like its connection
        for typed in frames:
            frame = [field for _, field in typed]
            _check_frame(frame)
            assert frame[0] != Kind.PART, frame
            size = len(encode_frame(frame))  # (minimal: at most what arrived)
            assert size <= max(max_frame_size, len(message)), "a frame above the limit"


def _outcome(decoder: FrameDecoder, message: bytes) -> list[list[tuple[type, Any]]] | str:
    """The frames, each field paired with its exact type (1 == True), or the error's text."""
    try:
        frames = decoder.decode(message)
    except ProtocolError as exc:
        return str(exc)
    return [[(type(field), field) for field in frame] for frame in frames]


def _check_frame(frame: Frame) -> None:
    assert validate(frame) is frame
    encoded = encode_frame(frame)
    if len(encoded) <= MAX_PLAINTEXT_LEN:
        assert FrameDecoder(len(encoded)).decode(encoded) == [frame], frame


# --- codec ------------------------------------------------------------------------------------


def fuzz_codec(data: bytes) -> None:
    try:
        value = _codec.decode(data, channel_decoder=ChannelRef.decode)
    except ProtocolError:
        return
    refs = False
    for part in _walk(value):
        assert type(part) is not _codec._Marker, "a codec marker leaked into a value"
        refs = refs or type(part) is ChannelRef
    if refs:
        return  # (a ChannelRef is not a handle: it cannot be sent on as such)
    # What a peer can send us, we can send on: the value encodes, and to the same value.
    first = _codec.encode(value)
    second = _codec.encode(_codec.decode(first))
    if first != second:  # (sets may iterate in another order once rebuilt)
        assert _same(_codec.decode(first), _codec.decode(second)), (first, second)


def _children(value: object) -> list[Any]:
    if type(value) in (list, tuple, set, frozenset):
        items: list[Any] = list(value)  # type: ignore[call-overload]
        return items
    if type(value) is dict:
        return [item for pair in value.items() for item in pair]
    return []


def _walk(value: object) -> Iterator[object]:
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        stack.extend(_children(item))


def _same(a: object, b: object) -> bool:
    """Equal values, NaN equal to itself, sets equal whatever order they iterate in."""
    return _canonical(a) == _canonical(b)


def _canonical(value: object) -> bytes:
    # A set's items are sorted by their own canonical forms (nested sets included: comparing
    # their plain encodings would depend on iteration order); every part is length-prefixed.
    kind = type(value)
    if kind in (set, frozenset, list, tuple, dict):
        parts = [_canonical(item) for item in _children(value)]
        if kind in (set, frozenset):
            parts.sort()
        tag = {set: b"S", frozenset: b"F", list: b"L", tuple: b"T", dict: b"D"}[kind]
        return tag + b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    if kind is float and value != value:
        return b"NaN"
    return b"V" + _codec.encode(value)


# --- handshake --------------------------------------------------------------------------------

_TRUST: Final[tuple[frozenset[bytes] | None, ...]] = (
    None,
    frozenset({INITIATOR_KEY.public}),
    frozenset({STRANGER_KEY.public}),
    frozenset(),
)


def _initiator(payload: bytes = b"initiator") -> NoiseHandshake:
    return NoiseHandshake(
        initiator=True,
        static_key=INITIATOR_KEY,
        cluster_key=CLUSTER_KEY,
        payload=payload,
        _ephemeral=INITIATOR_EPHEMERAL,
    )


def _genuine_message_1() -> bytes:
    global _MESSAGE_1
    if _MESSAGE_1 is None:
        _MESSAGE_1 = _initiator().start()
    return _MESSAGE_1


_MESSAGE_1: bytes | None = None


def _responder(trusted: frozenset[bytes] | None = None) -> NoiseHandshake:
    return NoiseHandshake(
        initiator=False,
        static_key=RESPONDER_KEY,
        cluster_key=CLUSTER_KEY,
        payload=b"responder",
        trusted=trusted,
        _ephemeral=RESPONDER_EPHEMERAL,
    )


def _mutate(choices: Choices, message: bytes) -> bytes:
    """``message`` with at least one real change: bytes flipped, cut, dropped or added."""
    data = bytearray(message)
    for _ in range(1 + choices.below(3)):
        position = choices.below(len(data) + 1) if len(data) < 256 else choices.below(len(data))
        action = choices.below(4)
        if action == 0 and position < len(data):
            data[position] ^= 1 + choices.below(255)
        elif action == 1:
            del data[position:]
        elif action == 2:
            del data[position : position + 1 + choices.below(8)]
        else:
            data[position:position] = choices.take(1 + choices.below(8)) or b"\0"
    if bytes(data) == message:
        data.append(0)
    return bytes(data)


def _refused(handshake: NoiseHandshake, message: bytes) -> None:
    """``message`` must be refused with AuthenticationError, for good."""
    try:
        handshake.receive(message)
    except AuthenticationError:
        pass
    else:
        raise AssertionError(f"the responder accepted a message it must refuse: {message!r}")
    try:
        handshake.receive(message)
    except AuthenticationError:
        return
    raise AssertionError("a failed handshake accepted another message")


def fuzz_handshake(data: bytes) -> None:
    choices = Choices(data)
    mode = choices.below(4)
    trusted = _TRUST[choices.below(len(_TRUST))]
    responder = _responder(trusted)
    if mode == 0:  # anything at all as message 1: only ours is made with the cluster key
        message = choices.rest()
        if message == _genuine_message_1():
            assert responder.receive(message) is not None
        else:
            _refused(responder, message)
        return
    initiator = _initiator(choices.blob(300) if mode == 2 else b"initiator")
    message_1 = initiator.start()
    if mode == 3 and choices.flag():  # a damaged message 1
        _refused(responder, _mutate(choices, message_1))
        return
    message_2 = responder.receive(message_1)
    assert message_2 is not None
    if mode == 1:  # anything at all as message 3
        _refused(responder, choices.rest())
        return
    message_3 = initiator.receive(message_2)
    assert message_3 is not None
    assert initiator.complete
    if mode == 3:  # a damaged message 3
        _refused(responder, _mutate(choices, message_3))
        return
    # mode 2: a genuine peer with any hello; refused only for its key
    try:
        assert responder.receive(message_3) is None
    except AuthenticationError:
        assert trusted is not None
        assert INITIATOR_KEY.public not in trusted
        return
    assert trusted is None or INITIATOR_KEY.public in trusted
    assert responder.complete
    assert responder.remote_static == INITIATOR_KEY.public
    assert responder.remote_payload == initiator._payload
    assert responder.handshake_hash == initiator.handshake_hash
    try:
        Hello.decode(responder.remote_payload)
    except ProtocolError:
        pass


# --- connection -------------------------------------------------------------------------------

_CONFIG: Final = ConnectionConfig(max_frame_size=200_000)


@contextmanager
def _fixed_ephemeral(private: bytes) -> Iterator[None]:
    """The next ephemeral key a Connection draws is ``private`` (for reproducible runs)."""
    original = KeyPair.__dict__["generate"]
    pair = KeyPair.from_private(private)
    KeyPair.generate = classmethod(lambda cls: pair)  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        KeyPair.generate = original  # type: ignore[method-assign]


def _responder_connection(
    trusted: frozenset[bytes] | None, *, accelerated: bool = True
) -> Connection:
    with _fixed_ephemeral(RESPONDER_EPHEMERAL):
        return Connection(
            initiator=False,
            key=RESPONDER_KEY,
            cluster_key=CLUSTER_KEY,
            hello=RESPONDER_HELLO,
            now=0.0,
            trusted=trusted,
            config=_CONFIG,
            accelerated=accelerated,
        )


def _wire(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


_INT_CHOICES: Final = (0, 1, 2, 7, 255, 2**16, 2**32 - 1, U64_MAX)


def _field(choices: Choices, kind: type) -> object:
    if kind is int:
        return _INT_CHOICES[choices.below(len(_INT_CHOICES))] if choices.flag() else choices.u64()
    if kind is str:
        return choices.blob(40).decode("utf-8", "replace")
    if choices.below(8):
        return choices.blob(200)
    return choices.take(choices.below(3000)) * (1 + choices.below(48))  # (PART runs)


_KINDS: Final = [int(kind) for kind in Kind if kind != Kind.PART]


def _frame(choices: Choices) -> Frame:
    kind = _KINDS[choices.below(len(_KINDS))]
    return [kind, *(_field(choices, field) for field in SCHEMAS[kind])]


def _sealed_frames(cipher: TransportCipher, frames: list[Frame]) -> bytes:
    """The messages a well-behaved sender makes of ``frames``: PART runs for big ones."""
    out, pending = bytearray(), bytearray()

    def seal() -> None:
        if pending:
            out.extend(_wire(cipher.encrypt(bytes(pending))))
            pending.clear()

    for frame in frames:
        encoded = encode_frame(frame)
        if len(pending) + len(encoded) > MAX_PLAINTEXT_LEN:
            seal()
        if len(encoded) <= MAX_PLAINTEXT_LEN:
            pending += encoded
            continue
        size = MAX_PLAINTEXT_LEN - PART_OVERHEAD
        for start in range(0, len(encoded), size):
            pending += encode_frame([Kind.PART, len(encoded), encoded[start : start + size]])
            seal()
    seal()
    return bytes(out)


class _Watch:
    """What a connection has said so far, checked event by event."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.completed = False
        self.terminated: ConnectionTerminated | None = None
        self.goaway = False
        self.frames: list[Frame] = []
        self.output = bytearray()

    def ended(self) -> ConnectionTerminated | None:
        return self.terminated

    def take_output(self) -> bytes:
        output = bytes(self.output)
        self.output.clear()
        return output

    def events(self, events: list[Any]) -> None:
        connection = self.connection
        for event in events:
            assert self.terminated is None, f"{event!r} after the connection terminated"
            if isinstance(event, HandshakeCompleted):
                assert not self.completed, "HandshakeCompleted twice"
                self.completed = True
                assert event.remote_key == INITIATOR_KEY.public
                assert connection.remote_key == event.remote_key
            elif isinstance(event, FramesReceived):
                assert self.completed, "frames before the handshake completed"
                assert event.frames, "an empty FramesReceived"
                for frame in event.frames:
                    assert validate(frame) is frame
                    assert frame[0] > _LAST_CONTROL, f"control frame passed up: {frame!r}"
                self.frames.extend(event.frames)
            elif isinstance(event, GoawayReceived):
                assert self.completed
                assert not self.goaway
                self.goaway = True
            else:
                assert isinstance(event, ConnectionTerminated), event
                assert isinstance(event.error, AuthenticationError | ProtocolError | PeerLost)
                assert not self.goaway or isinstance(event.error, PeerLost)
                self.terminated = event
        if self.goaway:
            assert self.terminated is not None, "GOAWAY without termination"
        if self.terminated is not None:
            assert connection.state is State.CLOSED
        self.output += connection.data_to_send()  # (never raises)

    def feed(self, stream: bytes, choices: Choices, now: float, timers: bool = True) -> float:
        """Feed ``stream`` in reads of sizes the input chooses; timers now and then, if
        ``timers`` (time passes: a handshake or a silent peer may time out)."""
        connection = self.connection
        offset = 0
        while offset < len(stream):
            size = 1 + choices.below(4 * _LENGTH.size + 64) if choices.flag() else len(stream)
            self.events(connection.receive_data(stream[offset : offset + size], now))
            offset += size
            if timers and choices.below(8) == 0:
                now += choices.below(4) * 0.5
                deadline = connection.next_deadline()
                self.events(connection.handle_timer(now))
                if deadline is not None and now < deadline:
                    pass  # (an early call does nothing harmful)
        if self.terminated is not None:
            assert connection.receive_data(b"\0\0", now) == []
        return now


def fuzz_connection(data: bytes) -> None:
    """A responder fed a handshake and then anything: every event checked as it comes, and
    the C fast path (sealing, opening, decoding) and the pure-Python reference must do
    exactly the same: same frames, same output bytes, same end for the same reason."""
    fast, reference = _connection_run(data, True), _connection_run(data, False)
    assert fast == reference, "the fast path and the reference path differ"


def _connection_run(data: bytes, accelerated: bool) -> tuple[object, ...]:
    """Run the input on one responder; what it did, to compare."""
    choices = Choices(data)
    mode = choices.below(3)
    trusted = _TRUST[choices.below(2)]
    # (The responder draws its ephemeral key as it answers message 1: fixed for the whole
    # run, both runs make the same session keys, and so the same bytes.)
    with _fixed_ephemeral(RESPONDER_EPHEMERAL):
        connection = _responder_connection(trusted, accelerated=accelerated)
        watch = _Watch(connection)
        _check_connection(choices, mode, connection, watch)
    ended = watch.ended()
    end = None if ended is None else (type(ended.error), str(ended.error))
    return watch.completed, watch.goaway, end, watch.frames, bytes(watch.output)


def _check_connection(choices: Choices, mode: int, connection: Connection, watch: _Watch) -> None:
    if mode == 0:  # anything at all, from a stranger
        watch.feed(choices.rest(), choices, 0.0)
        assert not watch.completed
        return
    hello = INITIATOR_HELLO.encode() if choices.below(4) else choices.blob(300)
    initiator = _initiator(hello)
    now = watch.feed(_wire(initiator.start()), choices, 0.0, timers=False)
    reply = watch.take_output()
    assert watch.terminated is None, "a genuine message 1 refused"
    assert reply, "no message 2 for a genuine message 1"
    message_3 = initiator.receive(_unwire(reply))
    assert message_3 is not None
    now = watch.feed(_wire(message_3), choices, now, timers=False)
    refused = watch.ended()
    if refused is not None:  # a hello it cannot parse
        assert isinstance(refused.error, ProtocolError)
        return
    assert watch.completed
    assert connection.state is State.OPEN
    cipher = initiator.transport()
    expected: list[Frame] = []
    stream = bytearray()
    whole = mode == 2  # only whole frames: they must come out exactly as sent
    while not choices.exhausted and len(stream) < 400_000:
        what = choices.below(8)
        if whole or what < 5:
            frames = [_frame(choices) for _ in range(choices.below(6))]
            # (a frame over the limit is refused: exactly as sent means within it)
            frames = [f for f in frames if len(encode_frame(f)) <= _CONFIG.max_frame_size]
            if not frames:
                continue
            stream += _sealed_frames(cipher, frames)
            expected.extend(f for f in frames if f[0] > _LAST_CONTROL)
            if any(f[0] == Kind.GOAWAY for f in frames):
                del expected[_goaway_cut(expected, frames) :]
                break
        elif what < 7:
            stream += _wire(cipher.encrypt(choices.blob(600)))
        else:
            stream += choices.blob(100)
    watch.feed(bytes(stream), choices, now, timers=not whole)
    if whole:
        assert watch.frames == expected, "frames differ from those sent"
        ended = watch.ended()
        if ended is not None:
            assert watch.goaway or isinstance(ended.error, PeerLost)


def _goaway_cut(expected: list[Frame], batch: list[Frame]) -> int:
    """Where the frames expected end when ``batch`` holds a GOAWAY: at it."""
    before_batch = len(expected) - sum(1 for f in batch if f[0] > _LAST_CONTROL)
    position = batch.index(next(f for f in batch if f[0] == Kind.GOAWAY))
    return before_batch + sum(1 for f in batch[:position] if f[0] > _LAST_CONTROL)


def _unwire(stream: bytes) -> bytes:
    (length,) = _LENGTH.unpack_from(stream)
    assert len(stream) == 2 + length
    return stream[2:]


# --- the registry -------------------------------------------------------------------------------


def _session(data: bytes) -> None:
    from ._session_target import fuzz_session  # (the heaviest imports, only when wanted)

    fuzz_session(data)


TARGETS: Final[dict[str, Target]] = {
    target.name: target
    for target in (
        Target("frames", fuzz_frames, 1 << 17),
        Target("codec", fuzz_codec, 1 << 14),
        Target("handshake", fuzz_handshake, 1024),
        Target("connection", fuzz_connection, 1 << 16),
        Target("session", _session, 4096),
    )
}
