"""Frames: the messages nodes exchange inside encrypted transport messages.

A frame is one msgpack array whose first element is its :class:`Kind`; the remaining elements
are the fields listed in :data:`SCHEMAS`, each of an exact msgpack type. A transport message's
plaintext is one or more frames back to back, never a partial one. A frame too large for one
transport message (a big value) travels as a run of ``PART`` frames whose chunks concatenate
to the frame's bytes. docs/protocol.md is the specification; this module is its executable
form.

Frames are plain lists on the hot path (no object per frame): ``frame[0]`` is the kind and the
node dispatches on it. Decoding validates every field's type against the schema, so the rest
of the code may trust the shape of what it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any, Final, NoReturn

import msgpack

from qchan._errors import ProtocolError

__all__ = [
    "PART_OVERHEAD",
    "SCHEMAS",
    "Frame",
    "FrameDecoder",
    "GoawayReason",
    "Kind",
    "Mode",
    "Rights",
    "encode_frame",
    "validate",
]

Frame = list[Any]
"""A decoded frame: ``[kind, field, ...]``."""


class Kind(IntEnum):
    """Frame kinds. Requests flow to a channel's home; replies flow back.

    Op ids are chosen by the node that starts an operation (``SEND``, ``RECV``, ``LOOKUP``)
    and are echoed by every frame about that operation, in both directions.
    """

    # connection control
    PING = 0x01  # [nonce]                    answered by PONG with the same nonce
    PONG = 0x02  # [nonce]
    GOAWAY = 0x03  # [reason, text]           the sender closes the connection after this
    PART = 0x04  # [total, chunk]             a fragment of a frame larger than a message
    # names
    LOOKUP = 0x10  # [req, name]              is `name` registered on you?
    FOUND = 0x11  # [req, ref]                yes: here is a reference (see qchan.node)
    NOTFOUND = 0x12  # [req]
    # operations on a channel, sent to its home
    OPEN = 0x20  # [chan, rights, token]      prove the right to use `chan` on this connection
    SEND = 0x21  # [op, chan, mode, value]    send; answered by ACK, CLOSED, FAILED or CLAIM
    PUSH = 0x22  # [chan, seq, value]         send under credit: into a reserved buffer slot
    RECV = 0x23  # [op, chan]                 receive; answered by DELIVER, CLOSED or FAILED
    CANCEL = 0x24  # [op]                     withdraw a waiting SEND or RECV
    TAKEN = 0x25  # [op]                      the receiving task took the DELIVERed value
    REFUSED = 0x26  # [op]                    it did not (cancelled, or chose another case)
    GRANT = 0x27  # [op]                      yes to CLAIM: the select commits to this send
    DENY = 0x28  # [op]                       no to CLAIM: the select did something else
    CLOSE = 0x29  # [chan]                    close the channel
    RELEASE = 0x2A  # [chan]                  this node dropped its last handle to `chan`
    SETTLE = 0x2C  # [link, ops]              a link to you ended: the DELIVERs we took on it
    # replies from a channel's home
    ACK = 0x30  # [op]                        the SEND completed (taken, or buffered)
    DELIVER = 0x31  # [op, value]             a value for RECV: answer TAKEN or REFUSED
    CLOSED = 0x32  # [op]                     the channel is closed (and drained, for RECV)
    CLAIM = 0x33  # [op]                      may this select-mode SEND happen now?
    CANCELLED = 0x34  # [op]                  the CANCEL won: the operation did not happen
    FAILED = 0x35  # [op, code, text]         the operation was refused (error code)
    CREDIT = 0x36  # [chan, acked, window]    PUSHes up to seq `acked` are in; push up to `window`
    UNCLAIM = 0x37  # [op]                    a GRANT could not be used: the select is free
    SHUT = 0x38  # [chan]                     the channel was closed: credits on it are void


class Mode(IntEnum):
    """How a ``SEND`` may complete."""

    PLAIN = 0  # the home hands it over as soon as it can
    SELECT = 1  # part of a select: the home must CLAIM it first


class Rights(IntEnum):
    """What a reference allows; a bit set."""

    SEND = 1
    RECEIVE = 2
    BOTH = 3


class GoawayReason(IntEnum):
    """Why a connection is being closed (``GOAWAY`` frames)."""

    SHUTDOWN = 0  # the node is stopping
    PROTOCOL_ERROR = 1  # the peer sent something malformed or forbidden
    DUPLICATE = 2  # another connection between the same two nodes is kept instead
    INCOMPATIBLE = 3  # protocol versions do not match
    NAME_CONFLICT = 4  # the peer's name is taken by another node


_U = int  # unsigned integer fields: checked for >= 0 separately
SCHEMAS: Final[dict[int, tuple[type, ...]]] = {
    Kind.PING: (int,),
    Kind.PONG: (int,),
    Kind.GOAWAY: (int, str),
    Kind.PART: (int, bytes),
    Kind.LOOKUP: (int, str),
    Kind.FOUND: (int, bytes),
    Kind.NOTFOUND: (int,),
    Kind.OPEN: (int, int, bytes),
    Kind.SEND: (int, int, int, bytes),
    Kind.PUSH: (int, int, bytes),
    Kind.RECV: (int, int),
    Kind.CANCEL: (int,),
    Kind.TAKEN: (int,),
    Kind.REFUSED: (int,),
    Kind.GRANT: (int,),
    Kind.DENY: (int,),
    Kind.CLOSE: (int,),
    Kind.RELEASE: (int,),
    Kind.SETTLE: (bytes, bytes),
    Kind.ACK: (int,),
    Kind.DELIVER: (int, bytes),
    Kind.CLOSED: (int,),
    Kind.CLAIM: (int,),
    Kind.CANCELLED: (int,),
    Kind.FAILED: (int, int, str),
    Kind.CREDIT: (int, int, int),
    Kind.UNCLAIM: (int,),
    Kind.SHUT: (int,),
}
"""Each kind's field types, in order, after the kind itself. All ints are unsigned 64-bit."""

_MAX_UINT: Final = 2**64 - 1
_MAX_FIELDS: Final = 1 + max(len(schema) for schema in SCHEMAS.values())

PART_OVERHEAD: Final = 1 + 1 + 9 + 5
"""Bytes a PART frame adds around its chunk: array header, kind, total (uint64), bin32 header."""


# Per kind, the exact types of the whole frame (kind included) and where its ints are: the
# common case is checked with one tuple comparison (this runs for every frame received).
_SIGNATURES: Final[dict[int, tuple[type, ...]]] = {
    int(kind): (int, *schema) for kind, schema in SCHEMAS.items()
}
_INT_FIELDS: Final[dict[int, tuple[int, ...]]] = {
    int(kind): tuple(i for i, t in enumerate(schema, 1) if t is int)
    for kind, schema in SCHEMAS.items()
}
_PART: Final = int(Kind.PART)


def _fast_decoder() -> Callable[[bytes], list[Frame] | None] | None:
    """The C fast path of :meth:`FrameDecoder.decode`, told the schemas; None if not built."""
    try:
        from qchan.protocol import _speedups
    except ImportError:  # no compiler where qchan was installed: the pure-Python path only
        return None
    codes = {int: "u", str: "s", bytes: "b"}
    # PART frames are reassembled by the Python decoder: the fast path defers on them.
    _speedups.set_schemas(
        {
            int(kind): "".join(codes[field] for field in schema)
            for kind, schema in SCHEMAS.items()
            if kind != Kind.PART
        }
    )
    return _speedups.decode_frames


_decode_fast: Final = _fast_decoder()


def validate(frame: object) -> Frame:
    """Return ``frame`` if it is a well-formed frame, else raise :class:`ProtocolError`."""
    if type(frame) is list and frame:
        kind = frame[0]
        signature = _SIGNATURES.get(kind) if type(kind) is int else None
        if signature is not None and tuple(map(type, frame)) == signature:
            for position in _INT_FIELDS[kind]:
                if not 0 <= frame[position] <= _MAX_UINT:
                    break
            else:
                return frame
    _refuse(frame)


def _refuse(frame: object) -> NoReturn:
    """Raise the ProtocolError that says precisely what is wrong with ``frame``."""
    if type(frame) is not list or not frame:
        raise ProtocolError(f"a frame must be a non-empty array, got {type(frame).__name__}")
    kind = frame[0]
    schema = SCHEMAS.get(kind) if type(kind) is int else None
    if schema is None:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    if len(frame) != len(schema) + 1:
        raise ProtocolError(
            f"{Kind(kind).name} frame has {len(frame) - 1} fields, expected {len(schema)}"
        )
    for position, (field, expected) in enumerate(zip(frame[1:], schema, strict=True), 1):
        if type(field) is not expected or (expected is int and not 0 <= field <= _MAX_UINT):  # type: ignore[operator]
            raise ProtocolError(
                f"{Kind(kind).name} frame field {position} must be "
                f"{'an unsigned int' if expected is int else expected.__name__}, got {field!r:.40}"
            )
    raise ProtocolError("malformed frame")  # unreachable: validate() found a fault


encode_frame: Final[Callable[[Frame], bytes]] = msgpack.Packer(
    use_bin_type=True, autoreset=True
).pack
"""The bytes of one frame. The caller builds frames from :class:`Kind` and valid fields.

(The packer's own method, not a function around it: this runs for every frame sent.)"""


class FrameDecoder:
    """Turns the plaintext of transport messages into validated frames.

    Feed one whole plaintext at a time; frames must not straddle messages, except as ``PART``
    runs, which are reassembled here up to ``max_frame_size`` bytes (the declared total is
    checked before anything is allocated for it).
    """

    __slots__ = ("_fast", "_part", "_part_total", "_unpacker", "max_frame_size")

    def __init__(self, max_frame_size: int, *, accelerated: bool = True) -> None:
        self.max_frame_size = max_frame_size
        # The C fast path decodes the common case and defers everything else (PART runs,
        # anything malformed) to the reference decoder below; ``accelerated=False`` is for
        # the tests that compare the two.
        self._fast = _decode_fast if accelerated else None
        self._part: bytearray | None = None
        self._part_total = 0
        self._unpacker = self._new_unpacker()

    @staticmethod
    def _new_unpacker() -> msgpack.Unpacker:
        # A frame is a flat array of scalars that fits one message: these limits refuse any
        # declared length that could not be honest before msgpack allocates for it.
        return msgpack.Unpacker(
            raw=False,
            use_list=True,
            max_buffer_size=2**16,
            max_array_len=_MAX_FIELDS,
            max_map_len=0,
            max_str_len=2**16,
            max_bin_len=2**16,
            max_ext_len=0,
        )

    @property
    def idle(self) -> bool:
        """Not in the middle of a PART run (the next message's frames stand on their own)."""
        return self._part is None

    def decode(self, plaintext: bytes) -> list[Frame]:
        """The frames in one transport message's plaintext.

        Raises :class:`ProtocolError` for anything malformed: bad msgpack, a partial frame,
        an unknown kind, wrong field types, a ``PART`` run that lies about its size. After an
        error the decoder is unusable, like the connection it belongs to.
        """
        if self._fast is not None and self._part is None:
            decoded = self._fast(plaintext)
            if decoded is not None:
                return decoded
        unpacker = self._unpacker
        tell = unpacker.tell  # bytes consumed since the unpacker was made
        start = end = tell()
        frames: list[Frame] = []
        try:
            unpacker.feed(plaintext)
            for obj in unpacker:
                end = tell()
                frame = validate(obj)
                if frame[0] == _PART:
                    whole = self._add_part(frame)
                    if whole is not None:
                        frames.append(self._decode_whole(whole))
                elif self._part is not None:
                    raise ProtocolError(f"{Kind(frame[0]).name} frame inside a PART run")
                else:
                    frames.append(frame)
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack's many error types: all mean "malformed"
            raise ProtocolError(f"malformed frame: {exc}") from exc
        # The message must end where its last whole frame ends. (Not tell() after the loop:
        # that also counts the headers of a partial frame, e.g. a message ending just after
        # an array header, which the unpacker would otherwise carry into the next message.)
        if end - start != len(plaintext):
            raise ProtocolError("transport message ends inside a frame")
        return frames

    def _add_part(self, frame: Frame) -> bytes | None:
        total, chunk = frame[1], frame[2]
        if self._part is None:
            if total > self.max_frame_size:
                raise ProtocolError(
                    f"PART run declares {total} bytes, above the limit of {self.max_frame_size}"
                )
            self._part, self._part_total = bytearray(), total
        elif total != self._part_total:
            raise ProtocolError("PART frames of one run disagree on the total size")
        if not chunk:
            raise ProtocolError("empty PART chunk")
        self._part += chunk
        if len(self._part) > total:
            raise ProtocolError("PART run is longer than it declared")
        if len(self._part) < total:
            return None
        whole, self._part = bytes(self._part), None
        return whole

    def _decode_whole(self, data: bytes) -> Frame:
        try:
            frame = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                max_array_len=_MAX_FIELDS,
                max_map_len=0,
                max_str_len=len(data),
                max_bin_len=len(data),
                max_ext_len=0,
            )
        except Exception as exc:
            raise ProtocolError(f"malformed reassembled frame: {exc}") from exc
        frame = validate(frame)
        if frame[0] == Kind.PART:
            raise ProtocolError("a PART run may not carry a PART frame")
        return frame
