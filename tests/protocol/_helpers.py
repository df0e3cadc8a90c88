"""Pairs of connections joined in memory, fixed keys, and tools to handle the wire bytes."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final
from unittest import mock

from qchan.crypto import ClusterKey, NodeKey
from qchan.crypto.noise import KeyPair
from qchan.protocol import (
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    Event,
    Frame,
    FramesReceived,
    HandshakeCompleted,
    Hello,
    State,
)

# Fixed, distinct keys so that every run produces the same bytes.
INITIATOR_KEY: Final = NodeKey.from_bytes(bytes(range(1, 33)))
RESPONDER_KEY: Final = NodeKey.from_bytes(bytes(range(33, 65)))
STRANGER_KEY: Final = NodeKey.from_bytes(bytes(range(65, 97)))
CLUSTER_KEY: Final = ClusterKey.from_bytes(bytes(range(100, 132)))
OTHER_CLUSTER_KEY: Final = ClusterKey.from_bytes(bytes(range(132, 164)))
INITIATOR_EPHEMERAL: Final = bytes(range(140, 172))
RESPONDER_EPHEMERAL: Final = bytes(range(180, 212))
INITIATOR_HELLO: Final = Hello(name="alpha", incarnation=bytes(range(16)), address="10.0.0.1:7400")
RESPONDER_HELLO: Final = Hello(name="beta", incarnation=bytes(range(16, 32)))

DEFAULT_CONFIG: Final = ConnectionConfig()
_LENGTH: Final = struct.Struct(">H")


def make_pair(
    now: float = 0.0,
    *,
    initiator_key: NodeKey = INITIATOR_KEY,
    responder_key: NodeKey = RESPONDER_KEY,
    initiator_cluster_key: ClusterKey = CLUSTER_KEY,
    responder_cluster_key: ClusterKey = CLUSTER_KEY,
    initiator_trusted: frozenset[bytes] | None = None,
    responder_trusted: frozenset[bytes] | None = None,
    expected_remote_key: bytes | None = None,
    initiator_hello: Hello = INITIATOR_HELLO,
    responder_hello: Hello = RESPONDER_HELLO,
    config: ConnectionConfig = DEFAULT_CONFIG,
) -> tuple[Connection, Connection]:
    """An initiator (which has already queued message 1) and a responder, not yet joined."""
    initiator = Connection(
        initiator=True,
        key=initiator_key,
        cluster_key=initiator_cluster_key,
        hello=initiator_hello,
        now=now,
        trusted=initiator_trusted,
        expected_remote_key=expected_remote_key,
        config=config,
    )
    responder = Connection(
        initiator=False,
        key=responder_key,
        cluster_key=responder_cluster_key,
        hello=responder_hello,
        now=now,
        trusted=responder_trusted,
        config=config,
    )
    return initiator, responder


def transfer(a: Connection, b: Connection, now: float = 0.0) -> list[Event]:
    """Move everything ``a`` has to send into ``b``; return ``b``'s events."""
    return b.receive_data(a.data_to_send(), now)


def state_of(connection: Connection) -> State:
    """The connection's state (read through a call, so mypy does not narrow it for good)."""
    return connection.state


def handshake(
    initiator: Connection, responder: Connection, now: float = 0.0
) -> tuple[Connection, Connection]:
    """Run a fresh pair's handshake to the end, checking who completes when.

    The responder completes on message 3 and confirms with its first transport message (a
    PING); the initiator completes on that message, not before, and answers PONG. That PONG is
    delivered too, so both sides are OPEN with nothing left to send.
    """
    assert transfer(initiator, responder, now) == []  # message 1 in, message 2 queued
    assert transfer(responder, initiator, now) == []  # message 2 in, message 3 queued
    assert state_of(initiator) is State.HANDSHAKING  # not before the confirmation
    (done_r,) = transfer(initiator, responder, now)  # message 3 in, the confirmation queued
    assert isinstance(done_r, HandshakeCompleted)
    assert state_of(initiator) is State.HANDSHAKING
    (done_i,) = transfer(responder, initiator, now)  # the confirmation in, PONG queued
    assert isinstance(done_i, HandshakeCompleted)
    assert transfer(initiator, responder, now) == []  # the PONG in
    assert state_of(initiator) is state_of(responder) is State.OPEN
    assert initiator.data_to_send() == responder.data_to_send() == b""
    return initiator, responder


def establish(now: float = 0.0, **kwargs: Any) -> tuple[Connection, Connection]:
    """A pair that has completed its handshake (both sides saw HandshakeCompleted) and has
    nothing left to send (see :func:`handshake`)."""
    return handshake(*make_pair(now, **kwargs), now)


def frames_of(events: Sequence[Event]) -> list[Frame]:
    """Every frame in ``events``, in order."""
    return [
        frame for event in events if isinstance(event, FramesReceived) for frame in event.frames
    ]


def terminated(events: Sequence[Event]) -> ConnectionTerminated:
    """The last event, which must be a ConnectionTerminated (and the only one)."""
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, ConnectionTerminated), events
    assert sum(isinstance(event, ConnectionTerminated) for event in events) == 1
    return last


def wire(body: bytes) -> bytes:
    """One message on the wire: its 2-byte big-endian length, then ``body``."""
    return _LENGTH.pack(len(body)) + body


def split_messages(stream: bytes) -> list[bytes]:
    """The bodies of the length-prefixed messages making up ``stream`` (which must be whole)."""
    bodies, offset = [], 0
    while offset < len(stream):
        (length,) = _LENGTH.unpack_from(stream, offset)
        bodies.append(stream[offset + 2 : offset + 2 + length])
        offset += 2 + length
    assert offset == len(stream)
    return bodies


def seal(sender: Connection, plaintext: bytes) -> bytes:
    """A transport message from ``sender`` carrying any ``plaintext``, framed for the wire.

    Uses the sender's own cipher, so it is exactly what a peer that sends these bytes would
    produce: the receiver authenticates it and then judges the plaintext.
    """
    cipher = sender._cipher
    assert cipher is not None, "the handshake is not complete"
    return wire(cipher.encrypt(plaintext))


@contextmanager
def ephemerals(*private_keys: bytes) -> Iterator[None]:
    """Make the next Noise ephemeral keys drawn be ``private_keys``, in order.

    Connections take no ephemeral key argument: this makes their handshakes, and so every byte
    they send, reproducible, so a recorded stream can be replayed into a fresh connection.
    """
    keys = iter(private_keys)

    def generate() -> KeyPair:
        return KeyPair.from_private(next(keys))

    with mock.patch.object(KeyPair, "generate", generate):
        yield
