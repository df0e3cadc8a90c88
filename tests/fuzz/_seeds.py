"""Seed inputs for every fuzz target: small, each taking a main path of its code.

``python benchmarks/fuzz.py --make-seeds`` writes them to ``tests/fuzz/corpus/<target>/``
(as ``seed-<name>``); crashers found later sit next to them as ``crash-<name>``.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgpack

from qchan import _codec
from qchan._refs import ChannelRef
from qchan.protocol.frames import Kind, Mode, encode_frame
from tests.protocol._helpers import INITIATOR_KEY

from ._input import Script
from ._session_target import Action, frame_action
from ._targets import _initiator, _wire

__all__ = ["SEEDS"]


# --- frames: [max_frame_size choice] then messages, each [size byte] + bytes ---------------------


def _frames_input(*messages: bytes, limit: int = 2) -> bytes:
    out = Script().below(3, limit)
    for message in messages:
        if len(message) < 0xF0:
            out.byte(len(message))
        else:
            out.byte(0xFF).below(2**16 - 16 + 1, len(message))
        out.raw(message)
    return out.bytes()


def _frames() -> dict[str, bytes]:
    every = b"".join(
        encode_frame(frame)
        for frame in (
            [Kind.PING, 1],
            [Kind.GOAWAY, 0, "bye"],
            [Kind.LOOKUP, 1, "jobs"],
            [Kind.OPEN, 1, 3, bytes(32)],
            [Kind.SEND, 1, 1, Mode.PLAIN, b"\x01"],
            [Kind.PUSH, 1, 1, b"\x02"],
            [Kind.RECV, 2, 1],
            [Kind.FAILED, 3, 4, "no"],
            [Kind.CREDIT, 1, 2, 8],
        )
    )
    big = encode_frame([Kind.SEND, 1, 1, 0, bytes(300)])
    part_1 = encode_frame([Kind.PART, len(big), big[:200]])
    part_2 = encode_frame([Kind.PART, len(big), big[200:]])
    return {
        "every-kind": _frames_input(every),
        "part-run": _frames_input(part_1, part_2, limit=1),
        "empty-then-ping": _frames_input(b"", encode_frame([Kind.PING, 2**64 - 1])),
        "truncated": _frames_input(encode_frame([Kind.RECV, 1, 1])[:-1]),
    }


# --- codec: msgpack values --------------------------------------------------------------------


def _codec_seeds() -> dict[str, bytes]:
    ref = ChannelRef(INITIATOR_KEY.public, bytes(16), "127.0.0.1:1", 7, math.inf, bytes(16), None)
    deep: Any = 0
    for _ in range(200):
        deep = [deep]
    return {
        "scalars": _codec.encode([None, True, -1, 2**64 - 1, 1.5, "é", b"\0"]),
        "containers": _codec.encode({"t": (1, 2), "s": {3}, "f": frozenset({4}), (5,): [6]}),
        "timestamp": _codec.encode(msgpack.Timestamp(1, 2)),
        "reference": msgpack.packb([1, msgpack.ExtType(5, ref.encode())]),
        "deep": _codec.encode(deep),
        "marker-misplaced": msgpack.packb({msgpack.ExtType(1, b""): 1}),
    }


# --- handshake: [mode, trust] then mode-specific choices ---------------------------------------


def _handshake() -> dict[str, bytes]:
    message_1 = _initiator().start()
    return {
        "any-message-1": Script().byte(0).byte(0).raw(message_1).bytes(),
        "any-message-3": Script().byte(1).byte(1).raw(bytes(96)).bytes(),
        "genuine-hello": Script().byte(2).byte(0).blob(b"\x81\xa1v\x01", 300).bytes(),
        "untrusted": Script().byte(2).byte(2).blob(b"", 300).bytes(),
        "damaged-3": Script().byte(3).byte(0).byte(0).byte(0).byte(40).byte(0).byte(1).bytes(),
    }


# --- connection: [mode, trust] then the stream's choices -------------------------------------


def _connection() -> dict[str, bytes]:
    message_1 = _wire(_initiator().start())
    frames = Script()
    frames.byte(2).byte(0).byte(1)  # whole frames, no trust list, the genuine hello
    frames.byte(0).byte(0)  # message 1: in one read
    frames.byte(0).byte(0)  # message 3: in one read
    for kind_index in (0, 5, 12):  # three batches of one frame each, int fields small
        frames.byte(0).byte(1).byte(kind_index)
        frames.raw(b"\x01\x00" * 4)
    return {
        "stranger": Script().byte(0).byte(0).raw(message_1).bytes(),
        "bad-length": Script().byte(0).byte(0).raw(b"\xff\xff" + bytes(8)).bytes(),
        "whole-frames": frames.bytes(),
        "sealed-garbage": Script().byte(1).byte(0).byte(1).raw(bytes(6)).byte(5).bytes(),
    }


# --- session: scripts of actions ----------------------------------------------------------------


class _Session:
    """Builds a session script (see tests.fuzz._session_target for what each choice means)."""

    def __init__(self) -> None:
        self.out = Script()

    def frame(self, kind: Kind, *choices: int) -> _Session:
        self.out.byte(frame_action(kind))
        for choice in choices:
            self.out.byte(choice)
        return self

    def send(self, op: int, chan: int, mode: int = Mode.PLAIN, value: int = 7) -> _Session:
        return self.frame(Kind.SEND, op, chan, mode, 0, value)

    def recv(self, op: int, chan: int) -> _Session:
        return self.frame(Kind.RECV, op, chan)

    def push(self, chan: int, ahead: int = 1, value: int = 9) -> _Session:
        return self.frame(Kind.PUSH, chan, ahead + 2, 0, value)  # seq = last seq + ahead

    def answer(self, kind: Kind, op: int) -> _Session:
        return self.frame(kind, 100 + op)  # (an op id beta named, or op itself)

    def read(self, link: int = 0) -> _Session:
        return self.action(Action.READ + link)

    def action(self, byte: int, *choices: int) -> _Session:
        self.out.byte(byte)
        for choice in choices:
            self.out.byte(choice)
        return self

    def blocking(self, *cases: tuple[bool, bool, int]) -> _Session:
        """A blocking call at beta: cases of (remote, is_send, channel index)."""
        self.out.byte(Action.BLOCKING).byte(len(cases) - 1)
        for remote, is_send, index in cases:
            self.out.byte(0 if remote else 1).byte(index).byte(int(is_send))
            if is_send:
                self.out.byte(0).byte(42)
        return self

    def bytes(self) -> bytes:
        return self.out.bytes()


def _session() -> dict[str, bytes]:
    s = _Session
    return {
        "rendezvous": s().send(1, 1).read().action(Action.LOCAL_RECEIVE, 0).bytes(),
        "remote-receive": s().recv(1, 1).read().action(Action.LOCAL_SEND, 0, 0, 5).bytes(),
        "deliver-refused": s()
        .recv(1, 1)
        .read()
        .action(Action.LOCAL_SEND, 0, 0, 5)
        .answer(Kind.REFUSED, 1)
        .read()
        .bytes(),
        "credits": s()
        .send(1, 4)
        .read()
        .push(4)
        .read()
        .push(4)
        .read()
        .push(4)
        .read()
        .push(4)
        .read()
        .bytes(),
        "select-claim": s()
        .send(1, 1, Mode.SELECT)
        .read()
        .blocking((False, False, 0))
        .answer(Kind.GRANT, 1)
        .read()
        .bytes(),
        "release": s().send(1, 4).read().push(4).frame(Kind.RELEASE, 4).read().bytes(),
        "remote-ops": s()
        .blocking((True, False, 0))
        .blocking((True, True, 1))
        .frame(Kind.DELIVER, 0, 0, 3)
        .frame(Kind.ACK, 1)
        .read()
        .bytes(),
        "lost-link": s().recv(1, 2).send(2, 3).read().action(Action.LOSE, 1).bytes(),
        "housekeeping": s().send(1, 4).read().action(Action.HOUSEKEEPING).push(4).read().bytes(),
        "duplicate": s().action(Action.DUPLICATE).send(1, 1).read(1).action(Action.DROP).bytes(),
        "lookup": s().frame(Kind.LOOKUP, 1, 1, 0).action(Action.LOOKUP, 1).read().bytes(),
    }


SEEDS: Final[dict[str, dict[str, bytes]]] = {
    "frames": _frames(),
    "codec": _codec_seeds(),
    "handshake": _handshake(),
    "connection": _connection(),
    "session": _session(),
}
